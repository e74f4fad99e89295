"""GPT samples from Megatron indexed datasets, visited in the order the MLPerf reference visits them.

The reference (mlcommons/training `large_language_model/megatron-lm` at v4.0: `megatron/data/gpt_dataset.py`,
`blendable_dataset.py`, `dataset_utils.py`, `helpers.cpp`; `run_gpt3.sh` passes `--train-data-path "0.5 en_6
0.5 en_7"`, `--no-seq-len-plus-one-tokens` and `--seed`) builds, from the seed alone:

* per file, `ceil(N * w * 1.005)` samples for the blend's N and the file's normalised weight w (`samples_per_dataset`);
* per file, epochs E = the fewest passes over its documents that hold those samples, and a document index: the
  documents in file order, E times. The reference commented out Megatron's document shuffle ("disabled documents
  shuffling"); megatron-core still shuffles them with the same RandomState (`shuffle_documents=True`). When the
  last epoch would give fewer than 80% of an epoch's samples, it is kept apart ("separate last epoch");
* a sample index: the token stream of the document index cut into L-token samples, the last partial one
  dropped. `--no-seq-len-plus-one-tokens` makes samples exactly L tokens with no overlap; megatron-core's default
  `add_extra_token_to_sequence=True` (`add_extra_token=True` here) reads L+1 tokens and starts the next sample
  at the last of them;
* a shuffle index: a `numpy.random.RandomState(seed)` permutation of ALL samples of the E epochs (with a separate
  last epoch: one of the first E-1 epochs' samples followed by one of the last epoch's);
* the blend: Megatron's greedy interleave (`blending_indices`): sample i comes from the file whose share lags its
  weight the most (ties to the lower index); the k-th sample taken from a file is its sample shuffle_index[k].

tests/pipelines/test_megatron_data.py checks the token arrays against megatron-core's own GPTDataset and
BlendedDataset in both configurations (the reference's = megatron-core with the document shuffle removed and
`add_extra_token_to_sequence=False`; and megatron-core's defaults). Without a document shuffle, the order of a
file's first-epoch samples does not depend on N as long as E is 1 or E is 2 with a separate last epoch, which
holds for the C4 files (≈10.5M samples an epoch each, at ≈470 tokens a document) at any N up to the reference's
--train-samples 20M.

Samples are dicts of int64 `tokens` and `labels` (labels = the tokens shifted left; with L-token samples the
last position has no label: -1, masked, so 2047 tokens are predicted per sample).

Validation (`ValidationSamples`): the validation documents in file order, chunked into L tokens without
shuffling; the last partial sample is padded and its missing labels are -1 (masked). (The reference shuffles
validation samples too, but evaluates all of them into one token mean, so the order does not matter.)

The doc, sample, shuffle and blend index arrays are cached as .npy files keyed by everything they depend on,
so a second run (or every other rank) loads them instead of rebuilding.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np

from pipelines.megatron_data.indexed import IndexedDataset
from runtime.atomic_write import atomic_open

IGNORE = -1
MARGIN = 1.005  # dataset_utils.get_datasets_weights_and_num_samples: samples built per file beyond its share
LAST_EPOCH_THRESHOLD = 0.80  # a last epoch giving fewer than this fraction of an epoch's samples is kept apart
INDEX_FORMAT = 2  # part of every cache key: bump when the arrays' meaning changes


def _save_atomic(path: str, array: np.ndarray) -> None:
    with atomic_open(path) as f:  # every rank may build the same cache at once: unique temporaries
        np.save(f, array, allow_pickle=False)


def _cached(cache_dir: str, key: str, names: tuple[str, ...], build) -> dict:
    """{name: array}, loaded from cache_dir when every file of `key` is there, else `build()` and saved."""
    paths = {name: os.path.join(cache_dir, f"{key}_{name}.npy") for name in names}
    if all(os.path.exists(p) for p in paths.values()):
        return {name: np.load(p, mmap_mode="r") for name, p in paths.items()}
    os.makedirs(cache_dir, exist_ok=True)
    built = build()
    for name in names:
        _save_atomic(paths[name], built[name])
    return built


def _sample(seq_length: int, text: np.ndarray, extra: int) -> dict:
    text = text.astype(np.int64)
    if extra:
        return {"tokens": text[:-1], "labels": text[1:]}
    labels = np.full(seq_length, IGNORE, dtype=np.int64)
    labels[:-1] = text[1:]
    return {"tokens": text, "labels": labels}


# -- per-file index arrays (megatron gpt_dataset.py) ----------------------------------------------------------------

def num_epochs(tokens_per_epoch: int, num_samples: int, seq_length: int, extra: int) -> int:
    """The fewest epochs whose tokens hold `num_samples` samples (`_num_epochs` / `_get_num_epochs`)."""
    need = num_samples * seq_length + extra
    return max(1, -(-need // tokens_per_epoch))


def separate_last_epoch(tokens_per_epoch: int, epochs: int, num_samples: int, seq_length: int, extra: int) -> bool:
    if epochs == 1:
        return False
    before_last = ((epochs - 1) * tokens_per_epoch - extra) // seq_length
    from_last = num_samples - before_last
    per_epoch = (tokens_per_epoch - extra) // seq_length
    assert 0 <= from_last <= per_epoch + 1, (from_last, per_epoch)
    return from_last < int(LAST_EPOCH_THRESHOLD * per_epoch)


def document_index(num_docs: int, epochs: int, separate_last: bool, rng: np.random.RandomState,
                   shuffle: bool) -> np.ndarray:
    """The documents `epochs` times (`_build_doc_idx` / `_build_document_index`), int32 as Megatron's."""
    if not separate_last or epochs == 1:
        index = np.tile(np.arange(num_docs, dtype=np.int32), epochs)
        if shuffle:
            rng.shuffle(index)
        return index
    return np.concatenate([document_index(num_docs, epochs - 1, False, rng, shuffle),
                           document_index(num_docs, 1, False, rng, shuffle)])


def sample_index(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, count: int) -> np.ndarray:
    """[count, 2]: (position in doc_idx, token offset in that document) where sample k begins, i.e. token
    k * seq_length of the document index's stream (helpers.cpp build_sample_idx, which records the same
    positions, except that a sample starting exactly at a document boundary is recorded there as the end of
    the previous document: the same tokens)."""
    lengths = sizes[doc_idx]
    ends = np.cumsum(lengths, dtype=np.int64)
    begin = np.arange(count, dtype=np.int64) * seq_length
    where = np.searchsorted(ends, begin, side="right")  # the first document ending after `begin`: skips empty ones
    offset = begin - (ends[where] - lengths[where])
    dtype = np.int32 if len(doc_idx) < 2**31 else np.int64
    return np.stack([where.astype(dtype), offset.astype(dtype)], axis=1)


def shuffle_index(first: int, total: int, rng: np.random.RandomState) -> np.ndarray:
    """A permutation of [0, first) followed by one of [first, total) (`_build_shuffle_idx`)."""
    dtype = np.uint32 if total < np.iinfo(np.uint32).max - 1 else np.int64
    head = np.arange(first, dtype=dtype)
    rng.shuffle(head)
    if first == total:
        return head
    tail = np.arange(first, total, dtype=dtype)
    rng.shuffle(tail)
    return np.concatenate([head, tail])


class GPTSamples:
    """One file's samples in the reference's order: `self[i]` is its sample shuffle_idx[i]. `len()` is the
    number asked for; indices up to `samples_built` (all samples of the epochs) are valid."""

    def __init__(self, data: IndexedDataset, num_samples: int, seq_length: int, seed: int, cache_dir: str, *,
                 shuffle_documents: bool = False, add_extra_token: bool = False):
        self.data, self.num_samples, self.seq_length = data, num_samples, seq_length
        self.extra = extra = int(bool(add_extra_token))
        tokens_per_epoch = data.num_tokens
        if tokens_per_epoch < seq_length + extra:
            raise ValueError(f"{data.prefix}: {tokens_per_epoch} tokens, fewer than one sample of {seq_length + extra}")
        self.epochs = num_epochs(tokens_per_epoch, num_samples, seq_length, extra)
        self.separate_last_epoch = separate_last_epoch(tokens_per_epoch, self.epochs, num_samples, seq_length, extra)
        self.samples_built = (self.epochs * tokens_per_epoch - extra) // seq_length
        # The sizes array fingerprints the file's documents, so two datasets with equal counts never share a cache.
        sizes_hash = hashlib.sha1(np.ascontiguousarray(data.sizes).tobytes()).hexdigest()
        ident = (f"v{INDEX_FORMAT}|{os.path.basename(data.prefix)}|{sizes_hash}|{num_samples}|{seq_length}|{seed}|"
                 f"shuffle_documents={bool(shuffle_documents)}|extra={extra}")
        key = f"{os.path.basename(data.prefix)}_{hashlib.sha1(ident.encode()).hexdigest()[:16]}"

        def build() -> dict:
            rng = np.random.RandomState(seed % 2**32)  # one generator, drawn in Megatron's order
            doc_idx = document_index(len(data), self.epochs, self.separate_last_epoch, rng, shuffle_documents)
            samples = sample_index(data.sizes, doc_idx, seq_length, self.samples_built)
            first = ((self.epochs - 1) * tokens_per_epoch - extra) // seq_length if self.separate_last_epoch \
                else self.samples_built
            return {"doc_idx": doc_idx, "sample_idx": samples,
                    "shuffle_idx": shuffle_index(first, self.samples_built, rng)}

        arrays = _cached(cache_dir, key, ("doc_idx", "sample_idx", "shuffle_idx"), build)
        self.doc_idx, self.sample_idx, self.shuffle_idx = arrays["doc_idx"], arrays["sample_idx"], arrays["shuffle_idx"]

    def __len__(self) -> int:
        return self.num_samples

    def text(self, i: int) -> np.ndarray:
        """The seq_length (+1 with the extra token) tokens of sample i, in the file's dtype."""
        where, offset = (int(v) for v in self.sample_idx[int(self.shuffle_idx[i])])
        pieces, need = [], self.seq_length + self.extra
        while need:
            doc = int(self.doc_idx[where])
            take = min(need, int(self.data.sizes[doc]) - offset)
            if take > 0:
                pieces.append(self.data.get(doc, offset, take))
                need -= take
            where, offset = where + 1, 0
        return np.concatenate(pieces)

    def __getitem__(self, i: int) -> dict:
        return _sample(self.seq_length, self.text(i), self.extra)


# -- the blend (megatron blendable_dataset.py / blended_dataset.py, helpers.cpp build_blending_indices) ---------------

def normalised_weights(weights) -> list[float]:
    """The weights divided by their sum as the reference's get_datasets_weights_and_num_samples does."""
    w = [float(v) for v in weights]
    if not w or any(not v > 0 for v in w):
        raise ValueError(f"blend weights must be positive: {list(weights)}")
    total = 0.0
    for v in w:
        total += v
    return [v / total for v in w]


def samples_per_dataset(weights, num_samples: int) -> list[int]:
    """Samples built per file for a blend of `num_samples`: ceil(N * w * 1.005) (the reference's formula;
    megatron-core's ceil(ceil(N * w) * 1.005) is the same whenever N * w is whole, as for 0.5/0.5 and even N)."""
    return [int(math.ceil(num_samples * w * MARGIN)) for w in normalised_weights(weights)]


_RESYNC_STEPS = 64  # greedy steps run one by one after a candidate mismatch before a new candidate is drawn


def _greedy_step(w: list[float], counts: list[int], i: int) -> int:
    """helpers.cpp: the dataset with the largest w * max(i, 1) - count, in double precision, ties to the lowest."""
    x = max(float(i), 1.0)
    best, err = 0, w[0] * x - counts[0]
    for d in range(1, len(w)):
        e = w[d] * x - counts[d]
        if e > err:
            best, err = d, e
    return best


def _candidates(w: np.ndarray, counts: list[int], size: int) -> np.ndarray:
    """Up to `size` next choices, merging each dataset's picks by the time k / w_d its k-th pick falls due.
    For two datasets this is the greedy choice in exact arithmetic (choose 0 iff count_0 <= w_0 * i, and
    count_0 / w_0 <= count_1 / w_1 is the same condition); floating-point ties and more datasets may differ,
    which `blending_indices` checks against the greedy rule and repairs."""
    m = np.ceil(w * size).astype(np.int64) + 2
    keys = np.concatenate([(counts[d] + np.arange(m[d], dtype=np.float64)) / w[d] for d in range(len(w))])
    owner = np.repeat(np.arange(len(w), dtype=np.int64), m)
    # Beyond the smallest last key a dataset's missing picks could come first: keep only keys below it.
    limit = min((counts[d] + m[d] - 1) / w[d] for d in range(len(w)))
    order = np.argsort(keys, kind="stable")  # stable: equal keys stay in dataset order (ties to the lowest)
    return owner[order[keys[order] < limit]][:size]


def blending_indices(weights, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Megatron's helpers.build_blending_indices: (dataset of sample i, its index within that dataset), exactly,
    with the weights normalised by numpy as BlendedDataset does.

    Vectorised: a candidate sequence (`_candidates`) is checked in one pass by computing Megatron's choice at
    every position from the candidate's own running counts; up to the first disagreement the candidate is
    Megatron's sequence. From there the greedy rule runs step by step until the counts agree with the
    candidate's again (a floating-point tie flips two neighbours, then they agree), and the check resumes."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not 0 < len(w) < 32767 or not np.all(w > 0):
        raise ValueError(f"blend weights must be 1 to 32766 positive numbers: {weights!r}")
    w = w / np.sum(w)
    k, wl = len(w), w.tolist()
    index = np.empty(num_samples, dtype=np.int16)
    counts, i, chunk, stepped = [0] * k, 0, 1 << 14, 0
    rows = np.arange(k)[:, None]
    while i < num_samples:
        cand = _candidates(w, counts, min(chunk, num_samples - i))
        n = len(cand)
        onehot = cand[None, :] == rows
        before = np.cumsum(onehot, axis=1, dtype=np.int64)
        before -= onehot
        before += np.asarray(counts, dtype=np.int64)[:, None]
        x = np.maximum(np.arange(i, i + n, dtype=np.float64), 1.0)
        chosen = np.argmax(w[:, None] * x[None, :] - before, axis=0)  # first maximum: ties to the lowest index
        pos, stop = 0, n
        for t in np.flatnonzero(chosen != cand).tolist():
            if t < pos:
                continue
            index[i + pos:i + t] = cand[pos:t]
            c, s = before[:, t].tolist(), t
            while True:
                d = _greedy_step(wl, c, i + s)
                index[i + s] = d
                c[d] += 1
                s += 1
                if s == n or s - t >= _RESYNC_STEPS or c == before[:, s].tolist():
                    break
            stepped += s - t
            if s == n or c != before[:, s].tolist():
                stop = s  # not back on the candidate: draw a new one from the true counts
                break
            pos = s
        else:
            index[i + pos:i + n] = cand[pos:n]
            c = (before[:, n - 1] + onehot[:, n - 1]).tolist()
        counts, i = c, i + stop
        if i >= 4096 and stepped * 4 > i:  # the candidate is poor for these weights: Megatron's loop is faster
            for j in range(i, num_samples):
                d = _greedy_step(wl, counts, j)
                index[j] = d
                counts[d] += 1
            break
        chunk = min(chunk * 2, 1 << 18) if stop == n else max(1024, 2 * stop)
    within = np.empty(num_samples, dtype=np.int64)
    for d in range(k):
        mask = index == d
        within[mask] = np.arange(int(np.count_nonzero(mask)), dtype=np.int64)
    return index, within


class BlendedSamples:
    """The blend's samples [consumed_samples, consumed_samples + num_samples) as self[0 .. num_samples).

    `consumed_samples` is where training starts in the blend: the reference, resuming from the 4000-step
    checkpoint, sets Megatron's consumed_train_samples to --ext-lr-steps = 4000 * 1536, so its first global
    batch is blend samples [6 144 000, 6 144 000 + GBS)."""

    def __init__(self, datasets: list[IndexedDataset], weights, num_samples: int, seq_length: int, seed: int,
                 cache_dir: str, *, consumed_samples: int = 0, shuffle_documents: bool = False,
                 add_extra_token: bool = False):
        if consumed_samples < 0 or num_samples < 0:
            raise ValueError(f"consumed_samples={consumed_samples}, num_samples={num_samples}: must be >= 0")
        w = normalised_weights(weights)
        if len(w) != len(datasets):
            raise ValueError(f"{len(datasets)} datasets but {len(w)} weights")
        total = consumed_samples + num_samples
        self.parts = [GPTSamples(d, n, seq_length, seed, cache_dir, shuffle_documents=shuffle_documents,
                                 add_extra_token=add_extra_token)
                      for d, n in zip(datasets, samples_per_dataset(w, total))]
        ident = f"v{INDEX_FORMAT}|" + "|".join(os.path.basename(d.prefix) for d in datasets) + f"|{w}|{total}"
        ident += f"|{consumed_samples}|" + "|".join(str(len(p)) for p in self.parts)
        key = f"blend_{hashlib.sha1(ident.encode()).hexdigest()[:16]}"

        def build() -> dict:
            index, within = blending_indices(w, total)
            for d, part in enumerate(self.parts):
                taken = int(np.count_nonzero(index == d))
                if taken > len(part):
                    raise IndexError(f"the blend takes {taken} samples from {part.data.prefix}, built for {len(part)}")
            return {"dataset_index": index[consumed_samples:], "dataset_sample": within[consumed_samples:]}

        arrays = _cached(cache_dir, key, ("dataset_index", "dataset_sample"), build)
        self.dataset_index, self.dataset_sample = arrays["dataset_index"], arrays["dataset_sample"]
        self.num_samples, self.consumed_samples = num_samples, consumed_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} of a blend of {self.num_samples}")
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
        sample = _sample(self.seq_length, tokens, 0)
        sample["labels"][max(len(real) - 1, 0):] = IGNORE
        return sample

    @property
    def num_predicted_tokens(self) -> int:
        return self.num_tokens - self.num_samples
