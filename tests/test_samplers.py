"""The samplers (training/samplers.py) against the analytic solution for Gaussian data and against
the golden float64 sampler outputs of the original (golden README sections 3 and 9).

For data y ~ N(0, sigma_d^2 I) the ideal denoiser is D(x; sigma) = x * sigma_d^2 / (sigma^2 + sigma_d^2).
Writing x = s(t) * z with sigma = sigma(t), the probability-flow ODE (paper eq. 4) becomes
dz/dsigma = (z - D(z; sigma)) / sigma = z * sigma / (sigma^2 + sigma_d^2), whatever sigma(t) and s(t) are.
Its solution is z(sigma) = z(sigma_0) * sqrt((sigma^2 + sigma_d^2) / (sigma_0^2 + sigma_d^2)). Every
sampler ends at t = 0 where sigma = 0 and s = 1, so latents n started at x_0 = n * sigma_0 * s_0 end at
    x_exact = n * sigma_0 * sigma_d / sqrt(sigma_0^2 + sigma_d^2),
and the stochastic samplers must produce outputs with variance sigma_d^2. Everything is linear in
the latents (and in the churn noise), so a single scalar latent measures the relative error.
"""

import itertools
import math

import numpy as np
import pytest
import torch

import generate
from training import generation
from training.samplers import (StackedRandomGenerator, ablation_sampler, dpmpp2m_sampler, edm_noise_levels, edm_sampler,
                               euler_ancestral_sampler, noise_range)

from sampling_helpers import SAMPLER_OPTIONS, WEIGHTS, cli_args, golden_network

SIGMA_DATA = 0.5

pytestmark = pytest.mark.usefixtures('one_thread')

class GaussianDenoiser:
    """Ideal denoiser for N(0, sigma_d^2) data; records the noise levels it is called with."""
    sigma_min = 0
    sigma_max = float('inf')

    def __init__(self, sigma_data=SIGMA_DATA):
        self.sigma_data = sigma_data
        self.sigmas = []

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def __call__(self, x, sigma, class_labels=None):
        assert x.dtype == torch.float64 and sigma.dtype == torch.float64 and sigma.ndim == 0
        self.sigmas.append(sigma.item())
        return x * self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)

def relative_error(sampler, num_steps, **kwargs):
    """Relative deviation of the sampler's output from the exact ODE solution, and the last
    nonzero noise level sigma_m (from which the final Euler step jumps to 0)."""
    net = GaussianDenoiser()
    x = sampler(net, torch.ones([1, 1, 1, 1]), num_steps=num_steps, **kwargs).item()
    sigma_0, sigma_m = net.sigmas[0], net.sigmas[-1]
    exact = sigma_0 * SIGMA_DATA / math.sqrt(sigma_0 ** 2 + SIGMA_DATA ** 2)
    return x / exact - 1, sigma_m

def output_variance(sampler, num_steps, **kwargs):
    """Exact output variance of the (linear) sampler, and sigma_m: run a batch in which item 0
    carries the latent and item k+1 only the churn noise of step k, then sum the squared coefficients."""
    latents = torch.zeros([num_steps + 1, 1, 1, 1])
    latents[0] = 1
    step = iter(range(1, num_steps + 1))
    def unit_noise(x):
        noise = torch.zeros_like(x)
        noise[next(step)] = 1
        return noise
    net = GaussianDenoiser()
    coefficients = sampler(net, latents, randn_like=unit_noise, num_steps=num_steps, **kwargs)
    return (coefficients ** 2).sum().item(), net.sigmas[-1]

#----------------------------------------------------------------------------
# EDM sampler (paper Algorithm 2).

def test_edm_sampler_converges_to_ode_solution_at_second_order():
    # At the paper's 18 steps the relative error for this problem is about 5e-2: the Heun steps
    # around sigma ~ sigma_d halve sigma at each step. It falls as 1/N^2 (Heun), reaching 7e-4 at 144.
    errors = [relative_error(edm_sampler, n)[0] for n in (18, 36, 72, 144)]
    for coarse, fine in zip(errors[:-1], errors[1:]):
        assert 3.5 < coarse / fine < 5.0
    assert abs(errors[-1]) < 1e-3
    # Measured against the scale of the latents it maps (sigma_max = 80), the 18-step error is below 1e-3.
    assert abs(errors[0]) * SIGMA_DATA / math.sqrt(80 ** 2 + SIGMA_DATA ** 2) < 1e-3

def test_stochastic_edm_sampler_keeps_data_variance():
    n, num_steps = 20000, 256
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn([n, 1, 1, 1], generator=generator)
    randn_like = lambda x: torch.randn(x.shape, dtype=x.dtype, generator=generator)
    x = edm_sampler(GaussianDenoiser(), latents, randn_like=randn_like, num_steps=num_steps, S_churn=40, S_min=0.05, S_max=50)
    standard_error = math.sqrt(2 / n) # of the relative variance estimate
    assert abs(x.var().item() / SIGMA_DATA ** 2 - 1) < 4 * standard_error
    assert abs(x.mean().item()) < 4 * SIGMA_DATA / math.sqrt(n)
    # Without the churn noise the output variance would be far off: the noise is what keeps it.
    silent = edm_sampler(GaussianDenoiser(), latents, randn_like=torch.zeros_like, num_steps=num_steps, S_churn=40, S_min=0.05, S_max=50)
    assert silent.var().item() / SIGMA_DATA ** 2 < 0.5

def test_churn_noise_is_drawn_on_every_step():
    draws = []
    def randn_like(x):
        draws.append(x.dtype)
        return torch.zeros_like(x)
    edm_sampler(GaussianDenoiser(), torch.ones([2, 1, 1, 1]), randn_like=randn_like, num_steps=7)
    ablation_sampler(GaussianDenoiser(), torch.ones([2, 1, 1, 1]), randn_like=randn_like, num_steps=5, solver='euler')
    assert draws == [torch.float64] * 12

def test_ablation_sampler_in_edm_configuration_equals_edm_sampler():
    kwargs = dict(num_steps=12, sigma_min=0.002, sigma_max=80, S_churn=30, S_min=0.01, S_max=40, S_noise=1.007)
    outputs = []
    for sampler in (edm_sampler, ablation_sampler):
        generator = torch.Generator().manual_seed(1)
        latents = torch.randn([64, 1, 1, 1], generator=generator)
        randn_like = lambda x: torch.randn(x.shape, dtype=x.dtype, generator=generator)
        outputs.append(sampler(GaussianDenoiser(), latents, randn_like=randn_like, **kwargs))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-12, atol=1e-12)

@pytest.mark.parametrize('sampler, kwargs', [
    (edm_sampler, dict(sigma_min=10, sigma_max=1)),            # Swapped.
    (ablation_sampler, dict(sigma_min=100)),                   # Above the default sigma_max = 80.
    (ablation_sampler, dict(discretization='ve', sigma_max=0.01)), # Below the default sigma_min = 0.02.
    (ablation_sampler, dict(discretization='iddpm', sigma_min=700, sigma_max=20000)), # Between two iDDPM levels.
])
def test_empty_noise_range_is_refused(sampler, kwargs):
    with pytest.raises(ValueError, match='sigma_min='):
        sampler(GaussianDenoiser(), torch.ones([1, 1, 1, 1]), **kwargs)

def test_noise_range_is_limited_to_the_network():
    net = GaussianDenoiser()
    net.sigma_min, net.sigma_max = 0.5, 20
    assert noise_range(net, 0.002, 80) == (0.5, 20)
    with pytest.raises(ValueError, match='supports 0.5 to 20'):
        noise_range(net, 30, 80)

#----------------------------------------------------------------------------
# One-evaluation-per-step solvers on the EDM time steps: DPM-Solver++(2M) and ancestral Euler.

@pytest.mark.parametrize('sampler', [dpmpp2m_sampler, euler_ancestral_sampler])
def test_fast_solvers_use_the_edm_time_steps_once_each(sampler):
    net = GaussianDenoiser()
    sampler(net, torch.ones([1, 1, 1, 1]), randn_like=torch.zeros_like, num_steps=10, sigma_min=0.01, sigma_max=20, rho=5)
    np.testing.assert_allclose(net.sigmas, edm_noise_levels(10, 0.01, 20, 5).numpy(), rtol=1e-14) # NFE = N.

def test_dpmpp2m_converges_to_ode_solution_at_second_order():
    # Relative errors at 18, 36, 72, 144 steps are about 6e-2, 1.3e-2, 3e-3, 7e-4: the ratio of
    # consecutive errors tends to 4, as for Heun, at half the network evaluations.
    errors = [relative_error(dpmpp2m_sampler, n)[0] for n in (18, 36, 72, 144)]
    for coarse, fine in zip(errors[:-1], errors[1:]):
        assert 3.5 < coarse / fine < 5.0
    assert abs(errors[-1]) < 1e-3

def test_dpmpp2m_follows_the_papers_update():
    # DPM-Solver++(2M) as Lu et al. write it, with alpha = 1, lambda = -log sigma, h_i = lambda_{i+1} - lambda_i,
    # r_i = h_{i-1} / h_i: x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h_i} - 1) D_eff with
    # D_eff = (1 + 1 / (2 r_i)) D_i - 1 / (2 r_i) D_{i-1} (just D_0 on the first step), and x_N = D_{N-1}.
    denoise = lambda x, sigma: torch.tanh(x / (1 + sigma)) * 0.7
    class TanhDenoiser(GaussianDenoiser):
        def __call__(self, x, sigma, class_labels=None):
            return denoise(x, sigma)
    latents = torch.tensor([0.3, -1.1, 2.0]).reshape(3, 1, 1, 1)
    num_steps = 7
    t_steps = edm_noise_levels(num_steps, 0.002, 80, 7)
    x = latents.to(torch.float64) * t_steps[0]
    lambdas = -t_steps.log()
    previous = None
    for i in range(num_steps - 1):
        denoised = denoise(x, t_steps[i])
        h = lambdas[i + 1] - lambdas[i]
        effective = denoised
        if previous is not None:
            r = (lambdas[i] - lambdas[i - 1]) / h
            effective = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * previous
        x = t_steps[i + 1] / t_steps[i] * x - torch.expm1(-h) * effective
        previous = denoised
    expected = denoise(x, t_steps[-1])
    torch.testing.assert_close(dpmpp2m_sampler(TanhDenoiser(), latents, num_steps=num_steps), expected, rtol=1e-12, atol=1e-12)

def test_euler_ancestral_converges_to_data_variance_at_first_order():
    # Exact output variance (the sampler is linear in latents and noise): its error halves per
    # doubling of the steps, and the Richardson limit is sigma_d^2.
    results = [output_variance(euler_ancestral_sampler, n) for n in (64, 128, 256)]
    errors, sigma_m = [variance / SIGMA_DATA ** 2 - 1 for variance, _ in results], results[-1][1]
    ratio = (errors[0] - errors[1]) / (errors[1] - errors[2])
    assert 1.6 < ratio < 2.4
    assert abs(richardson_limit(errors, 1)) < 1e-3 + 2 * (sigma_m / SIGMA_DATA) ** 2

def test_euler_ancestral_samples_the_data_distribution():
    # Monte Carlo with real draws: mean 0 and variance sigma_d^2 up to the sampling error and the
    # first-order discretisation error (about 1.2 % of the variance at 1024 steps).
    n, num_steps = 20000, 1024
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn([n, 1, 1, 1], generator=generator)
    randn_like = lambda x: torch.randn(x.shape, dtype=x.dtype, generator=generator)
    x = euler_ancestral_sampler(GaussianDenoiser(), latents, randn_like=randn_like, num_steps=num_steps)
    bias = abs(output_variance(euler_ancestral_sampler, num_steps)[0] / SIGMA_DATA ** 2 - 1)
    assert bias < 0.015
    assert abs(x.var().item() / SIGMA_DATA ** 2 - 1) < bias + 4 * math.sqrt(2 / n)
    assert abs(x.mean().item()) < 4 * SIGMA_DATA / math.sqrt(n)
    # Without the fresh noise the variance collapses: the noise is what keeps it.
    silent = euler_ancestral_sampler(GaussianDenoiser(), latents, randn_like=torch.zeros_like, num_steps=num_steps)
    assert silent.var().item() / SIGMA_DATA ** 2 < 0.01

def test_euler_ancestral_output_depends_only_on_the_seed():
    def sample(seeds):
        rnd = StackedRandomGenerator(torch.device('cpu'), seeds)
        latents = rnd.randn([len(seeds), 1, 2, 2])
        return euler_ancestral_sampler(GaussianDenoiser(), latents, randn_like=rnd.randn_like, num_steps=8)
    together = sample([3, 7, 11])
    for i, seed in enumerate([3, 7, 11]):
        assert torch.equal(sample([seed])[0], together[i])
    assert torch.equal(sample([11, 3])[1], together[0])
    assert not torch.equal(sample([4])[0], together[0])
    # The per-step noise matters: the same latents with another noise stream give another sample.
    rnd = StackedRandomGenerator(torch.device('cpu'), [3])
    latents = rnd.randn([1, 1, 2, 2])
    other_noise = euler_ancestral_sampler(GaussianDenoiser(), latents, randn_like=torch.randn_like, num_steps=8)
    assert not torch.equal(other_noise[0], together[0])

#----------------------------------------------------------------------------
# Ablation sampler: every solver x discretisation x schedule x scaling combination.
#
# sigma_max is lowered to 5 so that the stiff combinations (vp/ve schedule without scaling) are in
# their asymptotic regime at affordable step counts. With results at N, 2N, 4N steps and order p
# (Heun 2, Euler 1):
# * the output differences shrink by 2^p per doubling;
# * Richardson extrapolation (removing the N^-p and N^-(p+1) terms) gives the exact solution, up to
#   the error of the final Euler step from sigma_m to 0, which is below (sigma_m/sigma_d)^2 relative
#   (twice that for the variance).

COMBINATIONS = list(itertools.product(['euler', 'heun'], ['vp', 've', 'iddpm', 'edm'], ['vp', 've', 'linear'], ['vp', 'none']))

def richardson_limit(values, order):
    """Limit of values at N, 2N, 4N steps whose error is a/N^order + b/N^(order+1)."""
    first = [fine + (fine - coarse) / (2 ** order - 1) for coarse, fine in zip(values[:-1], values[1:])]
    return first[1] + (first[1] - first[0]) / (2 ** (order + 1) - 1)

def solver_order(solver):
    return dict(euler=1, heun=2)[solver]

@pytest.mark.parametrize('solver,disc,schedule,scaling', COMBINATIONS)
def test_ablation_sampler_converges_to_ode_solution(solver, disc, schedule, scaling):
    kwargs = dict(solver=solver, discretization=disc, schedule=schedule, scaling=scaling, sigma_max=5)
    results = [relative_error(ablation_sampler, n, **kwargs) for n in (36, 72, 144)]
    errors, sigma_m = [error for error, _ in results], results[-1][1]
    order = solver_order(solver)
    ratio = (errors[0] - errors[1]) / (errors[1] - errors[2])
    assert 0.7 * 2 ** order < ratio < 1.3 * 2 ** order
    assert abs(richardson_limit(errors, order)) < 2e-4 + (sigma_m / SIGMA_DATA) ** 2

@pytest.mark.parametrize('solver,disc,schedule,scaling', COMBINATIONS)
def test_stochastic_ablation_sampler_keeps_data_variance(solver, disc, schedule, scaling):
    kwargs = dict(solver=solver, discretization=disc, schedule=schedule, scaling=scaling, sigma_max=5, S_churn=5)
    steps = (24, 48, 96) if solver == 'heun' else (48, 96, 192)
    results = [output_variance(ablation_sampler, n, **kwargs) for n in steps]
    variances, sigma_m = [variance / SIGMA_DATA ** 2 - 1 for variance, _ in results], results[-1][1]
    assert abs(richardson_limit(variances, solver_order(solver))) < 1e-3 + 2 * (sigma_m / SIGMA_DATA) ** 2

def test_stochastic_ablation_sampler_draws_unit_noise():
    """Monte Carlo check of one configuration: the sample variance of real draws matches the exact
    variance of the linear map from (latents, noise) to outputs."""
    kwargs = dict(solver='heun', discretization='vp', schedule='vp', scaling='vp', num_steps=16, S_churn=10)
    n = 20000
    generator = torch.Generator().manual_seed(2)
    latents = torch.randn([n, 1, 1, 1], generator=generator)
    randn_like = lambda x: torch.randn(x.shape, dtype=x.dtype, generator=generator)
    x = ablation_sampler(GaussianDenoiser(), latents, randn_like=randn_like, **kwargs)
    assert abs(x.var().item() / output_variance(ablation_sampler, **kwargs)[0] - 1) < 4 * math.sqrt(2 / n)

#----------------------------------------------------------------------------
# Golden float64 sampler outputs of the original (golden README section 3, "f64"): direct sampler
# calls with the per-seed generator protocol of generate.py (section 9, "RNG streams").

DIRECT_SETS = ['i_default_b3', 'iii_class2', 'iv_churn', 'v_euler_vp', 'vi_heun_iddpm_linear', 'vii_ve']

@pytest.fixture(scope='module')
def golden_nets(golden):
    return {weights: golden_network(golden, weights) for weights in WEIGHTS}

@pytest.fixture(scope='module')
def sampling_npz(golden):
    return np.load(golden / 'sampling' / 'sampling.npz')

class Recorder:
    """Forwards to the network and records the noise level and batch item 0 of every call."""
    def __init__(self, net):
        self.net = net
        self.sigmas = []
        self.x_item0 = []

    def __getattr__(self, name):
        return getattr(self.net, name)

    def __call__(self, x, sigma, class_labels):
        self.sigmas.append(sigma.item())
        self.x_item0.append(x[0].clone())
        return self.net(x, sigma, class_labels)

def parse_cli(golden, set_name):
    """(sampler, sampler kwargs, class index) of a golden command line, parsed by generate.py's CLI."""
    params = generate.main.make_context('generate.py', cli_args(golden, set_name, 'net.pkl', 'out')).params
    kwargs = {key: params[key] for key in SAMPLER_OPTIONS if params[key] is not None}
    sampler = ablation_sampler if any(key in kwargs for key in generation.ABLATION_OPTIONS) else edm_sampler
    return sampler, kwargs, params['class_idx']

@pytest.mark.parametrize('weights', WEIGHTS)
@pytest.mark.parametrize('set_name', DIRECT_SETS)
def test_sampler_matches_golden_float64_outputs(golden, golden_nets, sampling_npz, weights, set_name):
    ref = lambda key: sampling_npz[f'{weights}/{set_name}/f64/{key}']
    sampler, kwargs, class_idx = parse_cli(golden, set_name)
    seeds = ref('seeds').tolist()
    net = Recorder(golden_nets[weights])

    # Per-seed draws: float32 latents, then the class index (drawn even with --class).
    rnd = StackedRandomGenerator(torch.device('cpu'), seeds)
    latents = rnd.randn([len(seeds), net.img_channels, net.img_resolution, net.img_resolution])
    class_index = rnd.randint(net.label_dim, size=[len(seeds)])
    class_labels = torch.eye(net.label_dim)[class_index]
    if class_idx is not None:
        class_labels[:, :] = 0
        class_labels[:, class_idx] = 1
    np.testing.assert_array_equal(latents.numpy(), ref('latents'))
    np.testing.assert_array_equal(class_index.numpy(), ref('drawn_class_index'))
    np.testing.assert_array_equal(class_labels.numpy(), ref('class_labels'))

    with torch.no_grad():
        images = sampler(net, latents, class_labels, randn_like=rnd.randn_like, **kwargs)
    assert images.dtype == torch.float64
    np.testing.assert_allclose(np.array(net.sigmas), ref('net_sigmas'), rtol=1e-10, atol=0)
    assert np.abs(images.numpy() - ref('images')).max() <= 1e-4
    if set_name == 'i_default_b3':
        assert np.abs(torch.stack(net.x_item0).numpy() - ref('net_x_item0')).max() <= 1e-4
    # Quantised like generate.py, the images are the golden PNG pixels.
    np.testing.assert_array_equal(generation.to_uint8(images), sampling_npz[f'{weights}/{set_name}/images'][:len(seeds)])
