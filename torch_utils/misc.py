"""Small utilities for the training loop and the augmentation pipeline.

Source code embedded in EDM pickles (also the pickles of NVIDIA's release) calls some of these
by name, e.g. `misc.constant`, so the public names here must stay as they are.
"""

import contextlib
import functools
import itertools
import re
import warnings

import numpy as np
import torch


#----------------------------------------------------------------------------
# Tensor helpers.

nan_to_num = torch.nan_to_num
symbolic_assert = torch._assert

_constants = {}

def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """Tensor holding `value` (broadcast to `shape` if given), created once per distinct request
    and then served from a cache. The tensor is shared: never modify it in place."""
    array = np.asarray(value)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    device = torch.device('cpu') if device is None else device
    memory_format = torch.contiguous_format if memory_format is None else memory_format
    shape = None if shape is None else tuple(shape)
    key = (array.shape, array.dtype, array.tobytes(), shape, dtype, device, memory_format)
    if key not in _constants:
        tensor = torch.as_tensor(array.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor = tensor.broadcast_to(torch.broadcast_shapes(tensor.shape, shape))
        _constants[key] = tensor.contiguous(memory_format=memory_format)
    return _constants[key]

def assert_shape(tensor, ref_shape):
    """Raise AssertionError unless `tensor` has shape `ref_shape`, where None matches any size."""
    shape = list(tensor.shape)
    same_rank = len(shape) == len(ref_shape)
    if not same_rank or any(want is not None and int(have) != int(want) for have, want in zip(shape, ref_shape)):
        raise AssertionError(f'Tensor of shape {shape} where {list(ref_shape)} was expected')

@contextlib.contextmanager
def suppress_tracer_warnings():
    """Silence torch.jit.TracerWarning inside the `with` body."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        yield

def profiled_function(fn):
    """Decorator: every call of `fn` appears in the PyTorch profiler as a range named after it."""
    @functools.wraps(fn)
    def profiled(*args, **kwargs):
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)
    return profiled

#----------------------------------------------------------------------------
# Data loading.

class InfiniteSampler(torch.utils.data.Sampler):
    """Endless stream of dataset indices for `rank` out of `num_replicas` processes.

    With shuffling, the indices start in a random permutation, and after each index is handed
    out it trades places with a random one among the `window_size` fraction of positions just
    before it, so that every pass over the dataset comes in a slightly different order. All ranks
    draw the same random numbers and thus walk one global sequence; rank r takes its elements
    r, r + num_replicas, r + 2 * num_replicas, ...
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5):
        assert len(dataset) > 0, 'the dataset is empty'
        assert num_replicas > 0 and 0 <= rank < num_replicas, f'invalid rank {rank} of {num_replicas}'
        assert 0 <= window_size <= 1, 'window_size is a fraction of the dataset'
        # No Sampler.__init__ call: it does nothing today and wanted a data_source in PyTorch 2.0.
        self.dataset = dataset
        self.rank, self.num_replicas = rank, num_replicas
        self.shuffle, self.seed, self.window_size = shuffle, seed, window_size

    def __iter__(self):
        return itertools.islice(self._global_sequence(), self.rank, None, self.num_replicas)

    def _global_sequence(self):
        size = len(self.dataset)
        order = np.arange(size)
        window = 0
        if self.shuffle:
            rng = np.random.RandomState(self.seed)
            rng.shuffle(order)
            window = int(np.rint(size * self.window_size))
        for step in itertools.count():
            pos = step % size
            yield order[pos]
            if window >= 2:
                other = (pos - rng.randint(window)) % size
                order[[pos, other]] = order[[other, pos]]

#----------------------------------------------------------------------------
# Parameters, buffers and DistributedDataParallel.

def params_and_buffers(module):
    assert isinstance(module, torch.nn.Module)
    return [*module.parameters(), *module.buffers()]

def named_params_and_buffers(module):
    assert isinstance(module, torch.nn.Module)
    return [*module.named_parameters(), *module.named_buffers()]

@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Overwrite each parameter and buffer of `dst_module` with the tensor of the same name in
    `src_module`. Names missing from the source are skipped, or an error if `require_all`."""
    source = dict(named_params_and_buffers(src_module))
    for name, target in named_params_and_buffers(dst_module):
        if name in source:
            target.copy_(source[name])
        else:
            assert not require_all, f'Missing tensor: {name}'

@contextlib.contextmanager
def ddp_sync(module, sync):
    """Context for one forward/backward pass. Unless `sync`, a DistributedDataParallel module
    skips its gradient all-reduce (for gradient accumulation)."""
    assert isinstance(module, torch.nn.Module)
    accumulating = not sync and isinstance(module, torch.nn.parallel.DistributedDataParallel)
    with module.no_sync() if accumulating else contextlib.nullcontext():
        yield

def check_ddp_consistency(module, ignore_regex=None):
    """Assert that every parameter and buffer matches rank 0's copy (NaNs count as equal).
    Tensors whose `<ClassName>.<name>` fully matches `ignore_regex` are not checked."""
    assert isinstance(module, torch.nn.Module)
    named = [(f'{type(module).__name__}.{name}', t.detach()) for name, t in named_params_and_buffers(module)]
    for fullname, local in named:
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        local = nan_to_num(local) if local.is_floating_point() else local
        on_rank0 = local.clone()
        torch.distributed.broadcast(on_rank0, src=0)
        assert torch.equal(local, on_rank0), fullname

#----------------------------------------------------------------------------
# Module summary table.

def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    """Run `module(*inputs)` and print a table of its sub-modules, at most `max_nesting` levels
    deep, in the order their calls finished: parameter and buffer counts, output shapes and
    dtypes. Each tensor is counted for the first row that shows it. Returns the outputs."""
    assert isinstance(module, torch.nn.Module) and not isinstance(module, torch.jit.ScriptModule)
    assert isinstance(inputs, (tuple, list)), 'inputs must be a list of positional arguments'
    outputs, calls = _trace_calls(module, inputs, max_nesting)

    labels = {sub: name for name, sub in module.named_modules()}
    labels[module] = '<top-level>'
    header = [type(module).__name__, 'Parameters', 'Buffers', 'Output shape', 'Datatype']
    table = [header, ['---'] * 5]
    total_params = total_buffers = 0
    for (sub, outs), (params, buffers, new_outs) in zip(calls, _first_sightings(calls)):
        if skip_redundant and not (params or buffers or new_outs):
            continue
        counts = [sum(t.numel() for t in params), sum(t.numel() for t in buffers)]
        total_params += counts[0]
        total_buffers += counts[1]
        shapes = [str(list(t.shape)) for t in outs] or ['-']
        dtypes = [str(t.dtype).replace('torch.', '') for t in outs] or ['-']
        for k, (shape, dtype) in enumerate(zip(shapes, dtypes)):
            label = labels[sub] + (f':{k}' if len(outs) > 1 else '')
            cells = [str(c) if c and k == 0 else '-' for c in counts]
            table.append([label, *cells, shape, dtype])
    table.append(['---'] * 5)
    table.append(['Total', str(total_params), str(total_buffers), '-', '-'])

    widths = [max(len(cell) for cell in column) for column in zip(*table)]
    print()
    for row in table:
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)))
    print()
    return outputs

def _trace_calls(module, inputs, max_nesting):
    """Run the module with forward hooks on every sub-module. Returns its outputs and the list of
    (sub-module, output tensors) of each call at most `max_nesting` levels deep, in order of
    completion (a child finishes before its parent)."""
    depth = 0
    calls = []
    def enter(_sub, _args):
        nonlocal depth
        depth += 1
    def leave(sub, _args, out):
        nonlocal depth
        depth -= 1
        if depth <= max_nesting:
            items = out if isinstance(out, (tuple, list)) else [out]
            calls.append((sub, [t for t in items if isinstance(t, torch.Tensor)]))
    handles = []
    for sub in module.modules():
        handles += [sub.register_forward_pre_hook(enter), sub.register_forward_hook(leave)]
    try:
        outputs = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, calls

def _first_sightings(calls):
    """For each call: its parameters, buffers and outputs that no earlier call has shown."""
    seen = set()
    for sub, outs in calls:
        groups = [list(sub.parameters()), list(sub.buffers()), outs]
        fresh = [[t for t in group if id(t) not in seen] for group in groups]
        seen.update(id(t) for group in fresh for t in group)
        yield fresh
