"""Process-group set-up for single-process and `torchrun` runs (training.md section 7).

Unlike the original, nothing here assumes CUDA: each process uses GPU `LOCAL_RANK` with NCCL
when CUDA is available, and the CPU with gloo otherwise. A plain `python script.py` run gets
a one-process group backed by an in-memory store, so it needs no free network port.
"""

import os

import torch

from . import training_stats

_device = torch.device('cpu')
_stop_requested = False

#----------------------------------------------------------------------------

def init():
    """Create the process group (env:// under torchrun) and pick this process's device."""
    global _device
    if torch.distributed.is_initialized():
        return
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = torch.cuda.is_available()
    backend = 'nccl' if use_cuda else 'gloo'
    if use_cuda:
        _device = torch.device('cuda', local_rank)
        torch.cuda.set_device(_device)
    if world_size > 1 or 'MASTER_ADDR' in os.environ:
        os.environ.setdefault('MASTER_ADDR', 'localhost')
        os.environ.setdefault('MASTER_PORT', '29500')
        torch.distributed.init_process_group(backend=backend, init_method='env://', rank=rank, world_size=world_size)
    else:
        torch.distributed.init_process_group(backend=backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
    training_stats.init_multiprocessing(rank=get_rank(), sync_device=_device if get_world_size() > 1 else None)

def get_rank():
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

def get_world_size():
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1

def get_device():
    """The device of this process: cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    return _device

def barrier():
    if torch.distributed.is_initialized() and get_world_size() > 1:
        torch.distributed.barrier()

#----------------------------------------------------------------------------
# Hooks for cluster integration.

def request_stop():
    """Ask long-running loops to stop at their next check (e.g. from a SIGTERM handler)."""
    global _stop_requested
    _stop_requested = True

def should_stop():
    return _stop_requested

def update_progress(cur, total):
    _ = cur, total

#----------------------------------------------------------------------------

def print0(*args, **kwargs):
    if get_rank() == 0:
        print(*args, **kwargs)
