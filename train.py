"""Train diffusion-based generative models with the EDM recipes (spec cli.md section 1).

Faithful to the original's options, configuration mapping, `training_options.json` and run-directory
naming. Beyond the original: every bad input is refused with one line before anything is created,
`--resume` also accepts a run directory, `--lr-rampup` sets the learning-rate ramp-up, and the
training loop runs on CPU as well (see training/training_loop.py).
"""

import json
import os
import re
import warnings

import click
import torch

import dnnlib
from torch_utils import distributed as dist
from training import snapshot, training_loop

warnings.filterwarnings('ignore', 'Grad strides do not match bucket view strides') # Harmless DDP warning of PyTorch 1.12.

#----------------------------------------------------------------------------
# Option parsing helpers.

def parse_int_list(s):
    """click type for `--cres`: "1,2,2" -> [1, 2, 2]; every entry must be a positive integer."""
    values = dnnlib.util.parse_int_list(s)
    if len(values) == 0 or min(values) < 1:
        raise ValueError(f'"{s}" must be a comma-separated list of positive integers')
    return values

# The original's pattern, including its unescaped '.' (cli.md 1.2 step 11).
_STATE_REGEX = r'training-state-(\d+).pt'

def find_latest_state(run_dir):
    """The training-state-*.pt with the highest kimg in `run_dir` that has its matching snapshot
    (a state without one, possible when --dump is not a multiple of --snap, cannot be resumed), or None."""
    states = {}
    for name in os.listdir(run_dir):
        match = re.fullmatch(_STATE_REGEX, name)
        if match and os.path.isfile(os.path.join(run_dir, f'network-snapshot-{match.group(1)}.pkl')):
            states[int(match.group(1))] = os.path.join(run_dir, name)
    return states[max(states)] if states else None

#----------------------------------------------------------------------------
# Configuration (cli.md 1.2 steps 3-13).

def check_dataset(c, opts):
    """Step 3: open the dataset once; record its resolution and length. Returns the dataset name."""
    try:
        dataset_obj = dnnlib.util.construct_class_by_name(**c.dataset_kwargs)
        dataset_name = dataset_obj.name
        c.dataset_kwargs.resolution = dataset_obj.resolution
        c.dataset_kwargs.max_size = len(dataset_obj) # counts x-flip copies, so no subset is taken
        if opts.cond and not dataset_obj.has_labels:
            raise click.ClickException('--cond=True requires labels specified in dataset.json')
        del dataset_obj
    except IOError as err:
        raise click.ClickException(f'--data: {err}')
    return dataset_name

def network_preset(arch):
    """Step 4: the architecture's network kwargs, in the original's key order."""
    if arch == 'ddpmpp':
        return dnnlib.EasyDict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
            channel_mult_noise=1, resample_filter=[1,1], model_channels=128, channel_mult=[2,2,2])
    if arch == 'ncsnpp':
        return dnnlib.EasyDict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
            channel_mult_noise=2, resample_filter=[1,3,3,1], model_channels=128, channel_mult=[2,2,2])
    assert arch == 'adm'
    return dnnlib.EasyDict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1,2,3,4])

PRECOND_CLASSES = { # Step 5: preconditioner and its matching loss.
    'vp':  ('training.networks.VPPrecond',  'training.loss.VPLoss'),
    've':  ('training.networks.VEPrecond',  'training.loss.VELoss'),
    'edm': ('training.networks.EDMPrecond', 'training.loss.EDMLoss'),
}

def check_cres(channel_mult, resolution):
    """Beyond the original: each extra `--cres` entry halves the resolution, which must stay whole."""
    levels = len(channel_mult)
    if resolution % (2 ** (levels - 1)) != 0:
        raise click.ClickException(f'--cres: {levels} levels need a resolution divisible by {2 ** (levels - 1)}, '
            f'but the dataset is {resolution}x{resolution}')

def check_transfer(path):
    """Beyond the original: --transfer must name a network pickle that the safe loader reads."""
    try:
        data = snapshot.load_snapshot(path, verbose=False)
    except (IOError, ValueError) as err:
        raise click.ClickException(f'--transfer: {err}')
    del data

def resolve_resume(path):
    """Step 11: the training-state file to resume from; a run directory stands for its latest state."""
    if os.path.isdir(path):
        state = find_latest_state(path)
        if state is None:
            raise click.ClickException(f'--resume: run directory "{path}" contains no training-state-*.pt with its network-snapshot-*.pkl')
        path = state
    match = re.fullmatch(_STATE_REGEX, os.path.basename(path))
    if not match or not os.path.isfile(path):
        raise click.ClickException('--resume must point to training-state-*.pt from a previous training run')
    snapshot_pkl = os.path.join(os.path.dirname(path), f'network-snapshot-{match.group(1)}.pkl')
    if not os.path.isfile(snapshot_pkl):
        raise click.ClickException(f'--resume: the matching network snapshot "{snapshot_pkl}" does not exist')
    return path, snapshot_pkl, int(match.group(1))

def next_run_dir(outdir, desc):
    """Step 13: <outdir>/<next free 5-digit id>-<desc>."""
    prev_run_dirs = []
    if os.path.isdir(outdir):
        prev_run_dirs = [x for x in os.listdir(outdir) if os.path.isdir(os.path.join(outdir, x))]
    prev_run_ids = [re.match(r'^\d+', x) for x in prev_run_dirs]
    prev_run_ids = [int(x.group()) for x in prev_run_ids if x is not None]
    cur_run_id = max(prev_run_ids, default=-1) + 1
    run_dir = os.path.join(outdir, f'{cur_run_id:05d}-{desc}')
    assert not os.path.exists(run_dir)
    return run_dir

def random_seed(device):
    """Step 10: rank 0's random draw, broadcast so that every rank uses the same seed."""
    seed = torch.randint(1 << 31, size=[], device=device)
    if dist.get_world_size() > 1:
        torch.distributed.broadcast(seed, src=0)
    return int(seed)

def build_config(opts):
    """Steps 2-13: the training options, in the key order of training_options.json."""
    c = dnnlib.EasyDict()
    c.dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=opts.data, use_labels=opts.cond, xflip=opts.xflip, cache=opts.cache)
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=opts.workers, prefetch_factor=2)
    c.network_kwargs = dnnlib.EasyDict()
    c.loss_kwargs = dnnlib.EasyDict()
    c.optimizer_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=opts.lr, betas=[0.9,0.999], eps=1e-8)

    dataset_name = check_dataset(c, opts)

    c.network_kwargs.update(network_preset(opts.arch))
    c.network_kwargs.class_name, c.loss_kwargs.class_name = PRECOND_CLASSES[opts.precond]
    if opts.cbase is not None:
        c.network_kwargs.model_channels = opts.cbase
    if opts.cres is not None:
        c.network_kwargs.channel_mult = opts.cres
    check_cres(c.network_kwargs.channel_mult, c.dataset_kwargs.resolution)
    if opts.augment:
        c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', p=opts.augment)
        c.augment_kwargs.update(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
        c.network_kwargs.augment_dim = 9
    c.network_kwargs.update(dropout=opts.dropout, use_fp16=opts.fp16)

    c.total_kimg = max(int(opts.duration * 1000), 1)
    c.ema_halflife_kimg = int(opts.ema * 1000)
    if opts.lr_rampup is not None: # New option; absent from the JSON unless given.
        c.lr_rampup_kimg = round(opts.lr_rampup * 1000, 6)
    c.update(batch_size=opts.batch, batch_gpu=opts.batch_gpu)
    c.update(loss_scaling=opts.ls, cudnn_benchmark=opts.bench)
    c.update(kimg_per_tick=opts.tick, snapshot_ticks=opts.snap, state_dump_ticks=opts.dump)

    c.seed = opts.seed if opts.seed is not None else random_seed(dist.get_device())

    if opts.transfer is not None and opts.resume is not None:
        raise click.ClickException('--transfer and --resume cannot be specified at the same time')
    if opts.transfer is not None:
        if dist.get_rank() == 0: # Once (it may download); torchrun ends the other ranks if it fails.
            check_transfer(opts.transfer)
        c.resume_pkl = opts.transfer
        c.ema_rampup_ratio = None
    elif opts.resume is not None:
        state_path, c.resume_pkl, c.resume_kimg = resolve_resume(opts.resume)
        c.resume_state_dump = state_path

    cond_str = 'cond' if c.dataset_kwargs.use_labels else 'uncond'
    dtype_str = 'fp16' if c.network_kwargs.use_fp16 else 'fp32'
    desc = f'{dataset_name:s}-{cond_str:s}-{opts.arch:s}-{opts.precond:s}-gpus{dist.get_world_size():d}-batch{c.batch_size:d}-{dtype_str:s}'
    if opts.desc is not None:
        desc += f'-{opts.desc}'

    if dist.get_rank() != 0:
        c.run_dir = None
    elif opts.nosubdir:
        c.run_dir = opts.outdir
    else:
        if os.path.exists(opts.outdir) and not os.path.isdir(opts.outdir):
            raise click.ClickException(f'--outdir: "{opts.outdir}" exists and is not a directory')
        c.run_dir = next_run_dir(opts.outdir, desc)
    return c

def print_options(c, opts):
    """Step 14: the options JSON and a summary, rank 0 only."""
    dist.print0()
    dist.print0('Training options:')
    dist.print0(json.dumps(c, indent=2))
    dist.print0()
    dist.print0(f'Output directory:        {c.run_dir}')
    dist.print0(f'Dataset path:            {c.dataset_kwargs.path}')
    dist.print0(f'Class-conditional:       {c.dataset_kwargs.use_labels}')
    dist.print0(f'Network architecture:    {opts.arch}')
    dist.print0(f'Preconditioning & loss:  {opts.precond}')
    dist.print0(f'Number of GPUs:          {dist.get_world_size()}')
    dist.print0(f'Batch size:              {c.batch_size}')
    dist.print0(f'Mixed-precision:         {c.network_kwargs.use_fp16}')
    dist.print0()

#----------------------------------------------------------------------------

@click.command()

# What to train.
@click.option('--outdir',        help='Parent folder of the run directories', metavar='DIR',            type=str, required=True)
@click.option('--data',          help='Training images (zip or folder)', metavar='ZIP|DIR',              type=str, required=True)
@click.option('--cond',          help='Condition the network on class labels', metavar='BOOL',          type=bool, default=False, show_default=True)
@click.option('--arch',          help='Network architecture preset', metavar='ddpmpp|ncsnpp|adm',       type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp', show_default=True)
@click.option('--precond',       help='Preconditioning and matching loss', metavar='vp|ve|edm',         type=click.Choice(['vp', 've', 'edm']), default='edm', show_default=True)

# Hyperparameters.
@click.option('--duration',      help='Length of training in million images', metavar='MIMG',           type=click.FloatRange(min=0, min_open=True), default=200, show_default=True)
@click.option('--batch',         help='Batch size over all GPUs', metavar='INT',                        type=click.IntRange(min=1), default=512, show_default=True)
@click.option('--batch-gpu',     help='Largest batch per GPU (accumulate beyond)', metavar='INT',       type=click.IntRange(min=1))
@click.option('--cbase',         help='Base channel count  [default: varies]', metavar='INT',           type=int)
@click.option('--cres',          help='Channel multiplier per resolution  [default: varies]', metavar='LIST', type=parse_int_list)
@click.option('--lr',            help='Base learning rate', metavar='FLOAT',                            type=click.FloatRange(min=0, min_open=True), default=10e-4, show_default=True)
@click.option('--lr-rampup',     help='Learning-rate warm-up length in million images  [default: 10]', metavar='MIMG', type=click.FloatRange(min=0))
@click.option('--ema',           help='Half-life of the weight average in million images', metavar='MIMG', type=click.FloatRange(min=0), default=0.5, show_default=True)
@click.option('--dropout',       help='Dropout rate of the U-Net blocks', metavar='FLOAT',              type=click.FloatRange(min=0, max=1), default=0.13, show_default=True)
@click.option('--augment',       help='Augmentation probability (0 = off)', metavar='FLOAT',            type=click.FloatRange(min=0, max=1), default=0.12, show_default=True)
@click.option('--xflip',         help='Add mirrored copies of the dataset', metavar='BOOL',             type=bool, default=False, show_default=True)

# Speed.
@click.option('--fp16',          help='Run the U-Net in float16', metavar='BOOL',                       type=bool, default=False, show_default=True)
@click.option('--ls',            help='Loss scale factor', metavar='FLOAT',                             type=click.FloatRange(min=0, min_open=True), default=1, show_default=True)
@click.option('--bench',         help='Let cuDNN pick its fastest kernels', metavar='BOOL',             type=bool, default=True, show_default=True)
@click.option('--cache',         help='Keep decoded images in RAM', metavar='BOOL',                     type=bool, default=True, show_default=True)
@click.option('--workers',       help='Data-loading processes per GPU', metavar='INT',                  type=click.IntRange(min=1), default=1, show_default=True)

# Output and bookkeeping.
@click.option('--desc',          help='Suffix of the run directory name', metavar='STR',                type=str)
@click.option('--nosubdir',      help='Write into --outdir itself, without a numbered run directory',  is_flag=True)
@click.option('--tick',          help='Progress line every this many thousand images', metavar='KIMG',  type=click.IntRange(min=1), default=50, show_default=True)
@click.option('--snap',          help='Network snapshot every this many ticks', metavar='TICKS',       type=click.IntRange(min=1), default=50, show_default=True)
@click.option('--dump',          help='Training state every this many ticks', metavar='TICKS',         type=click.IntRange(min=1), default=500, show_default=True)
@click.option('--seed',          help='Random seed  [default: random]', metavar='INT',                  type=int)
@click.option('--transfer',      help='Start from the weights of this network pickle', metavar='PKL|URL', type=str)
@click.option('--resume',        help='Continue from a training state, or the latest one in a run directory', metavar='PT', type=str)
@click.option('-n', '--dry-run', help='Only print the training options',                               is_flag=True)

def main(**kwargs):
    """Train a diffusion model with the recipes of "Elucidating the Design Space of
    Diffusion-Based Generative Models" (Karras et al., 2022).

    Examples:

    \b
    # Class-conditional DDPM++ on CIFAR-10, eight GPUs
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs \\
        --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp

    \b
    # Tiny run on the CPU
    python train.py --outdir=training-runs --data=datasets/fmnist-32x32.zip \\
        --cbase=16 --cres=1,2 --batch=8 --duration=0.002 --tick=1
    """
    opts = dnnlib.EasyDict(kwargs)
    dist.init()

    c = build_config(opts)
    print_options(c, opts)
    if opts.dry_run:
        dist.print0('Dry run; exiting.')
        return

    # DataLoader workers start with 'spawn' (safe with CUDA); set after the dry run, which starts none.
    if torch.multiprocessing.get_start_method(allow_none=True) != 'spawn':
        torch.multiprocessing.set_start_method('spawn', force=True)

    # Create the output directory; from here on rank 0 tees its output into log.txt.
    dist.print0('Creating output directory...')
    logger = None
    if dist.get_rank() == 0:
        os.makedirs(c.run_dir, exist_ok=True)
        with dnnlib.util.atomic_write(os.path.join(c.run_dir, 'training_options.json')) as tmp_path:
            with open(tmp_path, 'wt') as f:
                json.dump(c, f, indent=2)
        logger = dnnlib.util.Logger(file_name=os.path.join(c.run_dir, 'log.txt'), file_mode='a', should_flush=True)

    training_loop.training_loop(**c)
    if logger is not None:
        logger.close() # On an exception the logger stays, so that the traceback reaches log.txt too.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
