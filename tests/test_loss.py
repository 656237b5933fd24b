"""VPLoss, VELoss and EDMLoss (paper Table 1, "Training") against the original's golden outputs
(golden README sections 4 and 9) and against their sigma distributions and weights."""

import copy
import json
import pickle

import numpy as np
import pytest
import torch

from training import loss as loss_module
from training import networks
from training.augment import AugmentPipe
from training.loss import EDMLoss, VELoss, VPLoss

TRAIN_AUGMENT = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)

# case -> (preconditioner, loss class, AugmentPipe p or None); golden README section 4.
GOLDEN_CASES = {
    'edm':           ('EDMPrecond', EDMLoss, None),
    'vp':            ('VPPrecond',  VPLoss,  None),
    've':            ('VEPrecond',  VELoss,  None),
    'edm_aug_p0.12': ('EDMPrecond', EDMLoss, 0.12),
    'edm_aug_p1.0':  ('EDMPrecond', EDMLoss, 1.0),
}

#----------------------------------------------------------------------------
# Golden reproduction.

@pytest.fixture(scope='module')
def golden_loss(golden):
    with np.load(golden / 'loss' / 'loss.npz') as data:
        return dict(data)

@pytest.fixture(scope='module')
def build_net(golden):
    """Case-(a) networks with dropout=0 in train mode, init or pert weights (README sections 2, 4)."""
    config = json.loads((golden / 'networks' / 'config.json').read_text())['ddpmpp_edm_cond']
    with np.load(golden / 'networks' / 'ddpmpp_edm_cond.npz') as data:
        pert = {k[len('pert_param/'):]: v for k, v in data.items() if k.startswith('pert_param/')}
    cache = {}
    def build(precond, weights):
        if (precond, weights) not in cache:
            kwargs = dict(config['kwargs'], dropout=0)
            torch.manual_seed(0)
            net = getattr(networks, precond)(**kwargs).train().requires_grad_(False)
            if weights == 'pert':
                params = dict(net.named_parameters())
                assert sorted(params) == sorted(pert)
                for name, value in pert.items():
                    params[name].copy_(torch.from_numpy(value))
            cache[(precond, weights)] = net
        return cache[(precond, weights)]
    return build

class Recorder:
    """Wraps a network or an augment pipe and keeps what went in and came out."""
    def __init__(self, fn):
        self.fn = fn
        self.calls = []
    def __call__(self, *args, **kwargs):
        result = self.fn(*args, **kwargs)
        self.calls.append((args, kwargs, result))
        return result

def assert_close_per_item(actual, ref):
    """Golden tolerance: per batch item, max|diff| <= 1e-5 * max(1, max|ref_i|)."""
    for i in range(ref.shape[0]):
        err = np.abs(actual[i] - ref[i]).max()
        assert err <= 1e-5 * max(1, np.abs(ref[i]).max()), (i, err)

@pytest.mark.parametrize('weights', ['init', 'pert'])
@pytest.mark.parametrize('case', list(GOLDEN_CASES))
def test_matches_golden(case, weights, golden_loss, build_net):
    precond, loss_class, p = GOLDEN_CASES[case]
    ref = {k[len(f'{weights}/{case}/'):]: v for k, v in golden_loss.items() if k.startswith(f'{weights}/{case}/')}
    net = Recorder(build_net(precond, weights))
    pipe = Recorder(AugmentPipe(p=p, **TRAIN_AUGMENT)) if p is not None else None
    images = torch.from_numpy(golden_loss['in/images'])
    labels = torch.from_numpy(golden_loss['in/labels'])

    torch.manual_seed(123)
    with torch.no_grad():
        loss = loss_class()(net=net, images=images, labels=labels, augment_pipe=pipe)
    rand4_after = torch.rand(4)

    (x, sigma, class_labels), kwargs, D_yn = net.calls[0]
    assert len(net.calls) == 1 and class_labels is labels
    assert loss.shape == images.shape and loss.dtype == torch.float32
    np.testing.assert_array_equal(sigma.numpy(), ref['net_in_sigma'])
    np.testing.assert_allclose(x.numpy(), ref['net_in_x'], rtol=0, atol=1e-6)
    assert_close_per_item(D_yn.numpy(), ref['D_yn'])
    assert_close_per_item(loss.numpy(), ref['loss'])
    if p is None:
        assert kwargs == {'augment_labels': None}
    else:
        augmented, augment_labels = pipe.calls[0][2]
        assert kwargs['augment_labels'] is augment_labels
        np.testing.assert_allclose(augmented.numpy(), ref['augmented_images'], rtol=0, atol=1e-5)
        np.testing.assert_allclose(augment_labels.numpy(), ref['augment_labels'], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(rand4_after.numpy(), ref['global_rand4_after'])

#----------------------------------------------------------------------------
# Sigma distributions and weights (paper Table 1), with a stub network D = 0. With images of
# ones the loss is then lambda(sigma) * 1 per element.

def zero_net(x, sigma, labels, augment_labels=None):
    return torch.zeros_like(x)

def draw(loss_fn, N, seed=0):
    """Run the loss on N ones-images; return (sigma [N], per-item weight [N], noise [N,C,H,W])."""
    net = Recorder(zero_net)
    images = torch.ones([N, 1, 2, 2])
    torch.manual_seed(seed)
    loss = loss_fn(net=net, images=images, labels=None)
    (x, sigma, _), _, _ = net.calls[0]
    assert sigma.shape == (N, 1, 1, 1)
    assert torch.equal(loss, loss[:, :1, :1, :1].expand_as(loss))  # One weight per item.
    return sigma.flatten().double(), loss[:, 0, 0, 0].double(), (x - images) / sigma

def test_edm_sigma_is_log_normal():
    sigma, weight, noise = draw(EDMLoss(), 50000)
    log_sigma = sigma.log()
    assert abs(log_sigma.mean().item() - (-1.2)) < 0.02
    assert abs(log_sigma.std().item() - 1.2) < 0.02
    # Quartiles of N(P_mean, P_std^2): P_mean -/+ 0.6745 P_std.
    q = torch.quantile(log_sigma, torch.tensor([0.25, 0.75], dtype=torch.float64))
    np.testing.assert_allclose(q.numpy(), [-1.2 - 0.6745 * 1.2, -1.2 + 0.6745 * 1.2], atol=0.03)
    torch.testing.assert_close(weight, (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2, rtol=1e-6, atol=0)
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02

def test_edm_loss_custom_parameters():
    sigma, weight, _ = draw(EDMLoss(P_mean=0.5, P_std=0.3, sigma_data=2.0), 20000)
    assert abs(sigma.log().mean().item() - 0.5) < 0.01 and abs(sigma.log().std().item() - 0.3) < 0.01
    torch.testing.assert_close(weight, (sigma ** 2 + 4) / (sigma * 2) ** 2, rtol=1e-6, atol=0)

def test_ve_sigma_is_log_uniform():
    sigma, weight, noise = draw(VELoss(), 50000)
    lo, hi = np.log(0.02), np.log(100)
    u = (sigma.log() - lo) / (hi - lo)  # Uniform on [0, 1).
    assert u.min() >= -1e-6 and u.max() < 1 + 1e-6
    assert u.min() < 0.001 and u.max() > 0.999
    for q in [0.1, 0.25, 0.5, 0.75, 0.9]:
        assert abs((u < q).double().mean().item() - q) < 0.01
    torch.testing.assert_close(weight, 1 / sigma ** 2, rtol=1e-6, atol=0)
    assert abs(noise.std().item() - 1) < 0.02

def vp_t(sigma, beta_d=19.9, beta_min=0.1):
    """Inverse of sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), in float64."""
    return ((beta_min ** 2 + 2 * beta_d * torch.log1p(sigma ** 2)).sqrt() - beta_min) / beta_d

def test_vp_t_is_uniform_and_mapped_through_sigma_t():
    loss_fn = VPLoss()
    sigma, weight, noise = draw(loss_fn, 50000)
    t = vp_t(sigma)
    assert t.min() > 1e-5 * (1 - 1e-3) and t.max() <= 1 + 1e-6
    u = (t - 1e-5) / (1 - 1e-5)
    for q in [0.1, 0.25, 0.5, 0.75, 0.9]:
        assert abs((u < q).double().mean().item() - q) < 0.01
    torch.testing.assert_close(weight, 1 / sigma ** 2, rtol=1e-6, atol=0)
    assert abs(noise.std().item() - 1) < 0.02

def test_vp_sigma_function():
    loss_fn = VPLoss()
    t = torch.tensor([1e-5, 1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    expected = ((0.5 * 19.9 * t ** 2 + 0.1 * t).exp() - 1).sqrt()
    torch.testing.assert_close(loss_fn.sigma(t), expected, rtol=1e-12, atol=0)
    # float32 values of the training path; sigma(1) is VPPrecond's sigma_max.
    assert abs(loss_fn.sigma(1.0).item() - 152.16698) < 1e-4
    assert loss_fn.sigma(torch.tensor(1e-5)).dtype == torch.float32
    custom = VPLoss(beta_d=5, beta_min=1, epsilon_t=0.2)
    sigma, weight, _ = draw(custom, 20000)
    t = vp_t(sigma, beta_d=5, beta_min=1)
    assert t.min() > 0.2 - 1e-5 and t.max() <= 1 + 1e-5 and abs(t.mean().item() - 0.6) < 0.01

#----------------------------------------------------------------------------
# Call protocol: the order of the random draws (golden README 9).

@pytest.mark.parametrize('loss_class', [EDMLoss, VPLoss, VELoss])
def test_draw_order_and_augmented_target(loss_class):
    """sigma, then the augment pipe, then the noise; the target is the augmented image."""
    N = 3
    images = torch.rand([N, 3, 4, 4])
    labels = torch.eye(N)
    def pipe(x):
        return x * 2 + torch.rand([N, 1, 1, 1]), torch.full([N, 2], 7.0)
    net = Recorder(zero_net)
    torch.manual_seed(5)
    loss = loss_class()(net, images, labels, augment_pipe=pipe)

    torch.manual_seed(5)
    torch.randn([N, 1, 1, 1]) if loss_class is EDMLoss else torch.rand([N, 1, 1, 1])  # sigma
    y = images * 2 + torch.rand([N, 1, 1, 1])
    n = torch.randn_like(y)
    (x, sigma, net_labels), kwargs, _ = net.calls[0]
    assert net_labels is labels
    assert torch.equal(kwargs['augment_labels'], torch.full([N, 2], 7.0))
    torch.testing.assert_close(x, y + n * sigma, rtol=0, atol=1e-6)
    # sigma is the first draw, as without a pipe.
    torch.testing.assert_close(sigma.flatten().double(), draw(loss_class(), N, seed=5)[0])
    # The loss is lambda(sigma) * (0 - y)^2 with the augmented y: one weight per item.
    weight = loss / y ** 2
    torch.testing.assert_close(weight, weight[:, :1, :1, :1].expand_as(weight))

def test_edm_labels_default_to_none():
    net = Recorder(zero_net)
    EDMLoss()(net, torch.zeros([2, 1, 2, 2]))
    (_, _, labels), kwargs, _ = net.calls[0]
    assert labels is None and kwargs == {'augment_labels': None}

def test_gradient_flows_to_the_network():
    net = torch.nn.Conv2d(1, 1, 1)
    def precond(x, sigma, labels, augment_labels=None):
        return net(x)
    loss = EDMLoss()(precond, torch.rand([2, 1, 4, 4]))
    loss.sum().backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()

#----------------------------------------------------------------------------
# Snapshot compatibility: losses pickle with their constructor arguments.

@pytest.mark.parametrize('loss_fn', [EDMLoss(), VPLoss(beta_d=10, beta_min=0.2, epsilon_t=1e-3), VELoss(sigma_min=0.01, sigma_max=50)])
def test_pickle_and_deepcopy_round_trip(loss_fn):
    data = pickle.dumps({'loss_fn': loss_fn})
    assert b'_reconstruct_persistent_obj' in data
    for clone in [pickle.loads(data)['loss_fn'], copy.deepcopy(loss_fn)]:
        assert type(clone).__name__ == type(loss_fn).__name__
        assert vars(clone) == vars(loss_fn)
        assert all(type(v) is float for k, v in vars(clone).items() if not k.startswith('_'))
        assert torch.equal(draw(clone, 8, seed=3)[1], draw(loss_fn, 8, seed=3)[1])

def test_attribute_names_match_constructor():
    assert {k: v for k, v in vars(EDMLoss()).items() if not k.startswith('_')} == dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    assert {k: v for k, v in vars(VPLoss()).items() if not k.startswith('_')} == dict(beta_d=19.9, beta_min=0.1, epsilon_t=1e-5)
    assert {k: v for k, v in vars(VELoss()).items() if not k.startswith('_')} == dict(sigma_min=0.02, sigma_max=100.0)
