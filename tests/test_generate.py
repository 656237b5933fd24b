"""generate.py (cli.md section 2) against the golden PNGs of the original (golden README section 3),
under torchrun, and on bad input."""

import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import generate
from torch_utils import persistence
from training import fast_path, generation, networks
from training.samplers import StackedRandomGenerator, ablation_sampler, dpmpp2m_sampler, edm_sampler, euler_ancestral_sampler

from sampling_helpers import WEIGHTS, cli_args, golden_network, sampling_meta, write_snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_SETS = ['i_default_b3', 'ii_default_b8', 'iii_class2', 'iv_churn', 'v_euler_vp',
               'vi_heun_iddpm_linear', 'vii_ve', 'viii_subdirs']

pytestmark = pytest.mark.usefixtures('one_thread')

@pytest.fixture(autouse=True)
def no_code_execution(monkeypatch):
    monkeypatch.delenv('EDM_ALLOW_PICKLE_CODE', raising=False)

@pytest.fixture(scope='module')
def snapshots(golden, tmp_path_factory):
    """Snapshots of the golden case-(a) network with 'pert' and 'init' weights, and a tiny
    unconditional one-channel network."""
    root = tmp_path_factory.mktemp('snapshots')
    paths = {weights: write_snapshot(golden_network(golden, weights), root / f'{weights}.pkl') for weights in WEIGHTS}
    torch.manual_seed(0)
    gray = networks.EDMPrecond(img_resolution=8, img_channels=1, label_dim=0, model_type='SongUNet', model_channels=8,
                               channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0)
    paths['gray'] = write_snapshot(gray.eval().requires_grad_(False), root / 'gray.pkl')
    return paths

def run_generate(args):
    """Run generate.py in-process; returns click's Result."""
    return CliRunner().invoke(generate.main, [str(arg) for arg in args])

def list_files(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root) for folder, _, names in os.walk(root) for name in names)

def read_pngs(outdir, names):
    images = [PIL.Image.open(os.path.join(outdir, name)) for name in names]
    return [image.mode for image in images], np.stack([np.array(image) for image in images])

def assert_pixels_match(actual, ref):
    """Golden README tolerance: identical expected; at most 1 level off in < 0.1 % of the values."""
    diff = np.abs(actual.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 1 and np.count_nonzero(diff) < 1e-3 * diff.size

#----------------------------------------------------------------------------
# Options (cli.md 2.1).

def test_options_defaults_and_metavars():
    params = generate.main.make_context('generate.py', ['--network=n.pkl', '--outdir=out']).params
    assert params == dict(network_pkl='n.pkl', outdir='out', seeds=list(range(64)), subdirs=False, class_idx=None,
                          max_batch_size=64, num_steps=18, sigma_min=None, sigma_max=None, rho=7, S_churn=0, S_min=0,
                          S_max=float('inf'), S_noise=1, solver=None, discretization=None, schedule=None, scaling=None,
                          guidance=1, gnet=None, fast=False, bf16=None, channels_last=None, tf32=None, compile_unet=None, fused=None)
    metavars = {param.opts[0]: param.metavar for param in generate.main.params}
    assert metavars == {'--network': 'PATH|URL', '--outdir': 'DIR', '--seeds': 'LIST', '--subdirs': None, '--class': 'INT',
                        '--batch': 'INT', '--steps': 'INT', '--sigma_min': 'FLOAT', '--sigma_max': 'FLOAT', '--rho': 'FLOAT',
                        '--S_churn': 'FLOAT', '--S_min': 'FLOAT', '--S_max': 'FLOAT', '--S_noise': 'FLOAT',
                        '--solver': 'SOLVER', '--disc': 'vp|ve|iddpm|edm', '--schedule': 'vp|ve|linear', '--scaling': 'vp|none',
                        '--guidance': 'FLOAT', '--gnet': 'PATH|URL', '--fast': None, '--bf16': 'BOOL', '--channels-last': 'BOOL', '--tf32': 'BOOL', '--compile': 'BOOL', '--fused': 'BOOL'}
    help_text = ' '.join(CliRunner().invoke(generate.main, ['--help']).output.split()) # Undo line wrapping.
    for shown in ['[default: 0-63]', '[default: 64; x>=1]', '[default: 18; x>=1]', 'x>0', '[default: inf; x>=0]', '[default: random]', '[default: varies]']:
        assert shown in help_text
    parsed = generate.main.make_context('generate.py', ['--network=n', '--outdir=o', '--seeds=1,2,5-7', '--S_churn=40', '--disc=vp', '--subdirs']).params
    assert parsed['seeds'] == [1, 2, 5, 6, 7] and parsed['S_churn'] == 40 and parsed['discretization'] == 'vp' and parsed['subdirs']

#----------------------------------------------------------------------------
# Golden reproduction.

@pytest.mark.parametrize('weights', WEIGHTS)
@pytest.mark.parametrize('set_name', GOLDEN_SETS)
def test_generate_matches_golden_pngs(golden, snapshots, tmp_path, weights, set_name):
    meta = sampling_meta(golden)
    ref = np.load(golden / 'sampling' / 'sampling.npz')
    outdir = tmp_path / 'out'
    result = run_generate(cli_args(golden, set_name, snapshots[weights], outdir))
    assert result.exit_code == 0, result.output
    names = meta['png_files'][weights][set_name]
    assert list_files(outdir) == sorted(names) # Nothing else (no temporary files) is left behind.
    modes, images = read_pngs(outdir, names)
    assert set(modes) == set(meta['png_modes'][weights][set_name])
    seeds = ref[f'{weights}/{set_name}/seeds'].tolist()
    assert [int(os.path.basename(name)[:-4]) for name in names] == seeds
    assert_pixels_match(images, ref[f'{weights}/{set_name}/images'])

def test_images_do_not_depend_on_batch_size(snapshots, tmp_path):
    # Beyond the golden --batch=3 / --batch=8 pair: batches of 5 ([0-4], [5-7]), with churn. The
    # draws are per seed; only float32 kernel noise of the network may differ between batch sizes.
    for batch in (3, 8, 5):
        result = run_generate([f'--network={snapshots["pert"]}', f'--outdir={tmp_path / f"b{batch}"}', '--seeds=0-7',
                               f'--batch={batch}', '--steps=8', '--S_churn=10'])
        assert result.exit_code == 0, result.output
    names = list_files(tmp_path / 'b8')
    assert len(names) == 8
    for batch in (3, 5):
        assert list_files(tmp_path / f'b{batch}') == names
        assert_pixels_match(read_pngs(tmp_path / f'b{batch}', names)[1], read_pngs(tmp_path / 'b8', names)[1])

def test_class_label_is_drawn_even_when_forced(golden, snapshots, tmp_path):
    """With churn the per-step noise shows in the images, so they reveal whether each seed's
    generator drew its class index before the noise (cli.md 2.2 item 5b) although --class is given."""
    result = run_generate([f'--network={snapshots["pert"]}', f'--outdir={tmp_path}', '--seeds=0-1', '--class=2', '--steps=4', '--S_churn=20'])
    assert result.exit_code == 0, result.output
    _, images = read_pngs(tmp_path, ['000000.png', '000001.png'])
    net = golden_network(golden, 'pert')
    expected = {}
    for draw_class in (True, False):
        rnd = StackedRandomGenerator(torch.device('cpu'), [0, 1])
        latents = rnd.randn([2, 3, 16, 16])
        if draw_class:
            rnd.randint(4, size=[2])
        class_labels = torch.eye(4)[[2, 2]]
        with torch.no_grad():
            expected[draw_class] = generation.to_uint8(edm_sampler(net, latents, class_labels, randn_like=rnd.randn_like, num_steps=4, S_churn=20)).numpy()
    assert_pixels_match(images, expected[True])
    assert np.abs(images.astype(int) - expected[False]).max() > 10

def test_one_channel_network_writes_mode_L(snapshots, tmp_path):
    result = run_generate([f'--network={snapshots["gray"]}', f'--outdir={tmp_path / "out"}', '--seeds=3,12345', '--steps=4', '--subdirs'])
    assert result.exit_code == 0, result.output
    assert list_files(tmp_path / 'out') == ['000000/000003.png', '012000/012345.png']
    modes, images = read_pngs(tmp_path / 'out', ['000000/000003.png', '012000/012345.png'])
    assert modes == ['L', 'L'] and images.shape == (2, 8, 8)

def test_rerun_reports_replaced_images(snapshots, tmp_path):
    args = [f'--network={snapshots["gray"]}', f'--outdir={tmp_path}', '--seeds=0-2', '--steps=2']
    assert 'already exist' not in run_generate(args).output
    result = run_generate(args + ['--seeds=1-4'])
    assert result.exit_code == 0 and '2 of these images already exist and will be replaced' in result.output

def test_generate_images_yields_the_cli_pixels(golden, snapshots, tmp_path):
    # The Python API, given the snapshot path or a loaded network, against the PNGs of the command line.
    result = run_generate([f'--network={snapshots["pert"]}', f'--outdir={tmp_path}', '--seeds=2,5,1003', '--batch=2',
                           '--steps=5', '--S_churn=10', '--subdirs'])
    assert result.exit_code == 0, result.output
    _, expected = read_pngs(tmp_path, ['000000/000002.png', '000000/000005.png', '001000/001003.png'])
    batches = list(generation.generate_images(str(snapshots['pert']), [2, 5, 1003], max_batch_size=2, device='cpu',
                                              num_steps=5, S_churn=10, solver=None))
    assert [batch.seeds for batch in batches] == [[2, 5], [1003]]
    images = torch.cat([batch.images for batch in batches])
    assert images.dtype == torch.uint8 and images.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(images.numpy(), expected)
    labels = torch.cat([batch.labels for batch in batches])
    assert labels.dtype == torch.int64 and labels.shape == (3,) and 0 <= labels.min() <= labels.max() < 4

    # A network object, all seeds in one batch, and a fixed class.
    [batch] = generation.generate_images(golden_network(golden, 'pert'), [2, 5], class_idx=3, device='cpu', num_steps=5)
    assert batch.seeds == [2, 5] and batch.labels.tolist() == [3, 3]
    with pytest.raises(ValueError, match='out of range'):
        next(generation.generate_images(golden_network(golden, 'pert'), [0], class_idx=4, device='cpu'))

#----------------------------------------------------------------------------
# The solvers with one network evaluation per step (--solver=dpmpp2m, --solver=euler_a).

def test_choose_sampler_routes_the_solvers():
    assert generation.choose_sampler(dict(num_steps=5, solver=None, S_churn=None)) == (edm_sampler, dict(num_steps=5))
    assert generation.choose_sampler(dict(solver='heun', discretization='vp'))[0] is ablation_sampler
    edm_defaults = dict(discretization='edm', schedule='linear', scaling='none', S_churn=0, S_min=0, S_max=float('inf'), S_noise=1)
    for solver, sampler in (('dpmpp2m', dpmpp2m_sampler), ('euler_a', euler_ancestral_sampler)):
        chosen = generation.choose_sampler(dict(num_steps=5, rho=6, sigma_min=None, solver=solver, **edm_defaults))
        assert chosen == (sampler, dict(num_steps=5, rho=6))
        for key, value in (('discretization', 'vp'), ('scaling', 'vp'), ('S_churn', 10), ('S_noise', 1.01)):
            with pytest.raises(ValueError, match=f'{key}={value}'):
                generation.choose_sampler(dict(edm_defaults, solver=solver, **{key: value}))

@pytest.mark.parametrize('solver, sampler', [('dpmpp2m', dpmpp2m_sampler), ('euler_a', euler_ancestral_sampler)])
def test_generate_runs_the_one_evaluation_solvers(snapshots, tmp_path, solver, sampler):
    result = run_generate([f'--network={snapshots["gray"]}', f'--outdir={tmp_path}', '--seeds=4,6,8', '--batch=2', '--steps=6',
                           f'--solver={solver}', '--disc=edm', '--S_churn=0'])
    assert result.exit_code == 0, result.output
    _, images = read_pngs(tmp_path, ['000004.png', '000006.png', '000008.png'])
    with open(snapshots['gray'], 'rb') as f:
        net = pickle.load(f)['ema']
    rnd = StackedRandomGenerator(torch.device('cpu'), [4, 6, 8])
    latents = rnd.randn([3, 1, 8, 8])
    with torch.no_grad():
        expected = generation.to_uint8(sampler(net, latents, randn_like=rnd.randn_like, num_steps=6)).numpy()
    assert_pixels_match(images, expected[..., 0])

#----------------------------------------------------------------------------
# The fast path: close to the faithful images, reproducible for a given batch size.

def test_fast_writes_pngs_close_to_the_faithful_ones(snapshots, tmp_path):
    base = [f'--network={snapshots["pert"]}', '--seeds=0-3', '--steps=4']
    faithful = run_generate(base + [f'--outdir={tmp_path / "faithful"}'])
    fast = run_generate(base + [f'--outdir={tmp_path / "fast"}', '--fast'])
    assert faithful.exit_code == 0 and fast.exit_code == 0, fast.output
    knobs = fast_path.fastest_for('cpu').as_dict()
    assert 'Fast path: ' + ', '.join(knob for knob, on in knobs.items() if on) in fast.output
    assert 'Fast path' not in faithful.output
    names = list_files(tmp_path / 'faithful')
    assert list_files(tmp_path / 'fast') == names == [f'{seed:06d}.png' for seed in range(4)]
    modes, images = read_pngs(tmp_path / 'fast', names)
    diff = np.abs(images.astype(int) - read_pngs(tmp_path / 'faithful', names)[1])
    assert set(modes) == {'RGB'} and diff.mean() < 2

def test_bf16_alone_runs_the_network_in_bfloat16(golden, snapshots, tmp_path, monkeypatch):
    net = golden_network(golden, 'pert')
    model_dtypes = []
    net.model.register_forward_hook(lambda _module, _inputs, output: model_dtypes.append(output.dtype))
    monkeypatch.setattr(generate, 'load_network', lambda _path: net)
    result = run_generate([f'--network={snapshots["pert"]}', f'--outdir={tmp_path / "bf16"}', '--seeds=0-3', '--steps=4', '--bf16=1'])
    assert result.exit_code == 0, result.output
    assert 'Fast path: bf16\n' in result.output
    assert set(model_dtypes) == {torch.bfloat16} and len(model_dtypes) == 7 # 2 N - 1 evaluations.
    assert next(net.parameters()).dtype == torch.float32
    names = list_files(tmp_path / 'bf16')
    run_generate([f'--network={snapshots["pert"]}', f'--outdir={tmp_path / "faithful"}', '--seeds=0-3', '--steps=4'])
    diff = np.abs(read_pngs(tmp_path / 'bf16', names)[1].astype(int) - read_pngs(tmp_path / 'faithful', names)[1])
    assert 0 < diff.mean() < 5

def test_explicit_knobs_override_fast(snapshots, tmp_path):
    args = [f'--network={snapshots["gray"]}', f'--outdir={tmp_path}', '--seeds=0', '--steps=2', '--fast', '--channels-last=0',
            '--fused=0', '--bf16=0', '--tf32=0']
    result = run_generate(args)
    assert result.exit_code == 0 and 'Fast path' not in result.output, result.output
    result = run_generate(args[:-1] + ['--tf32=1'])
    assert result.exit_code == 0 and 'Fast path: tf32\n' in result.output, result.output

def test_fast_path_is_deterministic_for_a_batch_size(snapshots, tmp_path):
    for run in ('first', 'second'):
        result = run_generate([f'--network={snapshots["pert"]}', f'--outdir={tmp_path / run}', '--seeds=0-4', '--batch=3',
                               '--steps=4', '--S_churn=10', '--fast', '--bf16=1'])
        assert result.exit_code == 0, result.output
    names = list_files(tmp_path / 'first')
    assert len(names) == 5 and list_files(tmp_path / 'second') == names
    for name in names:
        assert (tmp_path / 'first' / name).read_bytes() == (tmp_path / 'second' / name).read_bytes()

def test_faithful_after_fast_in_one_process_is_unchanged(golden, snapshots):
    # The fast path's switches are process-wide (the attention kernel); a later faithful call resets them.
    def sample(fast):
        [batch] = generation.generate_images(golden_network(golden, 'pert'), [0, 1], device='cpu', fast=fast, num_steps=3)
        return batch.images.numpy()
    before = sample(fast_path.FastPath())
    sample(fast_path.FastPath(fused=True, channels_last=True))
    np.testing.assert_array_equal(sample(fast_path.FastPath()), before)

def test_compile_compiles_the_unet(golden, monkeypatch):
    modes = []
    net = golden_network(golden, 'pert')
    monkeypatch.setattr(net.model, 'compile', lambda mode=None: modes.append(mode))
    denoiser = generation.prepare_denoiser(net, fast_path.FastPath(compile=True), torch.device('cpu'))
    assert modes == [None] and isinstance(denoiser, generation.FastDenoiser) # CUDA graphs ("reduce-overhead") on CUDA only.
    assert generation.prepare_denoiser(net, fast_path.FastPath(), torch.device('cpu')) is net

#----------------------------------------------------------------------------
# Multi-process generation.

def test_torchrun_writes_the_same_files_as_one_process(snapshots, tmp_path):
    # Seeds 0,1,1001 in batches of 1 on 2 ranks: 4 batches [0] [1] [1001] [], so rank 1 gets an empty one.
    args = [f'--network={snapshots["pert"]}', '--seeds=0,1,1001', '--batch=1', '--subdirs', '--steps=6']
    single = run_generate(args + [f'--outdir={tmp_path / "single"}'])
    assert single.exit_code == 0, single.output
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'generate.py'] + args + [f'--outdir={tmp_path / "multi"}']
    multi = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr
    assert multi.stdout.count('Done.') == 1 # Only rank 0 prints.
    names = list_files(tmp_path / 'single')
    assert names == ['000000/000000.png', '000000/000001.png', '001000/001001.png']
    assert list_files(tmp_path / 'multi') == names
    for name in names:
        assert (tmp_path / 'multi' / name).read_bytes() == (tmp_path / 'single' / name).read_bytes()

#----------------------------------------------------------------------------
# Bad input: one line, non-zero exit, no output folder.

@persistence.persistent_class
class UnknownNet(torch.nn.Module):
    pass

def assert_refused(result, outdir, *fragments, exit_code=1):
    assert result.exit_code == exit_code
    error_lines = [line for line in result.output.splitlines() if line.startswith('Error: ')]
    assert len(error_lines) == 1 and all(fragment in error_lines[0] for fragment in fragments), result.output
    assert not os.path.exists(outdir)

def test_bad_network_pickles_are_refused(snapshots, tmp_path):
    good = snapshots['pert'].read_bytes()
    (tmp_path / 'truncated.pkl').write_bytes(good[:len(good) // 2])
    (tmp_path / 'garbage.pkl').write_bytes(b'\x80\x04not a pickle at all')
    (tmp_path / 'unknown.pkl').write_bytes(pickle.dumps(dict(ema=UnknownNet())))
    bare_model = networks.SongUNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1], attn_resolutions=[])
    (tmp_path / 'bare.pkl').write_bytes(pickle.dumps(dict(ema=bare_model)))
    cases = { # The safe loader's messages name the file.
        'missing.pkl': [str(tmp_path / 'missing.pkl'), 'no such file'],
        'truncated.pkl': [str(tmp_path / 'truncated.pkl'), 'not a readable network pickle'],
        'garbage.pkl': [str(tmp_path / 'garbage.pkl'), 'not a readable network pickle'],
        'unknown.pkl': [str(tmp_path / 'unknown.pkl'), 'unknown persistent class "UnknownNet"'],
        'bare.pkl': ['SongUNet', 'not a preconditioned denoiser'],
    }
    for name, fragments in cases.items():
        outdir = tmp_path / f'out-{name}'
        result = run_generate([f'--network={tmp_path / name}', f'--outdir={outdir}', '--seeds=0'])
        assert_refused(result, outdir, *fragments)

def test_bad_options_are_refused(snapshots, tmp_path):
    outdir = tmp_path / 'out'
    base = [f'--network={snapshots["pert"]}', f'--outdir={outdir}']
    assert_refused(run_generate(base + ['--seeds=1,x']), outdir, "'--seeds'", '"x"', exit_code=2)
    assert_refused(run_generate(base + ['--seeds=5-']), outdir, "'--seeds'", exit_code=2)
    assert_refused(run_generate(base + ['--steps=1']), outdir, '--steps=1', 'at least 2')
    assert_refused(run_generate(base + ['--class=4']), outdir, '--class=4', 'out of range', '0..3')
    gray = [f'--network={snapshots["gray"]}', f'--outdir={outdir}']
    assert_refused(run_generate(gray + ['--class=0']), outdir, '--class=0', 'unconditional')

def test_bad_seeds_and_noise_ranges_are_refused(snapshots, tmp_path):
    outdir = tmp_path / 'out'
    base = [f'--network={snapshots["gray"]}', f'--outdir={outdir}']
    for seeds, words in [('5-2', ['"5-2"', '2-5']), ('0,-3', ['-3', 'negative']), (' ', ['no seeds'])]:
        assert_refused(run_generate(base + [f'--seeds={seeds}']), outdir, "'--seeds'", *words, exit_code=2)
    assert_refused(run_generate(base + ['--sigma_min=10', '--sigma_max=1']), outdir, '--sigma_min=10', '--sigma_max=1')
    # One bound beyond the other's default (80 for the EDM sampler, 0.02 for VE time steps).
    assert_refused(run_generate(base + ['--sigma_min=100']), outdir, '--sigma_min', 'sigma_max=80')
    assert_refused(run_generate(base + ['--disc=ve', '--sigma_max=0.01']), outdir, '--sigma_min', 'sigma_min=0.02')

def test_options_are_checked_before_the_network_is_loaded(tmp_path, monkeypatch):
    def no_loading(_path):
        raise AssertionError('the network was loaded')
    monkeypatch.setattr(generate, 'load_network', no_loading)
    (tmp_path / 'file').write_text('not a folder')
    for args in (['--seeds=5-2'], ['--sigma_min=2', '--sigma_max=1'], [f'--outdir={tmp_path / "file" / "out"}']):
        result = run_generate([f'--network={tmp_path / "net.pkl"}', f'--outdir={tmp_path / "out"}'] + args)
        assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), result.output
    assert sorted(os.listdir(tmp_path)) == ['file']

def test_unusable_outdir_is_refused(snapshots, tmp_path):
    (tmp_path / 'file').write_text('not a folder')
    for outdir in (tmp_path / 'file', tmp_path / 'file' / 'sub'):
        result = run_generate([f'--network={snapshots["gray"]}', f'--outdir={outdir}', '--seeds=0'])
        assert result.exit_code == 1 and 'Error: --outdir' in result.output
    assert (tmp_path / 'file').read_text() == 'not a folder'

def test_error_is_one_line_on_stderr_from_the_command_line(tmp_path):
    outdir = tmp_path / 'out'
    proc = subprocess.run([sys.executable, 'generate.py', f'--network={tmp_path / "missing.pkl"}', f'--outdir={outdir}'],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f'Error: {tmp_path / "missing.pkl"}: no such file']
    assert not outdir.exists()

def test_interrupted_write_leaves_no_partial_png(snapshots, tmp_path, monkeypatch):
    original_save = PIL.Image.Image.save
    def save_then_fail(image, path, *args, **kwargs):
        original_save(image, path, *args, **kwargs)
        with open(path, 'r+b') as f:
            f.truncate(10)
        raise KeyboardInterrupt
    monkeypatch.setattr(PIL.Image.Image, 'save', save_then_fail)
    outdir = tmp_path / 'out'
    result = run_generate([f'--network={snapshots["gray"]}', f'--outdir={outdir}', '--seeds=0', '--steps=2'])
    assert result.exit_code != 0
    assert list_files(outdir) == []
