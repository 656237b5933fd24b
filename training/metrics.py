"""Metrics beside FID, computed from the same Inception-v3 pool features [N, 2048].

KID, the Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs"): the
unbiased estimate of the squared maximum mean discrepancy (MMD^2) between the two feature sets
under the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, d the feature dimension, averaged
over random subsets. `kid` returns the raw MMD^2; papers often print 1000 x that value, which is
a matter of formatting only.

Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric
for Assessing Generative Models"): each feature set approximates its manifold by the union of
balls around its samples, the radius of a ball being the distance to the sample's k-th nearest
neighbour in its own set. Precision is the fraction of generated samples inside the real manifold,
recall the fraction of real samples inside the generated manifold.

Reference files. Besides the FID statistics `mu` and `sigma`, a reference .npz may carry what
these two metrics need, the features themselves:

    features    float32 [N, 2048]   Inception features of the reference images, at most
                                    MAX_REFERENCE_FEATURES rows: all of them for smaller sets,
                                    otherwise a seeded random subset kept in dataset order.

float32 is what the detector produces, so storing it loses nothing and metrics computed from the
file equal those computed from the images; 50,000 rows take about 400 MB. `reference_entries`
makes the arrays to add to the file and `load_reference_features` reads them back, returning None
for older files that hold only mu and sigma (they still serve for FID).

Usage:

    entries = reference_entries(real_features)          # np.savez(f, mu=mu, sigma=sigma, **entries)
    real = load_reference_features('cifar10-32x32.npz') # None when the file predates the key
    value = kid(real, gen_features)
    precision, recall = precision_recall(real, gen_features, device='cuda')
"""

import os

import numpy as np
import torch

FEATURES_KEY = 'features'
MAX_REFERENCE_FEATURES = 50000

#----------------------------------------------------------------------------
# Input checks shared by the metrics.

def feature_matrix(features, what, device):
    """`features` (numpy array or tensor) as a float64 tensor [N, D] on `device`; at least two
    rows are needed by both metrics (pairs of distinct samples)."""
    matrix = torch.as_tensor(features).detach().to(device=device, dtype=torch.float64)
    if matrix.ndim != 2:
        raise ValueError(f'{what} features have shape {list(matrix.shape)}, expected a matrix [N, D]')
    if len(matrix) < 2:
        raise ValueError(f'{what} features have {len(matrix)} sample(s), at least 2 are needed')
    return matrix

def feature_pair(real_features, gen_features, device):
    """Both feature sets checked and converted; their feature dimensions must agree."""
    real = feature_matrix(real_features, 'real', device)
    gen = feature_matrix(gen_features, 'generated', device)
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f'real and generated features differ in dimension: {real.shape[1]} vs {gen.shape[1]}')
    return real, gen

#----------------------------------------------------------------------------
# Kernel Inception Distance (Binkowski et al. 2018).

def cubic_kernel(x, y):
    """Gram matrix of k(x, y) = (x.y / d + 1)^3 between the rows of x and of y."""
    return (x @ y.T / x.shape[1] + 1) ** 3

def mean_off_diagonal(gram):
    """Mean of a square matrix without its diagonal: the U-statistic over pairs i != j."""
    n = len(gram)
    return (gram.sum() - gram.trace()) / (n * (n - 1))

def unbiased_mmd2(x, y):
    """Unbiased MMD^2 of two samples: the within-sample kernel means over distinct pairs minus
    twice the cross-sample mean."""
    within = mean_off_diagonal(cubic_kernel(x, x)) + mean_off_diagonal(cubic_kernel(y, y))
    return within - 2 * cubic_kernel(x, y).mean()

def kid(real_features, gen_features, num_subsets=100, max_subset_size=1000, seed=0, device='cpu'):
    """KID between two feature sets [N, D] (numpy arrays or tensors), as a float: raw MMD^2.

    Each of the `num_subsets` estimates compares m = min(len(real), len(gen), max_subset_size)
    real samples with m generated ones, both drawn without replacement by a
    numpy RandomState(seed) (per subset, the real indices, then the generated ones); the result is
    the mean of the estimates. Arithmetic is float64.
    """
    if num_subsets < 1:
        raise ValueError(f'num_subsets must be at least 1, got {num_subsets}')
    if max_subset_size < 2:
        raise ValueError(f'max_subset_size must be at least 2, got {max_subset_size}')
    real, gen = feature_pair(real_features, gen_features, device)
    m = min(len(real), len(gen), max_subset_size)
    rng = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        real_rows = torch.from_numpy(rng.choice(len(real), m, replace=False)).to(device)
        gen_rows = torch.from_numpy(rng.choice(len(gen), m, replace=False)).to(device)
        total += unbiased_mmd2(real[real_rows], gen[gen_rows]).item()
    return total / num_subsets

#----------------------------------------------------------------------------
# Improved precision and recall (Kynkaanniemi et al. 2019). All distances are compared squared,
# in float64: the expansion |a|^2 + |b|^2 - 2 a.b loses digits to cancellation, which float64
# keeps far below the gaps between neighbour distances. Work is done in blocks of
# row_batch x col_batch distances, so 50,000 x 50,000 sets need only a block's memory
# (8 MB per million entries).

def squared_distances(a, b):
    """Squared Euclidean distances between the rows of a and of b."""
    squared = a.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * (a @ b.T)
    return squared.clamp_(min=0)

def kth_neighbour_radii(points, k, row_batch, col_batch):
    """Squared distance from each point to its k-th nearest neighbour among the other points.
    A running list of the k smallest distances per row is merged with each block of columns."""
    radii = []
    for r in range(0, len(points), row_batch):
        rows = points[r : r + row_batch]
        nearest = rows.new_empty([len(rows), 0])
        for c in range(0, len(points), col_batch):
            block = squared_distances(rows, points[c : c + col_batch])
            block.diagonal(r - c).fill_(float('inf')) # A point is not its own neighbour.
            merged = torch.cat([nearest, block], dim=1)
            nearest = merged.topk(min(k, merged.shape[1]), dim=1, largest=False).values
        radii.append(nearest[:, k - 1])
    return torch.cat(radii)

def inside_manifold(queries, points, radii, row_batch, col_batch):
    """Boolean per query: whether it lies within the ball of at least one point (squared radii)."""
    inside = []
    for r in range(0, len(queries), row_batch):
        rows = queries[r : r + row_batch]
        hit = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        for c in range(0, len(points), col_batch):
            block = squared_distances(rows, points[c : c + col_batch])
            hit |= (block <= radii[c : c + col_batch]).any(dim=1)
        inside.append(hit)
    return torch.cat(inside)

def precision_recall(real_features, gen_features, k=3, row_batch=1024, col_batch=8192, device='cpu'):
    """Improved precision and recall of generated features against real ones, as two floats.

    Precision: fraction of generated samples within the k-NN radius of some real sample.
    Recall: fraction of real samples within the k-NN radius of some generated sample.
    Each set needs more than k samples. `row_batch` and `col_batch` bound the block of
    distances held at once; they do not change the result.
    """
    if k < 1:
        raise ValueError(f'k must be at least 1, got {k}')
    if row_batch < 1 or col_batch < 1:
        raise ValueError(f'row_batch and col_batch must be positive, got {row_batch} and {col_batch}')
    real, gen = feature_pair(real_features, gen_features, device)
    for what, points in (('real', real), ('generated', gen)):
        if k >= len(points):
            raise ValueError(f'k={k} nearest neighbours need more than {k} {what} samples, got {len(points)}')
    real_radii = kth_neighbour_radii(real, k, row_batch, col_batch)
    gen_radii = kth_neighbour_radii(gen, k, row_batch, col_batch)
    precision = inside_manifold(gen, real, real_radii, row_batch, col_batch).double().mean()
    recall = inside_manifold(real, gen, gen_radii, row_batch, col_batch).double().mean()
    return precision.item(), recall.item()

#----------------------------------------------------------------------------
# Reference files.

def reference_entries(features, max_count=MAX_REFERENCE_FEATURES, seed=0):
    """The arrays a reference .npz stores for KID and precision/recall, as a dict for np.savez:
    {'features': float32 [n, D]}, n = min(N, max_count). Above `max_count` rows, a random subset
    drawn without replacement by numpy RandomState(seed), kept in its original order."""
    features = np.asarray(torch.as_tensor(features).detach().cpu(), dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f'features have shape {list(features.shape)}, expected a matrix [N, D]')
    if len(features) > max_count:
        keep = np.random.RandomState(seed).choice(len(features), max_count, replace=False)
        features = features[np.sort(keep)]
    return {FEATURES_KEY: features}

def load_reference_features(npz):
    """float32 features [N, D] of a reference file (path, or an already loaded mapping such as
    np.load's result), or None when the file has no features (FID statistics only)."""
    if isinstance(npz, (str, os.PathLike)):
        with np.load(npz) as data:
            return load_reference_features(data)
    if FEATURES_KEY not in npz:
        return None
    features = np.asarray(npz[FEATURES_KEY], dtype=np.float32)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f'reference "{FEATURES_KEY}" has shape {list(features.shape)}, expected [N, D] with N >= 2')
    return features

#----------------------------------------------------------------------------
