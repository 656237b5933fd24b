"""Scoring a network without writing images: training.fid_stats.generated_stats and `fid.py gen`
give the statistics and metrics of generate.py's PNGs read back by `fid.py calc` (PNG is lossless),
in one process and under torchrun. Tiny networks, a handful of images, the real Inception detector."""

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import fid
import generate
from training import fid_stats, inception, networks
from training.generation import load_network

from sampling_helpers import write_snapshot
from test_fid import REPO, assert_rel, run_fid

STEPS = '--steps=3'

def tiny_network(channels):
    torch.manual_seed(channels)
    net = networks.EDMPrecond(img_resolution=8, img_channels=channels, label_dim=0, model_type='SongUNet',
        model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0)
    return net.eval().requires_grad_(False)

def run_generate(snapshot, seeds, outdir):
    result = CliRunner().invoke(generate.main, [f'--network={snapshot}', f'--outdir={outdir}', f'--seeds={seeds}', STEPS, '--batch=2'])
    assert result.exit_code == 0, result.output
    return outdir

def run_cli(args):
    """fid.py in this process; returns stdout."""
    result = CliRunner().invoke(fid.main, [str(arg) for arg in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout

@pytest.fixture(scope='module')
def setup(tmp_path_factory, detector_pt):
    """Snapshots of an RGB and a grayscale network; the RGB one's PNGs for seeds 0-4, and a
    reference with features made from its images of seeds 10-13."""
    root = tmp_path_factory.mktemp('fid_gen')
    snapshots = {channels: write_snapshot(tiny_network(channels), root / f'net{channels}.pkl') for channels in (1, 3)}
    pngs = run_generate(snapshots[3], '0-4', root / 'pngs')
    real = run_generate(snapshots[3], '10-13', root / 'real')
    ref = root / 'ref.npz'
    run_cli(['ref', f'--data={real}', f'--dest={ref}', '--features', f'--detector={detector_pt}'])
    return dict(root=root, snapshots=snapshots, pngs=pngs, ref=ref)

def scoring_args(setup, detector_pt):
    return [f'--ref={setup["ref"]}', '--metrics=fid,kid,pr', f'--detector={detector_pt}']

#----------------------------------------------------------------------------
# The library function.

@pytest.mark.parametrize('channels, seeds', [(3, '0-4'), (1, '0-2')])
def test_generated_stats_equal_those_of_the_pngs(setup, detector_pt, tmp_path, channels, seeds):
    snapshot = setup['snapshots'][channels]
    pngs = setup['pngs'] if channels == 3 else run_generate(snapshot, seeds, tmp_path / 'pngs')
    mu, sigma, features = fid_stats.compute_stats(str(pngs), detector_url=detector_pt, max_batch_size=2, keep_features=True)
    net = load_network(str(snapshot))
    detector = inception.load_detector(detector_pt, verbose=False)
    count = len(os.listdir(pngs))
    stats = fid_stats.generated_stats(net, range(count), detector, max_batch_size=2, device='cpu', keep_features=True, num_steps=3)
    assert [value.dtype for value in stats] == [np.float64, np.float64, np.float32]
    assert stats[2].shape == (count, 2048)
    assert_rel(stats[0], mu, 1e-6, 'mu')
    assert_rel(stats[1], sigma, 1e-6, 'sigma')
    assert_rel(stats[2], features, 1e-6, 'features, in seed order')
    assert np.abs(sigma).max() > 0
    without = fid_stats.generated_stats(net, range(count), detector, max_batch_size=2, device='cpu', num_steps=3)
    assert len(without) == 2 and np.array_equal(without[0], stats[0]) and np.array_equal(without[1], stats[1])

def test_generated_stats_follow_the_order_of_the_seeds(setup, detector_pt):
    """Row i of the features belongs to seeds[i], whatever the order of the seeds and the batching."""
    net = load_network(str(setup['snapshots'][3]))
    detector = inception.load_detector(detector_pt, verbose=False)
    _, _, ascending = fid_stats.generated_stats(net, [2, 3, 4], detector, max_batch_size=3, keep_features=True, num_steps=3)
    _, _, shuffled = fid_stats.generated_stats(net, [4, 2, 3], detector, max_batch_size=2, keep_features=True, num_steps=3)
    assert_rel(shuffled, ascending[[2, 0, 1]], 1e-6, 'features')

#----------------------------------------------------------------------------
# The command line.

@pytest.fixture(scope='module')
def gen_output(setup, detector_pt):
    return run_cli(['gen', f'--network={setup["snapshots"][3]}', '--num=5', STEPS, '--batch=2'] + scoring_args(setup, detector_pt))

def metric_lines(out):
    """The four result lines of --metrics=fid,kid,pr as (name, value) pairs."""
    lines = out.splitlines()[-4:]
    return [('FID', float(lines[0]))] + [(line.split(': ')[0], float(line.split(': ')[1])) for line in lines[1:]]

def test_gen_prints_what_calc_prints_for_the_pngs(setup, detector_pt, gen_output):
    calc = run_cli(['calc', f'--images={setup["pngs"]}', '--num=5', '--batch=2'] + scoring_args(setup, detector_pt))
    assert [name for name, _ in metric_lines(gen_output)] == ['FID', 'KID', 'Precision', 'Recall']
    assert metric_lines(gen_output) == [(name, pytest.approx(value, rel=1e-5)) for name, value in metric_lines(calc)]
    lines = gen_output.splitlines()
    assert lines[0] == f'Loading dataset reference statistics from "{setup["ref"]}"...'
    assert 'Calculating statistics for 5 generated images...' in lines

def test_gen_seeds_option_equals_num_and_writes_nothing(setup, detector_pt, gen_output, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same = run_cli(['gen', f'--network={setup["snapshots"][3]}', '--seeds=0-4', STEPS, '--batch=5'] + scoring_args(setup, detector_pt))
    assert metric_lines(same) == [(name, pytest.approx(value, rel=1e-5)) for name, value in metric_lines(gen_output)]
    assert os.listdir(tmp_path) == []

def test_gen_under_torchrun_matches_one_process(setup, detector_pt, gen_output, tmp_path):
    """Two processes, shares of 3 and 2 seeds: the summed statistics and the gathered features (in seed
    order, which KID's subsets depend on: 4 reference rows, so KID draws 4 of the 5 generated ones).
    --seeds, as torchrun would take --num for an abbreviation of its own --numa-binding."""
    out = run_fid('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(REPO / 'fid.py'), 'gen',
        f'--network={setup["snapshots"][3]}', '--seeds=0-4', STEPS, '--batch=2', *scoring_args(setup, detector_pt),
        cache_dir=tmp_path, threads=1)
    assert metric_lines(out) == [(name, pytest.approx(value, rel=1e-5)) for name, value in metric_lines(gen_output)]

#----------------------------------------------------------------------------
