"""Training and eval batches from a SequenceStore, sharded by data-parallel rank.

Train: epoch e visits every sequence once in the order of a pseudo-random permutation drawn from
(seed, e) (any random order over shards and records is what the rules ask). Global batch k of an epoch
is permutation entries [k*G, (k+1)*G); rank r takes [r*L, (r+1)*L), L = G / dp, split into grad_accum
micro-batches of L / grad_accum sequences. The last partial global batch of an epoch is dropped. Step
g maps to (epoch, k) by itself, so a resumed run continues with exactly the batches it would have seen.

The permutation is a Feistel network with cycle walking, evaluated only at the indices a batch needs:
O(1) memory and no start-of-epoch cost, where a materialised permutation of Wikipedia's ~1.5e8
sequences would cost each rank 1.2 GB and seconds inside the timed region.

Batches are built (gathered from the memory map, packed, pinned) by one background thread a few steps
ahead; numpy and the copies release the GIL, and a step of 96 sequences costs about a millisecond.

Eval: every sequence once, in store order; rank r takes the contiguous r-th 1/dp of the set, in
micro-batches of `batch_sequences` (the last one smaller).
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from pipelines.bert.packing import PretrainingBatch, build_batch
from pipelines.bert.store import SequenceStore

_MASK64 = np.uint64(2**64 - 1)


class IndexPermutation:
    """A bijection of [0, n) that looks random, for a given seed; apply to an int array of indices."""

    ROUNDS = 6

    def __init__(self, n: int, seed: int | tuple[int, ...]):
        if n < 1:
            raise ValueError("IndexPermutation needs n >= 1")
        self.n = n
        bits = max(2, int(n - 1).bit_length())
        bits += bits % 2
        self.half = np.uint64(bits // 2)
        self.low_mask = np.uint64((1 << (bits // 2)) - 1)
        self.keys = np.random.default_rng(seed).integers(0, 2**63, self.ROUNDS, dtype=np.uint64)

    def _round(self, right: np.ndarray, key: np.uint64) -> np.ndarray:
        # splitmix64's finaliser on (right ^ key): every input bit reaches every output bit
        x = right ^ key
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (x ^ (x >> np.uint64(31))) & self.low_mask

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.low_mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << self.half) | right

    def __call__(self, indices) -> np.ndarray:
        x = np.asarray(indices, dtype=np.uint64)
        if x.size and int(x.max()) >= self.n:
            raise IndexError(f"index {int(x.max())} outside [0, {self.n})")
        with np.errstate(over="ignore"):
            y = self._encrypt(x)
            outside = y >= self.n
            while outside.any():  # cycle walking: stays a bijection of [0, n)
                y[outside] = self._encrypt(y[outside])
                outside = y >= self.n
        return y.astype(np.int64)


class TrainBatches:
    """Per step, this rank's grad_accum micro-batches (PretrainingBatch, pinned when asked)."""

    def __init__(self, store: SequenceStore, *, global_batch_size: int, dp_rank: int, dp_size: int,
                 grad_accum: int, seed: int, max_per_row: int, row_multiple: int = 8, pin_memory: bool = False,
                 prefetch: int = 4):
        if global_batch_size % (dp_size * grad_accum):
            raise ValueError(f"global batch {global_batch_size} is not divisible by dp*grad_accum = "
                             f"{dp_size}*{grad_accum}")
        self.store = store
        self.global_batch_size, self.dp_rank, self.dp_size = global_batch_size, dp_rank, dp_size
        self.grad_accum, self.seed = grad_accum, seed
        self.local = global_batch_size // dp_size
        self.steps_per_epoch = len(store) // global_batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"{store.dir}: {len(store)} sequences, fewer than one global batch of "
                             f"{global_batch_size}")
        self.max_per_row, self.row_multiple, self.pin_memory = max_per_row, row_multiple, pin_memory
        self.prefetch = prefetch
        self._permutations: dict[int, IndexPermutation] = {}
        self._thread = self._queue = self._stop = None
        self._next_step = None

    @property
    def num_samples(self) -> int:
        return len(self.store)

    def indices(self, step: int) -> np.ndarray:
        """Store indices of this rank's sequences at `step`, in micro-batch order."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch not in self._permutations:
            self._permutations = {epoch: IndexPermutation(len(self.store), (self.seed, epoch))}
        start = k * self.global_batch_size + self.dp_rank * self.local
        return self._permutations[epoch](np.arange(start, start + self.local))

    def build(self, step: int) -> list[PretrainingBatch]:
        store = self.store
        sequences = [store.sequence(int(i)) for i in self.indices(step)]
        size = self.local // self.grad_accum
        batches = [build_batch(sequences[j:j + size], store.max_seq_length, store.max_predictions,
                               self.max_per_row, self.row_multiple) for j in range(0, self.local, size)]
        return [b.pin_memory() for b in batches] if self.pin_memory else batches

    # -- background prefetch ---------------------------------------------------------------------------
    def _produce(self, first_step: int, out: queue.Queue, stop: threading.Event) -> None:
        step = first_step
        while not stop.is_set():
            try:
                item = (step, self.build(step))
            except BaseException as e:  # handed to the consumer, which raises it
                item = (step, e)
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item[1], BaseException):
                return
            step += 1

    def get(self, step: int) -> list[PretrainingBatch]:
        """The micro-batches of `step`; consecutive calls are served by the prefetch thread."""
        if self._next_step != step:
            self.close()
            self._stop, self._queue = threading.Event(), queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._produce, args=(step, self._queue, self._stop),
                                            name="bert-train-batches", daemon=True)
            self._thread.start()
        produced_step, batches = self._queue.get()
        if isinstance(batches, BaseException):
            self._next_step = None
            raise batches
        assert produced_step == step, (produced_step, step)
        self._next_step = step + 1
        return batches

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._next_step = None


class EvalBatches:
    """This rank's share of the eval set, in micro-batches; iterate once per evaluation."""

    def __init__(self, store: SequenceStore, *, dp_rank: int, dp_size: int, batch_sequences: int,
                 max_per_row: int, row_multiple: int = 8):
        n = len(store)
        self.store = store
        self.begin, self.end = n * dp_rank // dp_size, n * (dp_rank + 1) // dp_size
        self.batch_sequences, self.max_per_row, self.row_multiple = batch_sequences, max_per_row, row_multiple
        self._cache: list[PretrainingBatch] | None = None

    @property
    def num_samples(self) -> int:
        return len(self.store)

    @property
    def local_samples(self) -> int:
        return self.end - self.begin

    def __iter__(self):
        # The eval set is small (10k sequences): built once, then served from memory every evaluation.
        if self._cache is None:
            self._cache = []
            for j in range(self.begin, self.end, self.batch_sequences):
                sequences = [self.store.sequence(i) for i in range(j, min(j + self.batch_sequences, self.end))]
                self._cache.append(build_batch(sequences, self.store.max_seq_length, self.store.max_predictions,
                                               self.max_per_row, self.row_multiple))
        return iter(self._cache)
