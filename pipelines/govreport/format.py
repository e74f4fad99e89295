"""SCROLLS GovReport as MLCommons tokenised it for Llama-2 LoRA: reader and writer of its two on-disk forms.

    parquet   train-00000-of-00001.parquet, validation-00000-of-00001.parquet (the HF dataset
              regisss/scrolls_gov_report_preprocessed_mlperf_2): columns `input_ids` and `labels`, lists of
              `seq_length` ints; labels are -100 where no loss is taken (prompt, padding), else the token itself
    npy       train_input_ids.npy / train_loss_mask.npy, validation_input_ids.npy / validation_loss_mask.npy:
              the same rows as plain [rows, seq_length] arrays (int32 ids, bool mask = labels != -100).
              NVIDIA stores these fields as pickled dicts in one .npy; we never unpickle, so
              prepare/convert_to_npy.py writes this form from the parquet files instead (lossless).

`GovReportSplit` holds one split as `input_ids` and `loss_mask` ([rows, seq_length], aligned: the mask says
which tokens are predicted). The causal-LM target of position p is the token at p + 1 (HF's shift), taken
where loss_mask[p + 1]: `training_pair(i)` returns (tokens, targets, target mask) in that form.

The debug flavour's data, in the same layout, is written by pipelines/govreport/synthetic.py.
"""

from __future__ import annotations

import os

import numpy as np

IGNORE = -100
PARQUET = {"train": "train-00000-of-00001.parquet", "validation": "validation-00000-of-00001.parquet"}
SPLITS = tuple(PARQUET)


class FormatError(ValueError):
    pass


def npy_paths(directory: str, split: str) -> tuple[str, str]:
    return (os.path.join(directory, f"{split}_input_ids.npy"), os.path.join(directory, f"{split}_loss_mask.npy"))


class GovReportSplit:
    def __init__(self, input_ids: np.ndarray, loss_mask: np.ndarray, source: str):
        self.input_ids, self.loss_mask, self.source = input_ids, loss_mask, source

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_length(self) -> int:
        return self.input_ids.shape[1]

    def training_pair(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, targets, mask) of row i, int64/int64/float32 [seq_length]: targets[p] = tokens[p + 1]."""
        ids = np.asarray(self.input_ids[i], dtype=np.int64)
        targets = np.concatenate([ids[1:], np.zeros(1, dtype=np.int64)])
        mask = np.concatenate([np.asarray(self.loss_mask[i][1:], dtype=np.float32), np.zeros(1, np.float32)])
        return ids, targets, mask

    def check(self, seq_length: int, vocab_size: int, rows: int = 0) -> None:
        """Shape, token range and that every row predicts something; raises naming the source."""
        if self.input_ids.ndim != 2 or self.input_ids.shape != self.loss_mask.shape:
            raise FormatError(f"{self.source}: input_ids {self.input_ids.shape} and loss_mask "
                              f"{self.loss_mask.shape} must be equal [rows, seq_length] arrays")
        if self.seq_length != seq_length:
            raise FormatError(f"{self.source}: rows of {self.seq_length} tokens, the model takes {seq_length}")
        if rows and len(self) != rows:
            raise FormatError(f"{self.source}: {len(self)} rows, the config says {rows}")
        lo, hi = int(self.input_ids.min()), int(self.input_ids.max())
        if lo < 0 or hi >= vocab_size:
            raise FormatError(f"{self.source}: token ids in [{lo}, {hi}], outside the vocabulary [0, {vocab_size})")
        empty = np.flatnonzero(~np.asarray(self.loss_mask[:, 1:]).any(axis=1))
        if empty.size:
            raise FormatError(f"{self.source}: row {int(empty[0])} has no labelled token after the first "
                              f"({empty.size} such rows)")


def _check_labels(ids: np.ndarray, labels: np.ndarray, path: str) -> np.ndarray:
    """The loss mask of `labels`: -100 or the token itself, nothing else."""
    mask = labels != IGNORE
    bad = np.argwhere(mask & (labels != ids))
    if bad.size:
        r, c = (int(x) for x in bad[0])
        raise FormatError(f"{path}: row {r} position {c}: label {int(labels[r, c])} is neither -100 nor the "
                          f"token {int(ids[r, c])} ({len(bad)} such labels)")
    return mask


def _column(table, name: str, path: str, seq_length: int) -> np.ndarray:
    import pyarrow as pa

    if name not in table.column_names:
        raise FormatError(f"{path}: missing column {name!r} (has {table.column_names})")
    column = table.column(name).combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) \
            or not pa.types.is_integer(column.type.value_type):
        raise FormatError(f"{path}: column {name!r} is {column.type}, expected lists of integers")
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != seq_length)
    if wrong.size:
        raise FormatError(f"{path}: column {name!r} row {int(wrong[0])} has {int(lengths[wrong[0]])} tokens, "
                          f"expected {seq_length} ({wrong.size} such rows)")
    if column.null_count:
        raise FormatError(f"{path}: column {name!r} has {column.null_count} null rows")
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.int64).reshape(len(column), seq_length)


def read_parquet(path: str, seq_length: int) -> GovReportSplit:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=None)
    except FileNotFoundError:
        raise FormatError(f"{path}: missing") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise FormatError(f"{path}: not a readable parquet file ({e})") from e
    ids = _column(table, "input_ids", path, seq_length)
    labels = _column(table, "labels", path, seq_length)
    return GovReportSplit(ids, _check_labels(ids, labels, path), path)


def read_npy(directory: str, split: str) -> GovReportSplit:
    ids_path, mask_path = npy_paths(directory, split)
    arrays = []
    for path, kinds in ((ids_path, "iu"), (mask_path, "b")):
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise FormatError(f"{path}: missing") from None
        except ValueError as e:  # object arrays (NVIDIA's pickled dicts) and truncated files land here
            raise FormatError(f"{path}: not a plain numeric .npy array ({e}); NVIDIA's pickled train.npy is "
                              "not read: convert the parquet files with pipelines/govreport/prepare") from e
        if a.dtype.kind not in kinds or a.ndim != 2:
            raise FormatError(f"{path}: {a.dtype} array of shape {a.shape}, expected a 2-D "
                              f"{'integer' if kinds == 'iu' else 'bool'} array")
        arrays.append(a)
    return GovReportSplit(arrays[0], arrays[1], ids_path)


def read_split(directory: str, split: str, fmt: str, seq_length: int) -> GovReportSplit:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    if fmt == "parquet":
        return read_parquet(os.path.join(directory, PARQUET[split]), seq_length)
    if fmt == "npy":
        return read_npy(directory, split)
    raise ValueError(f"data.format={fmt!r}: expected parquet or npy")


def write_parquet(path: str, input_ids: np.ndarray, labels: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"input_ids": pa.array(list(input_ids.astype(np.int64))),
                      "labels": pa.array(list(labels.astype(np.int64))),
                      "attention_mask": pa.array(list(np.ones_like(input_ids, dtype=np.int64)))})
    pq.write_table(table, path)


def write_npy(directory: str, split: str, input_ids: np.ndarray, labels: np.ndarray) -> None:
    ids_path, mask_path = npy_paths(directory, split)
    np.save(ids_path, input_ids.astype(np.int32))
    np.save(mask_path, labels != IGNORE)
