"""Train diffusion-based generative models with the recipes of "Elucidating the Design Space of
Diffusion-Based Generative Models" (Karras et al., 2022).

Start-up has three stages. First the facts that the configuration depends on are gathered: what the
dataset looks like, the seed, the network or training state to start from, and the run directory.
Then `build_config` turns options and facts into the keyword arguments of the training loop; it does
no I/O, so it can be tested on its own. Finally rank 0 creates the run directory, saves the
configuration as training_options.json, and every rank enters the training loop.

Bad input is refused with a one-line error before anything is written to disk. `--resume` also
accepts a run directory (its latest resumable state), `--lr-rampup` sets the learning-rate warm-up,
and training runs on the CPU when there is no GPU (the run is then named `cpuN`, not `gpusN`).

`--fast` and the knobs behind it (`--bf16`, `--channels-last`, `--tf32`, `--compile`, `--fused`) trade
bit-exactness with the original for speed (see training/fast_path.py). They are recorded in
training_options.json as `fast_kwargs`, last, and only when at least one knob is on, so that a faithful
run's options read exactly as the original's.

Beyond the original, a run can be watched while it trains (training/monitor.py): `--grid=N` saves
N x N sample grids of every snapshot, `--metrics=fid` appends the FID of every snapshot to
metric-fid.jsonl, and `--tensorboard` writes TensorBoard curves and images. `--label-dropout` trains
the unconditional branch that classifier-free guidance needs. Like the fast path, each of these is
recorded in training_options.json only when given, and the run directory holds nothing more without them.

Exit status: 0 when training has reached --duration; 143 (SIGTERM) or 130 (SIGINT) when a signal
stopped it early with its state saved, so that a scheduler can requeue the job; 1 after an error,
which ends the data-loading workers too, so the process never lingers.
"""

import copy
import importlib
import json
import os
import re
import sys
import warnings

import click
import torch

import dnnlib
from torch_utils import distributed as dist
from training import fast_path, fid_stats, inception, snapshot, stop_signal, training_loop

warnings.filterwarnings('ignore', 'Grad strides do not match bucket view strides') # Harmless DDP warning of PyTorch 1.12.

#----------------------------------------------------------------------------
# The recipes.

# --arch: network family and its size. Keys not listed keep the class defaults.
ARCHITECTURES = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'adm':    dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4]),
}

# --precond: the preconditioning of Table 1 and the loss that belongs to it.
PRECONDITIONING = {
    'vp':  dict(network='training.networks.VPPrecond',  loss='training.loss.VPLoss'),
    've':  dict(network='training.networks.VEPrecond',  loss='training.loss.VELoss'),
    'edm': dict(network='training.networks.EDMPrecond', loss='training.loss.EDMLoss'),
}

# Non-leaking augmentation: every transform is on with probability --augment, and the x-flip gate
# is always open, so half of the images are mirrored. The network sees the 9 augmentation labels.
AUGMENTATIONS = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
AUGMENT_LABELS = 9

DATASET_CLASS = 'training.dataset.ImageFolderDataset'

# Name of a training-state file; the number is its kimg. The '.' is a regex wildcard, which also
# lets through the names that earlier versions of this script accepted.
STATE_NAME = re.compile(r'training-state-(\d+).pt')

#----------------------------------------------------------------------------
# Facts gathered before the configuration is built.

def dataset_source(opts):
    """How the training loop opens the dataset, before its size is known."""
    return dnnlib.EasyDict(class_name=DATASET_CLASS, path=opts.data, use_labels=opts.cond, xflip=opts.xflip, cache=opts.cache)

def probe_dataset(opts):
    """Open the dataset once: its name, image resolution and length (mirrored copies included)."""
    try:
        images = dnnlib.util.construct_class_by_name(**dataset_source(opts))
        if opts.cond and not images.has_labels:
            raise click.ClickException('--cond=True requires labels specified in dataset.json')
        return dnnlib.EasyDict(name=images.name, resolution=images.resolution, size=len(images))
    except IOError as err:
        raise click.ClickException(f'--data: {err}')

def check_batch(opts):
    """Each step's --batch images are split evenly over the processes, and each process's share
    into rounds of --batch-gpu images (gradient accumulation)."""
    world_size = dist.get_world_size()
    if opts.batch % world_size != 0:
        raise click.ClickException(f'--batch={opts.batch} cannot be split evenly over {world_size} processes')
    per_process = opts.batch // world_size
    if opts.batch_gpu is not None and per_process % min(opts.batch_gpu, per_process) != 0:
        raise click.ClickException(f'--batch={opts.batch} gives {per_process} images per process and step, '
            f'which is not a multiple of --batch-gpu={opts.batch_gpu}')

def shared_random_seed():
    """A seed in [0, 2^31) drawn on rank 0 and broadcast, so that every rank trains with the same one."""
    seed = torch.randint(2 ** 31, size=(), device=dist.get_device())
    if dist.get_world_size() > 1:
        torch.distributed.broadcast(seed, src=0)
    return seed.item()

def check_transfer(path):
    """Refuse a --transfer pickle that the safe loader cannot read. Rank 0 only: it may download."""
    try:
        snapshot.load_snapshot(path, verbose=False)
    except (IOError, ValueError) as err:
        raise click.ClickException(f'--transfer: {err}')

def paired_snapshot(state_path):
    """(network snapshot path, kimg) written together with a training state, or None if
    `state_path` is not named like a training state."""
    match = STATE_NAME.fullmatch(os.path.basename(state_path))
    if match is None:
        return None
    number = match.group(1)
    return os.path.join(os.path.dirname(state_path), f'network-snapshot-{number}.pkl'), int(number)

def latest_resumable_state(run_dir):
    """The training state of `run_dir` with the most kimg whose network snapshot exists too (with a
    --dump that is not a multiple of --snap, some states have none), or None."""
    by_kimg = {}
    for entry in os.scandir(run_dir):
        pair = paired_snapshot(entry.path)
        if pair is not None and os.path.isfile(pair[0]):
            by_kimg[pair[1]] = entry.path
    return by_kimg[max(by_kimg)] if by_kimg else None

def resolve_resume(path, load):
    """The training state named by --resume, its network snapshot and its kimg. With `load`, both
    files are read once (safely) to prove that training can start from them."""
    if os.path.isdir(path):
        latest = latest_resumable_state(path)
        if latest is None:
            raise click.ClickException(f'--resume: run directory "{path}" contains no training-state-*.pt with its network-snapshot-*.pkl')
        path = latest
    expected = '--resume must point to training-state-*.pt from a previous training run'
    pair = paired_snapshot(path)
    if pair is None:
        raise click.ClickException(f'{expected}; "{path}" is not named like one')
    if not os.path.isfile(path):
        raise click.ClickException(f'{expected}; "{path}" does not exist')
    snapshot_pkl, kimg = pair
    try:
        if load:
            snapshot.load_training_state(path)
        if not os.path.isfile(snapshot_pkl):
            raise IOError(f'the network snapshot "{snapshot_pkl}" that belongs to "{path}" does not exist')
        if load:
            snapshot.load_snapshot(snapshot_pkl, verbose=False)
    except (IOError, ValueError) as err:
        raise click.ClickException(f'--resume: {err}')
    return dnnlib.EasyDict(state=path, snapshot=snapshot_pkl, kimg=kimg)

def check_label_dropout(opts):
    """Dropping labels is only meaningful when there are labels."""
    if opts.label_dropout > 0 and not opts.cond:
        raise click.ClickException('--label-dropout needs a class-conditional run (--cond=1)')

def tensorboard_available():
    """Whether torch.utils.tensorboard can be imported: it needs the tensorboard package."""
    try:
        importlib.import_module('torch.utils.tensorboard')
    except ImportError:
        return False
    return True

def monitor_options(opts, load):
    """The options of training.monitor.RunMonitor, only those given (None if none is). With `load`,
    the FID's reference statistics and detector are read once to prove that they can be used."""
    monitor = dnnlib.EasyDict()
    if opts.grid is not None:
        monitor.grid = opts.grid
    if opts.metrics == 'fid':
        if opts.fid_ref is None:
            raise click.ClickException('--metrics=fid needs the reference statistics: --fid-ref=NPZ')
        monitor.update(metrics=['fid'], fid_ref=opts.fid_ref, fid_num=opts.fid_num)
        if opts.fid_detector is not None:
            monitor.fid_detector = opts.fid_detector
    elif opts.fid_ref is not None or opts.fid_detector is not None:
        raise click.ClickException('--fid-ref and --fid-detector are used only with --metrics=fid')
    if opts.tensorboard:
        if not tensorboard_available():
            raise click.ClickException('--tensorboard needs the tensorboard package (pip install tensorboard)')
        monitor.tensorboard = True
    if load and 'metrics' in monitor:
        check_fid_inputs(monitor)
    return monitor or None

def check_fid_inputs(monitor):
    """Read the reference statistics and load the detector of --metrics=fid, or refuse them."""
    try:
        fid_stats.load_stats(monitor.fid_ref)
    except (IOError, ValueError) as err:
        raise click.ClickException(f'--fid-ref: {err}')
    try:
        inception.load_detector(monitor.get('fid_detector', inception.DETECTOR_URL))
    except (IOError, ValueError) as err:
        raise click.ClickException(f'--fid-detector: {err}')

def uses_gpus(opts):
    """Whether names and summary speak of GPUs: in a GPU run, and in a dry run, which shows the
    options as a GPU run records them (the original's format) on whatever machine it runs."""
    return opts.dry_run or dist.get_device().type == 'cuda'

def run_description(opts, dataset_name, fp):
    """The run directory name after its number, e.g. cifar10-32x32-cond-ddpmpp-edm-gpus8-batch512-fp32,
    with cpuN in place of gpusN for N processes that train on the CPU, and bf16 for a run under
    bfloat16 autocast."""
    processes = f'{"gpus" if uses_gpus(opts) else "cpu"}{dist.get_world_size()}'
    precision = 'bf16' if fp.bf16 else 'fp16' if opts.fp16 else 'fp32'
    parts = [dataset_name, 'cond' if opts.cond else 'uncond', opts.arch, opts.precond,
             processes, f'batch{opts.batch}', precision]
    if opts.desc is not None:
        parts.append(opts.desc)
    return '-'.join(parts)

def next_run_number(outdir):
    """One more than the largest number that starts the name of a sub-directory of `outdir`."""
    numbers = []
    if os.path.isdir(outdir):
        for entry in os.scandir(outdir):
            leading = re.match(r'\d+', entry.name)
            if leading and entry.is_dir():
                numbers.append(int(leading.group()))
    return max(numbers, default=-1) + 1

def check_outdir(outdir):
    """--outdir must be a folder that can be written, or one that can be created below its nearest
    existing ancestor (checked without leaving anything behind)."""
    try:
        dnnlib.util.check_can_create_folder(outdir)
    except OSError as err:
        raise click.ClickException(f'--outdir: cannot write to "{outdir}" ({err.strerror or err})') from None

def choose_run_dir(opts, dataset_name, fp):
    """--outdir itself with --nosubdir, else a new numbered sub-directory. Only rank 0 writes: None elsewhere."""
    if dist.get_rank() != 0:
        return None
    check_outdir(opts.outdir)
    if opts.nosubdir:
        return opts.outdir
    name = f'{next_run_number(opts.outdir):05d}-{run_description(opts, dataset_name, fp)}'
    run_dir = os.path.join(opts.outdir, name)
    assert not os.path.exists(run_dir)
    return run_dir

def gather_facts(opts):
    """Everything beyond the options that the configuration depends on. Every rank runs this, in the
    same order, since the seed is broadcast."""
    check_batch(opts)
    facts = dnnlib.EasyDict(dataset=probe_dataset(opts))
    facts.seed = shared_random_seed() if opts.seed is None else opts.seed
    if opts.transfer is not None and opts.resume is not None:
        raise click.ClickException('--transfer and --resume cannot be specified at the same time')
    # Pickles are read on rank 0 only: it may download, and if it fails, torchrun ends the other ranks.
    if opts.transfer is not None and dist.get_rank() == 0:
        check_transfer(opts.transfer)
    if opts.resume is not None: # A dry run does not read the state, which can be gigabytes.
        facts.resume = resolve_resume(opts.resume, load=dist.get_rank() == 0 and not opts.dry_run)
    else:
        facts.resume = None
    facts.fast = speed_knobs(opts)
    check_label_dropout(opts)
    # Files are read on rank 0 only, and not in a dry run (the detector may be a download).
    facts.monitor = monitor_options(opts, load=dist.get_rank() == 0 and not opts.dry_run)
    facts.run_dir = choose_run_dir(opts, facts.dataset.name, facts.fast)
    return facts

def speed_knobs(opts):
    """The fast-path knobs in effect on this device: those of --fast, overridden by each knob given."""
    fp = fast_path.resolve(dist.get_device(), fast=opts.fast, bf16=opts.bf16, channels_last=opts.channels_last,
                           tf32=opts.tf32, compile=opts.compile, fused=opts.fused)
    if fp.bf16 and opts.fp16:
        raise click.ClickException('--fp16 and --bf16 exclude each other' + ('; add --bf16=0 to --fast' if opts.bf16 is None else ''))
    return fp

#----------------------------------------------------------------------------
# The configuration: options + facts -> keyword arguments of the training loop.

def check_depth(channel_mult, resolution):
    """Each U-Net level after the first halves the resolution, which must stay a whole number."""
    halvings = len(channel_mult) - 1
    if resolution % (2 ** halvings) != 0:
        raise click.ClickException(f'--cres: {halvings + 1} levels need a resolution divisible by {2 ** halvings}, '
            f'but the dataset is {resolution}x{resolution}')

def network_options(opts, resolution):
    """The architecture preset with the --cbase/--cres overrides in place, then the preconditioner."""
    net = dnnlib.EasyDict(copy.deepcopy(ARCHITECTURES[opts.arch]))
    if opts.cbase is not None:
        net.model_channels = opts.cbase
    if opts.cres is not None:
        net.channel_mult = opts.cres
    check_depth(net.channel_mult, resolution)
    net.class_name = PRECONDITIONING[opts.precond]['network']
    if opts.augment > 0:
        net.augment_dim = AUGMENT_LABELS
    net.dropout = opts.dropout
    net.use_fp16 = opts.fp16
    return net

def build_config(opts, facts):
    """The training loop's keyword arguments, in the order in which training_options.json lists them.
    A pure function of the options and the gathered facts."""
    c = dnnlib.EasyDict()
    c.dataset_kwargs = dnnlib.EasyDict(dataset_source(opts), resolution=facts.dataset.resolution, max_size=facts.dataset.size)
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=opts.workers, prefetch_factor=2)
    c.network_kwargs = network_options(opts, facts.dataset.resolution)
    c.loss_kwargs = dnnlib.EasyDict(class_name=PRECONDITIONING[opts.precond]['loss'])
    if opts.label_dropout > 0:
        c.label_dropout = opts.label_dropout
    c.optimizer_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=opts.lr, betas=[0.9, 0.999], eps=1e-8)
    if opts.augment > 0:
        c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', p=opts.augment, **AUGMENTATIONS)

    # Lengths in thousands of images; the loop's own defaults hold for what is not set here.
    c.total_kimg = max(int(opts.duration * 1000), 1)
    c.ema_halflife_kimg = int(opts.ema * 1000)
    if opts.lr_rampup is not None:
        c.lr_rampup_kimg = round(opts.lr_rampup * 1000, 6)
    c.update(batch_size=opts.batch, batch_gpu=opts.batch_gpu, loss_scaling=opts.ls, cudnn_benchmark=opts.bench,
             kimg_per_tick=opts.tick, snapshot_ticks=opts.snap, state_dump_ticks=opts.dump, seed=facts.seed)

    if opts.transfer is not None: # New weights, fresh schedules, and the full EMA half-life from the first step.
        c.update(resume_pkl=opts.transfer, ema_rampup_ratio=None)
    elif facts.resume is not None:
        c.update(resume_pkl=facts.resume.snapshot, resume_kimg=facts.resume.kimg, resume_state_dump=facts.resume.state)
    c.run_dir = facts.run_dir
    if facts.monitor is not None:
        c.monitor_kwargs = facts.monitor
    if facts.fast.enabled:
        c.fast_kwargs = dnnlib.EasyDict(facts.fast.as_dict())
    return c

#----------------------------------------------------------------------------
# Output.

def print_summary(c, opts):
    """The options as JSON, then the main choices in a table (rank 0 only)."""
    world_size = dist.get_world_size()
    rows = [
        ('Output directory', c.run_dir),
        ('Dataset path', c.dataset_kwargs.path),
        ('Class-conditional', c.dataset_kwargs.use_labels),
        ('Network architecture', opts.arch),
        ('Preconditioning & loss', opts.precond),
        ('Number of GPUs', world_size) if uses_gpus(opts) else ('Device', f'cpu, {world_size} process(es)'),
        ('Batch size', c.batch_size),
        ('Mixed-precision', c.network_kwargs.use_fp16),
    ]
    if 'fast_kwargs' in c:
        rows.append(('Fast path', ', '.join(knob for knob, on in c.fast_kwargs.items() if on)))
    if 'monitor_kwargs' in c:
        rows.append(('Monitoring', monitoring_summary(c.monitor_kwargs)))
    lines = ['', 'Training options:', json.dumps(c, indent=2), '']
    lines += [f'{label + ":":<25}{value}' for label, value in rows]
    dist.print0('\n'.join(lines) + '\n')

def monitoring_summary(monitor):
    """E.g. 'grid 8x8, fid of 10000 images, tensorboard'."""
    parts = []
    if 'grid' in monitor:
        parts.append(f'grid {monitor.grid}x{monitor.grid}')
    if 'metrics' in monitor:
        parts.append(f'fid of {monitor.fid_num} images')
    if 'tensorboard' in monitor:
        parts.append('tensorboard')
    return ', '.join(parts)

def create_run_dir(c):
    """Make the run directory, save the options in it, and from now on copy all output to its log.txt."""
    os.makedirs(c.run_dir, exist_ok=True)
    with dnnlib.util.atomic_write(os.path.join(c.run_dir, 'training_options.json')) as tmp_path:
        with open(tmp_path, 'w') as f:
            f.write(json.dumps(c, indent=2))
    return dnnlib.util.Logger(file_name=os.path.join(c.run_dir, 'log.txt'), file_mode='a', should_flush=True)

def missing_folders(path):
    """`path` and those of its ancestors that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing

def written_at_start(name):
    """Whether a file of the run directory may exist before the first snapshot: the options, the
    logs, the grid of training images, TensorBoard's event file and temporary files."""
    return (name in ('training_options.json', 'log.txt', 'stats.jsonl', 'grid-data.png')
            or name.startswith('events.out.tfevents.') or '.tmp-' in name)

def undo_failed_start(created, logger):
    """A run that failed before it saved a snapshot or a training state leaves nothing behind:
    its options, log and temporary files go, and so do the folders it created (the error is on
    the console). A run directory that holds anything else is kept as it is."""
    run_dir = created[0]
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    if not all(written_at_start(name) for name in names):
        return
    if logger is not None:
        logger.close()
    try:
        for name in names:
            os.remove(os.path.join(run_dir, name))
        for folder in created:
            os.rmdir(folder)
    except OSError:
        pass # Whatever is left, the error that ended training matters more.

def one_line_failure(err):
    """The ClickException that reports an error ending training in one line, for errors that come
    from the data, the disk or the GPU's memory; None for others (bugs), whose traceback matters."""
    text = str(err).strip()
    if text.startswith('Caught ') and 'Original Traceback' in text:
        # Raised again from a DataLoader worker, which only reads the dataset; the original
        # error is the last line of the worker's traceback in the message.
        original = text.splitlines()[-1]
        if isinstance(err, OSError): # The dataset's own errors name the dataset and the image.
            original = original.split(': ', 1)[-1]
        return click.ClickException(f'--data: {original}')
    if isinstance(err, getattr(torch.cuda, 'OutOfMemoryError', ())):
        return click.ClickException(f'out of GPU memory ({text.splitlines()[0]}); a smaller --batch-gpu needs less')
    if isinstance(err, (OSError, snapshot.SnapshotError)):
        return click.ClickException(f'training stopped: {dnnlib.util.error_summary(err)}')
    return None

def start_training(c):
    """Create the run directory on rank 0 and enter the training loop on every rank. Returns the
    signal that stopped training early, or None once training is complete."""
    # DataLoader workers start with 'spawn', which is safe with CUDA. Set only now: a dry run starts none.
    if torch.multiprocessing.get_start_method(allow_none=True) != 'spawn':
        torch.multiprocessing.set_start_method('spawn', force=True)

    # Printed before log.txt starts to copy the output, so the line is not in it.
    dist.print0('Creating output directory...')
    created = missing_folders(c.run_dir) if dist.get_rank() == 0 else []
    logger = None
    try:
        if dist.get_rank() == 0:
            logger = create_run_dir(c)
        stopped_by = training_loop.training_loop(**c)
    except BaseException as err:
        stop_signal.end_worker_processes() # They ignore the SIGTERM that Python sends them at exit.
        if created:
            undo_failed_start(created, logger)
        # A kept logger copies the error to log.txt too.
        failure = one_line_failure(err) if isinstance(err, Exception) else None
        if failure is None:
            raise
        raise failure from None
    if logger is not None:
        logger.close()
    return stopped_by

#----------------------------------------------------------------------------
# Command line.

def positive_ints(_ctx, _param, values):
    """--cres: each channel multiplier is at least 1."""
    if values is not None and min(values, default=0) < 1:
        raise click.BadParameter('every entry must be a positive integer')
    return values

@click.command(context_settings=dict(show_default=True))

# What to train.
@click.option('--outdir',   metavar='DIR',     required=True, type=str,   help='Parent folder of the run directories')
@click.option('--data',     metavar='ZIP|DIR', required=True, type=str,   help='Training images (zip or folder)')
@click.option('--cond',     metavar='BOOL',    default=False, type=bool,  help='Condition the network on class labels')
@click.option('--arch',     metavar='ddpmpp|ncsnpp|adm', default='ddpmpp', type=click.Choice(list(ARCHITECTURES)), help='Network architecture preset')
@click.option('--precond',  metavar='vp|ve|edm', default='edm', type=click.Choice(list(PRECONDITIONING)), help='Preconditioning and matching loss')

# Hyperparameters.
@click.option('--duration', metavar='MIMG',  default=200,   type=click.FloatRange(min=0, min_open=True), help='Length of training in million images')
@click.option('--batch',    metavar='INT',   default=512,   type=click.IntRange(min=1), help='Batch size over all GPUs')
@click.option('--batch-gpu', metavar='INT',                 type=click.IntRange(min=1), help='Largest batch per GPU (accumulate beyond)')
@click.option('--cbase',    metavar='INT',                  type=int, help='Base channel count  [default: varies]')
@click.option('--cres',     metavar='LIST', callback=positive_ints, type=dnnlib.util.parse_int_list, help='Channel multiplier per resolution  [default: varies]')
@click.option('--lr',       metavar='FLOAT', default=10e-4, type=click.FloatRange(min=0, min_open=True), help='Base learning rate')
@click.option('--lr-rampup', metavar='MIMG',                type=click.FloatRange(min=0), help='Learning-rate warm-up length in million images  [default: 10]')
@click.option('--ema',      metavar='MIMG',  default=0.5,   type=click.FloatRange(min=0), help='Half-life of the weight average in million images')
@click.option('--dropout',  metavar='FLOAT', default=0.13,  type=click.FloatRange(min=0, max=1), help='Dropout rate of the U-Net blocks')
@click.option('--augment',  metavar='FLOAT', default=0.12,  type=click.FloatRange(min=0, max=1), help='Augmentation probability (0 = off)')
@click.option('--xflip',    metavar='BOOL',  default=False, type=bool, help='Add mirrored copies of the dataset')
@click.option('--label-dropout', metavar='FLOAT', default=0, type=click.FloatRange(min=0, max=1), help='Probability of training an image without its label (for guidance)')

# Speed.
@click.option('--fp16',     metavar='BOOL',  default=False, type=bool, help='Run the U-Net in float16')
@click.option('--ls',       metavar='FLOAT', default=1,     type=click.FloatRange(min=0, min_open=True), help='Loss scale factor')
@click.option('--bench',    metavar='BOOL',  default=True,  type=bool, help='Let cuDNN pick its fastest kernels')
@click.option('--cache',    metavar='BOOL',  default=True,  type=bool, help='Keep decoded images in RAM')
@click.option('--workers',  metavar='INT',   default=1,     type=click.IntRange(min=1), help='Data-loading processes per GPU')
@click.option('--fast',     is_flag=True,    help='The fastest of the knobs below for this device')
@click.option('--bf16',     metavar='BOOL',  type=bool, help='U-Net under bfloat16 autocast  [default: off]')
@click.option('--channels-last', metavar='BOOL', type=bool, help='Channels-last memory format  [default: off]')
@click.option('--tf32',     metavar='BOOL',  type=bool, help='TF32 matmuls and convolutions  [default: off]')
@click.option('--compile',  metavar='BOOL',  type=bool, help='torch.compile the U-Net  [default: off]')
@click.option('--fused',    metavar='BOOL',  type=bool, help='Fused attention, Adam, EMA  [default: off]')

# Output and bookkeeping.
@click.option('--desc',     metavar='STR',   type=str, help='Suffix of the run directory name')
@click.option('--nosubdir', is_flag=True,    help='Write into --outdir itself, without a numbered run directory')
@click.option('--tick',     metavar='KIMG',  default=50,    type=click.IntRange(min=1), help='Progress line every this many thousand images')
@click.option('--snap',     metavar='TICKS', default=50,    type=click.IntRange(min=1), help='Network snapshot every this many ticks')
@click.option('--dump',     metavar='TICKS', default=500,   type=click.IntRange(min=1), help='Training state every this many ticks')
@click.option('--seed',     metavar='INT',   type=int, help='Random seed  [default: random]')
@click.option('--transfer', metavar='PKL|URL', type=str, help='Start from the weights of this network pickle')
@click.option('--resume',   metavar='PT',    type=str, help='Continue from a training state, or the latest one in a run directory')
@click.option('-n', '--dry-run', is_flag=True, help='Only print the training options')

# Monitoring: at every snapshot, with the EMA network and the 18-step deterministic EDM sampler.
@click.option('--grid',     metavar='N',     type=click.IntRange(min=1), help='NxN PNG of seeds 0..N*N-1 from the EMA network at every snapshot (18-step EDM sampler)  [default: off]')
@click.option('--metrics',  metavar='none|fid', default='none', type=click.Choice(['none', 'fid']), help='Metric of every snapshot, in metric-<name>.jsonl')
@click.option('--fid-ref',  metavar='NPZ|URL', type=str, help='Reference statistics for --metrics=fid')
@click.option('--fid-num',  metavar='INT',   default=10000, type=click.IntRange(min=2), help='Images generated for --metrics=fid (seeds 0..INT-1, same sampler)')
@click.option('--fid-detector', metavar='PKL|PT|URL', type=str, help="Inception detector for --metrics=fid  [default: NVIDIA's]")
@click.option('--tensorboard', is_flag=True, help='TensorBoard curves and grids in the run directory')

def main(**kwargs):
    """Train a diffusion model with the recipes of "Elucidating the Design Space of
    Diffusion-Based Generative Models" (Karras et al., 2022).

    Examples:

    \b
    # CIFAR-10 with class labels, DDPM++ network, 8 GPUs
    torchrun --standalone --nproc_per_node=8 train.py --cond=1 \\
        --data=datasets/cifar10-32x32.zip --outdir=training-runs

    \b
    # Tiny run on the CPU
    python train.py --outdir=training-runs --data=datasets/fmnist-32x32.zip \\
        --cbase=16 --cres=1,2 --batch=8 --duration=0.002 --tick=1
    """
    opts = dnnlib.EasyDict(kwargs)
    dist.init()

    c = build_config(opts, gather_facts(opts))
    print_summary(c, opts)
    if opts.dry_run:
        dist.print0('Dry run; exiting.')
        return
    stopped_by = start_training(c)
    if stopped_by is not None:
        status = stop_signal.exit_status(stopped_by)
        dist.print0(f'Stopped by {stopped_by.name} with the state saved (exit status {status}); '
            f'continue with --resume="{c.run_dir}"')
        sys.exit(status)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
