"""Samplers of the EDM paper (spec sampling-and-fid.md sections 1-2) and the per-seed random
generator of generate.py (cli.md section 2.2 item 5).

Both samplers take a preconditioned denoiser `net` (called as net(x, sigma, class_labels) with a
float64 x and a 0-d float64 sigma), float32 latents of shape [N,C,H,W], optional class labels and a
`randn_like` noise source, and return the final x as float64. All sampler arithmetic is float64.
"""

import functools
import math

import numpy as np
import torch

#----------------------------------------------------------------------------
# Paper Algorithm 2: Heun's 2nd-order method with optional churn (sampling-and-fid.md section 1).

def edm_time_steps(num_steps, sigma_min, sigma_max, rho, device=None):
    """Noise levels t_0 > ... > t_{N-1} (paper eq. 5), before rounding and without t_N = 0."""
    step_indices = torch.arange(num_steps, dtype=torch.float64, device=device)
    return (sigma_max ** (1 / rho) + step_indices / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho

def churn_gamma(sigma_cur, num_steps, S_churn, S_min, S_max):
    """Fraction by which noise is added at this step (paper Algorithm 2, line 5)."""
    return min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= sigma_cur <= S_max else 0

def edm_sampler(
    net, latents, class_labels=None, randn_like=torch.randn_like,
    num_steps=18, sigma_min=0.002, sigma_max=80, rho=7,
    S_churn=0, S_min=0, S_max=float('inf'), S_noise=1,
):
    """Heun sampler with churn (paper Algorithm 2); 2N-1 network evaluations."""
    # Noise levels, clamped to the range the network supports, then rounded; t_N = 0.
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)
    t_steps = net.round_sigma(edm_time_steps(num_steps, sigma_min, sigma_max, rho, device=latents.device))
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])

    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next

        # Churn: raise the noise level to t_hat. The noise is drawn on every step, even when gamma = 0.
        gamma = churn_gamma(t_cur, num_steps, S_churn, S_min, S_max)
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)

        # Euler step from t_hat to t_next.
        denoised = net(x_hat, t_hat, class_labels).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Second-order correction, skipped on the final step to sigma = 0.
        if i < num_steps - 1:
            denoised = net(x_next, t_next, class_labels).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

    return x_next

#----------------------------------------------------------------------------
# Noise schedules sigma(t) with derivative and inverse (sampling-and-fid.md section 2.1).
# Each returns (sigma, sigma_deriv, sigma_inv) as functions of float64 tensors.

def vp_schedule(beta_d, beta_min):
    sigma = lambda t: (torch.exp(0.5 * beta_d * (t ** 2) + beta_min * t) - 1) ** 0.5
    sigma_deriv = lambda t: 0.5 * (beta_min + beta_d * t) * (sigma(t) + 1 / sigma(t))
    sigma_inv = lambda sigma: ((beta_min ** 2 + 2 * beta_d * (sigma ** 2 + 1).log()) ** 0.5 - beta_min) / beta_d
    return sigma, sigma_deriv, sigma_inv

def ve_schedule():
    sigma = lambda t: t.sqrt()
    sigma_deriv = lambda t: 0.5 / t.sqrt()
    sigma_inv = lambda sigma: sigma ** 2
    return sigma, sigma_deriv, sigma_inv

def linear_schedule():
    sigma = lambda t: t
    sigma_deriv = lambda t: 1
    sigma_inv = lambda sigma: sigma
    return sigma, sigma_deriv, sigma_inv

def vp_sigma_at(t, beta_d=19.9, beta_min=0.1):
    """sigma_VP(t) as a Python float."""
    return vp_schedule(beta_d, beta_min)[0](torch.as_tensor(t, dtype=torch.float64)).item()

def vp_beta_for_range(sigma_min, sigma_max, epsilon_s):
    """(beta_d, beta_min) such that sigma_VP(epsilon_s) = sigma_min and sigma_VP(1) = sigma_max (section 2.2)."""
    beta_d = 2 * (np.log(sigma_min ** 2 + 1) / epsilon_s - np.log(sigma_max ** 2 + 1)) / (epsilon_s - 1)
    beta_min = np.log(sigma_max ** 2 + 1) - 0.5 * beta_d
    return float(beta_d), float(beta_min)

@functools.lru_cache(maxsize=8)
def iddpm_noise_levels(M, C_1, C_2, device=None):
    """The improved-DDPM table u[0..M] (decreasing, u[M] = 0), section 2.3. alpha_bar is computed
    from an int64 index and comes out in float32, as in the original. Cached: it depends only on
    the constants, and the recursion takes M sequential steps."""
    alpha_bar = lambda j: (0.5 * np.pi * j / M / (C_2 + 1)).sin() ** 2
    index = torch.arange(1, M + 1, device=device)
    ratio = (alpha_bar(index - 1) / alpha_bar(index)).clip(min=C_1) # ratio[j-1] = alpha_bar(j-1) / alpha_bar(j), float32
    u = torch.zeros(M + 1, dtype=torch.float64, device=device)
    for j in range(M, 0, -1):
        u[j - 1] = ((u[j] ** 2 + 1) / ratio[j - 1] - 1).sqrt()
    return u

#----------------------------------------------------------------------------
# Generalised sampler of the paper's ablations (sampling-and-fid.md section 2).

def ablation_sampler(
    net, latents, class_labels=None, randn_like=torch.randn_like,
    num_steps=18, sigma_min=None, sigma_max=None, rho=7,
    solver='heun', discretization='edm', schedule='linear', scaling='none',
    epsilon_s=1e-3, C_1=0.001, C_2=0.008, M=1000, alpha=1,
    S_churn=0, S_min=0, S_max=float('inf'), S_noise=1,
):
    """Sampler with a choice of ODE solver, noise-level discretisation, schedule sigma(t) and
    scaling s(t) (paper Table 1 and section 3). Defaults reproduce edm_sampler."""
    assert solver in ['euler', 'heun']
    assert discretization in ['vp', 've', 'iddpm', 'edm']
    assert schedule in ['vp', 've', 'linear']
    assert scaling in ['vp', 'none']
    device = latents.device

    # Noise range: defaults of the discretisation, then clamped to the network's range (section 2.2).
    if sigma_min is None:
        sigma_min = dict(vp=vp_sigma_at(epsilon_s), ve=0.02, iddpm=0.002, edm=0.002)[discretization]
    if sigma_max is None:
        sigma_max = dict(vp=vp_sigma_at(1), ve=100, iddpm=81, edm=80)[discretization]
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)

    # VP parameters that reproduce the range exactly (used by disc=vp and schedule=vp).
    vp_beta_d, vp_beta_min = vp_beta_for_range(sigma_min, sigma_max, epsilon_s)

    # Noise levels sigma_i of the discretisation (section 2.3).
    step_indices = torch.arange(num_steps, dtype=torch.float64, device=device)
    if discretization == 'vp':
        orig_t_steps = 1 + step_indices / (num_steps - 1) * (epsilon_s - 1)
        sigma_steps = vp_schedule(vp_beta_d, vp_beta_min)[0](orig_t_steps)
    elif discretization == 've':
        sigma_steps = (sigma_max ** 2 * (sigma_min ** 2 / sigma_max ** 2) ** (step_indices / (num_steps - 1))) ** 0.5
    elif discretization == 'iddpm':
        u = iddpm_noise_levels(M, C_1, C_2, device=device)
        u_in_range = u[torch.logical_and(u >= sigma_min, u <= sigma_max)]
        sigma_steps = u_in_range[((len(u_in_range) - 1) / (num_steps - 1) * step_indices).round().to(torch.int64)]
    else:
        sigma_steps = edm_time_steps(num_steps, sigma_min, sigma_max, rho, device=device)

    # Schedule sigma(t) and scaling s(t) (section 2.1).
    if schedule == 'vp':
        sigma, sigma_deriv, sigma_inv = vp_schedule(vp_beta_d, vp_beta_min)
    elif schedule == 've':
        sigma, sigma_deriv, sigma_inv = ve_schedule()
    else:
        sigma, sigma_deriv, sigma_inv = linear_schedule()
    if scaling == 'vp':
        s = lambda t: 1 / (1 + sigma(t) ** 2).sqrt()
        s_deriv = lambda t: -sigma(t) * sigma_deriv(t) * (s(t) ** 3)
    else:
        s = lambda t: 1
        s_deriv = lambda t: 0

    # ODE right-hand side dx/dt (paper eq. 4) for the denoiser output D(x/s; sigma).
    def ode_derivative(x, t, denoised):
        return (sigma_deriv(t) / sigma(t) + s_deriv(t) / s(t)) * x - sigma_deriv(t) * s(t) / sigma(t) * denoised

    def denoise(x, t):
        return net(x / s(t), sigma(t), class_labels).to(torch.float64)

    # Time steps t_i = sigma^-1(rounded sigma_i), then t_N = 0.
    t_steps = sigma_inv(net.round_sigma(sigma_steps))
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])

    t_next = t_steps[0]
    x_next = latents.to(torch.float64) * (sigma(t_next) * s(t_next))
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next

        # Churn: raise the noise level to sigma(t_hat); noise is drawn on every step.
        gamma = churn_gamma(sigma(t_cur), num_steps, S_churn, S_min, S_max)
        t_hat = sigma_inv(net.round_sigma(sigma(t_cur) + gamma * sigma(t_cur)))
        x_hat = s(t_hat) / s(t_cur) * x_cur + (sigma(t_hat) ** 2 - sigma(t_cur) ** 2).clip(min=0).sqrt() * s(t_hat) * S_noise * randn_like(x_cur)

        # Euler step, or the generalised 2nd-order step with intermediate point t_hat + alpha*h.
        h = t_next - t_hat
        d_cur = ode_derivative(x_hat, t_hat, denoise(x_hat, t_hat))
        if solver == 'euler' or i == num_steps - 1:
            x_next = x_hat + h * d_cur
        else:
            t_prime = t_hat + alpha * h
            x_prime = x_hat + alpha * h * d_cur
            d_prime = ode_derivative(x_prime, t_prime, denoise(x_prime, t_prime))
            x_next = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)

    return x_next

#----------------------------------------------------------------------------
# Per-seed random generator (cli.md section 2.2 item 5): one torch.Generator per image, so an
# image depends only on its seed, not on batch size or the number of processes.

class StackedRandomGenerator:
    """Draws every batch item from its own generator, seeded with seed mod 2^32, and stacks them."""

    def __init__(self, device, seeds):
        self.generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def randn(self, size, **kwargs):
        assert size[0] == len(self.generators)
        return torch.stack([torch.randn(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def randn_like(self, input):
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args, size, **kwargs):
        assert size[0] == len(self.generators)
        return torch.stack([torch.randint(*args, size=size[1:], generator=gen, **kwargs) for gen in self.generators])

#----------------------------------------------------------------------------
