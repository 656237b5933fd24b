"""Watching a run while it trains: sample grids, FID after every snapshot, TensorBoard.

All of it is opt-in (train.py --grid, --metrics=fid, --tensorboard) and leaves the training itself
alone: images are sampled from the EMA network in eval mode with a generator per seed, so no random
stream of the training is consumed, and the weights come out the same with or without monitoring.

What appears in the run directory (rank 0 writes, every rank samples its share):

    grid-data.png           N x N training images, once at the start (evenly spaced through the dataset)
    grid-<kimg>.png         N x N images of seeds 0..N*N-1 from the EMA network of each snapshot
    metric-fid.jsonl        one JSON line per snapshot: snapshot, kimg, fid, seconds
    events.out.tfevents.*   TensorBoard scalars (steps are images seen) and the grids

Grids and FID always sample with the deterministic Heun sampler of the paper (Algorithm 1, 18 steps,
35 network evaluations), so that the grids and values of one run are comparable with each other.
"""

import dataclasses
import os
import time

import numpy as np
import PIL.Image
import torch

import dnnlib
from torch_utils import distributed as dist
from training import fast_path, fid_stats, generation, inception, snapshot

FIXED_SAMPLER = dict(num_steps=18) # edm_sampler without churn
SAMPLING_BATCH = 64                # images sampled at once per process

#----------------------------------------------------------------------------
# Grids.

def tile(images, columns):
    """uint8 images [N, H, W, C] laid out row by row, `columns` per row: [rows * H, columns * W, C]."""
    count, height, width, channels = images.shape
    rows = count // columns
    blocks = images.reshape(rows, columns, height, width, channels).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(rows * height, columns * width, channels)

def save_png(path, pixels):
    """Write uint8 [H, W, C] pixels (grayscale or RGB) to `path` as a PNG, atomically."""
    image = PIL.Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    with dnnlib.util.atomic_write(path) as temp_path:
        image.save(temp_path, format='PNG')

def data_grid(dataset, size):
    """size x size training images, evenly spaced through the dataset, as one uint8 HWC image."""
    picks = np.linspace(0, len(dataset) - 1, size * size).round().astype(np.int64)
    chw = np.stack([dataset[int(index)][0] for index in picks])
    return tile(chw.transpose(0, 2, 3, 1), size)

def merge_on_rank_zero(part):
    """The dicts of all ranks merged into one on rank 0; None on the other ranks."""
    if dist.get_world_size() == 1:
        return part
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    torch.distributed.gather_object(part, parts, dst=0)
    if parts is None:
        return None
    return {key: value for each in parts for key, value in each.items()}

def sample_grid(net, size, device, fast):
    """size x size images of seeds 0..size^2 - 1 sampled from `net`, as one uint8 HWC image on
    rank 0 (None elsewhere). Every rank samples its share of the seeds; conditional networks draw
    each seed's class as generate.py does."""
    seeds = range(size * size)
    by_seed = {}
    for batch in generation.generate_images(net, seeds, max_batch_size=SAMPLING_BATCH, device=device,
            fast=fast, **FIXED_SAMPLER):
        by_seed.update(zip(batch.seeds, batch.images.numpy()))
    by_seed = merge_on_rank_zero(by_seed)
    if by_seed is None:
        return None
    return tile(np.stack([by_seed[seed] for seed in seeds]), size)

#----------------------------------------------------------------------------
# FID of a snapshot, from images that never leave memory.

def generated_fid(net, num_images, detector, reference, device, fast):
    """FID of seeds 0..num_images-1 sampled from `net` against `reference` (dict with mu and sigma),
    on rank 0; None on the other ranks, which sample and score their share of the seeds."""
    mu, sigma = fid_stats.generated_stats(net, range(num_images), detector, max_batch_size=SAMPLING_BATCH,
        device=device, fast=fast, **FIXED_SAMPLER)
    if dist.get_rank() != 0:
        return None
    return fid_stats.fid_from_stats(mu, sigma, reference['mu'], reference['sigma'])

def append_json_line(path, record):
    """Append `record` to the JSON-lines file `path` (created if needed), as stats.jsonl is written."""
    fd = snapshot.open_stats_jsonl(path)
    try:
        snapshot.append_stats_line(fd, record)
    finally:
        os.close(fd)

#----------------------------------------------------------------------------

def open_tensorboard(run_dir):
    """A TensorBoard writer into `run_dir`. Imported only here: tensorboard is an optional package."""
    from torch.utils.tensorboard import SummaryWriter # pylint: disable=import-outside-toplevel
    return SummaryWriter(log_dir=run_dir)

class RunMonitor:
    """Grids, FID and TensorBoard for one training run. Every rank makes one, with the same options,
    and calls its methods at the same points (the sampling is shared); only rank 0 writes.

    run_dir:      the run directory (None on ranks other than 0).
    device:       where to sample and run the detector.
    fast:         the training's fast path; sampling uses its switches, without torch.compile.
    grid:         N for N x N grids; None = no grids.
    metrics:      names of the metrics after every snapshot; only 'fid' exists.
    fid_ref:      reference statistics (.npz path or URL) of the FID.
    fid_num:      images generated for the FID.
    fid_detector: Inception detector (path or URL); None = NVIDIA's.
    tensorboard:  write TensorBoard events.
    """

    def __init__(self, run_dir, device, fast=fast_path.FastPath(), grid=None, metrics=(), fid_ref=None,
            fid_num=10000, fid_detector=None, tensorboard=False):
        self.run_dir = run_dir
        self.device = device
        self.fast = dataclasses.replace(fast, compile=False) # The EMA network is never compiled.
        self.grid = grid
        self.fid_num = fid_num if 'fid' in metrics else None
        self.writes = dist.get_rank() == 0
        self.reference = self.detector = self.board = None
        if self.fid_num is not None:
            if self.writes:
                self.reference = fid_stats.load_stats(fid_ref, verbose=False)
            with dist.rank_zero_first(): # Rank 0 alone fills the download cache.
                self.detector = inception.load_detector(fid_detector or inception.DETECTOR_URL, device=device,
                    verbose=self.writes)
        if tensorboard and self.writes:
            self.board = open_tensorboard(run_dir)

    def start(self, dataset):
        """The grid of training images, before the first step."""
        if self.grid is None or not self.writes:
            return
        pixels = data_grid(dataset, self.grid)
        save_png(os.path.join(self.run_dir, 'grid-data.png'), pixels)
        if self.board is not None:
            self.board.add_image('Grid/data', pixels, 0, dataformats='HWC')

    def tick(self, cur_nimg, scalars):
        """TensorBoard scalars {tag: value} of a tick."""
        if self.board is None:
            return
        for tag, value in scalars.items():
            self.board.add_scalar(tag, value, cur_nimg)
        self.board.flush()

    def snapshot(self, ema, snapshot_name, cur_nimg):
        """Grid and FID of the EMA network just saved as `snapshot_name`."""
        if self.grid is not None:
            pixels = sample_grid(ema, self.grid, self.device, self.fast)
            if pixels is not None:
                save_png(os.path.join(self.run_dir, f'grid-{cur_nimg // 1000:06d}.png'), pixels)
                if self.board is not None:
                    self.board.add_image('Grid/samples', pixels, cur_nimg, dataformats='HWC')
        if self.fid_num is not None:
            self.measure_fid(ema, snapshot_name, cur_nimg)
        if self.board is not None:
            self.board.flush()

    def measure_fid(self, ema, snapshot_name, cur_nimg):
        """FID of the snapshot, logged in metric-fid.jsonl and printed. A failure is reported in one
        line and training goes on."""
        began = time.time()
        try:
            fid = generated_fid(ema, self.fid_num, self.detector, self.reference, self.device, self.fast)
        except Exception as err: # pylint: disable=broad-except
            dist.print0(f'FID of {snapshot_name} failed, training continues: {dnnlib.util.error_summary(err)}')
            return
        if not self.writes:
            return
        seconds = time.time() - began
        record = dict(snapshot=snapshot_name, kimg=cur_nimg / 1e3, fid=fid, seconds=round(seconds, 3))
        append_json_line(os.path.join(self.run_dir, 'metric-fid.jsonl'), record)
        print(f'FID of {snapshot_name}: {fid:g} ({self.fid_num} images, {seconds:.1f} s)')
        if self.board is not None:
            self.board.add_scalar('Metrics/fid', fid, cur_nimg)

    def close(self):
        if self.board is not None:
            self.board.close()
