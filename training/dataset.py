"""Image datasets for training and evaluation (training.md section 3, formats.md section 1).

A dataset is a folder or a zip archive of images, all of the same shape, with an optional
`dataset.json` holding one label per image. `ImageFolderDataset` is the class train.py and
fid.py construct by name (`training.dataset.ImageFolderDataset`).
"""

import json
import os
import zipfile

import numpy as np
import PIL.Image
import torch

import dnnlib

try:
    import pyspng
except ImportError:
    pyspng = None

#----------------------------------------------------------------------------
# Abstract base (training.md section 3.1): subset, x-flip doubling, cache, lazy labels.

class Dataset(torch.utils.data.Dataset):
    def __init__(self,
        name,                   # Name of the dataset.
        raw_shape,              # Shape of the raw image data [N, C, H, W].
        max_size    = None,     # Keep at most this many images (random subset, sorted); None = all.
        use_labels  = False,    # Return the labels of dataset.json? False = label_dim 0.
        xflip       = False,    # Append a mirrored copy of every image (doubles the length)?
        random_seed = 0,        # Seed of the max_size subset.
        cache       = False,    # Keep decoded images in memory (per process / worker)?
    ):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._cache = cache
        self._cached_images = dict() # {raw_idx: ndarray}
        self._raw_labels = None
        self._label_shape = None

        # Subset first: a seeded shuffle, keep max_size, restore the original order.
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            np.random.RandomState(random_seed % (1 << 31)).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])

        # Then x-flip: the second half of the items are the mirrored copies.
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self):
        if self._raw_labels is None:
            self._raw_labels = self._load_raw_labels() if self._use_labels else None
            if self._raw_labels is None:
                self._raw_labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            assert isinstance(self._raw_labels, np.ndarray)
            assert self._raw_labels.shape[0] == self._raw_shape[0]
            assert self._raw_labels.dtype in [np.float32, np.int64]
            if self._raw_labels.dtype == np.int64:
                assert self._raw_labels.ndim == 1
                assert np.all(self._raw_labels >= 0)
        return self._raw_labels

    def close(self): # Hook: release open files.
        pass

    def _load_raw_image(self, raw_idx): # Hook: uint8 ndarray CHW.
        raise NotImplementedError

    def _load_raw_labels(self): # Hook: int64 [N] or float32 [N, ...] ndarray, or None.
        raise NotImplementedError

    def __getstate__(self):
        return dict(self.__dict__, _raw_labels=None) # Labels reload lazily in each worker.

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        raw_idx = self._raw_idx[idx]
        image = self._cached_images.get(raw_idx, None)
        if image is None:
            image = self._load_raw_image(raw_idx)
            if self._cache:
                self._cached_images[raw_idx] = image
        assert isinstance(image, np.ndarray)
        assert list(image.shape) == self.image_shape
        assert image.dtype == np.uint8
        if self._xflip[idx]:
            assert image.ndim == 3 # CHW
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def get_label(self, idx):
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            label = onehot
        return label.copy()

    def get_details(self, idx):
        d = dnnlib.EasyDict()
        d.raw_idx = int(self._raw_idx[idx])
        d.xflip = (int(self._xflip[idx]) != 0)
        d.raw_label = self._get_raw_labels()[d.raw_idx].copy()
        return d

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        assert len(self.image_shape) == 3 # CHW
        return self.image_shape[0]

    @property
    def resolution(self):
        assert len(self.image_shape) == 3 # CHW
        assert self.image_shape[1] == self.image_shape[2]
        return self.image_shape[1]

    @property
    def label_shape(self):
        if self._label_shape is None:
            raw_labels = self._get_raw_labels()
            if raw_labels.dtype == np.int64:
                self._label_shape = [int(np.max(raw_labels)) + 1]
            else:
                self._label_shape = list(raw_labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64

#----------------------------------------------------------------------------
# A folder or zip of images (training.md section 3.2). Errors in the data raise IOError
# with one line naming the dataset path and, where it applies, the image.

class ImageFolderDataset(Dataset):
    def __init__(self,
        path,                   # Path to a directory or a .zip file.
        resolution      = None, # Required resolution; None = whatever image #0 has.
        use_pyspng      = True, # Decode PNGs with pyspng when it is installed?
        **super_kwargs,         # Options of Dataset.
    ):
        self._path = path
        self._use_pyspng = use_pyspng
        self._zipfile = None

        if os.path.isdir(self._path):
            self._type = 'dir'
            self._all_fnames = {os.path.relpath(os.path.join(root, fname), start=self._path)
                for root, _dirs, files in os.walk(self._path) for fname in files}
        elif self._file_ext(self._path) == '.zip':
            self._type = 'zip'
            self._all_fnames = set(self._get_zipfile().namelist())
        else:
            raise IOError(f'{self._path}: dataset path must be a directory or a .zip file')

        PIL.Image.init()
        self._image_fnames = sorted(fname for fname in self._all_fnames if self._file_ext(fname) in PIL.Image.EXTENSION)
        if len(self._image_fnames) == 0:
            raise IOError(f'{self._path}: no image files found in the dataset')

        name = os.path.splitext(os.path.basename(self._path))[0]
        image_shape = list(self._decode_image(self._image_fnames[0]).shape)
        raw_shape = [len(self._image_fnames)] + image_shape
        if resolution is not None and (raw_shape[2] != resolution or raw_shape[3] != resolution):
            raise IOError(f'{self._path}: images are {raw_shape[3]}x{raw_shape[2]}, which does not match '
                f'the requested resolution {resolution}x{resolution}')
        super().__init__(name=name, raw_shape=raw_shape, **super_kwargs)

    @staticmethod
    def _file_ext(fname):
        return os.path.splitext(fname)[1].lower()

    def _get_zipfile(self):
        assert self._type == 'zip'
        if self._zipfile is None:
            if not os.path.isfile(self._path):
                raise IOError(f'{self._path}: dataset zip file not found')
            try:
                self._zipfile = zipfile.ZipFile(self._path)
            except zipfile.BadZipFile as err:
                raise IOError(f'{self._path}: not a valid zip file: {err}') from None
        return self._zipfile

    def _open_file(self, fname):
        if self._type == 'dir':
            return open(os.path.join(self._path, fname), 'rb')
        return self._get_zipfile().open(fname, 'r')

    def close(self):
        try:
            if self._zipfile is not None:
                self._zipfile.close()
        finally:
            self._zipfile = None

    def __getstate__(self):
        return dict(super().__getstate__(), _zipfile=None) # Each worker reopens the zip.

    def _decode_image(self, fname):
        """uint8 CHW array of one image file (formats.md section 1: no mode conversion)."""
        try:
            with self._open_file(fname) as f:
                if self._use_pyspng and pyspng is not None and self._file_ext(fname) == '.png':
                    image = pyspng.load(f.read())
                else:
                    image = np.array(PIL.Image.open(f))
        except Exception as err:
            raise IOError(f'{self._path}: cannot decode image {fname}: {err}') from err
        if image.dtype != np.uint8:
            raise IOError(f'{self._path}: image {fname} has {image.dtype} pixels; only 8-bit images are supported')
        if image.ndim == 2:
            image = image[:, :, np.newaxis] # HW => HWC
        return image.transpose(2, 0, 1) # HWC => CHW

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        image = self._decode_image(fname)
        if list(image.shape) != self.image_shape:
            raise IOError(f'{self._path}: image {fname} is {_describe(image.shape)}, but image '
                f'{self._image_fnames[0]} is {_describe(self.image_shape)}; all images must have the same shape')
        return image

    def _load_raw_labels(self):
        fname = 'dataset.json'
        if fname not in self._all_fnames:
            return None
        try:
            with self._open_file(fname) as f:
                labels = json.load(f)['labels']
            if labels is None:
                return None
            labels = dict(labels) # [[name, label], ...] => {name: label}
        except (ValueError, KeyError, TypeError) as err:
            raise IOError(f'{self._path}: cannot read labels from {fname}: {err!r}') from None
        missing = [name for name in self._image_fnames if name.replace('\\', '/') not in labels]
        if missing:
            raise IOError(f'{self._path}: {fname} has no label for image {missing[0]} ({len(missing)} images lack one)')
        try:
            labels = np.array([labels[name.replace('\\', '/')] for name in self._image_fnames])
        except ValueError: # Vectors of different lengths.
            labels = None
        valid = labels is not None and labels.dtype.kind in 'iuf' and labels.ndim in (1, 2)
        if not valid or (labels.ndim == 1 and np.any(labels < 0)):
            raise IOError(f'{self._path}: labels in {fname} must be class indices >= 0 or vectors of equal length')
        return labels.astype({1: np.int64, 2: np.float32}[labels.ndim])

def _describe(chw):
    """'WxH, C channel(s)' for a CHW shape, as used in error messages."""
    c, h, w = chw
    return f'{w}x{h} with {c} channel' + ('s' if c != 1 else '')

#----------------------------------------------------------------------------
