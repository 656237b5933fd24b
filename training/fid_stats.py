"""Inception statistics of an image set and the Frechet distance between two such statistics
(sampling-and-fid.md section 3, formats.md section 8)."""

import os
import warnings
import zipfile

import numpy as np
import scipy.linalg
import torch
import tqdm

import dnnlib
from torch_utils import distributed as dist
from training import dataset
from training import inception

class StatsError(ValueError):
    """Unusable input for the statistics: too few images, or an .npz without proper mu/sigma."""

#----------------------------------------------------------------------------
# Statistics of the detector features (section 3): mean and unbiased covariance.

def _rank_batches(num_images, max_batch_size):
    """Contiguous index chunks, a multiple of the world size in number; rank r takes r, r+world, ..."""
    world, rank = dist.get_world_size(), dist.get_rank()
    num_batches = ((num_images - 1) // (max_batch_size * world) + 1) * world
    return torch.arange(num_images).tensor_split(num_batches)[rank :: world]

def _open_images(image_path, num_expected, seed):
    if not os.path.exists(image_path):
        raise IOError(f'{image_path}: no such image folder or zip file')
    images = dataset.ImageFolderDataset(path=image_path, max_size=num_expected, random_seed=seed)
    if num_expected is not None and len(images) < num_expected:
        raise StatsError(f'{image_path}: found {len(images)} images, but expected at least {num_expected}')
    if len(images) < 2:
        raise StatsError(f'{image_path}: found {len(images)} image(s), but at least 2 are needed for statistics')
    return images

def calculate_inception_stats(image_path, num_expected=None, seed=0, max_batch_size=64,
    num_workers=None, prefetch_factor=2, device=None, detector_url=inception.DETECTOR_URL):
    """(mu, sigma) of the detector features over the images at `image_path`, as float64 numpy.
    With `num_expected`, a seeded random subset of that many images is used (cli.md section 3.1).
    `num_workers=None` means 3 data-loading processes on a GPU and none on the CPU, where they
    would only compete with the detector for the same cores."""
    device = dist.get_device() if device is None else torch.device(device)
    rank = dist.get_rank()
    if num_workers is None:
        num_workers = 3 if device.type == 'cuda' else 0

    # Rank 0 goes first: it fills the download cache and reports problems with the inputs.
    if rank != 0:
        dist.barrier()
    dist.print0('Loading Inception-v3 model...')
    detector = inception.load_detector(detector_url, device=device, verbose=(rank == 0))
    dist.print0(f'Loading images from "{image_path}"...')
    images = _open_images(image_path, num_expected, seed)
    if rank == 0:
        dist.barrier()

    batches = _rank_batches(len(images), max_batch_size)
    loader = torch.utils.data.DataLoader(images, batch_sampler=batches, num_workers=num_workers,
        prefetch_factor=(prefetch_factor if num_workers > 0 else None))

    dist.print0(f'Calculating statistics for {len(images)} images...')
    mu = torch.zeros([inception.FEATURE_DIM], dtype=torch.float64, device=device)
    sigma = torch.zeros([inception.FEATURE_DIM, inception.FEATURE_DIM], dtype=torch.float64, device=device)
    with torch.inference_mode():
        for batch, _labels in tqdm.tqdm(loader, unit='batch', disable=(rank != 0)):
            dist.barrier()
            if batch.shape[0] == 0:
                continue
            if batch.shape[1] == 1:
                batch = batch.repeat([1, 3, 1, 1])
            features = detector(batch.to(device))
            if tuple(features.shape) != (batch.shape[0], inception.FEATURE_DIM):
                raise StatsError(f'{detector_url}: the detector returned features of shape {list(features.shape)}, '
                    f'expected [{batch.shape[0]}, {inception.FEATURE_DIM}]')
            features = features.to(torch.float64)
            mu += features.sum(0)
            sigma += features.T @ features

    # Sum over ranks, then mean and unbiased covariance.
    if dist.get_world_size() > 1:
        torch.distributed.all_reduce(mu)
        torch.distributed.all_reduce(sigma)
    num = len(images)
    mu /= num
    sigma -= torch.outer(mu, mu) * num
    sigma /= num - 1
    return mu.cpu().numpy(), sigma.cpu().numpy()

#----------------------------------------------------------------------------
# FID formula (section 3.2): |mu - mu_ref|^2 + tr(sigma + sigma_ref - 2 sqrt(sigma sigma_ref)).

def _matrix_sqrt(a):
    """scipy.linalg.sqrtm without the `disp` argument (deprecated in SciPy 1.16, removed in 1.18);
    its warning about singular or ill-conditioned input is expected for covariances of few images."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(a)

def calculate_fid_from_inception_stats(mu, sigma, mu_ref, sigma_ref):
    m = np.square(mu - mu_ref).sum()
    s = _matrix_sqrt(np.dot(sigma, sigma_ref))
    fid = m + np.trace(sigma + sigma_ref - s * 2)
    return float(np.real(fid))

#----------------------------------------------------------------------------
# Statistics files (formats.md section 8): uncompressed .npz with float64 mu [2048], sigma [2048, 2048].

def load_stats(path_or_url, verbose=True):
    """dict(mu=..., sigma=...) from a local .npz or a URL (cached). Raises IOError when the file
    cannot be had, StatsError when it lacks mu/sigma of the expected shapes."""
    try:
        f = dnnlib.util.open_url(path_or_url, verbose=verbose)
    except FileNotFoundError:
        raise IOError(f'{path_or_url}: statistics file not found') from None
    except OSError as err:
        if dnnlib.util.is_url(path_or_url):
            raise # open_url's one-line download error names the URL.
        raise IOError(f'{path_or_url}: cannot open statistics file ({err.strerror or err})') from None
    with f:
        try:
            stats = dict(np.load(f))
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise StatsError(f'{path_or_url}: not a readable .npz statistics file ({dnnlib.util.error_summary(err)})') from None
    dim = inception.FEATURE_DIM
    for key, shape in [('mu', (dim,)), ('sigma', (dim, dim))]:
        if key not in stats:
            raise StatsError(f'{path_or_url}: no array "{key}" in the file (expected mu [{dim}] and sigma [{dim}, {dim}])')
        if stats[key].shape != shape:
            raise StatsError(f'{path_or_url}: "{key}" has shape {list(stats[key].shape)}, expected {list(shape)}')
    return stats

def save_stats(dest_path, mu, sigma):
    """np.savez(dest_path, mu=mu, sigma=sigma), written atomically; like numpy, '.npz' is appended
    when missing. An existing file is replaced, with a notice. Returns the path written."""
    if not dest_path.endswith('.npz'):
        dest_path += '.npz'
    if os.path.exists(dest_path):
        print(f'Replacing the existing file "{dest_path}"')
    if os.path.dirname(dest_path):
        os.makedirs(os.path.dirname(dest_path), exist_ok=True)
    with dnnlib.util.atomic_write(dest_path) as temp_path:
        with open(temp_path, 'wb') as f:
            np.savez(f, mu=mu, sigma=sigma)
    return dest_path

#----------------------------------------------------------------------------
