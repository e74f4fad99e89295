"""A DALI pipeline for the KiTS19 train crops, on DALI's CPU operators: same interface and tensors as
loader.TrainLoader (image float32 [L, 1, P, P, P], label uint8 the same).

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
cases but other crops. The foreground search runs on the CPU for every sample (cache_objects hashes each
input); on a GPU the slice, flips and arithmetic could run on the device, which is not done here: this
pipeline is the CPU path, not a measured fast path.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pipelines.kits19.augment import (
    BRIGHTNESS_FACTOR,
    BRIGHTNESS_PROBABILITY,
    FLIP_PROBABILITY,
    NOISE_PROBABILITY,
    NOISE_STD,
)
from pipelines.kits19.format import KiTS19FormatError, read_case
from pipelines.kits19.loader import TrainBatches


def _graph(patch: tuple[int, ...], oversampling: float):
    from nvidia.dali import fn, types

    image = fn.external_source(name="image", layout="CDHW", dtype=types.FLOAT, ndim=4)
    label = fn.external_source(name="label", layout="CDHW", dtype=types.UINT8, ndim=4)
    mask = fn.squeeze(label, axis_names="C")
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
    image = image * (brighten * gain + (1.0 - brighten))
    add_noise = fn.cast(fn.random.coin_flip(probability=NOISE_PROBABILITY), dtype=types.FLOAT)
    std = fn.random.uniform(range=[0.0, NOISE_STD])
    image = image + add_noise * fn.random.normal(image, stddev=std)
    return fn.cast(image, dtype=types.FLOAT), label


class DaliTrainLoader:
    """loader.TrainLoader's interface: num_samples, steps_per_epoch (= len), samples_per_epoch,
    set_epoch(epoch, start_step), iteration."""

    def __init__(self, data_dir: str, case_ids: list[int], batches: TrainBatches, *, patch: tuple[int, ...],
                 oversampling: float, seed: int, num_threads: int):
        from nvidia.dali import Pipeline

        self.data_dir, self.case_ids, self._batches = data_dir, list(case_ids), batches
        self.num_samples, self.patch = len(case_ids), tuple(patch)
        self._checked: set[int] = set()
        # Fed one batch per run() (no prefetch): the external source is filled just before each step.
        self._pipe = Pipeline(batch_size=batches.local_batch_size, num_threads=num_threads, device_id=None,
                              seed=(seed * 65_537 + batches.rank) % 2**31, exec_pipelined=False, exec_async=False,
                              prefetch_queue_depth=1)
        with self._pipe:
            self._pipe.set_outputs(*_graph(self.patch, oversampling))
        self._pipe.build()

    @property
    def steps_per_epoch(self) -> int:
        return len(self._batches)

    @property
    def samples_per_epoch(self) -> int:
        return len(self._batches) * self._batches.global_batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= len(self._batches):
            raise ValueError(f"start_step {start_step} outside the epoch's {len(self._batches)} steps")
        self._batches.epoch, self._batches.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _case(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        case = read_case(self.data_dir, self.case_ids[index], check_labels=index not in self._checked)
        self._checked.add(index)
        if any(s < p for s, p in zip(case.image.shape[1:], self.patch)):
            raise KiTS19FormatError(f"{case.name}: shape {case.image.shape[1:]} is smaller than the training crop "
                                    f"{self.patch}")
        return case.image, case.label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._batches.epoch
        for step in range(self._batches.start_step, len(self._batches)):
            cases = [self._case(i) for i in self._batches.indices(epoch, step)]
            self._pipe.feed_input("image", [image for image, _ in cases])
            self._pipe.feed_input("label", [label for _, label in cases])
            images, labels = self._pipe.run()
            yield (torch.from_numpy(np.array(images.as_tensor())), torch.from_numpy(np.array(labels.as_tensor())))


def build_dali_train_loader(data_dir: str, case_ids: list[int], *, global_batch_size: int, rank: int,
                            world_size: int, patch: tuple[int, ...], oversampling: float, seed: int,
                            num_threads: int = 2) -> DaliTrainLoader:
    if not case_ids:
        raise KiTS19FormatError(f"{data_dir}: no training cases")
    batches = TrainBatches(len(case_ids), global_batch_size, rank, world_size, seed)
    return DaliTrainLoader(data_dir, case_ids, batches, patch=patch, oversampling=oversampling, seed=seed,
                           num_threads=num_threads)

