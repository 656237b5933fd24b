"""quickstart.py end to end at toy scale: every stage runs through the project's CLIs, the
outputs appear, and a rerun skips every stage."""

import gzip
import json
import os
import struct
import subprocess
import sys

import click
import numpy as np
import PIL.Image
import pytest

def write_idx(folder, num_images=96):
    """A tiny dataset in the MNIST idx format (what Debian's dataset-fashion-mnist provides)."""
    rnd = np.random.RandomState(0)
    images = np.zeros([num_images, 28, 28], dtype=np.uint8)
    for i in range(num_images): # A bright square of random size and place on black.
        size = rnd.randint(6, 20)
        y, x = rnd.randint(0, 28 - size, size=2)
        images[i, y:y + size, x:x + size] = 200
    with gzip.open(folder / 'train-images-idx3-ubyte.gz', 'wb') as f:
        f.write(struct.pack('>IIII', 0x803, num_images, 28, 28) + images.tobytes())
    with gzip.open(folder / 'train-labels-idx1-ubyte.gz', 'wb') as f:
        f.write(struct.pack('>II', 0x801, num_images) + (np.arange(num_images) % 10).astype(np.uint8).tobytes())

def run_quickstart(repo, outdir, data, *options):
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1')
    cmd = [sys.executable, 'quickstart.py', f'--outdir={outdir}', f'--data={data}', '--minutes=0.2', '--samples=64', '--ref-images=16', *options]
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)

def test_quickstart_runs_and_reruns_from_cache(repo, tmp_path):
    data = tmp_path / 'fmnist'
    data.mkdir()
    write_idx(data)
    out = tmp_path / 'out'
    first = run_quickstart(repo, out, data, '--fast=1', '--steps=6') # The timing that --fast=auto runs is tested below.
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert 'Quickstart summary' in first.stdout and '  fast path   on\n' in first.stdout
    assert 'fast_kwargs' in json.loads((out / 'train/training_options.json').read_text())
    assert json.loads((out / 'quickstart-options.json').read_text())['steps'] == 6
    for name in ['fashion-mnist-32x32.zip', 'fid-ref.npz', 'train/quickstart-done.json', 'samples/000063.png', 'summary.txt', 'loss.png']:
        assert (out / name).exists(), name
    assert PIL.Image.open(out / 'grid.png').size == (512, 512)
    fid = json.loads((out / 'fid.json').read_text())
    assert fid['num_images'] == 64 and np.isfinite(fid['fid'])
    trained = json.loads((out / 'train/quickstart-done.json').read_text())
    assert trained['kimg'] > 0 and os.path.exists(trained['snapshot'])

    second = run_quickstart(repo, out, data, '--fast=1', '--steps=6')
    assert second.returncode == 0, second.stderr[-3000:]
    stages = [line for line in second.stdout.splitlines() if line.startswith('==> ')]
    assert len(stages) == 8 and all('done already' in line for line in stages)
    assert '$ python' not in second.stdout # No tool was run again.

def test_quickstart_names_missing_data(repo, tmp_path):
    result = run_quickstart(repo, tmp_path / 'out', tmp_path / 'nowhere')
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith('Error: --data:')
    assert not (tmp_path / 'out').exists()

def test_quickstart_loss_history_after_resumes(repo, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(repo))
    import quickstart
    tick = lambda kimg, sec: json.dumps({'Progress/kimg': {'mean': kimg}, 'Timing/sec_per_tick': {'mean': sec}, 'Timing/maintenance_sec': {'mean': 1}})
    # Ticks up to 6.3 kimg, a kill, a resume from the state at 4 kimg that repeats 4-6.3, a torn line.
    lines = [tick(0.1, 1), tick(2, 10), tick(4, 10), tick(6, 10), tick(6.3, 2), tick(4.1, 1), tick(6, 12)]
    (tmp_path / 'stats.jsonl').write_text('\n'.join(lines) + '\n{"Progress/')
    assert [s['Progress/kimg']['mean'] for s in quickstart.loss_history(str(tmp_path))] == [0.1, 2, 4, 4.1, 6]
    all_ticks = quickstart.stats_lines(str(tmp_path))
    assert len(all_ticks) == 7 and quickstart.training_seconds(all_ticks) == 46 + 7

def test_quickstart_names_an_unusable_outdir(repo, tmp_path):
    data = tmp_path / 'fmnist'
    data.mkdir()
    write_idx(data, num_images=4)
    (tmp_path / 'file').write_text('')
    result = run_quickstart(repo, tmp_path / 'file', data)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith('Error: --outdir: cannot create the folder')
    assert (tmp_path / 'file').read_text() == ''

def test_fast_path_timing_decides_the_training_options(repo, tmp_path, monkeypatch):
    """--fast=auto times the quickstart network's training step with bench/bench_train.py and trains
    with --fast only when that measured FAST_MARGIN times as fast."""
    speed_json = tmp_path / 'speed.json'
    cmd = [sys.executable, 'bench/bench_train.py', '--nets=quickstart', '--no-alone', '--batch=4', '--warmup=0', '--reps=1',
           '--threads=1', f'--json={speed_json}']
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(speed_json.read_text())
    variants = record['networks']['quickstart']['variants']
    assert record['networks']['quickstart']['batch'] == 4 and set(variants) == {'faithful', '--fast'}
    assert not any(variants['faithful']['knobs'].values()) and variants['--fast']['knobs']['channels_last']
    assert all(v['img_per_s'] > 0 and v['img_per_cpu_s'] > 0 for v in variants.values())

    monkeypatch.syspath_prepend(str(repo))
    import quickstart
    assert quickstart.fast_path_speedup(str(speed_json)) == pytest.approx(variants['--fast']['img_per_s'] / variants['faithful']['img_per_s'])
    for ratio, expected in [(0.9, False), (1.04, False), (1.06, True), (2.5, True)]:
        variants['--fast']['img_per_s'] = ratio * variants['faithful']['img_per_s']
        speed_json.write_text(json.dumps(record))
        speedup = quickstart.fast_path_speedup(str(speed_json))
        assert quickstart.wants_fast_path('auto', speedup) == expected, ratio
        assert quickstart.wants_fast_path('1', speedup) and not quickstart.wants_fast_path('0', speedup)
    speed_json.write_text('{"networks": {}}')
    with pytest.raises(click.ClickException, match='speed.json is not a timing'):
        quickstart.fast_path_speedup(str(speed_json))
