"""Batches for the model: a fixed number of sequences per micro-batch, packed several to a row or one each.

Packing fills rows of T tokens with up to `max_per_row` sequences (first-fit decreasing over the
micro-batch), as NVIDIA's packed BERT (packing factor 2 on Wikipedia, whose sequences are mostly much
shorter than 512). Every micro-batch holds exactly its S sequences whatever the packing, so a step
trains exactly global_batch_size samples, the unit of the RCPs and of the eval cadence; the number
of rows R is what varies (`row_multiple` rounds it up to limit the distinct shapes).

Inside a row, each sequence keeps its own [CLS] ... [SEP] ... [SEP], segment ids, positions from 0
and predictions; `sequence_ids` (1, 2, ... per sequence, 0 for padding) let the model keep attention
within a sequence. Predictions and NSP labels are listed sequence by sequence in the order the
sequences were given, so packed and unpacked batches of the same sequences give the same loss:
    mlm_positions / mlm_labels   [M]  flat token index into R * T of every real prediction, its label
                                      (M = the micro-batch's predictions: no padding slots, so the
                                      vocabulary projection and softmax run on real ones only)
    nsp_positions / nsp_labels   [S]  flat index of each sequence's [CLS], label
    cu_seqlens                   [R * (max_per_row + 1) + 1]  int32 run boundaries over the R * T
                                 tokens (each sequence, then the row's padding run), for fused
                                 variable-length attention; zero-length runs pad it to a fixed size
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

# (tokens, segment B start, masked positions, masked ids, nsp label), as SequenceStore.sequence returns
Sequence = tuple[np.ndarray, int, np.ndarray, np.ndarray, int]


@dataclass
class PretrainingBatch:
    input_ids: torch.Tensor
    segment_ids: torch.Tensor
    position_ids: torch.Tensor
    sequence_ids: torch.Tensor
    mlm_positions: torch.Tensor
    mlm_labels: torch.Tensor
    nsp_positions: torch.Tensor
    nsp_labels: torch.Tensor
    cu_seqlens: torch.Tensor

    @property
    def num_sequences(self) -> int:
        return int(self.nsp_labels.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of BertForPretraining.forward."""
        return {"input_ids_RT": self.input_ids, "segment_ids_RT": self.segment_ids,
                "position_ids_RT": self.position_ids, "sequence_ids_RT": self.sequence_ids,
                "mlm_positions_M": self.mlm_positions, "nsp_positions_S": self.nsp_positions,
                "cu_seqlens": self.cu_seqlens}

    def to(self, device: torch.device, non_blocking: bool = False) -> "PretrainingBatch":
        return PretrainingBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                   for f in fields(self)})

    def pin_memory(self) -> "PretrainingBatch":
        return PretrainingBatch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


def assign_rows(lengths: np.ndarray, row_tokens: int, max_per_row: int) -> tuple[np.ndarray, np.ndarray, int]:
    """First-fit decreasing: (row, token offset) of each sequence and the number of rows used."""
    if len(lengths) and lengths.max() > row_tokens:
        raise ValueError(f"a sequence of {lengths.max()} tokens does not fit a row of {row_tokens}")
    rows, offsets = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64)
    used = np.zeros(len(lengths), np.int64)  # tokens per row; at most one row per sequence
    counts = np.zeros(len(lengths), np.int64)
    num_rows = 0
    for i in np.argsort(-lengths, kind="stable"):
        fits = np.flatnonzero((used[:num_rows] + lengths[i] <= row_tokens) & (counts[:num_rows] < max_per_row))
        row = int(fits[0]) if fits.size else num_rows
        num_rows += not fits.size
        rows[i], offsets[i] = row, used[row]
        used[row] += lengths[i]
        counts[row] += 1
    return rows, offsets, num_rows


def build_batch(sequences: list[Sequence], row_tokens: int, max_predictions: int, max_per_row: int = 1,
                row_multiple: int = 1) -> PretrainingBatch:
    """The batch of `sequences` in rows of `row_tokens`; max_per_row 1 is the unpacked layout (row i
    holds sequence i, as the TFRecords have it)."""
    S, T, P = len(sequences), row_tokens, max_predictions
    lengths = np.array([len(s[0]) for s in sequences], np.int64)
    rows, offsets, R = assign_rows(lengths, T, max_per_row)
    R = -(-max(R, 1) // row_multiple) * row_multiple
    input_ids, segment_ids, position_ids, sequence_ids = (np.zeros((R, T), np.int64) for _ in range(4))
    mlm_positions, mlm_labels = [], []
    nsp_positions, nsp_labels = np.zeros(S, np.int64), np.zeros(S, np.int64)
    runs = [[] for _ in range(R)]  # (offset, length) of each sequence in each row
    for i, (tokens, b_start, positions, labels, nsp) in enumerate(sequences):
        row, start, length = rows[i], offsets[i], lengths[i]
        span = slice(start, start + length)
        input_ids[row, span] = tokens
        segment_ids[row, start + b_start:start + length] = 1
        position_ids[row, span] = np.arange(length)
        sequence_ids[row, span] = len(runs[row]) + 1
        runs[row].append((start, length))
        if len(positions) > P:
            raise ValueError(f"sequence {i} has {len(positions)} predictions, more than max_predictions {P}")
        mlm_positions.append(row * T + start + np.asarray(positions, np.int64))
        mlm_labels.append(np.asarray(labels, np.int64))
        nsp_positions[i], nsp_labels[i] = row * T + start, nsp
    bounds = [0]
    for row, row_runs in enumerate(runs):
        for start, length in sorted(row_runs):
            bounds.append(row * T + start + length)
        if bounds[-1] != (row + 1) * T:
            bounds.append((row + 1) * T)  # the padding run
    bounds += [R * T] * (R * (max_per_row + 1) + 1 - len(bounds))
    as_tensor = torch.from_numpy

    def flat(parts):
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    return PretrainingBatch(as_tensor(input_ids), as_tensor(segment_ids), as_tensor(position_ids),
                            as_tensor(sequence_ids.astype(np.int32)), as_tensor(flat(mlm_positions)),
                            as_tensor(flat(mlm_labels)), as_tensor(nsp_positions), as_tensor(nsp_labels),
                            torch.tensor(bounds, dtype=torch.int32))


def random_sequences(rng: np.random.Generator, count: int, vocab_size: int, max_seq_length: int,
                     max_predictions: int, min_length: int = 8) -> list[Sequence]:
    """Well-formed random sequences (for warm-up and tests): [CLS]=first id, a B segment, predictions."""
    out = []
    for _ in range(count):
        length = int(rng.integers(min_length, max_seq_length + 1))
        tokens = rng.integers(1, vocab_size, length)
        b_start = int(rng.integers(2, length - 1))
        count_pred = int(min(max_predictions, max(1, round(0.15 * length))))
        positions = np.sort(rng.choice(np.arange(1, length), count_pred, replace=False))
        out.append((tokens, b_start, positions, rng.integers(0, vocab_size, count_pred), int(rng.integers(0, 2))))
    return out
