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
    assert samples.epochs == 3  # 36 tokens per epoch, 80 needed
    stream = np.concatenate([data[int(d)] for d in samples.doc_idx])
    seen = set()
    for i in range(len(samples)):
        s = samples[i]
        k = int(samples.shuffle_idx[i])
        np.testing.assert_array_equal(s["tokens"], stream[k * 8:(k + 1) * 8])  # no overlap, crosses documents
        np.testing.assert_array_equal(s["labels"][:-1], s["tokens"][1:])
        assert s["labels"][-1] == -1
        seen.add(k)
    assert seen == set(range(10))
    # A second build with the same inputs loads the cached index arrays (memory-mapped .npy).
    again = GPTSamples(data, num_samples=10, seq_length=8, seed=3, cache_dir=str(tmp_path / "cache"))
    assert isinstance(again.shuffle_idx, np.memmap)
    np.testing.assert_array_equal(again.shuffle_idx, samples.shuffle_idx)
    other = GPTSamples(data, num_samples=10, seq_length=8, seed=4, cache_dir=str(tmp_path / "cache"))
    assert not np.array_equal(other.shuffle_idx, samples.shuffle_idx)


def test_blend_alternates_two_files_half_and_half(tmp_path):
    index, within = blending_indices([0.5, 0.5], 10)
    assert list(index) == [0, 1] * 5 and list(within) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    parts = []
    for name, base in (("a", 0), ("b", 1000)):
        write_indexed_dataset(str(tmp_path / name), [np.arange(base, base + 50)])
        parts.append(IndexedDataset(str(tmp_path / name)))
    blend = BlendedSamples(parts, (0.5, 0.5), 6, 4, seed=1, cache_dir=str(tmp_path / "cache"))
    assert [int(blend[i]["tokens"][0] >= 1000) for i in range(6)] == [0, 1, 0, 1, 0, 1]


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
