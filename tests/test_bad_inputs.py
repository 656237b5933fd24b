"""A catalogue of mistakes a researcher makes with the five tools (dataset_tool.py, train.py,
generate.py, fid.py, quickstart.py). Each must end with one `Error:` line that names the option or
the file, a non-zero exit, no traceback, and the folder exactly as it was before (nothing created,
nothing changed, no hidden temporary file).

The tools run in this process through click's test runner, so the catalogue takes seconds."""

import gzip
import io
import json
import os
import pickle
import shutil
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dataset_tool
import fid
import generate
import quickstart
import train
from training import networks

pytestmark = pytest.mark.usefixtures('one_thread')

#----------------------------------------------------------------------------
# Inputs shared by all cases, made once: a tiny network, datasets, reference statistics and a
# few broken files. Every case runs in a copy, so a tool that damaged its input would be caught.

class Planted:
    """Unpickling this creates the file `marker`: a stand-in for code hidden in a pickle."""
    def __init__(self, marker):
        self.marker = marker
    def __reduce__(self):
        return (open, (self.marker, 'w'))

def tiny_network(label_dim):
    torch.manual_seed(0)
    net = networks.EDMPrecond(img_resolution=8, img_channels=3, label_dim=label_dim, model_type='SongUNet',
                              model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0)
    return net.eval().requires_grad_(False)

def write_pickle(path, obj):
    with open(path, 'wb') as f:
        pickle.dump(obj, f)

def write_png(path, size, color=(10, 20, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.new('RGB', size, color).save(path)

def write_image_folder(root, count=8, size=(8, 8), labels=True):
    names = [f'{i // 1000:05d}/img{i:08d}.png' for i in range(count)]
    for i, name in enumerate(names):
        write_png(os.path.join(root, name), size, color=(i * 30, 100, 200 - i * 20))
    if labels:
        with open(os.path.join(root, 'dataset.json'), 'w') as f:
            json.dump({'labels': [[name, i % 2] for i, name in enumerate(names)]}, f)
    return names

def write_zip_of(folder, dest):
    with zipfile.ZipFile(dest, 'w') as z:
        for base, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(base, name)
                z.write(path, os.path.relpath(path, folder))

def write_stats(path, mu, sigma):
    np.savez(path, mu=mu, sigma=sigma)

def build_inputs(root):
    """The shared input folder (made once per module)."""
    os.makedirs(root / 'empty')
    (root / 'a_file.txt').write_text('not a folder\n')
    (root / 'garbage.bin').write_bytes(b'\x00\x01garbage that is no pickle, zip or npz' * 10)

    # Networks.
    net = tiny_network(label_dim=0)
    write_pickle(root / 'uncond.pkl', dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs={}))
    write_pickle(root / 'cond.pkl', dict(ema=tiny_network(label_dim=2), loss_fn=None, augment_pipe=None, dataset_kwargs={}))
    data = (root / 'uncond.pkl').read_bytes()
    (root / 'truncated.pkl').write_bytes(data[:len(data) // 2])
    write_pickle(root / 'no_ema.pkl', dict(net=net))
    write_pickle(root / 'a_list.pkl', [1, 2, 3])
    write_pickle(root / 'planted.pkl', dict(ema=Planted(str(root / 'MARKER'))))
    (root / 'planted_detector.pkl').write_bytes(pickle.dumps(Planted(str(root / 'MARKER'))))
    torch.save(dict(net=Planted(str(root / 'MARKER'))), root / 'training-state-000010.pt')

    # Training states that are no training states.
    (root / 'states').mkdir()
    (root / 'states' / 'training-state-000100.pt').write_bytes(b'corrupt state' * 50)
    state = io.BytesIO()
    torch.save(dict(net=net, optimizer_state={}), state)
    (root / 'states' / 'training-state-000200.pt').write_bytes(state.getvalue()[:300])

    # Image datasets.
    write_image_folder(root / 'images')
    write_zip_of(root / 'images', root / 'images.zip')
    write_image_folder(root / 'unlabelled', labels=False)
    write_zip_of(root / 'unlabelled', root / 'unlabelled.zip')
    names = write_image_folder(root / 'mixed', count=4)
    write_png(root / 'mixed' / names[2], (16, 16))
    write_zip_of(root / 'mixed', root / 'mixed.zip')
    names = write_image_folder(root / 'partial_labels', count=4, labels=False)
    (root / 'partial_labels' / 'dataset.json').write_text(json.dumps({'labels': [[names[0], 0], [names[1], 1]]}))
    write_image_folder(root / 'bad_json', count=2, labels=False)
    (root / 'bad_json' / 'dataset.json').write_text('{"labels": [[')
    write_image_folder(root / 'corrupt_png', count=3, labels=False)
    (root / 'corrupt_png' / '00000' / 'img00000001.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'broken' * 10)
    write_image_folder(root / 'odd_size', count=2, size=(12, 12), labels=False)
    (root / 'idx').mkdir()
    with gzip.open(root / 'idx' / 'train-images-idx3-ubyte.gz', 'wb') as f:
        f.write(np.array([0, 0, 8, 3], dtype='>u1').tobytes() + np.array([10, 28, 28], dtype='>u4').tobytes() + b'\x00' * 100)
    with tarfile.open(root / 'cifar-10-python.tar.gz', 'w:gz') as tar:
        info = tarfile.TarInfo('cifar-10-batches-py/readme.html')
        info.size = 4
        tar.addfile(info, io.BytesIO(b'none'))

    # Quickstart output folders: one made with other options, one with a broken options file.
    (root / 'qs_out').mkdir()
    (root / 'qs_out' / 'quickstart-options.json').write_text(json.dumps(dict(minutes=15.0, samples=1000, ref_images=1000, steps=79, fast='auto')))
    (root / 'qs_broken').mkdir()
    (root / 'qs_broken' / 'quickstart-options.json').write_text('{"minutes": 15')

    # Reference statistics.
    rnd = np.random.RandomState(0)
    feats = rnd.randn(50, 2048)
    write_stats(root / 'ref.npz', feats.mean(0), np.cov(feats, rowvar=False))
    sigma = np.cov(feats, rowvar=False)
    sigma[0, 0] = np.nan
    write_stats(root / 'nan.npz', feats.mean(0), sigma)
    mu = feats.mean(0)
    mu[3] = np.inf
    write_stats(root / 'inf.npz', mu, np.cov(feats, rowvar=False))
    write_stats(root / 'small.npz', np.zeros(10), np.eye(10))
    np.savez(root / 'no_mu.npz', sigma=np.eye(2048))
    write_stats(root / 'bad_shape.npz', np.zeros(2048), np.eye(100))
    return root

@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    return build_inputs(tmp_path_factory.mktemp('bad-inputs'))

def tree(root):
    """Everything under root: relative path -> (size, mtime), hidden files included."""
    state = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            state[os.path.relpath(path, root)] = (st.st_size if name in files else None, st.st_mtime_ns)
    return state

#----------------------------------------------------------------------------
# The catalogue: (id, tool, arguments, words the error line must contain).
# {in} is the shared input folder (copied per case) and {out} a folder that does not exist yet.

DATASET_TOOL = [
    ('dt-source-missing',        ['--source={in}/nothing', '--dest={out}/d.zip'],                     ['--source']),
    ('dt-source-empty',          ['--source={in}/empty', '--dest={out}/d.zip'],                       ['--source']),
    ('dt-source-a-file',         ['--source={in}/a_file.txt', '--dest={out}/d.zip'],                  ['a_file.txt']),
    ('dt-corrupt-png',           ['--source={in}/corrupt_png', '--dest={out}/d.zip'],                 ['img00000001.png']),
    ('dt-mixed-sizes',           ['--source={in}/mixed', '--dest={out}/d.zip'],                       ['img00000002.png']),
    ('dt-not-power-of-two',      ['--source={in}/odd_size', '--dest={out}/d.zip'],                    ['power']),
    ('dt-resolution-malformed',  ['--source={in}/images', '--dest={out}/d.zip', '--resolution=64'],   ['--resolution']),
    ('dt-resolution-odd',        ['--source={in}/images', '--dest={out}/d.zip', '--resolution=48x48'], ['power']),
    ('dt-transform-unknown',     ['--source={in}/images', '--dest={out}/d.zip', '--transform=zoom'],  ['--transform']),
    ('dt-crop-needs-resolution', ['--source={in}/images', '--dest={out}/d.zip', '--transform=center-crop'], ['--resolution']),
    ('dt-partial-labels',        ['--source={in}/partial_labels', '--dest={out}/d.zip'],              ['img00000002.png']),
    ('dt-bad-dataset-json',      ['--source={in}/bad_json', '--dest={out}/d.zip'],                    ['dataset.json']),
    ('dt-corrupt-zip',           ['--source={in}/garbage.zip', '--dest={out}/d.zip'],                 ['garbage.zip']),
    ('dt-truncated-idx',         ['--source={in}/idx/train-images-idx3-ubyte.gz', '--dest={out}/d.zip'], ['train-images-idx3-ubyte.gz']),
    ('dt-cifar-without-batches', ['--source={in}/cifar-10-python.tar.gz', '--dest={out}/d.zip'],     ['cifar-10-python.tar.gz']),
    ('dt-dest-below-a-file',     ['--source={in}/images', '--dest={in}/a_file.txt/d.zip'],            ['--dest']),
    ('dt-dest-unwritable',       ['--source={in}/images', '--dest=/proc/edm-test/d.zip'],             ['--dest']),
    ('dt-dest-folder-not-empty', ['--source={in}/images', '--dest={in}/images'],                      ['--dest']),
    ('dt-max-images-zero',       ['--source={in}/images', '--dest={out}/d.zip', '--max-images=0'],    ['--max-images']),
]

GENERATE = [
    ('gen-network-missing',      ['--network={in}/nothing.pkl', '--outdir={out}'],                    ['nothing.pkl']),
    ('gen-network-garbage',      ['--network={in}/garbage.bin', '--outdir={out}'],                    ['garbage.bin']),
    ('gen-network-truncated',    ['--network={in}/truncated.pkl', '--outdir={out}'],                  ['truncated.pkl']),
    ('gen-network-no-ema',       ['--network={in}/no_ema.pkl', '--outdir={out}'],                     ['no_ema.pkl']),
    ('gen-network-a-list',       ['--network={in}/a_list.pkl', '--outdir={out}'],                     ['a_list.pkl']),
    ('gen-network-planted',      ['--network={in}/planted.pkl', '--outdir={out}'],                    ['EDM_ALLOW_PICKLE_CODE']),
    ('gen-network-a-folder',     ['--network={in}/empty', '--outdir={out}'],                          ['empty']),
    ('gen-seeds-reversed',       ['--network={in}/uncond.pkl', '--outdir={out}', '--seeds=5-2'],      ['--seeds']),
    ('gen-seeds-words',          ['--network={in}/uncond.pkl', '--outdir={out}', '--seeds=abc'],      ['--seeds']),
    ('gen-seeds-empty',          ['--network={in}/uncond.pkl', '--outdir={out}', '--seeds='],         ['--seeds']),
    ('gen-seeds-negative',       ['--network={in}/uncond.pkl', '--outdir={out}', '--seeds=-3'],       ['--seeds']),
    ('gen-class-out-of-range',   ['--network={in}/cond.pkl', '--outdir={out}', '--class=2'],          ['--class']),
    ('gen-class-unconditional',  ['--network={in}/uncond.pkl', '--outdir={out}', '--class=0'],        ['--class']),
    ('gen-steps-one',            ['--network={in}/uncond.pkl', '--outdir={out}', '--steps=1'],        ['--steps']),
    ('gen-sigma-range-swapped',  ['--network={in}/uncond.pkl', '--outdir={out}', '--sigma_min=10', '--sigma_max=1'], ['--sigma_min']),
    ('gen-batch-zero',           ['--network={in}/uncond.pkl', '--outdir={out}', '--batch=0'],        ['--batch']),
    ('gen-rho-zero',             ['--network={in}/uncond.pkl', '--outdir={out}', '--rho=0'],          ['--rho']),
    ('gen-churn-negative',       ['--network={in}/uncond.pkl', '--outdir={out}', '--S_churn=-1'],     ['--S_churn']),
    ('gen-solver-unknown',       ['--network={in}/uncond.pkl', '--outdir={out}', '--solver=rk4'],     ['--solver']),
    ('gen-solver-dpmpp2m-disc',  ['--network={in}/uncond.pkl', '--outdir={out}', '--solver=dpmpp2m', '--disc=vp'], ['--solver', '--disc=vp']),
    ('gen-solver-euler-a-churn', ['--network={in}/uncond.pkl', '--outdir={out}', '--solver=euler_a', '--S_churn=5'], ['--solver', '--S_churn']),
    ('gen-guidance-negative',    ['--network={in}/cond.pkl', '--outdir={out}', '--guidance=-1'],      ['--guidance']),
    ('gen-guidance-uncond-net',  ['--network={in}/uncond.pkl', '--outdir={out}', '--guidance=2'],     ['--guidance', 'class-conditional']),
    ('gen-gnet-missing',         ['--network={in}/cond.pkl', '--outdir={out}', '--guidance=2', '--gnet={in}/nothing.pkl'], ['--gnet', 'nothing.pkl']),
    ('gen-gnet-planted',         ['--network={in}/cond.pkl', '--outdir={out}', '--guidance=2', '--gnet={in}/planted.pkl'], ['--gnet', 'EDM_ALLOW_PICKLE_CODE']),
    ('gen-gnet-labels-differ',   ['--network={in}/cond.pkl', '--outdir={out}', '--guidance=2', '--gnet={in}/uncond.pkl'], ['--gnet', 'label_dim']),
    ('gen-outdir-below-a-file',  ['--network={in}/uncond.pkl', '--outdir={in}/a_file.txt/out'],       ['--outdir']),
    ('gen-outdir-unwritable',    ['--network={in}/uncond.pkl', '--outdir=/proc/edm-test'],            ['--outdir']),
]

FID = [
    ('fid-calc-images-missing',  ['calc', '--images={in}/nothing', '--ref={in}/ref.npz'],             ['nothing']),
    ('fid-calc-ref-missing',     ['calc', '--images={in}/images', '--ref={in}/nothing.npz'],          ['nothing.npz']),
    ('fid-calc-ref-garbage',     ['calc', '--images={in}/images', '--ref={in}/garbage.bin'],          ['garbage.bin']),
    ('fid-calc-ref-no-mu',       ['calc', '--images={in}/images', '--ref={in}/no_mu.npz'],            ['no_mu.npz']),
    ('fid-calc-ref-bad-shape',   ['calc', '--images={in}/images', '--ref={in}/bad_shape.npz'],        ['bad_shape.npz']),
    ('fid-calc-ref-nan',         ['calc', '--images={in}/images', '--ref={in}/nan.npz'],              ['nan.npz']),
    ('fid-calc-ref-inf',         ['calc', '--images={in}/images', '--ref={in}/inf.npz'],              ['inf.npz']),
    ('fid-calc-num-one',         ['calc', '--images={in}/images', '--ref={in}/ref.npz', '--num=1'],   ['--num']),
    ('fid-calc-too-few-images',  ['calc', '--images={in}/images', '--ref={in}/ref.npz', '--num=100'], ['100']),
    ('fid-calc-detector-planted', ['calc', '--images={in}/images', '--ref={in}/ref.npz', '--num=8', '--detector={in}/planted_detector.pkl'], ['EDM_ALLOW_PICKLE_CODE']),
    ('fid-calc-detector-missing', ['calc', '--images={in}/images', '--ref={in}/ref.npz', '--num=8', '--detector={in}/nothing.pt'], ['nothing.pt']),
    ('fid-calc-detector-garbage', ['calc', '--images={in}/images', '--ref={in}/ref.npz', '--num=8', '--detector={in}/garbage.bin'], ['garbage.bin']),
    ('fid-ref-data-missing',     ['ref', '--data={in}/nothing', '--dest={out}/r.npz'],                ['nothing']),
    ('fid-ref-data-empty',       ['ref', '--data={in}/empty', '--dest={out}/r.npz'],                  ['empty']),
    ('fid-ref-data-corrupt',     ['ref', '--data={in}/corrupt_png', '--dest={out}/r.npz'],            ['img00000001.png']),
    ('fid-ref-dest-folder',      ['ref', '--data={in}/images', '--dest={in}/empty/'],                 ['--dest']),
    ('fid-ref-dest-below-file',  ['ref', '--data={in}/images', '--dest={in}/a_file.txt/r.npz'],       ['--dest']),
    ('fid-ref-dest-unwritable',  ['ref', '--data={in}/images', '--dest=/proc/edm-test/r.npz'],        ['--dest']),
    ('fid-sqa-missing',          ['sqa', '--edm_path={in}/nothing.npz', '--sqa_ref={in}/ref.npz'],    ['nothing.npz']),
    ('fid-sqa-nan',              ['sqa', '--edm_path={in}/nan.npz', '--sqa_ref={in}/ref.npz'],        ['nan.npz']),
    ('fid-sqa-mismatched',       ['sqa', '--edm_path={in}/small.npz', '--sqa_ref={in}/ref.npz'],      ['small.npz']),
    ('fid-calc-metrics-unknown', ['calc', '--images={in}/images', '--ref={in}/ref.npz', '--metrics=fid,is'], ['--metrics']),
    ('fid-calc-ref-no-features', ['calc', '--images={in}/images', '--ref={in}/ref.npz', '--num=8', '--metrics=kid'], ['--ref', '--features']),
    ('fid-calc-pr-too-few',      ['calc', '--images={in}/images', '--ref={in}/ref.npz', '--num=3', '--metrics=pr'], ['--num']),
    ('fid-gen-network-missing',  ['gen', '--network={in}/nothing.pkl', '--ref={in}/ref.npz', '--num=4'], ['nothing.pkl']),
    ('fid-gen-network-planted',  ['gen', '--network={in}/planted.pkl', '--ref={in}/ref.npz', '--num=4'], ['EDM_ALLOW_PICKLE_CODE']),
    ('fid-gen-ref-missing',      ['gen', '--network={in}/uncond.pkl', '--ref={in}/nothing.npz', '--num=4'], ['nothing.npz']),
    ('fid-gen-ref-no-features',  ['gen', '--network={in}/uncond.pkl', '--ref={in}/ref.npz', '--num=4', '--metrics=fid,pr'], ['--ref', '--features']),
    ('fid-gen-num-one',          ['gen', '--network={in}/uncond.pkl', '--ref={in}/ref.npz', '--num=1'], ['--num']),
    ('fid-gen-seeds-one',        ['gen', '--network={in}/uncond.pkl', '--ref={in}/ref.npz', '--seeds=7'], ['--seeds']),
    ('fid-gen-seeds-reversed',   ['gen', '--network={in}/uncond.pkl', '--ref={in}/ref.npz', '--seeds=5-2'], ['--seeds']),
    ('fid-gen-seeds-repeated',   ['gen', '--network={in}/uncond.pkl', '--ref={in}/ref.npz', '--seeds=1,2,1'], ['--seeds']),
    ('fid-gen-num-not-seeds',    ['gen', '--network={in}/uncond.pkl', '--ref={in}/ref.npz', '--num=4', '--seeds=0-2'], ['--num', '--seeds']),
    ('fid-gen-pr-too-few',       ['gen', '--network={in}/uncond.pkl', '--ref={in}/ref.npz', '--num=3', '--metrics=pr'], ['--num']),
    ('fid-gen-class-uncond',     ['gen', '--network={in}/uncond.pkl', '--ref={in}/ref.npz', '--num=4', '--class=0'], ['--class']),
    ('fid-gen-steps-one',        ['gen', '--network={in}/uncond.pkl', '--ref={in}/ref.npz', '--num=4', '--steps=1'], ['--steps']),
]

TRAIN_COMMON = ['--outdir={out}', '--cbase=8', '--cres=1', '--batch=4', '--duration=0.0001']
TRAIN = [
    ('train-data-missing',       ['--data={in}/nothing'],                                             ['--data']),
    ('train-data-empty',         ['--data={in}/empty'],                                               ['--data']),
    ('train-batch-not-divisible', ['--data={in}/images.zip', '--batch=6', '--batch-gpu=4'],           ['--batch']),
    ('train-cond-without-labels', ['--data={in}/unlabelled.zip', '--cond=1'],                         ['--cond']),
    ('train-cres-malformed',     ['--data={in}/images.zip', '--cres=1,x'],                            ['--cres']),
    ('train-arch-unknown',       ['--data={in}/images.zip', '--arch=vit'],                            ['--arch']),
    ('train-precond-unknown',    ['--data={in}/images.zip', '--precond=ddim'],                        ['--precond']),
    ('train-duration-zero',      ['--data={in}/images.zip', '--duration=0'],                          ['--duration']),
    ('train-outdir-below-file',  ['--data={in}/images.zip', '--outdir={in}/a_file.txt/runs'],         ['--outdir']),
    ('train-outdir-unwritable',  ['--data={in}/images.zip', '--outdir=/proc/edm-test'],               ['--outdir']),
    ('train-transfer-missing',   ['--data={in}/images.zip', '--transfer={in}/nothing.pkl'],          ['nothing.pkl']),
    ('train-transfer-planted',   ['--data={in}/images.zip', '--transfer={in}/planted.pkl'],           ['EDM_ALLOW_PICKLE_CODE']),
    ('train-transfer-and-resume', ['--data={in}/images.zip', '--transfer={in}/uncond.pkl', '--resume={in}/states/training-state-000100.pt'], ['--resume']),
    ('train-resume-missing',     ['--data={in}/images.zip', '--resume={in}/states/training-state-000300.pt'], ['training-state-000300.pt']),
    ('train-resume-wrong-name',  ['--data={in}/images.zip', '--resume={in}/uncond.pkl'],              ['--resume']),
    ('train-resume-corrupt',     ['--data={in}/images.zip', '--resume={in}/states/training-state-000100.pt'], ['training-state-000100.pt']),
    ('train-resume-truncated',   ['--data={in}/images.zip', '--resume={in}/states/training-state-000200.pt'], ['training-state-000200.pt']),
    ('train-resume-planted',     ['--data={in}/images.zip', '--resume={in}/training-state-000010.pt'], ['EDM_ALLOW_PICKLE_CODE']),
    ('train-resume-empty-dir',   ['--data={in}/images.zip', '--resume={in}/empty'],                   ['--resume']),
    ('train-grid-zero',          ['--data={in}/images.zip', '--grid=0'],                              ['--grid']),
    ('train-metrics-unknown',    ['--data={in}/images.zip', '--metrics=is'],                          ['--metrics']),
    ('train-fid-without-ref',    ['--data={in}/images.zip', '--metrics=fid'],                         ['--fid-ref']),
    ('train-fid-ref-alone',      ['--data={in}/images.zip', '--fid-ref={in}/ref.npz'],                ['--fid-ref', '--metrics=fid']),
    ('train-fid-ref-missing',    ['--data={in}/images.zip', '--metrics=fid', '--fid-ref={in}/nothing.npz'], ['--fid-ref', 'nothing.npz']),
    ('train-fid-ref-garbage',    ['--data={in}/images.zip', '--metrics=fid', '--fid-ref={in}/garbage.bin'], ['--fid-ref', 'garbage.bin']),
    ('train-fid-ref-nan',        ['--data={in}/images.zip', '--metrics=fid', '--fid-ref={in}/nan.npz'], ['--fid-ref', 'nan.npz']),
    ('train-fid-num-one',        ['--data={in}/images.zip', '--metrics=fid', '--fid-ref={in}/ref.npz', '--fid-num=1'], ['--fid-num']),
    ('train-fid-detector-missing', ['--data={in}/images.zip', '--metrics=fid', '--fid-ref={in}/ref.npz', '--fid-detector={in}/nothing.pt'], ['--fid-detector', 'nothing.pt']),
    ('train-fid-detector-planted', ['--data={in}/images.zip', '--metrics=fid', '--fid-ref={in}/ref.npz', '--fid-detector={in}/planted_detector.pkl'], ['--fid-detector', 'EDM_ALLOW_PICKLE_CODE']),
    ('train-label-dropout-uncond', ['--data={in}/images.zip', '--label-dropout=0.1'],                 ['--label-dropout', '--cond']),
    ('train-label-dropout-range', ['--data={in}/images.zip', '--cond=1', '--label-dropout=1.5'],      ['--label-dropout']),
]

QUICKSTART = [
    ('qs-data-missing',          ['--outdir={out}', '--data={in}/nothing'],                           ['--data']),
    ('qs-outdir-a-file',         ['--outdir={in}/a_file.txt', '--data={in}/idx'],                     ['--outdir']),
    ('qs-minutes-zero',          ['--outdir={out}', '--data={in}/idx', '--minutes=0'],                ['--minutes']),
    ('qs-samples-too-few',       ['--outdir={out}', '--data={in}/idx', '--samples=3'],                ['--samples']),
    ('qs-outdir-other-options',  ['--outdir={in}/qs_out', '--data={in}/idx', '--steps=6'],           ['--outdir', '--steps=79 (now 6)']),
    ('qs-outdir-broken-options', ['--outdir={in}/qs_broken', '--data={in}/idx'],                     ['quickstart-options.json']),
]

TOOLS = {'dataset_tool': (dataset_tool.main, DATASET_TOOL), 'generate': (generate.main, GENERATE),
         'fid': (fid.main, FID), 'train': (train.main, TRAIN), 'quickstart': (quickstart.main, QUICKSTART)}

CASES = [pytest.param(tool, args, words, id=case_id) for tool, (_, cases) in TOOLS.items() for case_id, args, words in cases]

def test_catalogue_is_large_enough():
    assert len(CASES) >= 60

@pytest.fixture(autouse=True)
def no_code_execution(monkeypatch):
    monkeypatch.delenv('EDM_ALLOW_PICKLE_CODE', raising=False)

@pytest.mark.parametrize('tool, args, words', CASES)
def test_mistake_gives_one_line_and_changes_nothing(tool, args, words, inputs, tmp_path, monkeypatch):
    # Hard links: the copy costs no disk, and a tool that changed an input in place would still show
    # in the tree (size and mtime belong to the shared inode) and fail this case.
    work = tmp_path / 'in'
    shutil.copytree(inputs, work, symlinks=True, copy_function=os.link)
    (work / 'garbage.zip').write_bytes((work / 'garbage.bin').read_bytes())
    out = tmp_path / 'out'
    monkeypatch.chdir(tmp_path)
    if tool == 'train':
        args = [arg.replace('{out}', str(out)) for arg in TRAIN_COMMON] + args
    args = [arg.replace('{in}', str(work)).replace('{out}', str(out)) for arg in args]
    before = tree(tmp_path)

    result = CliRunner().invoke(TOOLS[tool][0], args)

    assert result.exit_code != 0, f'exit 0; output:\n{result.output}'
    assert isinstance(result.exception, SystemExit), f'uncaught {result.exception!r}'
    assert 'Traceback' not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith('Error:')]
    assert len(errors) == 1, f'expected one Error: line, got:\n{result.stderr}'
    for word in words:
        assert word in errors[0], f'{word!r} not named in: {errors[0]}'
    assert tree(tmp_path) == before, 'files were created or changed'
