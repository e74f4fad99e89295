"""The torch DataLoader path for the preprocessed KiTS19: the reference's augmentation, sharded by rank.

Train: every epoch is one permutation of the training cases drawn from (seed, epoch); global batch k is
entries [k*G, (k+1)*G) of it and rank r takes [r*L, (r+1)*L), L = G / world (the reference's
DistributedSampler with one shuffle seed on every rank, and drop_last). The augmentation of a sample is
drawn from (seed, epoch, case index) (augment.py), so a global batch is the same whatever the world
size or worker count. Per step: image float32 [L, 1, P, P, P], label uint8 [L, 1, P, P, P].

Eval: rank r evaluates the cases r::world whole, one at a time (image float32 [1, 1, D, H, W], label
uint8 the same), read once and then kept in memory (42 cases are ~2.3 GB over all ranks).

Cases are memory-mapped (a crop reads only its pages); the foreground boxes of a case are found once
per worker, the first time it is drawn.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipelines.kits19.augment import augment, foreground_boxes
from pipelines.kits19.format import KiTS19FormatError, check_label_values, read_case
from pipelines.sampling import EpochLoader, TrainBatches
from pipelines.workers import ignore_sigterm

_PREFETCH_BATCHES_PER_WORKER = 2


def sample_rng(seed: int, epoch: int, case_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, case_index])


class TrainCases(Dataset):
    """Map-style, keyed by (case index, epoch), so persistent workers need no epoch state."""

    def __init__(self, data_dir: str, case_ids: list[int], *, patch: tuple[int, ...], oversampling: float,
                 seed: int):
        self.data_dir, self.case_ids = data_dir, list(case_ids)
        self.patch, self.oversampling, self.seed = tuple(patch), oversampling, seed
        self._boxes: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.case_ids)

    def case(self, index: int):
        case = read_case(self.data_dir, self.case_ids[index], mmap=True, check_labels=False)
        if any(s < p for s, p in zip(case.image.shape[1:], self.patch)):
            raise KiTS19FormatError(f"{case.name}: shape {case.image.shape[1:]} is smaller than the training crop "
                                    f"{self.patch} (preprocess with --min-shape {max(self.patch)})")
        if index not in self._boxes:
            label = np.asarray(case.label)
            check_label_values(label, f"{case.name} ({self.data_dir})")
            self._boxes[index] = foreground_boxes(label)
        return case, self._boxes[index]

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        index, epoch = key
        case, boxes = self.case(index)
        image, label, _ = augment(sample_rng(self.seed, epoch, index), case.image, case.label, boxes,
                                  patch=self.patch, oversampling=self.oversampling)
        return image, label


def _collate(samples) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(np.stack([image for image, _ in samples])),
            torch.from_numpy(np.stack([label for _, label in samples])))


class TrainLoader(EpochLoader):
    """`for image, label in loader` after `loader.set_epoch(epoch)`. num_samples: training cases;
    steps_per_epoch (= len), samples_per_epoch and set_epoch: pipelines.sampling.EpochLoader."""

    def __init__(self, dataset: TrainCases, batches: TrainBatches, *, num_workers: int, pin_memory: bool):
        self.dataset, self._batches = dataset, batches
        self.num_samples = len(dataset)
        self._loader = DataLoader(dataset, batch_sampler=batches, collate_fn=_collate, num_workers=num_workers,
                                  persistent_workers=num_workers > 0, pin_memory=pin_memory,
                                  worker_init_fn=ignore_sigterm,
                                  prefetch_factor=_PREFETCH_BATCHES_PER_WORKER if num_workers > 0 else None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._loader)


class EvalVolumes:
    """This rank's evaluation cases, whole, in order; `local_samples` of the `num_samples` in the split."""

    def __init__(self, data_dir: str, case_ids: list[int], *, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.data_dir, self.num_samples = data_dir, len(case_ids)
        self.case_ids = list(case_ids)[rank::world_size]
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def local_samples(self) -> int:
        return len(self.case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for case_id in self.case_ids:
            if case_id not in self._cache:
                case = read_case(self.data_dir, case_id)
                self._cache[case_id] = (torch.from_numpy(case.image)[None], torch.from_numpy(case.label)[None])
            yield self._cache[case_id]


def build_train_loader(data_dir: str, case_ids: list[int], *, global_batch_size: int, rank: int, world_size: int,
                       patch: tuple[int, ...], oversampling: float, seed: int, num_workers: int,
                       pin_memory: bool = False) -> TrainLoader:
    if not case_ids:
        raise KiTS19FormatError(f"{data_dir}: no training cases")
    dataset = TrainCases(data_dir, case_ids, patch=patch, oversampling=oversampling, seed=seed)
    batches = TrainBatches(len(dataset), global_batch_size, rank, world_size, seed)
    return TrainLoader(dataset, batches, num_workers=num_workers, pin_memory=pin_memory)

