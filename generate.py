"""Generate images with a trained network (spec cli.md section 2).

Every image depends only on its seed: it draws its latents, class label and per-step noise from
its own generator, so batch size and the number of processes do not change it.

    python generate.py --network=network-snapshot-200000.pkl --outdir=out --seeds=0-63
    torchrun --standalone --nproc_per_node=2 generate.py --network=... --outdir=out --seeds=0-49999 --subdirs
"""

import os

import click
import PIL.Image
import torch
import tqdm

import dnnlib
from torch_utils import distributed as dist
from training.samplers import StackedRandomGenerator, ablation_sampler, edm_sampler
from training.snapshot import SnapshotError, load_snapshot

ABLATION_OPTIONS = ['solver', 'discretization', 'schedule', 'scaling']

#----------------------------------------------------------------------------
# Checks made before any network is loaded or any file written.

def check_outdir(outdir):
    """`outdir` must be a writable folder, or creatable inside its nearest existing parent."""
    existing = os.path.abspath(outdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise click.ClickException(f'--outdir="{outdir}": "{existing}" is not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise click.ClickException(f'--outdir="{outdir}": "{existing}" is not writable')

def check_network(net, class_idx):
    """The network must be a preconditioned denoiser producing 1- or 3-channel images, and --class
    must name one of its classes."""
    if not all(hasattr(net, name) for name in ('img_channels', 'img_resolution', 'label_dim', 'round_sigma', 'sigma_min', 'sigma_max')):
        raise click.ClickException(f'the network under "ema" is a {type(net).__name__}, not a preconditioned denoiser (EDMPrecond, VPPrecond, ...)')
    if net.img_channels not in (1, 3):
        raise click.ClickException(f'the network produces {net.img_channels}-channel images; only 1 (L) and 3 (RGB) channels can be saved as PNG')
    if class_idx is not None and not net.label_dim:
        raise click.ClickException(f'--class={class_idx} given, but the network is unconditional (label_dim=0)')
    if class_idx is not None and class_idx >= net.label_dim:
        raise click.ClickException(f'--class={class_idx} is out of range: the network has {net.label_dim} classes (0..{net.label_dim - 1})')

#----------------------------------------------------------------------------

def load_network(network_pkl, device):
    """Rank 0 loads first (so a download is cached once), then the others. The file is
    loaded with the safe loader, which never executes code embedded in the pickle."""
    rank = dist.get_rank()
    if rank != 0:
        dist.barrier()
    try:
        net = load_snapshot(network_pkl, verbose=(rank == 0))['ema']
    except (SnapshotError, OSError) as err:
        raise click.ClickException(str(err))
    finally:
        if rank == 0:
            dist.barrier() # Release the other ranks even on failure; they then report the same error.
    return net.to(device)

def split_seeds(seeds, max_batch_size):
    """This rank's batches (cli.md 2.2 item 2): contiguous chunks, the same number per rank."""
    num_batches = ((len(seeds) - 1) // (max_batch_size * dist.get_world_size()) + 1) * dist.get_world_size()
    all_batches = torch.as_tensor(seeds).tensor_split(num_batches)
    return all_batches[dist.get_rank() :: dist.get_world_size()]

def image_path(outdir, seed, subdirs):
    """<outdir>/<seed:06d>.png, or with --subdirs <outdir>/<thousands:06d>/<seed:06d>.png (formats.md 9)."""
    image_dir = os.path.join(outdir, f'{seed - seed % 1000:06d}') if subdirs else outdir
    return os.path.join(image_dir, f'{seed:06d}.png')

def to_uint8(images):
    """Sampler output in [-1, 1] -> uint8 NHWC. The cast truncates, as in the original."""
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

def save_png(image_np, path):
    """PIL PNG, mode L for one channel and RGB for three; written atomically."""
    image = PIL.Image.fromarray(image_np[:, :, 0], 'L') if image_np.shape[2] == 1 else PIL.Image.fromarray(image_np, 'RGB')
    with dnnlib.util.atomic_write(path) as temp_path:
        image.save(temp_path, format='PNG')

#----------------------------------------------------------------------------

def generate_batch(net, batch_seeds, class_idx, sampler_kwargs, device):
    """Draw latents and labels from per-seed generators and run the sampler (cli.md 2.2 items 5-7)."""
    rnd = StackedRandomGenerator(device, batch_seeds)
    batch_size = len(batch_seeds)
    latents = rnd.randn([batch_size, net.img_channels, net.img_resolution, net.img_resolution], device=device)
    class_labels = None
    if net.label_dim:
        # Drawn even when --class is given, so that the noise stream does not depend on it.
        class_labels = torch.eye(net.label_dim, device=device)[rnd.randint(net.label_dim, size=[batch_size], device=device)]
    if class_idx is not None:
        class_labels[:, :] = 0
        class_labels[:, class_idx] = 1
    sampler = ablation_sampler if any(key in sampler_kwargs for key in ABLATION_OPTIONS) else edm_sampler
    with torch.no_grad():
        return sampler(net, latents, class_labels, randn_like=rnd.randn_like, **sampler_kwargs)

#----------------------------------------------------------------------------

@click.command()
@click.option('--network', 'network_pkl',   help='Network pickle to sample from', metavar='PATH|URL',                        type=str, required=True)
@click.option('--outdir',                   help='Folder for the generated PNGs', metavar='DIR',                             type=str, required=True)
@click.option('--seeds',                    help='One image per seed, e.g. 1,2,5-10', metavar='LIST',                        type=dnnlib.util.parse_int_list, default='0-63', show_default=True)
@click.option('--subdirs',                  help='Put every 1000 seeds in a sub-folder of their own',                        is_flag=True)
@click.option('--class', 'class_idx',       help='Use this class label for all images  [default: random]', metavar='INT',    type=click.IntRange(min=0))
@click.option('--batch', 'max_batch_size',  help='Largest batch per process', metavar='INT',                                 type=click.IntRange(min=1), default=64, show_default=True)

@click.option('--steps', 'num_steps',       help='Sampling steps N', metavar='INT',                                          type=click.IntRange(min=1), default=18, show_default=True)
@click.option('--sigma_min',                help='Smallest noise level  [default: varies]', metavar='FLOAT',                 type=click.FloatRange(min=0, min_open=True))
@click.option('--sigma_max',                help='Largest noise level  [default: varies]', metavar='FLOAT',                  type=click.FloatRange(min=0, min_open=True))
@click.option('--rho',                      help='Exponent of the time-step spacing', metavar='FLOAT',                       type=click.FloatRange(min=0, min_open=True), default=7, show_default=True)
@click.option('--S_churn', 'S_churn',       help='Amount of stochasticity (churn)', metavar='FLOAT',                         type=click.FloatRange(min=0), default=0, show_default=True)
@click.option('--S_min', 'S_min',           help='Churn only at noise levels from here', metavar='FLOAT',                    type=click.FloatRange(min=0), default=0, show_default=True)
@click.option('--S_max', 'S_max',           help='Churn only at noise levels up to here', metavar='FLOAT',                   type=click.FloatRange(min=0), default='inf', show_default=True)
@click.option('--S_noise', 'S_noise',       help='Scale factor of the churn noise', metavar='FLOAT',                         type=float, default=1, show_default=True)

@click.option('--solver',                   help='Ablation: ODE solver', metavar='euler|heun',                               type=click.Choice(['euler', 'heun']))
@click.option('--disc', 'discretization',   help='Ablation: noise-level discretisation', metavar='vp|ve|iddpm|edm',          type=click.Choice(['vp', 've', 'iddpm', 'edm']))
@click.option('--schedule',                 help='Ablation: noise schedule sigma(t)', metavar='vp|ve|linear',                type=click.Choice(['vp', 've', 'linear']))
@click.option('--scaling',                  help='Ablation: signal scaling s(t)', metavar='vp|none',                         type=click.Choice(['vp', 'none']))

def main(network_pkl, outdir, subdirs, seeds, class_idx, max_batch_size, **sampler_kwargs):
    """Sample images from a network pickle, one PNG per seed.

    \b
    Examples:
      python generate.py --network=snapshot.pkl --outdir=out --seeds=0-63
      torchrun --standalone --nproc_per_node=2 generate.py --network=snapshot.pkl \\
          --outdir=fid-images --seeds=0-49999 --subdirs
      python generate.py --network=snapshot.pkl --outdir=out --steps=256 \\
          --solver=euler --disc=vp --schedule=vp --scaling=vp
    """
    # Validate what can be checked without the network. --steps=1 would divide 0 by 0 in the
    # time-step formula (the original silently produces NaN images).
    if sampler_kwargs['num_steps'] < 2:
        raise click.ClickException(f'--steps={sampler_kwargs["num_steps"]}: at least 2 sampling steps are needed')
    check_outdir(outdir)

    dist.init()
    device = dist.get_device()
    rank_batches = split_seeds(seeds, max_batch_size)

    dist.print0(f'Loading network from "{network_pkl}"...')
    net = load_network(network_pkl, device)
    check_network(net, class_idx)

    # Options left at None take the sampler's own defaults (cli.md 2.2 item 7).
    sampler_kwargs = {key: value for key, value in sampler_kwargs.items() if value is not None}

    dist.print0(f'Generating {len(seeds)} images to "{outdir}"...')
    if dist.get_rank() == 0:
        num_existing = sum(os.path.exists(image_path(outdir, seed, subdirs)) for seed in seeds)
        if num_existing:
            print(f'Note: {num_existing} of these images already exist and will be replaced.')
    for batch_seeds in tqdm.tqdm(rank_batches, unit='batch', disable=(dist.get_rank() != 0)):
        dist.barrier()
        if len(batch_seeds) == 0:
            continue
        images = generate_batch(net, batch_seeds, class_idx, sampler_kwargs, device)
        for seed, image_np in zip(batch_seeds.tolist(), to_uint8(images)):
            path = image_path(outdir, seed, subdirs)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_png(image_np, path)

    dist.barrier()
    dist.print0('Done.')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
