"""A learnable GovReport in the real layout (pipelines/govreport/format.py), the debug flavour's data.

Each row is a summary task: [BOS, "summarize", document, "summary:", summary, EOS], where the document's
tokens are its topic token with probability 1/2 and otherwise uniform over the other content tokens, and the
summary repeats the topic; the loss covers the summary and EOS, as the real labels cover the summary.
"""

from __future__ import annotations

import os

import numpy as np

from pipelines.govreport.format import IGNORE, PARQUET, write_npy, write_parquet

# The synthetic task's special tokens; content tokens are FIRST_CONTENT..vocab-1.
PAD, BOS, EOS, SUMMARIZE, SUMMARY, FIRST_CONTENT = 0, 1, 2, 3, 4, 5


def synthetic_rows(rows: int, seq_length: int, vocab: int, summary_tokens: int, rng: np.random.Generator,
                   doc_tokens: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels) of the summary task (module docstring), padded with PAD to seq_length."""
    doc = doc_tokens or seq_length - summary_tokens - 4
    if doc < 8 or doc + summary_tokens + 4 > seq_length or vocab - FIRST_CONTENT < 4:
        raise ValueError(f"synthetic GovReport: {doc} document + {summary_tokens} summary tokens do not fit "
                         f"{seq_length} (or vocabulary {vocab} is too small)")
    content = vocab - FIRST_CONTENT
    ids = np.full((rows, seq_length), PAD, dtype=np.int64)
    labels = np.full((rows, seq_length), IGNORE, dtype=np.int64)
    for r in range(rows):
        topic = rng.integers(content)
        others = (topic + 1 + rng.integers(content - 1, size=doc)) % content  # uniform over the other tokens
        body = np.where(rng.random(doc) < 0.5, topic, others) + FIRST_CONTENT
        answer = np.concatenate([np.full(summary_tokens, topic + FIRST_CONTENT), [EOS]])
        row = np.concatenate([[BOS, SUMMARIZE], body, [SUMMARY], answer])
        ids[r, :len(row)] = row
        labels[r, len(row) - len(answer):len(row)] = answer
    return ids, labels


def write_synthetic(directory: str, *, seq_length: int, vocab: int, train_rows: int, eval_rows: int,
                    summary_tokens: int, seed: int, fmt: str = "parquet", doc_tokens: int = 0) -> None:
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for split, rows in (("train", train_rows), ("validation", eval_rows)):
        ids, labels = synthetic_rows(rows, seq_length, vocab, summary_tokens, rng, doc_tokens)
        if fmt == "parquet":
            write_parquet(os.path.join(directory, PARQUET[split]), ids, labels)
        elif fmt == "npy":
            write_npy(directory, split, ids, labels)
        else:
            raise ValueError(f"format {fmt!r}: expected parquet or npy")
