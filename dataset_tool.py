"""Convert an image collection into the dataset format read by training and FID: a zip archive or
a folder of `NNNNN/imgNNNNNNNN.png` files plus `dataset.json`."""

import contextlib
import gzip
import io
import json
import os
import pickle
import re
import shutil
import tarfile
import uuid
import zipfile
import zlib
from pathlib import Path

import click
import numpy as np
import PIL.Image
from tqdm import tqdm

import dnnlib

#----------------------------------------------------------------------------
# Small helpers.

def parse_tuple(s):
    """'512x384' or '512,384' => (512, 384), the parser of --resolution WxH."""
    if s is None or isinstance(s, tuple):
        return s
    match = re.fullmatch(r'(\d+)[x,](\d+)', s)
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise click.ClickException(f'cannot parse tuple "{s}": --resolution must be WxH with positive integers, e.g. 64x64')
    return int(match.group(1)), int(match.group(2))

def is_image_ext(fname):
    return os.path.splitext(str(fname))[1].lower() in PIL.Image.EXTENSION

def maybe_min(count, max_images):
    return count if max_images is None else min(count, max_images)

def decode_image(file, name):
    """HWC (or HW) uint8 array as PIL decodes it, without mode conversion; names the file on error."""
    try:
        with PIL.Image.open(file) as image:
            return np.array(image)
    except Exception as err:
        raise click.ClickException(f'{name}: cannot decode image: {err}') from None

#----------------------------------------------------------------------------
# Sources. Each opener returns (number of images to read, iterator) where
# the iterator yields EasyDict(img=HWC/HW uint8 array, label=int/list/None, name=source name).

def open_image_folder(source_dir, *, max_images):
    PIL.Image.init()
    input_images = [f for f in sorted(Path(source_dir).rglob('*')) if is_image_ext(f) and f.is_file()]
    arch_fnames = {f: os.path.relpath(f, source_dir).replace('\\', '/') for f in input_images}

    max_idx = maybe_min(len(input_images), max_images)

    # Labels: dataset.json at the root, else the top-level folder names if there are at least two.
    labels = {}
    meta_fname = os.path.join(source_dir, 'dataset.json')
    if os.path.isfile(meta_fname):
        labels = read_source_labels(Path(meta_fname).read_bytes, meta_fname)
        require_every_label(labels, [arch_fnames[f] for f in input_images[:max_idx]], meta_fname)
    if not labels:
        toplevel_names = {arch: (arch.split('/')[0] if '/' in arch else '') for arch in arch_fnames.values()}
        toplevel_indices = {name: idx for idx, name in enumerate(sorted(set(toplevel_names.values())))}
        if len(toplevel_indices) > 1:
            labels = {arch: toplevel_indices[name] for arch, name in toplevel_names.items()}

    def iterate_images():
        for fname in input_images[:max_idx]:
            arch = arch_fnames[fname]
            yield dnnlib.EasyDict(img=decode_image(fname, str(fname)), label=labels.get(arch), name=arch)
    return max_idx, iterate_images()

def open_image_zip(source, *, max_images):
    PIL.Image.init()
    with open_zip(source) as z:
        input_images = [name for name in sorted(z.namelist()) if is_image_ext(name)]
        max_idx = maybe_min(len(input_images), max_images)
        labels = {}
        if 'dataset.json' in z.namelist():
            meta_name = f'{source}:dataset.json'
            labels = read_source_labels(lambda: z.read('dataset.json'), meta_name)
            require_every_label(labels, input_images[:max_idx], meta_name)
    def iterate_images():
        with open_zip(source) as z:
            for name in input_images[:max_idx]:
                with z.open(name) as f:
                    img = decode_image(f, f'{source}:{name}')
                yield dnnlib.EasyDict(img=img, label=labels.get(name), name=name)
    return max_idx, iterate_images()

def open_zip(source):
    try:
        return zipfile.ZipFile(source, 'r')
    except zipfile.BadZipFile as err:
        raise click.ClickException(f'{source}: not a valid zip file: {err}') from None

def read_source_labels(read_bytes, name):
    """{relative path: label} from a source dataset.json (its bytes come from `read_bytes()`);
    {} when its labels are null."""
    try:
        labels = json.loads(read_bytes())['labels']
        return {} if labels is None else dict(labels)
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as err:
        raise click.ClickException(f'{name}: expected {{"labels": [[path, label], ...]}} or {{"labels": null}}; '
            f'{dnnlib.util.error_summary(err)}') from None

def require_every_label(labels, names, meta_name):
    """A dataset.json that labels some images but not others is a mistake, not an unlabelled dataset."""
    unlabelled = [name for name in names if name not in labels]
    if labels and unlabelled:
        raise click.ClickException(f'{meta_name}: no label for image "{unlabelled[0]}" ({len(unlabelled)} of {len(names)} '
            'unlabelled); label every image or write {"labels": null}')

def open_array_images(images, labels, *, max_images, name):
    """Images and labels held in memory (CIFAR-10, MNIST)."""
    max_idx = maybe_min(len(images), max_images)
    def iterate_images():
        for idx in range(max_idx):
            yield dnnlib.EasyDict(img=images[idx], label=int(labels[idx]), name=f'{name}[{idx}]')
    return max_idx, iterate_images()

try:
    from numpy._core.multiarray import _reconstruct # numpy >= 2
except ImportError:
    from numpy.core.multiarray import _reconstruct

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batch dicts, allowing only the globals a numpy array needs, so that
    a tarball from elsewhere cannot run code."""
    allowed = {('numpy.core.multiarray', '_reconstruct'): _reconstruct, ('numpy._core.multiarray', '_reconstruct'): _reconstruct,
        ('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype}

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f'unexpected object {module}.{name} in a CIFAR-10 batch')
        return self.allowed[(module, name)]

def open_cifar10(tarball, *, max_images):
    """CIFAR-10 python tarball: the five training batches (the test batch is not used). Unlike the
    original, any number of images per batch is accepted (e.g. a small CIFAR-format subset)."""
    members = [f'cifar-10-batches-py/data_batch_{batch}' for batch in range(1, 6)]
    batches = {}
    try:
        with tarfile.open(tarball, 'r:gz') as tar: # One forward pass: no re-decompression from the start.
            for info in tar:
                if info.name in members:
                    batches[info.name] = _ArrayUnpickler(tar.extractfile(info), encoding='latin1').load()
        missing = [name for name in members if name not in batches]
        if missing:
            raise KeyError(f'no member {missing[0]}')
        images = [np.asarray(batches[name]['data']).reshape(-1, 3, 32, 32) for name in members]
        labels = [np.asarray(batches[name]['labels']).reshape(-1) for name in members]
    except (tarfile.TarError, KeyError, EOFError, pickle.UnpicklingError, OSError, ValueError, TypeError) as err:
        raise click.ClickException(f'{tarball}: not a CIFAR-10 python tarball: {err!r}') from None
    images = np.concatenate(images).transpose(0, 2, 3, 1) # NCHW => NHWC
    labels = np.concatenate(labels)
    if images.dtype != np.uint8 or len(labels) != len(images) or labels.dtype.kind not in 'iu' or labels.min() < 0 or labels.max() > 9:
        raise click.ClickException(f'{tarball}: CIFAR-10 batches must hold uint8 images and one label 0..9 per image')
    return open_array_images(images, labels, max_images=max_images, name=tarball)

def read_idx(path, magic, ndim):
    """Array of an MNIST-format gzip idx file (big-endian int32 header: magic, then the sizes)."""
    try:
        with gzip.open(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err: # EOFError: a cut-off gzip stream
        raise click.ClickException(f'{path}: cannot read: {dnnlib.util.error_summary(err)}') from None
    header = np.frombuffer(raw[:4 * (ndim + 1)], dtype='>i4') if len(raw) >= 4 * (ndim + 1) else None
    if header is None or header[0] != magic or int(np.prod(header[1:])) != len(raw) - 4 * (ndim + 1):
        raise click.ClickException(f'{path}: not an idx{ndim} file of unsigned bytes')
    return np.frombuffer(raw, dtype=np.uint8, offset=4 * (ndim + 1)).reshape(header[1:])

def open_mnist(images_gz, *, max_images):
    """MNIST-format images zero-padded by 2 on each side (28x28 => 32x32), with the labels of the
    matching `*-labels-idx1-ubyte.gz`. Unlike the original, any `*-images-idx3-ubyte.gz`
    (e.g. t10k) and any image count are accepted."""
    labels_gz = images_gz[:-len('-images-idx3-ubyte.gz')] + '-labels-idx1-ubyte.gz'
    if not os.path.isfile(labels_gz):
        raise click.ClickException(f'{labels_gz}: labels file missing (needed for {images_gz})')
    images = read_idx(images_gz, magic=0x803, ndim=3)
    labels = read_idx(labels_gz, magic=0x801, ndim=1)
    if len(labels) != len(images):
        raise click.ClickException(f'{labels_gz}: {len(labels)} labels for {len(images)} images in {images_gz}')
    images = np.pad(images, [(0, 0), (2, 2), (2, 2)], mode='constant', constant_values=0)
    return open_array_images(images, labels, max_images=max_images, name=images_gz)

def open_lmdb(lmdb_dir, *, max_images):
    """LSUN LMDB folder: every value decoded with OpenCV (PIL if OpenCV cannot); undecodable
    entries are reported and skipped, as in the original. Needs `lmdb` and `opencv-python`."""
    try:
        import cv2
        import lmdb
    except ImportError as err:
        raise click.ClickException(f'{lmdb_dir}: reading an LMDB source needs the lmdb and opencv-python packages ({err})') from None

    try:
        with lmdb.open(lmdb_dir, readonly=True, lock=False).begin(write=False) as txn:
            max_idx = maybe_min(txn.stat()['entries'], max_images)
    except lmdb.Error as err:
        raise click.ClickException(f'{lmdb_dir}: not a readable LMDB database: {dnnlib.util.error_summary(err)}') from None

    def decode(value):
        img = cv2.imdecode(np.frombuffer(value, dtype=np.uint8), 1)
        if img is not None:
            return img[:, :, ::-1] # BGR => RGB
        return np.array(PIL.Image.open(io.BytesIO(value)))

    def iterate_images():
        with lmdb.open(lmdb_dir, readonly=True, lock=False).begin(write=False) as txn:
            for idx, (key, value) in enumerate(txn.cursor()):
                if idx >= max_idx:
                    break
                try:
                    img = decode(value)
                except Exception as err:
                    tqdm.write(f'Skipping LMDB entry {key!r}: {err}')
                    continue
                yield dnnlib.EasyDict(img=img, label=None, name=f'{lmdb_dir}[{key!r}]')
    return max_idx, iterate_images()

def open_dataset(source, *, max_images):
    """Pick the reader by the kind of `source`: an *_lmdb folder, any other folder, the CIFAR-10
    archive, an MNIST idx file, a zip archive."""
    if os.path.isdir(source):
        if source.rstrip('/').endswith('_lmdb'):
            return open_lmdb(source, max_images=max_images)
        return open_image_folder(source, max_images=max_images)
    if os.path.isfile(source):
        basename = os.path.basename(source)
        if basename == 'cifar-10-python.tar.gz':
            return open_cifar10(source, max_images=max_images)
        if basename.endswith('-images-idx3-ubyte.gz'):
            return open_mnist(source, max_images=max_images)
        if basename.lower().endswith('.zip'):
            return open_image_zip(source, max_images=max_images)
        raise click.ClickException(f'--source {source}: unknown source type; expected a folder, a .zip, cifar-10-python.tar.gz, '
            'a *-images-idx3-ubyte.gz file or a *_lmdb folder')
    raise click.ClickException(f'--source: Missing input file or directory: {source}')

#----------------------------------------------------------------------------
# Transforms on HWC/HW uint8 arrays; None means "skip this image".

def resize(img, width, height):
    return np.array(PIL.Image.fromarray(img).resize((width, height), PIL.Image.Resampling.LANCZOS))

def to_rgb(img):
    return img if img.ndim == 3 else np.repeat(img[:, :, np.newaxis], 3, axis=2)

def make_transform(transform, output_width, output_height):
    def scale(img):
        if output_width is None or (img.shape[1] == output_width and img.shape[0] == output_height):
            return img
        return resize(img, output_width, output_height)

    def center_crop(img):
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        return resize(to_rgb(img), output_width, output_height)

    def center_crop_wide(img):
        h, w = img.shape[:2]
        ch = int(np.round(output_width * h / w))
        if w < output_width or ch < output_height:
            return None
        img = img[(h - ch) // 2 : (h - ch) // 2 + ch]
        img = resize(to_rgb(img), output_width, output_height)
        canvas = np.zeros([output_width, output_width, 3], dtype=np.uint8)
        top = (output_width - output_height) // 2
        canvas[top : top + output_height, :] = img
        return canvas

    if transform is None:
        return scale
    if output_width is None or output_height is None:
        raise click.ClickException(f'must specify --resolution=WxH when using {transform} transform')
    if transform == 'center-crop-wide' and output_height > output_width:
        raise click.ClickException(f'--transform=center-crop-wide needs a wide --resolution (W >= H), got {output_width}x{output_height}')
    return {'center-crop': center_crop, 'center-crop-wide': center_crop_wide}[transform]

#----------------------------------------------------------------------------
# Destination, written atomically: a temporary zip or folder `.NAME.tmp-XXXXXXXX` beside `dest`
# is renamed onto it at the end; on any error it is removed, and one left by a killed run is
# removed by the next run to the same `dest`.

def check_dest(dest):
    """Refuse an unusable --dest before any input is read."""
    if dest == '':
        raise click.ClickException('--dest output filename or directory must not be an empty string')
    if is_zip_dest(dest):
        if os.path.exists(dest):
            raise click.ClickException(f'--dest {dest} already exists; remove it or choose another name')
    elif os.path.isdir(dest):
        if os.listdir(dest):
            raise click.ClickException(f'--dest folder {dest} must be empty')
    elif os.path.exists(dest):
        raise click.ClickException(f'--dest {dest} exists and is not a folder')
    check_writable(dest)

def check_writable(dest):
    """The temporary output and the missing parent folders of `dest` are made in its nearest
    existing ancestor folder, which must therefore accept new files."""
    try:
        dnnlib.util.check_can_create(dest)
    except OSError as err:
        raise click.ClickException(f'--dest: cannot write to "{dest}" ({err.strerror or err})') from None

def is_zip_dest(dest):
    return dest.lower().endswith('.zip')

def temp_name_pattern(dest):
    """Names of the temporaries of `dest`: `.NAME.tmp-` and 8 hex digits, as dnnlib.util.atomic_write
    names its files and open_dest its folders."""
    return re.compile(rf'\.{re.escape(os.path.basename(os.path.abspath(dest)))}\.tmp-[0-9a-f]{{8}}')

def remove_stale_temporaries(dest):
    """Delete the temporaries beside `dest` that an earlier run, killed while writing, left behind."""
    folder = os.path.dirname(os.path.abspath(dest))
    pattern = temp_name_pattern(dest)
    for entry in os.scandir(folder):
        if pattern.fullmatch(entry.name):
            click.echo(f'Removing {entry.path}, left behind by an interrupted run', err=True)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)

@contextlib.contextmanager
def open_dest(dest):
    """Yield save_bytes(archive name, data) writing into `dest` (zip with ZIP_STORED, or folder)."""
    parent = os.path.dirname(os.path.abspath(dest))
    created, folder = None, parent # `created`: topmost folder this run makes, removed again on failure.
    while not os.path.exists(folder):
        created, folder = folder, os.path.dirname(folder)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise click.ClickException(f'cannot create the folder for --dest {dest}: {err}') from None
    try:
        remove_stale_temporaries(dest)
        if is_zip_dest(dest):
            with dnnlib.util.atomic_write(dest) as temp_path:
                with zipfile.ZipFile(temp_path, 'w', compression=zipfile.ZIP_STORED) as zf:
                    yield zf.writestr
        else:
            temp_dir = os.path.join(parent, f'.{os.path.basename(os.path.abspath(dest))}.tmp-{uuid.uuid4().hex[:8]}')
            os.makedirs(temp_dir)
            try:
                yield lambda fname, data: write_file(os.path.join(temp_dir, fname), data)
                if os.path.isdir(dest):
                    os.rmdir(dest) # Checked empty before; replaced by the finished folder.
                os.rename(temp_dir, dest)
            except BaseException:
                shutil.rmtree(temp_dir, ignore_errors=True)
                raise
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise

def write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data.encode('utf-8') if isinstance(data, str) else data)

#----------------------------------------------------------------------------
# Conversion.

def check_first_image(width, height, channels):
    """The dataset must be square, power-of-two sized, RGB or grayscale."""
    if width != height:
        raise click.ClickException(f'Image dimensions after scale and crop are required to be square.  Got {width}x{height}')
    if channels not in [1, 3]:
        raise click.ClickException(f'Input images must be stored as RGB or grayscale; got {channels} channels')
    if width & (width - 1) != 0:
        raise click.ClickException('Image width/height after scale and crop are required to be power-of-two')

def encode_png(img):
    """PNG bytes of a HWC/HW uint8 array, with the original's settings (no compression)."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    buf = io.BytesIO()
    PIL.Image.fromarray(img, 'L' if img.ndim == 2 else 'RGB').save(buf, format='png', compress_level=0, optimize=False)
    return buf.getvalue()

@click.command()
@click.option('--source', help='Input folder, zip, CIFAR-10 tarball, MNIST idx file or LSUN LMDB folder', required=True, metavar='PATH')
@click.option('--dest', help='Output folder or *.zip archive', required=True, metavar='PATH')
@click.option('--max-images', help='Read at most this many input images', type=int, default=None, metavar='INT')
@click.option('--transform', help='Crop mode', type=click.Choice(['center-crop', 'center-crop-wide']), default=None, metavar='MODE')
@click.option('--resolution', help='Output resolution, e.g. 64x64', type=parse_tuple, default=None, metavar='WxH')
def main(source, dest, max_images, transform, resolution):
    """Convert an image dataset into the format used by training and FID computation.

    \b
    Sources (--source):
      an image folder, searched recursively     --source path/to/folder
      a zip archive of images                   --source path/to/images.zip
      the CIFAR-10 python tarball               --source path/to/cifar-10-python.tar.gz
      an MNIST-format idx file (and its labels) --source path/to/train-images-idx3-ubyte.gz
      an LSUN LMDB folder                       --source path/to/bedroom_train_lmdb

    \b
    Destinations (--dest):
      a zip archive                             --dest datasets/mydata.zip
      a folder (must be empty or absent)        --dest datasets/mydata

    Images are written as NNNNN/imgNNNNNNNN.png, followed by dataset.json, which holds the class
    label of every image ({"labels": [["00000/img00000000.png", 6], ...]}) or {"labels": null}.
    Labels come from CIFAR-10 and MNIST, from a dataset.json at the root of a source folder or
    zip, or else from the top-level sub-folder names of a source folder when there are several.

    The output images must be square, have a power-of-two size and be RGB or grayscale, and all
    of them must agree. --resolution resizes every image (LANCZOS). --transform=center-crop crops
    the central square first; --transform=center-crop-wide crops to the --resolution aspect ratio
    and pastes the result onto a black square canvas (too-small images are skipped). Both
    transforms need --resolution and convert grayscale to RGB.

    \b
    Example:
      python dataset_tool.py --source=downloads/cifar10/cifar-10-python.tar.gz \\
          --dest=datasets/cifar10-32x32.zip
    """
    if max_images is not None and max_images < 1:
        raise click.ClickException(f'--max-images must be at least 1, got {max_images}')
    check_dest(dest)
    num_files, input_iter = open_dataset(source, max_images=max_images)
    if num_files == 0:
        raise click.ClickException(f'--source {source}: no input images found')
    transform_image = make_transform(transform, *(resolution or (None, None)))

    dataset_attrs = None
    labels = []
    with open_dest(dest) as save_bytes:
        for idx, image in tqdm(enumerate(input_iter), total=num_files):
            idx_str = f'{idx:08d}'
            archive_fname = f'{idx_str[:5]}/img{idx_str}.png'
            img = transform_image(image.img)
            if img is None: # Skipped by center-crop-wide; the index stays used.
                continue

            # All images must agree with the first in size and channel count.
            cur_attrs = dict(width=img.shape[1], height=img.shape[0], channels=img.shape[2] if img.ndim == 3 else 1)
            if dataset_attrs is None:
                dataset_attrs = cur_attrs
                check_first_image(**dataset_attrs)
            elif cur_attrs != dataset_attrs:
                mixed = ', '.join(f'{k} {dataset_attrs[k]} (dataset) vs {cur_attrs[k]} (this image)'
                    for k in dataset_attrs if dataset_attrs[k] != cur_attrs[k])
                raise click.ClickException(f'Image {archive_fname} (from {image.name}) attributes must be equal across '
                    f'all images of the dataset, but they are mixed: {mixed}')

            save_bytes(archive_fname, encode_png(img))
            labels.append([archive_fname, image.label] if image.label is not None else None)

        if dataset_attrs is None:
            raise click.ClickException(f'{source}: no images left to write; --transform={transform} skipped all {num_files}')
        metadata = {'labels': labels if all(x is not None for x in labels) else None}
        save_bytes('dataset.json', json.dumps(metadata)) # Written last, as in the original.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
