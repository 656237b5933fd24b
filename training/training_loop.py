"""Main training loop (spec training.md section 4; file formats in formats.md sections 2-5).

Faithful to the original in its arithmetic (seeding, accumulation, lr ramp, gradient sanitising,
EMA), its tick/snapshot/state-dump schedule and its files. Beyond the original:
  * runs on the CPU (gloo) as well as on CUDA; pin_memory, cuDNN and TF32 settings only with CUDA;
  * snapshots, training states and stats.jsonl lines are written atomically (temp file + rename, or
    one complete line per write), so a kill at any moment leaves every existing file readable;
  * SIGTERM/SIGINT make all ranks agree to stop after the current step, write a snapshot and a
    training state at that step and return normally (exit code 0); a second SIGINT aborts at once;
  * non-finite loss values are counted: `Loss/nonfinite` in stats.jsonl and `nonfinite` at the end
    of the tick line;
  * snapshots and training states are read back without executing code embedded in them.
"""

import copy
import json
import os
import pickle
import signal
import threading
import time

import numpy as np
import psutil
import torch

import dnnlib
from torch_utils import distributed as dist
from torch_utils import misc
from torch_utils import training_stats
from training import snapshot

#----------------------------------------------------------------------------
# The schedule's formulas (training.md 4.3).

def learning_rate(base_lr, cur_nimg, lr_rampup_kimg):
    """Linear ramp-up over `lr_rampup_kimg`; `cur_nimg` counts images *before* the step, so the
    first step of a fresh run uses lr = 0."""
    return base_lr * min(cur_nimg / max(lr_rampup_kimg * 1000, 1e-8), 1)

def ema_beta(cur_nimg, batch_size, ema_halflife_kimg, ema_rampup_ratio):
    """Per-step EMA decay for a half-life in images, optionally capped at ema_rampup_ratio * cur_nimg."""
    ema_halflife_nimg = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        ema_halflife_nimg = min(ema_halflife_nimg, cur_nimg * ema_rampup_ratio)
    return 0.5 ** (batch_size / max(ema_halflife_nimg, 1e-8))

@torch.no_grad()
def update_ema(ema, net, beta):
    """p_ema <- p_net + beta * (p_ema - p_net), for parameters only (buffers are not averaged)."""
    for p_ema, p_net in zip(ema.parameters(), net.parameters()):
        p_ema.copy_(p_net.detach().lerp(p_ema, beta))

@torch.no_grad()
def sanitize_gradients(net):
    """NaN -> 0, +inf -> 1e5, -inf -> -1e5, in place."""
    for param in net.parameters():
        if param.grad is not None:
            torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)

#----------------------------------------------------------------------------
# Files: every one is complete or absent, whenever the process dies.

def _write_atomically(path, write_fn):
    """Call write_fn(file) on a temporary file beside `path`, sync it to disk, rename it onto `path`."""
    with dnnlib.util.atomic_write(path) as tmp_path:
        with open(tmp_path, 'wb') as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())

def save_snapshot(path, data):
    """Network snapshot (formats.md 2): plain pickle of {ema, loss_fn, augment_pipe, dataset_kwargs}."""
    _write_atomically(path, lambda f: pickle.dump(data, f))

def save_training_state(path, net, optimizer):
    """Training state (formats.md 3): torch.save of {net, optimizer_state}."""
    _write_atomically(path, lambda f: torch.save(dict(net=net, optimizer_state=optimizer.state_dict()), f))

def open_stats_jsonl(path):
    """Open stats.jsonl for appending whole lines. A partial last line (left by a kill in the
    middle of a write, which a single os.write of a short line makes practically impossible)
    is cut off first, so that every line of the file is valid JSON."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    with open(path, 'rb') as f:
        content = f.read()
    if len(content) > 0 and not content.endswith(b'\n'):
        os.ftruncate(fd, content.rfind(b'\n') + 1)
    return fd

def append_stats_line(fd, stats):
    """One JSON line (formats.md 4) in a single write."""
    line = (json.dumps(stats) + '\n').encode('utf-8')
    while line:
        line = line[os.write(fd, line):]

#----------------------------------------------------------------------------
# Stopping on SIGTERM/SIGINT (cluster pre-emption, Ctrl+C).

class StopRequest:
    """Records SIGTERM/SIGINT; the loop stops after the current step once any rank saw one.
    A second SIGINT raises KeyboardInterrupt (hard stop); repeated SIGTERMs are ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._prev_handlers = {}
        self._group = None
        if dist.get_world_size() > 1 and torch.distributed.get_backend() != 'gloo':
            self._group = torch.distributed.new_group(backend='gloo') # CPU flag, no GPU sync per step.
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._prev_handlers[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, _frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    def agreed(self):
        """True on every rank if any rank was signalled (collective: all ranks call it each step)."""
        flag = torch.tensor([float(self.signum is not None or dist.should_stop())])
        if dist.get_world_size() > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
        return bool(flag.item() > 0)

    def restore(self):
        for signum, handler in self._prev_handlers.items():
            signal.signal(signum, handler)
        self._prev_handlers = {}

def _leave_signals_to_main(_worker_id):
    """DataLoader workers ignore SIGTERM/SIGINT (Ctrl+C reaches the whole process group, and torchrun
    signals each worker's group), so that the main process can finish its step and save; they exit
    with the main process."""
    for signum in StopRequest.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)

#----------------------------------------------------------------------------

def training_loop(
    run_dir             = '.',      # Where snapshots, states and logs go (None on ranks != 0).
    dataset_kwargs      = {},       # Dataset class and its arguments.
    data_loader_kwargs  = {},       # Extra arguments of torch.utils.data.DataLoader.
    network_kwargs      = {},       # Preconditioner class and its arguments.
    loss_kwargs         = {},       # Loss class and its arguments.
    optimizer_kwargs    = {},       # Optimizer class and its arguments (lr is the ramp-up target).
    augment_kwargs      = None,     # AugmentPipe class and its arguments; None turns augmentation off.
    seed                = 0,        # Seed of every random stream (made per rank).
    batch_size          = 512,      # Images per optimizer step, all ranks together.
    batch_gpu           = None,     # Largest batch per rank and round; None = the whole per-rank batch.
    total_kimg          = 200000,   # Stop once this many thousand images have been seen.
    ema_halflife_kimg   = 500,      # Half-life of the weight average, thousand images.
    ema_rampup_ratio    = 0.05,     # Cap of the half-life as a fraction of the images seen; None = no cap.
    lr_rampup_kimg      = 10000,    # Linear learning-rate warm-up, thousand images.
    loss_scaling        = 1,        # Factor applied to the loss before backward (never divided out).
    kimg_per_tick       = 50,       # Progress line every this many thousand images.
    snapshot_ticks      = 50,       # Network snapshot every this many ticks; None = never.
    state_dump_ticks    = 500,      # Training state every this many ticks; None = never.
    resume_pkl          = None,     # Network pickle whose EMA weights initialise the net and the EMA.
    resume_state_dump   = None,     # Training state whose net weights and optimizer state are restored.
    resume_kimg         = 0,        # Images already seen, thousands (sets the schedules on resume).
    cudnn_benchmark     = True,     # torch.backends.cudnn.benchmark (CUDA only).
    device              = None,     # None = this rank's device (cuda:LOCAL_RANK, or the CPU).
):
    # Seeds differ per rank; TF32 off for exact float32 (4.2.1-2).
    start_time = time.time()
    device = torch.device(device) if device is not None else dist.get_device()
    np.random.seed((seed * dist.get_world_size() + dist.get_rank()) % (1 << 31))
    torch.manual_seed(np.random.randint(1 << 31))
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False

    # Per-rank batch and accumulation rounds (4.2.3).
    batch_gpu_total = batch_size // dist.get_world_size()
    if batch_gpu is None or batch_gpu > batch_gpu_total:
        batch_gpu = batch_gpu_total
    num_accumulation_rounds = batch_gpu_total // batch_gpu
    assert batch_size == batch_gpu * num_accumulation_rounds * dist.get_world_size()

    # Data: an endless sampler split over the ranks (4.2.4).
    dist.print0('Loading dataset...')
    dataset_obj = dnnlib.util.construct_class_by_name(**dataset_kwargs)
    dataset_sampler = misc.InfiniteSampler(dataset=dataset_obj, rank=dist.get_rank(), num_replicas=dist.get_world_size(), seed=seed)
    loader_kwargs = dict(data_loader_kwargs)
    if device.type != 'cuda':
        loader_kwargs['pin_memory'] = False # Pinned memory needs CUDA.
    if loader_kwargs.get('num_workers', 0) > 0:
        loader_kwargs.setdefault('worker_init_fn', _leave_signals_to_main)
    dataset_iterator = iter(torch.utils.data.DataLoader(dataset=dataset_obj, sampler=dataset_sampler, batch_size=batch_gpu, **loader_kwargs))

    # Network, and its summary table on rank 0 (4.2.5).
    dist.print0('Constructing network...')
    interface_kwargs = dict(img_resolution=dataset_obj.resolution, img_channels=dataset_obj.num_channels, label_dim=dataset_obj.label_dim)
    net = dnnlib.util.construct_class_by_name(**network_kwargs, **interface_kwargs)
    net.train().requires_grad_(True).to(device)
    if dist.get_rank() == 0:
        with torch.no_grad():
            images = torch.zeros([batch_gpu, net.img_channels, net.img_resolution, net.img_resolution], device=device)
            sigma = torch.ones([batch_gpu], device=device)
            labels = torch.zeros([batch_gpu, net.label_dim], device=device)
            misc.print_module_summary(net, [images, sigma, labels], max_nesting=2)

    # Loss, optimizer, augmentation, DDP wrapper; the EMA copies rank 0's weights after DDP's broadcast (4.2.6).
    dist.print0('Setting up optimizer...')
    loss_fn = dnnlib.util.construct_class_by_name(**loss_kwargs)
    optimizer = dnnlib.util.construct_class_by_name(params=net.parameters(), **optimizer_kwargs)
    augment_pipe = dnnlib.util.construct_class_by_name(**augment_kwargs) if augment_kwargs is not None else None
    ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None)
    ema = copy.deepcopy(net).eval().requires_grad_(False)

    # Weights from a network pickle (--transfer/--resume), then net and optimizer from a state (4.2.7-8).
    if resume_pkl is not None:
        dist.print0(f'Loading network weights from "{resume_pkl}"...')
        if dist.get_rank() != 0:
            dist.barrier() # rank 0 goes first (it may download into the cache)
        data = snapshot.load_snapshot(resume_pkl, verbose=False)
        if dist.get_rank() == 0:
            dist.barrier() # other ranks follow
        misc.copy_params_and_buffers(src_module=data['ema'], dst_module=net, require_all=False)
        misc.copy_params_and_buffers(src_module=data['ema'], dst_module=ema, require_all=False)
        del data
    if resume_state_dump:
        dist.print0(f'Loading training state from "{resume_state_dump}"...')
        data = snapshot.load_training_state(resume_state_dump)
        misc.copy_params_and_buffers(src_module=data['net'], dst_module=net, require_all=True)
        optimizer.load_state_dict(data['optimizer_state'])
        del data

    # Schedules start at resume_kimg (4.2.9).
    dist.print0(f'Training for {total_kimg} kimg...')
    dist.print0()
    cur_nimg = resume_kimg * 1000
    cur_tick = 0
    tick_start_nimg = cur_nimg
    tick_start_time = time.time()
    maintenance_time = tick_start_time - start_time
    dist.update_progress(cur_nimg // 1000, total_kimg)
    stats_fd = None
    nonfinite = torch.zeros([], dtype=torch.int64, device=device) # Non-finite loss values this tick.
    stop_request = StopRequest()
    try:
        while True:

            # Gradients of the global batch, in accumulation rounds; DDP syncs on the last (4.3.1-2).
            optimizer.zero_grad(set_to_none=True)
            for round_idx in range(num_accumulation_rounds):
                with misc.ddp_sync(ddp, (round_idx == num_accumulation_rounds - 1)):
                    images, labels = next(dataset_iterator)
                    images = images.to(device).to(torch.float32) / 127.5 - 1
                    labels = labels.to(device)
                    loss = loss_fn(net=ddp, images=images, labels=labels, augment_pipe=augment_pipe)
                    training_stats.report('Loss/loss', loss)
                    nonfinite += (~torch.isfinite(loss.detach())).sum()
                    loss.sum().mul(loss_scaling / batch_gpu_total).backward()

            # Adam step at the ramped learning rate, on sanitised gradients (4.3.3-5).
            for g in optimizer.param_groups:
                g['lr'] = learning_rate(optimizer_kwargs['lr'], cur_nimg, lr_rampup_kimg)
            sanitize_gradients(net)
            optimizer.step()

            # Weight average (4.3.6).
            update_ema(ema, net, ema_beta(cur_nimg, batch_size, ema_halflife_kimg, ema_rampup_ratio))

            # Continue unless a tick ends here: tick 0 after the first step, then every kimg_per_tick (4.3.7-8).
            cur_nimg += batch_size
            done = (cur_nimg >= total_kimg * 1000)
            stop = stop_request.agreed()
            if (not done) and (not stop) and (cur_tick != 0) and (cur_nimg < tick_start_nimg + kimg_per_tick * 1000):
                continue

            # Tick: progress line and statistics (4.4.1).
            tick_end_time = time.time()
            if dist.get_world_size() > 1:
                torch.distributed.all_reduce(nonfinite)
            dist.print0(report_tick(cur_tick, cur_nimg, tick_start_nimg, start_time, tick_start_time, tick_end_time,
                maintenance_time, int(nonfinite), device))
            nonfinite.zero_()
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)

            # Stop on a signal (4.4.2), after saving a snapshot and a state at this step.
            if (not done) and stop:
                done = True
                dist.print0()
                name = signal.Signals(stop_request.signum).name if stop_request.signum is not None else 'a stop request'
                dist.print0(f'Aborting after {name}: saving a snapshot and the training state...')

            # Network snapshot (4.4.3): built on every rank (consistency check), written by rank 0.
            if (snapshot_ticks is not None) and (done or cur_tick % snapshot_ticks == 0):
                data = snapshot_data(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dataset_kwargs)
                if dist.get_rank() == 0:
                    save_snapshot(os.path.join(run_dir, f'network-snapshot-{cur_nimg//1000:06d}.pkl'), data)
                del data

            # Training state (4.4.4); when stopping, also at tick 0.
            if (state_dump_ticks is not None) and (done or cur_tick % state_dump_ticks == 0) and (cur_tick != 0 or stop) and dist.get_rank() == 0:
                save_training_state(os.path.join(run_dir, f'training-state-{cur_nimg//1000:06d}.pt'), net, optimizer)

            # One stats.jsonl line per tick (4.4.5); collective.
            training_stats.default_collector.update()
            if dist.get_rank() == 0:
                if stats_fd is None:
                    stats_fd = open_stats_jsonl(os.path.join(run_dir, 'stats.jsonl'))
                append_stats_line(stats_fd, dict(training_stats.default_collector.as_dict(), timestamp=time.time()))
            dist.update_progress(cur_nimg // 1000, total_kimg)

            # Next tick (4.4.6).
            cur_tick += 1
            tick_start_nimg = cur_nimg
            tick_start_time = time.time()
            maintenance_time = tick_start_time - tick_end_time
            if done:
                break
    finally:
        stop_request.restore()
        if stats_fd is not None:
            os.close(stats_fd)

    dist.print0()
    dist.print0('Exiting...')

def snapshot_data(ema, loss_fn, augment_pipe, dataset_kwargs):
    """The snapshot dict (formats.md 2). Modules are copied in eval mode without gradients, checked
    to be equal on all ranks (collective) and moved to the CPU."""
    data = dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs))
    for key, value in data.items():
        if isinstance(value, torch.nn.Module):
            module = copy.deepcopy(value).eval().requires_grad_(False)
            misc.check_ddp_consistency(module)
            data[key] = module.cpu()
    return data

def report_tick(cur_tick, cur_nimg, tick_start_nimg, start_time, tick_start_time, tick_end_time, maintenance_time, nonfinite, device):
    """Report the tick's numbers to training_stats (rank 0) and return the tick line (formats.md 5),
    with the count of non-finite loss values appended as the last field."""
    tick_sec = tick_end_time - tick_start_time
    cpu_mem = psutil.Process(os.getpid()).memory_info().rss / 2**30
    fields = [
        f"tick {training_stats.report0('Progress/tick', cur_tick):<5d}",
        f"kimg {training_stats.report0('Progress/kimg', cur_nimg / 1e3):<9.1f}",
        f"time {dnnlib.util.format_time(training_stats.report0('Timing/total_sec', tick_end_time - start_time)):<12s}",
        f"sec/tick {training_stats.report0('Timing/sec_per_tick', tick_sec):<7.1f}",
        f"sec/kimg {training_stats.report0('Timing/sec_per_kimg', tick_sec / (cur_nimg - tick_start_nimg) * 1e3):<7.2f}",
        f"maintenance {training_stats.report0('Timing/maintenance_sec', maintenance_time):<6.1f}",
        f"cpumem {training_stats.report0('Resources/cpu_mem_gb', cpu_mem):<6.2f}",
        f"gpumem {training_stats.report0('Resources/peak_gpu_mem_gb', _peak_gpu_mem(device, reserved=False)):<6.2f}",
        f"reserved {training_stats.report0('Resources/peak_gpu_mem_reserved_gb', _peak_gpu_mem(device, reserved=True)):<6.2f}",
        f"nonfinite {training_stats.report0('Loss/nonfinite', nonfinite):<5d}",
    ]
    return ' '.join(fields)

def _peak_gpu_mem(device, reserved):
    """Peak CUDA memory in GiB since the last reset; 0 on the CPU."""
    if device.type != 'cuda':
        return 0.0
    return (torch.cuda.max_memory_reserved(device) if reserved else torch.cuda.max_memory_allocated(device)) / 2**30

#----------------------------------------------------------------------------
