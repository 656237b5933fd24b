"""Generate images with a trained network, one PNG per seed: the command line of
training.generation.generate_images.

Every image depends only on its seed, so neither --batch nor the number of processes changes it.
The fast path (--fast and the knobs behind it) gives close but not bit-identical images, and with
--bf16 an image may also change slightly with --batch; a given --batch reproduces the same images.

    python generate.py --network=network-snapshot-200000.pkl --outdir=out --seeds=0-63
    torchrun --standalone --nproc_per_node=2 generate.py --network=... --outdir=out --seeds=0-49999 --subdirs
"""

import os
import re

import click
import PIL.Image
import tqdm

import dnnlib
from torch_utils import distributed as dist
from training import fast_path
from training.generation import check_class_idx, check_denoiser, check_noise_range, generate_images, load_network
from training.snapshot import SnapshotError

#----------------------------------------------------------------------------
# Checks made before anything is written.

def parse_seeds(_ctx, _param, text):
    """--seeds: comma-separated non-negative integers and ascending ranges such as 5-10."""
    if not text.strip():
        raise click.BadParameter('no seeds given; expected e.g. 0-63 or 1,2,5-10')
    try:
        seeds = dnnlib.util.parse_int_list(text)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    for piece in text.split(','):
        bounds = re.fullmatch(r'(\d+)-(\d+)', piece)
        if bounds and int(bounds[1]) > int(bounds[2]):
            raise click.BadParameter(f'the range "{piece}" is empty; write the smaller seed first, e.g. {bounds[2]}-{bounds[1]}')
    if min(seeds) < 0:
        raise click.BadParameter(f'seed {min(seeds)} is negative; seeds are integers from 0 up')
    return seeds

def check_noise_options(sigma_min, sigma_max):
    """An explicit noise range must run from low to high."""
    if sigma_min is not None and sigma_max is not None and not sigma_min < sigma_max:
        raise click.ClickException(f'--sigma_min={sigma_min:g} must be smaller than --sigma_max={sigma_max:g}')

def check_outdir(outdir):
    """--outdir must be a folder that can be written, or one that can be created below its nearest
    existing ancestor (checked without leaving anything behind)."""
    try:
        dnnlib.util.check_can_create_folder(outdir)
    except OSError as err:
        raise click.ClickException(f'--outdir="{outdir}": cannot write to it ({err.strerror or err})') from None

def check_network(net, class_idx, sampler_kwargs):
    """A preconditioned denoiser with 1 or 3 channels (what a PNG holds), --class among its classes,
    and a noise range that is not empty once limited to the range the network supports."""
    try:
        check_denoiser(net)
    except ValueError as err:
        raise click.ClickException(str(err))
    if net.img_channels not in (1, 3):
        raise click.ClickException(f'the network produces {net.img_channels}-channel images; only 1 (L) and 3 (RGB) channels can be saved as PNG')
    try:
        check_class_idx(net, class_idx)
    except ValueError as err:
        raise click.ClickException(f'--class={class_idx}: {err}')
    try:
        check_noise_range(net, sampler_kwargs)
    except ValueError as err:
        raise click.ClickException(f'--sigma_min/--sigma_max: {err}')

#----------------------------------------------------------------------------
# Output files.

def png_path(outdir, seed, subdirs):
    """<outdir>/<seed:06d>.png; with --subdirs in a folder per thousand seeds, <outdir>/<thousands:06d>/."""
    folder = os.path.join(outdir, f'{seed // 1000 * 1000:06d}') if subdirs else outdir
    return os.path.join(folder, f'{seed:06d}.png')

def save_png(image, path):
    """Write a uint8 [H, W, C] image as PNG (mode L for one channel, RGB for three), atomically."""
    pixels = image.numpy()
    picture = PIL.Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with dnnlib.util.atomic_write(path) as temp_path:
        picture.save(temp_path, format='PNG')

#----------------------------------------------------------------------------

@click.command()
@click.option('--network', 'network_pkl', type=str, required=True, metavar='PATH|URL', help='Network pickle to sample from')
@click.option('--outdir', type=str, required=True, metavar='DIR', help='Folder for the generated PNGs')
@click.option('--seeds', callback=parse_seeds, default='0-63', show_default=True, metavar='LIST', help='One image per seed, e.g. 1,2,5-10')
@click.option('--subdirs', is_flag=True, help='Put every 1000 seeds in a sub-folder of their own')
@click.option('--class', 'class_idx', type=click.IntRange(min=0), metavar='INT', help='Use this class label for all images  [default: random]')
@click.option('--batch', 'max_batch_size', type=click.IntRange(min=1), default=64, show_default=True, metavar='INT', help='Largest batch per process')
# Sampler options (Algorithm 2); unset ones take the sampler's defaults.
@click.option('--steps', 'num_steps', type=click.IntRange(min=1), default=18, show_default=True, metavar='INT', help='Sampling steps N')
@click.option('--sigma_min', type=click.FloatRange(min=0, min_open=True), metavar='FLOAT', help='Smallest noise level  [default: varies]')
@click.option('--sigma_max', type=click.FloatRange(min=0, min_open=True), metavar='FLOAT', help='Largest noise level  [default: varies]')
@click.option('--rho', type=click.FloatRange(min=0, min_open=True), default=7, show_default=True, metavar='FLOAT', help='Exponent of the time-step spacing')
@click.option('--S_churn', 'S_churn', type=click.FloatRange(min=0), default=0, show_default=True, metavar='FLOAT', help='Amount of stochasticity (churn)')
@click.option('--S_min', 'S_min', type=click.FloatRange(min=0), default=0, show_default=True, metavar='FLOAT', help='Churn only at noise levels from here')
@click.option('--S_max', 'S_max', type=click.FloatRange(min=0), default='inf', show_default=True, metavar='FLOAT', help='Churn only at noise levels up to here')
@click.option('--S_noise', 'S_noise', type=float, default=1, show_default=True, metavar='FLOAT', help='Scale factor of the churn noise')
# Ablations (Table 1); any of them selects the generalised sampler.
@click.option('--solver', type=click.Choice(['euler', 'heun']), metavar='euler|heun', help='Ablation: ODE solver')
@click.option('--disc', 'discretization', type=click.Choice(['vp', 've', 'iddpm', 'edm']), metavar='vp|ve|iddpm|edm', help='Ablation: noise-level discretisation')
@click.option('--schedule', type=click.Choice(['vp', 've', 'linear']), metavar='vp|ve|linear', help='Ablation: noise schedule sigma(t)')
@click.option('--scaling', type=click.Choice(['vp', 'none']), metavar='vp|none', help='Ablation: signal scaling s(t)')
# Speed: the fast path (bit-identical images only without these options).
@click.option('--fast', is_flag=True, help='Turn on the knobs below that measured fastest on this device')
@click.option('--bf16', metavar='BOOL', type=bool, help='Run the U-Net under bfloat16 autocast  [default: off]')
@click.option('--channels-last', metavar='BOOL', type=bool, help='Channels-last memory format for the U-Net  [default: off]')
@click.option('--tf32', metavar='BOOL', type=bool, help='TensorFloat-32 matmuls and convolutions on CUDA  [default: off]')
@click.option('--compile', 'compile_unet', metavar='BOOL', type=bool, help='torch.compile the U-Net; CUDA graphs on CUDA (costs compile time)  [default: off]')
@click.option('--fused', metavar='BOOL', type=bool, help='Fused attention kernel  [default: off]')
def main(network_pkl, outdir, subdirs, seeds, class_idx, max_batch_size, fast, bf16, channels_last, tf32, compile_unet, fused,
         **sampler_kwargs):
    """Sample images from a network pickle, one PNG per seed.

    \b
    Examples:
      python generate.py --network=snapshot.pkl --outdir=out --seeds=0-63
      torchrun --standalone --nproc_per_node=2 generate.py --network=snapshot.pkl \\
          --outdir=fid-images --seeds=0-49999 --subdirs
      python generate.py --network=snapshot.pkl --outdir=out --steps=256 \\
          --solver=euler --disc=vp --schedule=vp --scaling=vp
      python generate.py --network=snapshot.pkl --outdir=out --fast
    """
    # With a single step the time-step formula would divide 0 by 0 and give NaN images.
    if sampler_kwargs['num_steps'] < 2:
        raise click.ClickException(f'--steps={sampler_kwargs["num_steps"]}: at least 2 sampling steps are needed')
    check_noise_options(sampler_kwargs['sigma_min'], sampler_kwargs['sigma_max'])
    check_outdir(outdir)
    dist.init()

    dist.print0(f'Loading network from "{network_pkl}"...')
    try:
        net = load_network(network_pkl)
    except (SnapshotError, OSError) as err:
        raise click.ClickException(str(err))
    check_network(net, class_idx, sampler_kwargs)
    speed = fast_path.resolve(dist.get_device(), fast=fast, bf16=bf16, channels_last=channels_last, tf32=tf32,
                              compile=compile_unet, fused=fused)
    if speed.enabled:
        dist.print0('Fast path: ' + ', '.join(knob for knob, on in speed.as_dict().items() if on))

    dist.print0(f'Generating {len(seeds)} images to "{outdir}"...')
    if dist.get_rank() == 0:
        num_existing = sum(os.path.exists(png_path(outdir, seed, subdirs)) for seed in seeds)
        if num_existing:
            print(f'Note: {num_existing} of these images already exist and will be replaced.')

    batches = generate_images(net, seeds, class_idx=class_idx, max_batch_size=max_batch_size, device=dist.get_device(),
                              fast=speed, **sampler_kwargs)
    num_batches = len(dist.split_batches(seeds, max_batch_size))
    for batch in tqdm.tqdm(batches, total=num_batches, unit='batch', disable=(dist.get_rank() != 0)):
        for seed, image in zip(batch.seeds, batch.images):
            save_png(image, png_path(outdir, seed, subdirs))
    dist.barrier()
    dist.print0('Done.')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
