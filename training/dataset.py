"""Image datasets for training and for FID reference statistics.

A dataset is a directory or a `.zip` archive of images that all have the same shape. Images are
ordered by their sorted relative file names and are served as uint8 arrays in CHW layout. An
optional `dataset.json` at the root gives every image a label, either a class index or a vector
of floats:

    {"labels": [["00000/img00000000.png", 6], ["00000/img00000001.png", 9], ...]}

`ImageFolderDataset` is the class that train.py and fid.py construct (by its dotted name).
"""

import contextlib
import io
import json
import os
import zipfile

import dnnlib
import numpy as np
import PIL.Image
import torch

try:
    import pyspng # Optional, faster PNG decoding than Pillow.
except (ImportError, OSError):
    pyspng = None

#----------------------------------------------------------------------------

def choose_items(num_raw, max_size, xflip, seed):
    """Raw image index and mirror flag of every dataset item.

    With `max_size` smaller than the number of raw images, a seeded shuffle picks the subset, which
    is then put back into file order. With `xflip`, the (possibly reduced) list is repeated, the
    repetition being the mirrored copies.
    """
    keep = np.arange(num_raw, dtype=np.int64)
    if max_size is not None and num_raw > max_size:
        np.random.RandomState(seed % (1 << 31)).shuffle(keep)
        keep = np.sort(keep[:max_size])
    copies = [False, True] if xflip else [False]
    return np.tile(keep, len(copies)), np.repeat(np.array(copies), keep.size)

class Dataset(torch.utils.data.Dataset):
    """Images with optional labels, indexed as `dataset[i] -> (uint8 CHW image, float32 label)`.

    Subclasses provide the raw storage through `_load_raw_image(raw_idx)`, `_load_raw_labels()` and
    `close()`. On top of it this class adds a random subset (`max_size`, drawn with `random_seed`),
    mirrored copies (`xflip`, doubling the length), an in-memory image cache (`cache`, per process)
    and lazily loaded labels (`use_labels`; without labels every label is an empty vector).
    """

    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0, cache=False):
        self._name = name
        self._num_raw = int(raw_shape[0])
        self._image_shape = [int(size) for size in raw_shape[1:]]
        self._raw_idx, self._xflip = choose_items(self._num_raw, max_size, xflip, random_seed)
        self._use_labels = use_labels
        self._raw_labels = None     # Loaded on first use, see _labels().
        self._label_shape = None
        self._image_cache = {} if cache else None

    # Storage hooks for subclasses.

    def _load_raw_image(self, raw_idx):
        """uint8 ndarray [C, H, W] of raw image `raw_idx`."""
        raise NotImplementedError

    def _load_raw_labels(self):
        """int64 class indices [N], float32 vectors [N, ...], or None for an unlabelled dataset."""
        raise NotImplementedError

    def close(self):
        """Release open files; reading again reopens them."""

    # Raw data access.

    def _image(self, raw_idx):
        image = None if self._image_cache is None else self._image_cache.get(raw_idx)
        if image is None:
            image = self._load_raw_image(raw_idx)
            assert isinstance(image, np.ndarray) and image.dtype == np.uint8
            assert list(image.shape) == self._image_shape
            if self._image_cache is not None:
                self._image_cache[raw_idx] = image
        return image

    def _labels(self):
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._num_raw, 0], dtype=np.float32)
            assert isinstance(labels, np.ndarray) and len(labels) == self._num_raw
            if labels.dtype == np.int64:
                assert labels.ndim == 1 and labels.min() >= 0
                self._label_shape = [int(labels.max()) + 1]
            else:
                assert labels.dtype == np.float32
                self._label_shape = list(labels.shape[1:])
            self._raw_labels = labels
        return self._raw_labels

    # Items.

    def __len__(self):
        return len(self._raw_idx)

    def __getitem__(self, idx):
        image = self._image(self._raw_idx[idx])
        if self._xflip[idx]:
            image = np.flip(image, axis=2)
        return image.copy(), self.get_label(idx)

    def get_label(self, idx):
        """Label vector of item `idx`: the one-hot encoding of a class index, or the stored vector."""
        label = self._labels()[self._raw_idx[idx]]
        if self.has_onehot_labels:
            return (np.arange(self.label_dim) == label).astype(np.float32)
        return label.copy()

    def get_details(self, idx):
        """Where item `idx` comes from: its raw index, whether it is mirrored, and its raw label."""
        raw_idx = int(self._raw_idx[idx])
        return dnnlib.EasyDict(raw_idx=raw_idx, xflip=bool(self._xflip[idx]), raw_label=self._labels()[raw_idx].copy())

    # Pickling, for DataLoader worker processes.

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_raw_labels'] = None # Each worker reloads the labels when it needs them.
        return state

    def __del__(self):
        with contextlib.suppress(Exception): # The interpreter may be shutting down.
            self.close()

    # Properties.

    @property
    def image_shape(self):
        """[C, H, W] of every image."""
        return list(self._image_shape)

    @property
    def num_channels(self):
        """C: 1 for grayscale, 3 for RGB."""
        channels, _height, _width = self._image_shape
        return channels

    @property
    def resolution(self):
        """Side length of the (square) images."""
        _channels, height, width = self._image_shape
        assert height == width
        return height

    @property
    def name(self):
        """Dataset name, e.g. the archive's file name without extension."""
        return self._name

    @property
    def label_dim(self):
        """Length of the label vectors returned with the images."""
        (dim,) = self.label_shape
        return dim

    @property
    def has_labels(self):
        """Whether the labels carry information (a non-empty label shape)."""
        return any(self.label_shape)

    @property
    def has_onehot_labels(self):
        """Whether the stored labels are class indices, served as one-hot vectors."""
        return self._labels().dtype == np.int64

    @property
    def label_shape(self):
        """[num_classes] for class labels, the vector shape for vector labels, [0] without labels."""
        self._labels()
        return list(self._label_shape)

#----------------------------------------------------------------------------

def file_extension(fname):
    return os.path.splitext(fname)[1].lower()

def describe_shape(chw):
    """'WxH with C channel(s)' for error messages."""
    channels, height, width = chw
    return f'{width}x{height} with {channels} channel{"" if channels == 1 else "s"}'

class ImageFolderDataset(Dataset):
    """Dataset stored as a directory tree or a zip archive.

    Args:
        path:         Directory, or file whose lowercase extension is `.zip`.
        resolution:   Expected image size; None accepts whatever image #0 has.
        use_pyspng:   Decode PNG files with pyspng when it is installed (faster than Pillow).
        super_kwargs: Options of `Dataset` (max_size, use_labels, xflip, random_seed, cache).

    Problems with the data raise IOError, with one line naming the dataset and, where it
    applies, the offending file.
    """

    LABELS_FILE = 'dataset.json'

    def __init__(self, path, resolution=None, use_pyspng=True, **super_kwargs):
        self._zipfile = None # Opened on first use, see _archive().
        self._path, self._use_pyspng = path, use_pyspng
        if os.path.isdir(path):
            self._in_zip = False
            members = [os.path.relpath(os.path.join(folder, fname), path) for folder, _subdirs, fnames in os.walk(path) for fname in fnames]
        elif file_extension(path) == '.zip':
            self._in_zip = True
            members = self._archive().namelist()
        else:
            raise IOError(f'{path}: dataset path must be a directory or a .zip file')
        self._members = set(members)

        PIL.Image.init()
        self._image_fnames = sorted(fname for fname in self._members if file_extension(fname) in PIL.Image.EXTENSION)
        if not self._image_fnames:
            raise IOError(f'{path}: no image files found in the dataset')

        channels, height, width = self._decode(self._image_fnames[0]).shape
        if resolution is not None and (height, width) != (resolution, resolution):
            raise IOError(f'{path}: images are {width}x{height}, which does not match '
                          f'the requested resolution {resolution}x{resolution}')
        name = os.path.splitext(os.path.basename(path))[0]
        super().__init__(name=name, raw_shape=[len(self._image_fnames), channels, height, width], **super_kwargs)

    def _archive(self):
        """The zip archive, opened on first use (again after close() or unpickling)."""
        if self._zipfile is None:
            if not os.path.isfile(self._path):
                raise IOError(f'{self._path}: dataset zip file not found')
            try:
                self._zipfile = zipfile.ZipFile(self._path)
            except zipfile.BadZipFile as err:
                raise IOError(f'{self._path}: not a valid zip file: {err}') from None
        return self._zipfile

    def _read(self, fname):
        if self._in_zip:
            return self._archive().read(fname)
        with open(os.path.join(self._path, fname), 'rb') as f:
            return f.read()

    def close(self):
        zf, self._zipfile = self._zipfile, None
        if zf is not None:
            zf.close()

    def __getstate__(self):
        state = super().__getstate__()
        state['_zipfile'] = None # Not picklable; each worker reopens the archive.
        return state

    def _decode(self, fname):
        """Pixels of one image file as uint8 [C, H, W], without any mode conversion."""
        try:
            data = self._read(fname)
            if self._use_pyspng and pyspng is not None and file_extension(fname) == '.png':
                pixels = pyspng.load(data)
            else:
                pixels = np.array(PIL.Image.open(io.BytesIO(data)))
        except Exception as err:
            raise IOError(f'{self._path}: cannot decode image {fname}: {err}') from err
        if pixels.dtype != np.uint8:
            raise IOError(f'{self._path}: image {fname} has {pixels.dtype} pixels; only 8-bit images are supported')
        return np.moveaxis(np.atleast_3d(pixels), 2, 0) # Grayscale HW gets a channel axis; HWC => CHW.

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        image = self._decode(fname)
        if list(image.shape) != self.image_shape:
            raise IOError(f'{self._path}: image {fname} is {describe_shape(image.shape)}, but image '
                          f'{self._image_fnames[0]} is {describe_shape(self.image_shape)}; all images must have the same shape')
        return image

    def _load_raw_labels(self):
        if self.LABELS_FILE not in self._members:
            return None
        try:
            entries = json.loads(self._read(self.LABELS_FILE))['labels']
            by_name = None if entries is None else dict(entries)
        except (ValueError, KeyError, TypeError) as err:
            raise IOError(f'{self._path}: cannot read labels from {self.LABELS_FILE}: {err!r}') from None
        if by_name is None:
            return None

        # Labels are keyed by paths with forward slashes, whatever the OS separator.
        keys = [fname.replace('\\', '/') for fname in self._image_fnames]
        unlabelled = [fname for fname, key in zip(self._image_fnames, keys) if key not in by_name]
        if unlabelled:
            raise IOError(f'{self._path}: {self.LABELS_FILE} has no label for image {unlabelled[0]} '
                          f'({len(unlabelled)} images lack one)')
        try:
            labels = np.array([by_name[key] for key in keys])
        except ValueError: # Vectors of different lengths.
            labels = None
        if labels is None or labels.dtype.kind not in 'iuf' or labels.ndim not in (1, 2) or (labels.ndim == 1 and labels.min() < 0):
            raise IOError(f'{self._path}: labels in {self.LABELS_FILE} must be class indices >= 0 or vectors of equal length')
        return labels.astype(np.int64 if labels.ndim == 1 else np.float32)

#----------------------------------------------------------------------------
