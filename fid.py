"""Command line for the Frechet Inception Distance (FID; Heusel et al. 2017). The computations
are in training/fid_stats.py, which a notebook can call directly."""

import collections
import contextlib
import os

import click
import torch

import dnnlib
from torch_utils import distributed as dist
from training import fid_stats, inception, sampling_cli
from training.generation import load_network
from training.snapshot import SnapshotError

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

def parse_metrics(_ctx, _param, text):
    """--metrics: a comma-separated selection of fid, kid and pr, in any order."""
    names = [name.strip().lower() for name in text.split(',') if name.strip()]
    unknown = [name for name in names if name not in fid_stats.METRICS]
    if unknown or not names:
        raise click.BadParameter(f'"{text}": expected a comma-separated list of {", ".join(fid_stats.METRICS)}')
    return [name for name in fid_stats.METRICS if name in names]

def reference_on_rank0(ref_path, names):
    """The reference file for the metrics `names`, announced and read by rank 0 (None elsewhere);
    for KID and precision/recall it must hold the dataset's features."""
    stats = stats_on_rank0(ref_path, 'dataset reference statistics')
    if stats is not None and fid_stats.needs_features(names):
        fid_stats.reference_features(stats, f'--ref={ref_path}')
    return stats

def check_sample_count(names, num, option):
    """Precision and recall compare each sample with its k = 3 nearest neighbours: more than 3 are needed."""
    if 'pr' in names and num <= 3:
        raise click.ClickException(f'{option}: {num} images are too few; precision and recall (k=3 nearest neighbours) need at least 4')

def print_metrics(values):
    """FID as a bare number, as without --metrics; the others one per line with their name."""
    labels = dict(kid='KID', precision='Precision', recall='Recall')
    for key, value in values.items():
        print(f'{value:g}' if key == 'fid' else f'{labels[key]}: {value:g}')

batch_option = click.option('--batch', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True,
    help='Maximum batch size')
detector_option = click.option('--detector', 'detector_url', metavar='PKL|PT|URL', default=inception.DETECTOR_URL,
    show_default="NVIDIA's inception-2015-12-05.pkl", help='Inception detector: NVIDIA .pkl or TorchScript .pt')
metrics_option = click.option('--metrics', 'names', metavar='LIST', callback=parse_metrics, default='fid', show_default=True,
    help='Metrics to print: fid, kid (Kernel Inception Distance), pr (precision and recall); kid and pr need a --ref made with --features')

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
    # Reference statistics of your own dataset, with the features for KID and precision/recall
    python fid.py ref --dest=fid-refs/my-dataset.npz --data=datasets/my-dataset.zip --features

    \b
    # FID, KID, precision and recall of 10,000 images sampled in memory (no PNGs written)
    torchrun --standalone --nproc_per_node=1 fid.py gen --network=snapshot.pkl \\
        --ref=fid-refs/my-dataset.npz --seeds=0-9999 --metrics=fid,kid,pr
    """

#----------------------------------------------------------------------------

@main.command()
@click.option('--images', 'image_path', metavar='PATH|ZIP', required=True, help='Path to the images')
@click.option('--ref', 'ref_path', metavar='NPZ|URL', required=True, help='Reference statistics of the dataset')
@click.option('--num', 'num_expected', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True,
    help='Number of images to use')
@click.option('--seed', metavar='INT', type=int, default=0, show_default=True, help='Random seed for selecting the images')
@metrics_option
@batch_option
@detector_option
def calc(image_path, ref_path, num_expected, seed, names, batch, detector_url):
    """FID (or --metrics) of a set of images against a reference."""
    check_sample_count(names, num_expected, '--num')
    start_processes()
    with bad_input_ends_command():
        reference = reference_on_rank0(ref_path, names)
        stats = fid_stats.compute_stats(image_path, num=num_expected, seed=seed, max_batch_size=batch,
            detector_url=detector_url, keep_features=fid_stats.needs_features(names))
        if reference is not None: # Rank 0.
            print_metrics(fid_stats.score(names, reference, *stats, source=f'--ref={ref_path}', device=dist.get_device()))
    dist.barrier()

@main.command()
@click.option('--data', 'dataset_path', metavar='PATH|ZIP', required=True, help='Path to the dataset')
@click.option('--dest', 'dest_path', metavar='NPZ', required=True, help='Destination .npz file')
@click.option('--features', 'with_features', is_flag=True,
    help='Also store the Inception features (key "features", float32 [N, 2048], at most 50,000) for KID and precision/recall')
@batch_option
@detector_option
def ref(dataset_path, dest_path, with_features, batch, detector_url):
    """Reference statistics of a dataset, for use with 'calc' and 'gen'.

    The .npz file holds the arrays mu (float64 [2048]) and sigma (float64 [2048, 2048]), the mean and
    covariance of the dataset's Inception features, and with --features also features (float32
    [N, 2048], the features themselves in dataset order; a seeded random subset of 50,000 for larger
    datasets), which KID and precision/recall need.
    """
    check_dest(dest_path)
    start_processes()
    with bad_input_ends_command():
        stats = fid_stats.compute_stats(dataset_path, max_batch_size=batch, detector_url=detector_url,
            keep_features=with_features)
        dist.print0(f'Saving dataset reference statistics to "{dest_path}"...')
        if dist.get_rank() == 0:
            fid_stats.save_stats(dest_path, *stats)
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

def parse_optional_seeds(ctx, param, text):
    """--seeds as generate.py reads it; None when not given."""
    return None if text is None else sampling_cli.parse_seeds(ctx, param, text)

def generation_seeds(num, seeds):
    """The seeds to sample: --seeds, else 0..--num-1 (default 50,000). Each seed once (generate.py
    would write its PNG once) and at least two of them (no covariance otherwise)."""
    if seeds is None:
        return list(range(50000 if num is None else num))
    if num is not None and num != len(seeds):
        raise click.ClickException(f'--num={num} disagrees with the {len(seeds)} seeds of --seeds; give one of the two')
    repeated = [seed for seed, count in collections.Counter(seeds).items() if count > 1]
    if repeated:
        raise click.ClickException(f'--seeds: seed {repeated[0]} is given more than once; each image needs a seed of its own')
    if len(seeds) < 2:
        raise click.ClickException(f'--seeds: {len(seeds)} seed gives no covariance; at least 2 images are needed')
    return seeds

def load_generator(network_pkl, sampling):
    """The network of --network, read with the safe loader, and the generate_images arguments of the
    sampling options, checked against it."""
    dist.print0(f'Loading network from "{network_pkl}"...')
    try:
        net = load_network(network_pkl)
    except (SnapshotError, OSError) as err:
        raise click.ClickException(str(err)) from None
    generate_kwargs = sampling_cli.generate_kwargs(net, sampling, dist.get_device())
    if net.img_channels not in (1, 3):
        raise click.ClickException(f'--network: the network produces {net.img_channels}-channel images; Inception takes 1 or 3 channels')
    return net, generate_kwargs

@main.command()
@click.option('--network', 'network_pkl', metavar='PATH|URL', required=True, help='Network pickle to sample from')
@click.option('--ref', 'ref_path', metavar='NPZ|URL', required=True, help='Reference statistics of the dataset')
@click.option('--num', metavar='INT', type=click.IntRange(min=2), help='Number of images, seeds 0 to INT-1  [default: 50000]')
@click.option('--seeds', metavar='LIST', callback=parse_optional_seeds,
    help='Seeds of the images instead, e.g. 0-9999 or 1,2,5-10')
@metrics_option
@detector_option
@sampling_cli.sampler_options
def gen(network_pkl, ref_path, num, seeds, names, detector_url, **sampling):
    """FID (or --metrics) of a network's images, sampled in memory.

    Scores the images of a network without writing them: the same images, seed for seed, as
    generate.py with the same seeds and sampling options, and the same values as 'calc' on them.
    --batch sets the batch of the sampler and of the detector.
    """
    sampling_cli.check_sampler_options(sampling)
    seeds = generation_seeds(num, seeds)
    check_sample_count(names, len(seeds), '--num' if num is not None else '--seeds')
    start_processes()
    with bad_input_ends_command():
        reference = reference_on_rank0(ref_path, names)
    net, generate_kwargs = load_generator(network_pkl, sampling)
    with bad_input_ends_command():
        detector = fid_stats.announced_detector(detector_url, dist.get_device())
        dist.print0(f'Calculating statistics for {len(seeds)} generated images...')
        stats = fid_stats.generated_stats(net, seeds, detector, keep_features=fid_stats.needs_features(names),
            progress=(dist.get_rank() == 0), **generate_kwargs)
        if reference is not None: # Rank 0.
            print_metrics(fid_stats.score(names, reference, *stats, source=f'--ref={ref_path}', device=dist.get_device()))
    dist.barrier()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
