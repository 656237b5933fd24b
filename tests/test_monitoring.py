"""Watching a run (training/monitor.py, train.py --grid/--metrics/--tensorboard) and label dropout.

Every check compares against a direct computation: grids against the dataset and against
generate_images on the saved snapshot, the FID against the statistics of that snapshot, the weights
of a monitored run against those of a plain one. Tiny 8x8 networks on the CPU.
"""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from torch_utils import distributed as dist
from training import dataset, fid_stats, generation, inception, monitor, snapshot, training_loop as tl
from train_helpers import REPO, dry_run_options, invoke_train, make_image_folder, run_train, single_thread_env, tiny_loop_kwargs

TINY = ['--cbase=8', '--cres=1', '--tick=1', '--seed=1']

@pytest.fixture(scope='module')
def data8(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp('data') / 'tiny8'), num_images=16, resolution=8)

@pytest.fixture(scope='module')
def zero_ref(tmp_path_factory):
    """Reference statistics mu = 0, sigma = 0, against which FID = |mu|^2 + tr(sigma)."""
    path = str(tmp_path_factory.mktemp('ref') / 'zero.npz')
    np.savez(path, mu=np.zeros(2048), sigma=np.zeros([2048, 2048]))
    return path

def read_png(path):
    return np.array(PIL.Image.open(path))

def snapshot_grid(pkl, size):
    """The grid sampled directly from a saved snapshot with the monitor's fixed sampler."""
    ema = snapshot.load_snapshot(pkl, verbose=False)['ema']
    images = torch.cat([batch.images for batch in generation.generate_images(ema, range(size * size), device='cpu', num_steps=18)])
    return monitor.tile(images.numpy(), size)

def run_dirs(outdir):
    return sorted(glob.glob(os.path.join(outdir, '0*')))

#----------------------------------------------------------------------------
# End to end: one tick of 1024 images, hence one snapshot, with every monitoring option.

@pytest.fixture(scope='module')
def monitored_run(tmp_path_factory, data8, zero_ref, detector_pt):
    outdir = str(tmp_path_factory.mktemp('runs'))
    res = run_train([f'--outdir={outdir}', f'--data={data8}', '--batch=1024', '--batch-gpu=256', '--duration=0.001',
        '--grid=2', '--metrics=fid', f'--fid-ref={zero_ref}', '--fid-num=3', f'--fid-detector={detector_pt}', '--tensorboard'] + TINY)
    assert res.returncode == 0, res.stdout + res.stderr
    [run_dir] = run_dirs(outdir)
    return dnnlib.EasyDict(run_dir=run_dir, stdout=res.stdout)

def test_monitored_run_files(monitored_run, zero_ref, detector_pt):
    names = sorted(os.listdir(monitored_run.run_dir))
    [events] = [name for name in names if name.startswith('events.out.tfevents.')]
    assert names == sorted(['training_options.json', 'log.txt', 'stats.jsonl', 'network-snapshot-000001.pkl', # no state at tick 0
        'grid-data.png', 'grid-000001.png', 'metric-fid.jsonl', events])
    options = json.load(open(os.path.join(monitored_run.run_dir, 'training_options.json')))
    assert list(options)[-2:] == ['run_dir', 'monitor_kwargs']
    assert options['monitor_kwargs'] == dict(grid=2, metrics=['fid'], fid_ref=zero_ref, fid_num=3, fid_detector=detector_pt, tensorboard=True)
    assert 'Monitoring:              grid 2x2, fid of 3 images, tensorboard' in monitored_run.stdout

def test_data_grid_holds_evenly_spaced_training_images(monitored_run, data8):
    images = dataset.ImageFolderDataset(path=data8)
    picks = [0, 5, 10, 15] # 4 of 16, evenly spaced
    expected = np.concatenate([np.concatenate([images[picks[2 * row + col]][0].transpose(1, 2, 0) for col in range(2)], axis=1)
        for row in range(2)], axis=0)
    grid = read_png(os.path.join(monitored_run.run_dir, 'grid-data.png'))
    assert grid.shape == (16, 16, 3) and np.array_equal(grid, expected)

def test_sample_grid_is_the_snapshot_sampled(monitored_run):
    grid = read_png(os.path.join(monitored_run.run_dir, 'grid-000001.png'))
    assert grid.shape == (16, 16, 3)
    assert np.array_equal(grid, snapshot_grid(os.path.join(monitored_run.run_dir, 'network-snapshot-000001.pkl'), 2))

def test_fid_line_matches_the_snapshot_statistics(monitored_run, detector_pt):
    lines = open(os.path.join(monitored_run.run_dir, 'metric-fid.jsonl')).read().splitlines()
    [record] = [json.loads(line) for line in lines]
    assert list(record) == ['snapshot', 'kimg', 'fid', 'seconds']
    assert record['snapshot'] == 'network-snapshot-000001.pkl' and record['kimg'] == 1.024 and record['seconds'] > 0
    ema = snapshot.load_snapshot(os.path.join(monitored_run.run_dir, record['snapshot']), verbose=False)['ema']
    detector = inception.load_detector(detector_pt, verbose=False)
    mu, sigma = fid_stats.generated_stats(ema, range(3), detector, device='cpu', num_steps=18)
    assert np.isfinite(record['fid']) and record['fid'] == pytest.approx(np.sum(mu ** 2) + np.trace(sigma), rel=1e-4) # zero reference
    assert f'FID of network-snapshot-000001.pkl: {record["fid"]:g} (3 images, ' in monitored_run.stdout

def test_tensorboard_scalars_and_images(monitored_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator # pylint: disable=import-outside-toplevel
    events = EventAccumulator(monitored_run.run_dir)
    events.Reload()
    tags = events.Tags()
    assert set(tags['scalars']) == {'Loss/loss', 'Progress/kimg', 'Timing/sec_per_kimg', 'Schedule/learning_rate',
        'Schedule/ema_halflife_kimg', 'Schedule/ema_beta', 'Metrics/fid'}
    assert set(tags['images']) == {'Grid/data', 'Grid/samples'}
    values = {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in tags['scalars']}
    assert all(np.isfinite(value) for series in values.values() for _, value in series)
    assert values['Progress/kimg'] == [(1024, pytest.approx(1.024))]
    # The only step ran with 0 images seen: learning rate 0, EMA half-life capped at 0, so beta 0.
    assert values['Schedule/learning_rate'] == [(1024, 0)] and values['Schedule/ema_beta'] == [(1024, 0)]
    fid = json.loads(open(os.path.join(monitored_run.run_dir, 'metric-fid.jsonl')).read())['fid']
    assert values['Metrics/fid'] == [(1024, pytest.approx(fid, rel=1e-6))]
    stats = [json.loads(line) for line in open(os.path.join(monitored_run.run_dir, 'stats.jsonl'))]
    assert values['Loss/loss'] == [(1024, pytest.approx(stats[0]['Loss/loss']['mean'], rel=1e-6))]

#----------------------------------------------------------------------------
# In-process loops: monitoring leaves the training alone, and a failing metric does not stop it.

@pytest.fixture(scope='module')
def loop_kwargs(data8, one_thread):
    dist.init()
    return dict(tiny_loop_kwargs(data8), total_kimg=0.024, kimg_per_tick=0.016, lr_rampup_kimg=0.008)

def test_monitoring_changes_no_weight_and_adds_only_its_files(loop_kwargs, tmp_path):
    plain, watched = tmp_path / 'plain', tmp_path / 'watched'
    plain.mkdir()
    watched.mkdir()
    tl.training_loop(run_dir=str(plain), **loop_kwargs)
    tl.training_loop(run_dir=str(watched), monitor_kwargs=dict(grid=3, tensorboard=True), **loop_kwargs)
    usual = ['network-snapshot-000000.pkl', 'stats.jsonl', 'training-state-000000.pt']
    assert sorted(os.listdir(plain)) == usual
    extra = sorted(set(os.listdir(watched)) - set(usual))
    assert len(extra) == 3 and extra[0].startswith('events.out.tfevents.')
    assert extra[1:] == ['grid-000000.png', 'grid-data.png']
    assert read_png(watched / 'grid-000000.png').shape == (24, 24, 3)
    for name in ['network-snapshot-000000.pkl', 'training-state-000000.pt']:
        load = snapshot.load_training_state if name.endswith('.pt') else lambda path: snapshot.load_snapshot(path, verbose=False)
        a, b = load(str(plain / name)), load(str(watched / name))
        module = 'net' if name.endswith('.pt') else 'ema'
        for p, q in zip(a[module].state_dict().values(), b[module].state_dict().values()):
            assert torch.equal(p, q)
    assert np.array_equal(read_png(watched / 'grid-000000.png'), snapshot_grid(str(watched / 'network-snapshot-000000.pkl'), 3))

def test_failing_metric_is_logged_and_training_goes_on(loop_kwargs, tmp_path, monkeypatch, capsys, zero_ref, detector_pt):
    def broken(*_args, **_kwargs):
        raise RuntimeError('no images today\nsecond line')
    monkeypatch.setattr(fid_stats, 'generated_stats', broken)
    kwargs = dict(loop_kwargs, snapshot_ticks=1)
    result = tl.training_loop(run_dir=str(tmp_path), monitor_kwargs=dict(metrics=['fid'], fid_ref=zero_ref, fid_num=2,
        fid_detector=detector_pt), **kwargs)
    assert result is None # trained to the end
    lines = capsys.readouterr().out.splitlines()
    failures = [line for line in lines if line.startswith('FID of ')]
    # Ticks (and snapshots) after 8 and 24 images: each snapshot's FID was tried, and failed in one line.
    assert failures == ['FID of network-snapshot-000000.pkl failed, training continues: RuntimeError: no images today'] * 2
    assert len([line for line in lines if line.startswith('tick ')]) == 2
    assert not os.path.exists(tmp_path / 'metric-fid.jsonl')
    assert len(open(tmp_path / 'stats.jsonl').read().splitlines()) == 2

def test_failed_start_removes_the_grid_and_events_too(data8, tmp_path, monkeypatch):
    outdir = tmp_path / 'runs'
    written = []
    def full_disk(*_args, **_kwargs):
        written.extend(sorted(os.listdir(run_dirs(outdir)[0])))
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(tl, 'train_step', full_disk)
    res = invoke_train([f'--outdir={outdir}', f'--data={data8}', '--grid=2', '--tensorboard', '--duration=0.001'] + TINY)
    errors = [line for line in res.stderr.splitlines() if line.startswith('Error')]
    assert res.returncode != 0 and errors == ['Error: training stopped: OSError: [Errno 28] No space left on device']
    assert written[0].startswith('events.out.tfevents.') and written[1:] == ['grid-data.png', 'log.txt', 'training_options.json']
    assert not outdir.exists()

#----------------------------------------------------------------------------
# torchrun: the ranks share the sampling of a grid, rank 0 alone writes it.

def test_torchrun_grid(data8, tmp_path):
    outdir = str(tmp_path / 'runs')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py', f'--outdir={outdir}',
        f'--data={data8}', '--batch=32', '--duration=0.001', '--grid=3'] + TINY
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=single_thread_env())
    assert res.returncode == 0, res.stdout + res.stderr
    [run_dir] = run_dirs(outdir)
    for kimg in [0, 1]:
        grid = read_png(os.path.join(run_dir, f'grid-{kimg:06d}.png'))
        assert np.array_equal(grid, snapshot_grid(os.path.join(run_dir, f'network-snapshot-{kimg:06d}.pkl'), 3))

#----------------------------------------------------------------------------
# Options: recorded only when given; refused in one line.

def test_monitor_options_are_recorded_only_when_given(data8, tmp_path, zero_ref):
    base = [f'--outdir={tmp_path}/runs', f'--data={data8}', '--seed=0']
    plain = dry_run_options(base)
    assert 'monitor_kwargs' not in plain and 'label_dropout' not in plain
    options = dry_run_options(base + ['--grid=4', '--metrics=fid', f'--fid-ref={zero_ref}', '--fused=1'])
    assert list(options) == list(plain) + ['monitor_kwargs', 'fast_kwargs'] # the fast path stays last
    assert options['monitor_kwargs'] == dict(grid=4, metrics=['fid'], fid_ref=zero_ref, fid_num=10000)
    assert {key: value for key, value in options.items() if key not in ('monitor_kwargs', 'fast_kwargs')} == plain

def test_missing_tensorboard_is_refused_before_anything_is_created(data8, tmp_path, monkeypatch):
    for name in ['tensorboard', 'torch.utils.tensorboard']:
        monkeypatch.setitem(sys.modules, name, None) # "import" of these now raises ImportError
    outdir = tmp_path / 'runs'
    res = invoke_train([f'--outdir={outdir}', f'--data={data8}', '--tensorboard'] + TINY)
    errors = [line for line in res.stderr.splitlines() if line.startswith('Error')]
    assert res.returncode != 0 and errors == ['Error: --tensorboard needs the tensorboard package (pip install tensorboard)']
    assert not outdir.exists()

#----------------------------------------------------------------------------
# Label dropout.

def test_drop_labels_replaces_the_expected_fraction():
    labels = torch.eye(5)[torch.arange(40000) % 5] * 2
    torch.manual_seed(0)
    dropped = tl.drop_labels(labels, 0.3)
    zero_rows = (dropped == 0).all(dim=1)
    assert abs(zero_rows.float().mean().item() - 0.3) < 4 * (0.3 * 0.7 / 40000) ** 0.5
    assert torch.equal(dropped[~zero_rows], labels[~zero_rows]) # the others are untouched
    assert torch.equal(tl.drop_labels(labels, 1), torch.zeros_like(labels))
    state = torch.get_rng_state()
    assert tl.drop_labels(labels, 0) is labels
    assert torch.equal(torch.get_rng_state(), state) # probability 0 draws nothing

RECORDED_LABELS = []

class LabelRecorder:
    """EDMLoss that remembers the labels it was given."""
    def __call__(self, net, images, labels=None, augment_pipe=None):
        from training.loss import EDMLoss # pylint: disable=import-outside-toplevel
        RECORDED_LABELS.append(labels.detach().clone())
        return EDMLoss()(net=net, images=images, labels=labels, augment_pipe=augment_pipe)

@pytest.mark.parametrize('probability', [0, 0.5])
def test_label_dropout_in_training(loop_kwargs, tmp_path, probability):
    RECORDED_LABELS.clear()
    dataset_kwargs = dict(loop_kwargs['dataset_kwargs'], use_labels=True)
    tl.training_loop(run_dir=str(tmp_path), label_dropout=probability, **dict(loop_kwargs, dataset_kwargs=dataset_kwargs,
        loss_kwargs=dict(class_name='test_monitoring.LabelRecorder'), total_kimg=0.4, kimg_per_tick=1))
    labels = torch.cat(RECORDED_LABELS)
    assert labels.shape == (400, 3)
    fraction = (labels == 0).all(dim=1).float().mean().item()
    assert abs(fraction - probability) <= 4 * (0.25 / 400) ** 0.5
    assert ((labels.sum(dim=1) == 1) | (labels.sum(dim=1) == 0)).all() # one-hot or dropped

def test_label_dropout_option(data8, tmp_path):
    base = [f'--outdir={tmp_path}/runs', f'--data={data8}', '--seed=0', '--cond=1']
    plain = dry_run_options(base)
    options = dry_run_options(base + ['--label-dropout=0.1'])
    keys = list(options)
    assert options['label_dropout'] == 0.1 and keys[keys.index('loss_kwargs') + 1] == 'label_dropout'
    assert [key for key in keys if key != 'label_dropout'] == list(plain)
    assert 'label_dropout' not in dry_run_options(base + ['--label-dropout=0'])
    res = invoke_train([f'--outdir={tmp_path}/refused', f'--data={data8}', '--label-dropout=0.1'])
    assert res.returncode != 0 and 'Error: --label-dropout needs a class-conditional run (--cond=1)' in res.stderr
    assert not (tmp_path / 'refused').exists()
