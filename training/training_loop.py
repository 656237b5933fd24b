"""The training loop: Adam on the per-pixel denoising loss with a linear learning-rate warm-up,
an exponential moving average (EMA) of the weights, a progress line per tick, and periodic network
snapshots and training states.

Besides reproducing the original's numbers, files and schedule, the loop
  * runs on the CPU (gloo) as well as on CUDA (pinned memory, cuDNN and TF32 settings only there);
  * leaves only complete files behind when killed (see training/snapshot.py);
  * stops cleanly on SIGTERM/SIGINT: all ranks leave after the same step, with a snapshot and a
    training state of that step, and return the signal (see training/stop_signal.py);
  * counts non-finite loss values (`Loss/nonfinite` in stats.jsonl, `nonfinite` on the tick line);
  * never waits for the device between ticks: losses and counters are accumulated where they are
    computed and read once per tick;
  * has an opt-in fast path (`fast_kwargs`, see training/fast_path.py): bfloat16 autocast of the
    network, channels_last, TF32, torch.compile and fused kernels;
  * can drop class labels at random (`label_dropout`), for classifier-free guidance;
  * can be watched while it trains (`monitor_kwargs`, see training/monitor.py): sample grids, FID
    after every snapshot, TensorBoard;
  * ends each progress line with the estimated time left, from the average speed so far.
"""

import copy
import dataclasses
import os
import time

import numpy as np
import psutil
import torch

import dnnlib
from torch_utils import distributed as dist, misc, training_stats
from training import fast_path, monitor, snapshot, stop_signal

#----------------------------------------------------------------------------
# Schedules and the weight average.

def learning_rate(base_lr, cur_nimg, lr_rampup_kimg):
    """Linear warm-up to `base_lr` over the first `lr_rampup_kimg` thousand images. `cur_nimg` counts
    the images seen before the step, so the first step of a fresh run has a learning rate of 0."""
    warmup_fraction = cur_nimg / max(lr_rampup_kimg * 1000, 1e-8)
    return base_lr * min(warmup_fraction, 1)

def ema_halflife(cur_nimg, ema_halflife_kimg, ema_rampup_ratio):
    """The half-life of the EMA in images. The ramp-up caps it at `ema_rampup_ratio` times the images
    seen so far, so that early averages quickly forget the random initialisation; None: no cap."""
    halflife = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        halflife = min(halflife, ema_rampup_ratio * cur_nimg)
    return halflife

def ema_beta(cur_nimg, batch_size, ema_halflife_kimg, ema_rampup_ratio):
    """Per-step decay of the EMA for a half-life measured in images (the paper's Appendix F): the
    average forgets half of its past every `halflife` images."""
    halflife = ema_halflife(cur_nimg, ema_halflife_kimg, ema_rampup_ratio)
    return 0.5 ** (batch_size / max(halflife, 1e-8))

@torch.no_grad()
def update_ema(ema, net, beta, fused=False):
    """p_ema <- p_net + beta * (p_ema - p_net) for every parameter; buffers are left as they are.
    `fused` updates all parameters at once, as p_ema + (1 - beta) * (p_net - p_ema) (other rounding)."""
    averaged, current = list(ema.parameters()), [p.detach() for p in net.parameters()]
    if fused:
        torch._foreach_lerp_(averaged, current, 1 - beta) # pylint: disable=protected-access
        return
    for target, source in zip(averaged, current):
        target.copy_(source.lerp(target, beta))

def drop_labels(labels, probability):
    """Each image's label vector replaced by zeros with `probability`, so that the network also
    learns the unconditional denoiser that classifier-free guidance (Ho & Salimans, 2022) contrasts
    with the conditional one. At probability 0 the labels are returned as they are, without drawing
    a random number."""
    if probability == 0:
        return labels
    keep = torch.rand([len(labels)] + [1] * (labels.ndim - 1), device=labels.device) >= probability
    return labels * keep

@torch.no_grad()
def sanitize_gradients(net):
    """Make every gradient finite, in place: NaN becomes 0 and +-inf becomes +-1e5."""
    for grad in (p.grad for p in net.parameters()):
        if grad is not None:
            grad.nan_to_num_(nan=0, posinf=1e5, neginf=-1e5)

#----------------------------------------------------------------------------
# Setting up.

def seed_this_rank(seed):
    """Every rank gets its own random streams (noise levels, noise, augmentation, dropout),
    all derived from `seed`."""
    rank_seed = (seed * dist.get_world_size() + dist.get_rank()) % (1 << 31)
    np.random.seed(rank_seed)
    torch.manual_seed(np.random.randint(1 << 31))

def configure_cuda(device, cudnn_benchmark):
    """cuDNN autotuning as asked, and exact float32 arithmetic: no TF32, no reduced-precision
    fp16 reductions in matrix products. Nothing to do on the CPU."""
    if device.type != 'cuda':
        return
    matmul = torch.backends.cuda.matmul
    matmul.allow_fp16_reduced_precision_reduction = False
    matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = cudnn_benchmark

def split_global_batch(batch_size, batch_gpu):
    """(images per rank and step, images per rank and accumulation round, rounds per step)."""
    world_size = dist.get_world_size()
    per_rank = batch_size // world_size
    per_round = per_rank if batch_gpu is None else min(batch_gpu, per_rank)
    num_rounds = per_rank // per_round
    assert per_round * num_rounds * world_size == batch_size, 'the batch size must split evenly over ranks and rounds'
    return per_rank, per_round, num_rounds

def endless_batches(dataset, batch_gpu, seed, device, data_loader_kwargs):
    """Iterator over this rank's batches of (uint8 images, labels), drawn from an endless
    shuffled sequence that the ranks share round-robin."""
    sampler = misc.InfiniteSampler(dataset=dataset, rank=dist.get_rank(), num_replicas=dist.get_world_size(), seed=seed)
    loader_kwargs = dict(data_loader_kwargs)
    if device.type != 'cuda':
        loader_kwargs['pin_memory'] = False # pinning needs CUDA
    if loader_kwargs.get('num_workers', 0) > 0:
        loader_kwargs.setdefault('worker_init_fn', stop_signal.ignore_in_worker)
    loader = torch.utils.data.DataLoader(dataset=dataset, sampler=sampler, batch_size=batch_gpu, **loader_kwargs)
    return iter(loader)

def build_network(network_kwargs, dataset, batch_gpu, device):
    """The preconditioned denoiser, shaped after the dataset, in training mode on `device`.
    Rank 0 prints its layer table."""
    net = dnnlib.util.construct_class_by_name(**network_kwargs, img_resolution=dataset.resolution,
        img_channels=dataset.num_channels, label_dim=dataset.label_dim)
    net.train().requires_grad_(True).to(device)
    if dist.get_rank() == 0:
        print_network_summary(net, batch_gpu, device)
    return net

@torch.no_grad()
def print_network_summary(net, batch_gpu, device):
    """Layer table of one forward pass on a dummy batch (blank images, sigma = 1, zero labels).
    The pass draws dropout noise from this rank's random stream."""
    side = net.img_resolution
    dummy_inputs = [
        torch.zeros([batch_gpu, net.img_channels, side, side], device=device),
        torch.ones([batch_gpu], device=device),
        torch.zeros([batch_gpu, net.label_dim], device=device),
    ]
    misc.print_module_summary(net, dummy_inputs, max_nesting=2)

def load_pickle_weights(path, net, ema):
    """Start the network and its EMA from the EMA weights of a network snapshot (URL or path)."""
    dist.print0(f'Loading network weights from "{path}"...')
    with dist.rank_zero_first(): # rank 0 alone fills the download cache
        source = snapshot.load_snapshot(path, verbose=False)['ema']
    for target in (net, ema):
        misc.copy_params_and_buffers(src_module=source, dst_module=target, require_all=False)

def restore_training_state(path, net, optimizer):
    """Continue from a training state: the network's weights and the optimizer's moments.
    The EMA is not in it; it comes from the matching snapshot."""
    dist.print0(f'Loading training state from "{path}"...')
    state = snapshot.load_training_state(path)
    misc.copy_params_and_buffers(src_module=state['net'], dst_module=net, require_all=True)
    optimizer.load_state_dict(state['optimizer_state'])

#----------------------------------------------------------------------------
# One optimizer step.

def train_step(ddp, optimizer, loss_fn, augment_pipe, batches, num_rounds, grad_scale, lr, device, nonfinite,
        fp=fast_path.FastPath(), label_dropout=0):
    """One Adam step on a global batch, whose gradients accumulate over `num_rounds` rounds per rank
    (DDP averages them over the ranks in the last round). The summed per-pixel loss is scaled by
    `grad_scale`; non-finite loss values are added to the counter `nonfinite`, on the device.
    Nothing here waits for the device. On the fast path `fp`, the network runs under its autocast
    and gets its images in its memory format. Labels are dropped with `label_dropout`."""
    denoiser = fast_path.autocast_calls(ddp, fp, device)
    optimizer.zero_grad(set_to_none=True)
    for round_idx in range(num_rounds):
        with misc.ddp_sync(ddp, round_idx == num_rounds - 1):
            images, labels = next(batches)
            images = images.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1 # uint8 -> [-1, 1]
            images = fast_path.to_memory_format(fp, images)
            labels = drop_labels(labels.to(device, non_blocking=True), label_dropout)
            loss = loss_fn(net=denoiser, images=images, labels=labels, augment_pipe=augment_pipe)
            training_stats.report('Loss/loss', loss)
            nonfinite.add_(loss.detach().isfinite().logical_not().sum())
            loss.sum().mul(grad_scale).backward()
    for group in optimizer.param_groups:
        group['lr'] = lr
    sanitize_gradients(ddp.module)
    optimizer.step()

#----------------------------------------------------------------------------
# Ticks: progress report and maintenance (snapshots, training states, stats.jsonl).

@dataclasses.dataclass
class Tick:
    """Bookkeeping of the current tick."""
    index: int              # Restarts at 0 on resume.
    start_nimg: int         # Images seen when the tick began.
    start_time: float
    maintenance_sec: float  # Time between the end of the previous tick and the start of this one.

def time_left(elapsed_sec, images_done, images_left):
    """Seconds until `images_left` more images are trained, at the average speed so far."""
    return elapsed_sec / max(images_done, 1) * max(images_left, 0)

def tick_report(tick, cur_nimg, end_time, run_start_time, nonfinite, device, eta_sec):
    """Report the tick's progress, timing and resources to training_stats (rank 0 only) and
    return its progress line, which ends with the estimated time left `eta_sec` (not reported)."""
    tick_sec = end_time - tick.start_time
    on_cuda = device.type == 'cuda'
    fields = [ # (label, statistic, value, format)
        ('tick', 'Progress/tick', tick.index, '<5d'),
        ('kimg', 'Progress/kimg', cur_nimg / 1e3, '<9.1f'),
        ('time', 'Timing/total_sec', end_time - run_start_time, '<12s'),
        ('sec/tick', 'Timing/sec_per_tick', tick_sec, '<7.1f'),
        ('sec/kimg', 'Timing/sec_per_kimg', tick_sec / (cur_nimg - tick.start_nimg) * 1e3, '<7.2f'),
        ('maintenance', 'Timing/maintenance_sec', tick.maintenance_sec, '<6.1f'),
        ('cpumem', 'Resources/cpu_mem_gb', psutil.Process().memory_info().rss / 2**30, '<6.2f'),
        ('gpumem', 'Resources/peak_gpu_mem_gb', torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else 0.0, '<6.2f'),
        ('reserved', 'Resources/peak_gpu_mem_reserved_gb', torch.cuda.max_memory_reserved(device) / 2**30 if on_cuda else 0.0, '<6.2f'),
        ('nonfinite', 'Loss/nonfinite', nonfinite, '<5d'),
    ]
    parts = []
    for label, name, value, fmt in fields:
        training_stats.report0(name, value)
        shown = dnnlib.util.format_time(value) if name == 'Timing/total_sec' else value
        parts.append(f'{label} {shown:{fmt}}')
    parts.append(f'eta {dnnlib.util.format_time(eta_sec)}')
    return ' '.join(parts)

def snapshot_contents(ema, loss_fn, augment_pipe, dataset_kwargs):
    """What a network snapshot holds. Networks are copied in eval mode without gradients, checked
    to be identical on all ranks (a collective) and moved to the CPU, with their weights in the
    standard memory layout (the fast path may have changed it)."""
    def frozen_cpu_copy(module):
        module = copy.deepcopy(module).eval().requires_grad_(False)
        misc.check_ddp_consistency(module)
        return module.cpu().to(memory_format=torch.contiguous_format)
    contents = dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs))
    return {key: frozen_cpu_copy(value) if isinstance(value, torch.nn.Module) else value for key, value in contents.items()}

def falls_due(every_ticks, tick_index, last_tick):
    """Whether a periodic save (every `every_ticks` ticks, None = never) happens at this tick;
    the last tick always saves."""
    return every_ticks is not None and (last_tick or tick_index % every_ticks == 0)

def save_checkpoints(run_dir, tick, cur_nimg, last_tick, stopping, snapshot_ticks, state_dump_ticks,
        net, ema, optimizer, loss_fn, augment_pipe, dataset_kwargs):
    """Network snapshot (tick 0, every `snapshot_ticks` ticks and at the end) and training state
    (every `state_dump_ticks` ticks and at the end; at tick 0 only when stopping on a signal).
    Snapshots are built on all ranks; rank 0 writes the files. Returns the file name of the
    snapshot, on every rank, or None when none was due."""
    writer = dist.get_rank() == 0
    kimg_tag = f'{cur_nimg // 1000:06d}'
    snapshot_name = None
    if falls_due(snapshot_ticks, tick.index, last_tick):
        snapshot_name = f'network-snapshot-{kimg_tag}.pkl'
        contents = snapshot_contents(ema, loss_fn, augment_pipe, dataset_kwargs)
        if writer:
            snapshot.save_snapshot(os.path.join(run_dir, snapshot_name), contents)
    if writer and falls_due(state_dump_ticks, tick.index, last_tick) and (tick.index > 0 or stopping):
        snapshot.save_training_state(os.path.join(run_dir, f'training-state-{kimg_tag}.pt'), net, optimizer)
    return snapshot_name

def append_tick_stats(run_dir, stats_fd):
    """Gather the tick's statistics from all ranks (a collective); rank 0 appends them with a
    timestamp to stats.jsonl, which it opens at the first call. Returns the file descriptor."""
    collector = training_stats.default_collector
    collector.update()
    if dist.get_rank() != 0:
        return stats_fd
    if stats_fd is None:
        stats_fd = snapshot.open_stats_jsonl(os.path.join(run_dir, 'stats.jsonl'))
    snapshot.append_stats_line(stats_fd, dict(collector.as_dict(), timestamp=time.time()))
    return stats_fd

def tick_scalars(cur_nimg, lr, halflife, beta):
    """What TensorBoard plots per tick: the tick's statistics (gathered by append_tick_stats) and
    the schedules of its last step."""
    collector = training_stats.default_collector
    return {'Loss/loss': collector.mean('Loss/loss'), 'Progress/kimg': cur_nimg / 1e3,
            'Timing/sec_per_kimg': collector.mean('Timing/sec_per_kimg'), 'Schedule/learning_rate': lr,
            'Schedule/ema_halflife_kimg': halflife / 1e3, 'Schedule/ema_beta': beta}

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
    fast_kwargs         = None,     # Knobs of training.fast_path.FastPath; None = the faithful path.
    label_dropout       = 0,        # Probability that a training image's label is replaced by zeros.
    monitor_kwargs      = None,     # Options of training.monitor.RunMonitor; None = no monitoring.
):
    """Train until `total_kimg`, then return None; or, stopped earlier by a signal on any rank,
    return that signal (a `signal.Signals`, the same on every rank)."""
    run_start_time = time.time()
    device = dist.get_device() if device is None else torch.device(device)
    seed_this_rank(seed)
    configure_cuda(device, cudnn_benchmark)
    fp = fast_path.FastPath(**(fast_kwargs or {}))
    fast_path.configure_backends(fp)
    batch_per_rank, batch_gpu, num_rounds = split_global_batch(batch_size, batch_gpu)

    # The order of construction fixes the random streams: keep it.
    dist.print0('Loading dataset...')
    dataset = dnnlib.util.construct_class_by_name(**dataset_kwargs)
    batches = endless_batches(dataset, batch_gpu, seed, device, data_loader_kwargs)
    dist.print0('Constructing network...')
    net = fast_path.prepare_network(build_network(network_kwargs, dataset, batch_gpu, device), fp)
    dist.print0('Setting up optimizer...')
    loss_fn = dnnlib.util.construct_class_by_name(**loss_kwargs)
    optimizer = dnnlib.util.construct_class_by_name(params=net.parameters(), **optimizer_kwargs,
                                                    **fast_path.optimizer_options(fp, device))
    augment_pipe = None if augment_kwargs is None else dnnlib.util.construct_class_by_name(**augment_kwargs)
    ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None)
    ema = copy.deepcopy(net).eval().requires_grad_(False) # after DDP has broadcast rank 0's weights; not compiled
    if resume_pkl is not None:
        load_pickle_weights(resume_pkl, net, ema)
    if resume_state_dump:
        restore_training_state(resume_state_dump, net, optimizer)
    watcher = None if monitor_kwargs is None else monitor.RunMonitor(run_dir, device, fp, **monitor_kwargs)

    cur_nimg = resume_kimg * 1000
    dist.print0(f'Training for {total_kimg} kimg...')
    dist.print0()
    now = time.time()
    tick = Tick(index=0, start_nimg=cur_nimg, start_time=now, maintenance_sec=now - run_start_time)
    dist.update_progress(cur_nimg // 1000, total_kimg)
    nonfinite = torch.zeros([], dtype=torch.int64, device=device) # non-finite loss values this tick
    stats_fd = None
    stopped_by = None
    train_start = dnnlib.EasyDict(time=now, nimg=cur_nimg) # for the estimated time left
    with stop_signal.StopSignal() as stop_request:
        try:
            if watcher is not None:
                watcher.start(dataset)
            while True:
                lr = learning_rate(optimizer_kwargs['lr'], cur_nimg, lr_rampup_kimg)
                train_step(ddp, optimizer, loss_fn, augment_pipe, batches, num_rounds,
                    loss_scaling / batch_per_rank, lr, device, nonfinite, fp, label_dropout)
                beta = ema_beta(cur_nimg, batch_size, ema_halflife_kimg, ema_rampup_ratio)
                update_ema(ema, net, beta, fused=fp.fused)
                cur_nimg += batch_size

                # A tick ends after the first step, then every `kimg_per_tick`, at the end and on a stop request.
                finished = cur_nimg >= total_kimg * 1000
                stopping = stop_request.requested()
                tick_over = tick.index == 0 or cur_nimg >= tick.start_nimg + kimg_per_tick * 1000
                if not (finished or stopping or tick_over):
                    continue

                end_time = time.time()
                if dist.get_world_size() > 1:
                    torch.distributed.all_reduce(nonfinite)
                eta_sec = time_left(end_time - train_start.time, cur_nimg - train_start.nimg, total_kimg * 1000 - cur_nimg)
                dist.print0(tick_report(tick, cur_nimg, end_time, run_start_time, int(nonfinite), device, eta_sec))
                nonfinite.zero_()
                if device.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats(device)
                last_tick = finished or stopping
                if stopping and not finished:
                    stopped_by = stop_request.agreed
                    dist.print0()
                    dist.print0(f'Aborting after {stop_request.reason()}: saving a snapshot and the training state...')

                snapshot_name = save_checkpoints(run_dir, tick, cur_nimg, last_tick, stopping, snapshot_ticks,
                    state_dump_ticks, net, ema, optimizer, loss_fn, augment_pipe, dataset_kwargs)
                if watcher is not None and snapshot_name is not None and stopped_by is None: # A stop leaves at once.
                    watcher.snapshot(ema, snapshot_name, cur_nimg)
                stats_fd = append_tick_stats(run_dir, stats_fd)
                if watcher is not None:
                    halflife = ema_halflife(cur_nimg - batch_size, ema_halflife_kimg, ema_rampup_ratio)
                    watcher.tick(cur_nimg, tick_scalars(cur_nimg, lr, halflife, beta))
                dist.update_progress(cur_nimg // 1000, total_kimg)
                if last_tick:
                    break
                now = time.time()
                tick = Tick(index=tick.index + 1, start_nimg=cur_nimg, start_time=now, maintenance_sec=now - end_time)
        finally:
            if stats_fd is not None:
                os.close(stats_fd)
            if watcher is not None:
                watcher.close()

    dist.print0()
    dist.print0('Exiting...')
    return stopped_by

#----------------------------------------------------------------------------
