"""training/metrics.py: KID (Binkowski et al. 2018) and improved precision/recall
(Kynkaanniemi et al. 2019) against direct numpy computations on small random features."""

import numpy as np
import pytest
import torch

from training import metrics

#----------------------------------------------------------------------------
# Naive numpy versions, written straight from the definitions.

def naive_mmd2(x, y):
    """Unbiased MMD^2 with the cubic polynomial kernel, one kernel evaluation at a time."""
    d = x.shape[1]
    kernel = lambda a, b: (np.dot(a, b) / d + 1) ** 3
    m, n = len(x), len(y)
    xx = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(kernel(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(kernel(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy

def naive_kid(real, gen, num_subsets, max_subset_size, seed):
    rng = np.random.RandomState(seed)
    m = min(len(real), len(gen), max_subset_size)
    values = []
    for _ in range(num_subsets):
        real_rows = rng.choice(len(real), m, replace=False)
        gen_rows = rng.choice(len(gen), m, replace=False)
        values.append(naive_mmd2(real[real_rows], gen[gen_rows]))
    return np.mean(values)

def naive_precision_recall(real, gen, k):
    def distances(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    def radii(points):
        own = distances(points, points)
        np.fill_diagonal(own, np.inf)
        return np.sort(own, axis=1)[:, k - 1]
    def coverage(queries, points):
        return np.mean((distances(queries, points) <= radii(points)[None, :]).any(axis=1))
    return coverage(gen, real), coverage(real, gen)

@pytest.fixture
def features():
    rng = np.random.RandomState(123)
    real = rng.randn(40, 16)
    gen = rng.randn(30, 16) + 0.8
    return real, gen

#----------------------------------------------------------------------------
# KID.

def test_kid_matches_naive(features):
    real, gen = features
    expected = naive_kid(real, gen, num_subsets=4, max_subset_size=25, seed=7)
    assert metrics.kid(real, gen, num_subsets=4, max_subset_size=25, seed=7) == pytest.approx(expected, rel=1e-10)

def test_kid_subset_size_is_capped_by_the_smaller_set(features):
    real, gen = features
    expected = naive_kid(real, gen, num_subsets=3, max_subset_size=1000, seed=0)
    assert metrics.kid(real, gen, num_subsets=3) == pytest.approx(expected, rel=1e-10)

def test_kid_accepts_tensors_and_float32(features):
    real, gen = features
    from_numpy = metrics.kid(real.astype(np.float32), gen, num_subsets=5)
    from_tensor = metrics.kid(torch.from_numpy(real).float(), torch.from_numpy(gen), num_subsets=5)
    assert from_numpy == from_tensor

def test_kid_near_zero_for_one_distribution_and_large_for_another():
    rng = np.random.RandomState(0)
    real, same, shifted = rng.randn(400, 16), rng.randn(400, 16), rng.randn(400, 16) + 1
    near = metrics.kid(real, same, num_subsets=20, max_subset_size=200)
    far = metrics.kid(real, shifted, num_subsets=20, max_subset_size=200)
    assert abs(near) < 0.02
    assert far > 1
    assert far > 50 * abs(near)

#----------------------------------------------------------------------------
# Precision and recall.

@pytest.mark.parametrize('k', [1, 3, 5])
def test_precision_recall_match_naive(features, k):
    real, gen = features
    expected = naive_precision_recall(real, gen, k)
    assert metrics.precision_recall(real, gen, k=k) == pytest.approx(expected, abs=1e-12)

@pytest.mark.parametrize('k', [1, 3, 5])
def test_precision_recall_is_not_trivial(features, k):
    precision, recall = naive_precision_recall(*features, k)
    assert 0 < precision < 1 and 0 < recall < 1 # The fixture exercises both outcomes.

@pytest.mark.parametrize('row_batch, col_batch', [(1, 1), (7, 2), (13, 5), (40, 40), (1000, 3)])
def test_precision_recall_independent_of_batching(features, row_batch, col_batch):
    real, gen = features
    whole = metrics.precision_recall(real, gen, k=3)
    assert metrics.precision_recall(real, gen, k=3, row_batch=row_batch, col_batch=col_batch) == whole

def test_identical_sets_have_full_precision_and_recall(features):
    real, _ = features
    assert metrics.precision_recall(real, real.copy()) == (1.0, 1.0)

def test_disjoint_sets_have_zero_precision_and_recall(features):
    real, gen = features
    assert metrics.precision_recall(real, gen + 100) == (0.0, 0.0)

def test_duplicates_count_as_neighbours():
    # Every point has an exact duplicate, so with k=1 each radius is 0: only exact matches count.
    points = np.repeat(np.arange(5, dtype=np.float64)[:, None], 2, axis=0)
    gen = np.array([[0.0], [0.5], [3.0], [9.0]])
    precision, _ = metrics.precision_recall(points, gen, k=1)
    assert precision == 0.5

#----------------------------------------------------------------------------
# Input checks.

@pytest.mark.parametrize('call', [
    lambda r, g: metrics.kid(r, g),
    lambda r, g: metrics.precision_recall(r, g),
])
def test_bad_shapes_are_rejected(features, call):
    real, gen = features
    for bad_real, bad_gen in [(real, gen[:, :8]), (real[0], gen), (real, gen[:1]), (real[:1], gen), (real[None], gen)]:
        with pytest.raises(ValueError) as info:
            call(bad_real, bad_gen)
        assert '\n' not in str(info.value)

def test_k_must_be_below_the_sample_count(features):
    real, gen = features
    with pytest.raises(ValueError, match='more than 3 generated'):
        metrics.precision_recall(real, gen[:3], k=3)
    with pytest.raises(ValueError, match='more than 40 real'):
        metrics.precision_recall(real, gen, k=40)
    with pytest.raises(ValueError):
        metrics.precision_recall(real, gen, k=0)
    assert metrics.precision_recall(real[:4], gen[:4], k=3) == pytest.approx(naive_precision_recall(real[:4], gen[:4], 3))

def test_bad_kid_options_are_rejected(features):
    real, gen = features
    with pytest.raises(ValueError):
        metrics.kid(real, gen, num_subsets=0)
    with pytest.raises(ValueError):
        metrics.kid(real, gen, max_subset_size=1)

#----------------------------------------------------------------------------
# Reference files.

def test_reference_features_round_trip(tmp_path, features):
    real, _ = features
    path = tmp_path / 'ref.npz'
    np.savez(path, mu=real.mean(0), sigma=np.cov(real, rowvar=False), **metrics.reference_entries(real))
    loaded = metrics.load_reference_features(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, real.astype(np.float32))
    with np.load(path) as data:
        np.testing.assert_array_equal(metrics.load_reference_features(data), loaded)
        assert sorted(data.files) == ['features', 'mu', 'sigma']

def test_reference_features_absent_from_older_files(tmp_path, features):
    real, _ = features
    path = tmp_path / 'old.npz'
    np.savez(path, mu=real.mean(0), sigma=np.cov(real, rowvar=False))
    assert metrics.load_reference_features(path) is None
    assert metrics.load_reference_features(str(path)) is None

def test_reference_features_capped_by_a_seeded_subset(features):
    real, _ = features
    first = metrics.reference_entries(real, max_count=10, seed=3)['features']
    again = metrics.reference_entries(torch.from_numpy(real), max_count=10, seed=3)['features']
    other = metrics.reference_entries(real, max_count=10, seed=4)['features']
    np.testing.assert_array_equal(first, again)
    assert first.shape == (10, 16) and not np.array_equal(first, other)
    rows = [int(np.flatnonzero((real.astype(np.float32) == row).all(1))[0]) for row in first]
    assert rows == sorted(rows) and len(set(rows)) == 10
    assert metrics.reference_entries(real, max_count=40)['features'].shape == (40, 16)

def test_malformed_reference_features_are_rejected():
    with pytest.raises(ValueError, match='features'):
        metrics.load_reference_features({'features': np.zeros([5])})
    with pytest.raises(ValueError):
        metrics.reference_entries(np.zeros([5]))

#----------------------------------------------------------------------------
