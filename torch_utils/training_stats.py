"""Training statistics that any code can report at any time and a Collector reads out later.

Each statistic is kept as its first raw moments [n, sum x, sum x^2]: the elements of every report
are reduced in float32 and accumulated in float64, separately for each device they live on. When a
Collector updates, the pending moments are summed over devices and, in a multi-process run, over all
processes; the Collector then sees count, mean and (population) standard deviation of everything
reported since its previous update.
"""

import math
import re
import types

import torch

from dnnlib import EasyDict

from . import misc

# Per-process state. `pending` maps each registered name (in registration order, which must be the
# same on every process) to {device: moments not yet synced}; `totals` holds the CPU moments summed
# over every sync so far. `sync_device` None means a single process: nothing is all-reduced.
_state = types.SimpleNamespace(rank=0, sync_device=None, synced=False, pending={}, totals={})

#----------------------------------------------------------------------------

def init_multiprocessing(rank, sync_device):
    """Set this process's rank and the device used to all-reduce the moments (None for a single
    process). Must be called before the first sync."""
    if _state.synced:
        assert (rank, sync_device) == (_state.rank, _state.sync_device), 'statistics were already synced'
    _state.rank = rank
    _state.sync_device = sync_device

def _raw_moments(values):
    """[n, sum x, sum x^2] of the elements of a tensor, reduced in float32, returned in float64."""
    x = values.detach().flatten().float()
    return torch.stack([x.pow(order).sum() for order in range(3)]).double()

@misc.profiled_function
def report(name, value):
    """Add the elements of `value` (a number, list, array or tensor) to statistic `name` and return
    `value` unchanged. An empty value only registers the name; every process must register the same
    names in the same order."""
    per_device = _state.pending.setdefault(name, {})
    values = torch.as_tensor(value)
    if values.numel() > 0:
        moments = _raw_moments(values)
        earlier = per_device.get(moments.device)
        per_device[moments.device] = moments if earlier is None else earlier + moments
    return value

def report0(name, value):
    """report() where only rank 0's value counts; the other ranks just register the name."""
    report(name, [] if _state.rank != 0 else value)
    return value

#----------------------------------------------------------------------------

def _sync(names):
    """Fold the pending moments of `names` into the running totals, summed over this process's devices
    and, when there is a sync device, over all processes (then every process must call this at the
    same point, with the same names)."""
    if not names:
        return
    _state.synced = True
    device = torch.device('cpu') if _state.sync_device is None else _state.sync_device
    fresh = torch.zeros([len(names), 3], dtype=torch.float64, device=device)
    for row, name in zip(fresh, names):
        for moments in _state.pending[name].values():
            row += moments.to(device)
        _state.pending[name].clear()
    if _state.sync_device is not None:
        torch.distributed.all_reduce(fresh)
    for name, moments in zip(names, fresh.cpu()):
        _state.totals[name] = _state.totals.get(name, 0) + moments

def _summarize(moments):
    """(count, mean, population standard deviation) from [n, sum x, sum x^2]; NaN where undefined."""
    n, total, total_sq = moments.tolist()
    if n == 0:
        return 0, math.nan, math.nan
    mean = total / n
    if not math.isfinite(total):
        std = math.nan
    elif n == 1:
        std = 0.0
    else:
        std = math.sqrt(max(total_sq / n - mean * mean, 0))
    return int(n), mean, std

#----------------------------------------------------------------------------

class Collector:
    """Reads the statistics whose names fully match `regex`, as reported between its two latest
    update() calls. With `keep_previous`, a statistic that received nothing new keeps the values of
    an earlier update; otherwise it reads as empty (count 0, mean and std NaN)."""

    def __init__(self, regex='.*', keep_previous=True):
        self._pattern = re.compile(regex)
        self._keep_previous = keep_previous
        self._seen = {}     # name -> totals at the previous update
        self._latest = {}   # name -> moments between the two latest updates that had data
        self.update()       # Whatever was reported before the collector existed is not its business.
        self._latest = {}

    def names(self):
        """The registered names this collector reads, in registration order."""
        return [name for name in _state.pending if self._pattern.fullmatch(name)]

    def update(self):
        """Take what was reported since the previous update. Collective in a multi-process run."""
        if not self._keep_previous:
            self._latest = {}
        names = self.names()
        _sync(names)
        for name in names:
            total = _state.totals[name]
            delta = total - self._seen.get(name, 0)
            self._seen[name] = total
            if delta[0] != 0:
                self._latest[name] = delta

    def _stats(self, name):
        assert self._pattern.fullmatch(name), f'{name} is not read by this collector'
        return _summarize(self._latest.get(name, torch.zeros(3, dtype=torch.float64)))

    def num(self, name):
        return self._stats(name)[0]

    def mean(self, name):
        return self._stats(name)[1]

    def std(self, name):
        return self._stats(name)[2]

    def __getitem__(self, name):
        return self.mean(name)

    def as_dict(self):
        """{name: EasyDict(num, mean, std)} for every name this collector reads."""
        result = EasyDict()
        for name in self.names():
            num, mean, std = self._stats(name)
            result[name] = EasyDict(num=num, mean=mean, std=std)
        return result

#----------------------------------------------------------------------------

default_collector = Collector()
