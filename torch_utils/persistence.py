"""Persistent classes: objects that pickle together with the source code of their module.

A class decorated with `persistent_class` pickles as a call to `_reconstruct_persistent_obj(meta)`,
where `meta` holds the full source text of the module that defined the class, the class name and
the object's state. Unpickling executes that source as a fresh anonymous module and rebuilds the
object from it, so a snapshot keeps working after the code that made it has changed or is gone.
The layout of `meta` (format version 6) is shared with NVIDIA's EDM release: pickles travel both
ways. Note that plain `pickle.load` runs the embedded code; `training.snapshot` has a loader
that does not.
"""

import copy
import inspect
import io
import pickle
import sys
import types
import uuid

import torch

import dnnlib

_version = 6  # Written into every pickle; loading requires the same number.

_decorators = set()  # The persistent subclasses created so far.
_import_hooks = []   # Functions meta -> meta, run in order before an object is rebuilt.

# Module <-> source text, both ways. A module executed from a pickle is entered here before its
# code runs, because that code decorates its own classes and so asks for its own source.
_source_of_module = {}
_module_of_source = {}

#----------------------------------------------------------------------------
# Public interface.

def persistent_class(orig_class):
    """Class decorator. Returns a subclass of `orig_class`, with the same name and module, whose
    instances remember their constructor arguments (`init_args`, `init_kwargs`) and pickle along
    with the source code of `orig_class`'s module. Already persistent classes are returned as is.
    """
    assert isinstance(orig_class, type), 'persistent_class() decorates classes only'
    if is_persistent(orig_class):
        return orig_class
    home = sys.modules.get(orig_class.__module__)
    assert home is not None, f'module {orig_class.__module__} of {orig_class.__name__} is not imported'
    header = dict(type='class', version=_version, module_src=_module_source(home), class_name=orig_class.__name__)

    def __init__(self, *args, **kwargs):
        super(persistent, self).__init__(*args, **kwargs)
        _remember_arguments(self, args, kwargs)
        assert header['class_name'] in vars(home), f'{header["class_name"]} vanished from {home.__name__}'
        _assert_pickleable(self.__reduce__())

    def __reduce__(self):
        return _reduce_with_source(super(persistent, self).__reduce__(), header)

    metaclass = type(orig_class)
    persistent = metaclass(orig_class.__name__, (orig_class,), {
        '__module__': orig_class.__module__,
        '__qualname__': orig_class.__qualname__,
        '__init__': __init__,
        '__reduce__': __reduce__,
        'init_args': property(_recorded_args),
        'init_kwargs': property(_recorded_kwargs),
    })
    _decorators.add(persistent)
    return persistent

def is_persistent(obj):
    """Whether `obj` is a class made by `persistent_class`, or an instance of exactly such a class."""
    cls = obj if isinstance(obj, type) else type(obj)
    return cls in _decorators

def import_hook(hook):
    """Register `hook(meta) -> meta`. Before each persistent object is rebuilt, the hooks see its
    metadata in registration order and may patch it (e.g. `meta.module_src`)."""
    assert callable(hook), 'an import hook must be callable'
    _import_hooks.append(hook)

#----------------------------------------------------------------------------
# What the persistent subclass adds to the original class.

def _remember_arguments(obj, args, kwargs):
    """Keep deep copies of the constructor arguments, unless the constructor set
    `self._record_init_args = False` (then both are None)."""
    if getattr(obj, '_record_init_args', True):
        args, kwargs = copy.deepcopy(args), copy.deepcopy(kwargs)
    else:
        args = kwargs = None
    obj._init_args = args
    obj._init_kwargs = kwargs

def _recorded_args(self):
    assert self._init_args is not None, 'constructor arguments were not recorded'
    return copy.deepcopy(self._init_args)

def _recorded_kwargs(self):
    assert self._init_kwargs is not None, 'constructor arguments were not recorded'
    return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

def _reduce_with_source(parent, header):
    """Rewrite the parent class's reduce tuple into `_reconstruct_persistent_obj(meta)`; the
    parent's state becomes `meta['state']` and any list/dict item iterators are kept."""
    parent = tuple(parent) + (None,) * (3 - len(parent))
    if parent[0] is _reconstruct_persistent_obj:
        return parent
    meta = dict(header, state=parent[2])
    return (_reconstruct_persistent_obj, (meta,), None) + parent[3:]

class _ProbePickler(pickle.Pickler):
    """Pickler that stands in a token for tensors and persistent objects: they are known to
    pickle, and skipping them keeps the check cheap."""
    def persistent_id(self, obj):
        known = isinstance(obj, torch.Tensor) or is_persistent(obj)
        return 0 if known else None

def _assert_pickleable(reduced):
    """Fail in the constructor, not when the first snapshot is written, if some attribute
    cannot be pickled."""
    _ProbePickler(io.BytesIO()).dump(reduced)

#----------------------------------------------------------------------------
# Loading.

def _reconstruct_persistent_obj(meta):
    """Rebuild one persistent object from its pickled metadata. Every persistent pickle refers
    to this function by its full name, so the name must never change."""
    meta = dnnlib.EasyDict(meta, state=dnnlib.EasyDict(meta['state']))
    for hook in _import_hooks:
        meta = hook(meta)
        assert meta is not None, f'import hook {hook!r} returned None'
    assert meta.version == _version, f'persistent object of format version {meta.version}, expected {_version}'
    assert meta.type == 'class', f'unsupported persistent object type {meta.type!r}'
    namespace = vars(_source_module(meta.module_src))
    cls = persistent_class(namespace[meta.class_name])
    obj = cls.__new__(cls) # The constructor is not run: the state is restored instead.
    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(meta.state) # torch.nn.Module also adds hook dicts that older pickles lack.
    else:
        vars(obj).update(meta.state)
    return obj

def _cache_pair(module, src):
    _source_of_module[module] = src
    _module_of_source[src] = module

def _module_source(module):
    """Source text of an imported module (or of one executed from a pickle)."""
    if module not in _source_of_module:
        _cache_pair(module, inspect.getsource(module))
    return _source_of_module[module]

def _source_module(src):
    """The module executed from `src`. Identical source gives the same module, hence the same
    classes, within a process; new source runs as `_imported_module_<random hex>`."""
    if src in _module_of_source:
        return _module_of_source[src]
    module = types.ModuleType('_imported_module_' + uuid.uuid4().hex)
    sys.modules[module.__name__] = module
    _cache_pair(module, src)
    exec(src, vars(module))
    return module
