"""Frechet Inception Distance (FID; Heusel et al. 2017, "GANs trained by a two time-scale update
rule converge to a local Nash equilibrium"): Inception-v3 feature statistics of an image set, and
the Frechet distance between the Gaussians that two such statistics describe.

Usable from a notebook as well as from fid.py:

    mu, sigma = compute_stats('fid-tmp', num=50000)
    fid = fid_from_stats(mu, sigma, *load_stats('cifar10-32x32.npz'))
    fid = compute_fid('fid-tmp', ref='https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz')

The images of a network can be scored without writing them, in memory as they are sampled:

    detector = inception.load_detector(device=torch.device('cuda'))
    mu, sigma, features = generated_stats('snapshot.pkl', range(50000), detector, keep_features=True)
    print(score(['fid', 'kid', 'pr'], load_stats('my-dataset.npz'), mu, sigma, features))

Statistics files are what `np.savez(path, mu=mu, sigma=sigma)` writes: float64 mu [2048] and
sigma [2048, 2048], the unbiased covariance of the features. Reference files made with the
features (`fid.py ref --features`) also hold float32 `features` [N, 2048], which KID and
precision/recall need (training/metrics.py).
"""

import contextlib
import ctypes
import os
import platform
import warnings
import zipfile

import numpy as np
import torch
import tqdm
from scipy import linalg

import dnnlib
from torch_utils import distributed as dist
from training import dataset, inception, metrics
from training.generation import generate_images

class StatsError(ValueError):
    """The input cannot give statistics: too few images, or a file without usable mu and sigma."""

#----------------------------------------------------------------------------
# Image sets.

def open_image_set(image_path, num=None, seed=0):
    """The images in a folder or zip, in sorted order. With `num`, a random subset of exactly
    that many (drawn with `seed`, then sorted); having fewer than `num`, or fewer than two
    images in all (no covariance), is an error."""
    images = dataset.ImageFolderDataset(path=image_path, max_size=num, random_seed=seed)
    found = len(images)
    if num is not None and found < num:
        raise StatsError(f'{image_path}: found {found} images, but expected at least {num}')
    if found < 2:
        raise StatsError(f'{image_path}: found {found} image(s), but at least 2 are needed for statistics')
    return images

def default_device():
    """This process's device when the process group is set up (fid.py), else the GPU if any."""
    if torch.distributed.is_initialized():
        return dist.get_device()
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')

#----------------------------------------------------------------------------
# Feature statistics: sample mean and unbiased covariance of the 2048-D pool features.

def batch_features(detector, images, detector_url=None):
    """float64 features [B, 2048] of a uint8 NCHW batch. Grayscale is repeated to RGB here unless
    the detector takes it as it is (`takes_grayscale`). `detector_url` names it in errors."""
    if images.shape[1] == 1 and not getattr(detector, 'takes_grayscale', False):
        images = images.repeat([1, 3, 1, 1])
    features = detector(images)
    expected = [images.shape[0], inception.FEATURE_DIM]
    if list(features.shape) != expected:
        where = f'{detector_url}: ' if detector_url else ''
        raise StatsError(f'{where}the detector returned features of shape {list(features.shape)}, expected {expected}')
    return features.to(torch.float64)

def mean_and_covariance(feature_sum, outer_sum, count):
    """Mean and unbiased covariance (divisor count - 1) from the sum of the feature vectors and
    the sum of their outer products."""
    mean = feature_sum / count
    covariance = (outer_sum - count * torch.outer(mean, mean)) / (count - 1)
    return mean, covariance

def default_workers(device):
    """Loader processes that decode images while the detector runs: 3 beside a GPU; none on the CPU,
    where decoding is ~0.1% of the detector's time and a process would only take cores from it."""
    return 3 if device.type == 'cuda' else 0

@contextlib.contextmanager
def freed_memory_kept():
    """Within the block, memory that the process frees stays in its heap for the next allocation
    (glibc on Linux; elsewhere a no-op). By default glibc hands every block over 128 KiB back to the
    kernel when it is freed, so each of the detector's activations (up to 180 MB for 64 images)
    was page-faulted in anew at every layer: a quarter of the CPU time of a batch. Afterwards freed
    memory is returned again, with glibc's default thresholds (128 KiB, now fixed)."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        yield
        return
    libc = ctypes.CDLL(None)
    trim_threshold, mmap_threshold = -1, -3 # mallopt parameters M_TRIM_THRESHOLD and M_MMAP_THRESHOLD.
    for parameter in (trim_threshold, mmap_threshold):
        libc.mallopt(parameter, 2**31 - 1)
    try:
        yield
    finally:
        for parameter in (trim_threshold, mmap_threshold):
            libc.mallopt(parameter, 128 * 1024)
        libc.malloc_trim(0)

class FeatureMoments:
    """Float64 running sums of the features of `count` items and of their outer products, from which
    the mean and unbiased covariance follow. `batches` is this rank's share of the item positions
    0..count-1 (dist.split_batches), in the order in which the batches are to be added. Under torchrun
    the sums are combined across ranks; with `keep_features` the float32 features themselves are also
    kept, to be gathered in item order on every rank."""

    def __init__(self, count, max_batch_size, device, keep_features=False):
        if count < 2:
            raise StatsError(f'{count} image(s) give no covariance; at least 2 are needed for statistics')
        self.count = count
        self.batches = dist.split_batches(torch.arange(count), max_batch_size)
        dim = inception.FEATURE_DIM
        self.feature_sum = torch.zeros([dim], dtype=torch.float64, device=device)
        self.outer_sum = torch.zeros([dim, dim], dtype=torch.float64, device=device)
        self.kept = [] if keep_features else None # (positions, float32 features) per batch.

    def add(self, features, positions):
        """Add float64 features [B, 2048] of the items at `positions` [B]."""
        self.feature_sum += features.sum(0)
        self.outer_sum.addmm_(features.T, features)
        if self.kept is not None:
            self.kept.append((positions.to(features.device), features.to(torch.float32)))

    def result(self):
        """(mu, sigma) as float64 tensors on the sums' device, identical on every rank; with
        keep_features (mu, sigma, features), features float32 [count, 2048] on the CPU, row i
        belonging to item i."""
        if dist.get_world_size() > 1:
            for total in (self.feature_sum, self.outer_sum):
                torch.distributed.all_reduce(total)
        mu, sigma = mean_and_covariance(self.feature_sum, self.outer_sum, self.count)
        if self.kept is None:
            return mu, sigma
        return mu, sigma, self.features_in_item_order()

    def features_in_item_order(self):
        """Every rank's kept features, gathered and put in item order: ranks hold different numbers of
        rows, so each rank pads its rows to the largest share before the all_gather."""
        dim, device = inception.FEATURE_DIM, self.feature_sum.device
        positions = torch.cat([p for p, _ in self.kept] + [torch.zeros([0], dtype=torch.int64, device=device)])
        features = torch.cat([f for _, f in self.kept] + [torch.zeros([0, dim], device=device)])
        if dist.get_world_size() > 1:
            positions, features = gather_rows(positions, features)
        ordered = torch.empty([self.count, dim], dtype=torch.float32)
        ordered[positions.cpu()] = features.cpu()
        return ordered

def gather_rows(positions, features):
    """The concatenation over all ranks of (positions [n_r], features [n_r, D]), n_r varying by rank."""
    world = dist.get_world_size()
    share = torch.tensor([len(positions)], device=positions.device)
    shares = [torch.zeros_like(share) for _ in range(world)]
    torch.distributed.all_gather(shares, share)
    largest = int(max(shares))
    padded_positions = positions.new_zeros([largest])
    padded_positions[:len(positions)] = positions
    padded_features = features.new_zeros([largest, features.shape[1]])
    padded_features[:len(features)] = features
    all_positions = [torch.zeros_like(padded_positions) for _ in range(world)]
    all_features = [torch.zeros_like(padded_features) for _ in range(world)]
    torch.distributed.all_gather(all_positions, padded_positions)
    torch.distributed.all_gather(all_features, padded_features)
    lengths = [int(n) for n in shares]
    return (torch.cat([p[:n] for p, n in zip(all_positions, lengths)]),
            torch.cat([f[:n] for f, n in zip(all_features, lengths)]))

def detector_stats(detector, images, device, max_batch_size=64, num_workers=0, prefetch_factor=2,
        detector_url=None, progress=False, keep_freed_memory=True, keep_features=False):
    """(mu, sigma) as float64 tensors on `device`: the mean and unbiased covariance of the detector's
    features of a dataset of uint8 images. Under torchrun every rank takes its share of the batches
    and the sums are combined, so each rank returns the same statistics. The sums stay float64.
    On the CPU, `keep_freed_memory` runs the detector within `freed_memory_kept()`. With
    `keep_features`, (mu, sigma, features): see FeatureMoments.result."""
    moments = FeatureMoments(len(images), max_batch_size, device, keep_features)
    loader = torch.utils.data.DataLoader(images, num_workers=num_workers, pin_memory=(device.type == 'cuda'),
        batch_sampler=moments.batches, prefetch_factor=(prefetch_factor if num_workers > 0 else None))
    heap = freed_memory_kept() if keep_freed_memory and device.type == 'cpu' else contextlib.nullcontext()
    with heap, torch.inference_mode():
        batches = tqdm.tqdm(loader, unit='batch', disable=not progress)
        for positions, (pixels, _labels) in zip(moments.batches, batches):
            dist.barrier() # Keeps the ranks in step, so rank 0's progress bar speaks for all.
            if len(pixels) == 0:
                continue
            moments.add(batch_features(detector, pixels.to(device, non_blocking=True), detector_url), positions)
    return moments.result()

def generated_stats(net, seeds, detector, max_batch_size=64, device=None, keep_features=False, progress=False,
        **generate_kwargs):
    """Inception statistics (mu, sigma), float64 numpy arrays, of the images that
    training.generation.generate_images(net, seeds, ...) samples, scored in memory as they come:
    equal, up to float round-off, to those of the same seeds saved as PNGs by generate.py and read
    back by compute_stats (PNG is lossless). `detector` is a loaded one (inception.load_detector),
    `generate_kwargs` go to generate_images (class_idx, fast, sampler options). Under torchrun each
    rank samples its share of the seeds, as generate.py does, and every rank returns the same values.
    With `keep_features`, (mu, sigma, features): features float32 [len(seeds), 2048], row i
    belonging to seeds[i], on every rank."""
    seeds = list(seeds)
    device = default_device() if device is None else torch.device(device)
    moments = FeatureMoments(len(seeds), max_batch_size, device, keep_features)
    shares = [positions for positions in moments.batches if len(positions)] # As generate_images yields them.
    heap = freed_memory_kept() if device.type == 'cpu' else contextlib.nullcontext()
    generated = generate_images(net, seeds, max_batch_size=max_batch_size, device=device, **generate_kwargs)
    with heap:
        for batch, positions in zip(tqdm.tqdm(generated, unit='batch', total=len(shares), disable=not progress), shares):
            if batch.seeds != [seeds[i] for i in positions]:
                raise RuntimeError('generate_images split the seeds differently from FeatureMoments')
            if batch.images.shape[-1] not in (1, 3):
                raise StatsError(f'the network produces {batch.images.shape[-1]}-channel images; Inception needs 1 or 3')
            with torch.inference_mode():
                pixels = batch.images.permute(0, 3, 1, 2).to(device)
                moments.add(batch_features(detector, pixels), positions)
    stats = [value.cpu().numpy() for value in moments.result()]
    check_finite('the features of the generated images', mu=stats[0], sigma=stats[1])
    return tuple(stats)

def announced_detector(detector_url, device):
    """The Inception detector of `detector_url` on `device`; rank 0 announces and loads it first."""
    with dist.rank_zero_first():
        dist.print0('Loading Inception-v3 model...')
        return inception.load_detector(detector_url, device=device, verbose=(dist.get_rank() == 0))

def compute_stats(image_path, num=None, seed=0, max_batch_size=64, detector_url=inception.DETECTOR_URL,
        device=None, num_workers=None, prefetch_factor=2, keep_features=False):
    """Inception statistics (mu, sigma) of the images at `image_path`, as float64 numpy arrays.

    `num` selects a seeded random subset of that many images (all images when None). Under
    torchrun every rank takes its share of the batches and the sums are combined, so each rank
    returns the same statistics. `num_workers=None` chooses `default_workers(device)`. With
    `keep_features`, (mu, sigma, features): the float32 features [N, 2048] in image order.
    """
    if not os.path.exists(image_path): # Said before the detector is loaded, which may mean a download.
        raise IOError(f'{image_path}: no such image folder or zip file')
    device = default_device() if device is None else torch.device(device)
    leader = dist.get_rank() == 0
    detector = announced_detector(detector_url, device)
    with dist.rank_zero_first(): # Rank 0 reports bad inputs first.
        dist.print0(f'Loading images from "{image_path}"...')
        images = open_image_set(image_path, num, seed)

    dist.print0(f'Calculating statistics for {len(images)} images...')
    stats = detector_stats(detector, images, device, max_batch_size=max_batch_size,
        num_workers=(default_workers(device) if num_workers is None else num_workers),
        prefetch_factor=prefetch_factor, detector_url=detector_url, progress=leader, keep_features=keep_features)
    stats = tuple(value.cpu().numpy() for value in stats)
    check_finite(f'the features of {image_path}', mu=stats[0], sigma=stats[1])
    return stats

#----------------------------------------------------------------------------
# The Frechet distance between N(mu, sigma) and N(mu_ref, sigma_ref) (Heusel et al. 2017):
#   |mu - mu_ref|^2 + tr(sigma + sigma_ref - 2 (sigma sigma_ref)^(1/2)).

def matrix_sqrt(a):
    """Principal square root of a square matrix. scipy's `disp` argument is left out (deprecated
    in SciPy 1.16, removed in 1.18); the warning about singular or ill-conditioned input is
    silenced, as covariances of fewer images than features are singular."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', linalg.LinAlgWarning)
        return linalg.sqrtm(a)

def fid_from_stats(mu, sigma, mu_ref, sigma_ref):
    """FID of statistics (mu, sigma) against reference statistics (mu_ref, sigma_ref), as a float.
    The square root is taken of sigma @ sigma_ref, in this order; only its real part counts.
    StatsError when an input or the result is not finite (scipy's sqrtm may not return on NaN)."""
    check_finite('the statistics', mu=mu, sigma=sigma)
    check_finite('the reference statistics', mu=mu_ref, sigma=sigma_ref)
    mean_term = np.sum(np.square(mu - mu_ref))
    cross = matrix_sqrt(sigma @ sigma_ref)
    distance = float(np.real(mean_term + np.trace(sigma + sigma_ref - 2 * cross)))
    if not np.isfinite(distance):
        raise StatsError(f'the FID came out as {distance}: the square root of sigma @ sigma_ref failed')
    return distance

def compute_fid(image_path, ref, num=None, seed=0, **stats_kwargs):
    """FID of the images at `image_path` against `ref`: a statistics .npz (path or URL) or a pair
    (mu, sigma). `num`, `seed` and `stats_kwargs` go to `compute_stats`. Under torchrun the
    value is computed on rank 0; the other ranks return None."""
    leader = dist.get_rank() == 0
    if isinstance(ref, (str, os.PathLike)):
        dist.print0(f'Loading dataset reference statistics from "{ref}"...')
        if leader:
            stats = load_stats(os.fspath(ref))
            ref = stats['mu'], stats['sigma']
    mu, sigma = compute_stats(image_path, num=num, seed=seed, **stats_kwargs)
    dist.print0('Calculating FID...')
    if not leader:
        return None
    mu_ref, sigma_ref = ref
    return fid_from_stats(mu, sigma, mu_ref, sigma_ref)

#----------------------------------------------------------------------------
# All metrics of one pass of features: FID from the statistics; KID and precision/recall (see
# training/metrics.py) from the features, which the reference file must then hold as well.

METRICS = ('fid', 'kid', 'pr')

def needs_features(names):
    """Whether any of the metric `names` is computed from the features rather than mu and sigma."""
    return any(name != 'fid' for name in names)

def reference_features(reference, source):
    """float32 features [N, 2048] of a reference that load_stats read from `source`. StatsError when
    the file holds none (it predates them, or was made without --features) or too few of them."""
    try:
        features = metrics.load_reference_features(reference)
    except ValueError as err:
        raise StatsError(f'{source}: {err}') from None
    if features is None:
        raise StatsError(f'{source}: holds only mu and sigma; KID and precision/recall also need the Inception '
            f'features "{metrics.FEATURES_KEY}" of the dataset: make the file with `fid.py ref --features`')
    if features.shape[1] != inception.FEATURE_DIM:
        raise StatsError(f'{source}: "{metrics.FEATURES_KEY}" has shape {list(features.shape)}, expected [N, {inception.FEATURE_DIM}]')
    return features

def score(names, reference, mu, sigma, features=None, source='the reference', device='cpu'):
    """The metrics `names` (a subset of METRICS) of generated statistics (mu, sigma) and, for KID and
    precision/recall, their features, against a reference as load_stats returns it. Returns a dict
    with the keys fid, kid, precision and recall, as asked for; each value is a float."""
    values = {}
    if 'fid' in names:
        dist.print0('Calculating FID...')
        values['fid'] = fid_from_stats(mu, sigma, reference['mu'], reference['sigma'])
    if not needs_features(names):
        return values
    real = reference_features(reference, source)
    try:
        if 'kid' in names:
            dist.print0('Calculating KID...')
            values['kid'] = metrics.kid(real, features, device=device)
        if 'pr' in names:
            dist.print0('Calculating precision and recall...')
            values['precision'], values['recall'] = metrics.precision_recall(real, features, device=device)
    except ValueError as err: # Too few samples for k nearest neighbours.
        raise StatsError(str(err)) from None
    return values

#----------------------------------------------------------------------------
# Statistics files.

def load_stats(path_or_url, verbose=True):
    """dict(mu=..., sigma=...) read from a local .npz or a URL (downloaded once into the cache).
    IOError when the file cannot be had; StatsError when it is no .npz, or mu or sigma is
    missing or has the wrong shape."""
    try:
        f = dnnlib.util.open_url(path_or_url, verbose=verbose)
    except FileNotFoundError:
        raise IOError(f'{path_or_url}: statistics file not found') from None
    except OSError as err:
        if dnnlib.util.is_url(path_or_url):
            raise # The download error is one line that names the URL.
        raise IOError(f'{path_or_url}: cannot open statistics file ({err.strerror or err})') from None
    with f:
        try:
            stats = dict(np.load(f))
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise StatsError(f'{path_or_url}: not a readable .npz statistics file ({dnnlib.util.error_summary(err)})') from None
    dim = inception.FEATURE_DIM
    for name, shape in (('mu', [dim]), ('sigma', [dim, dim])):
        if name not in stats:
            raise StatsError(f'{path_or_url}: no array "{name}" in the file (expected mu [{dim}] and sigma [{dim}, {dim}])')
        if list(stats[name].shape) != shape:
            raise StatsError(f'{path_or_url}: "{name}" has shape {list(stats[name].shape)}, expected {shape}')
        if stats[name].dtype.kind not in 'fiu':
            raise StatsError(f'{path_or_url}: "{name}" holds {stats[name].dtype} values, expected real numbers')
    check_finite(path_or_url, mu=stats['mu'], sigma=stats['sigma'])
    return stats

def check_finite(source, **arrays):
    """StatsError naming `source` and the array when any value is NaN or infinite."""
    for name, values in arrays.items():
        bad = np.size(values) - np.count_nonzero(np.isfinite(values))
        if bad:
            raise StatsError(f'{source}: "{name}" holds {bad} NaN or infinite value(s)')

def npz_path(dest_path):
    """Where np.savez writes `dest_path`: '.npz' is appended unless it is there already."""
    return dest_path if dest_path.endswith('.npz') else f'{dest_path}.npz'

def save_stats(dest_path, mu, sigma, features=None):
    """Write mu and sigma to `dest_path` as np.savez does (uncompressed; '.npz' appended when
    missing), atomically: an interrupted write leaves any old file as it was. Replacing a file is
    announced. Given the features [N, 2048], the file also holds what KID and precision/recall need
    (metrics.reference_entries). Returns the path written."""
    dest_path = npz_path(dest_path)
    if os.path.exists(dest_path):
        print(f'Replacing the existing file "{dest_path}"')
    folder = os.path.dirname(dest_path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with dnnlib.util.atomic_write(dest_path) as temp_path, open(temp_path, 'wb') as f:
        extra = {} if features is None else metrics.reference_entries(features)
        np.savez(f, mu=mu, sigma=sigma, **extra)
    return dest_path

#----------------------------------------------------------------------------
