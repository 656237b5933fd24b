"""Sampling images from a trained network: the Python API behind generate.py.

Every image depends only on its seed. Its latents, its class label and the noise of every sampler
step come from a generator of its own, so neither the batch size nor the number of processes changes
it. Works with or without torch.distributed; under torchrun each rank gets its share of the seeds.

Guidance (`guidance=`, `gnet=`, see GuidedDenoiser) and the choice of solver add no randomness, so
the same holds for guided images and for every solver.

On the fast path (`fast=`, see training/fast_path.py) the network runs in bfloat16 and/or on
channels_last tensors, while the samplers keep their float64 arithmetic. Its images are then close to,
but not bit-identical with, the faithful ones, and with bfloat16 an image may also change slightly
with the batch it is in (the kernels round differently for other shapes); a given batch size gives
the same images on every run.

Example, in a notebook:

    import PIL.Image
    from training.generation import generate_images

    for batch in generate_images('network-snapshot-200000.pkl', seeds=range(8), num_steps=18):
        for seed, image in zip(batch.seeds, batch.images):
            PIL.Image.fromarray(image.numpy()).save(f'{seed:06d}.png') # An RGB network.
"""

import dataclasses
import functools
import os
from typing import NamedTuple, Optional

import torch

from torch_utils import distributed as dist
from training import fast_path
from training.samplers import (StackedRandomGenerator, ablation_sampler, dpmpp2m_sampler, edm_sampler,
                               euler_ancestral_sampler, noise_range)
from training.snapshot import load_snapshot

# Options that only the generalised sampler has; giving any of them selects it.
ABLATION_OPTIONS = ('solver', 'discretization', 'schedule', 'scaling')

# Solvers with a sampler of their own on the EDM time steps (Eq. 5), without churn.
EDM_STEP_SOLVERS = {'dpmpp2m': dpmpp2m_sampler, 'euler_a': euler_ancestral_sampler}

# Options that such a solver accepts only at these values (those of the EDM sampler without churn).
EDM_STEP_DEFAULTS = dict(discretization='edm', schedule='linear', scaling='none', S_churn=0, S_min=0,
                         S_max=float('inf'), S_noise=1)

class GeneratedBatch(NamedTuple):
    """One batch yielded by generate_images."""
    seeds: list                     # The seeds of the images, as ints.
    images: torch.Tensor            # uint8 [N, H, W, C] on the CPU.
    labels: Optional[torch.Tensor]  # int64 [N] class index of each image on the CPU; None if unconditional.

#----------------------------------------------------------------------------

def load_network(network_pkl):
    """The 'ema' network of a snapshot (path or URL), read with the safe loader, which never runs
    code embedded in the pickle. Rank 0 reads first, so that a download is cached only once.
    Raises training.snapshot.SnapshotError or OSError with a one-line message."""
    with dist.rank_zero_first():
        return load_snapshot(network_pkl, verbose=(dist.get_rank() == 0))['ema']

def check_denoiser(net):
    """Raise ValueError unless `net` is a preconditioned denoiser that the samplers can drive."""
    needed = ('img_channels', 'img_resolution', 'label_dim', 'round_sigma', 'sigma_min', 'sigma_max')
    if not all(hasattr(net, name) for name in needed):
        raise ValueError(f'the network under "ema" is a {type(net).__name__}, not a preconditioned denoiser (EDMPrecond, VPPrecond, ...)')

def check_class_idx(net, class_idx):
    """Raise ValueError unless `class_idx` is None or one of the network's classes."""
    if class_idx is None:
        return
    if not net.label_dim:
        raise ValueError('the network is unconditional (label_dim=0)')
    if not 0 <= class_idx < net.label_dim:
        raise ValueError(f'out of range: the network has {net.label_dim} classes (0..{net.label_dim - 1})')

def check_noise_range(net, sampler_kwargs):
    """Raise ValueError unless the sampler options leave a noise range, once the defaults are filled
    in and the range is limited to the one the network supports. Options set to None take the defaults."""
    options = {key: value for key, value in sampler_kwargs.items() if value is not None}
    noise_range(net, options.get('sigma_min'), options.get('sigma_max'), options.get('discretization', 'edm'),
        options.get('epsilon_s', 1e-3))

def options_foreign_to_solver(sampler_kwargs):
    """The options that the chosen solver cannot honour: for dpmpp2m and euler_a, those set to
    other values than EDM_STEP_DEFAULTS; for the other solvers none."""
    if sampler_kwargs.get('solver') not in EDM_STEP_SOLVERS:
        return []
    return [key for key, default in EDM_STEP_DEFAULTS.items() if sampler_kwargs.get(key) not in (None, default)]

def choose_sampler(sampler_kwargs):
    """The sampler to use and its options. Options set to None are dropped, so that they take the
    sampler's own defaults. solver='dpmpp2m' or 'euler_a' selects that sampler (ValueError for
    options it cannot honour); otherwise any ablation option selects the generalised sampler."""
    options = {key: value for key, value in sampler_kwargs.items() if value is not None}
    solver = options.get('solver')
    if solver in EDM_STEP_SOLVERS:
        foreign = options_foreign_to_solver(options)
        if foreign:
            raise ValueError(f'solver={solver} runs on the EDM time steps without churn; it cannot take ' +
                             ', '.join(f'{key}={options[key]}' for key in foreign))
        kept = {key: value for key, value in options.items() if key != 'solver' and key not in EDM_STEP_DEFAULTS}
        return EDM_STEP_SOLVERS[solver], kept
    return (ablation_sampler if any(key in options for key in ABLATION_OPTIONS) else edm_sampler), options

def check_guidance(net, guidance, gnet):
    """Raise ValueError unless guidance with weight `guidance` and guide network `gnet` (or None)
    can be applied to `net`: the guide must produce the same images from the same labels, and
    classifier-free guidance (no guide) needs a class-conditional network."""
    if gnet is not None:
        for name in ('img_resolution', 'img_channels', 'label_dim'):
            if getattr(gnet, name) != getattr(net, name):
                raise ValueError(f'the guide network has {name}={getattr(gnet, name)}, the main network {name}={getattr(net, name)}')
    elif guidance != 1 and not net.label_dim:
        raise ValueError('classifier-free guidance needs a class-conditional network (this one has label_dim=0); '
                         'give a guide network for autoguidance')

def to_uint8(images):
    """Sampler output in [-1, 1] -> uint8 [N, H, W, C] on the CPU. The cast truncates, so a value
    is rounded half up from x * 127.5 + 127.5."""
    pixels = (images * 127.5 + 128).clip(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu()

@torch.no_grad()
def sample_batch(net, seeds, class_idx, run_sampler, device):
    """Float64 images [N, C, H, W] and int64 class indices (or None) for a batch of seeds; the
    shapes and classes are those of `net`, and run_sampler(latents, class_labels, randn_like) samples.
    Each seed's generator draws, in this order: the float32 latents; one class index if the network
    is conditional (even when `class_idx` fixes the class); then the sampler's per-step noise."""
    rnd = StackedRandomGenerator(device, seeds)
    latents = rnd.randn([len(seeds), net.img_channels, net.img_resolution, net.img_resolution], device=device)
    labels = class_labels = None
    if net.label_dim:
        labels = rnd.randint(net.label_dim, size=[len(seeds)], device=device)
        if class_idx is not None:
            labels = torch.full_like(labels, class_idx)
        class_labels = torch.eye(net.label_dim, device=device)[labels]
    images = run_sampler(latents, class_labels, randn_like=rnd.randn_like)
    return images, labels

class FastDenoiser:
    """The denoiser as the samplers see it on the fast path: the network gets float32 input in the
    fast path's memory format and runs under its autocast, and answers in float32 as always (the
    samplers cast the answer to float64 and do their own arithmetic in float64). The noise range and
    round_sigma are the network's."""

    def __init__(self, net, fp, device):
        self.net, self.fp, self.device = net, fp, device
        self.sigma_min, self.sigma_max, self.round_sigma = net.sigma_min, net.sigma_max, net.round_sigma

    def __call__(self, x, sigma, class_labels=None):
        x = fast_path.to_memory_format(self.fp, x.to(torch.float32))
        with fast_path.autocast(self.fp, self.device):
            return self.net(x, sigma, class_labels)

class GuidedDenoiser:
    """The denoiser of guided sampling, D_w = D_guide + w (D_main - D_guide), computed in float64.
    With a guide network this is autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a
    Bad Version of Itself"): the guide sees the same class labels. Without one (guide=None)
    it is classifier-free guidance: the guide is the main network given the all-zero label vector,
    the unconditional branch that label dropout trains. The noise range and round_sigma are those
    of the main network; each call evaluates both networks once, so a sampler's NFE doubles."""

    def __init__(self, main, guide, weight):
        self.main, self.guide, self.weight = main, guide, weight
        self.sigma_min, self.sigma_max, self.round_sigma = main.sigma_min, main.sigma_max, main.round_sigma

    def __call__(self, x, sigma, class_labels=None):
        if self.guide is None:
            guided = self.main(x, sigma, torch.zeros_like(class_labels))
        else:
            guided = self.guide(x, sigma, class_labels)
        guided = guided.to(torch.float64)
        return guided + self.weight * (self.main(x, sigma, class_labels).to(torch.float64) - guided)

def prepare_denoiser(net, fp, device):
    """Move `net` to `device` and prepare it for the fast path `fp`, in place; return what the
    samplers should call: the network itself on the faithful path, else a FastDenoiser around it.
    Under fp.compile the U-Net is compiled; on CUDA in torch.compile's "reduce-overhead" mode, which
    replays it as a CUDA graph: the 2 N - 1 evaluations of a sampler share their shapes, so one capture
    per batch size serves them all and saves the launch of every kernel."""
    net = net.to(device)
    fast_path.configure_backends(fp)
    fast_path.prepare_network(net, dataclasses.replace(fp, compile=False))
    if fp.compile:
        fast_path.require_compile()
        net.model.compile(mode=('reduce-overhead' if device.type == 'cuda' else None))
    return FastDenoiser(net, fp, device) if fp.enabled else net

def default_device():
    """This process's device under torch.distributed, else CUDA when available, else the CPU."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return dist.get_device()
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')

#----------------------------------------------------------------------------

def load_guide(gnet):
    """A guide network given as a path or URL, loaded with load_network; a network as it is."""
    return load_network(gnet) if isinstance(gnet, (str, os.PathLike)) else gnet

def generate_images(net, seeds, class_idx=None, max_batch_size=64, device=None, fast=fast_path.FastPath(), guidance=1,
                    gnet=None, **sampler_kwargs):
    """Sample one image per seed; yield them batch by batch as GeneratedBatch(seeds, images, labels).

    net:            a preconditioned network (moved to `device` in place), or the path or URL of a
                    network snapshot, loaded with load_network.
    seeds:          the seeds, e.g. range(64). Under torch.distributed each rank yields its own share.
    class_idx:      class of every image; None draws a random class per seed (conditional networks).
    max_batch_size: the most images sampled at once (per process).
    device:         where to sample; default: see default_device.
    fast:           a training.fast_path.FastPath, e.g. fast_path.resolve(device, fast=True); the
                    default is the faithful path. Its switches (TF32, the attention kernel) are
                    process-wide, and the network keeps the fast path's memory format and compiled U-Net.
    guidance:       the guidance weight w (see GuidedDenoiser); 1, the default, samples without guidance.
    gnet:           the guide network of autoguidance (a network, or a path or URL as for `net`), with
                    the resolution, channels and labels of `net`; None gives classifier-free guidance
                    (class-conditional networks only). Unused when guidance is 1.
    sampler_kwargs: options of edm_sampler; of dpmpp2m_sampler or euler_ancestral_sampler for
                    solver='dpmpp2m' or 'euler_a'; of ablation_sampler when solver ('euler', 'heun'),
                    discretization, schedule or scaling is given (e.g. num_steps=40, S_churn=40); None
                    means default.

    Raises ValueError (on the first iteration) for a network, guide, class_idx, noise range or
    sampler options that cannot be used.
    """
    if isinstance(net, (str, os.PathLike)):
        net = load_network(net)
    gnet = load_guide(gnet)
    device = torch.device(device) if device is not None else default_device()
    check_denoiser(net)
    if gnet is not None:
        check_denoiser(gnet)
    check_guidance(net, guidance, gnet)
    check_class_idx(net, class_idx)
    check_noise_range(net, sampler_kwargs)
    sampler, sampler_kwargs = choose_sampler(sampler_kwargs)
    denoiser = prepare_denoiser(net, fast, device)
    if guidance != 1:
        guide = None if gnet is None else prepare_denoiser(gnet, fast, device)
        denoiser = GuidedDenoiser(denoiser, guide, guidance)
    run_sampler = functools.partial(sampler, denoiser, **sampler_kwargs)

    for batch_seeds in dist.split_batches(list(seeds), max_batch_size):
        dist.barrier() # Keeps the ranks in step; every rank has the same number of batches.
        if len(batch_seeds) == 0:
            continue
        images, labels = sample_batch(net, batch_seeds, class_idx, run_sampler, device)
        yield GeneratedBatch(batch_seeds.tolist(), to_uint8(images), None if labels is None else labels.cpu())
