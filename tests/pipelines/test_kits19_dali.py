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


def _operators(device: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(operator type, instance name, device) of every operator of the train graph built for `device`, and the
    devices of its two outputs (image, label). The graph
    is defined and resolved on DALI's Python side only (Pipeline._build_graph, DALI-private): no backend is made,
    so a GPU graph can be inspected on a machine without one."""
    from nvidia.dali import Pipeline

    from pipelines.kits19.dali import _graph

    pipe = Pipeline(batch_size=2, num_threads=1, device_id=0)
    with pipe:
        outputs = _graph(PATCH, 0.4, device)
        pipe.set_outputs(*outputs)
    pipe._build_graph()
    return [(type(op._op).__name__, op.name, op._op.device) for op in pipe._ops], [out.device for out in outputs]


def test_gpu_graph_searches_boxes_on_the_cpu_and_crops_flips_and_perturbs_on_the_gpu():
    """NVIDIA's placement: the foreground-box search and the crop's anchor on the CPU over a host copy of the
    label; image and label come from GPU memory and are sliced, flipped, brightened and noised there. The random
    draws are the CPU graph's, operator for operator, so both devices draw in the same order."""
    (gpu, gpu_outputs), (cpu, cpu_outputs) = _operators("gpu"), _operators("cpu")
    assert gpu_outputs == ["gpu", "gpu"] and cpu_outputs == ["cpu", "cpu"]
    by_type: dict[str, set[str]] = {}
    for kind, _, device in gpu:
        by_type.setdefault(kind, set()).add(device)
    sources = {name: device for kind, name, device in gpu if kind == "ExternalSource"}
    assert sources == {"image": "gpu", "label": "gpu", "host_label": "cpu"}
    for kind in ("Squeeze", "RandomObjectBBox", "ROIRandomCrop", "CoinFlip", "Uniform"):
        assert by_type[kind] == {"cpu"}, kind
    for kind in ("Slice", "Flip", "Normal"):
        assert by_type[kind] == {"gpu"}, kind
    assert sum(kind in ("Slice", "Flip") for kind, _, _ in gpu) == 4  # image and label each
    # The brightness product, the noise product and sum: GPU arithmetic (the scalars drawn on the CPU).
    arithmetic_on_gpu = [name for kind, name, device in gpu if kind == "_ArithmeticGenericOp" and device == "gpu"]
    assert len(arithmetic_on_gpu) == 3
    # The CPU graph: every operator on the CPU, no host copy of the label (the label source is it).
    assert {device for _, _, device in cpu} == {"cpu"}
    assert "host_label" not in {name for _, name, _ in cpu}
    random_kinds = ("CoinFlip", "Uniform", "Normal", "RandomObjectBBox", "ROIRandomCrop")
    assert ([name for kind, name, _ in gpu if kind in random_kinds]
            == [name for kind, name, _ in cpu if kind in random_kinds])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_loader_gives_device_batches_with_the_cpu_loaders_statistics(cases, monkeypatch):
    """On a GPU: batches come out on the device, each case is read from disk once, and the augmentation's rates
    are the CPU pipeline's."""
    import pipelines.kits19.dali as dali

    reads = []
    real_read_case = dali.read_case
    monkeypatch.setattr(dali, "read_case", lambda *a, **k: reads.append(a[1]) or real_read_case(*a, **k))
    common = dict(global_batch_size=4, rank=0, world_size=1, patch=PATCH, oversampling=0.4, seed=3)
    on_gpu = build_dali_train_loader(str(cases), [0, 1, 2, 3], num_threads=1, device="gpu", **common)
    on_gpu.set_epoch(0)
    images, labels = next(iter(on_gpu))
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.float32 and labels.dtype == torch.uint8
    gpu_stats = _statistics(_OnHost(on_gpu))
    assert sorted(reads) == [0, 1, 2, 3]  # cached on the device after the first read
    cpu_stats = _statistics(build_dali_train_loader(str(cases), [0, 1, 2, 3], num_threads=1, **common))
    for key in ("noisy", "foreground"):
        assert _same_rate(cpu_stats[key], gpu_stats[key]), key
    for axis in range(3):
        assert _same_rate(cpu_stats["flips"][:, axis], gpu_stats["flips"][:, axis])
    assert _same_rate(cpu_stats["gains"] > 1.35, gpu_stats["gains"] > 1.35)


class _OnHost:
    """A loader whose batches are copied to the host, for _statistics."""

    def __init__(self, loader):
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for images, labels in self.loader:
            yield images.cpu(), labels.cpu()
