"""Generate images with a trained network, one PNG per seed: the command line of
training.generation.generate_images.

Every image depends only on its seed, so neither --batch nor the number of processes changes it.
The fast path (--fast and the knobs behind it) gives close but not bit-identical images, and with
--bf16 an image may also change slightly with --batch; a given --batch reproduces the same images.

    python generate.py --network=network-snapshot-200000.pkl --outdir=out --seeds=0-63
    torchrun --standalone --nproc_per_node=2 generate.py --network=... --outdir=out --seeds=0-49999 --subdirs
"""

import os

import click
import PIL.Image
import tqdm

import dnnlib
from torch_utils import distributed as dist
from training.generation import check_denoiser, generate_images, load_network
from training.sampling_cli import check_sampler_options, generate_kwargs, parse_seeds, sampler_options
from training.snapshot import SnapshotError

#----------------------------------------------------------------------------
# Checks made before anything is written.

def check_outdir(outdir):
    """--outdir must be a folder that can be written, or one that can be created below its nearest
    existing ancestor (checked without leaving anything behind)."""
    try:
        dnnlib.util.check_can_create_folder(outdir)
    except OSError as err:
        raise click.ClickException(f'--outdir="{outdir}": cannot write to it ({err.strerror or err})') from None

def check_png_network(net):
    """A preconditioned denoiser with 1 or 3 channels, what a PNG holds."""
    try:
        check_denoiser(net)
    except ValueError as err:
        raise click.ClickException(str(err))
    if net.img_channels not in (1, 3):
        raise click.ClickException(f'the network produces {net.img_channels}-channel images; only 1 (L) and 3 (RGB) channels can be saved as PNG')

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
@sampler_options
def main(network_pkl, outdir, subdirs, seeds, **sampling):
    """Sample images from a network pickle, one PNG per seed.

    \b
    Examples:
      python generate.py --network=snapshot.pkl --outdir=out --seeds=0-63
      torchrun --standalone --nproc_per_node=2 generate.py --network=snapshot.pkl \\
          --outdir=fid-images --seeds=0-49999 --subdirs
      python generate.py --network=snapshot.pkl --outdir=out --steps=256 \\
          --solver=euler --disc=vp --schedule=vp --scaling=vp
      python generate.py --network=snapshot.pkl --outdir=out --steps=10 --solver=dpmpp2m
      python generate.py --network=snapshot.pkl --outdir=out --guidance=2 --gnet=early-snapshot.pkl
      python generate.py --network=snapshot.pkl --outdir=out --fast
    """
    check_sampler_options(sampling)
    check_outdir(outdir)
    dist.init()

    dist.print0(f'Loading network from "{network_pkl}"...')
    try:
        net = load_network(network_pkl)
    except (SnapshotError, OSError) as err:
        raise click.ClickException(str(err))
    check_png_network(net)
    kwargs = generate_kwargs(net, sampling, dist.get_device())

    dist.print0(f'Generating {len(seeds)} images to "{outdir}"...')
    if dist.get_rank() == 0:
        num_existing = sum(os.path.exists(png_path(outdir, seed, subdirs)) for seed in seeds)
        if num_existing:
            print(f'Note: {num_existing} of these images already exist and will be replaced.')

    batches = generate_images(net, seeds, device=dist.get_device(), **kwargs)
    num_batches = len(dist.split_batches(seeds, kwargs['max_batch_size']))
    for batch in tqdm.tqdm(batches, total=num_batches, unit='batch', disable=(dist.get_rank() != 0)):
        for seed, image in zip(batch.seeds, batch.images):
            save_png(image, png_path(outdir, seed, subdirs))
    dist.barrier()
    dist.print0('Done.')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
