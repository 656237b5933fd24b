"""train.py: options, configuration, --dry-run output and refused inputs.

The CLI runs in-process here (nothing trains); training runs are tested in tests/test_training_loop.py.
"""

import json
import os

import pytest
import torch

from training import networks, snapshot
from train_helpers import dry_run_options, invoke_train as run_train, make_image_folder

#----------------------------------------------------------------------------
# Golden: the dry-run output of the original for each case of golden/train_options.

GOLDEN_CASES = ['defaults', 'ncsnpp_ve_cbase64_cres12_noaug', 'adm_vp_cond', 'perf_options']

def _golden_run(golden, case):
    runs = json.loads((golden / 'train_options' / 'train_options_runs.json').read_text())
    run = runs[case]
    args = run['cli'].split()[2:] # drop "python train.py"
    data = str(golden / 'dataset_tool' / run['data'])
    return run, args, data

def _substitute(text, data, outdir):
    return text.replace(data, '<DATA>').replace(outdir, '<OUTDIR>')

@pytest.mark.parametrize('case', GOLDEN_CASES)
def test_dry_run_matches_golden(golden, tmp_path, case):
    run, args, data = _golden_run(golden, case)
    outdir = str(tmp_path / 'runs')
    args = [a.replace('<OUTDIR>', outdir).replace('<DATA>', data) for a in args]
    res = run_train(args)
    assert res.returncode == run['returncode'] == 0, res.stderr
    assert _substitute(res.stdout, data, outdir) == (golden / 'train_options' / f'{case}.stdout.txt').read_text()
    assert _substitute(res.stdout, data, outdir) == run['stdout']
    assert not os.path.exists(outdir) # a dry run creates nothing

def test_cond_without_labels_is_refused_like_golden(golden, tmp_path):
    run, args, data = _golden_run(golden, 'adm_vp_cond_nolabels')
    outdir = str(tmp_path / 'runs')
    args = [a.replace('<OUTDIR>', outdir).replace('<DATA>', data) for a in args]
    res = run_train(args)
    assert res.returncode == run['returncode'] == 1
    assert res.stderr.strip() == run['error']['text']
    assert res.stdout == run['stdout']
    assert not os.path.exists(outdir)

#----------------------------------------------------------------------------
# Configuration details beyond the golden cases.

@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    return make_image_folder(str(root / 'tiny16'), num_images=8, resolution=16, labels=True)

def test_lr_rampup_key_only_when_given(tiny_data, tmp_path):
    base = [f'--outdir={tmp_path}/runs', f'--data={tiny_data}', '--seed=1']
    plain = dry_run_options(base)
    assert 'lr_rampup_kimg' not in plain
    given = dry_run_options(base + ['--lr-rampup=0.5'])
    keys = list(given)
    assert given['lr_rampup_kimg'] == 500
    assert keys[keys.index('ema_halflife_kimg') + 1] == 'lr_rampup_kimg' # documented position
    assert [k for k in keys if k != 'lr_rampup_kimg'] == list(plain)

def test_random_seed_is_recorded(tiny_data, tmp_path):
    base = [f'--outdir={tmp_path}/runs', f'--data={tiny_data}']
    seeds = [dry_run_options(base)['seed'] for _ in range(2)]
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)
    assert seeds[0] != seeds[1]

def test_run_dir_numbering_and_nosubdir(tiny_data, tmp_path):
    outdir = tmp_path / 'runs'
    (outdir / '00007-old').mkdir(parents=True)
    (outdir / '00012').write_text('a file, not a run directory')
    (outdir / 'notes').mkdir()
    args = [f'--outdir={outdir}', f'--data={tiny_data}', '--seed=0', '--cond=1', '--desc=abc', '--batch=8']
    options = dry_run_options(args)
    assert options['run_dir'] == str(outdir / '00008-tiny16-cond-ddpmpp-edm-gpus1-batch8-fp32-abc')
    assert run_train(args + ['-n']).stdout.count(f'Output directory:        {outdir}/00008-tiny16-') == 1
    options = dry_run_options(args + ['--nosubdir'])
    assert options['run_dir'] == str(outdir)

#----------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing created.

def _assert_refused(args, tmp_path, message):
    outdir = tmp_path / 'refused-out'
    res = run_train([f'--outdir={outdir}'] + args)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.startswith('Error')]
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert 'Traceback' not in res.stderr
    assert not outdir.exists()

def test_refuses_transfer_with_resume(tiny_data, tmp_path):
    _assert_refused([f'--data={tiny_data}', f'--transfer={tmp_path}/a.pkl', f'--resume={tmp_path}/training-state-000000.pt'],
        tmp_path, '--transfer and --resume cannot be specified at the same time')

def test_refuses_missing_dataset(tmp_path):
    _assert_refused([f'--data={tmp_path}/nothing.zip'], tmp_path, '--data: ')
    _assert_refused([f'--data={tmp_path}/nothing'], tmp_path, '--data: ')

def test_refuses_cond_without_labels(tmp_path):
    data = make_image_folder(str(tmp_path / 'unlabelled'), num_images=4, resolution=16, labels=False)
    _assert_refused([f'--data={data}', '--cond=1'], tmp_path, '--cond=True requires labels specified in dataset.json')

@pytest.mark.parametrize('cres, message', [('1,x', "'--cres'"), ('0,2', "'--cres'"), ('', "'--cres'"), ('1,1,1,1,1,1', '--cres: 6 levels')])
def test_refuses_bad_cres(tiny_data, tmp_path, cres, message):
    _assert_refused([f'--data={tiny_data}', f'--cres={cres}'], tmp_path, message)

def _write_training_state(path):
    net = networks.EDMPrecond(img_resolution=16, img_channels=3, model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[])
    snapshot.save_training_state(str(path), net, torch.optim.Adam(net.parameters()))

def test_refuses_bad_resume(tiny_data, tmp_path):
    expected = '--resume must point to training-state-*.pt from a previous training run'
    wrong_name = tmp_path / 'network-snapshot-000000.pkl'
    wrong_name.write_bytes(b'')
    _assert_refused([f'--data={tiny_data}', f'--resume={wrong_name}'], tmp_path, expected) # wrong name
    _assert_refused([f'--data={tiny_data}', f'--resume={tmp_path}/training-state-000001.pt'], tmp_path, expected) # missing
    lonely = tmp_path / 'lonely'
    lonely.mkdir()
    _write_training_state(lonely / 'training-state-000003.pt') # readable, but its snapshot is missing
    _assert_refused([f'--data={tiny_data}', f'--resume={lonely}/training-state-000003.pt'], tmp_path, 'network-snapshot-000003.pkl')
    (lonely / 'training-state-000003.pt').unlink()
    _assert_refused([f'--data={tiny_data}', f'--resume={lonely}'], tmp_path, 'contains no training-state-*.pt')

def test_refuses_unreadable_resume_state_before_creating_anything(tiny_data, tmp_path):
    states = tmp_path / 'states'
    states.mkdir()
    _write_training_state(states / 'training-state-000004.pt')
    whole = (states / 'training-state-000004.pt').read_bytes()
    (states / 'training-state-000005.pt').write_bytes(whole[:len(whole) // 2])
    (states / 'training-state-000006.pt').write_bytes(b'not a training state' * 10)
    for kimg, reason in [(5, 'not a readable training state (truncated'), (6, 'not a readable training state (neither')]:
        (states / f'network-snapshot-{kimg:06d}.pkl').write_bytes(b'')
        _assert_refused([f'--data={tiny_data}', f'--resume={states}/training-state-{kimg:06d}.pt'], tmp_path,
            f'--resume: {states}/training-state-{kimg:06d}.pt: {reason}')
    (states / 'network-snapshot-000004.pkl').write_bytes(b'\x80\x04broken')
    _assert_refused([f'--data={tiny_data}', f'--resume={states}/training-state-000004.pt'], tmp_path, 'network-snapshot-000004.pkl')

@pytest.mark.parametrize('batch, message', [(['--batch=6', '--batch-gpu=4'], '--batch=6 gives 6 images per process and step, which is not a multiple of --batch-gpu=4'),
                                            (['--batch=8', '--batch-gpu=3'], '--batch-gpu=3')])
def test_refuses_batch_that_does_not_split(tiny_data, tmp_path, batch, message):
    _assert_refused([f'--data={tiny_data}'] + batch, tmp_path, message)

def test_batch_gpu_above_the_batch_is_fine(tiny_data, tmp_path):
    assert dry_run_options([f'--outdir={tmp_path}/runs', f'--data={tiny_data}', '--batch=4', '--batch-gpu=16'])['batch_gpu'] == 16

def test_refuses_outdir_that_cannot_be_written(tiny_data, tmp_path):
    (tmp_path / 'a_file').write_text('')
    for outdir, message in [(tmp_path / 'a_file', 'exists and is not a directory'), (tmp_path / 'a_file' / 'runs', 'is a file'),
                            ('/proc/edm-test/runs', 'cannot write to "/proc/edm-test/runs"')]:
        res = run_train([f'--outdir={outdir}', f'--data={tiny_data}', '--dry-run'])
        errors = [line for line in res.stderr.splitlines() if line.startswith('Error')]
        assert res.returncode != 0 and len(errors) == 1 and '--outdir: ' in errors[0] and message in errors[0], res.stderr
    assert sorted(os.listdir(tmp_path)) == ['a_file']

def test_refuses_bad_transfer(tiny_data, tmp_path):
    _assert_refused([f'--data={tiny_data}', f'--transfer={tmp_path}/missing.pkl'], tmp_path, '--transfer: ')
    corrupt = tmp_path / 'corrupt.pkl'
    corrupt.write_bytes(b'\x80\x04this is not a pickle')
    _assert_refused([f'--data={tiny_data}', f'--transfer={corrupt}'], tmp_path, '--transfer: ')

def test_help_lists_every_option():
    res = run_train(['--help'])
    assert res.returncode == 0
    for option in ['--outdir', '--data', '--cond', '--arch', '--precond', '--duration', '--batch', '--batch-gpu', '--cbase',
                   '--cres', '--lr', '--lr-rampup', '--ema', '--dropout', '--augment', '--xflip', '--fp16', '--ls', '--bench',
                   '--cache', '--workers', '--desc', '--nosubdir', '--tick', '--snap', '--dump', '--seed', '--transfer',
                   '--resume', '--dry-run']:
        assert option in res.stdout
    for option in ['--fast', '--bf16', '--channels-last', '--tf32', '--compile', '--fused']:
        assert option in res.stdout

def test_help_lists_the_monitoring_options():
    res = run_train(['--help'])
    assert res.returncode == 0 and '18-step EDM sampler' in res.stdout
    for option in ['--grid', '--metrics', '--fid-ref', '--fid-num', '--fid-detector', '--tensorboard', '--label-dropout']:
        assert option in res.stdout

def test_resume_from_run_dir_picks_latest_resumable_state(tiny_data, tmp_path):
    run_dir = tmp_path / 'old-run'
    run_dir.mkdir()
    for name in ['training-state-000002.pt', 'network-snapshot-000002.pkl', 'training-state-000010.pt', 'network-snapshot-000010.pkl',
                 'training-state-000012.pt', 'network-snapshot-000011.pkl', 'network-snapshot-000020.pkl', '.training-state-000030.pt.tmp-1234abcd']:
        (run_dir / name).write_bytes(b'')
    options = dry_run_options([f'--outdir={tmp_path}/runs', f'--data={tiny_data}', '--seed=0', f'--resume={run_dir}'])
    assert options['resume_state_dump'] == str(run_dir / 'training-state-000010.pt') # 000012 has no snapshot
    assert options['resume_pkl'] == str(run_dir / 'network-snapshot-000010.pkl') and options['resume_kimg'] == 10

#----------------------------------------------------------------------------
# The fast path: its options are recorded last, and only when a knob is on.

FAST_KNOBS = ['bf16', 'channels_last', 'tf32', 'compile', 'fused']

def _fast_options(tiny_data, tmp_path, extra):
    return dry_run_options([f'--outdir={tmp_path}/runs', f'--data={tiny_data}', '--seed=0'] + extra)

def test_fast_records_the_fastest_knobs_for_the_device(tiny_data, tmp_path):
    from training import fast_path # pylint: disable=import-outside-toplevel
    plain = _fast_options(tiny_data, tmp_path, [])
    options = _fast_options(tiny_data, tmp_path, ['--fast'])
    assert list(options) == list(plain) + ['fast_kwargs'] # appended, nothing else changes
    assert {key: value for key, value in options.items() if key != 'fast_kwargs'} == plain
    assert options['fast_kwargs'] == fast_path.fastest_for('cuda' if torch.cuda.is_available() else 'cpu').as_dict()
    assert list(options['fast_kwargs']) == FAST_KNOBS

@pytest.mark.parametrize('knob', FAST_KNOBS)
def test_each_knob_alone_is_recorded(tiny_data, tmp_path, knob):
    option = '--' + knob.replace('_', '-')
    options = _fast_options(tiny_data, tmp_path, [f'{option}=1'])
    assert options['fast_kwargs'] == {name: name == knob for name in FAST_KNOBS}
    assert options['run_dir'].endswith('-bf16' if knob == 'bf16' else '-fp32')
    assert 'fast_kwargs' not in _fast_options(tiny_data, tmp_path, [f'{option}=0']) # nothing on: a faithful run

def test_knobs_override_fast(tiny_data, tmp_path):
    options = _fast_options(tiny_data, tmp_path, ['--fast', '--channels-last=0', '--compile=1'])
    assert options['fast_kwargs']['channels_last'] is False and options['fast_kwargs']['compile'] is True
    assert options['fast_kwargs']['fused'] is True # as --fast has it on every device
    everything_off = ['--fast'] + [f'--{knob.replace("_", "-")}=0' for knob in FAST_KNOBS]
    assert 'fast_kwargs' not in _fast_options(tiny_data, tmp_path, everything_off)

def test_fast_path_is_named_in_the_summary(tiny_data, tmp_path):
    res = run_train([f'--outdir={tmp_path}/runs', f'--data={tiny_data}', '--fused=1', '--channels-last=1', '-n'])
    assert res.returncode == 0 and 'Fast path:               channels_last, fused' in res.stdout

def test_refuses_fp16_with_bf16(tiny_data, tmp_path):
    _assert_refused([f'--data={tiny_data}', '--fp16=1', '--bf16=1'], tmp_path, '--fp16 and --bf16 exclude each other')
