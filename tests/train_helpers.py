"""Helpers shared by tests/test_train.py and tests/test_training_loop.py."""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def make_image_folder(root, num_images=16, resolution=16, labels=True, channels=3):
    """A folder dataset of smooth random RGB images (and class labels 0..2 in dataset.json)."""
    rnd = np.random.RandomState(123)
    names = []
    for i in range(num_images):
        coarse = rnd.randint(0, 256, size=[4, 4, channels]).astype(np.uint8)
        image = np.array(PIL.Image.fromarray(coarse.squeeze()).resize([resolution, resolution], PIL.Image.BILINEAR))
        name = f'{i // 1000:05d}/img{i:08d}.png'
        os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
        PIL.Image.fromarray(image).save(os.path.join(root, name))
        names.append(name)
    if labels:
        with open(os.path.join(root, 'dataset.json'), 'w') as f:
            json.dump({'labels': [[name, i % 3] for i, name in enumerate(names)]}, f)
    return root

def single_thread_env():
    """The environment for CLI subprocesses: one thread each, as the golden data was made (module-scoped
    fixtures run before the per-test environment fixture of conftest.py)."""
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')

def run_train(args, timeout=300):
    """Run `python train.py ARGS` in the repository; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, os.path.join(REPO, 'train.py')] + list(args), cwd=REPO,
        capture_output=True, text=True, timeout=timeout, env=single_thread_env())

def invoke_train(args):
    """Invoke train.py's click command in this process; returns (returncode, stdout, stderr)."""
    import click.testing # pylint: disable=import-outside-toplevel
    import dnnlib # pylint: disable=import-outside-toplevel
    import train # pylint: disable=import-outside-toplevel
    result = click.testing.CliRunner().invoke(train.main, list(args), catch_exceptions=False)
    return dnnlib.EasyDict(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)

def dry_run_options(args):
    """The options dict printed by `train.py --dry-run ARGS`."""
    res = invoke_train(list(args) + ['--dry-run'])
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.split('Training options:\n', 1)[1].split('\n\nOutput directory:', 1)[0])

#----------------------------------------------------------------------------
# Losses that misbehave on purpose (resolved by name through loss_kwargs.class_name).

class NaNLoss:
    """EDMLoss whose first three elements of every batch are NaN, +inf and -inf."""
    def __call__(self, net, images, labels=None, augment_pipe=None):
        from training.loss import EDMLoss # pylint: disable=import-outside-toplevel
        loss = EDMLoss()(net=net, images=images, labels=labels, augment_pipe=augment_pipe).clone()
        loss[0, 0, 0, :3] = torch.tensor([float('nan'), float('inf'), -float('inf')])
        return loss

class SignalLoss:
    """EDMLoss that sends `signum` to this process on call number `at_call` (counting from 1)."""
    def __init__(self, signum, at_call):
        self.signum = signum
        self.at_call = at_call
        self.calls = 0
    def __call__(self, net, images, labels=None, augment_pipe=None):
        from training.loss import EDMLoss # pylint: disable=import-outside-toplevel
        self.calls += 1
        if self.calls == self.at_call:
            os.kill(os.getpid(), self.signum)
        return EDMLoss()(net=net, images=images, labels=labels, augment_pipe=augment_pipe)

def tiny_loop_kwargs(data_path):
    """training_loop() arguments of a tiny unconditional DDPM++ run (8 channels, one resolution) on
    the image folder `data_path`, batch 8, seed 1, on the CPU."""
    network_kwargs = dict(class_name='training.networks.EDMPrecond', model_type='SongUNet', embedding_type='positional',
        encoder_type='standard', decoder_type='standard', channel_mult_noise=1, resample_filter=[1, 1], model_channels=8,
        channel_mult=[1], dropout=0.13, use_fp16=False)
    return dict(dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=data_path, use_labels=False, xflip=False, cache=True),
        network_kwargs=network_kwargs, loss_kwargs=dict(class_name='training.loss.EDMLoss'), device='cpu',
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8), batch_size=8, seed=1)
