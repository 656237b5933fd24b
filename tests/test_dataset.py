"""training/dataset.py: Dataset / ImageFolderDataset (zip or folder of PNGs with an optional dataset.json of labels)."""

import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from training import dataset as dataset_module
from training.dataset import ImageFolderDataset

#----------------------------------------------------------------------------
# Helpers: small synthetic datasets.

def _pattern(i, h=8, w=8, c=3):
    rnd = np.random.RandomState(i)
    image = rnd.randint(0, 256, size=[h, w, c], dtype=np.uint8)
    return image[:, :, 0] if c == 1 else image

def _write_folder(root, names, labels=None, c=3, size=8):
    """PNG files at the given relative names, image i from seed i; optional dataset.json."""
    images = {}
    for i, name in enumerate(names):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        images[name] = _pattern(i, size, size, c)
        PIL.Image.fromarray(images[name]).save(path)
    if labels is not None:
        with open(os.path.join(root, 'dataset.json'), 'w') as f:
            json.dump({'labels': labels}, f)
    return images

def _zip_folder(root, zip_path):
    with zipfile.ZipFile(zip_path, 'w', compression=zipfile.ZIP_DEFLATED) as z:
        for dirpath, _dirs, files in os.walk(root):
            for fname in files:
                full = os.path.join(dirpath, fname)
                z.write(full, arcname=os.path.relpath(full, root).replace(os.sep, '/'))

def _chw(image):
    return image[np.newaxis] if image.ndim == 2 else image.transpose(2, 0, 1)

NAMES = ['b/img1.png', 'a/img2.png', 'a/img0.png', 'c.png', 'b/sub/img3.png']

@pytest.fixture
def folder(tmp_path):
    root = tmp_path / 'myset'
    labels = [[name, i % 3] for i, name in enumerate(NAMES)]
    images = _write_folder(str(root), NAMES, labels=labels)
    with open(root / 'notes.txt', 'w') as f:
        f.write('not an image')
    return root, images, dict(labels)

#----------------------------------------------------------------------------
# Golden: the zips written by the original dataset_tool.py read back exactly.

def test_golden_fmnist_zip_pixels_and_labels(golden):
    base = golden / 'dataset_tool'
    runs = json.loads((base / 'dataset_tool_runs.json').read_text())
    expected_images = np.load(base / 'dataset_tool.npz')['fmnist_train_max64/images']
    expected_labels = [label for _name, label in json.loads(runs['fmnist_train_max64']['dataset_json'])['labels']]

    ds = ImageFolderDataset(str(base / 'fmnist-train64-32x32.zip'), resolution=32, use_labels=True)
    assert ds.name == 'fmnist-train64-32x32'
    assert len(ds) == 64 and ds.image_shape == [1, 32, 32] and ds.resolution == 32 and ds.num_channels == 1
    assert ds.has_labels and ds.has_onehot_labels and ds.label_dim == max(expected_labels) + 1
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image[0], expected_images[i])
        assert label.dtype == np.float32 and label.argmax() == expected_labels[i] and label.sum() == 1

def test_golden_unlabelled_zip(golden):
    path = golden / 'dataset_tool' / 'fmnist-t10k256-32x32.zip'
    expected_images = np.load(golden / 'dataset_tool' / 'dataset_tool.npz')['fmnist_t10k256_from_folder/images']
    ds = ImageFolderDataset(str(path), use_labels=True) # dataset.json holds {"labels": null}
    assert len(ds) == 256 and ds.label_shape == [0] and ds.label_dim == 0 and not ds.has_labels
    image, label = ds[255]
    np.testing.assert_array_equal(image[0], expected_images[255])
    assert label.shape == (0,) and label.dtype == np.float32

#----------------------------------------------------------------------------
# Folder and zip layouts.

def test_folder_order_labels_and_zip_agree(folder, tmp_path):
    root, images, labels = folder
    expected_order = sorted(name.replace('/', os.sep) for name in NAMES)
    zip_path = tmp_path / 'myset.zip'
    _zip_folder(str(root), str(zip_path))
    for path in [str(root), str(zip_path)]:
        ds = ImageFolderDataset(path, use_labels=True)
        assert ds.name == 'myset' and len(ds) == len(NAMES) # notes.txt and dataset.json are not images
        assert ds.label_dim == 3
        for i, name in enumerate(expected_order):
            name = name.replace(os.sep, '/')
            image, label = ds[i]
            np.testing.assert_array_equal(image, _chw(images[name]))
            np.testing.assert_array_equal(label, np.eye(3, dtype=np.float32)[labels[name]])
            assert ds.get_details(i).raw_label == labels[name]

def test_grayscale_and_float_labels(tmp_path):
    names = ['x0.png', 'x1.png']
    labels = [['x0.png', [0.5, -1.0]], ['x1.png', [2.0, 3.0]]]
    images = _write_folder(str(tmp_path / 'g'), names, labels=labels, c=1)
    ds = ImageFolderDataset(str(tmp_path / 'g'), use_labels=True)
    assert ds.image_shape == [1, 8, 8] and ds.label_shape == [2] and not ds.has_onehot_labels
    image, label = ds[1]
    np.testing.assert_array_equal(image[0], images['x1.png'])
    np.testing.assert_array_equal(label, np.float32([2.0, 3.0]))

def test_use_labels_false_gives_empty_labels(folder):
    ds = ImageFolderDataset(str(folder[0]), use_labels=False)
    assert ds.label_shape == [0] and not ds.has_labels
    assert ds[0][1].shape == (0,)

#----------------------------------------------------------------------------
# max_size subset, x-flip doubling, cache, pyspng dispatch.

@pytest.mark.parametrize('seed', [0, 7, 2**31 + 7])
def test_max_size_subset(folder, seed):
    ds = ImageFolderDataset(str(folder[0]), max_size=3, random_seed=seed)
    order = np.arange(len(NAMES))
    np.random.RandomState(seed % 2**31).shuffle(order)
    expected = np.sort(order[:3])
    assert len(ds) == 3
    assert [ds.get_details(i).raw_idx for i in range(3)] == expected.tolist()
    full = ImageFolderDataset(str(folder[0]))
    for i, raw_idx in enumerate(expected):
        np.testing.assert_array_equal(ds[i][0], full[int(raw_idx)][0])

def test_max_size_not_smaller_keeps_all(folder):
    ds = ImageFolderDataset(str(folder[0]), max_size=len(NAMES), random_seed=3)
    assert [ds.get_details(i).raw_idx for i in range(len(ds))] == list(range(len(NAMES)))

def test_max_size_then_xflip(folder):
    ds = ImageFolderDataset(str(folder[0]), max_size=2, xflip=True, random_seed=1)
    assert len(ds) == 4
    details = [ds.get_details(i) for i in range(4)]
    assert [d.xflip for d in details] == [False, False, True, True]
    assert [d.raw_idx for d in details[:2]] == [d.raw_idx for d in details[2:]]
    for i in range(2):
        plain, flipped = ds[i][0], ds[i + 2][0]
        np.testing.assert_array_equal(flipped, plain[:, :, ::-1])
        assert not np.array_equal(flipped, plain)

def test_cache_keeps_decoded_images(folder):
    root = folder[0]
    cached = ImageFolderDataset(str(root), cache=True)
    uncached = ImageFolderDataset(str(root), cache=False)
    first = cached[1][0]
    first[:] = 0 # __getitem__ returns a copy; the cache must be unaffected
    os.remove(os.path.join(root, cached._image_fnames[1]))
    again = cached[1][0] # served from the cache although the file is gone
    np.testing.assert_array_equal(again, _chw(folder[1][cached._image_fnames[1].replace(os.sep, '/')]))
    with pytest.raises(IOError, match='cannot decode image'):
        uncached[1]

def test_pyspng_used_for_png_when_available(folder, monkeypatch):
    calls = []
    class FakePyspng:
        @staticmethod
        def load(data):
            calls.append(len(data))
            import io
            return np.array(PIL.Image.open(io.BytesIO(data)))
    monkeypatch.setattr(dataset_module, 'pyspng', FakePyspng)
    ImageFolderDataset(str(folder[0]), use_pyspng=True)[0]
    assert len(calls) == 2 # image #0 at construction, then __getitem__
    ImageFolderDataset(str(folder[0]), use_pyspng=False)[0]
    assert len(calls) == 2

#----------------------------------------------------------------------------
# Pickling for DataLoader workers.

def test_pickle_reopens_zip(folder, tmp_path):
    zip_path = tmp_path / 'myset.zip'
    _zip_folder(str(folder[0]), str(zip_path))
    ds = ImageFolderDataset(str(zip_path), use_labels=True)
    expected = [ds[i] for i in range(len(ds))] # zip handle and labels are now loaded
    assert ds._zipfile is not None and ds._raw_labels is not None
    state = ds.__getstate__()
    assert state['_zipfile'] is None and state['_raw_labels'] is None
    clone = pickle.loads(pickle.dumps(ds))
    for i, (image, label) in enumerate(expected):
        np.testing.assert_array_equal(clone[i][0], image)
        np.testing.assert_array_equal(clone[i][1], label)
    ds.close()
    assert ds._zipfile is None

def test_dataloader_with_workers(folder, tmp_path):
    zip_path = tmp_path / 'myset.zip'
    _zip_folder(str(folder[0]), str(zip_path))
    ds = ImageFolderDataset(str(zip_path), use_labels=True, xflip=True)
    ds[0] # open the zip in the parent before forking workers
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    images = torch.cat([x for x, _ in loader])
    assert images.shape == (2 * len(NAMES), 3, 8, 8) and images.dtype == torch.uint8
    np.testing.assert_array_equal(images.numpy(), np.stack([ds[i][0] for i in range(len(ds))]))

#----------------------------------------------------------------------------
# Bad input: one-line IOError naming the path / image.

def test_error_path_not_dir_or_zip(tmp_path):
    path = tmp_path / 'data.tar'
    path.write_bytes(b'x')
    with pytest.raises(IOError, match=r'data\.tar: dataset path must be a directory or a \.zip file'):
        ImageFolderDataset(str(path))
    with pytest.raises(IOError, match=r'missing\.zip: dataset zip file not found'):
        ImageFolderDataset(str(tmp_path / 'missing.zip'))
    (tmp_path / 'bad.zip').write_bytes(b'not a zip')
    with pytest.raises(IOError, match=r'bad\.zip: not a valid zip file'):
        ImageFolderDataset(str(tmp_path / 'bad.zip'))

def test_error_no_images(tmp_path):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'readme.txt').write_text('hi')
    with pytest.raises(IOError, match=r'empty: no image files found'):
        ImageFolderDataset(str(tmp_path / 'empty'))

def test_error_resolution_mismatch(folder):
    with pytest.raises(IOError, match=r'images are 8x8, which does not match the requested resolution 16x16'):
        ImageFolderDataset(str(folder[0]), resolution=16)
    assert ImageFolderDataset(str(folder[0]), resolution=8).resolution == 8

def test_error_corrupt_image_names_file(folder):
    root = folder[0]
    (root / 'c.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    ds = ImageFolderDataset(str(root))
    idx = ds._image_fnames.index('c.png')
    with pytest.raises(IOError, match=r'myset: cannot decode image c\.png: '):
        ds[idx]

def test_error_shape_mismatch_names_file(folder):
    root = folder[0]
    PIL.Image.fromarray(_pattern(0, 8, 10, 1)).save(root / 'c.png')
    ds = ImageFolderDataset(str(root))
    idx = ds._image_fnames.index('c.png')
    with pytest.raises(IOError, match=r'image c\.png is 10x8 with 1 channel, but image .*img0\.png is 8x8 with 3 channels'):
        ds[idx]

def test_error_missing_label_names_file(folder):
    root = folder[0]
    (root / 'dataset.json').write_text(json.dumps({'labels': [['c.png', 1]]}))
    ds = ImageFolderDataset(str(root), use_labels=True)
    with pytest.raises(IOError, match=r'dataset\.json has no label for image '):
        ds.label_dim
