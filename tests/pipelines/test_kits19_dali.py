"""The DALI train pipeline against the torch loader: the same tensors out, the same cases per rank, and the
same augmentation statistics (flips, brightness, noise, foreground in the crop), measured on volumes whose
voxels hold their own index, so that each crop tells its flips and gain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from pipelines.kits19.dali import build_dali_train_loader  # noqa: E402
from pipelines.kits19.format import write_case  # noqa: E402
from pipelines.kits19.loader import build_train_loader  # noqa: E402

SHAPE, PATCH, EPOCHS = (24, 28, 32), (16, 16, 16), 150


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    out = tmp_path_factory.mktemp("kits19_dali")
    index = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(1, *SHAPE)
    for case_id in range(4):
        label = np.zeros((1, *SHAPE), np.uint8)
        label[0, 2:6, 3 + case_id:9 + case_id, 20:26] = 1
        label[0, 4:6, 5 + case_id:7 + case_id, 22:24] = 2
        label[0, 18:20, 24:26, 2:4] = 1
        write_case(str(out), case_id, index, label)
    return out


def _statistics(loader) -> dict:
    flips, gains, noisy, foreground = [], [], [], []
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        for images, labels in loader:
            assert images.shape == labels.shape == (4, 1, *PATCH)
            assert images.dtype == torch.float32 and labels.dtype == torch.uint8
            for image, label in zip(images[:, 0].double().numpy(), labels[:, 0].numpy()):
                steps = [image[1, 0, 0] - image[0, 0, 0], image[0, 1, 0] - image[0, 0, 0],
                         image[0, 0, 1] - image[0, 0, 0]]
                flips.append([s < 0 for s in steps])
                # 1 voxel along W is 1 index: the gain (averaged over the crop, so noise does not count)
                gains.append(float(np.abs(image[:, :, -1] - image[:, :, 0]).mean()) / (PATCH[2] - 1))
                second = np.diff(image, n=2, axis=2)
                noisy.append(np.abs(second).max() > 0.02)
                foreground.append(bool(label.any()))
    return {"flips": np.array(flips), "gains": np.array(gains), "noisy": np.array(noisy),
            "foreground": np.array(foreground)}


def _same_rate(a: np.ndarray, b: np.ndarray) -> bool:
    p = (a.mean() + b.mean()) / 2
    return abs(a.mean() - b.mean()) <= 4.5 * math.sqrt(max(p * (1 - p), 1e-9) * (1 / a.size + 1 / b.size))


def test_dali_augmentation_matches_the_torch_loaders(cases):
    common = dict(global_batch_size=4, rank=0, world_size=1, patch=PATCH, oversampling=0.4, seed=3)
    torch_stats = _statistics(build_train_loader(str(cases), [0, 1, 2, 3], num_workers=0, **common))
    dali_stats = _statistics(build_dali_train_loader(str(cases), [0, 1, 2, 3], num_threads=1, **common))
    n = EPOCHS * 4
    for stats in (torch_stats, dali_stats):
        assert stats["flips"].shape == (n, 3)
        for axis in range(3):
            assert abs(stats["flips"][:, axis].mean() - 1 / 3) <= 4.5 * math.sqrt(2 / 9 / n)
        bright = stats["gains"] > 1.35
        assert abs(bright.mean() - 0.1) <= 4.5 * math.sqrt(0.09 / n)
        assert stats["gains"][bright].min() >= 1.7 - 0.01 and stats["gains"][bright].max() <= 2.3 + 0.01
    for key in ("noisy", "foreground"):
        assert _same_rate(torch_stats[key], dali_stats[key]), (key, torch_stats[key].mean(), dali_stats[key].mean())
    for axis in range(3):
        assert _same_rate(torch_stats["flips"][:, axis], dali_stats["flips"][:, axis])
    assert _same_rate(torch_stats["gains"] > 1.35, dali_stats["gains"] > 1.35)


def _case_of(value: float) -> int:
    """The case whose constant image value 100 k + 50 (brightened or not, noise aside) gives `value`."""
    (k,) = [k for k in range(4) if abs(value - (100 * k + 50)) < 1 or
            1.7 * (100 * k + 50) - 1 < value < 2.3 * (100 * k + 50) + 1]
    return k


def test_dali_ranks_read_the_torch_loaders_cases(tmp_path):
    """The external source is fed the torch loader's shard: each rank crops the same cases as the torch loader's
    rank, in the same order."""
    for case_id in range(4):
        label = np.zeros((1, *SHAPE), np.uint8)
        label[0, 2:6, 3:9, 20:26] = 1
        write_case(str(tmp_path), case_id, np.full((1, *SHAPE), 100 * case_id + 50, np.float32), label)
    common = dict(global_batch_size=4, world_size=2, patch=PATCH, oversampling=0.4, seed=3)
    for rank in range(2):
        dali = build_dali_train_loader(str(tmp_path), [0, 1, 2, 3], rank=rank, num_threads=1, **common)
        reference = build_train_loader(str(tmp_path), [0, 1, 2, 3], rank=rank, num_workers=0, **common)
        for epoch in (0, 5):
            cases = []
            for loader in (dali, reference):
                loader.set_epoch(epoch)
                (images, _), = list(loader)
                cases.append([_case_of(float(np.median(image))) for image in images.numpy()])
            assert cases[0] == cases[1] and len(cases[0]) == 2
