"""The training format: the TFRecord examples without their padding, in memory-mappable .npy arrays.

A lossless reformatting (the rules allow it, as NVIDIA's variable-length HDF5 shards): a 512-token
example of 200 real tokens keeps 200, so a Wikipedia epoch shrinks to about half, and a sequence is
one slice of a memory map rather than a protobuf to parse. Rows of 512 tokens are then filled with
several sequences at batch time (packing.py).

A store is a directory of parts, one per source TFRecord shard (so shards convert in parallel):

    index.json                       {"format": FORMAT, "parts": [[name, sequences], ...], ...}
    <part>/input_ids.npy             uint16 (int32 past 65535) [tokens]   every sequence's real tokens
    <part>/sequence_offsets.npy      int64 [n + 1]     sequence i is tokens [off[i], off[i+1])
    <part>/segment_b_start.npy       uint16 [n]        first token of segment B (segment_ids 1 from here)
    <part>/prediction_offsets.npy    int64 [n + 1]     predictions of sequence i, likewise
    <part>/masked_lm_positions.npy   uint16 [predictions]
    <part>/masked_lm_ids.npy         uint16 (int32 past 65535) [predictions]
    <part>/next_sentence_labels.npy  uint8 [n]

What is dropped is implied: input_mask is 1 on the real tokens, segment_ids is 0 then 1 from
segment_b_start, masked_lm_weights is 1 on the real predictions, padding is 0. The converter checks
every example has exactly that form and refuses (naming file and record) anything else, so a store
always re-creates its TFRecords bit for bit (`StorePart.padded_example` does, and the tests check).

Arrays are written through a fixed 128-byte .npy header that is patched with the final length, so a
part streams to disk without holding it in memory; readers use np.load(mmap_mode="r",
allow_pickle=False).
"""

from __future__ import annotations

import json
import os

import numpy as np

from pipelines.bert.format import (
    LABEL_FEATURE,
    MAX_PREDICTIONS_PER_SEQ,
    MAX_SEQ_LENGTH,
    BertFormatError,
    decode_pretraining_example,
)
from pipelines.tfrecord import ExampleError, TFRecordError, iter_records
from runtime.atomic_write import atomic_dir, atomic_open

FORMAT = "mlperf-bert-unpadded-v1"
_HEADER_BYTES = 128  # magic + version + length + dict, padded; room for any shape of one dimension
_ARRAYS = ("input_ids", "sequence_offsets", "segment_b_start", "prediction_offsets", "masked_lm_positions",
           "masked_lm_ids", "next_sentence_labels")


class _NpyAppender:
    """A 1-D .npy file written in chunks; the header is rewritten with the final length on close. It lives in
    a part's temporary directory, which `atomic_dir` makes durable and renames only when complete."""

    def __init__(self, path: str, dtype: np.dtype):
        self.path, self.dtype, self.count = path, np.dtype(dtype), 0
        self._file = open(path, "wb")
        self._file.write(self._header(0))

    def _header(self, count: int) -> bytes:
        text = f"{{'descr': '{self.dtype.str}', 'fortran_order': False, 'shape': ({count},), }}"
        body = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")

    def append(self, values: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.count += len(values)

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(self._header(self.count))
        self._file.close()


def _unpad(ex: dict[str, np.ndarray]) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, int]:
    """(tokens, segment B start, positions, ids, nsp label) of a decoded example, after checking that the
    padding and masks have the implied form."""
    mask, ids, segments = ex["input_mask"], ex["input_ids"], ex["segment_ids"]
    length = int(mask.sum())
    if not (np.all(mask[:length] == 1) and np.all(mask[length:] == 0)):
        raise ExampleError("input_mask is not ones followed by zeros")
    if np.any(ids[length:]) or np.any(segments[length:]):
        raise ExampleError("input_ids or segment_ids are non-zero in the padding")
    ones = np.flatnonzero(segments[:length])
    b_start = int(ones[0]) if ones.size else length
    if not np.all(segments[b_start:length] == 1) or np.any(segments[:b_start]):
        raise ExampleError("segment_ids are not zeros followed by ones")
    weights, positions, labels = ex["masked_lm_weights"], ex["masked_lm_positions"], ex["masked_lm_ids"]
    count = int(np.count_nonzero(weights))
    if not (np.all(weights[:count] == 1.0) and np.all(weights[count:] == 0.0)):
        raise ExampleError("masked_lm_weights are not ones followed by zeros")
    if np.any(positions[count:]) or np.any(labels[count:]):
        raise ExampleError("masked_lm_positions or masked_lm_ids are non-zero in the padding")
    if count and (positions[:count].max() >= length or positions[:count].min() < 0):
        raise ExampleError(f"a masked position is outside the {length} real tokens")
    if ids.min() < 0 or labels.min() < 0:
        raise ExampleError("negative token id")
    label = int(ex[LABEL_FEATURE][0])
    if label not in (0, 1):
        raise ExampleError(f"next_sentence_labels is {label}, not 0 or 1")
    return ids[:length], b_start, positions[:count], labels[:count], label


def convert_tfrecord(path: str, part_dir: str, max_seq_length: int = MAX_SEQ_LENGTH,
                     max_predictions: int = MAX_PREDICTIONS_PER_SEQ, id_dtype=np.uint16) -> int:
    """One TFRecord shard -> one store part; returns its number of sequences. Writes to a temporary directory
    renamed to `part_dir` when complete, so an interrupted conversion never leaves a plausible part behind."""
    with atomic_dir(part_dir) as tmp:
        return _convert_into(path, tmp, max_seq_length, max_predictions, id_dtype)


def _convert_into(path: str, tmp: str, max_seq_length: int, max_predictions: int, id_dtype) -> int:
    dtypes = {"input_ids": id_dtype, "sequence_offsets": np.int64, "segment_b_start": np.uint16,
              "prediction_offsets": np.int64, "masked_lm_positions": np.uint16, "masked_lm_ids": id_dtype,
              "next_sentence_labels": np.uint8}
    out = {name: _NpyAppender(os.path.join(tmp, name + ".npy"), dtypes[name]) for name in _ARRAYS}
    id_limit = np.iinfo(id_dtype).max
    tokens = predictions = sequences = 0
    out["sequence_offsets"].append([0])
    out["prediction_offsets"].append([0])
    offset = 0
    try:
        for payload in iter_records(path):
            try:
                ids, b_start, positions, labels, nsp = _unpad(decode_pretraining_example(
                    payload, max_seq_length, max_predictions))
                if ids.max(initial=0) > id_limit or labels.max(initial=0) > id_limit:
                    raise ExampleError(f"token id above {id_limit}: convert with a wider id_dtype")
            except ExampleError as e:
                raise BertFormatError(f"{path}: record {sequences} (at byte {offset}): {e}") from None
            tokens += len(ids)
            predictions += len(positions)
            sequences += 1
            offset += len(payload) + 16
            out["input_ids"].append(ids)
            out["segment_b_start"].append([b_start])
            out["masked_lm_positions"].append(positions)
            out["masked_lm_ids"].append(labels)
            out["next_sentence_labels"].append([nsp])
            out["sequence_offsets"].append([tokens])
            out["prediction_offsets"].append([predictions])
    except TFRecordError as e:
        raise BertFormatError(str(e)) from None  # it names the file and the offset already
    finally:
        for appender in out.values():
            appender.close()
    return sequences


def write_index(store_dir: str, parts: list[tuple[str, int]], max_seq_length: int, max_predictions: int,
                extra: dict | None = None) -> None:
    index = {"format": FORMAT, "max_seq_length": max_seq_length, "max_predictions_per_seq": max_predictions,
             "num_sequences": sum(n for _, n in parts), "parts": [list(p) for p in parts], **(extra or {})}
    with atomic_open(os.path.join(store_dir, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


class StorePart:
    """One part, memory-mapped; `sequence(i)` reads one example."""

    def __init__(self, part_dir: str, expected: int):
        self.dir = part_dir
        arrays = {}
        for name in _ARRAYS:
            path = os.path.join(part_dir, name + ".npy")
            try:
                arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise BertFormatError(f"{path}: missing (incomplete conversion?)") from None
            except ValueError as e:  # numpy: truncated or damaged file
                raise BertFormatError(f"{path}: not a readable .npy array ({e})") from None
        self.__dict__.update(arrays)
        n = len(self.next_sentence_labels)
        problems = []
        if n != expected:
            problems.append(f"{n} sequences, index.json says {expected}")
        if len(self.sequence_offsets) != n + 1 or len(self.prediction_offsets) != n + 1 or \
                len(self.segment_b_start) != n:
            problems.append("per-sequence arrays disagree in length")
        elif n and (self.sequence_offsets[-1] != len(self.input_ids) or
                    self.prediction_offsets[-1] != len(self.masked_lm_positions) or
                    len(self.masked_lm_ids) != len(self.masked_lm_positions)):
            problems.append("offsets do not end at the token / prediction counts")
        if problems:
            raise BertFormatError(f"{part_dir}: {'; '.join(problems)}")

    def __len__(self) -> int:
        return len(self.next_sentence_labels)

    def sequence(self, i: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, int]:
        """(tokens, segment B start, masked positions, masked ids, nsp label) of sequence i."""
        t0, t1 = self.sequence_offsets[i], self.sequence_offsets[i + 1]
        p0, p1 = self.prediction_offsets[i], self.prediction_offsets[i + 1]
        return (self.input_ids[t0:t1], int(self.segment_b_start[i]), self.masked_lm_positions[p0:p1],
                self.masked_lm_ids[p0:p1], int(self.next_sentence_labels[i]))

    def padded_example(self, i: int, max_seq_length: int, max_predictions: int) -> dict[str, np.ndarray]:
        """Sequence i as the TFRecord example it came from (the converter's inverse)."""
        tokens, b_start, positions, labels, nsp = self.sequence(i)
        length, count = len(tokens), len(positions)
        ex = {name: np.zeros(max_seq_length, np.int64) for name in ("input_ids", "input_mask", "segment_ids")}
        ex["input_ids"][:length] = tokens
        ex["input_mask"][:length] = 1
        ex["segment_ids"][b_start:length] = 1
        ex.update({name: np.zeros(max_predictions, np.int64) for name in ("masked_lm_positions", "masked_lm_ids")})
        ex["masked_lm_positions"][:count] = positions
        ex["masked_lm_ids"][:count] = labels
        ex["masked_lm_weights"] = (np.arange(max_predictions) < count).astype(np.float32)
        ex[LABEL_FEATURE] = np.array([nsp], np.int64)
        return ex


class SequenceStore:
    """All parts of a store as one indexable collection of sequences."""

    def __init__(self, store_dir: str):
        path = os.path.join(store_dir, "index.json")
        try:
            with open(path) as f:
                index = json.load(f)
        except FileNotFoundError:
            raise BertFormatError(f"{path}: missing; convert the TFRecords first "
                                  "(python -m pipelines.bert.prepare.convert)") from None
        except json.JSONDecodeError as e:
            raise BertFormatError(f"{path}: not valid JSON ({e})") from None
        if index.get("format") != FORMAT:
            raise BertFormatError(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}")
        self.dir = store_dir
        self.max_seq_length = index["max_seq_length"]
        self.max_predictions = index["max_predictions_per_seq"]
        self.parts = [StorePart(os.path.join(store_dir, name), n) for name, n in index["parts"]]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, i: int) -> tuple[StorePart, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} outside the store's {len(self)}")
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[part], i - int(self.starts[part])

    def sequence(self, i: int):
        part, local = self.locate(i)
        return part.sequence(local)
