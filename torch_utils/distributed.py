"""The process group of a run, whether it was started with `python` or with `torchrun`.

Each process drives one device: GPU `LOCAL_RANK` when CUDA is available, otherwise the CPU. The
processes talk through NCCL on GPUs whose PyTorch build has it, through gloo everywhere else
(Windows, CPU-only and macOS builds). A plain `python script.py` run still joins a group, of one member, backed by an in-memory
store: collective calls then work unchanged and no network port is needed.
"""

import contextlib
import os

import torch
import torch.distributed as torch_dist

from . import training_stats

_device = torch.device('cpu')   # This process's device; chosen by init().
_stop_requested = False         # Set by request_stop().

#----------------------------------------------------------------------------
# Set-up and queries.

def _launched_by_torchrun():
    return 'MASTER_ADDR' in os.environ or int(os.environ.get('WORLD_SIZE', '1')) > 1

def backend_for(device):
    """The torch.distributed backend for processes on `device`: NCCL for CUDA devices when this
    PyTorch build includes it, gloo otherwise."""
    if device.type == 'cuda' and torch_dist.is_nccl_available():
        return 'nccl'
    return 'gloo'

def init():
    """Join the process group (env:// rendezvous under torchrun) and choose this process's device.
    Calling it again does nothing."""
    global _device
    if torch_dist.is_initialized():
        return
    if torch.cuda.is_available():
        _device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        torch.cuda.set_device(_device)
    backend = backend_for(_device)
    if _launched_by_torchrun():
        os.environ.setdefault('MASTER_ADDR', 'localhost')
        os.environ.setdefault('MASTER_PORT', '29500')
        torch_dist.init_process_group(backend, init_method='env://',
            rank=int(os.environ.get('RANK', '0')), world_size=int(os.environ.get('WORLD_SIZE', '1')))
    else:
        torch_dist.init_process_group(backend, store=torch_dist.HashStore(), rank=0, world_size=1)
    # Statistics are summed across processes on this device; a lone process needs no all-reduce.
    training_stats.init_multiprocessing(get_rank(), _device if get_world_size() > 1 else None)

def get_rank():
    """Index of this process in the group; 0 before init()."""
    if not torch_dist.is_initialized():
        return 0
    return torch_dist.get_rank()

def get_world_size():
    """Number of processes in the group; 1 before init()."""
    if not torch_dist.is_initialized():
        return 1
    return torch_dist.get_world_size()

def get_device():
    """This process's device: cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    return _device

def barrier():
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if get_world_size() > 1:
        torch_dist.barrier()

def print0(*args, **kwargs):
    """print() on rank 0; the other ranks stay silent."""
    if get_rank() != 0:
        return
    print(*args, **kwargs)

#----------------------------------------------------------------------------
# Sharing work between the processes.

@contextlib.contextmanager
def rank_zero_first():
    """Run the body on rank 0 before every other rank (e.g. a download that fills the cache once).
    The other ranks are released even if rank 0 fails, so that they report the error too."""
    first = get_rank() == 0
    if not first:
        barrier()
    try:
        yield
    finally:
        if first:
            barrier()

def split_batches(items, max_batch_size):
    """This rank's share of `items` as a list of 1-D tensors. The sequence is cut into contiguous
    chunks of at most `max_batch_size`, their number rounded up to a multiple of the world size,
    and rank r takes chunks r, r + world, r + 2 * world, ... (so every rank gets as many chunks)."""
    world = get_world_size()
    items = torch.as_tensor(items)
    rounds = max(1, -(-len(items) // (max_batch_size * world)))
    return list(items.tensor_split(rounds * world)[get_rank()::world])

#----------------------------------------------------------------------------
# Hooks for cluster integration: a scheduler may ask the loops to stop, and hear of their progress.

def request_stop():
    """Ask long-running loops to stop at their next check (e.g. from a SIGTERM handler)."""
    global _stop_requested
    _stop_requested = True

def should_stop():
    """True once request_stop() was called."""
    return _stop_requested

def update_progress(cur, total):
    """Told `cur` of `total` units are done; nothing listens in this code base."""
