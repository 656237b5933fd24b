"""Non-leaky data augmentation (Karras et al. 2022, Section 5, "Augmentation regularization").

The transforms are those of the ADA pipeline for GANs (Karras et al. 2020, "Training generative
adversarial networks with limited data"). Each enabled transform draws a random parameter per
image and then a gate that opens with probability `multiplier * p`; where the gate stays closed
the parameter is replaced by its identity value. The parameters are also returned as a label
vector per image. The denoiser is conditioned on it (`augment_labels`), so it learns what each
augmentation does instead of reproducing it, and sampling asks for un-augmented images by passing
no labels.

The transforms run in three stages: pixel blitting (flips, quarter turns, integer translation)
moves pixels directly; the geometric transforms are composed into one inverse 3x3 matrix and
applied with a single supersampled resampling; the color transforms are composed into one 4x4
matrix acting on homogeneous RGB.

Snapshots embed the source of this module, and older installations of the original code execute
it when they load one. It therefore stays valid Python 3.8 / PyTorch 1.12 and imports nothing but
numpy, torch and torch_utils.
"""

import numpy as np
import torch
from torch_utils import misc
from torch_utils import persistence

#----------------------------------------------------------------------------
# Matrices in homogeneous coordinates. Entries are numbers or per-image [N] tensors; the result is
# a cached constant [R, C] when every entry is a number, and an [N, R, C] batch otherwise.

def homogeneous(rows, device=None):
    tensors = [entry for row in rows for entry in row if isinstance(entry, torch.Tensor)]
    if not tensors:
        return misc.constant(np.asarray(rows), device=device)
    like = tensors[0]
    def broadcast(entry):
        return torch.as_tensor(entry, dtype=like.dtype, device=like.device).expand(like.shape)
    return torch.stack([torch.stack([broadcast(entry) for entry in row], dim=-1) for row in rows], dim=-2)

def translation2d(tx, ty, device=None):
    return homogeneous([[1, 0, tx], [0, 1, ty], [0, 0, 1]], device)

def scaling2d(sx, sy, device=None):
    return homogeneous([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], device)

def rotation2d(angle):
    cos, sin = angle.cos(), angle.sin()
    return homogeneous([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])

def embed_rgb(block):
    """[N, 4, 4] homogeneous color matrix whose RGB part is `block` [N, 3, 3] and offset is zero."""
    corner = misc.constant(np.diag([0, 0, 0, 1]), device=block.device)
    return torch.nn.functional.pad(block, [0, 1, 0, 1]) + corner

# Unit vector along the gray axis of homogeneous RGB, in float32 like every other constant here.
# Luma flips, hue rotations and saturation changes act relative to it.
LUMA_AXIS = (np.array([1, 1, 1, 0]) / np.sqrt(3)).astype(np.float32)
LUMA_PROJECTION = np.outer(LUMA_AXIS, LUMA_AXIS)

def hue_rotation(angle):
    """Rotation by `angle` [N] about the luma axis u, from Rodrigues' formula
    R = cos(a) I + sin(a) [u]_x + (1 - cos(a)) u u^T, with [u]_x w = u x w."""
    ux, uy, uz = LUMA_AXIS[:3]
    device = angle.device
    identity = misc.constant(np.eye(3, dtype=np.float32), device=device)
    cross = misc.constant(np.array([[0, -uz, uy], [uz, 0, -ux], [-uy, ux, 0]]), device=device)
    projection = misc.constant(LUMA_PROJECTION[:3, :3], device=device)
    cos, sin = angle.cos().reshape(-1, 1, 1), angle.sin().reshape(-1, 1, 1)
    return embed_rgb(cos * identity + sin * cross + (1 - cos) * projection)

#----------------------------------------------------------------------------
# Geometric resampling with 2x supersampling. The low-pass filter is the 12-tap Daubechies
# symlet-6 (sym6) wavelet filter.

SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]
SYM6_MARGIN = len(SYM6) // 4 # Border, in pixels, that the filter pair needs around the image.

def filter_rows(images, taps, dim, stride=1, padding=0):
    """Cross-correlate every line of `images` along dimension `dim` with the 1-D filter `taps`."""
    lines = images.movedim(dim, -1)
    kernel = misc.constant(taps, dtype=images.dtype, device=images.device).reshape(1, 1, -1)
    out = torch.nn.functional.conv1d(lines.reshape(-1, 1, lines.shape[-1]), kernel, stride=stride, padding=padding)
    out = out.reshape(lines.shape[:-1] + out.shape[-1:]).movedim(-1, dim)
    return out.contiguous() # Standard layout: randn_like() on the result must not see permuted strides.

def upsample2x(images, dim):
    """Double the size along `dim`: a zero after every sample but the last, then filtering with
    sym6 (convolution, hence the reversed taps)."""
    lines = images.movedim(dim, -1)
    lines = torch.stack([lines, torch.zeros_like(lines)], dim=-1).flatten(-2)[..., :-1]
    return filter_rows(lines.movedim(-1, dim), SYM6[::-1], dim, padding=len(SYM6) // 2)

def downsample2x(images, dim):
    """Halve the size along `dim`: sym6 low-pass at stride 2, minus the filter margin on each side."""
    out = filter_rows(images, SYM6, dim, stride=2, padding=len(SYM6) // 2 - 1)
    return out.narrow(dim, SYM6_MARGIN, out.shape[dim] - 2 * SYM6_MARGIN)

def warp(images, G):
    """Resample `images` [N, C, H, W] through the inverse transforms G [N, 3, 3], which map output
    pixel coordinates to input ones (origin at the image centre). Outside the image, the input is
    mirrored."""
    N, C, H, W = images.shape
    device = images.device
    cx, cy = (W - 1) / 2, (H - 1) / 2

    # Mirror-pad the input by as much as any output corner reaches beyond it, plus the filter
    # margin, but by at most W - 1 and H - 1 pixels (the most that reflection padding allows).
    corners = misc.constant(np.array([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]]), device=device)
    reach = (G @ corners)[:, :2, :] # [N, xy, corner]
    reach = torch.cat([(-reach).amax(dim=(0, 2)), reach.amax(dim=(0, 2))]) # left, top, right, bottom
    reach = reach + misc.constant([2 * SYM6_MARGIN - cx, 2 * SYM6_MARGIN - cy] * 2, device=device)
    reach = torch.minimum(reach.clamp(min=0), misc.constant([W - 1, H - 1] * 2, device=device))
    left, top, right, bottom = [int(size) for size in reach.ceil().tolist()]
    images = torch.nn.functional.pad(images, [left, right, top, bottom], mode='reflect')
    G = translation2d((left - right) / 2, (top - bottom) / 2, device) @ G

    # Upsample 2x, and express G in the pixel grid of the upsampled image.
    images = upsample2x(upsample2x(images, dim=3), dim=2)
    G = scaling2d(2, 2, device) @ G @ scaling2d(0.5, 0.5, device)
    G = translation2d(-0.5, -0.5, device) @ G @ translation2d(0.5, 0.5, device)

    # Sample the output, still at 2x and with the filter margin, by bilinear interpolation.
    # affine_grid works in [-1, 1] coordinates of the input and output images.
    out_shape = [N, C, 2 * (H + 2 * SYM6_MARGIN), 2 * (W + 2 * SYM6_MARGIN)]
    G = scaling2d(2 / images.shape[3], 2 / images.shape[2], device) @ G @ scaling2d(out_shape[3] / 2, out_shape[2] / 2, device)
    grid = torch.nn.functional.affine_grid(G[:, :2, :].to(images.dtype), out_shape, align_corners=False)
    images = torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

    # Back to the original size.
    return downsample2x(downsample2x(images, dim=3), dim=2)

#----------------------------------------------------------------------------
# Pixel blitting helpers.

def mirror_index(position, size):
    """Fold integer positions into [0, size) by mirroring at the borders (edge pixels not repeated)."""
    period = 2 * size - 2
    return size - 1 - (size - 1 - position % period).abs()

def shift_mirrored(images, tx, ty):
    """Output pixel (y, x) of image i shows input pixel (y + ty[i], x - tx[i]), mirrored at the borders."""
    N, C, H, W = images.shape
    device = images.device
    src_x = mirror_index(torch.arange(W, device=device) - tx.reshape(N, 1, 1, 1), W)
    src_y = mirror_index(torch.arange(H, device=device).reshape(H, 1) + ty.reshape(N, 1, 1, 1), H)
    images = images.gather(3, src_x.expand(N, C, H, W))
    return images.gather(2, src_y.expand(N, C, H, W))

def apply_color_matrix(images, M):
    """Multiply homogeneous RGB pixels by M [N, 4, 4]. Grayscale images use the mean of the
    three color rows, which is what the RGB result averaged over channels would give."""
    N, C, H, W = images.shape
    M = M.to(images.dtype)
    pixels = images.reshape(N, C, H * W)
    if C == 3:
        pixels = M[:, :3, :3] @ pixels + M[:, :3, 3:]
    else:
        gray_row = M[:, :3, :].mean(dim=1)
        pixels = pixels * gray_row[:, :3].sum(dim=1).reshape(N, 1, 1) + gray_row[:, 3:].reshape(N, 1, 1)
    return pixels.reshape(N, C, H, W)

#----------------------------------------------------------------------------

@persistence.persistent_class
class AugmentPipe:
    """Random augmentations with their parameters as labels: `images, labels = pipe(images)`.

    Each transform has a probability multiplier (0 = disabled, no random draws and no label
    columns) and some have a magnitude. `p` scales every probability. train.py uses xflip=1e8
    (half of all images mirrored, whatever p is), yflip, scale, rotate_frac, aniso and
    translate_frac = 1.

    Args, pixel blitting:
        xflip, yflip:       Mirror horizontally / vertically.
        rotate_int:         Rotate by a random multiple of 90 degrees (square images only).
        translate_int:      Shift by whole pixels, uniformly within +-translate_int_max of the size.
    Geometric, applied together with one resampling:
        scale:              Isotropic scaling, log2-normal with std scale_std.
        rotate_frac:        Rotation, uniform within +-rotate_frac_max half turns.
        aniso:              Anisotropic scaling, log2-normal with std aniso_std, along axes rotated
                            by a uniform angle with probability aniso_rotate_prob.
        translate_frac:     Sub-pixel shift, normal with std translate_frac_std of the size.
    Color (1 or 3 channels):
        brightness:         Add a normal offset with std brightness_std.
        contrast:           Multiply by a log2-normal factor with std contrast_std.
        lumaflip:           Invert the luma component.
        hue:                Rotate about the luma axis, uniform within +-hue_max half turns.
        saturation:         Scale the chroma by a log2-normal factor with std saturation_std.
    """

    def __init__(self, p=1,
        xflip=0, yflip=0, rotate_int=0, translate_int=0, translate_int_max=0.125,
        scale=0, rotate_frac=0, aniso=0, translate_frac=0,
        scale_std=0.2, rotate_frac_max=1, aniso_std=0.2, aniso_rotate_prob=0.5, translate_frac_std=0.125,
        brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0,
        brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1,
    ):
        options = dict(locals())
        del options['self']
        for name, value in options.items(): # Stored under the argument names, as floats.
            setattr(self, name, float(value))

    def __call__(self, images):
        if images.ndim != 4:
            raise ValueError(f'AugmentPipe: expected images of shape [N, C, H, W], got {list(images.shape)}')
        N, C, H, W = images.shape
        if C not in (1, 3) and self._color_enabled():
            raise ValueError(f'AugmentPipe: color transforms need 1 or 3 channels, got {C}')
        if self.rotate_int > 0 and H != W:
            raise ValueError(f'AugmentPipe: rotate_int needs square images, got {H}x{W}')

        labels = [] # Label columns, appended transform by transform.
        images = self._blit(images, labels)
        images = self._geometric(images, labels)
        images = self._color(images, labels)
        columns = [torch.zeros([N, 0], device=images.device)] + [column.reshape(N, -1).to(torch.float32) for column in labels]
        return images, torch.cat(columns, dim=1)

    # Random parameters. The value is always drawn before its gate.

    def _gate(self, value, probability, shape):
        """`value` where a uniform draw of `shape` falls below `probability`, zero elsewhere."""
        opened = torch.rand(shape, device=value.device) < probability
        return torch.where(opened, value, torch.zeros_like(value))

    def _symmetric_uniform(self, shape, device):
        """Uniform in [-1, 1)."""
        return torch.rand(shape, device=device) * 2 - 1

    def _color_enabled(self):
        return max(self.brightness, self.contrast, self.lumaflip, self.hue, self.saturation) > 0

    # The three stages.

    def _blit(self, images, labels):
        N, _C, H, W = images.shape
        device = images.device
        per_image = [N, 1, 1, 1]
        for multiplier, dim in [(self.xflip, 3), (self.yflip, 2)]:
            if multiplier > 0:
                flipped = self._gate(torch.randint(2, per_image, device=device), multiplier * self.p, per_image)
                images = torch.where(flipped == 1, images.flip(dim), images)
                labels.append(flipped)

        if self.rotate_int > 0:
            turns = self._gate(torch.randint(4, per_image, device=device), self.rotate_int * self.p, per_image)
            # k counter-clockwise quarter turns: flip W (k = 1, 2) and H (k = 2, 3), then transpose (odd k).
            # The two flips are the labels.
            flip_w, flip_h = (turns == 1) | (turns == 2), (turns == 2) | (turns == 3)
            images = torch.where(flip_w, images.flip(3), images)
            images = torch.where(flip_h, images.flip(2), images)
            images = torch.where(turns % 2 == 1, images.transpose(2, 3), images)
            labels += [flip_w, flip_h]

        if self.translate_int > 0:
            shift = self._symmetric_uniform([2, N, 1, 1, 1], device)
            shift = self._gate(shift, self.translate_int * self.p, [1, N, 1, 1, 1])
            tx = (shift[0] * W * self.translate_int_max).round().to(torch.int64)
            ty = (shift[1] * H * self.translate_int_max).round().to(torch.int64)
            images = shift_mirrored(images, tx, ty)
            labels += [tx / (W * self.translate_int_max), ty / (H * self.translate_int_max)]
        return images

    def _geometric(self, images, labels):
        """Compose the inverse transform G (output -> input coordinates) and resample once. The
        resampling runs whenever a geometric transform is enabled, even if all gates are closed."""
        if max(self.scale, self.rotate_frac, self.aniso, self.translate_frac) <= 0:
            return images
        N, _C, H, W = images.shape
        device = images.device
        G = misc.constant(np.eye(3), device=device)

        if self.scale > 0:
            log2_scale = self._gate(torch.randn([N], device=device), self.scale * self.p, [N])
            zoom = 2 ** (log2_scale * self.scale_std)
            G = G @ scaling2d(1 / zoom, 1 / zoom)
            labels.append(log2_scale)

        if self.rotate_frac > 0:
            angle = self._symmetric_uniform([N], device) * np.pi * self.rotate_frac_max
            angle = self._gate(angle, self.rotate_frac * self.p, [N])
            G = G @ rotation2d(angle)
            labels += [angle.cos() - 1, angle.sin()]

        if self.aniso > 0:
            log2_stretch = torch.randn([N], device=device)
            axis_angle = self._symmetric_uniform([N], device) * np.pi
            log2_stretch = self._gate(log2_stretch, self.aniso * self.p, [N])
            axis_angle = self._gate(axis_angle, self.aniso_rotate_prob, [N])
            squash = 1 / 2 ** (log2_stretch * self.aniso_std) # 1/s along the x axis of the frame, s = 1/(1/s) along y.
            G = G @ rotation2d(-axis_angle) @ scaling2d(squash, 1 / squash) @ rotation2d(axis_angle)
            labels += [log2_stretch * axis_angle.cos(), log2_stretch * axis_angle.sin()]

        if self.translate_frac > 0:
            offset = self._gate(torch.randn([2, N], device=device), self.translate_frac * self.p, [1, N])
            G = G @ translation2d(-offset[0] * W * self.translate_frac_std, -offset[1] * H * self.translate_frac_std)
            labels += [offset[0], offset[1]]

        return warp(images, G)

    def _color(self, images, labels):
        """Compose one 4x4 matrix M on homogeneous RGB, each transform multiplied on the left."""
        if not self._color_enabled():
            return images
        N = images.shape[0]
        device = images.device
        identity = misc.constant(np.eye(4), device=device)
        luma = misc.constant(LUMA_PROJECTION, device=device) # Projection onto the luma axis.
        chroma = identity - luma
        M = identity

        if self.brightness > 0:
            offset = self._gate(torch.randn([N], device=device), self.brightness * self.p, [N])
            b = offset * self.brightness_std
            M = homogeneous([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]]) @ M
            labels.append(offset)

        if self.contrast > 0:
            log2_contrast = self._gate(torch.randn([N], device=device), self.contrast * self.p, [N])
            c = 2 ** (log2_contrast * self.contrast_std)
            M = homogeneous([[c, 0, 0, 0], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1]]) @ M
            labels.append(log2_contrast)

        if self.lumaflip > 0:
            flipped = self._gate(torch.randint(2, [N, 1, 1], device=device), self.lumaflip * self.p, [N, 1, 1])
            M = (identity - 2 * luma * flipped) @ M # Householder reflection.
            labels.append(flipped)

        if self.hue > 0:
            angle = self._symmetric_uniform([N], device) * np.pi * self.hue_max
            angle = self._gate(angle, self.hue * self.p, [N])
            M = hue_rotation(angle) @ M
            labels += [angle.cos() - 1, angle.sin()]

        if self.saturation > 0:
            log2_saturation = self._gate(torch.randn([N, 1, 1], device=device), self.saturation * self.p, [N, 1, 1])
            M = (luma + chroma * 2 ** (log2_saturation * self.saturation_std)) @ M
            labels.append(log2_saturation)

        return apply_color_matrix(images, M)

#----------------------------------------------------------------------------
