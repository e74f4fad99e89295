"""How a training epoch is split over steps and ranks, shared by the pipelines that read samples by index."""

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

    def indices(self, epoch: int, step: int) -> list[int]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
        start = step * self.global_batch_size + self.rank * self.local_batch_size
        return [int(i) for i in order[start:start + self.local_batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
        for step in range(self.start_step, len(self)):
            start = step * self.global_batch_size + self.rank * self.local_batch_size
            yield [(int(i), epoch) for i in order[start:start + self.local_batch_size]]
