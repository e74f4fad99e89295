"""How a training epoch is split over steps and ranks, shared by the pipelines that read samples by index.

`TrainBatches` is the batch sampler; `EpochLoader` is what every train loader over one (the torch DataLoader
paths and the DALI paths that feed it through an external source) answers the same way: steps and samples per
epoch, `set_epoch(epoch, start_step)` and `len`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class TrainBatches:
    """Batch sampler: this rank's slice of each global batch of the (seed, epoch) permutation of the
    training samples; yields [(sample index, epoch)] per step from `start_step` (a resumed run's)."""

    def __init__(self, num_records: int, global_batch_size: int, rank: int, world_size: int, seed: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        if global_batch_size <= 0 or global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not a positive multiple of "
                             f"world_size {world_size}")
        if global_batch_size > num_records:
            raise ValueError(f"global_batch_size {global_batch_size} exceeds the {num_records} records")
        self.num_records, self.global_batch_size, self.seed = num_records, global_batch_size, seed
        self.local_batch_size = global_batch_size // world_size
        self.rank, self.epoch, self.start_step = rank, 0, 0

    def __len__(self) -> int:
        return self.num_records // self.global_batch_size

    @property
    def local_samples(self) -> int:
        return len(self) * self.local_batch_size

    def order(self, epoch: int) -> list[int]:
        """The epoch's permutation of every record (a pipeline with its own shuffle overrides this alone)."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_records).tolist()

    def indices(self, epoch: int, step: int, order: list[int] | None = None) -> list[int]:
        order = self.order(epoch) if order is None else order
        start = step * self.global_batch_size + self.rank * self.local_batch_size
        return order[start:start + self.local_batch_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        order = self.order(epoch)
        for step in range(self.start_step, len(self)):
            yield [(i, epoch) for i in self.indices(epoch, step, order)]


class EpochLoader:
    """Mixin for a loader iterating the batch sampler it keeps as `self._batches` (a TrainBatches, or any sampler
    with `len`, `epoch` and `start_step`): steps_per_epoch (= len) and, for a train sampler, samples_per_epoch
    (steps x global batch, the last partial batch dropped); `set_epoch` chooses what the next iteration yields."""

    _batches: TrainBatches

    @property
    def steps_per_epoch(self) -> int:
        return len(self._batches)

    @property
    def samples_per_epoch(self) -> int:
        return len(self._batches) * self._batches.global_batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """The next iteration yields this epoch's batches from `start_step` on (> 0 when resuming)."""
        if not 0 <= start_step <= len(self._batches):
            raise ValueError(f"start_step {start_step} outside the epoch's {len(self._batches)} steps")
        self._batches.epoch, self._batches.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch
