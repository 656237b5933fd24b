"""Frechet Inception Distance (FID; Heusel et al. 2017, "GANs trained by a two time-scale update
rule converge to a local Nash equilibrium"): Inception-v3 feature statistics of an image set, and
the Frechet distance between the Gaussians that two such statistics describe.

Usable from a notebook as well as from fid.py:

    mu, sigma = compute_stats('fid-tmp', num=50000)
    fid = fid_from_stats(mu, sigma, *load_stats('cifar10-32x32.npz'))
    fid = compute_fid('fid-tmp', ref='https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz')

Statistics files are what `np.savez(path, mu=mu, sigma=sigma)` writes: float64 mu [2048] and
sigma [2048, 2048], the unbiased covariance of the features.
"""

import os
import warnings
import zipfile

import numpy as np
import torch
import tqdm
from scipy import linalg

import dnnlib
from torch_utils import distributed as dist
from training import dataset, inception

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

def batch_features(detector, images, detector_url):
    """float64 features [B, 2048] of a uint8 NCHW batch; grayscale is repeated to RGB."""
    if images.shape[1] == 1:
        images = images.repeat([1, 3, 1, 1])
    features = detector(images)
    expected = [images.shape[0], inception.FEATURE_DIM]
    if list(features.shape) != expected:
        raise StatsError(f'{detector_url}: the detector returned features of shape {list(features.shape)}, expected {expected}')
    return features.to(torch.float64)

def mean_and_covariance(feature_sum, outer_sum, count):
    """Mean and unbiased covariance (divisor count - 1) from the sum of the feature vectors and
    the sum of their outer products."""
    mean = feature_sum / count
    covariance = (outer_sum - count * torch.outer(mean, mean)) / (count - 1)
    return mean, covariance

def compute_stats(image_path, num=None, seed=0, max_batch_size=64, detector_url=inception.DETECTOR_URL,
        device=None, num_workers=None, prefetch_factor=2):
    """Inception statistics (mu, sigma) of the images at `image_path`, as float64 numpy arrays.

    `num` selects a seeded random subset of that many images (all images when None). Under
    torchrun every rank takes its share of the batches and the sums are combined, so each rank
    returns the same statistics. `num_workers=None` means 3 loader processes on a GPU and none on
    the CPU, where they would only compete with the detector for the cores.
    """
    if not os.path.exists(image_path): # Said before the detector is loaded, which may mean a download.
        raise IOError(f'{image_path}: no such image folder or zip file')
    device = default_device() if device is None else torch.device(device)
    if num_workers is None:
        num_workers = 3 if device.type == 'cuda' else 0
    leader = dist.get_rank() == 0

    with dist.rank_zero_first(): # Rank 0 fills the download cache and reports bad inputs first.
        dist.print0('Loading Inception-v3 model...')
        detector = inception.load_detector(detector_url, device=device, verbose=leader)
        dist.print0(f'Loading images from "{image_path}"...')
        images = open_image_set(image_path, num, seed)

    count = len(images)
    loader = torch.utils.data.DataLoader(images, num_workers=num_workers,
        batch_sampler=dist.split_batches(torch.arange(count), max_batch_size),
        prefetch_factor=(prefetch_factor if num_workers > 0 else None))
    dim = inception.FEATURE_DIM
    feature_sum = torch.zeros([dim], dtype=torch.float64, device=device)
    outer_sum = torch.zeros([dim, dim], dtype=torch.float64, device=device)

    dist.print0(f'Calculating statistics for {count} images...')
    with torch.inference_mode():
        for pixels, _labels in tqdm.tqdm(loader, unit='batch', disable=not leader):
            dist.barrier() # Keeps the ranks in step, so rank 0's progress bar speaks for all.
            if len(pixels) == 0:
                continue
            features = batch_features(detector, pixels.to(device), detector_url)
            feature_sum += features.sum(0)
            outer_sum += features.T @ features

    if dist.get_world_size() > 1:
        for total in (feature_sum, outer_sum):
            torch.distributed.all_reduce(total)
    mu, sigma = mean_and_covariance(feature_sum, outer_sum, count)
    mu, sigma = mu.cpu().numpy(), sigma.cpu().numpy()
    check_finite(f'the features of {image_path}', mu=mu, sigma=sigma)
    return mu, sigma

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

def save_stats(dest_path, mu, sigma):
    """Write mu and sigma to `dest_path` as np.savez does (uncompressed; '.npz' appended when
    missing), atomically: an interrupted write leaves any old file as it was. Replacing a file is
    announced. Returns the path written."""
    dest_path = npz_path(dest_path)
    if os.path.exists(dest_path):
        print(f'Replacing the existing file "{dest_path}"')
    folder = os.path.dirname(dest_path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with dnnlib.util.atomic_write(dest_path) as temp_path, open(temp_path, 'wb') as f:
        np.savez(f, mu=mu, sigma=sigma)
    return dest_path

#----------------------------------------------------------------------------
