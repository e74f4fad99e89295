"""The KiTS19 train augmentation's distributions (crop, flips, brightness, noise) against the spec, the
foreground boxes on hand-made labels, rank sharding, and the loader's errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.kits19.augment import _around, augment, crop_start, foreground_boxes
from pipelines.kits19.format import KiTS19FormatError, case_paths, write_case
from pipelines.kits19.loader import EvalVolumes, TrainBatches, build_train_loader

N = 4000


def _within(observed: float, p: float, n: int = N, sigmas: float = 4.5) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def _label() -> np.ndarray:
    """(1, 40, 40, 40): class 1 as three blobs (boxes of 6^3, 4^3 and 2^3 voxels) and class 2 as one 3^3 blob."""
    label = np.zeros((1, 40, 40, 40), np.uint8)
    label[0, 2:8, 2:8, 2:8] = 1
    label[0, 20:24, 30:34, 5:9] = 1
    label[0, 35:37, 35:37, 35:37] = 1
    label[0, 30:33, 10:13, 20:23] = 2
    return label


def test_foreground_boxes_are_each_class_two_largest_components():
    boxes = foreground_boxes(_label())
    assert boxes == {1: [((20, 24), (30, 34), (5, 9)), ((2, 8), (2, 8), (2, 8))], 2: [((30, 33), (10, 13), (20, 23))]}
    # 6-connectivity, as scipy's default: voxels touching only along an edge are two components
    label = np.zeros((1, 5, 5, 5), np.uint8)
    label[0, 1, 1, 1] = label[0, 2, 2, 1] = 1
    assert len(foreground_boxes(label)[1]) == 2
    assert foreground_boxes(np.zeros((1, 4, 4, 4), np.uint8)) == {}


def test_window_around_a_box():
    rng = np.random.default_rng(0)
    starts = {_around(rng, 10, 14, 8, 40) for _ in range(400)}
    assert starts == {7, 8, 9, 10}  # holds [10, 14): starts 6..10, minus the reference's excluded 6 (randrange)
    # at a border the window is clamped and kept whole: the starts that would fall outside pile up at 0
    near_start = [_around(rng, 1, 5, 8, 40) for _ in range(400)]
    assert set(near_start) == {0, 1} and near_start.count(0) > 2 * near_start.count(1)
    assert {_around(rng, 35, 39, 8, 40) for _ in range(200)} == {32}
    inside = {_around(rng, 5, 25, 8, 40) for _ in range(800)}  # a box larger than the patch: window inside it
    assert min(inside) >= 5 and max(inside) + 8 <= 25 and len(inside) == 12


def test_crop_distribution():
    label, patch = _label(), (16, 16, 16)
    boxes = foreground_boxes(label)
    rng = np.random.default_rng(1)
    draws = [crop_start(rng, (40, 40, 40), patch, boxes, 0.4) for _ in range(N)]
    foreground = [start for start, fg in draws if fg]
    assert _within(len(foreground) / N, 0.4)
    # every foreground window holds one of the chosen boxes whole; the class is uniform over {1, 2}, the
    # component over the class's two largest
    held = {"c1_big": 0, "c1_mid": 0, "c2": 0}
    for start in foreground:
        window = [(s, s + p) for s, p in zip(start, patch)]
        covers = {name: all(lo >= w0 and hi <= w1 for (lo, hi), (w0, w1) in zip(box, window))
                  for name, box in (("c1_big", boxes[1][1]), ("c1_mid", boxes[1][0]), ("c2", boxes[2][0]))}
        assert any(covers.values()), start
        for name, hit in covers.items():
            held[name] += hit
    n = len(foreground)
    assert held["c2"] / n >= 0.5 - 4.5 * math.sqrt(0.25 / n)
    assert held["c1_big"] / n >= 0.25 - 4.5 * math.sqrt(0.1875 / n)
    assert held["c1_mid"] / n >= 0.25 - 4.5 * math.sqrt(0.1875 / n)
    # uniform crops: each start uniform on [0, 40 - 16), never the last position (the reference's randrange)
    uniform = np.array([start for start, fg in draws if not fg])
    assert uniform.min() == 0 and uniform.max() == 23
    counts = np.bincount(uniform.ravel(), minlength=24)
    expected = uniform.size / 24
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 60  # 23 degrees of freedom: p < 1e-4 beyond this
    # no foreground at all: always the uniform crop
    assert not any(crop_start(rng, (40, 40, 40), patch, {}, 0.4)[1] for _ in range(200))


def test_flip_brightness_and_noise_distributions():
    label = _label()
    image = np.linspace(-2, 2, label.size, dtype=np.float32).reshape(label.shape)
    boxes = foreground_boxes(label)
    rng = np.random.default_rng(2)
    flips, gains, stds = [], [], []
    for _ in range(N):
        out_image, out_label, record = augment(rng, image, label, boxes, patch=(16, 16, 16), oversampling=0.4)
        assert out_image.dtype == np.float32 and out_label.dtype == np.uint8 and out_image.shape == (1, 16, 16, 16)
        flips.append(record.flips)
        gains.append(record.brightness)
        stds.append(record.noise_std)
    flips = np.array(flips)
    for axis in range(3):
        assert _within(flips[:, axis].mean(), 1 / 3)
    applied = [g for g in gains if g is not None]
    assert _within(len(applied) / N, 0.1) and 1.7 <= min(applied) and max(applied) <= 2.3
    assert abs(np.mean(applied) - 2.0) < 4.5 * 0.6 / math.sqrt(12 * len(applied))
    noisy = [s for s in stds if s is not None]
    assert _within(len(noisy) / N, 0.1) and 0 <= min(noisy) and max(noisy) <= 0.1
    assert abs(np.mean(noisy) - 0.05) < 4.5 * 0.1 / math.sqrt(12 * len(noisy))


def test_flip_and_crop_move_image_and_label_together():
    label = _label()
    image = label.astype(np.float32) * 10
    boxes = foreground_boxes(label)
    rng = np.random.default_rng(3)
    for _ in range(200):
        out_image, out_label, record = augment(rng, image, label, boxes, patch=(16, 16, 16), oversampling=0.4)
        if record.brightness is None and record.noise_std is None:
            np.testing.assert_array_equal(out_image, out_label * 10)
        window = (slice(None),) + tuple(slice(s, s + 16) for s in record.start)
        expected = np.flip(label[window], [a + 1 for a, f in enumerate(record.flips) if f])
        np.testing.assert_array_equal(out_label, expected)


def test_ranks_take_their_slice_of_one_global_permutation():
    one = TrainBatches(21, 4, rank=0, world_size=1, seed=9)
    two = [TrainBatches(21, 4, rank=r, world_size=2, seed=9) for r in range(2)]
    assert len(one) == len(two[0]) == 5  # the last partial batch is dropped
    for epoch in (0, 1):
        seen = []
        for step in range(5):
            both = two[0].indices(epoch, step) + two[1].indices(epoch, step)
            assert both == one.indices(epoch, step)
            seen += both
        assert len(set(seen)) == 20  # every case at most once per epoch
    assert one.indices(0, 0) != one.indices(1, 0)
    with pytest.raises(ValueError, match="multiple of world_size"):
        TrainBatches(21, 3, rank=0, world_size=2, seed=9)


@pytest.fixture()
def cases(tmp_path):
    rng = np.random.default_rng(4)
    for case_id in range(6):
        label = _label()
        write_case(str(tmp_path), case_id, rng.normal(size=label.shape).astype(np.float32), label)
    return tmp_path


def test_the_loader_gives_the_same_global_batch_on_any_number_of_ranks(cases):
    common = dict(global_batch_size=4, patch=(16, 16, 16), oversampling=0.4, seed=5, num_workers=0)
    one = build_train_loader(str(cases), list(range(6)), rank=0, world_size=1, **common)
    ranks = [build_train_loader(str(cases), list(range(6)), rank=r, world_size=2, **common) for r in range(2)]
    for loader in (one, *ranks):
        loader.set_epoch(3)
    assert one.steps_per_epoch == 1 and one.samples_per_epoch == 4
    (image, label), = list(one)
    halves = [next(iter(loader)) for loader in ranks]
    assert image.shape == (4, 1, 16, 16, 16) and label.dtype == torch.uint8
    torch.testing.assert_close(torch.cat([h[0] for h in halves]), image, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([h[1] for h in halves]), label, rtol=0, atol=0)


def test_loader_errors_name_the_case(cases):
    common = dict(global_batch_size=2, rank=0, world_size=1, oversampling=0.4, seed=5, num_workers=0)
    loader = build_train_loader(str(cases), [0, 1], patch=(48, 16, 16), **common)
    with pytest.raises(KiTS19FormatError, match=r"case_0000[01]: shape \(40, 40, 40\) is smaller than the training"):
        next(iter(loader))
    label = _label()
    label[0, 0, 0, 0] = 7
    np.save(case_paths(str(cases), 1)[1], label, allow_pickle=False)
    loader = build_train_loader(str(cases), [1, 2], patch=(16, 16, 16), **common)
    with pytest.raises(KiTS19FormatError, match=r"case_00001 .*outside \{0, 1, 2\}"):
        next(iter(loader))
    path = case_paths(str(cases), 3)[0]
    open(path, "r+b").truncate(1000)
    with pytest.raises(KiTS19FormatError, match="case_00003"):
        list(EvalVolumes(str(cases), [3], rank=0, world_size=1))


def test_eval_volumes_are_spread_over_ranks_whole(cases):
    shards = [EvalVolumes(str(cases), [0, 2, 3, 5, 1], rank=r, world_size=2) for r in range(2)]
    assert [s.case_ids for s in shards] == [[0, 3, 1], [2, 5]]
    image, label = next(iter(shards[1]))
    assert image.shape == label.shape == (1, 1, 40, 40, 40) and image.dtype == torch.float32
