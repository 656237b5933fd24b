"""Samplers of the EDM paper and the per-seed noise source that makes an image depend on its seed only.

`edm_sampler` is the paper's stochastic Heun sampler (Algorithm 2) with sigma(t) = t and s(t) = 1.
`ablation_sampler` generalises it to the other columns of Table 1: a choice of ODE solver, noise-level
discretisation, noise schedule sigma(t) and signal scaling s(t) (Algorithm 1, plus the same churn).
`dpmpp2m_sampler` (DPM-Solver++(2M)) and `euler_ancestral_sampler` need one network evaluation per
step on the EDM time steps.

All take a preconditioned denoiser `net`, called as net(x, sigma, class_labels) with a float64 x and a
0-d float64 sigma (its output is cast to float64), float32 latents [N,C,H,W], optional class labels and a
`randn_like` noise source. They return the final x in float64; all their arithmetic is float64.
"""

import math

import numpy as np
import torch

#----------------------------------------------------------------------------
# Time-step discretisations ("Time steps" row of Table 1). Each gives the noise levels
# sigma_0 > ... > sigma_{N-1} of an N-step sampler, in float64.

def edm_noise_levels(num_steps, sigma_min, sigma_max, rho, device=None):
    """Eq. 5: step evenly between sigma_max^(1/rho) and sigma_min^(1/rho), then raise to the power rho,
    which concentrates the steps at low noise levels."""
    fraction = torch.arange(num_steps, dtype=torch.float64, device=device) / (num_steps - 1)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (top + fraction * (bottom - top)) ** rho

def vp_noise_levels(num_steps, epsilon_s, vp_schedule, device=None):
    """VP: times evenly spaced from t = 1 down to t = epsilon_s, mapped through sigma_VP(t)."""
    fraction = torch.arange(num_steps, dtype=torch.float64, device=device) / (num_steps - 1)
    return vp_schedule.sigma(1 + fraction * (epsilon_s - 1))

def ve_noise_levels(num_steps, sigma_min, sigma_max, device=None):
    """VE: geometric spacing of sigma^2 (and thus of sigma) from sigma_max down to sigma_min."""
    fraction = torch.arange(num_steps, dtype=torch.float64, device=device) / (num_steps - 1)
    return (sigma_max ** 2 * (sigma_min ** 2 / sigma_max ** 2) ** fraction) ** 0.5

def iddpm_alpha_bar(j, M, C_2):
    """Cosine schedule alpha_bar_j = sin^2(pi/2 * j / (M (C_2 + 1))) of improved DDPM. For an integer
    tensor j it comes out in float32, as in the original implementation."""
    return (0.5 * np.pi * j / M / (C_2 + 1)).sin() ** 2

def iddpm_levels(M, C_1, C_2, device=None):
    """The M + 1 noise levels u_0 > ... > u_M = 0 of improved DDPM, from the recursion
    u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar_{j-1} / alpha_bar_j, C_1) - 1)."""
    j = torch.arange(1, M + 1, device=device)
    ratios = (iddpm_alpha_bar(j - 1, M, C_2) / iddpm_alpha_bar(j, M, C_2)).clip(min=C_1)
    level = torch.zeros([], dtype=torch.float64, device=device)
    levels = [level]
    for ratio in ratios.flip(0): # From u_M = 0 upwards, one 0-d float64 tensor at a time.
        level = ((level ** 2 + 1) / ratio - 1).sqrt()
        levels.append(level)
    return torch.stack(levels[::-1])

def iddpm_noise_levels(num_steps, sigma_min, sigma_max, M, C_1, C_2, device=None):
    """iDDPM: of the levels u_j that lie in [sigma_min, sigma_max], num_steps evenly spaced ones
    (index rounded half to even)."""
    levels = iddpm_levels(M, C_1, C_2, device=device)
    usable = levels[torch.logical_and(levels >= sigma_min, levels <= sigma_max)]
    if len(usable) == 0:
        raise ValueError(f'no iDDPM noise level lies between sigma_min={sigma_min:g} and sigma_max={sigma_max:g}')
    position = (len(usable) - 1) / (num_steps - 1) * torch.arange(num_steps, dtype=torch.float64, device=device)
    return usable[position.round().to(torch.int64)]

def append_zero(t_steps):
    """The last step of every sampler ends at t_N = 0."""
    return torch.cat([t_steps, torch.zeros_like(t_steps[:1])])

#----------------------------------------------------------------------------
# Building blocks of the EDM sampler (Algorithm 2).

def churn_gamma(sigma, num_steps, S_churn, S_min, S_max):
    """Algorithm 2, line 5: how much to raise the noise level, only inside [S_min, S_max]."""
    if S_min <= sigma <= S_max:
        return min(S_churn / num_steps, math.sqrt(2) - 1)
    return 0

def add_churn_noise(x, t_cur, t_hat, S_noise, randn_like):
    """Algorithm 2, lines 6-7: fresh noise that takes x from level t_cur up to t_hat. The noise is
    drawn even when t_hat = t_cur (the factor is then 0), so every step consumes one draw."""
    return x + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x)

def edm_slope(net, x, t, class_labels):
    """dx/dt = (x - D(x; t)) / t for sigma(t) = t and s(t) = 1 (Algorithm 2, lines 7 and 11)."""
    denoised = net(x, t, class_labels).to(torch.float64)
    return (x - denoised) / t

def euler_step(x, t, t_next, slope):
    """One Euler step of the ODE from t to t_next."""
    return x + (t_next - t) * slope

def second_order_step(x, t, t_next, slope, slope_ahead, alpha=1):
    """Second-order step from t to t_next, blending the slope at t with the slope at the point
    t + alpha (t_next - t) ahead. alpha = 1 is Heun's method (Algorithm 1 and 2, line 12)."""
    weight_ahead = 1 / (2 * alpha)
    return x + (t_next - t) * ((1 - weight_ahead) * slope + weight_ahead * slope_ahead)

#----------------------------------------------------------------------------

def edm_time_steps(net, num_steps, sigma_min, sigma_max, rho, device=None):
    """t_0 > ... > t_{N-1} > t_N = 0: the levels of Eq. 5 within the network's noise range, rounded
    to levels the network supports, and the final 0."""
    sigma_min, sigma_max = noise_range(net, sigma_min, sigma_max)
    return append_zero(net.round_sigma(edm_noise_levels(num_steps, sigma_min, sigma_max, rho, device=device)))

def edm_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=18, sigma_min=0.002,
                sigma_max=80, rho=7, S_churn=0, S_min=0, S_max=float('inf'), S_noise=1):
    """Heun sampler with optional churn (Algorithm 2). NFE (network evaluations) for N steps: 2 N - 1."""
    t_steps = edm_time_steps(net, num_steps, sigma_min, sigma_max, rho, device=latents.device)
    x = latents.to(torch.float64) * t_steps[0]
    for i in range(num_steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        gamma = churn_gamma(t_cur, num_steps, S_churn, S_min, S_max)
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = add_churn_noise(x, t_cur, t_hat, S_noise, randn_like)
        slope = edm_slope(net, x_hat, t_hat, class_labels)
        x = euler_step(x_hat, t_hat, t_next, slope)
        if i < num_steps - 1: # The final step, to sigma = 0, stays first-order.
            x = second_order_step(x_hat, t_hat, t_next, slope, edm_slope(net, x, t_next, class_labels))
    return x

#----------------------------------------------------------------------------
# Solvers that need fewer network evaluations, on the same EDM time steps (Eq. 5, no churn). In
# terms of lambda = -log sigma, the ODE dx/dsigma = (x - D(x; sigma)) / sigma has the exact solution
# x(sigma_next) = D + (sigma_next / sigma) (x(sigma) - D) while D stays constant; both build on it.

def toward_denoised(x, sigma, sigma_next, denoised):
    """Move x from level sigma to sigma_next along the line through the denoised estimate. This is
    the first-order DPM-Solver++ update and, for sigma(t) = t, also the Euler step."""
    return denoised + (sigma_next / sigma) * (x - denoised)

def dpmpp2m_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=18, sigma_min=0.002,
                    sigma_max=80, rho=7):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", Algorithm 2): multistep, second order, in the data prediction D. With
    log-steps h_i = log(sigma_i / sigma_{i+1}), step i uses the linear extrapolation in lambda
    D_i + h_i / (2 h_{i-1}) (D_i - D_{i-1}) of the last two estimates. The first step has no history
    and the last one, to sigma = 0 (h = infinity), lands on D itself: both are first-order.
    Deterministic (randn_like is not used). NFE for N steps: N."""
    t_steps = edm_time_steps(net, num_steps, sigma_min, sigma_max, rho, device=latents.device)
    x = latents.to(torch.float64) * t_steps[0]
    previous = None # (D, h) of the step before.
    for sigma, sigma_next in zip(t_steps[:-2], t_steps[1:-1]):
        denoised = net(x, sigma, class_labels).to(torch.float64)
        h = (sigma / sigma_next).log()
        target = denoised
        if previous is not None:
            target = denoised + (h / (2 * previous[1])) * (denoised - previous[0])
        x = toward_denoised(x, sigma, sigma_next, target)
        previous = (denoised, h)
    return net(x, t_steps[-2], class_labels).to(torch.float64) # The last step, to sigma = 0, lands on D.

def ancestral_split(sigma, sigma_next):
    """(sigma_down, sigma_up) of an ancestral step with eta = 1: the deterministic step goes down to
    sigma_down and fresh noise of std sigma_up brings the level back up to
    sqrt(sigma_down^2 + sigma_up^2) = sigma_next."""
    sigma_up = torch.minimum(sigma_next, (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2).sqrt())
    sigma_down = (sigma_next ** 2 - sigma_up ** 2).clip(min=0).sqrt()
    return sigma_down, sigma_up

def euler_ancestral_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=18, sigma_min=0.002,
                            sigma_max=80, rho=7):
    """Ancestral Euler: an Euler step from sigma to sigma_down, then noise of std sigma_up. Stochastic:
    every step draws one randn_like(x) (the last one, to sigma = 0, with std 0), so the output depends
    on the noise source only. First order. NFE for N steps: N."""
    t_steps = edm_time_steps(net, num_steps, sigma_min, sigma_max, rho, device=latents.device)
    x = latents.to(torch.float64) * t_steps[0]
    for sigma, sigma_next in zip(t_steps[:-1], t_steps[1:]):
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next)
        x = euler_step(x, sigma, sigma_down, edm_slope(net, x, sigma, class_labels))
        x = x + sigma_up * randn_like(x)
    return x

#----------------------------------------------------------------------------
# Noise schedules sigma(t) ("Schedule" row of Table 1), each with its derivative and inverse.

class VPSchedule:
    """Variance preserving: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""

    def __init__(self, beta_d=19.9, beta_min=0.1):
        self.beta_d = beta_d
        self.beta_min = beta_min

    @classmethod
    def spanning(cls, sigma_min, sigma_max, epsilon_s):
        """The VP schedule with sigma(epsilon_s) = sigma_min and sigma(1) = sigma_max."""
        log_top = np.log(sigma_max ** 2 + 1)
        beta_d = 2 * (np.log(sigma_min ** 2 + 1) / epsilon_s - log_top) / (epsilon_s - 1)
        return cls(beta_d=float(beta_d), beta_min=float(log_top - 0.5 * beta_d))

    def sigma(self, t):
        return (torch.exp(0.5 * self.beta_d * (t ** 2) + self.beta_min * t) - 1) ** 0.5

    def sigma_deriv(self, t):
        sigma = self.sigma(t)
        return 0.5 * (self.beta_min + self.beta_d * t) * (sigma + 1 / sigma)

    def sigma_inv(self, sigma):
        root = (self.beta_min ** 2 + 2 * self.beta_d * (sigma ** 2 + 1).log()) ** 0.5
        return (root - self.beta_min) / self.beta_d

class VESchedule:
    """Variance exploding: sigma(t) = sqrt(t)."""

    def sigma(self, t):
        return t.sqrt()

    def sigma_deriv(self, t):
        return 0.5 / t.sqrt()

    def sigma_inv(self, sigma):
        return sigma ** 2

class LinearSchedule:
    """The paper's choice: sigma(t) = t."""

    def sigma(self, t):
        return t

    def sigma_deriv(self, t):
        return 1

    def sigma_inv(self, sigma):
        return sigma

# Signal scalings s(t) ("Scaling" row of Table 1), each with its derivative.

class VPScaling:
    """s(t) = 1 / sqrt(1 + sigma(t)^2), which keeps the variance of x(t) constant."""

    def __init__(self, schedule):
        self.schedule = schedule

    def s(self, t):
        return 1 / (1 + self.schedule.sigma(t) ** 2).sqrt()

    def s_deriv(self, t):
        return -self.schedule.sigma(t) * self.schedule.sigma_deriv(t) * (self.s(t) ** 3)

class NoScaling:
    """s(t) = 1."""

    def s(self, t):
        return 1

    def s_deriv(self, t):
        return 0

def ode_slope(net, x, t, class_labels, schedule, scaling):
    """dx/dt of the probability-flow ODE (Eq. 4), with the score expressed through the denoiser
    evaluated on the unscaled x / s(t) (Algorithm 1, lines 4 and 7)."""
    sigma, sigma_deriv = schedule.sigma(t), schedule.sigma_deriv(t)
    s, s_deriv = scaling.s(t), scaling.s_deriv(t)
    denoised = net(x / s, sigma, class_labels).to(torch.float64)
    return (sigma_deriv / sigma + s_deriv / s) * x - sigma_deriv * s / sigma * denoised

#----------------------------------------------------------------------------

def default_noise_range(discretization, epsilon_s):
    """(sigma_min, sigma_max) that each discretisation uses unless told otherwise. VP spans
    sigma_VP(epsilon_s) .. sigma_VP(1) of the standard VP SDE (beta_d = 19.9, beta_min = 0.1)."""
    if discretization == 'vp':
        standard = VPSchedule()
        return tuple(standard.sigma(torch.tensor(t, dtype=torch.float64)).item() for t in (epsilon_s, 1))
    return dict(ve=(0.02, 100), iddpm=(0.002, 81), edm=(0.002, 80))[discretization]

def noise_range(net, sigma_min=None, sigma_max=None, discretization='edm', epsilon_s=1e-3):
    """The noise range a sampler uses: the discretisation's default where a bound is None, limited
    to the levels the network supports. ValueError when that leaves no room between the bounds."""
    default_min, default_max = default_noise_range(discretization, epsilon_s)
    low = max(default_min if sigma_min is None else sigma_min, net.sigma_min)
    high = min(default_max if sigma_max is None else sigma_max, net.sigma_max)
    if not low < high:
        raise ValueError(f'the noise range is empty: sigma_min={low:g} is not below sigma_max={high:g} '
            f'(the network supports {net.sigma_min:g} to {net.sigma_max:g})')
    return low, high

def ablation_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=18, sigma_min=None,
                     sigma_max=None, rho=7, solver='heun', discretization='edm', schedule='linear', scaling='none',
                     epsilon_s=1e-3, C_1=0.001, C_2=0.008, M=1000, alpha=1, S_churn=0, S_min=0, S_max=float('inf'),
                     S_noise=1):
    """Sampler for the Table 1 ablations: Algorithm 1 with the churn of Algorithm 2 and a choice of
    solver, time steps, sigma(t) and s(t). The defaults give the EDM sampler up to rounding.
    NFE for N steps: 2 N - 1 with solver='heun', N with solver='euler'."""
    assert solver in ('euler', 'heun')
    assert discretization in ('vp', 've', 'iddpm', 'edm')
    assert schedule in ('vp', 've', 'linear')
    assert scaling in ('vp', 'none')
    device = latents.device

    sigma_min, sigma_max = noise_range(net, sigma_min, sigma_max, discretization, epsilon_s)
    fitted_vp = VPSchedule.spanning(sigma_min, sigma_max, epsilon_s) # Used by the VP time steps and schedule.

    if discretization == 'vp':
        levels = vp_noise_levels(num_steps, epsilon_s, fitted_vp, device=device)
    elif discretization == 've':
        levels = ve_noise_levels(num_steps, sigma_min, sigma_max, device=device)
    elif discretization == 'iddpm':
        levels = iddpm_noise_levels(num_steps, sigma_min, sigma_max, M, C_1, C_2, device=device)
    else:
        levels = edm_noise_levels(num_steps, sigma_min, sigma_max, rho, device=device)
    sched = dict(vp=fitted_vp, ve=VESchedule(), linear=LinearSchedule())[schedule]
    scale = VPScaling(sched) if scaling == 'vp' else NoScaling()
    t_steps = append_zero(sched.sigma_inv(net.round_sigma(levels)))

    x = latents.to(torch.float64) * (sched.sigma(t_steps[0]) * scale.s(t_steps[0]))
    for i in range(num_steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]

        # Churn (Algorithm 2, lines 5-7) in terms of sigma(t), on the scaled x.
        sigma_cur = sched.sigma(t_cur)
        gamma = churn_gamma(sigma_cur, num_steps, S_churn, S_min, S_max)
        t_hat = sched.sigma_inv(net.round_sigma(sigma_cur + gamma * sigma_cur))
        noise_std = (sched.sigma(t_hat) ** 2 - sigma_cur ** 2).clip(min=0).sqrt() * scale.s(t_hat)
        x_hat = scale.s(t_hat) / scale.s(t_cur) * x + noise_std * S_noise * randn_like(x)

        slope = ode_slope(net, x_hat, t_hat, class_labels, sched, scale)
        if solver == 'euler' or i == num_steps - 1:
            x = euler_step(x_hat, t_hat, t_next, slope)
        else:
            t_ahead = t_hat + alpha * (t_next - t_hat)
            x_ahead = x_hat + alpha * (t_next - t_hat) * slope
            slope_ahead = ode_slope(net, x_ahead, t_ahead, class_labels, sched, scale)
            x = second_order_step(x_hat, t_hat, t_next, slope, slope_ahead, alpha)
    return x

#----------------------------------------------------------------------------

class StackedRandomGenerator:
    """Noise source for a batch in which item i draws from its own torch.Generator, seeded with
    seeds[i] mod 2^32. Draws are made item by item and stacked, so a sample depends on its seed alone,
    not on the batch it is in or the number of processes."""

    def __init__(self, device, seeds):
        self.generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def _stack(self, batch_size, draw):
        assert batch_size == len(self.generators), 'one generator per batch item'
        return torch.stack([draw(generator) for generator in self.generators])

    def randn(self, size, **kwargs):
        return self._stack(size[0], lambda generator: torch.randn(size[1:], generator=generator, **kwargs))

    def randn_like(self, input):
        return self.randn(input.shape, device=input.device, dtype=input.dtype, layout=input.layout)

    def randint(self, *args, size, **kwargs):
        return self._stack(size[0], lambda generator: torch.randint(*args, size=size[1:], generator=generator, **kwargs))
