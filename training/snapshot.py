"""Network snapshots (`network-snapshot-*.pkl`), training states (`training-state-*.pt`) and the
statistics log `stats.jsonl`: writing them so that a killed process never leaves a partial file,
and reading snapshots and states back safely.

A snapshot pickled with the persistence format embeds the source code of its classes, and plain
`pickle.load` executes that code. The loaders here do not: they resolve each persistent object's
`class_name` to this project's class of the same name, restore the recorded state into it,
rebuild tensors with weights-only semantics, and refuse every other global. Files you trust can
still be loaded the original way by setting EDM_ALLOW_PICKLE_CODE=1.
"""

import _compat_pickle
import io
import json
import pickle
import os
import types
import zipfile

import torch
import numpy as np

import dnnlib
from torch_utils import persistence
from training import augment, loss, networks

ALLOW_CODE_ENV = 'EDM_ALLOW_PICKLE_CODE'

class SnapshotError(ValueError):
    """A network pickle that cannot be loaded; the message is one line naming the file."""

#----------------------------------------------------------------------------
# What a snapshot may contain besides persistent objects.

def _persistent_classes():
    """This project's persistent classes by name (networks, losses, augmentation pipe)."""
    return {name: obj for module in (networks, loss, augment) for name, obj in vars(module).items()
            if isinstance(obj, type) and persistence.is_persistent(obj)}

def _load_storage(data):
    """Replacement for torch.storage._load_from_bytes that unpickles weights only."""
    return torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)

def _numpy_scalar(dtype, data):
    """numpy scalars (e.g. skip_scale = np.sqrt(0.5) in official pickles), numeric types only."""
    if dtype.hasobject:
        raise pickle.UnpicklingError(f'numpy scalar of object dtype {dtype}')
    return np.frombuffer(data, dtype=dtype)[0]

_SAFE_GLOBALS = {
    ('collections', 'OrderedDict'): lambda: __import__('collections').OrderedDict,
    ('builtins', 'set'): lambda: set,
    ('builtins', 'frozenset'): lambda: frozenset,
    ('torch.nn.modules.container', 'ModuleDict'): lambda: torch.nn.ModuleDict,
    ('torch.nn.modules.container', 'ModuleList'): lambda: torch.nn.ModuleList,
    ('torch._utils', '_rebuild_tensor_v2'): lambda: torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): lambda: torch._utils._rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): lambda: torch._utils._rebuild_parameter_with_state,
    ('torch.storage', '_load_from_bytes'): lambda: _load_storage,
    ('torch', 'Size'): lambda: torch.Size,
    ('torch', 'device'): lambda: torch.device,
    ('numpy', 'dtype'): lambda: np.dtype,
    ('numpy.core.multiarray', 'scalar'): lambda: _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): lambda: _numpy_scalar,
    ('dnnlib.util', 'EasyDict'): lambda: dnnlib.EasyDict,
}

#----------------------------------------------------------------------------

class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, path, classes):
        super().__init__(file)
        self.path = path
        self.classes = classes

    def find_class(self, module, name):
        # torch.save writes pickle protocol 2, which uses Python 2 names ('__builtin__', ...).
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
            return self.reconstruct
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]()
        if module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise SnapshotError(f'{self.path}: refusing to load global "{module}.{name}"; {_opt_in_hint()}')

    def reconstruct(self, meta):
        """Safe counterpart of persistence._reconstruct_persistent_obj: no embedded code is run."""
        if not isinstance(meta, dict) or meta.get('type') != 'class' or meta.get('version') != persistence._version:
            raise SnapshotError(f'{self.path}: unsupported persistent-object metadata (expected type "class", version {persistence._version})')
        cls = self.classes.get(meta.get('class_name'))
        if cls is None:
            raise SnapshotError(f'{self.path}: unknown persistent class "{meta.get("class_name")}"; {_opt_in_hint()}')
        obj = cls.__new__(cls)
        if isinstance(obj, torch.nn.Module):
            obj.__setstate__(dict(meta['state']))
        else:
            obj.__dict__.update(meta['state'])
        return obj

def _opt_in_hint():
    return f'if you trust this file, set {ALLOW_CODE_ENV}=1 to load it with plain pickle, which executes the code embedded in it'

#----------------------------------------------------------------------------

def _code_allowed(allow_code):
    if allow_code is None:
        return os.environ.get(ALLOW_CODE_ENV, '0').lower() not in ('', '0', 'false', 'no')
    return allow_code

def load_snapshot(path_or_url, verbose=True, allow_code=None):
    """Load a network pickle -> dict with 'ema' (and 'loss_fn', 'augment_pipe', 'dataset_kwargs'
    when present), like pickle.load would, without executing embedded code.

    `allow_code=None` follows the environment variable EDM_ALLOW_PICKLE_CODE.
    Raises SnapshotError or IOError with a one-line message naming the file.

    An exported network (a folder with model.safetensors and config.json, or the .safetensors
    file itself; see training/export.py) is accepted too and gives a dict with 'ema' only.
    """
    from training import export # pylint: disable=import-outside-toplevel # export imports this module.
    if export.is_exported(path_or_url):
        return dict(ema=export.load_exported(path_or_url))
    try:
        with dnnlib.util.open_url(path_or_url, verbose=verbose) as f:
            return _checked_snapshot(_unpickle_network(f, path_or_url, allow_code), path_or_url)
    except FileNotFoundError:
        raise IOError(f'{path_or_url}: no such file') from None
    except IsADirectoryError:
        raise IOError(f'{path_or_url}: is a directory, expected a network pickle (.pkl)') from None

def _unpickle_network(f, path_or_url, allow_code):
    """Unpickle straight from the open file (a network pickle can be over a gigabyte: no copy)."""
    if zipfile.is_zipfile(f):
        raise SnapshotError(f'{path_or_url}: this is a torch.save archive (a training state?), expected a network pickle such as network-snapshot-*.pkl')
    f.seek(0)
    try:
        if _code_allowed(allow_code):
            return pickle.load(f)
        return _SafeUnpickler(f, path_or_url, _persistent_classes()).load()
    except SnapshotError:
        raise
    except Exception as err: # Truncated or corrupt files fail in many ways inside pickle.
        raise SnapshotError(f'{path_or_url}: not a readable network pickle ({dnnlib.util.error_summary(err)})') from None

def _checked_snapshot(snapshot, path_or_url):
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get('ema'), torch.nn.Module):
        raise SnapshotError(f'{path_or_url}: expected a network snapshot (a dict with a network under "ema")')
    return snapshot

def load_training_state(path, allow_code=None):
    """Load a training state (torch.save of {net, optimizer_state}) onto the CPU,
    without executing embedded code: torch.load runs with the safe unpickler above.
    Raises SnapshotError or IOError with a one-line message naming the file."""
    if not os.path.isfile(path):
        raise IOError(f'{path}: no such file')
    with open(path, 'rb') as f:
        head = f.read(4)
    if not head:
        raise SnapshotError(f'{path}: not a readable training state (the file is empty)')
    if head == b'PK\x03\x04':
        if not zipfile.is_zipfile(path):
            raise SnapshotError(f'{path}: not a readable training state (truncated: the torch.save archive is incomplete)')
    elif head[:1] != pickle.PROTO: # torch.save's zip archive, or its older format: plain pickles
        raise SnapshotError(f'{path}: not a readable training state (neither a torch.save archive nor a pickle)')
    if _code_allowed(allow_code):
        return torch.load(path, map_location='cpu', weights_only=False)
    classes = _persistent_classes()
    class Unpickler(_SafeUnpickler):
        def __init__(self, file, **_kwargs):
            super().__init__(file, path, classes)
    # torch.load reads files of its pre-archive format with pickle_module.load.
    safe_pickle = types.SimpleNamespace(__name__='safe_pickle', Unpickler=Unpickler,
        load=lambda file, **_kwargs: Unpickler(file).load())
    try:
        state = torch.load(path, map_location='cpu', weights_only=False, pickle_module=safe_pickle)
    except SnapshotError:
        raise
    except Exception as err:
        raise SnapshotError(f'{path}: not a readable training state ({dnnlib.util.error_summary(err)})') from None
    if not isinstance(state, dict) or not isinstance(state.get('net'), torch.nn.Module) or 'optimizer_state' not in state:
        raise SnapshotError(f'{path}: expected a training state (a dict with "net" and "optimizer_state")')
    return state

#----------------------------------------------------------------------------
# Writing. Snapshots and states go to a temporary file that is synced to disk and then renamed
# over the final name, so every file in the run directory is complete, whenever the process dies.

def save_snapshot(path, data):
    """Write a network snapshot: the dict {ema, loss_fn, augment_pipe, dataset_kwargs} as a
    plain pickle (persistent objects carry their source code with them)."""
    with dnnlib.util.atomic_write(path, fsync=True) as tmp_path, open(tmp_path, 'wb') as f:
        pickle.dump(data, f)

def save_training_state(path, net, optimizer):
    """Write a training state: torch.save of {net: the live training network, optimizer_state}."""
    state = dict(net=net, optimizer_state=optimizer.state_dict())
    with dnnlib.util.atomic_write(path, fsync=True) as tmp_path, open(tmp_path, 'wb') as f:
        torch.save(state, f)

def open_stats_jsonl(path):
    """Open (or create) the statistics log for appending; returns an OS file descriptor.
    If a kill interrupted the last write, the partial last line is cut off, so that every
    line of the file stays valid JSON."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    with open(path, 'rb') as f:
        existing = f.read()
    if not existing.endswith(b'\n'):
        os.ftruncate(fd, existing.rfind(b'\n') + 1) # 0 for an empty file or a single partial line
    return fd

def append_stats_line(fd, stats):
    """Append `stats` as one JSON line (default json.dumps separators; NaN/Infinity allowed).
    The line goes out in one os.write, so a kill practically never leaves half of it."""
    pending = f'{json.dumps(stats)}\n'.encode('utf-8')
    while pending:
        pending = pending[os.write(fd, pending):]
