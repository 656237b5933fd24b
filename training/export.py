"""Export a trained network to safetensors, a format that holds tensors and nothing else, for
places that must not load pickles (which carry code).

    python -m training.export --network=network-snapshot-200000.pkl --dest=exported

writes two files into the new folder `exported`:
    model.safetensors  the EMA network's state_dict (parameters and buffers) as CPU tensors;
    config.json        {"class_name": "training.networks.EDMPrecond", "init_args": [...],
                        "init_kwargs": {...}}: how to build the empty network again.

`load_exported(folder)` rebuilds the network from these two files. The class is looked up among
the persistent classes of training.networks only, so a config file can never make Python import
or call anything else. The `safetensors` package is needed for both directions
(`pip install safetensors`); the rest of the project runs without it.
"""

import json
import os

import click
import numpy as np
import torch

import dnnlib.util
from torch_utils import persistence
from training import networks
from training.snapshot import SnapshotError, load_snapshot

WEIGHTS_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'

class ExportError(SnapshotError):
    """An export that cannot be written or read back; the message is one line naming the file."""

def _safetensors_torch():
    """The optional `safetensors.torch` module, or a one-line error saying how to install it."""
    try:
        import safetensors.torch
    except ImportError:
        raise ExportError('reading or writing .safetensors files needs the safetensors package: pip install safetensors') from None
    return safetensors.torch

#----------------------------------------------------------------------------
# Network -> (tensors, config).

def _json_value(value, name):
    """`value` in JSON types: numpy scalars become Python numbers, tuples become lists."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f'{name}[{i}]') for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _json_value(item, f'{name}.{key}') for key, item in value.items()}
    raise ExportError(f'constructor argument {name} is a {type(value).__name__}, which config.json cannot hold')

def _network_class(short_name):
    """The persistent class `short_name` of training.networks, or None."""
    cls = vars(networks).get(short_name)
    return cls if isinstance(cls, type) and persistence.is_persistent(cls) else None

def network_config(net):
    """The content of config.json for `net`: its class and the arguments it was constructed with,
    which a persistent object records (also when it was loaded from a snapshot)."""
    short_name = type(net).__name__
    if not persistence.is_persistent(net) or _network_class(short_name) is None:
        raise ExportError(f'cannot export a {short_name}: only the persistent classes of {networks.__name__} can be rebuilt from config.json')
    try:
        args, kwargs = net.init_args, net.init_kwargs
    except AssertionError:
        raise ExportError(f'cannot export this {short_name}: it did not record its constructor arguments') from None
    return {
        'class_name': f'{networks.__name__}.{short_name}',
        'init_args': _json_value(list(args), 'init_args'),
        'init_kwargs': _json_value(dict(kwargs), 'init_kwargs'),
    }

def network_tensors(net):
    """The state_dict of `net` as contiguous CPU tensors that share no memory (safetensors refuses shared storage)."""
    return {name: tensor.detach().to('cpu', copy=True).contiguous() for name, tensor in net.state_dict().items()}

#----------------------------------------------------------------------------
# Writing.

def _refuse_occupied(dest):
    if os.path.isfile(dest) or (os.path.isdir(dest) and os.listdir(dest)):
        raise ExportError(f'{dest}: already exists and is not an empty folder; choose a new destination')
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise ExportError(f'{dest}: exists and is not a folder')

def export_network(net, dest):
    """Write `net` as `dest`/model.safetensors and `dest`/config.json. `dest` must be a new or
    empty folder. Each file appears complete or not at all, and if anything fails, neither file
    (nor a folder created here) is left behind."""
    _refuse_occupied(dest)
    config = network_config(net)
    tensors = network_tensors(net)
    save_file = _safetensors_torch().save_file
    made_folder = not os.path.isdir(dest)
    os.makedirs(dest, exist_ok=True)
    written = []
    try:
        # The config goes last: a folder with both files holds a finished export.
        weights_path = os.path.join(dest, WEIGHTS_FILE)
        with dnnlib.util.atomic_write(weights_path) as temp_path:
            save_file(tensors, temp_path)
        written.append(weights_path)
        config_path = os.path.join(dest, CONFIG_FILE)
        with dnnlib.util.atomic_write(config_path) as temp_path, open(temp_path, 'w') as f:
            f.write(json.dumps(config, indent=2) + '\n')
        written.append(config_path)
    except BaseException:
        for path in written:
            os.remove(path)
        if made_folder:
            os.rmdir(dest)
        raise

#----------------------------------------------------------------------------
# Reading.

def is_exported(path):
    """Whether `path` names an export: a folder holding model.safetensors and config.json, or a
    local *.safetensors file (whose config.json is expected beside it)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return all(os.path.isfile(os.path.join(path, name)) for name in (WEIGHTS_FILE, CONFIG_FILE))
    return '://' not in path and path.lower().endswith('.safetensors')

def _export_files(path):
    """(weights file, config file) of an export folder or of a .safetensors file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.join(path, WEIGHTS_FILE), os.path.join(path, CONFIG_FILE)
    return path, os.path.join(os.path.dirname(path), CONFIG_FILE)

def _read_config(config_path):
    """config.json, checked for shape: a dict with class_name, init_args and init_kwargs."""
    try:
        with open(config_path, encoding='utf-8') as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ExportError(f'{config_path}: no such file; an exported network needs its config.json') from None
    except (OSError, ValueError) as err:
        raise ExportError(f'{config_path}: not a readable config ({dnnlib.util.error_summary(err)})') from None
    shape_ok = (isinstance(config, dict) and isinstance(config.get('class_name'), str)
                and isinstance(config.get('init_args'), list) and isinstance(config.get('init_kwargs'), dict))
    if not shape_ok:
        raise ExportError(f'{config_path}: expected an object with "class_name", "init_args" (a list) and "init_kwargs" (an object)')
    return config

def _resolve_class(class_name, config_path):
    """Map 'training.networks.<Name>' to the persistent class; refuse every other name."""
    module_name, _, short_name = class_name.rpartition('.')
    cls = _network_class(short_name) if module_name == networks.__name__ else None
    if cls is None:
        raise ExportError(f'{config_path}: "{class_name}" is not a network class of {networks.__name__}; refusing to build it')
    return cls

def _read_tensors(weights_path):
    load_file = _safetensors_torch().load_file
    if not os.path.isfile(weights_path):
        raise ExportError(f'{weights_path}: no such file')
    try:
        return load_file(weights_path, device='cpu')
    except Exception as err: # Truncated or corrupt headers fail in several ways.
        raise ExportError(f'{weights_path}: not a readable safetensors file ({dnnlib.util.error_summary(err)})') from None

def _mismatch(expected, found):
    """One line on how the tensors `found` differ from the state_dict `expected`, or None."""
    problems = []
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    reshaped = [name for name in expected if name in found and found[name].shape != expected[name].shape]
    for label, names in (('missing', missing), ('unexpected', unexpected), ('of another shape', reshaped)):
        if names:
            more = f' and {len(names) - 3} more' if len(names) > 3 else ''
            problems.append(f'{label}: {", ".join(names[:3])}{more}')
    return '; '.join(problems) or None

def load_exported(path, device=None):
    """Rebuild an exported network from its folder or its .safetensors file (with config.json
    beside it). Returns it in eval mode, without gradients, on `device` (default: the CPU).
    Raises ExportError, a training.snapshot.SnapshotError, with a one-line message naming the file."""
    weights_path, config_path = _export_files(path)
    config = _read_config(config_path)
    cls = _resolve_class(config['class_name'], config_path)
    tensors = _read_tensors(weights_path)
    try:
        with torch.random.fork_rng(devices=[]): # Building draws random initial weights; keep the caller's stream.
            net = cls(*config['init_args'], **config['init_kwargs'])
    except Exception as err:
        raise ExportError(f'{config_path}: cannot build {config["class_name"]} ({dnnlib.util.error_summary(err)})') from None
    problem = _mismatch(net.state_dict(), tensors)
    if problem is not None:
        raise ExportError(f'{weights_path}: tensors do not fit {config["class_name"]} of {config_path} ({problem})')
    net.load_state_dict(tensors, strict=True)
    if device is not None:
        net.to(device)
    return net.eval().requires_grad_(False)

#----------------------------------------------------------------------------

@click.command()
@click.option('--network', 'network_pkl', help='Network pickle to export (path or URL)', metavar='PKL', type=str, required=True)
@click.option('--dest', help='Folder to create for model.safetensors and config.json', metavar='DIR', type=str, required=True)
def main(network_pkl, dest):
    """Export the EMA network of a snapshot as safetensors (model.safetensors + config.json).

    \b
    Example:
      python -m training.export --network=network-snapshot-200000.pkl --dest=exported
    """
    try:
        _refuse_occupied(dest)
        _safetensors_torch()
        print(f'Loading network from "{network_pkl}"...')
        net = load_snapshot(network_pkl)['ema']
        print(f'Writing {WEIGHTS_FILE} and {CONFIG_FILE} to "{dest}"...')
        export_network(net, dest)
    except (SnapshotError, OSError) as err:
        raise click.ClickException(str(err))
    print('Done.')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
