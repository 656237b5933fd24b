"""Non-leaking augmentation pipeline (spec training.md section 2).

Each transform draws its parameter and then a gate from the global torch RNG, on the images'
device. Where the gate is closed the parameter becomes the identity. The drawn parameters are
returned as a label vector per image, which the network receives as `augment_labels`.

This module is embedded in training snapshots and executed by the original EDM environment
when they are loaded there (persistence.md section 7): it must stay valid Python 3.8 / PyTorch
1.12 and import only numpy, torch and torch_utils.{persistence, misc}.
"""

import numpy as np
import torch
from torch_utils import persistence
from torch_utils import misc

#----------------------------------------------------------------------------
# Daubechies sym6 low-pass filter used for the geometric resampling (spec 2.3, step 2).

SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]

#----------------------------------------------------------------------------
# Homogeneous transformation matrices. Entries are numbers or [N] tensors; a matrix with a
# tensor entry is batched ([N, rows, cols]), one made of numbers only is a cached constant.

def matrix(*rows, device=None):
    entries = [x for row in rows for x in row]
    batched = [x for x in entries if isinstance(x, torch.Tensor)]
    if len(batched) == 0:
        return misc.constant(np.asarray(rows), device=device)
    ref = batched[0]
    entries = [x if isinstance(x, torch.Tensor) else misc.constant(x, shape=ref.shape, device=ref.device) for x in entries]
    return torch.stack(entries, dim=-1).reshape(ref.shape + (len(rows), -1))

def translate2d(tx, ty, **kwargs):
    return matrix([1, 0, tx], [0, 1, ty], [0, 0, 1], **kwargs)

def scale2d(sx, sy, **kwargs):
    return matrix([sx, 0, 0], [0, sy, 0], [0, 0, 1], **kwargs)

def rotate2d(theta, **kwargs):
    c, s = torch.cos(theta), torch.sin(theta)
    return matrix([c, -s, 0], [s, c, 0], [0, 0, 1], **kwargs)

def scale2d_inv(sx, sy, **kwargs):
    return scale2d(1 / sx, 1 / sy, **kwargs)

def translate3d(tx, ty, tz, **kwargs):
    return matrix([1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1], **kwargs)

def scale3d(sx, sy, sz, **kwargs):
    return matrix([sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1], **kwargs)

def rotate3d(axis, theta, **kwargs):
    """Rodrigues rotation about the unit `axis`: c*I + s*[axis]x + (1-c)*axis*axis^T."""
    vx, vy, vz = axis[0], axis[1], axis[2]
    c, s = torch.cos(theta), torch.sin(theta)
    k = 1 - c
    return matrix(
        [vx * vx * k + c,      vx * vy * k - vz * s, vx * vz * k + vy * s, 0],
        [vy * vx * k + vz * s, vy * vy * k + c,      vy * vz * k - vx * s, 0],
        [vz * vx * k - vy * s, vz * vy * k + vx * s, vz * vz * k + c,      0],
        [0,                    0,                    0,                    1], **kwargs)

#----------------------------------------------------------------------------
# Separable 2x resampling with the sym6 filter (spec 2.3, steps 4 and 6). `axis` is 3 for W, 2 for H.

def _depthwise(images, taps, axis, stride=1, padding=0):
    num_channels = images.shape[1]
    weight = misc.constant(taps, dtype=images.dtype, device=images.device)
    weight = weight.reshape([1, 1, -1, 1] if axis == 2 else [1, 1, 1, -1]).repeat([num_channels, 1, 1, 1])
    stride = [stride, 1] if axis == 2 else [1, stride]
    padding = [padding, 0] if axis == 2 else [0, padding]
    return torch.nn.functional.conv2d(images, weight, stride=stride, padding=padding, groups=num_channels)

def upsample2x(images, axis):
    """Insert a zero after every sample (dropping the last one), then convolve with sym6."""
    shape = list(images.shape)
    shape[axis] *= 2
    images = torch.stack([images, torch.zeros_like(images)], dim=axis + 1).reshape(shape)
    images = images.narrow(axis, 0, shape[axis] - 1)
    return _depthwise(images, SYM6[::-1], axis, padding=len(SYM6) // 2)

def downsample2x(images, axis):
    """Cross-correlate with sym6 at stride 2, then crop the filter margin on both sides."""
    crop = len(SYM6) // 4
    images = _depthwise(images, SYM6, axis, stride=2, padding=len(SYM6) // 2 - 1)
    return images.narrow(axis, crop, images.shape[axis] - 2 * crop)

#----------------------------------------------------------------------------

@persistence.persistent_class
class AugmentPipe:
    """Augmentations of spec 2.1, each applied per image with probability multiplier * p."""

    def __init__(self, p=1,
        xflip=0, yflip=0, rotate_int=0, translate_int=0, translate_int_max=0.125,
        scale=0, rotate_frac=0, aniso=0, translate_frac=0, scale_std=0.2, rotate_frac_max=1, aniso_std=0.2, aniso_rotate_prob=0.5, translate_frac_std=0.125,
        brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1,
    ):
        self.p = float(p)                                   # Overall probability multiplier.

        # Pixel blitting.
        self.xflip = float(xflip)
        self.yflip = float(yflip)
        self.rotate_int = float(rotate_int)                 # 90 degree rotations.
        self.translate_int = float(translate_int)
        self.translate_int_max = float(translate_int_max)   # Fraction of image size.

        # Geometric transformations.
        self.scale = float(scale)
        self.rotate_frac = float(rotate_frac)
        self.aniso = float(aniso)
        self.translate_frac = float(translate_frac)
        self.scale_std = float(scale_std)                   # log2 standard deviation.
        self.rotate_frac_max = float(rotate_frac_max)       # 1 = full circle.
        self.aniso_std = float(aniso_std)                   # log2 standard deviation.
        self.aniso_rotate_prob = float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std) # Fraction of image size.

        # Color transformations.
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)             # log2 standard deviation.
        self.hue_max = float(hue_max)                       # 1 = full circle.
        self.saturation_std = float(saturation_std)         # log2 standard deviation.

    def _gate(self, param, multiplier, shape, device):
        """Keep `param` where rand(shape) < multiplier * p, otherwise 0 (the identity)."""
        keep = torch.rand(shape, device=device) < multiplier * self.p
        return torch.where(keep, param, torch.zeros_like(param))

    def __call__(self, images):
        if images.ndim != 4:
            raise ValueError(f'AugmentPipe: expected images of shape [N, C, H, W], got {list(images.shape)}')
        N, C, H, W = images.shape
        device = images.device
        uses_color = any(m > 0 for m in [self.brightness, self.contrast, self.lumaflip, self.hue, self.saturation])
        if uses_color and C not in (1, 3):
            raise ValueError(f'AugmentPipe: color transforms need 1 or 3 channels, got {C}')
        if self.rotate_int > 0 and H != W:
            raise ValueError(f'AugmentPipe: rotate_int needs square images, got {H}x{W}')
        labels = [torch.zeros([N, 0], device=device)]

        # Pixel blitting (spec 2.2, transforms 1-4), applied directly to the pixels.
        if self.xflip > 0:
            w = self._gate(torch.randint(2, [N, 1, 1, 1], device=device), self.xflip, [N, 1, 1, 1], device)
            images = torch.where(w == 1, images.flip(3), images)
            labels += [w]
        if self.yflip > 0:
            w = self._gate(torch.randint(2, [N, 1, 1, 1], device=device), self.yflip, [N, 1, 1, 1], device)
            images = torch.where(w == 1, images.flip(2), images)
            labels += [w]
        if self.rotate_int > 0:
            w = self._gate(torch.randint(4, [N, 1, 1, 1], device=device), self.rotate_int, [N, 1, 1, 1], device)
            images = torch.where((w == 1) | (w == 2), images.flip(3), images)
            images = torch.where((w == 2) | (w == 3), images.flip(2), images)
            images = torch.where((w == 1) | (w == 3), images.transpose(2, 3), images)
            labels += [(w == 1) | (w == 2), (w == 2) | (w == 3)]
        if self.translate_int > 0:
            w = torch.rand([2, N, 1, 1, 1], device=device) * 2 - 1
            w = self._gate(w, self.translate_int, [1, N, 1, 1, 1], device)
            tx = (w[0] * W * self.translate_int_max).round().to(torch.int64)
            ty = (w[1] * H * self.translate_int_max).round().to(torch.int64)
            images = self._translate_int(images, tx, ty)
            labels += [tx.div(W * self.translate_int_max), ty.div(H * self.translate_int_max)]

        # Geometric transformations (transforms 5-8), accumulated into the inverse transform
        # G (output -> input pixel coordinates, origin at the image centre).
        I_3 = misc.constant(np.eye(3), device=device)
        G_inv = I_3
        if self.scale > 0:
            w = self._gate(torch.randn([N], device=device), self.scale, [N], device)
            s = 2 ** (w * self.scale_std)
            G_inv = G_inv @ scale2d_inv(s, s)
            labels += [w]
        if self.rotate_frac > 0:
            w = (torch.rand([N], device=device) * 2 - 1) * np.pi * self.rotate_frac_max
            w = self._gate(w, self.rotate_frac, [N], device)
            G_inv = G_inv @ rotate2d(w)
            labels += [w.cos() - 1, w.sin()]
        if self.aniso > 0:
            w = torch.randn([N], device=device)
            r = (torch.rand([N], device=device) * 2 - 1) * np.pi
            w = self._gate(w, self.aniso, [N], device)
            r = torch.where(torch.rand([N], device=device) < self.aniso_rotate_prob, r, torch.zeros_like(r))
            s = 2 ** (w * self.aniso_std)
            G_inv = G_inv @ rotate2d(-r) @ scale2d_inv(s, 1 / s) @ rotate2d(r)
            labels += [w * r.cos(), w * r.sin()]
        if self.translate_frac > 0:
            w = self._gate(torch.randn([2, N], device=device), self.translate_frac, [1, N], device)
            G_inv = G_inv @ translate2d(-w[0] * W * self.translate_frac_std, -w[1] * H * self.translate_frac_std)
            labels += [w[0], w[1]]
        if G_inv is not I_3: # Structural: runs once any geometric transform is enabled, even if all gates are closed.
            images = self._warp(images, G_inv)

        # Color transformations (transforms 9-13), accumulated into a 4x4 matrix M acting on
        # homogeneous RGB. v is the luma axis.
        I_4 = misc.constant(np.eye(4), device=device)
        M = I_4
        v = misc.constant(np.asarray([1, 1, 1, 0]) / np.sqrt(3), device=device)
        vvT = v.outer(v)
        if self.brightness > 0:
            w = self._gate(torch.randn([N], device=device), self.brightness, [N], device)
            b = w * self.brightness_std
            M = translate3d(b, b, b) @ M
            labels += [w]
        if self.contrast > 0:
            w = self._gate(torch.randn([N], device=device), self.contrast, [N], device)
            c = 2 ** (w * self.contrast_std)
            M = scale3d(c, c, c) @ M
            labels += [w]
        if self.lumaflip > 0:
            w = self._gate(torch.randint(2, [N, 1, 1], device=device), self.lumaflip, [N, 1, 1], device)
            M = (I_4 - 2 * vvT * w) @ M
            labels += [w]
        if self.hue > 0:
            w = (torch.rand([N], device=device) * 2 - 1) * np.pi * self.hue_max
            w = self._gate(w, self.hue, [N], device)
            M = rotate3d(v, w) @ M
            labels += [w.cos() - 1, w.sin()]
        if self.saturation > 0:
            w = self._gate(torch.randn([N, 1, 1], device=device), self.saturation, [N, 1, 1], device)
            M = (vvT + (I_4 - vvT) * 2 ** (w * self.saturation_std)) @ M
            labels += [w]
        if M is not I_4:
            images = self._recolor(images, M)

        labels = torch.cat([x.to(torch.float32).reshape(N, -1) for x in labels], dim=1)
        return images, labels

    @staticmethod
    def _translate_int(images, tx, ty):
        """Integer shift by (tx, ty) pixels with mirror reflection at the borders (spec 2.2, #4)."""
        N, C, H, W = images.shape
        b, c, y, x = torch.meshgrid(*[torch.arange(n, device=images.device) for n in images.shape], indexing='ij')
        x = W - 1 - (W - 1 - (x - tx) % (W * 2 - 2)).abs()
        y = H - 1 - (H - 1 - (y + ty) % (H * 2 - 2)).abs()
        return images.flatten()[(((b * C) + c) * H + y) * W + x]

    @staticmethod
    def _warp(images, G_inv):
        """Apply the inverse geometric transform G_inv with sym6 2x supersampling (spec 2.3)."""
        N, C, H, W = images.shape
        device = images.device
        pad = len(SYM6) // 4

        # Reflect-pad just enough to cover the transformed image corners plus the filter support.
        cx = (W - 1) / 2
        cy = (H - 1) / 2
        corners = matrix([-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1], device=device)
        corners = G_inv @ corners.t()                                       # [N, 3, 4]
        margin = corners[:, :2, :].permute(1, 0, 2).flatten(1)              # [2, N*4]
        margin = torch.cat([-margin, margin]).max(dim=1).values             # [4]: -x, -y, x, y
        margin = margin + misc.constant([pad * 2 - cx, pad * 2 - cy] * 2, device=device)
        margin = margin.max(misc.constant([0, 0] * 2, device=device))
        margin = margin.min(misc.constant([W - 1, H - 1] * 2, device=device))
        mx0, my0, mx1, my1 = [int(m) for m in margin.ceil()]
        images = torch.nn.functional.pad(images, [mx0, mx1, my0, my1], mode='reflect')
        G_inv = translate2d((mx0 - mx1) / 2, (my0 - my1) / 2, device=device) @ G_inv

        # Upsample 2x and move G_inv to the upsampled pixel grid.
        images = upsample2x(upsample2x(images, axis=3), axis=2)
        G_inv = scale2d(2, 2, device=device) @ G_inv @ scale2d_inv(2, 2, device=device)
        G_inv = translate2d(-0.5, -0.5, device=device) @ G_inv @ translate2d(0.5, 0.5, device=device)

        # Resample onto a 2x grid of the original size plus the filter margin, in the
        # normalised [-1, 1] coordinates of affine_grid.
        shape = [N, C, (H + pad * 2) * 2, (W + pad * 2) * 2]
        G_inv = scale2d(2 / images.shape[3], 2 / images.shape[2], device=device) @ G_inv @ scale2d(shape[3] / 2, shape[2] / 2, device=device)
        grid = torch.nn.functional.affine_grid(G_inv[:, :2, :].to(images.dtype), shape, align_corners=False)
        images = torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

        # Downsample 2x back to [N, C, H, W].
        return downsample2x(downsample2x(images, axis=3), axis=2)

    @staticmethod
    def _recolor(images, M):
        """Apply the 4x4 color matrix M to RGB pixels; for grayscale use its mean row (spec 2.4)."""
        N, C, H, W = images.shape
        M = M.to(images.dtype)
        pixels = images.reshape([N, C, H * W])
        if C == 3:
            pixels = M[:, :3, :3] @ pixels + M[:, :3, 3:]
        else:
            m = M[:, :3, :].mean(dim=1, keepdim=True)
            pixels = pixels * m[:, :, :3].sum(dim=2, keepdim=True) + m[:, :, 3:]
        return pixels.reshape([N, C, H, W])

#----------------------------------------------------------------------------
