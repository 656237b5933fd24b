"""Training losses of the VP, VE and EDM formulations (Karras et al. 2022, Table 1).

All three minimise the same weighted denoising error (Section 5, Eq. 8),

    E_{sigma, y, n} [ lambda(sigma) * || D(y + n; sigma) - y ||^2 ],   n ~ N(0, sigma^2 I),

and differ only in the distribution p_train(sigma) of the training noise levels and in the loss
weight lambda(sigma): the "Training" rows of Table 1. Each loss object is called as
`loss_fn(net, images, labels, augment_pipe)` and returns the error per element, with the shape of
`images`; the training loop does the reduction.

Snapshots embed the source of this module, and older installations of the original code execute
it when they load one. It therefore stays valid Python 3.8 / PyTorch 1.12 and imports nothing but
torch and torch_utils.persistence.
"""

import torch
from torch_utils import persistence

#----------------------------------------------------------------------------

def per_image_draw(sampler, images):
    """One value per image from `sampler` (torch.rand or torch.randn), shaped to broadcast as [N, 1, 1, 1]."""
    return sampler([images.shape[0], 1, 1, 1], device=images.device)

def weighted_denoising_error(net, images, labels, augment_pipe, sigma, weight):
    """lambda(sigma) * (D(y + n; sigma) - y)^2 per element.

    The clean target y is the augmented image when a pipe is given; the network then also sees the
    augmentation parameters (Section 5, "Augmentation regularization"). The noise is drawn after the
    augmentation, which fixes the order of the random draws.
    """
    if augment_pipe is None:
        clean, augment_labels = images, None
    else:
        clean, augment_labels = augment_pipe(images)
    noisy = clean + torch.randn_like(clean) * sigma
    denoised = net(noisy, sigma, labels, augment_labels=augment_labels)
    return weight * (denoised - clean).square()

#----------------------------------------------------------------------------
# VP (Song et al. 2021): t ~ U(epsilon_t, 1], sigma = sigma(t) of the VP SDE, lambda = 1 / sigma^2.

@persistence.persistent_class
class VPLoss:
    def __init__(self,
        beta_d      = 19.9,     # Growth of the linear beta(t) schedule.
        beta_min    = 0.1,      # beta(0).
        epsilon_t   = 1e-5,     # Smallest training time step.
    ):
        self.beta_d, self.beta_min, self.epsilon_t = float(beta_d), float(beta_min), float(epsilon_t)

    def sigma(self, t):
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (Table 1, VP column)."""
        t = torch.as_tensor(t)
        exponent = self.beta_d / 2 * t.square() + self.beta_min * t
        return (exponent.exp() - 1).sqrt()

    def __call__(self, net, images, labels, augment_pipe=None):
        t = 1 - (1 - self.epsilon_t) * per_image_draw(torch.rand, images) # Uniform in (epsilon_t, 1].
        sigma = self.sigma(t)
        return weighted_denoising_error(net, images, labels, augment_pipe, sigma, weight=sigma.square().reciprocal())

#----------------------------------------------------------------------------
# VE (Song et al. 2021): ln(sigma) ~ U[ln sigma_min, ln sigma_max), lambda = 1 / sigma^2.

@persistence.persistent_class
class VELoss:
    def __init__(self,
        sigma_min   = 0.02,     # Lower end of the log-uniform range.
        sigma_max   = 100,      # Upper end of the log-uniform range.
    ):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def __call__(self, net, images, labels, augment_pipe=None):
        exponent = per_image_draw(torch.rand, images)
        sigma = torch.pow(self.sigma_max / self.sigma_min, exponent) * self.sigma_min
        return weighted_denoising_error(net, images, labels, augment_pipe, sigma, weight=sigma.square().reciprocal())

#----------------------------------------------------------------------------
# EDM (Section 5): ln(sigma) ~ N(P_mean, P_std^2), and the weight that gives the network output
# unit loss magnitude at every sigma, lambda = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2.

@persistence.persistent_class
class EDMLoss:
    def __init__(self,
        P_mean      = -1.2,     # Mean of ln(sigma).
        P_std       = 1.2,      # Standard deviation of ln(sigma).
        sigma_data  = 0.5,      # Standard deviation of the training data.
    ):
        self.P_mean, self.P_std, self.sigma_data = float(P_mean), float(P_std), float(sigma_data)

    def __call__(self, net, images, labels=None, augment_pipe=None):
        log_sigma = self.P_mean + self.P_std * per_image_draw(torch.randn, images)
        sigma = log_sigma.exp()
        weight = (sigma.square() + self.sigma_data ** 2) / (self.sigma_data * sigma).square()
        return weighted_denoising_error(net, images, labels, augment_pipe, sigma, weight=weight)

#----------------------------------------------------------------------------
