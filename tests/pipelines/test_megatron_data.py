"""Megatron indexed datasets: our reader/writer against megatron-core's, truncation errors, sample building."""

import numpy as np
import pytest
import torch

from pipelines.megatron_data.dataset import BlendedSamples, GPTSamples, ValidationSamples, blending_indices
from pipelines.megatron_data.indexed import IndexedDataset, IndexedDatasetError, write_indexed_dataset


def _documents(seed=0, count=37):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 50257, size=rng.randint(1, 300)) for _ in range(count)]


def test_files_from_megatron_core_builder_read_back_identically(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    docs = _documents()
    prefix = str(tmp_path / "mc_text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(torch.from_numpy(doc), [len(doc)])
    builder.finalize(prefix + ".idx")
    ours = IndexedDataset(prefix)
    assert len(ours) == len(docs) and ours.dtype == np.uint16
    assert list(ours.doc_idx) == list(range(len(docs) + 1))
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(ours[i], doc)
    np.testing.assert_array_equal(ours.get(3, 1, 5), docs[3][1:6])


def test_our_files_are_byte_identical_to_megatron_cores_and_read_by_it(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexed
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    docs = _documents(1)
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    write_indexed_dataset(ours, docs)
    builder = IndexedDatasetBuilder(theirs + ".bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(torch.from_numpy(doc), [len(doc)])
    builder.finalize(theirs + ".idx")
    for ext in (".bin", ".idx"):
        assert open(ours + ext, "rb").read() == open(theirs + ext, "rb").read(), ext
    mc = MegatronIndexed(ours)
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(mc[i], doc)


@pytest.mark.parametrize("ext,cut", [(".idx", 20), (".idx", -8), (".bin", -1)])
def test_truncated_files_raise_naming_the_file(tmp_path, ext, cut):
    prefix = str(tmp_path / "c4_en_6_c4_spm_text_document")
    write_indexed_dataset(prefix, _documents(2))
    path = prefix + ext
    data = open(path, "rb").read()
    open(path, "wb").write(data[:cut] if cut > 0 else data[:len(data) + cut])
    with pytest.raises(IndexedDatasetError, match=f"{path}: truncated"):
        IndexedDataset(prefix)


def _stream(docs):
    return np.concatenate(docs)


def test_training_samples_cross_documents_with_shifted_masked_labels(tmp_path):
    docs = [np.arange(k * 100, k * 100 + n) for k, n in enumerate([5, 9, 3, 12, 7])]
    prefix = str(tmp_path / "train")
    write_indexed_dataset(prefix, docs)
    data = IndexedDataset(prefix)
    samples = GPTSamples(data, num_samples=10, seq_length=8, seed=3, cache_dir=str(tmp_path / "cache"))
    # 36 tokens per epoch, 80 needed: 3 epochs; the third gives 1 of an epoch's 4 samples, under 80%, so it is
    # shuffled apart from the first two epochs' 9 samples. 108 tokens make 13 samples.
    assert (samples.epochs, samples.separate_last_epoch, samples.samples_built) == (3, True, 13)
    np.testing.assert_array_equal(samples.doc_idx, np.tile(np.arange(5), 3))  # the reference keeps file order
    assert sorted(samples.shuffle_idx[:9]) == list(range(9)) and sorted(samples.shuffle_idx[9:]) == [9, 10, 11, 12]
    stream = np.concatenate([data[int(d)] for d in samples.doc_idx])
    for i in range(samples.samples_built):
        s = samples[i]
        k = int(samples.shuffle_idx[i])
        np.testing.assert_array_equal(s["tokens"], stream[k * 8:(k + 1) * 8])  # no overlap, crosses documents
        np.testing.assert_array_equal(s["labels"][:-1], s["tokens"][1:])
        assert s["labels"][-1] == -1
    # A second build with the same inputs loads the cached index arrays (memory-mapped .npy).
    again = GPTSamples(data, num_samples=10, seq_length=8, seed=3, cache_dir=str(tmp_path / "cache"))
    assert isinstance(again.shuffle_idx, np.memmap)
    np.testing.assert_array_equal(again.shuffle_idx, samples.shuffle_idx)
    other = GPTSamples(data, num_samples=10, seq_length=8, seed=4, cache_dir=str(tmp_path / "cache"))
    assert not np.array_equal(other.shuffle_idx, samples.shuffle_idx)
    # megatron-core's defaults: shuffled documents and L+1-token samples overlapping by one token.
    mc = GPTSamples(data, num_samples=10, seq_length=8, seed=3, cache_dir=str(tmp_path / "cache"),
                    shuffle_documents=True, add_extra_token=True)
    assert sorted(mc.doc_idx) == sorted(samples.doc_idx) and not np.array_equal(mc.doc_idx, samples.doc_idx)
    stream = np.concatenate([data[int(d)] for d in mc.doc_idx])
    s, k = mc[0], int(mc.shuffle_idx[0])
    np.testing.assert_array_equal(s["tokens"], stream[k * 8:k * 8 + 8])
    np.testing.assert_array_equal(s["labels"], stream[k * 8 + 1:k * 8 + 9])


def _megatron_blending_loop(weights, size):
    """helpers.cpp build_blending_indices, transcribed: at sample i take the dataset with the largest
    weight * max(i, 1) - count in double precision, the first one on ties."""
    w = np.asarray(weights, dtype=np.float64)
    w = (w / np.sum(w)).tolist()
    index, within, counts = np.empty(size, np.int16), np.empty(size, np.int64), [0] * len(w)
    for i in range(size):
        x = max(float(i), 1.0)
        best, best_err = 0, w[0] * x - float(counts[0])
        for d in range(1, len(w)):
            err = w[d] * x - float(counts[d])
            if err > best_err:
                best, best_err = d, err
        index[i], within[i] = best, counts[best]
        counts[best] += 1
    return index, within


_WEIGHTS = [(0.5, 0.5), (0.3, 0.7), (0.7, 0.3), (1, 2), (0.999, 0.001), (0.001, 0.999), (0.2, 0.3, 0.5),
            (0.5, 0.3, 0.2), (0.1, 0.2, 0.3, 0.4), tuple(np.random.RandomState(0).dirichlet(np.ones(5))),
            tuple(np.random.RandomState(1).dirichlet(np.ones(24)))]


@pytest.mark.parametrize("weights", _WEIGHTS, ids=lambda w: "-".join(f"{v:.3g}" for v in w))
def test_blending_indices_equal_megatrons_greedy_loop(weights):
    # 0.7/0.3 has floating-point ties every 10 samples; 24 datasets exercise the step-by-step fallback.
    size = 30_000
    index, within = blending_indices(weights, size)
    ref_index, ref_within = _megatron_blending_loop(weights, size)
    np.testing.assert_array_equal(index, ref_index)
    np.testing.assert_array_equal(within, ref_within)


def test_blending_indices_are_fast():
    import time

    start = time.perf_counter()
    index, within = blending_indices([0.5, 0.5], 3_000_000)
    elapsed = time.perf_counter() - start
    assert list(index[:6]) == [0, 1, 0, 1, 0, 1] and within[-1] == 1_499_999
    assert elapsed < 15, f"{elapsed:.1f} s for 3M samples (Megatron's loop in Python takes about a minute)"


def test_blend_alternates_two_files_half_and_half(tmp_path):
    index, within = blending_indices([0.5, 0.5], 10)
    assert list(index) == [0, 1] * 5 and list(within) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    parts = []
    for name, base in (("a", 0), ("b", 1000)):
        write_indexed_dataset(str(tmp_path / name), [np.arange(base, base + 50)])
        parts.append(IndexedDataset(str(tmp_path / name)))
    blend = BlendedSamples(parts, (0.5, 0.5), 6, 4, seed=1, cache_dir=str(tmp_path / "cache"))
    assert [len(p) for p in blend.parts] == [4, 4]  # ceil(6 * 0.5 * 1.005)
    assert [int(blend[i]["tokens"][0] >= 1000) for i in range(6)] == [0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="positive"):
        BlendedSamples(parts, (1.0, 0.0), 6, 4, seed=1, cache_dir=str(tmp_path / "cache"))


def test_blend_starts_after_the_consumed_samples(tmp_path):
    parts = []
    for name, base in (("a", 0), ("b", 1000)):
        write_indexed_dataset(str(tmp_path / name), [np.arange(base, base + n) for n in (30, 17, 41)])
        parts.append(IndexedDataset(str(tmp_path / name)))
    whole = BlendedSamples(parts, (0.5, 0.5), 50, 4, seed=3, cache_dir=str(tmp_path / "cache"))
    tail = BlendedSamples(parts, (0.5, 0.5), 30, 4, seed=3, cache_dir=str(tmp_path / "cache"), consumed_samples=20)
    assert len(tail) == 30 and tail.consumed_samples == 20
    for i in range(30):
        np.testing.assert_array_equal(tail[i]["tokens"], whole[20 + i]["tokens"])
    with pytest.raises(IndexError, match="sample 30 of a blend of 30"):
        tail[30]


# -- the sample order against megatron-core's own GPTDataset / BlendedDataset ------------------------------------------

def _reference_build_doc_idx(documents, num_epochs, np_rng, separate_last_epoch):
    """mlcommons/training large_language_model/megatron-lm megatron/data/gpt_dataset.py `_build_doc_idx` (v4.0):
    Megatron's, with `np_rng.shuffle(doc_idx)` commented out ("disabled documents shuffling")."""
    if not separate_last_epoch or num_epochs == 1:
        doc_idx = np.mgrid[0:num_epochs, 0:len(documents)][1]
        doc_idx[:] = documents
        doc_idx = doc_idx.reshape(-1)
        return doc_idx.astype(np.int32)
    doc_idx_first = _reference_build_doc_idx(documents, num_epochs - 1, np_rng, False)
    doc_idx_last = _reference_build_doc_idx(documents, 1, np_rng, False)
    return np.concatenate((doc_idx_first, doc_idx_last))


def _megatron_blend(prefixes, num_samples, seq_length, seed, *, reference):
    from types import SimpleNamespace

    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    tokenizer = SimpleNamespace(vocab_size=256, eod=0, eos=0, pad=-1, unique_identifiers={"class": "stub"})
    config = GPTDatasetConfig(random_seed=seed, sequence_length=seq_length, blend=(prefixes, [0.5, 0.5]),
                              split="100,0,0", tokenizer=tokenizer, reset_position_ids=False,
                              reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False,
                              add_extra_token_to_sequence=not reference)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: True, config).build()
    return train


# (documents per file, seq_length, blend samples, seed, (epochs, separate last epoch) of each file): one epoch,
# two with and without a separate last epoch, many, and the real sequence length.
_ORDER_CASES = [(200, 64, 400, 1234, [(1, False), (1, False)]), (40, 64, 480, 7, [(2, False), (2, True)]),
                (40, 64, 520, 2**32 - 1, [(3, True), (3, True)]), (12, 64, 600, 5, [(7, True), (11, False)]),
                (200, 2048, 60, 99, [(2, True), (2, True)])]


@pytest.mark.parametrize("reference", [True, False], ids=["mlperf_reference", "megatron_core_defaults"])
@pytest.mark.parametrize("docs,seq_length,num_samples,seed,epochs", _ORDER_CASES,
                         ids=[f"{c[0]}docs-L{c[1]}-N{c[2]}" for c in _ORDER_CASES])
def test_sample_order_equals_megatron_cores(tmp_path, monkeypatch, reference, docs, seq_length, num_samples, seed,
                                            epochs):
    """Our blend against megatron-core's BlendedMegatronDatasetBuilder over the same files and seed, token for
    token: as the MLPerf reference configures it (documents not shuffled, L-token samples) and with
    megatron-core's defaults (documents shuffled, L+1-token samples)."""
    import torch
    from megatron.core.datasets import gpt_dataset

    from pipelines.megatron_data.synthetic import write_synthetic_c4

    names = ["c4_en_6_c4_spm_text_document", "c4_en_7_c4_spm_text_document"]
    write_synthetic_c4(str(tmp_path / "data"), names, "valid", vocab=256, train_docs=docs, valid_docs=2,
                       doc_tokens=(40, 400), branching=16, seed=seed % 1000)
    prefixes = [str(tmp_path / "data" / n) for n in names]
    ours = BlendedSamples([IndexedDataset(p) for p in prefixes], (0.5, 0.5), num_samples, seq_length, seed,
                          str(tmp_path / "cache"), shuffle_documents=not reference, add_extra_token=not reference)
    if reference:
        monkeypatch.setattr(gpt_dataset, "_build_document_index", _reference_build_doc_idx)
    assert [(p.epochs, p.separate_last_epoch) for p in ours.parts] == epochs
    theirs = _megatron_blend(prefixes, num_samples, seq_length, seed, reference=reference)

    assert len(theirs) == len(ours) == num_samples
    assert [d.num_samples for d in theirs.datasets] == [len(p) for p in ours.parts]
    assert [len(d) for d in theirs.datasets] == [p.samples_built for p in ours.parts]
    np.testing.assert_array_equal(theirs.dataset_index, ours.dataset_index)
    np.testing.assert_array_equal(theirs.dataset_sample_index, ours.dataset_sample)
    for part, mc in zip(ours.parts, theirs.datasets):
        np.testing.assert_array_equal(mc.document_index, part.doc_idx)
        np.testing.assert_array_equal(mc.shuffle_index, part.shuffle_idx)
    for i in range(num_samples):
        a, b = ours[i], theirs[i]
        assert int(b["dataset_id"]) == int(ours.dataset_index[i])
        np.testing.assert_array_equal(a["tokens"], b["tokens"].numpy(), err_msg=f"sample {i}")
        if reference:  # megatron-core: last label = pad (-1) -> 0 with loss mask 0; ours: -1 (masked)
            np.testing.assert_array_equal(a["labels"][:-1], b["labels"][:-1].numpy(), err_msg=f"sample {i}")
            assert a["labels"][-1] == -1 and b["loss_mask"][-1] == 0 and bool(torch.all(b["loss_mask"][:-1] == 1))
        else:
            np.testing.assert_array_equal(a["labels"], b["labels"].numpy(), err_msg=f"sample {i}")
            assert bool(torch.all(b["loss_mask"] == 1))


def test_blending_indices_equal_megatron_cores_compiled_helper():
    from megatron.core.datasets import helpers

    for weights in _WEIGHTS:
        w = np.asarray(weights, dtype=np.float64)
        w /= w.sum()
        size = 20_000
        ref_index, ref_within = np.zeros(size, np.int16), np.zeros(size, np.int64)
        helpers.build_blending_indices(ref_index, ref_within, w, len(w), size, False)
        index, within = blending_indices(w, size)
        np.testing.assert_array_equal(index, ref_index)
        np.testing.assert_array_equal(within, ref_within)


def test_validation_is_in_order_and_the_last_partial_sample_is_masked(tmp_path):
    docs = [np.arange(1, 8), np.arange(10, 16)]  # 13 tokens
    write_indexed_dataset(str(tmp_path / "valid"), docs)
    val = ValidationSamples(IndexedDataset(str(tmp_path / "valid")), seq_length=5)
    assert len(val) == 3 and val.num_predicted_tokens == 10
    np.testing.assert_array_equal(val[1]["tokens"], [6, 7, 10, 11, 12])
    last = val[2]
    np.testing.assert_array_equal(last["tokens"], [13, 14, 15, 0, 0])
    np.testing.assert_array_equal(last["labels"], [14, 15, -1, -1, -1])
    assert sum(int((val[i]["labels"] >= 0).sum()) for i in range(len(val))) == val.num_predicted_tokens
