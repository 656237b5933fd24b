"""Helpers shared by tests/test_samplers.py and tests/test_generate.py: the golden case-(a)
network (golden README sections 2-3) and the golden generate.py command lines."""

import json
import pickle
import shlex

import numpy as np
import torch

from training import networks

CASE = 'ddpmpp_edm_cond'
WEIGHTS = ['pert', 'init']
SAMPLER_OPTIONS = ['num_steps', 'sigma_min', 'sigma_max', 'rho', 'S_churn', 'S_min', 'S_max', 'S_noise',
                   'solver', 'discretization', 'schedule', 'scaling']

def golden_network(golden, weights):
    """EDMPrecond with the case-(a) kwargs and the stored 'pert' or 'init' parameters, in eval mode."""
    config = json.loads((golden / 'networks' / 'config.json').read_text())[CASE]
    assert config['class_name'] == 'training.networks.EDMPrecond'
    net = networks.EDMPrecond(**config['kwargs'])
    data = np.load(golden / 'networks' / f'{CASE}.npz')
    prefix = dict(pert='pert_param/', init='param/')[weights]
    params = {key[len(prefix):]: torch.from_numpy(data[key]) for key in data.files if key.startswith(prefix)}
    assert set(params) == {name for name, _ in net.named_parameters()}
    net.load_state_dict(params, strict=False) # Buffers (resample filters) keep their constructed values.
    return net.eval().requires_grad_(False)

def write_snapshot(net, path):
    """A network snapshot as train.py writes it (a dict with ema, loss_fn, augment_pipe, dataset_kwargs), pickled in the persistence format."""
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs={}), f)
    return path

def sampling_meta(golden):
    return json.loads((golden / 'sampling' / 'sampling_meta.json').read_text())

def cli_args(golden, set_name, snapshot, outdir):
    """The golden command line of `set_name` as an argument list, with our snapshot and outdir."""
    line = sampling_meta(golden)['cli_lines'][set_name]
    line = line.replace('<SNAPSHOT_PKL>', str(snapshot)).replace('<OUTDIR>', str(outdir))
    args = shlex.split(line)
    assert args[:2] == ['python', 'generate.py']
    return args[2:]
