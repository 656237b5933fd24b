"""The persistence pickle format (the module source travels in the pickle): reload without the defining module,
deepcopy, the original's hand-built format, and compatibility constraints of embedded modules."""

import ast
import copy
import inspect
import io
import pickle
import subprocess
import sys
import textwrap

import torch

from torch_utils import persistence
from training import networks

TOY_MODULE = textwrap.dedent('''
    import torch
    from torch_utils import persistence

    @persistence.persistent_class
    class Scale(torch.nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.factor = factor
            self.bias = torch.nn.Parameter(torch.arange(3, dtype=torch.float32))

        def forward(self, x):
            return x * self.factor + self.bias
''')

def tiny_edm(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = dict(dict(img_resolution=8, img_channels=3, label_dim=2, model_type='SongUNet', model_channels=8,
                       channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0), **kwargs)
    return networks.EDMPrecond(**kwargs).eval()

def run_python(code, cwd, repo):
    env = {'PYTHONPATH': str(repo), 'PATH': '/usr/bin:/bin'}
    result = subprocess.run([sys.executable, '-c', code], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout

def test_reload_in_fresh_process_without_defining_module(tmp_path, repo):
    """The pickle carries the module source, so the module itself is not needed to load it."""
    moddir = tmp_path / 'mod'
    moddir.mkdir()
    (moddir / 'toy_scale_module.py').write_text(TOY_MODULE)
    pkl = tmp_path / 'toy.pkl'
    run_python(f'import pickle, toy_scale_module as m; pickle.dump(m.Scale(factor=2.5), open({str(pkl)!r}, "wb"))', moddir, repo)
    (moddir / 'toy_scale_module.py').unlink()
    out = run_python(textwrap.dedent(f'''
        import pickle, torch
        obj = pickle.load(open({str(pkl)!r}, "rb"))
        print(type(obj).__module__.startswith("_imported_module_"), type(obj).__name__, obj.init_kwargs.factor)
        print(obj(torch.ones(3)).tolist())
    '''), tmp_path, repo)
    assert out.split('\n')[0] == 'True Scale 2.5'
    assert out.split('\n')[1] == '[2.5, 3.5, 4.5]'

def test_deepcopy_of_network():
    net = tiny_edm()
    clone = copy.deepcopy(net)
    assert type(clone) is type(net)
    assert clone.init_kwargs == net.init_kwargs
    for (name, a), (_, b) in zip(net.state_dict().items(), clone.state_dict().items()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    labels = torch.eye(2)
    with torch.no_grad():
        assert torch.equal(net(x, sigma, labels), clone(x, sigma, labels))

def test_hand_built_original_format_loads():
    """A pickle made the way the original writes one: GLOBAL _reconstruct_persistent_obj + (meta,)."""
    state = dict(torch.nn.Module().__dict__)
    state['_parameters'] = dict(bias=torch.nn.Parameter(torch.zeros(3)))
    state.update(factor=3.0, _init_args=(), _init_kwargs=dict(factor=3.0))
    meta = dict(type='class', version=6, module_src=TOY_MODULE, class_name='Scale', state=state)
    class Handmade:
        def __reduce__(self):
            return (persistence._reconstruct_persistent_obj, (meta,))
    obj = pickle.loads(pickle.dumps(Handmade()))
    assert type(obj).__name__ == 'Scale' and type(obj).__module__.startswith('_imported_module_')
    assert obj.init_kwargs.factor == 3.0
    assert obj(torch.ones(3)).tolist() == [3.0, 3.0, 3.0]

def pickle_globals(data):
    """(module, name) of every global a pickle references."""
    found = set()
    class Lister(pickle.Unpickler):
        def find_class(self, module, name):
            found.add((module, name))
            return super().find_class(module, name)
    Lister(io.BytesIO(data)).load()
    return found

def test_pickle_layout_matches_original_format():
    """Metadata keys and order, version 6, the whole module source, and only the globals that the
    original environment resolves (no numpy scalars)."""
    net = tiny_edm()
    data = pickle.dumps(net)
    metas = []
    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
                return lambda meta: metas.append(meta) or meta
            return super().find_class(module, name)
    top = Recorder(io.BytesIO(data)).load()
    assert list(top.keys()) == ['type', 'version', 'module_src', 'class_name', 'state']
    assert top['version'] == 6 and top['type'] == 'class' and top['class_name'] == 'EDMPrecond'
    assert top['module_src'] == inspect.getsource(networks)
    assert {m['class_name'] for m in metas} >= {'EDMPrecond', 'SongUNet', 'UNetBlock', 'Conv2d', 'Linear', 'GroupNorm', 'PositionalEmbedding'}
    assert pickle_globals(data) <= {
        ('torch_utils.persistence', '_reconstruct_persistent_obj'), ('torch.nn.modules.container', 'ModuleDict'),
        ('collections', 'OrderedDict'), ('torch._utils', '_rebuild_tensor_v2'), ('torch._utils', '_rebuild_parameter'),
        ('torch.storage', '_load_from_bytes'),
    }

ORIGINAL_MISC = {'constant', 'nan_to_num', 'assert_shape', 'profiled_function', 'InfiniteSampler', 'params_and_buffers',
                 'named_params_and_buffers', 'copy_params_and_buffers', 'ddp_sync', 'check_ddp_consistency',
                 'print_module_summary', 'suppress_tracer_warnings', 'symbolic_assert'}
ORIGINAL_ENVIRONMENT_IMPORTS = {'math', 'numpy', 'torch', 'torch.nn.functional', 'torch_utils', 'torch_utils.persistence',
                                'torch_utils.misc', 'torch_utils.training_stats', 'torch_utils.distributed', 'dnnlib'}

def test_embedded_modules_run_in_original_environment(repo):
    """Modules embedded in snapshots parse as Python 3.8 and import only what the original has."""
    for path in ['training/networks.py', 'training/loss.py', 'training/augment.py']:
        tree = ast.parse((repo / path).read_text(), feature_version=(3, 8))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert {a.name for a in node.names} <= ORIGINAL_ENVIRONMENT_IMPORTS, path
            elif isinstance(node, ast.ImportFrom):
                assert node.module in ORIGINAL_ENVIRONMENT_IMPORTS, (path, node.module)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == 'misc':
                assert node.attr in ORIGINAL_MISC, (path, node.attr)
