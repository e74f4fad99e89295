"""A small learnable "C4" in the real file layout: documents from a seeded Markov chain over a few hundred
tokens, each token followed by one of `branching` successors with skewed probabilities, so the
achievable log-perplexity is about the chain's entropy (≈1.2 nats at branching 4) while an untrained
model starts at log(vocab).
"""

from __future__ import annotations

import os

import numpy as np

from pipelines.megatron_data.indexed import write_indexed_dataset


def markov_chain(vocab: int, branching: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    successors = np.stack([rng.choice(vocab, size=branching, replace=False) for _ in range(vocab)])
    probs = 1.0 / np.arange(1, branching + 1) ** 1.5
    return successors, probs / probs.sum()


def chain_entropy(branching: int) -> float:
    probs = 1.0 / np.arange(1, branching + 1) ** 1.5
    probs /= probs.sum()
    return float(-(probs * np.log(probs)).sum())


def markov_documents(num_docs: int, vocab: int, branching: int, lengths: tuple[int, int], seed: int,
                     chain_seed: int):
    successors, probs = markov_chain(vocab, branching, chain_seed)
    rng = np.random.RandomState(seed)
    for _ in range(num_docs):
        n = rng.randint(lengths[0], lengths[1] + 1)
        choice = rng.choice(branching, size=n, p=probs)
        doc = np.empty(n, dtype=np.int64)
        doc[0] = rng.randint(vocab)
        for k in range(1, n):
            doc[k] = successors[doc[k - 1], choice[k]]
        yield doc


def write_synthetic_c4(out_dir: str, train_prefixes, valid_prefix: str, *, vocab: int, train_docs: int,
                       valid_docs: int, doc_tokens: tuple[int, int], branching: int, seed: int) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for i, prefix in enumerate(train_prefixes):
        write_indexed_dataset(os.path.join(out_dir, prefix),
                              markov_documents(train_docs, vocab, branching, doc_tokens, seed + 1 + i, seed))
    write_indexed_dataset(os.path.join(out_dir, valid_prefix),
                          markov_documents(valid_docs, vocab, branching, doc_tokens, seed + 100, seed))
