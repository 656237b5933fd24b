"""Networks and preconditioners against the parameter listing and the golden data of the original
(golden README section 2)."""

import hashlib
import json
import re

import numpy as np
import pytest
import torch

from training import networks

CASES = ['ddpmpp_edm_cond', 'ncsnpp_ve_uncond', 'songunet_skip_vp', 'adm_iddpm_cond', 'adm_edm_uncond']

#----------------------------------------------------------------------------
# Helpers.

@pytest.fixture(scope='module')
def config(golden):
    return json.loads((golden / 'networks' / 'config.json').read_text())

@pytest.fixture(scope='module')
def fingerprints(golden):
    return json.loads((golden / 'networks' / 'fingerprints.json').read_text())

def build(case_config):
    torch.manual_seed(case_config['seed'])
    cls = getattr(networks, case_config['class_name'].split('.')[-1])
    return cls(**case_config['kwargs'])

def sha256(tensor):
    return hashlib.sha256(tensor.detach().numpy().astype('<f4').tobytes()).hexdigest()

def pert_fill(case_seed, net):
    """The golden 'pert' weights (golden README 2.3): a splitmix64 fill of every parameter."""
    for t, (name, param) in enumerate(net.named_parameters()):
        j = np.arange(param.numel(), dtype=np.uint64)
        z = np.uint64((case_seed << 48) | (t << 32)) | j
        with np.errstate(over='ignore'):
            z = z + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        u = ((z >> np.uint64(48)).astype(np.float64) - 32768) / 32768
        owner = name.rsplit('.', 1)[0]
        if 'norm' in owner:
            value = 1 + u / 4 if name.endswith('weight') else u / 4
        elif param.ndim == 1:
            value = u / 4
        else:
            fan_in = int(np.prod(param.shape[1:]))
            value = u * 2.0 ** -((fan_in.bit_length() - 1) // 2)
        with torch.no_grad():
            param.copy_(torch.as_tensor(value.reshape(param.shape), dtype=torch.float32))

def call_and_capture(net, *args, **kwargs):
    """Run the preconditioner; also return what it passed to and got from the inner model."""
    seen = {}
    def pre_hook(_module, args, kwargs):
        seen['x'], seen['noise_labels'] = args[0], args[1]
        seen.update({k: v for k, v in kwargs.items() if v is not None})
    def post_hook(_module, _args, _kwargs, output):
        seen['F_x'] = output
    hooks = [net.model.register_forward_pre_hook(pre_hook, with_kwargs=True),
             net.model.register_forward_hook(post_hook, with_kwargs=True)]
    with torch.no_grad():
        D_x = net(*args, **kwargs)
    for h in hooks:
        h.remove()
    return D_x, seen

def assert_output_close(actual, ref, rel):
    """Per batch item: max|diff| <= rel * max(1, max|ref_i|) (golden README tolerances)."""
    for i in range(ref.shape[0]):
        bound = rel * max(1.0, float(np.abs(ref[i]).max()))
        assert float(np.abs(actual[i] - ref[i]).max()) <= bound, f'item {i}'

def golden_calls(data, label_dim, augment):
    x = torch.as_tensor(data['in/x'])
    sigma = torch.as_tensor(data['in/sigma'])
    labels = torch.as_tensor(data['in/class_labels']) if label_dim else None
    call1 = dict(augment_labels=torch.as_tensor(data['in/augment_labels'])) if augment else {}
    calls = {
        'call1': ((x, sigma, labels), call1),
        'call2': ((x, torch.as_tensor(data['in/sigma_scalar']), labels), {}),
    }
    if label_dim:
        calls['call3'] = ((x, sigma), {})
    return calls

#----------------------------------------------------------------------------
# Structure.

@pytest.mark.parametrize('arch, expected', [
    (dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
          channel_mult_noise=1, resample_filter=[1,1], model_channels=128, channel_mult=[2,2,2]), 55_733_891),
    (dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
          channel_mult_noise=2, resample_filter=[1,3,3,1], model_channels=128, channel_mult=[2,2,2]), 56_397_827),
])
def test_cifar10_parameter_counts(arch, expected):
    """train.py presets for CIFAR-10 (as in the paper's CIFAR-10 runs); meta tensors make this instant."""
    with torch.device('meta'):
        net = networks.EDMPrecond(img_resolution=32, img_channels=3, label_dim=0, augment_dim=9, dropout=0.13, **arch)
    assert sum(p.numel() for p in net.parameters()) == expected

def test_adm_imagenet_parameter_count():
    with torch.device('meta'):
        net = networks.EDMPrecond(img_resolution=64, img_channels=3, label_dim=1000, augment_dim=9, dropout=0.13,
                                  model_type='DhariwalUNet', model_channels=192, channel_mult=[1,2,3,4])
    assert sum(p.numel() for p in net.parameters()) == 295_900_995

def spec_listing(spec_text):
    """Parse the ordered parameter/buffer listing of the DDPM++ CIFAR-10 network (a table per module)."""
    section = spec_text.split('## 11.')[1]
    params, buffers = [], []
    for prefix, cells in re.findall(r'^\| `(model\.[^`]+)` \| (.+) \|$', section, flags=re.M):
        for is_buffer, suffix, shape in re.findall(r'(B:)?`([\w.]+)\[([\d,]+)\]`', cells):
            name = prefix + '.' + suffix
            (buffers if is_buffer else params).append((name, [int(s) for s in shape.split(',')]))
    return params, buffers

def test_ddpmpp_cifar10_listing_matches_spec(golden):
    params, buffers = spec_listing((golden / 'networks' / 'ddpmpp_cifar10_listing.md').read_text())
    assert len(params) == 417 and len(buffers) == 8
    with torch.device('meta'):
        net = networks.EDMPrecond(img_resolution=32, img_channels=3, label_dim=0, augment_dim=9, dropout=0.13,
                                  model_type='SongUNet', embedding_type='positional', encoder_type='standard',
                                  decoder_type='standard', channel_mult_noise=1, resample_filter=[1,1],
                                  model_channels=128, channel_mult=[2,2,2])
    assert [(n, list(p.shape)) for n, p in net.named_parameters()] == params
    assert sorted((n, list(b.shape)) for n, b in net.named_buffers()) == sorted(buffers)

@pytest.mark.parametrize('case', CASES)
def test_structure_and_init_match_golden(case, config, fingerprints):
    """Same names, shapes, order; torch.manual_seed gives bit-identical initial weights."""
    c = config[case]
    net = build(c)
    assert [[n, list(p.shape)] for n, p in net.named_parameters()] == c['parameters']
    assert [[n, list(b.shape)] for n, b in net.named_buffers()] == c['buffers']
    assert list(net.state_dict().keys()) == c['state_dict_keys']
    assert sum(p.numel() for p in net.parameters()) == c['num_params']
    for name, tensor in net.named_parameters():
        assert sha256(tensor) == fingerprints[case]['init'][name]['sha256'], name
    for name, tensor in net.named_buffers():
        assert sha256(tensor) == fingerprints[case]['buffers'][name]['sha256'], name
    for key, value in c['attributes'].items():
        expected = float('inf') if value == 'inf' else value
        assert getattr(net, key) == expected, key

#----------------------------------------------------------------------------
# Numerics.

@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('weights', ['init', 'pert'])
def test_outputs_match_golden(case, weights, config, fingerprints, golden):
    c = config[case]
    data = np.load(golden / 'networks' / f'{case}.npz')
    net = build(c).eval()
    if weights == 'pert':
        pert_fill(c['seed'], net)
        for name, tensor in net.named_parameters():
            assert sha256(tensor) == fingerprints[case]['pert'][name], name
    label_dim = c['kwargs'].get('label_dim', 0)
    augment = c['kwargs'].get('augment_dim', 0) > 0
    for call, (args, kwargs) in golden_calls(data, label_dim, augment).items():
        D_x, seen = call_and_capture(net, *args, **kwargs)
        assert_output_close(D_x.numpy(), data[f'{weights}/{call}/D_x'], 1e-5)
        F_ref = data[f'{weights}/{call}/F_x']
        assert np.abs(seen['F_x'].numpy() - F_ref).max() <= 1e-4 * np.abs(F_ref).max()
        for key in ['x', 'noise_labels', 'class_labels', 'augment_labels']:
            ref_key = f'model_in/{call}/{key}'
            if ref_key in data.files:
                np.testing.assert_allclose(seen[key].numpy(), data[ref_key], rtol=1e-6, atol=0, err_msg=ref_key)
            else:
                assert key not in seen, key

def test_songunet_pert_weights_match_stored(golden):
    """The test's pert fill equals the golden stored tensors of case (a)."""
    cfg = json.loads((golden / 'networks' / 'config.json').read_text())['ddpmpp_edm_cond']
    data = np.load(golden / 'networks' / 'ddpmpp_edm_cond.npz')
    net = build(cfg)
    pert_fill(cfg['seed'], net)
    for name, tensor in net.named_parameters():
        np.testing.assert_array_equal(tensor.detach().numpy(), data[f'pert_param/{name}'])

@pytest.mark.parametrize('case', CASES)
def test_round_sigma_matches_golden(case, config, golden):
    net = build(config[case])
    data = np.load(golden / 'networks' / f'{case}.npz')
    out = net.round_sigma(torch.as_tensor(data['round_sigma/in_f32']))
    np.testing.assert_allclose(out.numpy(), data['round_sigma/out_f32'], rtol=1e-6)
    if 'round_sigma/index' in data.files: # iDDPM: nearest entry of the u table.
        index = net.round_sigma(torch.as_tensor(data['round_sigma/in_f32']), return_index=True)
        np.testing.assert_array_equal(index.numpy(), data['round_sigma/index'])
        out64 = net.round_sigma(torch.as_tensor(data['round_sigma/in_f64']))
        assert out64.dtype == torch.float64
        np.testing.assert_allclose(out64.numpy(), data['round_sigma/out_f64'], rtol=1e-6)
        out2d = net.round_sigma(torch.as_tensor(data['round_sigma/in_2d_f32']))
        np.testing.assert_allclose(out2d.numpy(), data['round_sigma/out_2d_f32'], rtol=1e-6)
        alpha_bar = net.alpha_bar(torch.as_tensor(data['alpha_bar/j']))
        np.testing.assert_allclose(alpha_bar.numpy(), data['alpha_bar/out'], rtol=1e-6)
        assert net.sigma_min == float(data['attr/sigma_min']) and net.sigma_max == float(data['attr/sigma_max'])

def test_vp_sigma_functions_match_golden(config, golden):
    net = build(config['songunet_skip_vp'])
    data = np.load(golden / 'networks' / 'songunet_skip_vp.npz')
    np.testing.assert_allclose(net.sigma(torch.as_tensor(data['vp/t'])).numpy(), data['vp/sigma_of_t'], rtol=1e-6)
    np.testing.assert_allclose(net.sigma_inv(torch.as_tensor(data['vp/sigma'])).numpy(), data['vp/sigma_inv'], rtol=1e-6)

def test_positional_embedding_check_value():
    """Positional embedding with C=8, endpoint=True at x=1."""
    emb = networks.PositionalEmbedding(8, endpoint=True)(torch.ones(1))
    expected = [0.540302, 0.998923, 0.999998, 1.0, 0.841471, 0.046399, 0.0021544, 0.0001]
    np.testing.assert_allclose(emb[0].numpy(), expected, rtol=1e-4, atol=1e-7)

def test_resampling_equals_pooling_and_nearest():
    """Down with [1,1] is 2x2 average pooling; up with [1,1] is nearest x2."""
    x = torch.randn(2, 3, 8, 8)
    down = networks.Conv2d(3, 3, kernel=0, down=True)
    up = networks.Conv2d(3, 3, kernel=0, up=True)
    torch.testing.assert_close(down(x), torch.nn.functional.avg_pool2d(x, 2))
    torch.testing.assert_close(up(x), torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest'))

def test_attention_weights_match_float64_softmax():
    """Forward in float32 and the exact softmax gradient, against a float64 reference."""
    torch.manual_seed(0)
    q = torch.randn(4, 8, 16, dtype=torch.float64, requires_grad=True)
    k = torch.randn(4, 8, 16, dtype=torch.float64, requires_grad=True)
    r = torch.randn(4, 16, 16, dtype=torch.float64)
    w = networks.attention_weights(q, k)
    w_ref = torch.einsum('ncq,nck->nqk', q, k / np.sqrt(8)).softmax(dim=2)
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-6)
    grads = torch.autograd.grad((w * r).sum(), [q, k])
    grads_ref = torch.autograd.grad((w_ref * r).sum(), [q, k])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-5)

def test_unknown_model_type_is_rejected():
    with pytest.raises(ValueError, match='model_type'):
        networks.EDMPrecond(img_resolution=8, img_channels=1, model_type='NoSuchNet')

#----------------------------------------------------------------------------
# The fast path: fused attention, channels_last and bfloat16 autocast.

@pytest.fixture
def fast_attention():
    """Turn the fused attention kernel on for one test, and off again afterwards."""
    previous = networks.use_fast_attention(True)
    assert previous is False # off unless asked for
    yield
    networks.use_fast_attention(False)

TINY_ATTENTION_NETS = {
    'songunet': dict(model_type='SongUNet', model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8]),
    'dhariwalunet': dict(model_type='DhariwalUNet', model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8, 4]),
}

def tiny_attention_net(kind):
    """A small EDM network whose attention has one head (SongUNet) or several (DhariwalUNet, 64
    channels per head), with weights that make every branch matter."""
    torch.manual_seed(3)
    net = networks.EDMPrecond(img_resolution=8, img_channels=3, dropout=0, **TINY_ATTENTION_NETS[kind])
    pert_fill(5, net)
    return net.eval()

def denoise_with_grad(net, x, sigma):
    """D(x; sigma) and d(sum D * r)/d(x) for a fixed random r."""
    x = x.clone().requires_grad_(True)
    D_x = net(x, sigma)
    weights = torch.randn(D_x.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((D_x * weights).sum(), [x])
    return D_x.detach(), grad

def assert_relative_close(actual, expected, rel):
    assert float((actual - expected).abs().max()) <= rel * float(expected.abs().max())

@pytest.mark.parametrize('kind', list(TINY_ATTENTION_NETS))
def test_fast_attention_matches_reference(kind, request):
    """scaled_dot_product_attention computes the same attention: output and input gradient agree
    with the reference arithmetic to float32 rounding."""
    net = tiny_attention_net(kind)
    x = torch.randn([2, 3, 8, 8], generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 3.0])
    reference = denoise_with_grad(net, x, sigma)
    request.getfixturevalue('fast_attention')
    fast = denoise_with_grad(net, x, sigma)
    for actual, expected in zip(fast, reference):
        assert not torch.equal(actual, expected) # a different kernel ran
        assert_relative_close(actual, expected, 1e-5)

def test_channels_last_network_matches_reference():
    net = tiny_attention_net('songunet')
    x = torch.randn([2, 3, 8, 8], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = net(x, 1.0)
        net.to(memory_format=torch.channels_last)
        assert net.model.enc['8x8_conv'].weight.is_contiguous(memory_format=torch.channels_last)
        fast = net(x.contiguous(memory_format=torch.channels_last), 1.0)
    assert_relative_close(fast, reference, 1e-5)

def test_preconditioner_under_bf16_autocast():
    """Under autocast the U-Net answers in bfloat16; D(x) is still float32, close to the float32
    result, and the skip connection c_skip * x stays exact float32 arithmetic."""
    net = tiny_attention_net('songunet')
    x = torch.randn([2, 3, 8, 8], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = net(x, 0.3)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            _, seen = call_and_capture(net, x, 0.3)
            D_x = net(x, 0.3)
    assert seen['F_x'].dtype == torch.bfloat16 and seen['x'].dtype == torch.float32
    assert D_x.dtype == torch.float32
    assert_relative_close(D_x, reference, 2e-2)
    c_skip, c_out, _, _ = net.scalings(torch.tensor(0.3).reshape(-1, 1, 1, 1))
    torch.testing.assert_close(D_x, c_skip * x + c_out * seen['F_x'].to(torch.float32), rtol=0, atol=0)
