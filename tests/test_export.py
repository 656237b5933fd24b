"""Export of networks to safetensors and back (training/export.py)."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from training import export, loss, networks
from training.export import ExportError, export_network, is_exported, load_exported
from training.snapshot import SnapshotError, save_snapshot

pytest.importorskip('safetensors')
pytestmark = pytest.mark.usefixtures('one_thread')

SONG = dict(model_type='SongUNet', model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
DHARIWAL = dict(model_type='DhariwalUNet', model_channels=64, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[4])

NETWORKS = {
    'edm-song': lambda: networks.EDMPrecond(img_resolution=8, img_channels=3, label_dim=2, augment_dim=9, dropout=0, **SONG),
    'vp-song': lambda: networks.VPPrecond(8, 3, **SONG),
    'edm-dhariwal': lambda: networks.EDMPrecond(img_resolution=8, img_channels=1, label_dim=2, **DHARIWAL),
    'iddpm-dhariwal': lambda: networks.iDDPMPrecond(img_resolution=8, img_channels=3, **DHARIWAL),
}

def trained(name, seed=0):
    """A tiny network whose weights are all random (none left at their zero initialisation)."""
    torch.manual_seed(seed)
    net = NETWORKS[name]()
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return net.eval().requires_grad_(False)

def denoised(net):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, net.img_channels, 8, 8, generator=g)
    labels = torch.eye(net.label_dim) if net.label_dim else None
    with torch.no_grad():
        return net(x, torch.tensor([0.3, 7.0]), labels)

def run_cli(*args):
    return CliRunner().invoke(export.main, list(args))

#----------------------------------------------------------------------------
# Round trip.

@pytest.mark.parametrize('name', list(NETWORKS))
def test_round_trip_gives_identical_outputs(tmp_path, name):
    net = trained(name)
    dest = tmp_path / 'exported'
    export_network(net, str(dest))
    assert sorted(os.listdir(dest)) == ['config.json', 'model.safetensors']
    for path in (dest, str(dest / 'model.safetensors')):
        loaded = load_exported(path)
        assert type(loaded) is type(net)
        assert torch.equal(denoised(loaded), denoised(net))
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        assert loaded.state_dict().keys() == net.state_dict().keys()

def test_loading_leaves_the_global_random_stream_alone(tmp_path):
    export_network(trained('edm-song'), str(tmp_path / 'e'))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_exported(str(tmp_path / 'e'))
    assert torch.equal(torch.rand(3), expected)

def test_cli_exports_the_ema_of_a_snapshot(tmp_path):
    net = trained('edm-song')
    pkl = tmp_path / 'network-snapshot-000000.pkl'
    save_snapshot(str(pkl), dict(ema=net, loss_fn=loss.EDMLoss(), augment_pipe=None, dataset_kwargs={}))
    dest = tmp_path / 'out' / 'exported'
    result = subprocess.run([sys.executable, '-m', 'training.export', f'--network={pkl}', f'--dest={dest}'],
                            capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert result.returncode == 0, result.stderr
    assert is_exported(str(dest))
    assert torch.equal(denoised(load_exported(str(dest))), denoised(net))

def test_cli_accepts_an_existing_empty_folder(tmp_path):
    net = trained('vp-song')
    pkl = tmp_path / 'snap.pkl'
    save_snapshot(str(pkl), dict(ema=net))
    (tmp_path / 'empty').mkdir()
    result = run_cli(f'--network={pkl}', f'--dest={tmp_path / "empty"}')
    assert result.exit_code == 0, result.output
    assert torch.equal(denoised(load_exported(str(tmp_path / 'empty'))), denoised(net))

#----------------------------------------------------------------------------
# config.json.

def test_config_records_class_and_constructor_arguments(tmp_path):
    torch.manual_seed(0)
    net = networks.EDMPrecond(8, 3, sigma_data=np.float32(0.25), model_type='SongUNet', model_channels=8,
                              channel_mult=(1, 2), num_blocks=np.int64(1), attn_resolutions=[4])
    export_network(net, str(tmp_path / 'e'))
    config = json.loads((tmp_path / 'e' / 'config.json').read_text())
    assert config == {
        'class_name': 'training.networks.EDMPrecond',
        'init_args': [8, 3],
        'init_kwargs': dict(sigma_data=0.25, model_type='SongUNet', model_channels=8, channel_mult=[1, 2],
                            num_blocks=1, attn_resolutions=[4]),
    }
    assert type(config['init_kwargs']['num_blocks']) is int
    assert load_exported(str(tmp_path / 'e')).sigma_data == 0.25

def test_only_persistent_networks_can_be_exported(tmp_path):
    for net in (torch.nn.Linear(2, 2), loss.EDMLoss()):
        with pytest.raises(ExportError, match='only the persistent classes of training.networks'):
            export_network(net, str(tmp_path / 'e'))
    assert not (tmp_path / 'e').exists()

#----------------------------------------------------------------------------
# Destination.

@pytest.mark.parametrize('occupied', ['folder', 'file'])
def test_cli_refuses_an_occupied_destination(tmp_path, occupied):
    pkl = tmp_path / 'snap.pkl'
    save_snapshot(str(pkl), dict(ema=trained('edm-song')))
    dest = tmp_path / 'dest'
    if occupied == 'folder':
        dest.mkdir()
        (dest / 'keep.txt').write_text('mine')
    else:
        dest.write_text('mine')
    result = run_cli(f'--network={pkl}', f'--dest={dest}')
    assert result.exit_code == 1
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and 'not an empty folder' in message[0] and str(dest) in message[0]
    if occupied == 'folder':
        assert os.listdir(dest) == ['keep.txt'] and (dest / 'keep.txt').read_text() == 'mine'
    else:
        assert dest.read_text() == 'mine'

def test_cli_reports_an_unreadable_pickle_in_one_line(tmp_path):
    result = run_cli(f'--network={tmp_path / "missing.pkl"}', f'--dest={tmp_path / "e"}')
    assert result.exit_code == 1
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith('Error: ') and 'missing.pkl' in message[0]
    assert not (tmp_path / 'e').exists()

@pytest.mark.parametrize('existing', [False, True])
def test_failed_export_leaves_nothing(tmp_path, monkeypatch, existing):
    dest = tmp_path / 'e'
    if existing:
        dest.mkdir()
    def fail(*_args, **_kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(export, 'json', types.SimpleNamespace(dumps=fail))
    with pytest.raises(OSError, match='disk full'):
        export_network(trained('edm-song'), str(dest))
    assert os.listdir(tmp_path) == (['e'] if existing else [])
    assert not existing or os.listdir(dest) == []

#----------------------------------------------------------------------------
# Errors on reading.

def test_missing_package_gives_one_line_install_hint(tmp_path, monkeypatch):
    net = trained('edm-song')
    export_network(net, str(tmp_path / 'e'))
    pkl = tmp_path / 'snap.pkl'
    save_snapshot(str(pkl), dict(ema=net))
    monkeypatch.setitem(sys.modules, 'safetensors', None)
    monkeypatch.setitem(sys.modules, 'safetensors.torch', None)
    for call in (lambda: load_exported(str(tmp_path / 'e')), lambda: export_network(net, str(tmp_path / 'f'))):
        with pytest.raises(ExportError) as info:
            call()
        assert 'pip install safetensors' in str(info.value) and '\n' not in str(info.value)
    assert not (tmp_path / 'f').exists()
    result = run_cli(f'--network={pkl}', f'--dest={tmp_path / "g"}')
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [f'Error: {info.value}']
    assert not (tmp_path / 'g').exists()

@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'empty'])
def test_corrupt_weights_file_is_named(tmp_path, damage):
    export_network(trained('edm-song'), str(tmp_path / 'e'))
    weights = tmp_path / 'e' / 'model.safetensors'
    data = weights.read_bytes()
    weights.write_bytes({'garbage': b'\x13not safetensors at all' * 10, 'truncated': data[:len(data) // 2], 'empty': b''}[damage])
    with pytest.raises(SnapshotError) as info:
        load_exported(str(tmp_path / 'e'))
    assert type(info.value) is ExportError
    assert str(info.value).startswith(f'{weights}: ') and '\n' not in str(info.value)

def test_missing_files_are_named(tmp_path):
    export_network(trained('edm-song'), str(tmp_path / 'e'))
    os.remove(tmp_path / 'e' / 'config.json')
    with pytest.raises(ExportError, match='config.json: no such file'):
        load_exported(str(tmp_path / 'e' / 'model.safetensors'))
    with pytest.raises(ExportError, match='other.safetensors: no such file'):
        export_network(trained('edm-song'), str(tmp_path / 'f'))
        load_exported(str(tmp_path / 'f' / 'other.safetensors'))

@pytest.mark.parametrize('class_name', ['os.system', 'builtins.eval', 'training.loss.EDMLoss', 'training.networks.Preconditioner',
                                        'training.networks.torch', 'training.networks.math.sqrt', 'EDMPrecond', 'training.networks.'])
def test_config_naming_anything_but_a_network_class_is_refused(tmp_path, class_name):
    export_network(trained('edm-song'), str(tmp_path / 'e'))
    config_path = tmp_path / 'e' / 'config.json'
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, class_name=class_name)))
    with pytest.raises(ExportError, match='refusing to build it') as info:
        load_exported(str(tmp_path / 'e'))
    assert str(info.value).startswith(f'{config_path}: ')

@pytest.mark.parametrize('text', ['{not json', '[]', '{"class_name": "training.networks.EDMPrecond"}'])
def test_malformed_config_is_named(tmp_path, text):
    export_network(trained('edm-song'), str(tmp_path / 'e'))
    config_path = tmp_path / 'e' / 'config.json'
    config_path.write_text(text)
    with pytest.raises(ExportError) as info:
        load_exported(str(tmp_path / 'e'))
    assert str(info.value).startswith(f'{config_path}: ') and '\n' not in str(info.value)

def test_tensors_that_do_not_fit_the_config_are_refused(tmp_path):
    export_network(trained('edm-song'), str(tmp_path / 'e'))
    config_path = tmp_path / 'e' / 'config.json'
    config = json.loads(config_path.read_text())
    config['init_kwargs']['model_channels'] = 16
    config_path.write_text(json.dumps(config))
    with pytest.raises(ExportError, match='of another shape') as info:
        load_exported(str(tmp_path / 'e'))
    assert str(info.value).startswith(str(tmp_path / 'e' / 'model.safetensors')) and '\n' not in str(info.value)

def test_is_exported(tmp_path):
    export_network(trained('edm-song'), str(tmp_path / 'e'))
    assert is_exported(str(tmp_path / 'e')) and is_exported(tmp_path / 'e')
    assert is_exported(str(tmp_path / 'e' / 'model.safetensors'))
    os.remove(tmp_path / 'e' / 'config.json')
    assert not is_exported(str(tmp_path / 'e'))
    assert not is_exported(str(tmp_path / 'snap.pkl'))
    assert not is_exported('https://example.com/model.safetensors')

#----------------------------------------------------------------------------
# The tools accept an export wherever they accept a network pickle (through load_snapshot).

def test_generate_gives_the_same_images_from_the_export(tmp_path):
    import generate # pylint: disable=import-outside-toplevel
    net = trained('edm-song')
    pkl = tmp_path / 'net.pkl'
    save_snapshot(str(pkl), dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs={}))
    export_network(net, str(tmp_path / 'exported'))
    outputs = {}
    for name, source in [('pkl', pkl), ('dir', tmp_path / 'exported'), ('file', tmp_path / 'exported' / 'model.safetensors')]:
        outdir = tmp_path / f'out-{name}'
        result = CliRunner().invoke(generate.main, [f'--network={source}', f'--outdir={outdir}', '--seeds=0-2', '--steps=4'])
        assert result.exit_code == 0, result.output
        outputs[name] = {file: (outdir / file).read_bytes() for file in sorted(os.listdir(outdir))}
    assert len(outputs['pkl']) == 3
    assert outputs['dir'] == outputs['pkl'] and outputs['file'] == outputs['pkl']

def test_load_snapshot_and_transfer_accept_the_export(tmp_path):
    from training.snapshot import load_snapshot # pylint: disable=import-outside-toplevel
    from train_helpers import dry_run_options, make_image_folder # pylint: disable=import-outside-toplevel
    net = trained('edm-song')
    export_network(net, str(tmp_path / 'exported'))
    data = load_snapshot(str(tmp_path / 'exported'))
    assert set(data) == {'ema'}
    assert torch.equal(denoised(data['ema']), denoised(net))
    folder = make_image_folder(str(tmp_path / 'data'), num_images=4, resolution=8)
    options = dry_run_options([f'--outdir={tmp_path / "runs"}', f'--data={folder}', f'--transfer={tmp_path / "exported"}'])
    assert options['resume_pkl'] == str(tmp_path / 'exported')
