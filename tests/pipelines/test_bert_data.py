"""BERT data: text -> TFRecords (the reference's rules), TFRecords -> store (lossless), damaged files named,
the shuffling permutation, rank sharding and resume, and the packed layout."""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("tokenizers")

from pipelines.bert.format import BertFormatError, decode_pretraining_example, encode_pretraining_example  # noqa: E402
from pipelines.bert.loader import EvalBatches, IndexPermutation, TrainBatches  # noqa: E402
from pipelines.bert.packing import build_batch, random_sequences  # noqa: E402
from pipelines.bert.prepare.convert import convert_split  # noqa: E402
from pipelines.bert.prepare.create_pretraining_data import WordPiece, create_instances, write_instances  # noqa: E402
from pipelines.bert.store import SequenceStore  # noqa: E402
from pipelines.bert.synthetic import lexicon, write_text, write_vocab  # noqa: E402
from pipelines.tfrecord import TFRecordWriter, iter_records  # noqa: E402

T, P = 64, 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two text shards -> two TFRecord shards -> a store, with the tokenizer that made them."""
    root = tmp_path_factory.mktemp("bert_corpus")
    vocab = root / "vocab.txt"
    write_vocab(str(vocab), 6, 8, 128)
    words, rng = lexicon(48), random.Random(0)
    shards = []
    for i in range(2):
        text = root / f"text-{i}"
        write_text(str(text), rng, 60, words, 6, 8)
        instances = create_instances([str(text)], WordPiece(str(vocab)), max_seq_length=T, dupe_factor=2,
                                     short_seq_prob=0.1, masked_lm_prob=0.15, max_predictions=P, seed=12345)
        shards.append(str(root / f"part-{i:05d}-of-00002"))
        write_instances(instances, WordPiece(str(vocab)), [shards[-1]], T, P)
    count = convert_split(shards, str(root / "store"), max_seq_length=T, max_predictions=P, resume=False)
    return {"root": root, "vocab": str(vocab), "shards": shards, "count": count,
            "store": SequenceStore(str(root / "store"))}


def test_instances_follow_the_reference_rules(corpus):
    tokenizer = WordPiece(corpus["vocab"])
    text = str(corpus["root"] / "text-0")
    instances = create_instances([text], tokenizer, max_seq_length=T, dupe_factor=3, short_seq_prob=0.1,
                                 masked_lm_prob=0.15, max_predictions=P, seed=7)
    again = create_instances([text], tokenizer, max_seq_length=T, dupe_factor=3, short_seq_prob=0.1,
                             masked_lm_prob=0.15, max_predictions=P, seed=7)
    assert instances == again  # one seeded random.Random drives everything
    kinds = Counter()
    for inst in instances:
        tokens, original = inst.tokens, list(inst.tokens)
        for position, label in zip(inst.masked_positions, inst.masked_labels):
            original[position] = label
        assert original[0] == "[CLS]" and original[-1] == "[SEP]" and original.count("[SEP]") == 2
        assert len(tokens) <= T and len(inst.segment_ids) == len(tokens)
        b_start = inst.segment_ids.index(1)
        assert original[b_start - 1] == "[SEP]" and set(inst.segment_ids[b_start:]) == {1}
        assert len(inst.masked_positions) == min(P, max(1, round(len(tokens) * 0.15)))
        assert inst.masked_positions == sorted(set(inst.masked_positions))
        for position, label in zip(inst.masked_positions, inst.masked_labels):
            assert label not in ("[CLS]", "[SEP]", "[MASK]")  # special tokens are never predicted
            kinds["mask" if tokens[position] == "[MASK]" else "kept" if tokens[position] == label else "random"] += 1
    total = sum(kinds.values())
    assert 0.75 < kinds["mask"] / total < 0.85 and 0.06 < kinds["kept"] / total < 0.14, kinds
    assert 0.06 < kinds["random"] / total < 0.14, kinds
    assert any("##s" in inst.tokens for inst in instances)  # WordPiece split the plural forms
    # Random next sentence with p 0.5, and always for a one-sentence chunk (short documents have many).
    random_next = sum(inst.is_random_next for inst in instances) / len(instances)
    assert 0.45 < random_next < 0.75, random_next


def test_store_recreates_every_tfrecord_example(corpus):
    store = corpus["store"]
    assert len(store) == corpus["count"] > 100
    index = 0
    for shard in corpus["shards"]:
        for payload in iter_records(shard):
            part, local = store.locate(index)
            expected = decode_pretraining_example(payload, T, P)
            actual = part.padded_example(local, T, P)
            for name, value in expected.items():
                np.testing.assert_array_equal(actual[name], value, err_msg=f"{name} of record {index}")
            index += 1
    assert index == len(store)
    assert store.parts[0].input_ids.dtype == np.uint16 and isinstance(store.parts[0].input_ids, np.memmap)


def test_damaged_files_are_named(corpus, tmp_path):
    source = corpus["shards"][0]
    data = open(source, "rb").read()
    flipped = tmp_path / "part-00000-of-00001"
    flipped.write_bytes(data[:500] + bytes([data[500] ^ 0xFF]) + data[501:])
    with pytest.raises(BertFormatError, match=str(flipped)):
        convert_split([str(flipped)], str(tmp_path / "a"), max_seq_length=T, max_predictions=P, resume=False)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(data[:-7])
    with pytest.raises(BertFormatError, match=f"{truncated}.*truncated"):
        convert_split([str(truncated)], str(tmp_path / "b"), max_seq_length=T, max_predictions=P, resume=False)
    assert not os.path.exists(tmp_path / "b" / "truncated")  # no plausible partial part left behind
    # A valid record whose segment ids are not 0...0 1...1: the store could not reproduce it.
    odd = tmp_path / "odd"
    with TFRecordWriter(str(odd)) as writer:
        writer.write(encode_pretraining_example([2, 5, 3, 6, 3] + [0] * (T - 5), [1] * 5 + [0] * (T - 5),
                                                [0, 1, 0, 1, 1] + [0] * (T - 5), [1] + [0] * (P - 1),
                                                [5] + [0] * (P - 1), [1.0] + [0.0] * (P - 1), 0))
    with pytest.raises(BertFormatError, match=f"{odd}: record 0.*segment_ids"):
        convert_split([str(odd)], str(tmp_path / "c"), max_seq_length=T, max_predictions=P, resume=False)
    # A store whose array lost its tail.
    copy = tmp_path / "store"
    shutil.copytree(corpus["root"] / "store", copy)
    ids = copy / os.path.basename(source) / "input_ids.npy"
    ids.write_bytes(ids.read_bytes()[:-100])
    with pytest.raises(BertFormatError, match=str(ids)):
        SequenceStore(str(copy))


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 4099])
def test_index_permutation_is_a_seeded_bijection(n):
    perm = IndexPermutation(n, (3, 0))
    values = perm(np.arange(n))
    assert sorted(values.tolist()) == list(range(n))
    np.testing.assert_array_equal(IndexPermutation(n, (3, 0))(np.arange(n)), values)
    if n >= 1000:
        assert not np.array_equal(IndexPermutation(n, (3, 1))(np.arange(n)), values)  # next epoch differs
        assert abs(np.corrcoef(np.arange(n), values)[0, 1]) < 0.1  # no visible order left


def test_ranks_split_each_global_batch_and_resume_is_exact(corpus):
    store = corpus["store"]
    common = dict(global_batch_size=16, dp_size=2, grad_accum=2, seed=11, max_per_row=2, row_multiple=1)
    ranks = [TrainBatches(store, dp_rank=r, **common) for r in range(2)]
    seen = []
    for step in range(ranks[0].steps_per_epoch):
        a, b = ranks[0].indices(step), ranks[1].indices(step)
        assert len(a) == len(b) == 8 and not set(a) & set(b)
        seen.extend(a.tolist() + b.tolist())
    assert len(set(seen)) == len(seen) == ranks[0].steps_per_epoch * 16  # each sequence at most once an epoch
    loader = ranks[0]
    try:
        served = [loader.get(step) for step in (0, 1, 2)] + [loader.get(5), loader.get(1)]  # seeks restart it
    finally:
        loader.close()
    for step, batches in zip((0, 1, 2, 5, 1), served):
        assert len(batches) == 2 and sum(b.num_sequences for b in batches) == 8
        for got, want in zip(batches, loader.build(step)):
            assert all(torch.equal(getattr(got, f), getattr(want, f))
                       for f in ("input_ids", "mlm_labels", "nsp_labels"))
    evaluation = [EvalBatches(store, dp_rank=r, dp_size=3, batch_sequences=50, max_per_row=2) for r in range(3)]
    assert sum(sum(b.num_sequences for b in e) for e in evaluation) == len(store)


def test_packed_layout():
    sequences = random_sequences(np.random.default_rng(0), 9, 100, 40, 8)
    batch = build_batch(sequences, 100, 8, max_per_row=2, row_multiple=4)
    assert batch.num_rows % 4 == 0 and batch.num_sequences == 9
    ids, seq, pos = batch.input_ids, batch.sequence_ids, batch.position_ids
    assert int(seq.max()) <= 2
    for i, (tokens, b_start, _positions, _labels, nsp) in enumerate(sequences):
        flat = int(batch.nsp_positions[i])
        row, start = divmod(flat, 100)
        span = slice(start, start + len(tokens))
        assert torch.equal(ids[row, span], torch.as_tensor(tokens))
        assert torch.equal(pos[row, span], torch.arange(len(tokens)))
        assert len(set(seq[row, span].tolist())) == 1 and int(seq[row, start]) > 0
        assert (int(batch.segment_ids[row, start + b_start - 1]) == 0
                and int(batch.segment_ids[row, start + b_start]) == 1)
        assert int(batch.nsp_labels[i]) == nsp
    assert int(batch.mlm_positions.numel()) == sum(len(s[2]) for s in sequences)
    flat_ids = ids.reshape(-1)
    assert torch.equal(flat_ids[batch.mlm_positions], torch.cat([torch.as_tensor(s[0][s[2]]) for s in sequences]))
    bounds = batch.cu_seqlens
    assert int(bounds[0]) == 0 and int(bounds[-1]) == batch.num_rows * 100 and bool((bounds[1:] >= bounds[:-1]).all())
    assert len(bounds) == batch.num_rows * 3 + 1
