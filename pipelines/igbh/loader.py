"""Mini-batches of sampled subgraphs with their features and labels, one step ahead on a side thread.

Training: each epoch is a permutation of the training seeds drawn from (seed, epoch); global step s takes
seeds [s x GBS, (s + 1) x GBS) of it (the last batch of an epoch keeps what is left, as the reference's
loader does), and rank r the r-th of `world` near-equal contiguous slices. A batch's sampling randomness
comes from (seed, step, rank) alone, so a resumed run, or a batch built ahead on the prefetch thread,
is the batch an uninterrupted run builds.

Evaluation: the validation seeds are split into `world` contiguous slices, each rank scoring its own in
batches of `batch_size` seeds, sampled with the same fan-out from a fixed generator.

The overlap NVIDIA uses (a side thread samples and gathers the next mini-batch while the current one
trains, on its own CUDA stream): `Prefetcher` keeps one batch in flight on a worker thread; on a GPU the
thread copies the features on a side stream, and the consumer waits for that stream's event before use.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.igbh.dataset import IGBH
from pipelines.igbh.graph import EdgeType
from pipelines.igbh.sampler import NeighborSampler


@dataclass
class Batch:
    x: dict[str, torch.Tensor]  # node type -> features of the subgraph's nodes (float32 or float16)
    edge_index: dict[EdgeType, torch.Tensor]  # (2, E) local ids, sources then destinations
    y: torch.Tensor  # labels of the seeds (the first `num_seeds` papers)
    num_seeds: int
    global_seeds: int  # seeds in this step's global batch (the loss is a mean over all of them)
    ready: object = None  # a CUDA event the consumer waits for, when built on a side stream


def step_generator(device: torch.device, *key: int) -> torch.Generator:
    """A generator seeded from `key` only (e.g. (seed, step, rank)): the same stream for the same key."""
    state = int(np.random.SeedSequence([k & 0xFFFFFFFF for k in key]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(state)


def rank_slice(n: int, rank: int, world_size: int) -> slice:
    """The rank-th of `world_size` contiguous, near-equal slices of n items."""
    return slice(n * rank // world_size, n * (rank + 1) // world_size)


def build_batch(dataset: IGBH, sampler: NeighborSampler, seeds: torch.Tensor, global_seeds: int,
                generator: torch.Generator, device: torch.device, stream=None) -> Batch:
    graph = sampler.sample(seeds, generator)
    labels = dataset.labels_of(seeds.cpu())
    pin = device.type == "cuda"
    x = {}
    for node_type, ids in graph.nodes.items():
        feats = dataset.gather(node_type, ids.cpu())
        x[node_type] = feats.pin_memory().to(device, non_blocking=True) if pin else feats
    batch = Batch(x, graph.edge_index, labels.to(device, non_blocking=pin), seeds.numel(), global_seeds)
    if stream is not None:
        batch.ready = torch.cuda.Event()
        batch.ready.record(stream)
    return batch


def wait_ready(batch: Batch) -> Batch:
    """On a GPU, order the current stream after the side stream that built `batch`, and tell the allocator
    that its tensors are used here."""
    if batch.ready is not None:
        current = torch.cuda.current_stream()
        current.wait_event(batch.ready)
        for t in [*batch.x.values(), *batch.edge_index.values(), batch.y]:
            t.record_stream(current)
        batch.ready = None
    return batch


class Prefetcher:
    """make(key) on one worker thread, one key ahead of the consumer."""

    def __init__(self, make, device: torch.device, enabled: bool = True):
        self.make, self.enabled = make, enabled
        self.stream = torch.cuda.Stream(device) if enabled and device.type == "cuda" else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="igbh-prefetch") if enabled else None
        self._pending = None  # (key, future)

    def _run(self, key):
        if self.stream is None:
            return self.make(key, None)
        with torch.cuda.stream(self.stream):
            return self.make(key, self.stream)

    def get(self, key, next_key=None) -> Batch:
        if self._pending is not None and self._pending[0] == key:
            batch = self._pending[1].result()
        else:
            if self._pending is not None:
                self._pending[1].result()  # a stale batch (e.g. after a resume): finish it, drop it
            batch = self.make(key, None)
        self._pending = None
        if self.enabled and next_key is not None:
            self._pending = (next_key, self._executor.submit(self._run, next_key))
        return wait_ready(batch)

    def close(self) -> None:
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)


class TrainLoader:
    def __init__(self, dataset: IGBH, sampler: NeighborSampler, seeds: torch.Tensor, *, global_batch_size: int,
                 rank: int, world_size: int, seed: int, device: torch.device, prefetch: bool = True):
        if global_batch_size < world_size:
            raise ValueError(f"global batch {global_batch_size} is smaller than the {world_size} ranks")
        self.dataset, self.sampler, self.seeds = dataset, sampler, seeds
        self.global_batch_size, self.rank, self.world_size = global_batch_size, rank, world_size
        self.seed, self.device = seed, device
        self.num_samples = seeds.numel()
        self.steps_per_epoch = math.ceil(self.num_samples / global_batch_size)
        self._order = (-1, None)
        self._prefetch = Prefetcher(self._make, device, prefetch)

    def order(self, epoch: int) -> torch.Tensor:
        if self._order[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            self._order = (epoch, self.seeds[torch.from_numpy(perm)])
        return self._order[1]

    def step_seeds(self, step: int) -> tuple[torch.Tensor, int]:
        """(this rank's seeds of global step `step`, the global batch's size)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = self.order(epoch)
        batch = order[index * self.global_batch_size:(index + 1) * self.global_batch_size]
        return batch[rank_slice(batch.numel(), self.rank, self.world_size)], batch.numel()

    def _make(self, step: int, stream) -> Batch:
        seeds, total = self.step_seeds(step)
        generator = step_generator(self.sampler.device, self.seed, step, self.rank)
        return build_batch(self.dataset, self.sampler, seeds, total, generator, self.device, stream)

    def batch(self, step: int) -> Batch:
        """Step `step`'s batch; the next step's starts building on the prefetch thread."""
        return self._prefetch.get(step, step + 1)

    def close(self) -> None:
        self._prefetch.close()


class EvalLoader:
    def __init__(self, dataset: IGBH, sampler: NeighborSampler, seeds: torch.Tensor, *, batch_size: int,
                 rank: int, world_size: int, seed: int, device: torch.device, prefetch: bool = True):
        self.dataset, self.sampler, self.device, self.seed, self.rank = dataset, sampler, device, seed, rank
        self.num_samples = seeds.numel()
        self.local = seeds[rank_slice(seeds.numel(), rank, world_size)]
        self.batch_size = batch_size
        self.num_batches = math.ceil(self.local.numel() / batch_size)
        self._prefetch = Prefetcher(self._make, device, prefetch)

    def _make(self, index: int, stream) -> Batch:
        seeds = self.local[index * self.batch_size:(index + 1) * self.batch_size]
        generator = step_generator(self.sampler.device, self.seed, 1 << 30, self.rank, index)
        return build_batch(self.dataset, self.sampler, seeds, seeds.numel(), generator, self.device, stream)

    def __iter__(self):
        for index in range(self.num_batches):
            yield self._prefetch.get(index, index + 1 if index + 1 < self.num_batches else None)

    def close(self) -> None:
        self._prefetch.close()
