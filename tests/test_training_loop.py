"""training/training_loop.py and training runs of train.py: files, statistics, resume, signals, failures.

Tiny configurations on the CPU: 16x16 images for the end-to-end run, 8x8 images with one
resolution level where many runs are needed (DDP, stop/resume, kills).
"""

import copy
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import psutil
import pytest
import torch

import dnnlib
from torch_utils import distributed as dist
from training import fast_path, networks, snapshot, stop_signal, training_loop as tl
from train_helpers import REPO, dry_run_options, make_image_folder, run_train, single_thread_env, tiny_loop_kwargs

TINY16 = ['--cbase=16', '--cres=1,2', '--batch=32', '--batch-gpu=16', '--duration=0.001', '--tick=1', '--snap=1', '--dump=1', '--seed=1']
TINY8 = ['--cbase=8', '--cres=1', '--batch=32', '--tick=1', '--seed=1']

STAT_NAMES = ['Loss/loss', 'Progress/tick', 'Progress/kimg', 'Timing/total_sec', 'Timing/sec_per_tick', 'Timing/sec_per_kimg',
    'Timing/maintenance_sec', 'Resources/cpu_mem_gb', 'Resources/peak_gpu_mem_gb', 'Resources/peak_gpu_mem_reserved_gb',
    'Loss/nonfinite', 'timestamp']

TICK_LINE = re.compile(r'tick (\d+) +kimg (\d+\.\d) +time (.+?) +sec/tick (\S+) +sec/kimg (\S+) +maintenance (\S+) +'
    r'cpumem (\S+) +gpumem (\S+) +reserved (\S+) +nonfinite (\d+) +eta (\d+[dhms](?: \d+[dhms])*)')

@pytest.fixture(scope='module')
def data16(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp('data') / 'tiny16'), num_images=16, resolution=16)

@pytest.fixture(scope='module')
def data8(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp('data') / 'tiny8'), num_images=16, resolution=8)

def _run_dirs(outdir):
    return sorted(glob.glob(os.path.join(outdir, '0*')))

def _read_stats(run_dir):
    with open(os.path.join(run_dir, 'stats.jsonl'), 'rb') as f:
        content = f.read()
    assert content.endswith(b'\n')
    return [json.loads(line) for line in content.decode().splitlines()]

def _adam_step(state):
    return int(state['optimizer_state']['state'][0]['step'])

#----------------------------------------------------------------------------
# End to end: train.py on 16x16 images, two accumulation rounds, 1 kimg.

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, data16):
    outdir = str(tmp_path_factory.mktemp('runs'))
    res = run_train([f'--outdir={outdir}', f'--data={data16}'] + TINY16)
    assert res.returncode == 0, res.stdout + res.stderr
    [run_dir] = _run_dirs(outdir)
    return dnnlib.EasyDict(run_dir=run_dir, stdout=res.stdout,
        snapshots=sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl'))),
        states=sorted(glob.glob(os.path.join(run_dir, 'training-state-*.pt'))))

# A run names its processes gpusN on GPUs, cpuN on the CPU.
PROCESSES = 'gpus' if torch.cuda.is_available() else 'cpu'

def test_run_dir_contents(tiny_run):
    assert os.path.basename(tiny_run.run_dir) == f'00000-tiny16-uncond-ddpmpp-edm-{PROCESSES}1-batch32-fp32'
    assert ('Number of GPUs:          1' if PROCESSES == 'gpus' else 'Device:                  cpu, 1 process(es)') in tiny_run.stdout
    assert sorted(os.listdir(tiny_run.run_dir)) == ['log.txt', 'network-snapshot-000000.pkl', 'network-snapshot-000001.pkl',
        'stats.jsonl', 'training-state-000001.pt', 'training_options.json'] # snapshot at tick 0, no state at tick 0

def test_training_options_json(tiny_run):
    text = open(os.path.join(tiny_run.run_dir, 'training_options.json')).read()
    assert not text.endswith('\n')
    options = json.loads(text)
    assert text == json.dumps(options, indent=2)
    assert text in tiny_run.stdout # the printed options are the saved ones
    assert options['run_dir'] == tiny_run.run_dir and options['total_kimg'] == 1 and options['batch_gpu'] == 16

def test_log_txt(tiny_run):
    lines = open(os.path.join(tiny_run.run_dir, 'log.txt')).read().splitlines()
    assert lines[0] == 'Loading dataset...'
    assert 'Creating output directory...' not in lines and 'Creating output directory...' in tiny_run.stdout
    assert lines[1] == 'Constructing network...' and lines[3].startswith('EDMPrecond ') # module summary
    assert lines[lines.index('Setting up optimizer...') + 1] == 'Training for 1 kimg...'
    ticks = [TICK_LINE.fullmatch(line) for line in lines if line.startswith('tick ')]
    assert len(ticks) == 2 and all(ticks)
    assert [t.group(1) for t in ticks] == ['0', '1'] and [t.group(2) for t in ticks] == ['0.0', '1.0']
    assert [t.group(10) for t in ticks] == ['0', '0']
    assert lines[-2:] == ['', 'Exiting...']

def _seconds(duration):
    """'1h 02m 03s' -> 3723."""
    units = dict(d=86400, h=3600, m=60, s=1)
    return sum(int(part[:-1]) * units[part[-1]] for part in duration.split())

def test_tick_line_ends_with_the_time_left(tiny_run):
    ticks = [TICK_LINE.fullmatch(line) for line in tiny_run.stdout.splitlines() if line.startswith('tick ')]
    # Tick 0 took one step of 32 images; 1000 - 32 images are left at its average speed.
    sec_per_tick = float(ticks[0].group(4))
    assert abs(_seconds(ticks[0].group(11)) - sec_per_tick * 968 / 32) <= 0.05 * 968 / 32 + 0.5
    assert ticks[-1].group(11) == '0s' # done

def test_time_left():
    assert tl.time_left(10, 1000, 3000) == 30
    assert tl.time_left(10, 1000, -24) == 0 # the last step overshoots --duration
    assert tl.time_left(0, 0, 0) == 0

def test_stats_jsonl(tiny_run):
    stats = _read_stats(tiny_run.run_dir)
    assert len(stats) == 2
    for tick, line in enumerate(stats):
        assert list(line) == STAT_NAMES
        assert line['Progress/tick'] == dict(num=1, mean=tick, std=0.0)
        assert line['Loss/nonfinite'] == dict(num=1, mean=0.0, std=0.0)
        assert np.isfinite(line['Loss/loss']['mean']) and line['Loss/loss']['std'] > 0
    # Loss/loss counts every element of the per-pixel loss: 32 images in tick 0, 1024 - 32 in tick 1.
    assert [line['Loss/loss']['num'] for line in stats] == [32 * 3 * 16 * 16, (1024 - 32) * 3 * 16 * 16]
    assert [round(line['Progress/kimg']['mean'], 3) for line in stats] == [0.032, 1.024]

def test_snapshot_contents_and_safe_loading(tiny_run):
    options = json.load(open(os.path.join(tiny_run.run_dir, 'training_options.json')))
    for path in tiny_run.snapshots:
        data = snapshot.load_snapshot(path, verbose=False)
        assert list(data) == ['ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs']
        assert type(data['ema']).__name__ == 'EDMPrecond' and not data['ema'].training
        assert all(not p.requires_grad and p.device.type == 'cpu' and p.dtype == torch.float32 for p in data['ema'].parameters())
        assert type(data['loss_fn']).__name__ == 'EDMLoss' and type(data['augment_pipe']).__name__ == 'AugmentPipe'
        assert data['augment_pipe'].p == 0.12
        assert type(data['dataset_kwargs']) is dict and data['dataset_kwargs'] == options['dataset_kwargs']

def test_training_state_contents(tiny_run):
    [path] = tiny_run.states
    state = snapshot.load_training_state(path)
    assert list(state) == ['net', 'optimizer_state']
    net = state['net']
    assert type(net).__name__ == 'EDMPrecond' and net.training and all(p.requires_grad for p in net.parameters())
    assert _adam_step(state) == 1024 // 32
    # The last step ran with the image count before it: 1024 - 32 images into the 10 Mimg ramp-up.
    assert state['optimizer_state']['param_groups'][0]['lr'] == pytest.approx(1e-3 * (1024 - 32) / 10e6, rel=1e-12)
    ema = snapshot.load_snapshot(tiny_run.snapshots[-1], verbose=False)['ema']
    diffs = [float((a - b).abs().max()) for a, b in zip(_params(ema), _params(net))]
    assert max(diffs) > 0 # the EMA is not the raw network

def test_snapshot_generates_images(tiny_run, tmp_path):
    outdir = tmp_path / 'images'
    res = subprocess.run([sys.executable, 'generate.py', f'--network={tiny_run.snapshots[-1]}', f'--outdir={outdir}',
        '--seeds=0-1', '--steps=4', '--batch=2'], cwd=REPO, capture_output=True, text=True, timeout=300, env=single_thread_env())
    assert res.returncode == 0, res.stderr
    for seed in [0, 1]:
        image = np.array(PIL.Image.open(outdir / f'{seed:06d}.png'))
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8

def test_transfer_and_resume_options(tiny_run, data16, tmp_path):
    base = [f'--outdir={tmp_path}/runs', f'--data={data16}', '--seed=0']
    options = dry_run_options(base + [f'--transfer={tiny_run.snapshots[-1]}'])
    assert list(options)[-3:] == ['resume_pkl', 'ema_rampup_ratio', 'run_dir']
    assert options['resume_pkl'] == tiny_run.snapshots[-1] and options['ema_rampup_ratio'] is None
    [state] = tiny_run.states
    options = dry_run_options(base + [f'--resume={state}'])
    assert list(options)[-4:] == ['resume_pkl', 'resume_kimg', 'resume_state_dump', 'run_dir']
    assert options['resume_pkl'] == os.path.join(tiny_run.run_dir, 'network-snapshot-000001.pkl')
    assert options['resume_kimg'] == 1 and options['resume_state_dump'] == state
    options_dir = dry_run_options(base + [f'--resume={tiny_run.run_dir}']) # a run directory: its latest state
    assert options_dir['resume_state_dump'] == state and options_dir['resume_pkl'] == options['resume_pkl']

#----------------------------------------------------------------------------
# DDP: torchrun with two CPU processes (gloo); a signal to one rank stops both at the same step.

def _rank_process(torchrun_pid, rank):
    for proc in psutil.Process(torchrun_pid).children(recursive=True):
        if 'train.py' in ' '.join(proc.cmdline()) and proc.environ().get('RANK') == str(rank):
            return proc
    return None

def test_torchrun_two_processes(data8, tmp_path):
    outdir = str(tmp_path / 'runs')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py',
        f'--outdir={outdir}', f'--data={data8}', '--duration=1', '--snap=1000', '--dump=1000'] + TINY8
    with open(tmp_path / 'stdout.txt', 'w') as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=single_thread_env())
        try:
            _wait_for(lambda: _run_dirs(outdir) and _num_lines(os.path.join(_run_dirs(outdir)[0], 'stats.jsonl')) >= 2, proc)
            _rank_process(proc.pid, 1).send_signal(signal.SIGTERM) # rank 1 only, e.g. a pre-empted node
            assert proc.wait(timeout=120) != 0 # torchrun reports the ranks' exit status 143 as a failure
        finally:
            if proc.poll() is None:
                proc.kill()
    output = open(tmp_path / 'stdout.txt').read()
    assert re.search(r'exitcode\s*:\s*143', output), output
    [run_dir] = _run_dirs(outdir) # rank 1 creates nothing
    assert os.path.basename(run_dir) == f'00000-tiny8-uncond-ddpmpp-edm-{PROCESSES}2-batch32-fp32'
    log = open(os.path.join(run_dir, 'log.txt')).read()
    assert log.count('Loading dataset...') == 1 and log.count('tick 0 ') == 1 # rank 0 alone prints
    assert 'Aborting after a stop request: saving a snapshot and the training state...' in log # rank 0 was not signalled
    stats = _read_stats(run_dir)
    nimg = [round(line['Progress/kimg']['mean'] * 1000) for line in stats]
    kimg = nimg[-1] // 1000
    assert sorted(os.listdir(run_dir)) == sorted(['log.txt', 'stats.jsonl', 'training_options.json', 'network-snapshot-000000.pkl',
        f'network-snapshot-{kimg:06d}.pkl', f'training-state-{kimg:06d}.pt'])
    # Statistics are summed over both ranks (16 images each per step).
    assert [line['Loss/loss']['num'] for line in stats[:2]] == [32 * 3 * 8 * 8, 1024 * 3 * 8 * 8] # ticks at 32 and 1056 images
    state = snapshot.load_training_state(os.path.join(run_dir, f'training-state-{kimg:06d}.pt'))
    assert _adam_step(state) == nimg[-1] // 32
    snapshot.load_snapshot(os.path.join(run_dir, f'network-snapshot-{kimg:06d}.pkl'), verbose=False)

#----------------------------------------------------------------------------
# SIGTERM mid-tick, then resume from the state file and from the run directory.

def _wait_for(predicate, proc, timeout=240, interval=0.05):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, 'training ended early'
        assert time.time() < deadline, 'timed out'
        time.sleep(interval)

def _num_lines(path):
    return open(path, 'rb').read().count(b'\n') if os.path.exists(path) else 0

def test_sigterm_then_resume(data8, tmp_path):
    outdir = str(tmp_path / 'runs')
    common = [f'--data={data8}', '--snap=1000', '--dump=1000'] + TINY8
    with open(tmp_path / 'stdout.txt', 'w') as out:
        proc = subprocess.Popen([sys.executable, 'train.py', f'--outdir={outdir}', '--duration=1'] + common, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=single_thread_env())
        try:
            _wait_for(lambda: _run_dirs(outdir) and _num_lines(os.path.join(_run_dirs(outdir)[0], 'stats.jsonl')) >= 2, proc)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 143 # 128 + SIGTERM: stopped early, state saved
        finally:
            if proc.poll() is None:
                proc.kill()
    [run_dir] = _run_dirs(outdir)
    log = open(os.path.join(run_dir, 'log.txt')).read().splitlines()
    assert 'Aborting after SIGTERM: saving a snapshot and the training state...' in log and log[-1] == 'Exiting...'
    assert f'continue with --resume="{run_dir}"' in open(tmp_path / 'stdout.txt').read().splitlines()[-1]

    # The last tick ended at the step that followed the signal, before a full tick (mid-tick).
    stats = _read_stats(run_dir)
    nimg = [round(line['Progress/kimg']['mean'] * 1000) for line in stats]
    assert len(stats) >= 3 and 0 < nimg[-1] - nimg[-2] < 1000
    kimg = nimg[-1] // 1000
    state_path = os.path.join(run_dir, f'training-state-{kimg:06d}.pt')
    assert sorted(glob.glob(os.path.join(run_dir, 'training-state-*.pt'))) == [state_path]
    assert os.path.isfile(os.path.join(run_dir, f'network-snapshot-{kimg:06d}.pkl'))
    steps_before = _adam_step(snapshot.load_training_state(state_path))
    assert steps_before == nimg[-1] // 32

    # Resume from the file, then from the run directory: training continues at `kimg`.
    for resume in [state_path, run_dir]:
        res = run_train([f'--outdir={outdir}', f'--resume={resume}', f'--duration={(kimg + 1) / 1000}', '--dump=1'] + common)
        assert res.returncode == 0, res.stdout + res.stderr
        new_run_dir = _run_dirs(outdir)[-1]
        options = json.load(open(os.path.join(new_run_dir, 'training_options.json')))
        assert options['resume_kimg'] == kimg and options['resume_state_dump'] == state_path and options['total_kimg'] == kimg + 1
        assert f'Loading training state from "{state_path}"...' in res.stdout
        stats = _read_stats(new_run_dir)
        assert [round(line['Progress/kimg']['mean'] * 1000) for line in stats] == [kimg * 1000 + 32, kimg * 1000 + 1024]
        final = snapshot.load_training_state(os.path.join(new_run_dir, f'training-state-{kimg + 1:06d}.pt'))
        assert _adam_step(final) == steps_before + 1024 // 32 # optimizer state restored

#----------------------------------------------------------------------------
# SIGKILL in the middle of writing a snapshot or a state leaves every file readable.

def _temp_files(run_dir, prefix):
    try:
        return [name for name in os.listdir(run_dir) if name.startswith(prefix) and '.tmp-' in name]
    except FileNotFoundError:
        return []

def _check_every_file_loads(run_dir):
    names = os.listdir(run_dir)
    for name in names:
        path = os.path.join(run_dir, name)
        if name.startswith('.'):
            assert '.tmp-' in name # only temporary files of interrupted writes
        elif name.endswith('.pkl'):
            snapshot.load_snapshot(path, verbose=False)
        elif name.endswith('.pt'):
            snapshot.load_training_state(path)
        elif name == 'stats.jsonl':
            _read_stats(run_dir)
        elif name == 'training_options.json':
            json.load(open(path))
        else:
            assert name == 'log.txt'

@pytest.mark.parametrize('target', ['.network-snapshot-', '.training-state-'])
def test_sigkill_during_write(data8, tmp_path, target):
    """Kill the run as soon as the temporary file of a snapshot/state write appears."""
    args = [f'--data={data8}', '--duration=1', '--cbase=64', '--cres=1', '--batch=8', '--tick=1', '--seed=1']
    for attempt in range(5): # The write may finish before the kill lands; then try again.
        outdir = str(tmp_path / f'runs{attempt}')
        proc = subprocess.Popen([sys.executable, 'train.py', f'--outdir={outdir}'] + args, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=single_thread_env())
        try:
            if target == '.training-state-': # States are written at tick 0 only when stopping.
                _wait_for(lambda: _run_dirs(outdir) and os.path.exists(os.path.join(_run_dirs(outdir)[0], 'network-snapshot-000000.pkl')), proc)
                proc.send_signal(signal.SIGTERM)
            _wait_for(lambda: _run_dirs(outdir) and _temp_files(_run_dirs(outdir)[0], target), proc, interval=0.0005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        [run_dir] = _run_dirs(outdir)
        _check_every_file_loads(run_dir)
        if _temp_files(run_dir, target):
            return # killed while writing, and nothing is corrupt
    pytest.fail('the kill never landed during a write')

#----------------------------------------------------------------------------
# In-process runs of training_loop() for exact checks of resume, transfer, stop and non-finite losses.

@pytest.fixture(scope='module')
def loop_kwargs(data8, one_thread):
    dist.init()
    return tiny_loop_kwargs(data8)

def _params(module):
    return [p.detach().clone() for p in module.parameters()]

def test_resume_restores_optimizer_and_ema(loop_kwargs, tmp_path):
    first = tmp_path / 'first'
    first.mkdir()
    tl.training_loop(run_dir=str(first), total_kimg=0.048, kimg_per_tick=0.016, snapshot_ticks=1, state_dump_ticks=1,
        lr_rampup_kimg=0.016, ema_halflife_kimg=0.02, ema_rampup_ratio=None, **loop_kwargs) # EMA lags the weights
    state = snapshot.load_training_state(str(first / 'training-state-000000.pt'))
    ema0 = _params(snapshot.load_snapshot(str(first / 'network-snapshot-000000.pkl'), verbose=False)['ema'])
    net0 = _params(state['net'])
    assert _adam_step(state) == 6

    # Two steps from 1 kimg with a vanishing learning rate, so that the weights stay the restored
    # ones and the EMA must follow p_ema <- p_net + beta * (p_ema - p_net) from the restored EMA.
    second = tmp_path / 'second'
    second.mkdir()
    optimizer_kwargs = dict(loop_kwargs['optimizer_kwargs'], lr=1e-30)
    tl.training_loop(run_dir=str(second), total_kimg=1.016, resume_pkl=str(first / 'network-snapshot-000000.pkl'),
        resume_state_dump=str(first / 'training-state-000000.pt'), resume_kimg=1, **dict(loop_kwargs, optimizer_kwargs=optimizer_kwargs))
    state2 = snapshot.load_training_state(str(second / 'training-state-000001.pt'))
    ema2 = _params(snapshot.load_snapshot(str(second / 'network-snapshot-000001.pkl'), verbose=False)['ema'])
    assert _adam_step(state2) == 8 # optimizer state restored: 6 + 2 steps
    assert state2['optimizer_state']['param_groups'][0]['lr'] == pytest.approx(1e-30 * 1008 / 10e6)
    for p_net2, p_net0 in zip(_params(state2['net']), net0):
        torch.testing.assert_close(p_net2, p_net0, rtol=0, atol=1e-12) # network restored from the state
    beta1, beta2 = tl.ema_beta(1000, 8, 500, 0.05), tl.ema_beta(1008, 8, 500, 0.05)
    assert beta1 == pytest.approx(0.5 ** (8 / 50)) # half-life capped at 5% of the images seen
    for p_ema2, p_ema0, p_net0 in zip(ema2, ema0, net0):
        torch.testing.assert_close(p_ema2, p_net0 + beta1 * beta2 * (p_ema0 - p_net0), rtol=1e-5, atol=1e-6)
    assert max(float((a - b).abs().max()) for a, b in zip(ema0, net0)) > 1e-4 # the check above can tell EMA from net

def test_transfer_starts_from_the_pickle(loop_kwargs, tmp_path):
    source = tmp_path / 'source'
    source.mkdir()
    assert tl.training_loop(run_dir=str(source), total_kimg=0.016, **loop_kwargs) is None # complete, not stopped
    pkl = str(source / 'network-snapshot-000000.pkl')
    target = tmp_path / 'target'
    target.mkdir()
    # Fixed EMA half-life from the first step (no ramp-up); the first step has lr 0, so the EMA
    # after it still equals the transferred weights exactly.
    tl.training_loop(run_dir=str(target), total_kimg=0.008, resume_pkl=pkl, ema_rampup_ratio=None, **dict(loop_kwargs, seed=5))
    src = snapshot.load_snapshot(pkl, verbose=False)['ema']
    dst = snapshot.load_snapshot(str(target / 'network-snapshot-000000.pkl'), verbose=False)['ema']
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)

@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_after_current_step(loop_kwargs, tmp_path, signum):
    handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
    loss_kwargs = dict(class_name='train_helpers.SignalLoss', signum=signum, at_call=3)
    stopped_by = tl.training_loop(run_dir=str(tmp_path), total_kimg=1, kimg_per_tick=1, snapshot_ticks=100, state_dump_ticks=100,
        **dict(loop_kwargs, loss_kwargs=loss_kwargs))
    assert stopped_by == signum and stop_signal.exit_status(stopped_by) == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum]
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == handlers # handlers restored
    state = snapshot.load_training_state(str(tmp_path / 'training-state-000000.pt'))
    assert _adam_step(state) == 3 # stopped right after the step in which the signal came
    stats = _read_stats(str(tmp_path))
    assert [line['Progress/kimg']['mean'] for line in stats] == pytest.approx([0.008, 0.024])
    snapshot.load_snapshot(str(tmp_path / 'network-snapshot-000000.pkl'), verbose=False, allow_code=True) # holds a SignalLoss

def test_nonfinite_losses_are_counted(loop_kwargs, tmp_path, capsys):
    tl.training_loop(run_dir=str(tmp_path), total_kimg=0.032, kimg_per_tick=0.016, batch_gpu=4,
        **dict(loop_kwargs, loss_kwargs=dict(class_name='train_helpers.NaNLoss')))
    stats = _read_stats(str(tmp_path))
    # Three non-finite elements per accumulation round; ticks after 1, 3 and 4 steps of 2 rounds.
    assert [line['Loss/nonfinite']['mean'] for line in stats] == [6, 12, 6]
    assert not np.isfinite(stats[0]['Loss/loss']['mean'])
    ticks = [TICK_LINE.fullmatch(line) for line in capsys.readouterr().out.splitlines() if line.startswith('tick ')]
    assert [t.group(10) for t in ticks] == ['6', '12', '6']
    state = snapshot.load_training_state(str(tmp_path / 'training-state-000000.pt'))
    assert all(torch.isfinite(p).all() for p in state['net'].parameters())

#----------------------------------------------------------------------------
# Formulas and file helpers.

def test_learning_rate_ramp():
    assert tl.learning_rate(1e-3, 0, 10000) == 0 # the first step of a fresh run
    assert tl.learning_rate(1e-3, 5_000_000, 10000) == pytest.approx(5e-4)
    assert tl.learning_rate(1e-3, 20_000_000, 10000) == 1e-3
    assert tl.learning_rate(1e-3, 1, 0) == 1e-3

def test_ema_beta():
    assert tl.ema_beta(0, 512, 500, 0.05) == 0 # ramp-up: the EMA starts as the raw weights
    assert tl.ema_beta(1_000_000, 512, 500, 0.05) == pytest.approx(0.5 ** (512 / 50_000))
    assert tl.ema_beta(100_000_000, 512, 500, 0.05) == pytest.approx(0.5 ** (512 / 500_000))
    assert tl.ema_beta(0, 512, 500, None) == pytest.approx(0.5 ** (512 / 500_000))
    assert tl.ema_beta(10**9, 512, 0, None) == 0

def test_update_ema_and_sanitize_gradients():
    net = torch.nn.Linear(3, 2)
    ema = torch.nn.Linear(3, 2)
    net.register_buffer('buf', torch.ones(2))
    ema.register_buffer('buf', torch.zeros(2))
    expected = [p_net + 0.25 * (p_ema - p_net) for p_ema, p_net in zip(_params(ema), _params(net))]
    tl.update_ema(ema, net, 0.25)
    for p, e in zip(ema.parameters(), expected):
        torch.testing.assert_close(p, e)
    assert torch.equal(ema.buf, torch.zeros(2)) # buffers are not averaged
    net.weight.grad = torch.tensor([[float('nan'), float('inf'), -float('inf')], [1.0, 2.0, 3.0]])
    tl.sanitize_gradients(net)
    assert net.weight.grad.tolist() == [[0.0, 1e5, -1e5], [1.0, 2.0, 3.0]] and net.bias.grad is None

def test_stats_jsonl_partial_line_is_cut(tmp_path):
    path = str(tmp_path / 'stats.jsonl')
    with open(path, 'w') as f:
        f.write('{"a": 1}\n{"b": ')
    fd = snapshot.open_stats_jsonl(path)
    snapshot.append_stats_line(fd, {'c': float('nan')})
    os.close(fd)
    assert open(path).read() == '{"a": 1}\n{"c": NaN}\n'

#----------------------------------------------------------------------------
# The fast path (training/fast_path.py): runs on the CPU, records its options, and writes snapshots
# that load like any other and hold the plain float32 network.

def test_train_py_fast_run(data8, tmp_path):
    outdir = str(tmp_path / 'runs')
    res = run_train([f'--outdir={outdir}', f'--data={data8}', '--duration=0.001', '--fast'] + TINY8)
    assert res.returncode == 0, res.stdout + res.stderr
    [run_dir] = _run_dirs(outdir)
    options = json.load(open(os.path.join(run_dir, 'training_options.json')))
    assert list(options)[-1] == 'fast_kwargs' and options['fast_kwargs'] == fast_path.fastest_for('cpu').as_dict()
    stats = _read_stats(run_dir)
    assert len(stats) == 2 and all(np.isfinite(line['Loss/loss']['mean']) for line in stats)
    assert snapshot.load_snapshot(os.path.join(run_dir, 'network-snapshot-000001.pkl'), verbose=False)['ema'].training is False

def _denoise(net, seed=0):
    x = torch.randn([4, 3, 8, 8], generator=torch.Generator().manual_seed(seed))
    sigma = torch.tensor([0.02, 0.4, 2.0, 40.0])
    with torch.no_grad():
        return net(x, sigma)

@pytest.mark.parametrize('knobs', [dict(bf16=True), dict(channels_last=True), dict(fused=True),
                                   dict(bf16=True, channels_last=True, fused=True)], ids=lambda knobs: '+'.join(knobs))
def test_fast_path_snapshot_is_the_plain_network(loop_kwargs, tmp_path, monkeypatch, knobs):
    """The last snapshot holds the live EMA, as a contiguous float32 network: loaded safely or with its
    own code (as the original loads it), it gives the D(x) that the live EMA gives in float32."""
    live = {}
    def keep_ema(ema, *args):
        live['ema'] = ema
        return snapshot_contents(ema, *args)
    snapshot_contents = tl.snapshot_contents
    monkeypatch.setattr(tl, 'snapshot_contents', keep_ema)
    try:
        tl.training_loop(run_dir=str(tmp_path), total_kimg=0.024, kimg_per_tick=0.016, fast_kwargs=knobs, **loop_kwargs)
        live_D = _denoise(live['ema']) # fast attention and memory format as trained, float32
    finally:
        networks.use_fast_attention(False)
    # Not the loss means: once a loop in this process has reported a NaN loss (the test of non-finite
    # losses does), the running totals of training_stats, and so every later mean, stay NaN.
    assert [line['Loss/loss']['num'] for line in _read_stats(str(tmp_path))] == [8 * 3 * 8 * 8, 16 * 3 * 8 * 8]
    assert all(torch.isfinite(p).all() for p in live['ema'].parameters())
    path = str(tmp_path / 'network-snapshot-000000.pkl')
    for allow_code in [False, True]:
        ema = snapshot.load_snapshot(path, verbose=False, allow_code=allow_code)['ema']
        assert type(ema).__name__ == 'EDMPrecond' and not ema.training
        for loaded, trained in zip(ema.parameters(), live['ema'].parameters()):
            assert loaded.dtype == torch.float32 and loaded.is_contiguous() and torch.equal(loaded, trained)
        torch.testing.assert_close(_denoise(ema), live_D, rtol=1e-5, atol=1e-6)
    state = snapshot.load_training_state(str(tmp_path / 'training-state-000000.pt'))
    assert _adam_step(state) == 3

@pytest.mark.skipif(not hasattr(torch.nn.Module, 'compile'), reason='torch.nn.Module.compile needs PyTorch 2.2+')
def test_compiled_network_pickles_plain(tmp_path):
    """torch.compile of the U-Net lives in a call hook that neither copies nor pickles carry."""
    net = networks.EDMPrecond(img_resolution=8, img_channels=3, model_channels=8, channel_mult=[1], num_blocks=1)
    fast_path.prepare_network(net, fast_path.FastPath(compile=True))
    assert net.model._compiled_call_impl is not None # pylint: disable=protected-access
    assert copy.deepcopy(net).model._compiled_call_impl is None # pylint: disable=protected-access
    snapshot.save_training_state(str(tmp_path / 'training-state-000000.pt'), net, torch.optim.Adam(net.parameters()))
    assert b'_compiled_call_impl' not in (tmp_path / 'training-state-000000.pt').read_bytes()
    assert snapshot.load_training_state(str(tmp_path / 'training-state-000000.pt'))['net'].model._compiled_call_impl is None # pylint: disable=protected-access
    assert set(vars(net.model)) - set(vars(copy.deepcopy(net).model)) == {'_compiled_call_impl'} # nothing else added

def test_fused_ema_update_and_adam_options():
    torch.manual_seed(0)
    net, ema = torch.nn.Linear(5, 4), torch.nn.Linear(5, 4)
    reference = copy.deepcopy(ema)
    tl.update_ema(reference, net, 0.9)
    tl.update_ema(ema, net, 0.9, fused=True)
    for fused, plain in zip(ema.parameters(), reference.parameters()):
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-7)
    assert fast_path.optimizer_options(fast_path.FastPath(), 'cuda') == {}
    assert fast_path.optimizer_options(fast_path.FastPath(fused=True), 'cuda') == dict(fused=True)
    assert fast_path.optimizer_options(fast_path.FastPath(fused=True), 'cpu') == dict(foreach=True)
