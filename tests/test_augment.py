"""AugmentPipe (the non-leaking augmentation of the paper's Appendix) against the original's golden outputs (golden README
sections 5 and 9) and against the transform definitions themselves."""

import copy
import json
import pickle

import numpy as np
import pytest
import torch

from training import augment
from training.augment import AugmentPipe

# train.py's configuration, without p.
TRAIN_KWARGS = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
ALL_KWARGS = dict(xflip=1, yflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1,
                  translate_frac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)

def run(pipe, images, seed):
    torch.manual_seed(seed)
    return pipe(images)

#----------------------------------------------------------------------------
# Golden reproduction.

GOLDEN_CASES = ['train_p1.0', 'train_p0.12', 'train_p0.0', 'all_p1.0_rgb', 'all_p1.0_gray', 'all_p0.5_rgb']

@pytest.fixture(scope='module')
def golden_augment(golden):
    meta = json.loads((golden / 'augment' / 'augment_meta.json').read_text())
    with np.load(golden / 'augment' / 'augment.npz') as data:
        return meta, dict(data)

@pytest.mark.parametrize('case', GOLDEN_CASES)
def test_matches_golden(case, golden_augment):
    meta, data = golden_augment
    kwargs = meta[case]['kwargs']
    images, labels = run(AugmentPipe(**kwargs), torch.from_numpy(data[meta[case]['input']]), seed=7)
    rand4_after = torch.rand(4)
    assert list(labels.shape) == meta[case]['labels_shape']
    assert images.dtype == torch.float32 and labels.dtype == torch.float32
    np.testing.assert_allclose(images.numpy(), data[f'{case}/images'], rtol=0, atol=1e-5)
    np.testing.assert_allclose(labels.numpy(), data[f'{case}/labels'], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(rand4_after.numpy(), data[f'{case}/global_rand4_after'])

def test_golden_covers_every_case(golden_augment):
    meta, _ = golden_augment
    assert sorted(meta) == sorted(GOLDEN_CASES)

#----------------------------------------------------------------------------
# Constructor and label layout with train.py's settings.

def test_constructor_stores_floats():
    pipe = AugmentPipe(p=0.12, **TRAIN_KWARGS)
    assert pipe.p == 0.12 and pipe.xflip == 1e8 and pipe.yflip == 1.0
    assert pipe.translate_int_max == 0.125 and pipe.saturation_std == 1.0
    names = ['p', 'xflip', 'yflip', 'rotate_int', 'translate_int', 'translate_int_max', 'scale', 'rotate_frac',
             'aniso', 'translate_frac', 'scale_std', 'rotate_frac_max', 'aniso_std', 'aniso_rotate_prob',
             'translate_frac_std', 'brightness', 'contrast', 'lumaflip', 'hue', 'saturation', 'brightness_std',
             'contrast_std', 'hue_max', 'saturation_std']
    for name in names:
        assert type(getattr(pipe, name)) is float, name
    assert pipe.init_kwargs == dict(p=0.12, **TRAIN_KWARGS)

@pytest.mark.parametrize('p', [0.12, 1.0])
def test_train_label_layout(p):
    N = 4000
    images = torch.zeros([N, 1, 4, 4])
    _, labels = run(AugmentPipe(p=p, **TRAIN_KWARGS), images, seed=1)
    assert labels.shape == (N, 9)
    xflip, yflip, scale, rot_c, rot_s, aniso_c, aniso_s, tr_x, tr_y = labels.T
    open_ = lambda *cols: torch.stack([c != 0 for c in cols]).any(dim=0).float()

    # x-flip gate is always open (xflip * p >= 1): about half of all images are mirrored.
    assert set(xflip.tolist()) == {0.0, 1.0}
    assert abs(xflip.mean().item() - 0.5) < 0.04
    # y-flip: gate p, then a fair coin.
    assert set(yflip.tolist()) <= {0.0, 1.0}
    assert abs(yflip.mean().item() - p / 2) < 0.04
    # Each geometric transform is applied with probability p, independently.
    for cols in [(scale,), (rot_c, rot_s), (aniso_c,), (tr_x, tr_y)]:
        assert abs(open_(*cols).mean().item() - p) < 0.04
    # The anisotropic frame is rotated with probability 0.5 on top of the gate.
    assert abs(open_(aniso_s).mean().item() - p / 2) < 0.04
    # Rotation columns are cos(w)-1 and sin(w) of one angle; closed gates give exactly 0.
    np.testing.assert_allclose(((rot_c + 1) ** 2 + rot_s ** 2).numpy(), 1, atol=1e-5)
    assert torch.all(rot_c[rot_s == 0] == 0)
    assert torch.equal(tr_x == 0, tr_y == 0)
    # Values of open gates: scale and translation are N(0,1) draws, angles cover the circle.
    on = scale != 0
    assert abs(scale[on].std().item() - 1) < 0.1 and abs(scale[on].mean().item()) < 0.1
    on = tr_x != 0
    assert abs(tr_x[on].std().item() - 1) < 0.1 and abs(tr_y[on].std().item() - 1) < 0.1
    assert rot_c.min() < -1.9 and rot_s.max() > 0.9 and rot_s.min() < -0.9

def test_p0_draws_but_applies_nothing():
    images = torch.rand([3, 3, 8, 8]) * 2 - 1
    pipe = AugmentPipe(p=0, **TRAIN_KWARGS)
    out, labels = run(pipe, images, seed=3)
    # Every transform still consumes its draws (golden README 9): 2 + 2 + 2 + 2 + 4 + 2 tensors.
    torch.manual_seed(3)
    torch.randint(2, [3, 1, 1, 1]); torch.rand([3, 1, 1, 1])
    torch.randint(2, [3, 1, 1, 1]); torch.rand([3, 1, 1, 1])
    torch.randn([3]); torch.rand([3])
    torch.rand([3]); torch.rand([3])
    torch.randn([3]); torch.rand([3]); torch.rand([3]); torch.rand([3])
    torch.randn([2, 3]); torch.rand([1, 3])
    expected_next = torch.rand(4)
    run(pipe, images, seed=3)
    assert torch.equal(torch.rand(4), expected_next)
    assert torch.all(labels == 0)
    # The resampling still runs (the geometric transforms are applied as one warp): identity up to filter error.
    assert (out - images).abs().max() < 1e-5

#----------------------------------------------------------------------------
# Transform semantics, each checked with a pipe that enables only that transform.

def test_pixel_blitting_flips():
    images = torch.randn([64, 3, 5, 7])
    out, labels = run(AugmentPipe(xflip=1), images, seed=0)
    flip = labels[:, 0] == 1
    assert 0 < flip.sum() < 64
    assert torch.equal(out[flip], images[flip].flip(3)) and torch.equal(out[~flip], images[~flip])
    out, labels = run(AugmentPipe(yflip=1), images, seed=0)
    flip = labels[:, 0] == 1
    assert torch.equal(out[flip], images[flip].flip(2)) and torch.equal(out[~flip], images[~flip])

def test_rotate_int_is_a_quarter_turn_group():
    images = torch.randn([64, 2, 6, 6])
    out, labels = run(AugmentPipe(rotate_int=1), images, seed=0)
    a, b = labels[:, 0], labels[:, 1]
    quarter_turns = {(0, 0): 0, (1, 0): 1, (1, 1): 2, (0, 1): 3}
    seen = set()
    for i in range(64):
        w = quarter_turns[(int(a[i]), int(b[i]))]
        seen.add(w)
        # w=1: flip W then transpose = a counter-clockwise quarter turn in (H, W) index space.
        assert torch.equal(out[i], torch.rot90(images[i], k=w, dims=(1, 2))), i
    assert seen == {0, 1, 2, 3}

def test_translate_int_shifts_with_mirror_padding():
    N, H, W = 32, 8, 16
    images = torch.randn([N, 2, H, W])
    out, labels = run(AugmentPipe(translate_int=1, translate_int_max=0.25), images, seed=0)
    tx = (labels[:, 0] * W * 0.25).round().long()
    ty = (labels[:, 1] * H * 0.25).round().long()
    assert tx.abs().max() <= 4 and ty.abs().max() <= 2 and (tx != 0).any() and (ty != 0).any()
    for i in range(N):
        for y in range(H):
            for x in range(W):
                xs, ys = x - int(tx[i]), y + int(ty[i])  # Source pixel of the integer translation.
                xs = -xs if xs < 0 else (2 * W - 2 - xs if xs >= W else xs)
                ys = -ys if ys < 0 else (2 * H - 2 - ys if ys >= H else ys)
                assert torch.equal(out[i, :, y, x], images[i, :, ys, xs])

def smooth_pattern(x, y):
    return torch.cos(0.2 * x + 0.1) * torch.cos(0.15 * y - 0.4) + 0.05 * x

def centred_coords(H, W):
    y, x = torch.meshgrid(torch.arange(H) - (H - 1) / 2, torch.arange(W) - (W - 1) / 2, indexing='ij')
    return x, y

@pytest.mark.parametrize('kind', ['rotate_frac', 'scale', 'translate_frac', 'aniso'])
def test_geometric_transform_maps_output_to_input_coordinates(kind):
    """The output pixel at centred position q shows the input at G q (G is the inverse map)."""
    N, R = 8, 32
    x, y = centred_coords(R, R)
    images = smooth_pattern(x, y).expand(N, 1, R, R).contiguous()
    out, labels = run(AugmentPipe(**{kind: 1}), images, seed=5)
    if kind == 'aniso':
        # The labels (w cos r, w sin r) do not fix the sign of w, so replay the draws.
        torch.manual_seed(5)
        w_all, r_all = torch.randn([N]), (torch.rand([N]) * 2 - 1) * np.pi
        torch.rand([N])
        r_all = torch.where(torch.rand([N]) < 0.5, r_all, torch.zeros_like(r_all))
        torch.testing.assert_close(labels, torch.stack([w_all * r_all.cos(), w_all * r_all.sin()], dim=1))
    for i in range(N):
        if kind == 'rotate_frac':
            w = torch.atan2(labels[i, 1], labels[i, 0] + 1)
            xs, ys = w.cos() * x - w.sin() * y, w.sin() * x + w.cos() * y
        elif kind == 'scale':
            s = 2 ** (labels[i, 0] * 0.2)
            xs, ys = x / s, y / s
        elif kind == 'translate_frac':
            xs, ys = x - labels[i, 0] * R * 0.125, y - labels[i, 1] * R * 0.125
        else: # G = R(-r) diag(1/s, s) R(r).
            r, s = r_all[i], 2 ** (w_all[i] * 0.2)
            u, v = r.cos() * x - r.sin() * y, r.sin() * x + r.cos() * y
            u, v = u / s, v * s
            xs, ys = r.cos() * u + r.sin() * v, -r.sin() * u + r.cos() * v
        expected = smooth_pattern(xs, ys)
        # Compare where the source lies well inside the image (outside, the pipe mirrors). The
        # tolerance allows for the sym6 filter pair, whose phase does not cancel exactly under
        # rotation (about 0.1 px); wrong directions or signs give errors above 0.3.
        inside = (xs.abs() < R / 2 - 4) & (ys.abs() < R / 2 - 4) & (x.abs() < R / 2 - 2) & (y.abs() < R / 2 - 2)
        assert inside.sum() > 100
        assert (out[i, 0][inside] - expected[inside]).abs().max() < 0.06, (kind, i)

def test_color_transforms_follow_their_formulas():
    N = 16
    images = torch.rand([N, 3, 4, 4]) * 2 - 1
    out, labels = run(AugmentPipe(brightness=1), images, seed=0)
    torch.testing.assert_close(out, images + (labels[:, 0] * 0.2).reshape(N, 1, 1, 1))
    out, labels = run(AugmentPipe(contrast=1), images, seed=0)
    torch.testing.assert_close(out, images * (2 ** (labels[:, 0] * 0.5)).reshape(N, 1, 1, 1))
    # Lumaflip mirrors the luma component: out = x - 2 v (v.x) w; gray pixels become negated.
    out, labels = run(AugmentPipe(lumaflip=1), images, seed=0)
    luma = images.mean(dim=1, keepdim=True)
    w = labels[:, 0].reshape(N, 1, 1, 1)
    assert 0 < w.sum() < N
    torch.testing.assert_close(out, images - 2 * luma * w)
    # Hue rotates about the luma axis: luma and chroma norm kept; saturation scales chroma only.
    out, labels = run(AugmentPipe(hue=1), images, seed=0)
    torch.testing.assert_close(out.mean(dim=1), images.mean(dim=1))
    torch.testing.assert_close((out - out.mean(dim=1, keepdim=True)).norm(dim=1), (images - luma).norm(dim=1))
    angle = torch.atan2(labels[:, 1], labels[:, 0] + 1)
    chroma_in = images - luma
    chroma_out = out - out.mean(dim=1, keepdim=True)
    cos = (chroma_in * chroma_out).sum(dim=1) / (chroma_in.norm(dim=1) * chroma_out.norm(dim=1))
    torch.testing.assert_close(cos, angle.cos().reshape(N, 1, 1).expand_as(cos), atol=1e-4, rtol=0)
    out, labels = run(AugmentPipe(saturation=1), images, seed=0)
    torch.testing.assert_close(out, luma + (images - luma) * (2 ** labels[:, 0]).reshape(N, 1, 1, 1))

def test_grayscale_equals_mean_of_replicated_rgb():
    gray = torch.rand([6, 1, 8, 8]) * 2 - 1
    kwargs = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    out_gray, labels_gray = run(AugmentPipe(**kwargs), gray, seed=11)
    out_rgb, labels_rgb = run(AugmentPipe(**kwargs), gray.repeat(1, 3, 1, 1), seed=11)
    assert torch.equal(labels_gray, labels_rgb)
    torch.testing.assert_close(out_gray, out_rgb.mean(dim=1, keepdim=True))

#----------------------------------------------------------------------------
# Shapes, devices, errors.

@pytest.mark.parametrize('N', [1, 2, 5])
@pytest.mark.parametrize('C', [1, 3])
def test_batch_sizes_and_channels(N, C):
    images = torch.rand([N, C, 8, 8]) * 2 - 1
    out, labels = run(AugmentPipe(p=1, **ALL_KWARGS), images, seed=N)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert labels.shape == (N, 19) and labels.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(labels).all()

def test_other_channel_counts():
    images = torch.rand([2, 2, 8, 8])
    with pytest.raises(ValueError, match='color transforms need 1 or 3 channels, got 2'):
        AugmentPipe(hue=1)(images)
    out, labels = AugmentPipe(p=1, **TRAIN_KWARGS)(images)  # Geometric transforms work for any C.
    assert out.shape == images.shape and labels.shape == (2, 9)
    with pytest.raises(ValueError, match=r'\[N, C, H, W\]'):
        AugmentPipe(xflip=1)(torch.zeros([3, 8, 8]))
    with pytest.raises(ValueError, match='square'):
        AugmentPipe(rotate_int=1)(torch.zeros([1, 3, 8, 6]))

def test_disabled_pipe_is_identity_with_empty_labels():
    images = torch.randn([3, 3, 4, 4])
    state = torch.get_rng_state()
    out, labels = AugmentPipe()(images)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out, images) and labels.shape == (3, 0)

def test_float64_images_keep_their_dtype():
    images = torch.rand([2, 3, 8, 8], dtype=torch.float64)
    out, labels = run(AugmentPipe(p=1, **ALL_KWARGS), images, seed=0)
    out32, labels32 = run(AugmentPipe(p=1, **ALL_KWARGS), images.float(), seed=0)
    assert out.dtype == torch.float64 and labels.dtype == torch.float32
    assert torch.equal(labels, labels32)
    torch.testing.assert_close(out.float(), out32, atol=1e-5, rtol=0)

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA (not counted as coverage on CPU)')
def test_cuda_tensors():
    """Everything (draws, constants, resampling) stays on the images' device."""
    images = torch.rand([5, 3, 8, 8]) * 2 - 1
    out, labels = run(AugmentPipe(p=1, **ALL_KWARGS), images.cuda(), seed=0)
    assert out.device == images.cuda().device and labels.device == out.device and labels.shape == (5, 19)
    assert torch.isfinite(out).all()
    # With every gate closed the result does not depend on the draws: compare with the CPU.
    out_gpu, _ = run(AugmentPipe(p=0, **TRAIN_KWARGS), images.cuda(), seed=0)
    out_cpu, _ = run(AugmentPipe(p=0, **TRAIN_KWARGS), images, seed=0)
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-5, rtol=0)

#----------------------------------------------------------------------------
# Snapshot compatibility: the pipe pickles with its constructor arguments.

def test_pickle_and_deepcopy_round_trip():
    pipe = AugmentPipe(p=0.12, **TRAIN_KWARGS)
    data = pickle.dumps({'augment_pipe': pipe})
    assert b'_reconstruct_persistent_obj' in data and b'torch_utils.persistence' in data
    for clone in [pickle.loads(data)['augment_pipe'], copy.deepcopy(pipe)]:
        assert type(clone).__name__ == 'AugmentPipe'
        assert vars(clone) == vars(pipe)
        images = torch.rand([4, 3, 8, 8]) * 2 - 1
        out_ref, labels_ref = run(pipe, images, seed=9)
        out, labels = run(clone, images, seed=9)
        assert torch.equal(out, out_ref) and torch.equal(labels, labels_ref)
