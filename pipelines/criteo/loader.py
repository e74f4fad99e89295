"""Batches of multi-hot Criteo straight from the memory-mapped day files, in the preprocessed order.

Training reads days 0..T-1 as one sequence of rows. Global batch t is rows [t*G, (t+1)*G); rank r of W takes
the slice [t*G + r*b, t*G + (r+1)*b) with b = G/W. So the sequence of global batches is the same whatever
the number of ranks (the reference instead gives each rank a contiguous 1/W of the epoch; the rules allow
either: order is the preprocessed one, only the batching differs), and 1-rank and 2-rank runs can be
compared step by step. The last partial global batch is dropped, as the rules allow.

Validation is the first ceil(N/2) rows of the last day. Every rank takes ceil(n/W) consecutive rows and
reads them in batches of the same size on every rank; rows past n are padding (zeros, id 0) that the
evaluation drops: sharded embeddings run collectives, so all ranks must make the same calls.

A batch is assembled with one memcpy per (feature, day piece) into the layout of a KeyedJaggedTensor
(feature-major values, constant lengths), then every id is range-checked in one vectorised pass: a bad id
is an error naming the file, not a silent out-of-bounds lookup on the device.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torchrec import KeyedJaggedTensor

from pipelines.criteo.format import NUM_DENSE, CriteoDay, CriteoFormatError, sparse_feature_names


@dataclass
class CriteoBatch:
    dense: torch.Tensor  # float32 (B, 13)
    sparse: KeyedJaggedTensor  # keys cat_0..cat_25, int32 values, lengths = multi-hot sizes
    labels: torch.Tensor  # float32 (B,)
    valid: int  # leading rows that are data; the rest is padding (validation only)

    def to(self, device: torch.device, non_blocking: bool = False) -> "CriteoBatch":
        if device.type == "cpu":
            return self
        return CriteoBatch(self.dense.to(device, non_blocking=non_blocking),
                           self.sparse.to(device, non_blocking=non_blocking),
                           self.labels.to(device, non_blocking=non_blocking), self.valid)


class _Layout:
    """Per batch size: where each feature's ids go in the values array, the lengths, the id limits."""

    def __init__(self, batch: int, sizes: tuple[int, ...], table_rows: tuple[int, ...]):
        self.batch = batch
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum([batch * k for k in sizes])]).astype(np.int64)
        self.lengths = torch.from_numpy(np.repeat(np.asarray(sizes, dtype=np.int32), batch))
        self.limits = np.repeat(np.asarray(table_rows, dtype=np.uint32), [batch * k for k in sizes])
        self.length_per_key = [batch * k for k in sizes]
        self.offset_per_key = self.offsets.tolist()


class CriteoReader:
    """Random access to rows [start, stop) of a list of days, taken as one sequence."""

    def __init__(self, days: list[CriteoDay], table_rows: tuple[int, ...], multi_hot_sizes: tuple[int, ...],
                 start: int = 0, stop: int | None = None, pin_memory: bool = False):
        self.days = days
        self.table_rows = tuple(table_rows)
        self.sizes = tuple(multi_hot_sizes)
        self.keys = sparse_feature_names(len(self.sizes))
        self._index = {k: i for i, k in enumerate(self.keys)}
        self.day_starts = np.concatenate([[0], np.cumsum([d.rows for d in days])]).astype(np.int64)
        self.start = start
        self.stop = int(self.day_starts[-1]) if stop is None else stop
        if not 0 <= start <= self.stop <= self.day_starts[-1]:
            raise ValueError(f"rows [{start}, {stop}) outside the {int(self.day_starts[-1])} rows of the days")
        self.pin_memory = pin_memory
        self._layouts: dict[int, _Layout] = {}

    def __len__(self) -> int:
        return self.stop - self.start

    def _layout(self, batch: int) -> _Layout:
        if batch not in self._layouts:
            self._layouts[batch] = _Layout(batch, self.sizes, self.table_rows)
        return self._layouts[batch]

    def _empty(self, shape, dtype) -> np.ndarray:
        return torch.empty(shape, dtype=dtype, pin_memory=self.pin_memory).numpy()

    def _pieces(self, begin: int, count: int):
        """(day, first row in day, rows, first row in batch) covering rows [begin, begin + count)."""
        g, end, out = self.start + begin, self.start + begin + count, 0
        while g < end:
            d = int(np.searchsorted(self.day_starts, g, side="right")) - 1
            local = g - int(self.day_starts[d])
            n = min(end - g, self.days[d].rows - local)
            yield self.days[d], local, n, out
            g, out = g + n, out + n

    def read(self, begin: int, count: int, batch: int | None = None) -> CriteoBatch:
        """Rows [begin, begin + count) of this reader; padded with zeros to `batch` rows if given."""
        batch = count if batch is None else batch
        if begin < 0 or count < 0 or begin + count > len(self) or count > batch:
            raise IndexError(f"rows [{begin}, {begin + count}) of a reader of {len(self)} rows (batch {batch})")
        layout = self._layout(batch)
        dense = self._empty((batch, NUM_DENSE), torch.float32)
        labels = self._empty((batch,), torch.float32)
        values = self._empty((int(layout.offsets[-1]),), torch.int32)
        features = [values[layout.offsets[k]:layout.offsets[k + 1]].reshape(batch, size)
                    for k, size in enumerate(self.sizes)]
        pieces = list(self._pieces(begin, count))
        for day, first, n, out in pieces:
            dense[out:out + n] = day.dense[first:first + n]
            labels[out:out + n] = day.labels[first:first + n, 0]
            for k, member in enumerate(day.sparse):
                features[k][out:out + n] = member[first:first + n]
        if count < batch:
            dense[count:] = 0
            labels[count:] = 0
            for f in features:
                f[count:] = 0
        if np.any(values.view(np.uint32) >= layout.limits):  # negative ids wrap to huge unsigned values
            self._raise_bad_id(features, pieces)
        sparse = KeyedJaggedTensor(keys=self.keys, values=torch.from_numpy(values), lengths=layout.lengths,
                                   stride=batch, length_per_key=layout.length_per_key,
                                   offset_per_key=layout.offset_per_key, index_per_key=self._index)
        return CriteoBatch(torch.from_numpy(dense), sparse, torch.from_numpy(labels), count)

    def _raise_bad_id(self, features, pieces) -> None:
        for k, (f, rows) in enumerate(zip(features, self.table_rows)):
            bad = np.argwhere(f.view(np.uint32) >= rows)
            if len(bad):
                r, c = bad[0]
                day, first, _, out = next(p for p in pieces if p[3] <= r < p[3] + p[2])
                raise CriteoFormatError(f"{day.sparse_path}: member '{k}' row {first + r - out} holds id {f[r, c]}, "
                                        f"outside table {k} of {rows} rows")
        raise AssertionError("unreachable: an id failed the range check but no feature holds it")


class TrainBatches:
    """This rank's slice of global batches start_step, start_step + 1, ... up to `steps`."""

    def __init__(self, reader: CriteoReader, global_batch: int, rank: int, world_size: int, steps: int,
                 start_step: int = 0):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} not divisible by {world_size} ranks")
        self.reader, self.global_batch, self.steps, self.start_step = reader, global_batch, steps, start_step
        self.local_batch = global_batch // world_size
        self.offset = rank * self.local_batch
        if steps * global_batch > len(reader):
            raise ValueError(f"{steps} steps of {global_batch} need {steps * global_batch} rows, have {len(reader)}")

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self):
        for t in range(self.start_step, self.steps):
            yield self.reader.read(t * self.global_batch + self.offset, self.local_batch)


class EvalBatches:
    """This rank's ceil(n/W) rows of the validation rows, in equal batches on every rank."""

    def __init__(self, reader: CriteoReader, local_batch: int, rank: int, world_size: int):
        self.reader, self.local_batch = reader, local_batch
        self.per_rank = math.ceil(len(reader) / world_size)
        self.first = rank * self.per_rank
        self.mine = max(0, min(len(reader), self.first + self.per_rank) - self.first)

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.local_batch)

    def __iter__(self):
        for a in range(0, self.per_rank, self.local_batch):
            batch = min(self.local_batch, self.per_rank - a)
            count = max(0, min(batch, self.mine - a))
            yield self.reader.read(self.first + a if count else 0, count, batch)


class Prefetcher:
    """Builds the next `depth` batches in a background thread (numpy's copies release the GIL)."""

    _DONE = object()

    def __init__(self, batches, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(batches),), daemon=True)
        self._thread.start()

    def _run(self, it) -> None:
        try:
            for item in it:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._DONE)
        except BaseException as e:  # surfaced in the consumer, with the file name in the message
            self._queue.put(e)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.1)
