"""Training speed of the faithful path against the fast path (training/fast_path.py), in one process.

Each network is configured by train.py itself from its command-line options: DDPM++ CIFAR-10 (the
paper's class-conditional setup, batch 16 on the CPU and 256 on a GPU unless --batch says otherwise)
and the quickstart's small Fashion-MNIST network (quickstart.TRAIN_OPTIONS, batch 64). Every variant
(the faithful path, --fast, each of its knobs alone, and --fast with torch.compile when asked) trains its
own copy of the same initial network on the same synthetic batches with the training loop's own step
(train_step, then the weight average). The variants take turns step by step, so that load from other
processes hits all of them alike; the first rounds are warm-up and not timed, and the first step of a
compiled variant, which compiles, is reported on its own.

    python bench/bench_train.py [--nets=cifar10,quickstart] [--reps=N] [--threads=2] [--no-alone] [--compile] [--batch=N] [--json=PATH]

Prints, per network and variant, images per second (median over the timed steps, wall clock, and per
CPU second of this process, the steadier number on a shared machine) and the ratio to the faithful path;
--json also writes them to a file (quickstart.py reads it to decide whether to train with --fast).
"""

import copy
import json
import os
import statistics
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dnnlib # pylint: disable=wrong-import-position
import quickstart # pylint: disable=wrong-import-position
import train # pylint: disable=wrong-import-position
from torch_utils import distributed as dist # pylint: disable=wrong-import-position
from training import fast_path, networks, training_loop as tl # pylint: disable=wrong-import-position

# (train.py options, image channels, default batch size on the CPU and on a GPU); 32x32 images.
NETWORKS = {
    'cifar10': (['--cond=1', '--arch=ddpmpp', '--precond=edm'], 3, (16, 256)),
    'quickstart': (quickstart.TRAIN_OPTIONS, 1, (64, 64)),
}

#----------------------------------------------------------------------------

def training_config(name, batch, device):
    """train.py's configuration (the training loop's keyword arguments) for network `name`."""
    options, channels, batches = NETWORKS[name]
    batch = batch or batches[device.type == 'cuda']
    args = ['--outdir=unused', '--data=unused'] + [arg for arg in options if not arg.startswith('--batch')] + [f'--batch={batch}']
    opts = dnnlib.EasyDict(train.main.make_context('train.py', args).params)
    facts = dnnlib.EasyDict(dataset=dnnlib.EasyDict(name=name, resolution=32, size=None), seed=0, resume=None, run_dir=None, monitor=None,
                            fast=fast_path.FastPath())
    c = train.build_config(opts, facts)
    c.label_dim = 10 if opts.cond else 0
    c.img_channels = channels
    return c

def synthetic_batches(c, device, seed=0):
    """Endless (uint8 images, one-hot labels) batches, the same sequence for every variant."""
    generator = torch.Generator().manual_seed(seed)
    shape = [c.batch_size, c.img_channels, 32, 32]
    while True:
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        classes = torch.randint(0, max(c.label_dim, 1), [c.batch_size], generator=generator)
        labels = torch.nn.functional.one_hot(classes, c.label_dim).float() if c.label_dim else torch.zeros([c.batch_size, 0])
        yield images.to(device), labels.to(device)

class Variant:
    """One training setup: its own network, weight average, optimizer and data, on path `fp`."""

    def __init__(self, name, fp, c, base_net, device):
        self.name, self.fp, self.c, self.device = name, fp, c, device
        self.net = fast_path.prepare_network(copy.deepcopy(base_net), fp)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=[device] if device.type == 'cuda' else None)
        self.optimizer = dnnlib.util.construct_class_by_name(params=self.net.parameters(), **c.optimizer_kwargs,
                                                             **fast_path.optimizer_options(fp, device))
        self.loss_fn = dnnlib.util.construct_class_by_name(**c.loss_kwargs)
        self.augment_pipe = dnnlib.util.construct_class_by_name(**c.augment_kwargs) if 'augment_kwargs' in c else None
        self.batches = synthetic_batches(c, device)
        self.nonfinite = torch.zeros([], dtype=torch.int64, device=device)
        self.seconds, self.cpu_seconds, self.first_step = [], [], None

    def step(self):
        """One optimizer step and EMA update, at the learning rate and EMA decay of mid-training;
        returns (wall, CPU) seconds, measured after the device has finished."""
        # The process-wide switches, set as the training loop sets them for this variant.
        tl.configure_cuda(self.device, cudnn_benchmark=True)
        fast_path.configure_backends(self.fp)
        networks.use_fast_attention(self.fp.fused)
        wall, cpu = time.perf_counter(), time.process_time()
        tl.train_step(self.ddp, self.optimizer, self.loss_fn, self.augment_pipe, self.batches, 1, 1 / self.c.batch_size,
                      self.c.optimizer_kwargs.lr, self.device, self.nonfinite, self.fp)
        tl.update_ema(self.ema, self.net, 0.999, fused=self.fp.fused)
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - wall, time.process_time() - cpu

def variants_for(device, knobs_alone, with_compile):
    """(name, knobs): the faithful path, --fast, each knob of --fast alone, and --fast + compile."""
    fast = fast_path.fastest_for(device)
    yield 'faithful', fast_path.FastPath()
    yield '--fast', fast
    enabled = [knob for knob, on in fast.as_dict().items() if on]
    if knobs_alone and len(enabled) > 1:
        for knob in enabled:
            yield f'{knob} alone', fast_path.FastPath(**{knob: True})
    if with_compile and not fast.compile:
        yield '--fast --compile=1', fast_path.FastPath(**dict(fast.as_dict(), compile=True))

#----------------------------------------------------------------------------

def bench_network(name, batch, reps, warmup, knobs_alone, with_compile, device):
    c = training_config(name, batch, device)
    torch.manual_seed(0)
    base_net = dnnlib.util.construct_class_by_name(**c.network_kwargs, img_resolution=32, img_channels=c.img_channels,
                                                   label_dim=c.label_dim).train().requires_grad_(True).to(device)
    variants = [Variant(label, fp, c, base_net, device) for label, fp in variants_for(device, knobs_alone, with_compile)]
    del base_net
    print(f'\n{name}: batch {c.batch_size}, {sum(p.numel() for p in variants[0].net.parameters()):,} parameters, '
          f'{warmup} warm-up + {reps} timed steps per variant, interleaved', flush=True)
    for round_idx in range(warmup + reps):
        for variant in variants:
            wall, cpu = variant.step()
            if round_idx == 0:
                variant.first_step = wall
            if round_idx >= warmup:
                variant.seconds.append(wall)
                variant.cpu_seconds.append(cpu)
        print(f'  round {round_idx + 1}/{warmup + reps}: ' + ', '.join(f'{v.name} {wall_time(v):.2f}s' for v in variants), flush=True)
    report(variants, c.batch_size)
    networks.use_fast_attention(False)
    return dict(batch=c.batch_size, variants={v.name: dict(knobs=v.fp.as_dict(), img_per_s=c.batch_size / statistics.median(v.seconds),
                                                          img_per_cpu_s=c.batch_size / statistics.median(v.cpu_seconds)) for v in variants})

def wall_time(variant):
    return variant.seconds[-1] if variant.seconds else variant.first_step

def report(variants, batch):
    rate = lambda seconds: batch / statistics.median(seconds)
    faithful = variants[0]
    print(f'  {"variant":<22}{"img/s":>8}{"ratio":>8}{"img/CPU-s":>11}{"ratio":>8}')
    for v in variants:
        line = (f'  {v.name:<22}{rate(v.seconds):>8.2f}{rate(v.seconds) / rate(faithful.seconds):>7.2f}x'
                f'{rate(v.cpu_seconds):>11.2f}{rate(v.cpu_seconds) / rate(faithful.cpu_seconds):>7.2f}x')
        if v.fp.compile:
            line += f'   (compile: first step {v.first_step:.0f}s, about {v.first_step - statistics.median(v.seconds):.0f}s of compiling)'
        print(line, flush=True)

@click.command()
@click.option('--nets', default='cifar10,quickstart', show_default=True, help='Networks to time, comma-separated')
@click.option('--reps', type=int, default=None, help='Timed steps per variant  [default: 3 on CPU (cifar10: 2), 20 on GPU]')
@click.option('--warmup', type=int, default=None, help='Untimed steps per variant  [default: 1 on CPU, 3 on GPU]')
@click.option('--batch', type=int, default=None, help='Batch size  [default: 16 for cifar10 on CPU, 256 on GPU; 64 for quickstart]')
@click.option('--threads', type=int, default=2, show_default=True, help='torch intra-op threads on the CPU')
@click.option('--alone/--no-alone', 'knobs_alone', default=True, show_default=True, help='Also time each knob of --fast alone')
@click.option('--compile', 'with_compile', is_flag=True, help='Also time --fast with torch.compile (slow to compile on a CPU)')
@click.option('--json', 'json_path', metavar='PATH', default=None, help='Also write the rates, per network and variant, to this JSON file')
def main(nets, reps, warmup, batch, threads, knobs_alone, with_compile, json_path):
    torch.set_num_threads(threads)
    dist.init()
    device = dist.get_device()
    on_gpu = device.type == 'cuda'
    print(f'torch {torch.__version__}, device {torch.cuda.get_device_name(device) if on_gpu else "cpu"}, '
          f'{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, '
          f'native bf16: {fast_path.native_bf16(device)}; --fast = {fast_path.fastest_for(device)}')
    results = {}
    for name in nets.split(','):
        default_reps = 20 if on_gpu else 2 if name == 'cifar10' else 3
        results[name] = bench_network(name, batch, reps or default_reps, warmup if warmup is not None else 3 if on_gpu else 1,
                                      knobs_alone, with_compile, device)
    if json_path:
        record = dict(torch=torch.__version__, device=str(device), threads=torch.get_num_threads(), networks=results)
        with dnnlib.util.atomic_write(json_path) as temp_path:
            with open(temp_path, 'w', encoding='utf-8') as f:
                json.dump(record, f, indent=2)

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
