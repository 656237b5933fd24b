"""Denoiser networks of the EDM paper (Karras et al. 2022).

Two U-Nets, DDPM++ / NCSN++ (`SongUNet`, after Song et al. 2021) and ADM (`DhariwalUNet`, after
Dhariwal and Nichol 2021), and the preconditioners of Table 1 that turn such a network F into a
denoiser D(x; sigma): VP and VE (Song et al.), iDDPM (Nichol and Dhariwal) and EDM.

Network snapshots embed the source of this file, and loading one with plain pickle executes it,
possibly inside the original EDM code base. So it must keep running with Python 3.8 and
PyTorch 1.12, and import nothing beyond math, torch and torch_utils.persistence.

Parameters are always float32. Every layer casts them to the dtype of its input, which is how the
fp16 trunk of `use_fp16` works (no autocast is needed for it). A caller may still run a
preconditioner under torch.autocast, as the bfloat16 fast path of training and sampling does: the
convolutions and matrix products of the U-Net then run in bfloat16, while the element-wise
preconditioning stays float32.
"""

import math

import torch
import torch.nn.functional as F
from torch.nn.functional import silu

from torch_utils import persistence

#----------------------------------------------------------------------------
# Layers.

def weight_init(shape, mode, fan_in, fan_out):
    """A random tensor for initialising a layer, of variance 1 / fan: fan is fan_in for
    'kaiming_*' and the mean of fan_in and fan_out for 'xavier_*', drawn from a uniform
    ('*_uniform') or normal ('*_normal') distribution. Each call is one draw from the global
    generator, so a network built after torch.manual_seed() always gets the same weights."""
    family, _, distribution = mode.partition('_')
    fan = {'xavier': (fan_in + fan_out) / 2, 'kaiming': fan_in}.get(family)
    if fan is None or distribution not in ('uniform', 'normal'):
        raise ValueError(f'unknown weight init mode "{mode}"')
    if distribution == 'normal':
        return math.sqrt(1 / fan) * torch.randn(shape)
    return math.sqrt(3 / fan) * (2 * torch.rand(shape) - 1) # U(-a, a) has variance a^2 / 3.

def _weight_and_bias(shape, bias, init_mode, init_weight, init_bias, fan_in, fan_out):
    """Parameters of a layer whose weight has `shape` and whose bias has shape[0] entries (None
    without a bias). The bias is drawn after the weight, even when init_bias is zero."""
    draw = lambda size: weight_init(size, init_mode, fan_in, fan_out)
    weight = torch.nn.Parameter(draw(shape) * init_weight)
    return weight, (torch.nn.Parameter(draw(shape[:1]) * init_bias) if bias else None)

@persistence.persistent_class
class Linear(torch.nn.Module):
    """Fully connected layer on the last dimension."""

    def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight, self.bias = _weight_and_bias([out_features, in_features], bias, init_mode, init_weight, init_bias,
                                                  fan_in=in_features, fan_out=out_features)

    def forward(self, x):
        y = x @ self.weight.to(x.dtype).T
        return y if self.bias is None else y + self.bias.to(x.dtype)

def _fir_kernel(taps):
    """The separable 2-D filter [1, 1, K, K] built from 1-D taps, normalised to unit sum."""
    taps = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(taps, taps) / taps.sum().square())[None, None]

def _upsample(x, fir, padding):
    """2x upsampling: zero insertion and the filter, as a transposed depthwise convolution. The
    gain of 4 makes up for the inserted zeros."""
    groups = x.shape[1]
    return F.conv_transpose2d(x, (fir * 4).repeat(groups, 1, 1, 1), stride=2, padding=padding, groups=groups)

def _downsample(x, fir, padding):
    """2x downsampling: the filter as a depthwise convolution with stride 2."""
    groups = x.shape[1]
    return F.conv2d(x, fir.repeat(groups, 1, 1, 1), stride=2, padding=padding, groups=groups)

@persistence.persistent_class
class Conv2d(torch.nn.Module):
    """Convolution with 'same' padding that can also resample by a factor of 2 with an FIR filter
    (`up` or `down`). The image is resampled first, then convolved. kernel=0 gives a layer without
    weights that only resamples. With fused_resample the filter padding is traded against the
    convolution padding when upsampling, and a downsampling layer convolves at full resolution
    before it filters, which gives different borders."""

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False,
                 resample_filter=[1,1], fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        assert not (up and down), 'Conv2d resamples in one direction at most'
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        if kernel:
            area = kernel * kernel
            self.weight, self.bias = _weight_and_bias([out_channels, in_channels, kernel, kernel], bias, init_mode,
                                                      init_weight, init_bias, in_channels * area, out_channels * area)
        else:
            self.weight = self.bias = None
        # A None buffer when not resampling: the name exists, but state_dict() leaves it out.
        self.register_buffer('resample_filter', _fir_kernel(resample_filter) if up or down else None)

    def forward(self, x):
        weight = None if self.weight is None else self.weight.to(x.dtype)
        w_pad = 0 if weight is None else weight.shape[-1] // 2
        if self.up or self.down:
            fir = self.resample_filter.to(x.dtype)
            f_pad = (fir.shape[-1] - 1) // 2
        fused = self.fused_resample and weight is not None
        if fused and self.up:
            x = F.conv2d(_upsample(x, fir, padding=max(f_pad - w_pad, 0)), weight, padding=max(w_pad - f_pad, 0))
        elif fused and self.down:
            x = _downsample(F.conv2d(x, weight, padding=w_pad + f_pad), fir, padding=0)
        else:
            if self.up:
                x = _upsample(x, fir, padding=f_pad)
            elif self.down:
                x = _downsample(x, fir, padding=f_pad)
            if weight is not None:
                x = F.conv2d(x, weight, padding=w_pad)
        return x if self.bias is None else x + self.bias.to(x.dtype).reshape(-1, 1, 1)

@persistence.persistent_class
class GroupNorm(torch.nn.Module):
    """Group normalisation with up to `num_groups` groups of at least `min_channels_per_group`
    channels each."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups, self.eps = min(num_groups, num_channels // min_channels_per_group), eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros_like(self.weight))

    def forward(self, x):
        gain, offset = self.weight.to(x.dtype), self.bias.to(x.dtype)
        return F.group_norm(x, self.num_groups, gain, offset, self.eps)

#----------------------------------------------------------------------------
# Residual block shared by both U-Nets.

# Process-wide choice of the attention kernel (off: the einsum arithmetic of the original).
_fast_attention = False

def use_fast_attention(enabled=True):
    """Compute attention with torch.nn.functional.scaled_dot_product_attention (the same formula,
    fused, with its own rounding) instead of the reference arithmetic below, in every UNetBlock of
    this process; off by default. Returns the previous setting."""
    global _fast_attention
    previous, _fast_attention = _fast_attention, bool(enabled)
    return previous

def attention_weights(q, k):
    """softmax_t(sum_i q[n,i,s] k[n,i,t] / sqrt(c)) for queries and keys of shape [N, c, L].
    The products and the softmax run in float32, also for fp16 inputs; autograd differentiates
    the softmax exactly. Returns [N, L, L] in the dtype of q."""
    keys = k / math.sqrt(k.shape[1])
    logits = torch.einsum('ncq,nck->nqk', q.to(torch.float32), keys.to(torch.float32))
    return logits.softmax(dim=2).to(q.dtype)

@persistence.persistent_class
class UNetBlock(torch.nn.Module):
    """Residual block: two GroupNorm-SiLU-conv stages with the embedding injected between them, an
    optional 2x up/down-sampling (in the first convolution and in the skip path), and optional
    multi-head self-attention after the residual sum. Both sums are multiplied by skip_scale.

    The embedding either scales and shifts the normalised features (adaptive_scale, ADM) or is
    added before the normalisation (DDPM++). Without attention num_heads is 0; with attention it
    is num_heads if given, else out_channels // channels_per_head."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5,
                 resample_filter=[1,1], resample_proj=False, adaptive_scale=True,
                 init=dict(), init_zero=dict(init_weight=0), init_attn=None):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = out_channels // channels_per_head if num_heads is None else num_heads
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale

        # Creation order fixes both the parameter order and the random initial weights.
        resample = dict(up=up, down=down, resample_filter=resample_filter)
        channel_change = in_channels != out_channels
        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, **resample, **init)
        affine_width = 2 * out_channels if adaptive_scale else out_channels
        self.affine = Linear(in_features=emb_channels, out_features=affine_width, **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)
        if channel_change or up or down: # A 1x1 projection, or (kernel 0) just the resampling.
            projection = 1 if (resample_proj or channel_change) else 0
            self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=projection, **resample, **init)
        else:
            self.skip = None
        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            qkv_init = init if init_attn is None else init_attn
            self.qkv = Conv2d(in_channels=out_channels, out_channels=3 * out_channels, kernel=1, **qkv_init)
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        h = self.conv1(F.dropout(self.condition(h, emb), p=self.dropout, training=self.training))
        shortcut = x if self.skip is None else self.skip(x)
        x = (h + shortcut) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self.attend(self.norm2(x))) + x) * self.skip_scale
        return x

    def condition(self, h, emb):
        """Second normalisation and activation, modulated by the embedding."""
        params = self.affine(emb).to(h.dtype)[:, :, None, None]
        if not self.adaptive_scale:
            return silu(self.norm1(h + params))
        scale, shift = params.chunk(2, dim=1)
        return silu(torch.addcmul(shift, self.norm1(h), scale + 1))

    def attend(self, x):
        """Self-attention over the pixels, per head. The 3*C channels of qkv are ordered
        (head, channel within the head, q/k/v)."""
        batch, channels, height, width = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(batch * heads, channels // heads, 3, height * width).unbind(2)
        if _fast_attention: # Pixels as the sequence, channels as the features; scale 1 / sqrt(c).
            pixels_first = [t.transpose(1, 2) for t in (q, k, v)]
            mixed = F.scaled_dot_product_attention(*pixels_first).transpose(1, 2)
        else:
            mixed = torch.einsum('nqk,nck->ncq', attention_weights(q, k), v)
        return mixed.reshape(batch, channels, height, width)

#----------------------------------------------------------------------------
# Embeddings of the noise level.

def _cos_sin(phases):
    return torch.cat([phases.cos(), phases.sin()], dim=1)

@persistence.persistent_class
class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal ("transformer") embedding [cos | sin] of one scalar per sample. The frequencies
    fall geometrically from 1 towards 1 / max_positions, reaching it only with endpoint=True."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        count = self.num_channels // 2
        exponents = torch.arange(count, dtype=torch.float32, device=x.device) / (count - 1 if self.endpoint else count)
        freqs = (1 / self.max_positions) ** exponents
        return _cos_sin(torch.outer(x, freqs.to(x.dtype)))

@persistence.persistent_class
class FourierEmbedding(torch.nn.Module):
    """Random Fourier features [cos | sin] (NCSN++): frequencies drawn once, N(0, scale^2), and kept
    in the `freqs` buffer."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        freqs = torch.randn(num_channels // 2) * scale
        self.register_buffer('freqs', freqs)

    def forward(self, x):
        return _cos_sin(torch.outer(x, (math.tau * self.freqs).to(x.dtype)))

#----------------------------------------------------------------------------
# The two U-Nets. Encoder and decoder are ModuleDicts keyed '{res}x{res}_{role}'; the forward
# passes dispatch on the role.

def _label_dropout(labels, batch_size, p, training):
    """Zero the class labels of each sample with probability p while training, for
    classifier-free guidance."""
    if not (training and p):
        return labels
    keep = torch.rand([batch_size, 1], device=labels.device) >= p
    return labels * keep.to(labels.dtype)

def _join_skip(x, skips, channels):
    """The decoder input: x, followed by the latest unused encoder output when the block takes
    more channels than x has."""
    return x if x.shape[1] == channels else torch.cat([x, skips.pop()], dim=1)

def _role(key):
    return key.split('_', 1)[1] # '16x16_aux_down' -> 'aux_down'

@persistence.persistent_class
class SongUNet(torch.nn.Module):
    """The DDPM++ and NCSN++ U-Nets of Song et al. (2021), as configured in the EDM paper.

    DDPM++: positional embedding, standard encoder and decoder, box filter [1,1].
    NCSN++: Fourier embedding (channel_mult_noise=2), residual encoder, filter [1,3,3,1].
    The 'skip' encoder adds 1x1 projections of the downsampled input image to the features; the
    'skip' decoder sums an output head at every resolution, upsampled progressively."""

    def __init__(self,
        img_resolution,                     # Image resolution at input and output.
        in_channels,                        # Color channels at input.
        out_channels,                       # Color channels at output.
        label_dim           = 0,            # Number of class labels; 0 = unconditional.
        augment_dim         = 0,            # Size of the augmentation labels; 0 = none.
        model_channels      = 128,          # Channel count of the first level.
        channel_mult        = [1,2,2,2],    # Channel multiplier of each level (one level per entry).
        channel_mult_emb    = 4,            # Embedding size, as a multiple of model_channels.
        num_blocks          = 4,            # Residual blocks per level in the encoder.
        attn_resolutions    = [16],         # Resolutions that get self-attention.
        dropout             = 0.10,         # Dropout probability inside the blocks.
        label_dropout       = 0,            # Probability of dropping the class labels in training.
        embedding_type      = 'positional', # Noise embedding: 'positional' (DDPM++), 'fourier' (NCSN++).
        channel_mult_noise  = 1,            # Noise embedding size, as a multiple of model_channels.
        encoder_type        = 'standard',   # 'standard', 'skip' or 'residual' (NCSN++).
        decoder_type        = 'standard',   # 'standard' or 'skip'.
        resample_filter     = [1,1],        # FIR filter of the resampling layers.
    ):
        assert embedding_type in ('positional', 'fourier'), embedding_type
        assert encoder_type in ('standard', 'skip', 'residual'), encoder_type
        assert decoder_type in ('standard', 'skip'), decoder_type
        super().__init__()
        emb_channels, noise_channels = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        xavier = dict(init_mode='xavier_uniform')
        nearly_zero = dict(xavier, init_weight=1e-5)      # Ends of residual branches and output.
        attn_init = dict(xavier, init_weight=math.sqrt(0.2))

        def block(cin, cout, **kwargs):
            return UNetBlock(in_channels=cin, out_channels=cout, emb_channels=emb_channels, num_heads=1,
                             dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6, resample_filter=resample_filter,
                             resample_proj=True, adaptive_scale=False, init=xavier, init_zero=nearly_zero,
                             init_attn=attn_init, **kwargs)

        def dense(cin, cout, **kwargs):
            return Linear(in_features=cin, out_features=cout, **kwargs, **xavier)

        # Embedding of noise level, class and augmentation labels.
        self.label_dropout = label_dropout
        if embedding_type == 'fourier':
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        else:
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        self.map_label = dense(label_dim, noise_channels) if label_dim else None
        self.map_augment = dense(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = dense(noise_channels, emb_channels)
        self.map_layer1 = dense(emb_channels, emb_channels)

        # Encoder. `skips` collects the channel counts of the outputs the decoder concatenates.
        self.enc = torch.nn.ModuleDict()
        skips = []
        channels = image_channels = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level > 0:
                self.enc[tag + '_down'] = block(channels, channels, down=True)
            else:
                self.enc[tag + '_conv'] = Conv2d(in_channels=channels, out_channels=model_channels, kernel=3, **xavier)
                channels = model_channels
            skips.append(channels)
            if level and encoder_type == 'skip':
                self.enc[tag + '_aux_down'] = Conv2d(in_channels=image_channels, out_channels=image_channels,
                                                     kernel=0, down=True, resample_filter=resample_filter)
                self.enc[tag + '_aux_skip'] = Conv2d(in_channels=image_channels, out_channels=channels, kernel=1, **xavier)
            if level and encoder_type == 'residual':
                self.enc[tag + '_aux_residual'] = Conv2d(in_channels=image_channels, out_channels=channels, kernel=3,
                                                         down=True, resample_filter=resample_filter, fused_resample=True, **xavier)
                image_channels = channels
            for idx in range(num_blocks):
                self.enc[f'{tag}_block{idx}'] = block(channels, model_channels * mult, attention=(res in attn_resolutions))
                channels = model_channels * mult
                skips.append(channels)

        # Decoder: num_blocks + 1 blocks per level; only the last one of a level has attention.
        self.dec = torch.nn.ModuleDict()
        deepest = len(channel_mult) - 1
        for level in range(deepest, -1, -1):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == deepest:
                self.dec[tag + '_in0'] = block(channels, channels, attention=True)
                self.dec[tag + '_in1'] = block(channels, channels)
            else:
                self.dec[tag + '_up'] = block(channels, channels, up=True)
            for idx in range(num_blocks + 1):
                cin, channels = channels + skips.pop(), model_channels * channel_mult[level]
                last = idx == num_blocks
                self.dec[f'{tag}_block{idx}'] = block(cin, channels, attention=(last and res in attn_resolutions))
            if decoder_type == 'skip' or level == 0: # An output head at this resolution.
                if decoder_type == 'skip' and level < deepest:
                    self.dec[tag + '_aux_up'] = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=0,
                                                       up=True, resample_filter=resample_filter)
                self.dec[tag + '_aux_norm'] = GroupNorm(num_channels=channels, eps=1e-6)
                self.dec[tag + '_aux_conv'] = Conv2d(in_channels=channels, out_channels=out_channels, kernel=3, **nearly_zero)

    def embedding(self, batch_size, noise_labels, class_labels, augment_labels):
        """The conditioning vector of the blocks. The noise embedding enters as [sin | cos]."""
        cos, sin = self.map_noise(noise_labels).chunk(2, dim=1)
        hidden = torch.cat([sin, cos], dim=1)
        if self.map_label is not None:
            labels = _label_dropout(class_labels, batch_size, self.label_dropout, self.training)
            hidden = hidden + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            hidden = hidden + self.map_augment(augment_labels)
        return silu(self.map_layer1(silu(self.map_layer0(hidden))))

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.embedding(x.shape[0], noise_labels, class_labels, augment_labels)

        # Encoder; `image` is the input image, downsampled along ('skip') or mixed with the
        # features ('residual').
        skips = []
        image = x
        for key, layer in self.enc.items():
            role = _role(key)
            if role == 'aux_down':
                image = layer(image)
            elif role == 'aux_skip':
                x = skips[-1] = x + layer(image)
            elif role == 'aux_residual':
                x = skips[-1] = image = (x + layer(image)) / math.sqrt(2)
            else:
                x = layer(x) if role == 'conv' else layer(x, emb)
                skips.append(x)

        # Decoder; `out` accumulates the output heads.
        out = head = None
        for key, layer in self.dec.items():
            role = _role(key)
            if role == 'aux_up':
                out = layer(out)
            elif role == 'aux_norm':
                head = silu(layer(x))
            elif role == 'aux_conv':
                head = layer(head)
                out = head if out is None else head + out
            else:
                x = layer(_join_skip(x, skips, layer.in_channels), emb)
        return out

@persistence.persistent_class
class DhariwalUNet(torch.nn.Module):
    """The ADM U-Net of Dhariwal and Nichol (2021): scale-and-shift conditioning, 64-channel
    attention heads, and attention in every block at an attention resolution, decoder included."""

    def __init__(self,
        img_resolution,                     # Image resolution at input and output.
        in_channels,                        # Color channels at input.
        out_channels,                       # Color channels at output.
        label_dim           = 0,            # Number of class labels; 0 = unconditional.
        augment_dim         = 0,            # Size of the augmentation labels; 0 = none.
        model_channels      = 192,          # Channel multiplier base.
        channel_mult        = [1,2,3,4],    # Channel multiplier of each level (one level per entry).
        channel_mult_emb    = 4,            # Embedding size, as a multiple of model_channels.
        num_blocks          = 3,            # Residual blocks per level in the encoder.
        attn_resolutions    = [32,16,8],    # Resolutions that get self-attention.
        dropout             = 0.10,         # Dropout probability inside the blocks.
        label_dropout       = 0,            # Probability of dropping the class labels in training.
    ):
        super().__init__()
        emb_channels = channel_mult_emb * model_channels
        # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, like PyTorch's default.
        gain = math.sqrt(1 / 3)
        default = dict(init_mode='kaiming_uniform', init_weight=gain, init_bias=gain)
        zero = dict(default, init_weight=0, init_bias=0)

        def block(cin, cout, **kwargs):
            return UNetBlock(in_channels=cin, out_channels=cout, emb_channels=emb_channels, channels_per_head=64,
                             dropout=dropout, init=default, init_zero=zero, **kwargs)

        # Embedding of noise level, augmentation and class labels.
        self.label_dropout = label_dropout
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        if augment_dim:
            self.map_augment = Linear(in_features=augment_dim, out_features=model_channels, bias=False, **zero)
        else:
            self.map_augment = None
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_channels, **default)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **default)
        if label_dim: # N(0, 1) weights.
            self.map_label = Linear(in_features=label_dim, out_features=emb_channels, bias=False,
                                    init_mode='kaiming_normal', init_weight=math.sqrt(label_dim))
        else:
            self.map_label = None

        # Encoder; the decoder concatenates every one of its outputs.
        self.enc = torch.nn.ModuleDict()
        channels = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            width = model_channels * mult
            if level == 0:
                self.enc[f'{res}x{res}_conv'] = Conv2d(in_channels=channels, out_channels=width, kernel=3, **default)
                channels = width
            else:
                self.enc[f'{res}x{res}_down'] = block(channels, channels, down=True)
            for idx in range(num_blocks):
                self.enc[f'{res}x{res}_block{idx}'] = block(channels, width, attention=(res in attn_resolutions))
                channels = width
        skips = [layer.out_channels for layer in self.enc.values()]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        deepest = len(channel_mult) - 1
        for level in range(deepest, -1, -1):
            res = img_resolution >> level
            if level == deepest:
                self.dec[f'{res}x{res}_in0'] = block(channels, channels, attention=True)
                self.dec[f'{res}x{res}_in1'] = block(channels, channels)
            else:
                self.dec[f'{res}x{res}_up'] = block(channels, channels, up=True)
            for idx in range(num_blocks + 1):
                cin, channels = channels + skips.pop(), model_channels * channel_mult[level]
                self.dec[f'{res}x{res}_block{idx}'] = block(cin, channels, attention=(res in attn_resolutions))
        self.out_norm = GroupNorm(num_channels=channels)
        self.out_conv = Conv2d(in_channels=channels, out_channels=out_channels, kernel=3, **zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.embedding(x.shape[0], noise_labels, class_labels, augment_labels)
        skips = []
        for key, layer in self.enc.items():
            x = layer(x) if _role(key) == 'conv' else layer(x, emb)
            skips.append(x)
        for layer in self.dec.values():
            x = layer(_join_skip(x, skips, layer.in_channels), emb)
        return self.out_conv(silu(self.out_norm(x)))

    def embedding(self, batch_size, noise_labels, class_labels, augment_labels):
        """The conditioning vector of the blocks. Unlike in SongUNet, the noise embedding keeps the
        order [cos | sin] and the class labels join just before the final activation."""
        hidden = self.map_noise(noise_labels)
        if augment_labels is not None and self.map_augment is not None:
            hidden = hidden + self.map_augment(augment_labels)
        hidden = self.map_layer1(silu(self.map_layer0(hidden)))
        if self.map_label is not None:
            labels = _label_dropout(class_labels, batch_size, self.label_dropout, self.training)
            hidden = hidden + self.map_label(labels)
        return silu(hidden)

#----------------------------------------------------------------------------
# Preconditioning (Table 1).

class Preconditioner(torch.nn.Module):
    """The denoiser D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
    of Eq. 7, around a U-Net F that is `model_type` built with `model_kwargs`. A subclass states
    its scalings (its row of Table 1) in `scalings()`, its noise-level functions, and the range
    [sigma_min, sigma_max] it supports.

    Only the subclasses are persistent. A snapshot restores a preconditioner from its class name
    and stored attributes alone, so the attributes stay those of the original release and the
    behaviour lives in methods: a new attribute would be missing from existing snapshots."""

    def __init__(self, img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs, model_out_channels=None):
        super().__init__()
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.label_dim, self.use_fp16 = label_dim, use_fp16
        architectures = {'SongUNet': SongUNet, 'DhariwalUNet': DhariwalUNet}
        if model_type not in architectures:
            raise ValueError(f'unknown model_type "{model_type}"; expected one of {", ".join(architectures)}')
        self.model = architectures[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                               out_channels=model_out_channels or img_channels, label_dim=label_dim,
                                               **model_kwargs)

    def scalings(self, sigma):
        """(c_skip, c_out, c_in, c_noise) for noise levels sigma of shape [N, 1, 1, 1]."""
        raise NotImplementedError

    def round_sigma(self, sigma):
        """The nearest noise level the network supports (any level, unless a subclass restricts it)."""
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        """D(x; sigma) in float32. sigma is a scalar or one level per sample. The model runs in
        fp16 with use_fp16 on CUDA unless force_fp32, or in autocast's dtype under torch.autocast;
        model_kwargs (e.g. augment_labels) go to it."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == 'cuda'
        dtype = torch.float16 if fp16 else torch.float32
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=self.model_labels(class_labels, x.device),
                         **model_kwargs)
        assert F_x.dtype == dtype or _autocasting(x.device), f'the model returned {F_x.dtype} for {dtype} input'
        # A model may predict more than the image (iDDPM adds variances); D uses the first channels.
        return c_skip * x + c_out * F_x[:, :self.img_channels].to(torch.float32)

    def model_labels(self, class_labels, device):
        """Class labels as float32 rows; all zeros when a conditional model gets none."""
        if not self.label_dim:
            return None
        if class_labels is None:
            return torch.zeros([1, self.label_dim], device=device)
        return class_labels.to(torch.float32).reshape(-1, self.label_dim)

def _autocasting(device):
    """Whether torch.autocast is active for `device`; the model then answers in autocast's dtype."""
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError: # PyTorch before 2.4 has one query per device type.
        return torch.is_autocast_cpu_enabled() if device.type == 'cpu' else torch.is_autocast_enabled()

def _unit_variance_input(sigma):
    """c_in = 1 / sqrt(sigma^2 + 1), for data with unit-variance signal plus noise."""
    return 1 / (sigma ** 2 + 1).sqrt()

@persistence.persistent_class
class VPPrecond(Preconditioner):
    """Variance preserving formulation (Song et al. 2021), Table 1: sigma(t) from a linear beta
    schedule, t in [epsilon_t, 1], and M discrete DDPM timesteps for c_noise."""

    def __init__(self,
        img_resolution,                 # Image resolution.
        img_channels,                   # Color channels.
        label_dim       = 0,            # Number of class labels; 0 = unconditional.
        use_fp16        = False,        # Run the model in FP16 (on CUDA)?
        beta_d          = 19.9,         # Extent of the noise schedule.
        beta_min        = 0.1,          # Initial slope of the noise schedule.
        M               = 1000,         # Number of timesteps of the DDPM formulation.
        epsilon_t       = 1e-5,         # Smallest t used in training.
        model_type      = 'SongUNet',   # Class name of the model.
        **model_kwargs,                 # Keyword arguments of the model.
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.beta_d, self.beta_min = beta_d, beta_min
        self.M, self.epsilon_t = M, epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def scalings(self, sigma):
        return 1, -sigma, _unit_variance_input(sigma), (self.M - 1) * self.sigma_inv(sigma)

    def sigma(self, t):
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = torch.as_tensor(t)
        exponent = 0.5 * self.beta_d * t ** 2 + self.beta_min * t
        return (exponent.exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        """The t with sigma(t) = sigma."""
        log_variance = (1 + torch.as_tensor(sigma) ** 2).log()
        return ((self.beta_min ** 2 + 2 * self.beta_d * log_variance).sqrt() - self.beta_min) / self.beta_d

@persistence.persistent_class
class VEPrecond(Preconditioner):
    """Variance exploding formulation (Song et al. 2021), Table 1: sigma(t) = sqrt(t), and the
    network is conditioned on log(sigma / 2)."""

    def __init__(self,
        img_resolution,                 # Image resolution.
        img_channels,                   # Color channels.
        label_dim       = 0,            # Number of class labels; 0 = unconditional.
        use_fp16        = False,        # Run the model in FP16 (on CUDA)?
        sigma_min       = 0.02,         # Smallest supported noise level.
        sigma_max       = 100,          # Largest supported noise level.
        model_type      = 'SongUNet',   # Class name of the model.
        **model_kwargs,                 # Keyword arguments of the model.
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def scalings(self, sigma):
        return 1, sigma, 1, (0.5 * sigma).log()

@persistence.persistent_class
class iDDPMPrecond(Preconditioner):
    """Improved DDPM formulation (Nichol and Dhariwal 2021), Table 1: the model knows M discrete
    noise levels u_0 > ... > u_M = 0 from a cosine schedule, and is conditioned on the index of
    the nearest one. Its model predicts twice the image channels (the variances are unused)."""

    def __init__(self,
        img_resolution,                 # Image resolution.
        img_channels,                   # Color channels.
        label_dim       = 0,            # Number of class labels; 0 = unconditional.
        use_fp16        = False,        # Run the model in FP16 (on CUDA)?
        C_1             = 0.001,        # Timestep adjustment at low noise levels.
        C_2             = 0.008,        # Timestep adjustment at high noise levels.
        M               = 1000,         # Number of timesteps of the DDPM formulation.
        model_type      = 'DhariwalUNet', # Class name of the model.
        **model_kwargs,                 # Keyword arguments of the model.
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
                         model_out_channels=2 * img_channels)
        self.C_1, self.C_2, self.M = C_1, C_2, M
        self.register_buffer('u', self.noise_levels())
        self.sigma_min = float(self.u[M - 1])
        self.sigma_max = float(self.u[0])

    def noise_levels(self):
        """u_M = 0, u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1) / alpha_bar(j), C_1) - 1)."""
        u = torch.zeros(self.M + 1)
        for j in range(self.M, 0, -1):
            ratio = torch.clamp(self.alpha_bar(j - 1) / self.alpha_bar(j), min=self.C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        return u

    def alpha_bar(self, j):
        """The cosine schedule alpha_bar(j) = sin^2(pi/2 j / (M (C_2 + 1)))."""
        angle = math.pi / 2 * torch.as_tensor(j) / self.M / (self.C_2 + 1)
        return angle.sin() ** 2

    def scalings(self, sigma):
        index = self.round_sigma(sigma, return_index=True).to(torch.float32)
        return 1, -sigma, _unit_variance_input(sigma), self.M - 1 - index

    def round_sigma(self, sigma, return_index=False):
        """The nearest entry of u (the first one on ties), or with return_index its index, in the
        shape and on the device of sigma; the levels keep sigma's dtype."""
        sigma = torch.as_tensor(sigma)
        levels = sigma.to(self.u.device).to(torch.float32).reshape(-1, 1)
        index = (levels - self.u[None, :]).abs().argmin(dim=1)
        found = index if return_index else self.u[index].to(sigma.dtype)
        return found.reshape(sigma.shape).to(sigma.device)

@persistence.persistent_class
class EDMPrecond(Preconditioner):
    """The preconditioning proposed by the EDM paper (Table 1, Section 5): unit variance for
    the network's input and training target at every noise level, given data of standard
    deviation sigma_data."""

    def __init__(self,
        img_resolution,                 # Image resolution.
        img_channels,                   # Color channels.
        label_dim       = 0,            # Number of class labels; 0 = unconditional.
        use_fp16        = False,        # Run the model in FP16 (on CUDA)?
        sigma_min       = 0,            # Smallest supported noise level.
        sigma_max       = float('inf'), # Largest supported noise level.
        sigma_data      = 0.5,          # Standard deviation of the training data.
        model_type      = 'DhariwalUNet', # Class name of the model.
        **model_kwargs,                 # Keyword arguments of the model.
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def scalings(self, sigma):
        data_var = self.sigma_data ** 2
        total_var = sigma ** 2 + data_var
        c_skip = data_var / total_var
        c_out = sigma * self.sigma_data / total_var.sqrt()
        return c_skip, c_out, 1 / total_var.sqrt(), sigma.log() / 4
