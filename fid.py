"""Frechet Inception Distance (FID): statistics of image sets and the distance between them
(cli.md section 3, sampling-and-fid.md section 3)."""

import click
import torch

from torch_utils import distributed as dist
from training import fid_stats
from training import inception

#----------------------------------------------------------------------------

def init_processes():
    """Spawned data-loading workers and one process group per run, as the original does."""
    torch.multiprocessing.set_start_method('spawn', force=True)
    dist.init()

def load_stats0(path_or_url, what):
    """Statistics read on rank 0 only; the other ranks get None."""
    dist.print0(f'Loading {what} from "{path_or_url}"...')
    return fid_stats.load_stats(path_or_url, verbose=(dist.get_rank() == 0)) if dist.get_rank() == 0 else None

#----------------------------------------------------------------------------

@click.group()
def main():
    """Calculate Frechet Inception Distance (FID).

    Examples:

    \b
    # Generate 50000 images and save them as fid-tmp/*/*.png
    torchrun --standalone --nproc_per_node=1 generate.py --outdir=fid-tmp --seeds=0-49999 --subdirs \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl

    \b
    # Calculate FID
    torchrun --standalone --nproc_per_node=1 fid.py calc --images=fid-tmp \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz

    \b
    # Compute dataset reference statistics
    python fid.py ref --data=datasets/my-dataset.zip --dest=fid-refs/my-dataset.npz
    """

#----------------------------------------------------------------------------

@main.command()
@click.option('--images', 'image_path', help='Path to the images', metavar='PATH|ZIP', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference statistics of the dataset', metavar='NPZ|URL', type=str, required=True)
@click.option('--num', 'num_expected', help='Number of images to use', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--seed', help='Random seed for selecting the images', metavar='INT', type=int, default=0, show_default=True)
@click.option('--batch', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--detector', 'detector_url', help='Inception detector: NVIDIA .pkl or TorchScript .pt', metavar='PKL|PT|URL', type=str, default=inception.DETECTOR_URL, show_default='NVIDIA\'s inception-2015-12-05.pkl')
def calc(image_path, ref_path, num_expected, seed, batch, detector_url):
    """FID of a set of images against reference statistics."""
    init_processes()
    try:
        ref = load_stats0(ref_path, 'dataset reference statistics')
        mu, sigma = fid_stats.calculate_inception_stats(image_path=image_path, num_expected=num_expected,
            seed=seed, max_batch_size=batch, detector_url=detector_url)
    except (OSError, fid_stats.StatsError) as err:
        raise click.ClickException(str(err)) from None # One line naming the bad input.
    dist.print0('Calculating FID...')
    if dist.get_rank() == 0:
        fid = fid_stats.calculate_fid_from_inception_stats(mu, sigma, ref['mu'], ref['sigma'])
        print(f'{fid:g}')
    dist.barrier()

#----------------------------------------------------------------------------

@main.command()
@click.option('--data', 'dataset_path', help='Path to the dataset', metavar='PATH|ZIP', type=str, required=True)
@click.option('--dest', 'dest_path', help='Destination .npz file', metavar='NPZ', type=str, required=True)
@click.option('--batch', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--detector', 'detector_url', help='Inception detector: NVIDIA .pkl or TorchScript .pt', metavar='PKL|PT|URL', type=str, default=inception.DETECTOR_URL, show_default='NVIDIA\'s inception-2015-12-05.pkl')
def ref(dataset_path, dest_path, batch, detector_url):
    """Reference statistics of a dataset, for use with 'calc'."""
    init_processes()
    try:
        mu, sigma = fid_stats.calculate_inception_stats(image_path=dataset_path, max_batch_size=batch, detector_url=detector_url)
        dist.print0(f'Saving dataset reference statistics to "{dest_path}"...')
        if dist.get_rank() == 0:
            fid_stats.save_stats(dest_path, mu, sigma)
    except (OSError, fid_stats.StatsError) as err:
        raise click.ClickException(str(err)) from None # One line naming the bad input.
    dist.barrier()
    dist.print0('Done.')

#----------------------------------------------------------------------------

@main.command()
@click.option('--edm_path', 'dest_path', help='EDM reference statistics', metavar='NPZ', type=str, required=True)
@click.option('--sqa_ref', 'ref_path', help='Reference statistics to compare against', metavar='NPZ|URL', type=str, required=True)
def sqa(dest_path, ref_path):
    """FID between two reference statistics files (sanity check)."""
    init_processes()
    try:
        sqa_stats = load_stats0(ref_path, 'SQA reference statistics')
        edm_stats = load_stats0(dest_path, 'EDM reference statistics')
    except (OSError, fid_stats.StatsError) as err:
        raise click.ClickException(str(err)) from None # One line naming the bad input.
    dist.print0('Calculating FID...')
    if dist.get_rank() == 0:
        fid = fid_stats.calculate_fid_from_inception_stats(edm_stats['mu'], edm_stats['sigma'], sqa_stats['mu'], sqa_stats['sigma'])
        print(f'{fid:g}')
    dist.barrier()

#----------------------------------------------------------------------------

if __name__ == "__main__":
    main()

#----------------------------------------------------------------------------
