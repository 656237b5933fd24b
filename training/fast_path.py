"""Opt-in speed knobs for training and sampling, shared by train.py and generate.py.

The faithful path (all knobs off) reproduces the original bit for bit. The knobs trade that for speed:

    bf16           the U-Net runs under torch.autocast(bfloat16); weights stay float32 (so the optimizer
                   updates float32 master weights) and the preconditioning, loss and sampler arithmetic
                   stay float32, since autocast leaves element-wise operations in their input dtype.
    channels_last  the U-Net's weights and inputs use the NHWC memory format, which oneDNN (CPU) and
                   cuDNN (GPU tensor cores) prefer for convolutions.
    tf32           CUDA matmuls and convolutions in TensorFloat-32 (the original disables it).
    compile        torch.compile of the U-Net (not of the preconditioner); costs a one-off compile time.
    fused          fused kernels that compute the same formulas with a different rounding: attention
                   through scaled_dot_product_attention, a fused (CUDA) or multi-tensor (foreach) Adam,
                   and a multi-tensor update of the weight average.

`--fast` picks the combination that measured fastest for the device (see bench/README.md). Nothing
here is stored in a network: the knobs act through process-wide switches, the memory format of the
weights and torch.compile's call hook, which torch.nn.Module leaves out of pickles. Snapshots written
on the fast path therefore load, and run the faithful arithmetic, in the original code.
"""

import contextlib
import dataclasses

import torch

from training import networks

@dataclasses.dataclass(frozen=True)
class FastPath:
    bf16: bool = False
    channels_last: bool = False
    tf32: bool = False
    compile: bool = False
    fused: bool = False

    @property
    def enabled(self):
        return any(self.as_dict().values())

    def as_dict(self):
        return dataclasses.asdict(self)

def native_bf16(device):
    """Whether `device` computes in bfloat16 natively. Without it (e.g. a CPU with AVX2 only), oneDNN
    emulates bfloat16 and convolutions run many times slower than in float32."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    if device.type == 'cpu':
        probes = ('_is_avx512_bf16_supported', '_is_amx_tile_supported') # private, but the only way to ask
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False

def fastest_for(device):
    """The knobs that `--fast` turns on for `device` (measured by the benchmarks in bench/)."""
    device = torch.device(device)
    if device.type == 'cuda':
        return FastPath(bf16=native_bf16(device), channels_last=True, tf32=True, compile=False, fused=True)
    return FastPath(bf16=native_bf16(device), channels_last=True, tf32=False, compile=False, fused=True)

def resolve(device, fast=False, bf16=None, channels_last=None, tf32=None, compile=None, fused=None): # pylint: disable=redefined-builtin
    """The knobs in effect: those of `--fast` for the device, each overridden by an explicit option
    (None = not given)."""
    base = fastest_for(device) if fast else FastPath()
    given = dict(bf16=bf16, channels_last=channels_last, tf32=tf32, compile=compile, fused=fused)
    return dataclasses.replace(base, **{key: value for key, value in given.items() if value is not None})

def configure_backends(fp):
    """Process-wide switch: TF32 for CUDA matmuls and convolutions."""
    if fp.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

def autocast(fp, device):
    """Context manager around a call of the network: bfloat16 autocast when fp.bf16, else nothing."""
    if not fp.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)

def autocast_calls(fn, fp, device):
    """`fn` (e.g. the denoiser that a loss calls), run under autocast(fp, device). Only the call
    itself: what the caller computes around it keeps its own precision."""
    if not fp.bf16:
        return fn
    def call(*args, **kwargs):
        with autocast(fp, device):
            return fn(*args, **kwargs)
    return call

def to_memory_format(fp, tensor):
    """An image batch in the memory format of the fast path (unchanged when channels_last is off)."""
    return tensor.contiguous(memory_format=torch.channels_last) if fp.channels_last else tensor

def prepare_network(net, fp):
    """Make a preconditioned network `net` ready for the fast path, in place, and return it:
    channels_last weights, the attention kernel of all networks in this process (fused or the
    reference arithmetic, as fp says), and torch.compile of its U-Net `net.model`. Copies taken
    afterwards (copy.deepcopy, pickles) are not compiled."""
    if fp.channels_last:
        net.to(memory_format=torch.channels_last)
    networks.use_fast_attention(fp.fused)
    if fp.compile:
        require_compile()
        net.model.compile()
    return net

def require_compile():
    """torch.nn.Module.compile, which keeps pickles and copies plain, arrived in PyTorch 2.2."""
    if not hasattr(torch.nn.Module, 'compile'):
        raise RuntimeError(f'--compile needs PyTorch 2.2 or newer (this is {torch.__version__})')

def optimizer_options(fp, device):
    """Extra keyword arguments of torch.optim.Adam: the fused CUDA kernel, or the multi-tensor
    implementation elsewhere; none on the faithful path."""
    if not fp.fused:
        return {}
    return dict(fused=True) if torch.device(device).type == 'cuda' else dict(foreach=True)
