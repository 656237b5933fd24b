"""Command line for the Frechet Inception Distance (FID; Heusel et al. 2017). The computations
are in training/fid_stats.py, which a notebook can call directly."""

import contextlib
import os

import click
import torch

import dnnlib
from torch_utils import distributed as dist
from training import fid_stats, inception

#----------------------------------------------------------------------------

def start_processes():
    """Loader workers are spawned, not forked; one process group per run (torchrun or single)."""
    torch.multiprocessing.set_start_method('spawn', force=True)
    dist.init()

@contextlib.contextmanager
def bad_input_ends_command():
    """A missing file, too few images or unusable statistics end the command with one line."""
    try:
        yield
    except (OSError, fid_stats.StatsError) as err:
        raise click.ClickException(str(err)) from None

def check_dest(dest_path):
    """--dest must name a file (np.savez appends '.npz') that can be written, in a folder that
    exists or can be created. Checked before any work, with an anonymous temporary file in the
    nearest existing folder, so that nothing is left behind."""
    if os.path.basename(dest_path) in ('', '.', '..'):
        raise click.ClickException(f'--dest="{dest_path}" names a folder; expected a file name such as "{os.path.join(dest_path, "stats.npz")}"')
    target = fid_stats.npz_path(dest_path)
    if os.path.isdir(target):
        raise click.ClickException(f'--dest="{dest_path}": "{target}" is a folder; expected a file name')
    try:
        dnnlib.util.check_can_create(target)
    except OSError as err:
        raise click.ClickException(f'--dest="{dest_path}": cannot write to "{target}" ({err.strerror or err})') from None

def stats_on_rank0(path_or_url, what):
    """Announce and read a statistics file; only rank 0 reads it, the other ranks get None."""
    dist.print0(f'Loading {what} from "{path_or_url}"...')
    return fid_stats.load_stats(path_or_url) if dist.get_rank() == 0 else None

batch_option = click.option('--batch', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True,
    help='Maximum batch size')
detector_option = click.option('--detector', 'detector_url', metavar='PKL|PT|URL', default=inception.DETECTOR_URL,
    show_default="NVIDIA's inception-2015-12-05.pkl", help='Inception detector: NVIDIA .pkl or TorchScript .pt')

#----------------------------------------------------------------------------

@click.group()
def main():
    """Frechet Inception Distance (FID) of generated images.

    Examples:

    \b
    # 50,000 images of a pretrained model, saved as fid-tmp/*/*.png
    torchrun --standalone --nproc_per_node=1 generate.py --seeds=0-49999 --subdirs --outdir=fid-tmp \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl

    \b
    # Their FID against the published CIFAR-10 statistics
    torchrun --standalone --nproc_per_node=1 fid.py calc \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz --images=fid-tmp

    \b
    # Reference statistics of your own dataset
    python fid.py ref --dest=fid-refs/my-dataset.npz --data=datasets/my-dataset.zip
    """

#----------------------------------------------------------------------------

@main.command()
@click.option('--images', 'image_path', metavar='PATH|ZIP', required=True, help='Path to the images')
@click.option('--ref', 'ref_path', metavar='NPZ|URL', required=True, help='Reference statistics of the dataset')
@click.option('--num', 'num_expected', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True,
    help='Number of images to use')
@click.option('--seed', metavar='INT', type=int, default=0, show_default=True, help='Random seed for selecting the images')
@batch_option
@detector_option
def calc(image_path, ref_path, num_expected, seed, batch, detector_url):
    """FID of a set of images against reference statistics."""
    start_processes()
    with bad_input_ends_command():
        fid = fid_stats.compute_fid(image_path, ref_path, num=num_expected, seed=seed, max_batch_size=batch,
            detector_url=detector_url)
    if fid is not None: # Rank 0.
        print(f'{fid:g}')
    dist.barrier()

@main.command()
@click.option('--data', 'dataset_path', metavar='PATH|ZIP', required=True, help='Path to the dataset')
@click.option('--dest', 'dest_path', metavar='NPZ', required=True, help='Destination .npz file')
@batch_option
@detector_option
def ref(dataset_path, dest_path, batch, detector_url):
    """Reference statistics of a dataset, for use with 'calc'."""
    check_dest(dest_path)
    start_processes()
    with bad_input_ends_command():
        mu, sigma = fid_stats.compute_stats(dataset_path, max_batch_size=batch, detector_url=detector_url)
        dist.print0(f'Saving dataset reference statistics to "{dest_path}"...')
        if dist.get_rank() == 0:
            fid_stats.save_stats(dest_path, mu, sigma)
    dist.barrier()
    dist.print0('Done.')

@main.command()
@click.option('--edm_path', 'dest_path', metavar='NPZ', required=True, help='EDM reference statistics')
@click.option('--sqa_ref', 'ref_path', metavar='NPZ|URL', required=True, help='Reference statistics to compare against')
def sqa(dest_path, ref_path):
    """FID between two reference statistics files (sanity check)."""
    start_processes()
    with bad_input_ends_command():
        sqa_stats = stats_on_rank0(ref_path, 'SQA reference statistics')
        edm_stats = stats_on_rank0(dest_path, 'EDM reference statistics')
    dist.print0('Calculating FID...')
    if dist.get_rank() == 0:
        fid = fid_stats.fid_from_stats(edm_stats['mu'], edm_stats['sigma'], sqa_stats['mu'], sqa_stats['sigma'])
        print(f'{fid:g}')
    dist.barrier()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
