"""Training losses of the VP, VE and EDM formulations (spec training.md section 1; EDM paper,
Table 1 and Section 5).

Each loss draws a noise level sigma per image, corrupts the (optionally augmented) images with
Gaussian noise of that level and returns the weighted squared denoising error per element,
lambda(sigma) * (D(y + n; sigma) - y)^2, with the shape of `images` (no reduction).

This module is embedded in training snapshots and executed by the original EDM environment
when they are loaded there (persistence.md section 7): it must stay valid Python 3.8 / PyTorch
1.12 and import only torch and torch_utils.persistence.
"""

import torch
from torch_utils import persistence

#----------------------------------------------------------------------------

def denoising_error(net, images, labels, augment_pipe, sigma, weight):
    """Steps 3-6 of spec 1: augment, add noise of level sigma, denoise, weight the squared error."""
    y, augment_labels = augment_pipe(images) if augment_pipe is not None else (images, None)
    n = torch.randn_like(y) * sigma
    D_yn = net(y + n, sigma, labels, augment_labels=augment_labels)
    return weight * ((D_yn - y) ** 2)

#----------------------------------------------------------------------------
# Variance preserving (VP) loss: t uniform in (epsilon_t, 1], sigma(t) of the VP SDE, lambda = 1/sigma^2.

@persistence.persistent_class
class VPLoss:
    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5):
        self.beta_d = float(beta_d)
        self.beta_min = float(beta_min)
        self.epsilon_t = float(epsilon_t)

    def __call__(self, net, images, labels, augment_pipe=None):
        rnd_uniform = torch.rand([images.shape[0], 1, 1, 1], device=images.device)
        sigma = self.sigma(1 + rnd_uniform * (self.epsilon_t - 1))
        weight = 1 / sigma ** 2
        return denoising_error(net, images, labels, augment_pipe, sigma, weight)

    def sigma(self, t):
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

#----------------------------------------------------------------------------
# Variance exploding (VE) loss: sigma log-uniform in [sigma_min, sigma_max), lambda = 1/sigma^2.

@persistence.persistent_class
class VELoss:
    def __init__(self, sigma_min=0.02, sigma_max=100):
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def __call__(self, net, images, labels, augment_pipe=None):
        rnd_uniform = torch.rand([images.shape[0], 1, 1, 1], device=images.device)
        sigma = self.sigma_min * ((self.sigma_max / self.sigma_min) ** rnd_uniform)
        weight = 1 / sigma ** 2
        return denoising_error(net, images, labels, augment_pipe, sigma, weight)

#----------------------------------------------------------------------------
# EDM loss: ln(sigma) ~ N(P_mean, P_std^2), lambda = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2.

@persistence.persistent_class
class EDMLoss:
    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)
        self.sigma_data = float(sigma_data)

    def __call__(self, net, images, labels=None, augment_pipe=None):
        rnd_normal = torch.randn([images.shape[0], 1, 1, 1], device=images.device)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        return denoising_error(net, images, labels, augment_pipe, sigma, weight)

#----------------------------------------------------------------------------
