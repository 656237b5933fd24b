"""Guidance (training.generation.GuidedDenoiser, generate_images(guidance=, gnet=), generate.py --guidance
--gnet): autoguidance and classifier-free guidance against a direct computation, the unguided path
unchanged at weight 1, and the options shared through training.sampling_cli."""

import os

import click
import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import generate
from training import fast_path, generation, networks, sampling_cli
from training.samplers import StackedRandomGenerator, dpmpp2m_sampler, edm_sampler, euler_ancestral_sampler

from sampling_helpers import write_snapshot

pytestmark = pytest.mark.usefixtures('one_thread')

def tiny_net(label_dim, seed, resolution=8, channels=3):
    """A tiny EDMPrecond whose weights are perturbed (seeded), so that its prediction clearly depends
    on the input, the noise level, the label and the seed."""
    torch.manual_seed(seed)
    net = networks.EDMPrecond(img_resolution=resolution, img_channels=channels, label_dim=label_dim, model_type='SongUNet',
                              model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return net.eval().requires_grad_(False)

@pytest.fixture(scope='module')
def nets():
    return dict(main=tiny_net(3, seed=0), guide=tiny_net(3, seed=1), uncond=tiny_net(0, seed=2), uncond_guide=tiny_net(0, seed=3))

def guided(main, guide, weight, guide_labels=None):
    """The guided denoiser written out: D_guide + w (D_main - D_guide), in float64."""
    def denoise(x, sigma, class_labels=None):
        d_main = main(x, sigma, class_labels).to(torch.float64)
        d_guide = guide(x, sigma, class_labels if guide_labels is None else guide_labels(class_labels)).to(torch.float64)
        return d_guide + weight * (d_main - d_guide)
    denoise.sigma_min, denoise.sigma_max, denoise.round_sigma = main.sigma_min, main.sigma_max, main.round_sigma
    return denoise

def direct_images(net, denoiser, seeds, sampler=edm_sampler, class_idx=None, **kwargs):
    """uint8 images by generate.py's per-seed protocol (latents, class, sampler noise), sampled with `denoiser`."""
    rnd = StackedRandomGenerator(torch.device('cpu'), seeds)
    latents = rnd.randn([len(seeds), net.img_channels, net.img_resolution, net.img_resolution])
    labels = None
    if net.label_dim:
        index = rnd.randint(net.label_dim, size=[len(seeds)])
        labels = torch.eye(net.label_dim)[index if class_idx is None else torch.full_like(index, class_idx)]
    with torch.no_grad():
        return generation.to_uint8(sampler(denoiser, latents, labels, randn_like=rnd.randn_like, **kwargs)).numpy()

def api_images(net, seeds, **kwargs):
    return np.concatenate([batch.images.numpy() for batch in generation.generate_images(net, seeds, device='cpu', **kwargs)])

#----------------------------------------------------------------------------

def test_guided_denoiser_combines_the_predictions(nets):
    main, guide = nets['main'], nets['guide']
    x = torch.randn([2, 3, 8, 8], dtype=torch.float64)
    sigma = torch.tensor(1.3, dtype=torch.float64)
    labels = torch.eye(3)[[0, 2]]
    zeros = torch.zeros_like(labels)
    d_main, d_guide, d_uncond = (net(x, sigma, y).to(torch.float64) for net, y in ((main, labels), (guide, labels), (main, zeros)))
    assert (d_main - d_guide).abs().max() > 1e-2 and (d_main - d_uncond).abs().max() > 1e-2 # The test can tell them apart.

    auto = generation.GuidedDenoiser(main, guide, 2.5)
    assert (auto.sigma_min, auto.sigma_max, auto.round_sigma) == (main.sigma_min, main.sigma_max, main.round_sigma)
    torch.testing.assert_close(auto(x, sigma, labels), d_guide + 2.5 * (d_main - d_guide), rtol=1e-12, atol=1e-12)
    free = generation.GuidedDenoiser(main, None, 3.0) # Classifier-free: the unconditional prediction has all-zero labels.
    torch.testing.assert_close(free(x, sigma, labels), d_uncond + 3.0 * (d_main - d_uncond), rtol=1e-12, atol=1e-12)

def test_autoguidance_images_equal_direct_sampling(nets, tmp_path):
    main, guide = nets['main'], nets['guide']
    expected = direct_images(main, guided(main, guide, 2.0), [0, 5, 9], num_steps=4)
    np.testing.assert_array_equal(api_images(main, [0, 5, 9], guidance=2.0, gnet=guide, num_steps=4), expected)
    # The guide given as a snapshot path goes through the safe loader and gives the same images.
    path = write_snapshot(guide, tmp_path / 'guide.pkl')
    np.testing.assert_array_equal(api_images(main, [0, 5, 9], guidance=2.0, gnet=str(path), num_steps=4), expected)
    # An unconditional network can be guided by an unconditional guide.
    uncond, uncond_guide = nets['uncond'], nets['uncond_guide']
    np.testing.assert_array_equal(api_images(uncond, [1, 2], guidance=1.5, gnet=uncond_guide, num_steps=3),
                                  direct_images(uncond, guided(uncond, uncond_guide, 1.5), [1, 2], num_steps=3))

def test_classifier_free_guidance_images_equal_direct_sampling(nets):
    main = nets['main']
    expected = direct_images(main, guided(main, main, 3.0, guide_labels=torch.zeros_like), [0, 5], class_idx=1, num_steps=4)
    np.testing.assert_array_equal(api_images(main, [0, 5], class_idx=1, guidance=3.0, num_steps=4), expected)
    assert np.abs(expected.astype(int) - api_images(main, [0, 5], class_idx=1, num_steps=4)).max() > 10

def test_guidance_one_is_the_unguided_path(nets):
    main, guide = nets['main'], nets['guide']
    calls = []
    handle = guide.register_forward_hook(lambda *_: calls.append(1))
    try:
        unguided = api_images(main, [0, 1, 2], num_steps=4, S_churn=5)
        np.testing.assert_array_equal(api_images(main, [0, 1, 2], guidance=1, gnet=guide, num_steps=4, S_churn=5), unguided)
    finally:
        handle.remove()
    assert calls == [] # The guide is not even evaluated.
    np.testing.assert_array_equal(unguided, direct_images(main, main, [0, 1, 2], num_steps=4, S_churn=5))

def test_guided_images_do_not_depend_on_batch_size(nets):
    main, guide = nets['main'], nets['guide']
    kwargs = dict(guidance=2.0, gnet=guide, num_steps=5, solver='euler_a') # Stochastic: the per-step noise is per seed.
    whole = api_images(main, range(5), max_batch_size=5, **kwargs)
    np.testing.assert_array_equal(api_images(main, range(5), max_batch_size=2, **kwargs), whole)
    expected = direct_images(main, guided(main, guide, 2.0), list(range(5)), sampler=euler_ancestral_sampler, num_steps=5)
    np.testing.assert_array_equal(whole, expected)

def test_guide_runs_on_the_fast_path(nets):
    main, guide = tiny_net(3, seed=0), tiny_net(3, seed=1)
    dtypes = {'main': [], 'guide': []}
    for name, net in (('main', main), ('guide', guide)):
        net.model.register_forward_hook(lambda _module, _inputs, output, name=name: dtypes[name].append(output.dtype))
    api_images(main, [0, 1], guidance=2.0, gnet=guide, num_steps=3, fast=fast_path.FastPath(bf16=True))
    assert dtypes == {'main': [torch.bfloat16] * 5, 'guide': [torch.bfloat16] * 5} # 2 N - 1 evaluations each.

@pytest.mark.parametrize('guide_kwargs, name', [(dict(label_dim=4), 'label_dim'), (dict(label_dim=3, resolution=16), 'img_resolution'),
                                                (dict(label_dim=3, channels=1), 'img_channels')])
def test_mismatched_guide_is_refused(nets, guide_kwargs, name):
    with pytest.raises(ValueError, match=f'guide network has {name}='):
        next(generation.generate_images(nets['main'], [0], device='cpu', guidance=2, gnet=tiny_net(seed=5, **guide_kwargs)))

def test_classifier_free_guidance_needs_labels(nets):
    with pytest.raises(ValueError, match='class-conditional'):
        next(generation.generate_images(nets['uncond'], [0], device='cpu', guidance=2))

#----------------------------------------------------------------------------
# The command line.

@pytest.fixture(scope='module')
def snapshots(nets, tmp_path_factory):
    root = tmp_path_factory.mktemp('guidance-snapshots')
    return {name: str(write_snapshot(net, root / f'{name}.pkl')) for name, net in nets.items()}

def read_pngs(outdir, seeds):
    return np.stack([np.array(PIL.Image.open(os.path.join(outdir, f'{seed:06d}.png'))) for seed in seeds])

def test_generate_writes_guided_images(nets, snapshots, tmp_path):
    args = [f'--network={snapshots["main"]}', f'--outdir={tmp_path}', '--seeds=3,4', '--steps=4', '--guidance=2.5', f'--gnet={snapshots["guide"]}']
    result = CliRunner().invoke(generate.main, args)
    assert result.exit_code == 0, result.output
    assert f'Loading guide network from "{snapshots["guide"]}"' in result.output
    np.testing.assert_array_equal(read_pngs(tmp_path, [3, 4]), direct_images(nets['main'], guided(nets['main'], nets['guide'], 2.5), [3, 4], num_steps=4))

@pytest.mark.parametrize('network, extra, words', [
    ('uncond', ['--guidance=2'], ['--guidance=2', 'class-conditional']),
    ('main', ['--guidance=2', '--gnet={uncond}'], ['--gnet=', 'label_dim=0']),
    ('main', ['--gnet={missing}'], ['--gnet', 'missing.pkl']),
])
def test_generate_refuses_unusable_guidance(snapshots, tmp_path, network, extra, words):
    names = dict(snapshots, missing=str(tmp_path / 'missing.pkl'))
    outdir = tmp_path / 'out'
    args = [f'--network={snapshots[network]}', f'--outdir={outdir}'] + [arg.format(**names) for arg in extra]
    result = CliRunner().invoke(generate.main, args)
    errors = [line for line in result.output.splitlines() if line.startswith('Error: ')]
    assert result.exit_code == 1 and len(errors) == 1 and all(word in errors[0] for word in words), result.output
    assert not outdir.exists()

def test_sampler_options_serve_another_command(nets, snapshots):
    """What fid.py gen does: its own options, then sampler_options; generate_kwargs turns the parsed
    options into generate_images arguments."""
    @click.command()
    @click.option('--network', 'network_pkl', required=True)
    @sampling_cli.sampler_options
    def tool(network_pkl, **sampling):
        sampling_cli.check_sampler_options(sampling)
        net = generation.load_network(network_pkl)
        kwargs = sampling_cli.generate_kwargs(net, sampling, torch.device('cpu'))
        tool.images = np.concatenate([batch.images.numpy() for batch in generation.generate_images(net, [0, 1], device='cpu', **kwargs)])
        tool.kwargs = kwargs

    result = CliRunner().invoke(tool, [f'--network={snapshots["main"]}', '--steps=3', '--solver=dpmpp2m', '--guidance=2',
                                       f'--gnet={snapshots["guide"]}', '--class=2', '--batch=1'])
    assert result.exit_code == 0, result.output
    kwargs = tool.kwargs
    assert sorted(kwargs) == sorted(['class_idx', 'max_batch_size', 'fast', 'guidance', 'gnet'] + list(sampling_cli.SAMPLER_KWARGS))
    assert (kwargs['class_idx'], kwargs['max_batch_size'], kwargs['guidance'], kwargs['num_steps'], kwargs['solver']) == (2, 1, 2, 3, 'dpmpp2m')
    assert isinstance(kwargs['gnet'], networks.EDMPrecond) and kwargs['fast'] == fast_path.FastPath()
    np.testing.assert_array_equal(tool.images, direct_images(nets['main'], guided(nets['main'], nets['guide'], 2), [0, 1],
                                                             sampler=dpmpp2m_sampler, class_idx=2, num_steps=3))
    # The checks of generate.py, with the same messages.
    result = CliRunner().invoke(tool, [f'--network={snapshots["main"]}', '--solver=euler_a', '--S_churn=10'])
    assert result.exit_code == 1 and 'Error: --solver=euler_a runs on the EDM time steps without churn; it cannot take --S_churn=10' in result.output
