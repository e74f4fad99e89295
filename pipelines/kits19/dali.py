"""A DALI pipeline for the KiTS19 train crops: same interface and tensors as loader.TrainLoader (image float32
[L, 1, P, P, P], label uint8 the same), on DALI's CPU operators, or on the GPU as NVIDIA's v4.0 pipeline runs it.

The order is loader.py's: rank r's slice of the (seed, epoch) permutation, fed to DALI with an external
source, so the ranks' shards and the epoch's cases are the torch loader's. The augmentation is DALI's, with
the reference's distributions where DALI's operators have them:
  crop        fn.segmentation.random_object_bbox (foreground_prob = oversampling, a class drawn uniformly,
              then one of its k_largest=2 blobs) + fn.roi_random_crop + fn.slice, as NVIDIA's v4.0 pipeline
  flips       fn.flip per axis from coin flips of probability 1/3 (the same draws for image and label)
  brightness  coin flip 0.1, gain 1 + U(0.7, 1.3)
  noise       coin flip 0.1, + N(0, s), s ~ U(0, 0.1)
Where DALI differs from the reference (tests/pipelines/test_kits19_dali.py measures the crop statistics of
both): a window around a box is drawn uniformly over every placement holding the box and within the volume
(the reference's `adjust` draws one of `diff` offsets, never the last, and piles the clipped ones up at the
border); the uniform crop may start at the last position (the reference's `randrange` never does); a
DALI-drawn sample is not a function of (seed, epoch, case), so a run on 1 rank and on 2 ranks see the same
cases but other crops.

device "cpu": every operator on the CPU, cases read from disk per step. device "gpu" (the run's device is CUDA):
each case is read once and kept in GPU memory, and the image and label external sources take those device
tensors as they are (no_copy); the foreground-box search and the crop's anchor stay on the CPU, over a host copy
of the label (the search is a connected-components pass DALI has only on the CPU, as in NVIDIA's pipeline), and
slice, flips, brightness and noise run as GPU operators; the batch stays on the GPU. The GPU path has not run on a
GPU yet: its test checks on the CPU which device each operator of the graph is given, not its speed or output.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pipelines.dali_torch import to_torch
from pipelines.kits19.augment import (
    BRIGHTNESS_FACTOR,
    BRIGHTNESS_PROBABILITY,
    FLIP_PROBABILITY,
    NOISE_PROBABILITY,
    NOISE_STD,
)
from pipelines.kits19.format import KiTS19FormatError, read_case
from pipelines.sampling import EpochLoader, TrainBatches


def _graph(patch: tuple[int, ...], oversampling: float, device: str = "cpu"):
    """(image, label) DataNodes of the train crops, with image and label on `device`. The random draws are made in
    the same order on either device (each random operator takes its seed from its place in the graph)."""
    from nvidia.dali import fn, types

    if device not in ("cpu", "gpu"):
        raise ValueError(f"device {device!r}: expected 'cpu' or 'gpu'")
    on_gpu = device == "gpu"
    # no_copy on the GPU: the sources are the cached device tensors, alive and unchanged for the whole run
    image = fn.external_source(name="image", layout="CDHW", dtype=types.FLOAT, ndim=4, device=device, no_copy=on_gpu)
    label = fn.external_source(name="label", layout="CDHW", dtype=types.UINT8, ndim=4, device=device, no_copy=on_gpu)
    host_label = fn.external_source(name="host_label", layout="CDHW", dtype=types.UINT8, ndim=4) if on_gpu else label
    mask = fn.squeeze(host_label, axis_names="C")
    start, end = fn.segmentation.random_object_bbox(mask, format="start_end", foreground_prob=oversampling,
                                                    k_largest=2, cache_objects=True)
    anchor = fn.roi_random_crop(crop_shape=list(patch), roi_start=start, roi_end=end,
                                in_shape=mask.shape(dtype=types.INT32))
    anchor = fn.cast(anchor, dtype=types.INT32)  # fn.slice wants anchor and shape of one type
    image = fn.slice(image, anchor, list(patch), axis_names="DHW")
    label = fn.slice(label, anchor, list(patch), axis_names="DHW")
    flips = {axis: fn.random.coin_flip(probability=FLIP_PROBABILITY, dtype=types.INT32)
             for axis in ("depthwise", "vertical", "horizontal")}
    image, label = fn.flip(image, **flips), fn.flip(label, **flips)
    brighten = fn.cast(fn.random.coin_flip(probability=BRIGHTNESS_PROBABILITY), dtype=types.FLOAT)
    gain = 1.0 + fn.random.uniform(range=[1.0 - BRIGHTNESS_FACTOR, 1.0 + BRIGHTNESS_FACTOR])
    factor = brighten * gain + (1.0 - brighten)  # a per-sample scalar, drawn on the CPU
    image = image * (factor.gpu() if on_gpu else factor)
    add_noise = fn.cast(fn.random.coin_flip(probability=NOISE_PROBABILITY), dtype=types.FLOAT)
    std = fn.random.uniform(range=[0.0, NOISE_STD])
    noise = fn.random.normal(image, stddev=std)  # on the image's device, shaped like it
    image = image + (add_noise.gpu() if on_gpu else add_noise) * noise
    return fn.cast(image, dtype=types.FLOAT), label



class DaliTrainLoader(EpochLoader):
    """loader.TrainLoader's interface: num_samples, iteration, and pipelines.sampling.EpochLoader's
    steps_per_epoch (= len), samples_per_epoch, set_epoch(epoch, start_step)."""

    def __init__(self, data_dir: str, case_ids: list[int], batches: TrainBatches, *, patch: tuple[int, ...],
                 oversampling: float, seed: int, num_threads: int, device: str = "cpu"):
        from nvidia.dali import Pipeline

        self.data_dir, self.case_ids, self._batches = data_dir, list(case_ids), batches
        self.num_samples, self.patch, self.device = len(case_ids), tuple(patch), device
        self._checked: set[int] = set()
        # device "gpu": index -> (image, label) on the GPU and the label on the host (for the box search)
        self._cached: dict[int, tuple[torch.Tensor, torch.Tensor, np.ndarray]] = {}
        device_id = torch.cuda.current_device() if device == "gpu" else None
        # Fed one batch per run() (no prefetch): the external source is filled just before each step.
        self._pipe = Pipeline(batch_size=batches.local_batch_size, num_threads=num_threads, device_id=device_id,
                              seed=(seed * 65_537 + batches.rank) % 2**31, exec_pipelined=False, exec_async=False,
                              prefetch_queue_depth=1)
        with self._pipe:
            self._pipe.set_outputs(*_graph(self.patch, oversampling, device))
        self._pipe.build()

    def _case(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        case = read_case(self.data_dir, self.case_ids[index], check_labels=index not in self._checked)
        self._checked.add(index)
        if any(s < p for s, p in zip(case.image.shape[1:], self.patch)):
            raise KiTS19FormatError(f"{case.name}: shape {case.image.shape[1:]} is smaller than the training crop "
                                    f"{self.patch}")
        return case.image, case.label

    def _device_case(self, index: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Read once, then served from GPU memory (NVIDIA keeps the whole preprocessed set there)."""
        if index not in self._cached:
            image, label = self._case(index)
            cuda = torch.device("cuda", torch.cuda.current_device())
            self._cached[index] = (torch.from_numpy(image).to(cuda), torch.from_numpy(label).to(cuda), label)
            torch.cuda.current_stream().synchronize()  # DALI reads the tensors on its own stream
        return self._cached[index]

    def _feed(self, indices: list[int]) -> None:
        if self.device == "gpu":
            cases = [self._device_case(i) for i in indices]
            self._pipe.feed_input("host_label", [host_label for _, _, host_label in cases])
        else:
            cases = [self._case(i) for i in indices]
        self._pipe.feed_input("image", [case[0] for case in cases])
        self._pipe.feed_input("label", [case[1] for case in cases])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._batches.epoch
        for step in range(self._batches.start_step, len(self._batches)):
            self._feed(self._batches.indices(epoch, step))
            images, labels = self._pipe.run()
            yield to_torch(images, torch.float32), to_torch(labels, torch.uint8)


def build_dali_train_loader(data_dir: str, case_ids: list[int], *, global_batch_size: int, rank: int,
                            world_size: int, patch: tuple[int, ...], oversampling: float, seed: int,
                            num_threads: int = 2, device: str = "cpu") -> DaliTrainLoader:
    """device: "gpu" (slice, flips and arithmetic on the GPU, cases cached there) when the run's device is CUDA."""
    if not case_ids:
        raise KiTS19FormatError(f"{data_dir}: no training cases")
    batches = TrainBatches(len(case_ids), global_batch_size, rank, world_size, seed)
    return DaliTrainLoader(data_dir, case_ids, batches, patch=patch, oversampling=oversampling, seed=seed,
                           num_threads=num_threads, device=device)
