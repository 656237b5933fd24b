"""Sampling speed of the faithful path and the fast path, measured in the same process.

    python bench/bench_sample.py [--nets=ddpmpp,quickstart] [--batch=16] [--steps=18] [--reps=2]
                                 [--configs=faithful,fast,bf16,...] [--threads=N] [--device=cuda]

Each configuration samples the same latents with the EDM sampler (Algorithm 2, deterministic:
--steps=18 is 35 network evaluations) from a randomly initialised network, which is as fast as a
trained one. The configurations take turns within each repetition, so that load from other
processes hits all of them alike. One short run per configuration (2 steps) comes first and is not
counted; for `compile` its time is the compile time, reported on its own.

Networks: `ddpmpp` is the DDPM++ CIFAR-10 configuration (32x32 RGB, train.py --arch=ddpmpp);
`quickstart` the network that quickstart.py trains (32x32 grey, its --cbase and --cres).
Configurations: `faithful` (all knobs off), `fast` (what --fast turns on for the device) and each
knob of training/fast_path.py alone.
"""

import copy
import dataclasses
import os
import statistics
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quickstart # pylint: disable=wrong-import-position
import train # pylint: disable=wrong-import-position
from training import fast_path, generation, networks # pylint: disable=wrong-import-position
from training.samplers import edm_sampler # pylint: disable=wrong-import-position

KNOBS = [field.name for field in dataclasses.fields(fast_path.FastPath)]

def quickstart_size():
    """--cbase and --cres of quickstart.py's training options."""
    given = dict(option[2:].split('=', 1) for option in quickstart.TRAIN_OPTIONS if '=' in option)
    return dict(model_channels=int(given['cbase']), channel_mult=[int(m) for m in given['cres'].split(',')])

def build_network(name):
    torch.manual_seed(0)
    shape = dict(ddpmpp=dict(img_channels=3), quickstart=dict(img_channels=1, **quickstart_size()))[name]
    kwargs = dict(train.ARCHITECTURES['ddpmpp'], **shape)
    return networks.EDMPrecond(img_resolution=32, label_dim=0, **kwargs).eval().requires_grad_(False)

def knobs_of(config, device):
    if config == 'faithful':
        return fast_path.FastPath()
    if config == 'fast':
        return fast_path.fastest_for(device)
    return fast_path.resolve(device, **{config: True})

def timed_sampling(denoiser, fp, latents, num_steps):
    """(wall-clock seconds, CPU seconds of this process) of one sampler run."""
    # The process-wide switches, set for the configuration whose turn it is (TF32 off is the original's setting).
    networks.use_fast_attention(fp.fused)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = fp.tf32
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        edm_sampler(denoiser, latents, num_steps=num_steps)
    if latents.device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu

def bench_network(name, configs, batch, num_steps, reps, device):
    net = build_network(name)
    latents = torch.randn([batch, net.img_channels, 32, 32], generator=torch.Generator().manual_seed(1)).to(device)
    knobs = {config: knobs_of(config, device) for config in configs}
    denoisers, first_call = {}, {}
    for config in configs:
        denoisers[config] = generation.prepare_denoiser(copy.deepcopy(net), knobs[config], device)
        first_call[config] = timed_sampling(denoisers[config], knobs[config], latents, 2)[0]

    wall, cpu = {config: [] for config in configs}, {config: [] for config in configs}
    for _rep in range(reps):
        for config in configs:
            seconds, cpu_seconds = timed_sampling(denoisers[config], knobs[config], latents, num_steps)
            wall[config].append(seconds)
            cpu[config].append(cpu_seconds)

    print(f'\n{name}: batch {batch}, {num_steps} steps ({2 * num_steps - 1} evaluations), {reps} reps, '
          f'{sum(p.numel() for p in net.parameters()) / 1e6:.1f}M parameters')
    print(f'{"config":14s} {"knobs":24s} {"img/s":>7s} {"img/CPU-s":>9s} {"ratio":>6s} {"CPU ratio":>9s}  runs (s)')
    reference = configs[0]
    for config in configs:
        speed, cpu_speed = batch / min(wall[config]), batch / min(cpu[config])
        ratio, cpu_ratio = min(wall[reference]) / min(wall[config]), min(cpu[reference]) / min(cpu[config])
        on = '+'.join(knob for knob in KNOBS if getattr(knobs[config], knob)) or '-'
        extra = f'  first call {first_call[config]:.1f}s (compile)' if knobs[config].compile else ''
        print(f'{config:14s} {on:24s} {speed:7.3f} {cpu_speed:9.3f} {ratio:6.2f} {cpu_ratio:9.2f}  '
              + ' '.join(f'{s:.1f}' for s in wall[config]) + f' (median {statistics.median(wall[config]):.1f}){extra}', flush=True)

@click.command()
@click.option('--nets', default='ddpmpp,quickstart', show_default=True, help='Networks, comma-separated: ddpmpp, quickstart')
@click.option('--configs', default=None, help='Configurations, comma-separated; ratios are against the first  '
              '[default: faithful,fast and each knob; no tf32 on the CPU]')
@click.option('--batch', type=int, default=16, show_default=True)
@click.option('--steps', 'num_steps', type=int, default=18, show_default=True)
@click.option('--reps', type=int, default=2, show_default=True)
@click.option('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s choice)')
@click.option('--device', default=None, help='Default: CUDA when available, else the CPU')
def main(nets, configs, batch, num_steps, reps, threads, device):
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(device) if device else generation.default_device()
    if configs is None:
        configs = ['faithful', 'fast'] + [knob for knob in KNOBS if knob != 'tf32' or device.type == 'cuda']
    else:
        configs = configs.split(',')
    for config in configs:
        if config not in ['faithful', 'fast'] + KNOBS:
            raise click.BadParameter(f'unknown configuration "{config}"', param_hint='--configs')
    print(f'torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, '
          f'--fast = {"+".join(k for k in KNOBS if getattr(fast_path.fastest_for(device), k))}')
    for name in nets.split(','):
        bench_network(name, configs, batch, num_steps, reps, device)

if __name__ == '__main__':
    main()
