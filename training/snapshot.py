"""Safe loading of network snapshots (`network-snapshot-*.pkl`, the official EDM pickles) and
training states (`training-state-*.pt`).

A snapshot pickled with the persistence format embeds the source code of its classes, and plain
`pickle.load` executes that code. These loaders do not: they resolve each persistent object's
`class_name` to this project's class of the same name, restore the recorded state into it,
rebuild tensors with weights-only semantics, and refuse every other global. Files you trust can
still be loaded the original way by setting EDM_ALLOW_PICKLE_CODE=1.
"""

import _compat_pickle
import io
import os
import pickle
import types
import zipfile

import numpy as np
import torch

import dnnlib
from torch_utils import persistence
from training import augment, loss, networks

ALLOW_CODE_ENV = 'EDM_ALLOW_PICKLE_CODE'

class SnapshotError(ValueError):
    """A network pickle that cannot be loaded; the message is one line naming the file."""

#----------------------------------------------------------------------------
# What a snapshot may contain besides persistent objects (persistence.md 5).

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
        """Safe counterpart of persistence._reconstruct_persistent_obj (persistence.md 4)."""
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
    """
    try:
        with dnnlib.util.open_url(path_or_url, verbose=verbose) as f:
            data = f.read()
    except FileNotFoundError:
        raise IOError(f'{path_or_url}: no such file') from None
    except IsADirectoryError:
        raise IOError(f'{path_or_url}: is a directory, expected a network pickle (.pkl)') from None
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise SnapshotError(f'{path_or_url}: this is a torch.save archive (a training state?), expected a network pickle such as network-snapshot-*.pkl')
    try:
        if _code_allowed(allow_code):
            snapshot = pickle.loads(data)
        else:
            snapshot = _SafeUnpickler(io.BytesIO(data), path_or_url, _persistent_classes()).load()
    except SnapshotError:
        raise
    except Exception as err: # Truncated or corrupt files fail in many ways inside pickle.
        raise SnapshotError(f'{path_or_url}: not a readable network pickle ({dnnlib.util.error_summary(err)})') from None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get('ema'), torch.nn.Module):
        raise SnapshotError(f'{path_or_url}: expected a network snapshot (a dict with a network under "ema")')
    return snapshot

def load_training_state(path, allow_code=None):
    """Load a training state (torch.save of {net, optimizer_state}, formats.md 3) onto the CPU,
    without executing embedded code: torch.load runs with the safe unpickler above.
    Raises SnapshotError or IOError with a one-line message naming the file."""
    if not os.path.isfile(path):
        raise IOError(f'{path}: no such file')
    if _code_allowed(allow_code):
        return torch.load(path, map_location='cpu', weights_only=False)
    classes = _persistent_classes()
    class Unpickler(_SafeUnpickler):
        def __init__(self, file, **_kwargs):
            super().__init__(file, path, classes)
    safe_pickle = types.SimpleNamespace(__name__='safe_pickle', Unpickler=Unpickler)
    try:
        state = torch.load(path, map_location='cpu', weights_only=False, pickle_module=safe_pickle)
    except SnapshotError:
        raise
    except Exception as err:
        raise SnapshotError(f'{path}: not a readable training state ({dnnlib.util.error_summary(err)})') from None
    if not isinstance(state, dict) or not isinstance(state.get('net'), torch.nn.Module) or 'optimizer_state' not in state:
        raise SnapshotError(f'{path}: expected a training state (a dict with "net" and "optimizer_state")')
    return state
