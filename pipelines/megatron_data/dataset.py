"""GPT samples from Megatron indexed datasets, built as the MLPerf reference builds them.

Training (`GPTSamples`): the documents of one file, repeated for as many epochs as `num_samples` needs and
shuffled with the seed, form one token stream; sample k is stream tokens [k*L, (k+1)*L) (L = 2048, the
reference's --no-seq-len-plus-one-tokens: samples cross document boundaries and do not overlap); samples
are then visited in a seeded permutation. Labels are the tokens shifted left; the last position has no
label and is masked, so 2047 tokens are predicted per sample.

Blend (`BlendedSamples`): Megatron's greedy interleave: sample i goes to the dataset whose share lags its
weight the most (0.5/0.5 alternates en_6, en_7), each dataset built for ceil(w * N * 1.005) samples.

Validation (`ValidationSamples`): the validation documents in file order, chunked into L tokens without
shuffling; the last partial sample is padded and its missing labels are -1 (masked).

The doc, sample and shuffle index arrays are cached as .npy files keyed by everything they depend on, so a
second run (or every other rank) loads them instead of rebuilding.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np

from pipelines.megatron_data.indexed import IndexedDataset

IGNORE = -1


def _save_atomic(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, path)


def _cached(cache_dir: str, key: str, builders: dict) -> dict:
    """{name: array}, loaded from cache_dir when every file of `key` is there, else built and saved."""
    paths = {name: os.path.join(cache_dir, f"{key}_{name}.npy") for name in builders}
    if all(os.path.exists(p) for p in paths.values()):
        return {name: np.load(p, mmap_mode="r") for name, p in paths.items()}
    os.makedirs(cache_dir, exist_ok=True)
    built = {}
    for name, build in builders.items():
        built[name] = build(built)
        _save_atomic(paths[name], built[name])
    return built


def _sample(shape_len: int, tokens: np.ndarray) -> dict:
    tokens = tokens.astype(np.int64)
    labels = np.full(shape_len, IGNORE, dtype=np.int64)
    labels[:-1] = tokens[1:]
    return {"tokens": tokens, "labels": labels}


class GPTSamples:
    def __init__(self, data: IndexedDataset, num_samples: int, seq_length: int, seed: int, cache_dir: str):
        self.data, self.num_samples, self.seq_length = data, num_samples, seq_length
        tokens_per_epoch = data.num_tokens
        if tokens_per_epoch < seq_length:
            raise ValueError(f"{data.prefix}: {tokens_per_epoch} tokens, fewer than one sample of {seq_length}")
        self.epochs = max(1, math.ceil(num_samples * seq_length / tokens_per_epoch))
        # The sizes array fingerprints the file's documents, so two datasets with equal counts never share a cache.
        sizes_hash = hashlib.sha1(np.ascontiguousarray(data.sizes).tobytes()).hexdigest()
        ident = f"{os.path.basename(data.prefix)}|{sizes_hash}|{num_samples}|{seq_length}|{seed}"
        key = f"{os.path.basename(data.prefix)}_{hashlib.sha1(ident.encode()).hexdigest()[:16]}"
        rng = np.random.RandomState(seed % 2**32)

        def doc_idx(_):
            order = np.tile(np.arange(len(data), dtype=np.int32), self.epochs)
            rng.shuffle(order)
            return order

        def sample_idx(built):
            # (document position in doc_idx, offset in that document) where each sample starts.
            sizes = data.sizes[built["doc_idx"]].astype(np.int64)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            begin = np.arange(num_samples, dtype=np.int64) * seq_length
            where = np.searchsorted(starts, begin, side="right") - 1
            return np.stack([where, begin - starts[where]], axis=1)

        def shuffle_idx(_):
            order = np.arange(num_samples, dtype=np.int64)
            rng.shuffle(order)
            return order

        arrays = _cached(cache_dir, key, {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": shuffle_idx})
        self.doc_idx, self.sample_idx, self.shuffle_idx = arrays["doc_idx"], arrays["sample_idx"], arrays["shuffle_idx"]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        where, offset = (int(v) for v in self.sample_idx[self.shuffle_idx[i]])
        pieces, need = [], self.seq_length
        while need:
            doc = int(self.doc_idx[where])
            take = min(need, int(self.data.sizes[doc]) - offset)
            if take > 0:
                pieces.append(self.data.get(doc, offset, take))
                need -= take
            where, offset = where + 1, 0
        return _sample(self.seq_length, np.concatenate(pieces))


def blending_indices(weights, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Megatron's helpers.build_blending_indices: (dataset of sample i, its index within that dataset)."""
    weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    dataset_index = np.empty(num_samples, dtype=np.int16)
    dataset_sample = np.empty(num_samples, dtype=np.int64)
    counts = np.zeros(len(weights), dtype=np.int64)
    for i in range(num_samples):
        chosen = int(np.argmax(weights * max(i, 1) - counts))
        dataset_index[i], dataset_sample[i] = chosen, counts[chosen]
        counts[chosen] += 1
    return dataset_index, dataset_sample


class BlendedSamples:
    def __init__(self, datasets: list[IndexedDataset], weights, num_samples: int, seq_length: int, seed: int,
                 cache_dir: str):
        w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.parts = [GPTSamples(d, math.ceil(wi * num_samples * 1.005), seq_length, seed, cache_dir)
                      for d, wi in zip(datasets, w)]
        ident = "|".join(os.path.basename(d.prefix) for d in datasets) + f"|{list(w)}|{num_samples}"
        ident += "|" + "|".join(str(len(p)) for p in self.parts)
        key = f"blend_{hashlib.sha1(ident.encode()).hexdigest()[:16]}"
        arrays = _cached(cache_dir, key, {"dataset_index": lambda _: blending_indices(w, num_samples)[0],
                                          "dataset_sample": lambda _: blending_indices(w, num_samples)[1]})
        self.dataset_index, self.dataset_sample = arrays["dataset_index"], arrays["dataset_sample"]
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        return self.parts[int(self.dataset_index[i])][int(self.dataset_sample[i])]


class ValidationSamples:
    def __init__(self, data: IndexedDataset, seq_length: int):
        self.data, self.seq_length = data, seq_length
        self.num_tokens = data.num_tokens
        self.num_samples = math.ceil(self.num_tokens / seq_length)
        self.starts = np.concatenate([[0], np.cumsum(data.sizes.astype(np.int64))])

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        begin = i * self.seq_length
        end = min(begin + self.seq_length, self.num_tokens)
        doc = int(np.searchsorted(self.starts, begin, side="right") - 1)
        pieces, pos = [], begin
        while pos < end:
            offset = pos - int(self.starts[doc])
            take = min(end - pos, int(self.data.sizes[doc]) - offset)
            if take > 0:
                pieces.append(self.data.get(doc, offset, take))
                pos += take
            doc += 1
        real = np.concatenate(pieces).astype(np.int64)
        tokens = np.zeros(self.seq_length, dtype=np.int64)  # padding positions carry token 0, never a label
        tokens[: len(real)] = real
        sample = _sample(self.seq_length, tokens)
        sample["labels"][max(len(real) - 1, 0):] = IGNORE
        return sample

    @property
    def num_predicted_tokens(self) -> int:
        return self.num_tokens - self.num_samples
