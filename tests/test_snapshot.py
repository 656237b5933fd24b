"""The safe loader for network pickles (training/snapshot.py)."""

import io
import os
import pickle
import types

import numpy as np
import pytest
import torch

from torch_utils import persistence
from training import augment, loss, networks
from training.snapshot import SnapshotError, load_snapshot, load_training_state

def tiny_net(seed=0):
    torch.manual_seed(seed)
    return networks.EDMPrecond(img_resolution=8, img_channels=3, label_dim=2, model_type='SongUNet',
                               model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                               augment_dim=9, dropout=0).eval().requires_grad_(False)

def official_snapshot(net):
    return dict(
        ema=net,
        loss_fn=loss.EDMLoss(),
        augment_pipe=augment.AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1),
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path='x.zip', use_labels=True,
                            xflip=False, cache=True, resolution=8, max_size=10),
    )

class PlantingPickler(pickle.Pickler):
    """Pickles persistent objects with extra code appended to their embedded module source."""
    def __init__(self, file, plant, protocol=None):
        super().__init__(file, protocol=protocol)
        self.plant = plant

    def reducer_override(self, obj):
        if not persistence.is_persistent(obj) or isinstance(obj, type):
            return NotImplemented
        fields = list(obj.__reduce__())
        meta = dict(fields[1][0], module_src=fields[1][0]['module_src'] + self.plant)
        fields[1] = (meta,)
        return tuple(fields)

def planted_pickle(obj, marker):
    f = io.BytesIO()
    PlantingPickler(f, plant=f'\nopen({str(marker)!r}, "a").write("executed\\n")\n').dump(obj)
    return f.getvalue()

def outputs(net):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g)
    with torch.no_grad():
        return net(x, torch.tensor([0.3, 7.0]), torch.eye(2))

def test_official_format_loads_without_executing_embedded_code(tmp_path):
    net = tiny_net()
    marker = tmp_path / 'side_effect.txt'
    path = tmp_path / 'network-snapshot-000000.pkl'
    path.write_bytes(planted_pickle(official_snapshot(net), marker))
    data = load_snapshot(str(path), allow_code=False)
    assert not marker.exists()
    assert list(data.keys()) == ['ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs']
    assert type(data['ema']) is networks.EDMPrecond
    assert type(data['loss_fn']) is loss.EDMLoss and data['loss_fn'].P_std == 1.2
    assert type(data['augment_pipe']) is augment.AugmentPipe and data['augment_pipe'].p == 0.12
    assert data['dataset_kwargs']['max_size'] == 10
    assert torch.equal(outputs(data['ema']), outputs(net))
    assert not data['ema'].training and not any(p.requires_grad for p in data['ema'].parameters())

def test_opt_in_executes_embedded_code(tmp_path, monkeypatch):
    net = tiny_net()
    marker = tmp_path / 'side_effect.txt'
    path = tmp_path / 'snap.pkl'
    path.write_bytes(planted_pickle(dict(ema=net), marker))
    monkeypatch.setenv('EDM_ALLOW_PICKLE_CODE', '1')
    data = load_snapshot(str(path))
    assert marker.exists()
    assert type(data['ema']).__module__.startswith('_imported_module_')
    assert torch.equal(outputs(data['ema']), outputs(net))

def test_numpy_scalars_of_original_pickles_load(tmp_path):
    """Official pickles hold np.float64 attributes and init kwargs."""
    net = tiny_net()
    for block in net.modules():
        if isinstance(block, networks.UNetBlock):
            block.skip_scale = np.sqrt(0.5)
            block._init_kwargs['skip_scale'] = np.sqrt(0.5)
    path = tmp_path / 'snap.pkl'
    path.write_bytes(pickle.dumps(dict(ema=net)))
    loaded = load_snapshot(str(path), allow_code=False)['ema']
    assert torch.equal(outputs(loaded), outputs(net))

def hand_built(class_name, module_src):
    meta = dict(type='class', version=6, module_src=module_src, class_name=class_name, state=dict(torch.nn.Module().__dict__))
    class Handmade:
        def __reduce__(self):
            return (persistence._reconstruct_persistent_obj, (meta,))
    return pickle.dumps(dict(ema=Handmade()))

def test_unknown_class_is_refused_with_one_line(tmp_path, monkeypatch):
    src = 'import torch\nfrom torch_utils import persistence\n@persistence.persistent_class\nclass NoSuchNet(torch.nn.Module):\n    pass\n'
    path = tmp_path / 'unknown.pkl'
    path.write_bytes(hand_built('NoSuchNet', src))
    with pytest.raises(SnapshotError) as info:
        load_snapshot(str(path), allow_code=False)
    message = str(info.value)
    assert '\n' not in message and 'NoSuchNet' in message and 'EDM_ALLOW_PICKLE_CODE=1' in message and str(path) in message
    monkeypatch.setenv('EDM_ALLOW_PICKLE_CODE', '1')
    assert type(load_snapshot(str(path))['ema']).__name__ == 'NoSuchNet'

def test_foreign_global_is_refused(tmp_path):
    path = tmp_path / 'evil.pkl'
    path.write_bytes(pickle.dumps(dict(ema=tiny_net(), hook=os.getcwd)))
    with pytest.raises(SnapshotError, match=r'refusing to load global "posix.getcwd"'):
        load_snapshot(str(path), allow_code=False)

def test_unreadable_inputs_give_one_line(tmp_path):
    good = pickle.dumps(dict(ema=tiny_net()))
    (tmp_path / 'truncated.pkl').write_bytes(good[:len(good) // 2])
    (tmp_path / 'text.pkl').write_text('hello')
    (tmp_path / 'list.pkl').write_bytes(pickle.dumps([1, 2]))
    torch.save(dict(net=1), tmp_path / 'training-state-000000.pt')
    cases = {
        'truncated.pkl': (SnapshotError, 'not a readable network pickle'),
        'text.pkl': (SnapshotError, 'not a readable network pickle'),
        'list.pkl': (SnapshotError, 'expected a network snapshot'),
        'training-state-000000.pt': (SnapshotError, 'torch.save archive'),
        'missing.pkl': (IOError, 'no such file'),
    }
    for name, (error, text) in cases.items():
        with pytest.raises(error) as info:
            load_snapshot(str(tmp_path / name), allow_code=False)
        assert text in str(info.value) and name in str(info.value) and '\n' not in str(info.value)

def test_training_state_loads_without_executing_embedded_code(tmp_path):
    net = tiny_net().train().requires_grad_(True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 3, 8, 8), torch.ones(2), torch.eye(2)).square().sum().backward()
    optimizer.step()
    marker = tmp_path / 'side_effect.txt'
    plant = f'\nopen({str(marker)!r}, "a").write("executed\\n")\n'
    class Planter(PlantingPickler):
        def __init__(self, file, protocol=None):
            super().__init__(file, plant, protocol)
    planting = types.SimpleNamespace(__name__='planting', Pickler=Planter)
    path = tmp_path / 'training-state-000000.pt'
    torch.save(dict(net=net, optimizer_state=optimizer.state_dict()), path, pickle_module=planting)
    state = load_training_state(str(path), allow_code=False)
    assert not marker.exists()
    assert type(state['net']) is networks.EDMPrecond and state['net'].training
    assert torch.equal(outputs(state['net'].eval()), outputs(net.eval()))
    reloaded = torch.optim.Adam(state['net'].parameters(), lr=1e-3)
    reloaded.load_state_dict(state['optimizer_state'])
    assert reloaded.state_dict()['state'][0]['step'] == 1
    load_training_state(str(path), allow_code=True)
    assert marker.exists()
    with pytest.raises(SnapshotError, match='not a readable training state'):
        (tmp_path / 'bad.pt').write_bytes(b'garbage')
        load_training_state(str(tmp_path / 'bad.pt'), allow_code=False)
