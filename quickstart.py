"""End-to-end quickstart on Fashion-MNIST: prepare the data, compute FID reference statistics,
train a small DDPM++/EDM network for a fixed time, generate images, score them, and write a sample
grid, a loss plot and a summary into one folder.

Every stage is a call of the project's own command-line tools and is skipped when its output
exists, so an interrupted run picks up where it stopped (training resumes from its last state).

    python quickstart.py --outdir=quickstart-out --minutes=15 --samples=1000
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import click
import numpy as np
import PIL.Image
import torch

import dnnlib
from training import inception

REPO = os.path.dirname(os.path.abspath(__file__))

# The network and training settings: DDPM++ with EDM preconditioning, scaled down for a CPU. Batch 32
# (twice the optimizer steps of batch 64 for 10% fewer images in 15 minutes) scored the lowest FID of
# the configurations measured (bench/README.md).
TRAIN_OPTIONS = ['--cond=0', '--arch=ddpmpp', '--precond=edm', '--cbase=16', '--cres=1,2,2', '--batch=32',
                 '--lr=1e-3', '--lr-rampup=0.01', '--ema=0.05', '--dropout=0', '--augment=0', '--duration=1000',
                 '--tick=2', '--snap=5', '--dump=5', '--seed=0', '--workers=1', '--nosubdir']

# The sampler: ancestral Euler (one network evaluation per step), which scores a markedly lower FID on
# this briefly trained network than the 18-step Heun sampler; 79 steps by default (see the README).
SAMPLE_OPTIONS = ['--solver=euler_a', '--batch=64']

#----------------------------------------------------------------------------

def run_tool(args, capture_stdout=False):
    """Run one of the project's CLIs from the repository root; stop the quickstart if it fails.
    With `capture_stdout`, its standard output is echoed and returned."""
    print('    $ python ' + ' '.join(args), flush=True)
    result = subprocess.run([sys.executable] + args, cwd=REPO, stdout=(subprocess.PIPE if capture_stdout else None), text=True)
    if capture_stdout:
        print(result.stdout, end='')
    if result.returncode != 0:
        raise click.ClickException(f'{args[0]} failed (exit code {result.returncode}); see its message above')
    return result.stdout

class Stages:
    """Announces each stage, skips it when its output exists, and records its wall time."""

    def __init__(self, outdir):
        self.timings_path = os.path.join(outdir, 'timings.json')
        self.timings = json.load(open(self.timings_path)) if os.path.exists(self.timings_path) else {}

    def run(self, name, output, fn):
        if os.path.exists(output):
            print(f'==> {name}: done already ({os.path.relpath(output)})')
            return
        print(f'==> {name} ...', flush=True)
        start = time.time()
        try:
            fn()
        finally: # An interrupted attempt counts too: the stage time is the sum of all attempts.
            self.timings[name] = self.timings.get(name, 0) + time.time() - start
            write_text(self.timings_path, json.dumps(self.timings, indent=2))

def keep_options(outdir, options):
    """Record the options of the run in outdir, or check that a rerun gives the same: the stages
    made already are skipped, so other options would silently not take effect."""
    path = os.path.join(outdir, 'quickstart-options.json')
    if not os.path.exists(path):
        write_text(path, json.dumps(options, indent=2))
        return
    try:
        before = json.load(open(path))
        changed = [f'--{name.replace("_", "-")}={before[name]} (now {value})' for name, value in options.items() if before[name] != value]
    except (ValueError, KeyError, TypeError):
        raise click.ClickException(f'{path} is not the options file of a quickstart run; delete it to go on') from None
    if changed:
        raise click.ClickException(f'--outdir: {outdir} holds a run made with {", ".join(changed)}; give another --outdir, or delete it to start over')

def write_text(path, text):
    with dnnlib.util.atomic_write(path) as temp_path:
        with open(temp_path, 'w') as f:
            f.write(text)

def int_ranges(values):
    """[0,1,2,5,6] -> '0-2,5-6', the --seeds syntax."""
    pieces = []
    for value in sorted(values):
        if pieces and value == pieces[-1][1] + 1:
            pieces[-1][1] = value
        else:
            pieces.append([value, value])
    return ','.join(f'{a}-{b}' for a, b in pieces)

#----------------------------------------------------------------------------
# The fast path: train.py --fast gives up bit-exactness with the original for speed, so the
# quickstart takes it only where it pays: bench/bench_train.py times a few training steps of this
# network with and without it on this machine, and --fast must be FAST_MARGIN times as fast.

FAST_MARGIN = 1.05

def time_fast_path(speed_json):
    run_tool(['bench/bench_train.py', '--nets=quickstart', '--no-alone', '--warmup=1', '--reps=2',
              f'--threads={torch.get_num_threads()}', f'--json={speed_json}'])

def fast_path_speedup(speed_json):
    """Training speed of --fast over the faithful path, as measured by time_fast_path."""
    try:
        variants = json.load(open(speed_json))['networks']['quickstart']['variants']
        return variants['--fast']['img_per_s'] / variants['faithful']['img_per_s']
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        raise click.ClickException(f'{speed_json} is not a timing written by bench/bench_train.py --json; delete it to time again') from None

def wants_fast_path(fast, speedup):
    """--fast=1 or 0 decides; auto takes the fast path when it measured FAST_MARGIN times as fast."""
    return fast == '1' or (fast == 'auto' and speedup >= FAST_MARGIN)

#----------------------------------------------------------------------------
# Training for a time budget: train.py is stopped with SIGTERM (its pre-emption path writes a
# snapshot and a training state at the current step, then exits with status 143, 128 + SIGTERM);
# a rerun resumes from the run directory.

STOPPED_BY_SIGTERM = 128 + signal.SIGTERM # train.py's exit status after a stop with its state saved

def stats_lines(run_dir):
    path = os.path.join(run_dir, 'stats.jsonl')
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.endswith('\n')]

def loss_history(run_dir):
    """The ticks of stats.jsonl along kimg, for the loss plot. A resumed run counts from the kimg in
    its state's file name (as the original does), so after a stop or a kill it repeats a stretch
    of kimg; its ticks replace the earlier ones there."""
    stats = []
    for tick in stats_lines(run_dir):
        while stats and stats[-1]['Progress/kimg']['mean'] >= tick['Progress/kimg']['mean']:
            stats.pop()
        stats.append(tick)
    return stats

def training_seconds(stats):
    return sum(s['Timing/sec_per_tick']['mean'] + s['Timing/maintenance_sec']['mean'] for s in stats)

def stop_training_after(proc, run_dir, deadline):
    """SIGTERM train.py at the deadline, but not before it has finished a tick of its own (its stop
    handler is then in place and a state can be saved); wait for it to exit."""
    ticks_before = len(stats_lines(run_dir))
    while proc.poll() is None:
        if time.time() >= deadline and len(stats_lines(run_dir)) > ticks_before:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        time.sleep(1)

def train_for(run_dir, dataset_zip, minutes, fast):
    remaining = minutes * 60 - training_seconds(stats_lines(run_dir))
    has_state = os.path.isdir(run_dir) and any(name.startswith('training-state-') for name in os.listdir(run_dir))
    options = TRAIN_OPTIONS + (['--fast'] if fast else [])
    if has_state:
        cmd = ['train.py', f'--outdir={run_dir}', f'--data={dataset_zip}', f'--resume={run_dir}'] + options
    else:
        shutil.rmtree(run_dir, ignore_errors=True) # A start killed before its first state: begin again.
        cmd = ['train.py', f'--outdir={run_dir}', f'--data={dataset_zip}'] + options
    if remaining > 0:
        print(f'    training for {remaining / 60:.1f} more minutes')
        print('    $ python ' + ' '.join(cmd), flush=True)
        proc = subprocess.Popen([sys.executable] + cmd, cwd=REPO)
        try:
            stop_training_after(proc, run_dir, deadline=time.time() + remaining)
        except KeyboardInterrupt: # Ctrl+C reaches train.py too; let it save its state.
            proc.wait()
            raise
        if proc.returncode not in (0, STOPPED_BY_SIGTERM): # Finished, or stopped at the deadline.
            raise click.ClickException(f'train.py failed (exit code {proc.returncode}); see its message above')
    stats = stats_lines(run_dir) # The budget is all time spent training, interrupted attempts included.
    kimg = stats[-1]['Progress/kimg']['mean']
    snapshots = sorted(name for name in os.listdir(run_dir) if re.fullmatch(r'network-snapshot-\d+\.pkl', name))
    result = dict(kimg=kimg, seconds=training_seconds(stats), sec_per_kimg=training_seconds(stats) / kimg,
                  snapshot=os.path.join(run_dir, snapshots[-1]), fast=fast)
    write_text(os.path.join(run_dir, 'quickstart-done.json'), json.dumps(result, indent=2))

#----------------------------------------------------------------------------
# Pictures.

def save_grid(sample_dir, path, rows=8, upscale=2):
    images = [np.array(PIL.Image.open(os.path.join(sample_dir, f'{seed:06d}.png'))) for seed in range(rows * rows)]
    h, w = images[0].shape[:2]
    grid = np.stack(images).reshape(rows, rows, h, w, *images[0].shape[2:]).swapaxes(1, 2).reshape(rows * h, rows * w, *images[0].shape[2:])
    grid = PIL.Image.fromarray(grid).resize((rows * w * upscale, rows * h * upscale), PIL.Image.NEAREST)
    with dnnlib.util.atomic_write(path) as temp_path:
        grid.save(temp_path, format='PNG')

def save_loss_plot(run_dir, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    stats = [s for s in loss_history(run_dir) if 'Loss/loss' in s]
    kimg = [s['Progress/kimg']['mean'] for s in stats]
    loss = [s['Loss/loss']['mean'] for s in stats]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(kimg, loss, marker='.')
    ax.set_yscale('log')
    ax.set_xlabel('training images (kimg)')
    ax.set_ylabel('EDM loss per pixel (mean over tick)')
    ax.set_title('Fashion-MNIST 32x32, DDPM++ / EDM')
    ax.grid(True, which='both', alpha=0.3)
    fig.tight_layout()
    with dnnlib.util.atomic_write(path) as temp_path:
        fig.savefig(temp_path, format='png')
    plt.close(fig)

#----------------------------------------------------------------------------

@click.command()
@click.option('--outdir', help='Folder for everything the quickstart makes', metavar='DIR', default='quickstart-out', show_default=True)
@click.option('--data', 'data_dir', help='Folder with the Fashion-MNIST idx .gz files', metavar='DIR', default='/usr/share/datasets/fashion-mnist', show_default=True)
@click.option('--minutes', help='Training time budget', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=15, show_default=True)
@click.option('--samples', help='Images to generate and score', metavar='INT', type=click.IntRange(min=64), default=1000, show_default=True)
@click.option('--ref-images', help='Training images for the FID reference statistics', metavar='INT', type=click.IntRange(min=2), default=1000, show_default=True)
@click.option('--steps', help='Sampling steps of ancestral Euler', metavar='INT', type=click.IntRange(min=1), default=79, show_default=True)
@click.option('--fast', help='Train with train.py --fast: auto = when it measures faster here', type=click.Choice(['auto', '1', '0']), default='auto', show_default=True)
def main(outdir, data_dir, minutes, samples, ref_images, steps, fast):
    """Fashion-MNIST end to end: dataset_tool.py, fid.py ref, train.py, generate.py, fid.py calc."""
    source = os.path.join(data_dir, 'train-images-idx3-ubyte.gz')
    if not os.path.isfile(source):
        raise click.ClickException(f'--data: {source} not found; install it with "apt-get install -y dataset-fashion-mnist" or give the folder holding it')
    outdir = os.path.abspath(outdir)
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as err:
        raise click.ClickException(f'--outdir: cannot create the folder {outdir} ({err.strerror})') from None
    keep_options(outdir, dict(minutes=minutes, samples=samples, ref_images=ref_images, steps=steps, fast=fast))
    dataset_zip = os.path.join(outdir, 'fashion-mnist-32x32.zip')
    ref_zip = os.path.join(outdir, f'fashion-mnist-first{ref_images}-32x32.zip')
    ref_npz = os.path.join(outdir, 'fid-ref.npz')
    run_dir = os.path.join(outdir, 'train')
    sample_dir = os.path.join(outdir, 'samples')
    fid_json = os.path.join(outdir, 'fid.json')
    detector = inception.installed_torchscript_detector() or inception.DETECTOR_URL
    stages = Stages(outdir)

    stages.run('Convert the training set to 32x32 PNGs', dataset_zip, lambda: run_tool(
        ['dataset_tool.py', f'--source={source}', f'--dest={dataset_zip}']))
    stages.run(f'Extract the first {ref_images} training images for FID', ref_zip, lambda: run_tool(
        ['dataset_tool.py', f'--source={source}', f'--dest={ref_zip}', f'--max-images={ref_images}']))
    stages.run('Compute FID reference statistics', ref_npz, lambda: run_tool(
        ['fid.py', 'ref', f'--data={ref_zip}', f'--dest={ref_npz}', f'--detector={detector}']))
    speedup = None
    if fast == 'auto':
        speed_json = os.path.join(outdir, 'fast-path-speed.json')
        stages.run('Time training with and without --fast', speed_json, lambda: time_fast_path(speed_json))
        speedup = fast_path_speedup(speed_json)
    use_fast = wants_fast_path(fast, speedup)
    stages.run(f'Train for {minutes:g} minutes', os.path.join(run_dir, 'quickstart-done.json'), lambda: train_for(
        run_dir, dataset_zip, minutes, use_fast))
    trained = json.load(open(os.path.join(run_dir, 'quickstart-done.json')))

    def generate():
        missing = [seed for seed in range(samples) if not os.path.exists(os.path.join(sample_dir, f'{seed:06d}.png'))]
        run_tool(['generate.py', f'--network={trained["snapshot"]}', f'--outdir={sample_dir}', f'--seeds={int_ranges(missing)}']
                 + SAMPLE_OPTIONS + [f'--steps={steps}'] + (['--fast'] if trained.get('fast') else []))
        write_text(os.path.join(sample_dir, 'done.json'), json.dumps(dict(samples=samples, steps=steps, network=trained['snapshot'])))
    stages.run(f'Generate {samples} images (ancestral Euler, {steps} steps)', os.path.join(sample_dir, 'done.json'), generate)

    def score():
        stdout = run_tool(['fid.py', 'calc', f'--images={sample_dir}', f'--ref={ref_npz}', f'--num={samples}', f'--detector={detector}'], capture_stdout=True)
        write_text(fid_json, json.dumps(dict(fid=float(stdout.split()[-1]), num_images=samples, ref_images=ref_images)))
    stages.run('Score the images (FID)', fid_json, score)
    stages.run('Sample grid', os.path.join(outdir, 'grid.png'), lambda: save_grid(sample_dir, os.path.join(outdir, 'grid.png')))
    stages.run('Loss plot', os.path.join(outdir, 'loss.png'), lambda: save_loss_plot(run_dir, os.path.join(outdir, 'loss.png')))

    fid = json.load(open(fid_json))
    lines = [
        'Quickstart summary',
        f'  trained     {trained["kimg"]:.1f} kimg in {dnnlib.util.format_time(trained["seconds"])} ({trained["sec_per_kimg"]:.1f} sec/kimg)',
        f'  network     {trained["snapshot"]}',
        f'  fast path   {"on" if trained.get("fast") else "off"}' + (f' (measured {speedup:.2f}x the faithful speed)' if speedup else ''),
        f'  FID         {fid["fid"]:g} ({fid["num_images"]} generated images vs. {fid["ref_images"]} training images)',
        f'  samples     {sample_dir}/',
        f'  grid        {os.path.join(outdir, "grid.png")}',
        f'  loss plot   {os.path.join(outdir, "loss.png")}',
        '  wall time of each stage',
    ] + [f'    {dnnlib.util.format_time(sec):>8}  {name}' for name, sec in stages.timings.items()] + [
        f'    {dnnlib.util.format_time(sum(stages.timings.values())):>8}  total (installation not included)',
    ]
    write_text(os.path.join(outdir, 'summary.txt'), '\n'.join(lines) + '\n')
    print('\n'.join([''] + lines))

if __name__ == '__main__':
    main()
