"""GovReport's on-disk forms (pipelines/govreport/format.py, synthetic.py): what the reader returns, and the
errors bad files give (naming the file and what is wrong), for the parquet files and the plain-array npy form."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.govreport.format import (
    FormatError,
    read_npy,
    read_parquet,
    read_split,
    write_npy,
    write_parquet,
)
from pipelines.govreport.prepare.convert_to_npy import convert
from pipelines.govreport.synthetic import EOS, FIRST_CONTENT, synthetic_rows, write_synthetic

S = 16


def _rows():
    ids = np.arange(3 * S).reshape(3, S) % 11
    labels = np.full_like(ids, -100)
    labels[:, 10:14] = ids[:, 10:14]
    return ids, labels


def test_parquet_reader_gives_the_shifted_targets_and_mask(tmp_path):
    ids, labels = _rows()
    write_parquet(str(tmp_path / "t.parquet"), ids, labels)
    split = read_parquet(str(tmp_path / "t.parquet"), S)
    tokens, targets, mask = split.training_pair(1)
    assert tokens.tolist() == ids[1].tolist()
    # HF's shift: position p predicts token p + 1 where that token's label is not -100 (tokens 10..13)
    assert targets[:-1].tolist() == ids[1, 1:].tolist()
    assert np.flatnonzero(mask).tolist() == [9, 10, 11, 12]
    split.check(S, 11, rows=3)


def test_npy_form_is_the_same_rows(tmp_path):
    ids, labels = _rows()
    write_parquet(str(tmp_path / "validation-00000-of-00001.parquet"), ids, labels)
    write_parquet(str(tmp_path / "train-00000-of-00001.parquet"), ids[::-1], labels[::-1])
    convert(str(tmp_path), str(tmp_path / "npy"), S)
    for split in ("train", "validation"):
        a, b = read_split(str(tmp_path), split, "parquet", S), read_split(str(tmp_path / "npy"), split, "npy", S)
        for i in range(3):
            for x, y in zip(a.training_pair(i), b.training_pair(i)):
                assert np.array_equal(x, y)


def test_wrong_length_is_named(tmp_path):
    path = str(tmp_path / "t.parquet")
    pq.write_table(pa.table({"input_ids": [[1] * S, [1] * (S - 1)], "labels": [[1] * S, [1] * (S - 1)]}), path)
    with pytest.raises(FormatError, match=r"t.parquet: column 'input_ids' row 1 has 15 tokens, expected 16"):
        read_parquet(path, S)


def test_labels_must_be_the_token_or_ignored(tmp_path):
    ids, labels = _rows()
    labels[2, 11] = ids[2, 11] + 1
    write_parquet(str(tmp_path / "t.parquet"), ids, labels)
    with pytest.raises(FormatError, match=r"row 2 position 11: label .* is neither -100 nor the token"):
        read_parquet(str(tmp_path / "t.parquet"), S)


def test_bad_dtype_and_missing_column(tmp_path):
    path = str(tmp_path / "f.parquet")
    pq.write_table(pa.table({"input_ids": [[0.5] * S], "labels": [[1] * S]}), path)
    with pytest.raises(FormatError, match=r"column 'input_ids' is list<\w+: double>, expected lists of integers"):
        read_parquet(path, S)
    pq.write_table(pa.table({"input_ids": [[1] * S]}), path)
    with pytest.raises(FormatError, match=r"f.parquet: missing column 'labels'"):
        read_parquet(path, S)


def test_truncated_parquet_is_named(tmp_path):
    ids, labels = _rows()
    path = tmp_path / "t.parquet"
    write_parquet(str(path), ids, labels)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(FormatError, match=r"t.parquet: not a readable parquet file"):
        read_parquet(str(path), S)


def test_npy_refuses_pickled_and_wrong_arrays(tmp_path):
    np.save(tmp_path / "train_input_ids.npy", np.array([{"input_ids": [1]}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "train_loss_mask.npy", np.ones((1, S), bool))
    with pytest.raises(FormatError, match=r"train_input_ids.npy: not a plain numeric .npy array"):
        read_npy(str(tmp_path), "train")
    np.save(tmp_path / "train_input_ids.npy", np.ones((1, S), np.float32))
    with pytest.raises(FormatError, match=r"train_input_ids.npy: float32 array of shape \(1, 16\), expected a 2-D "
                                          r"integer array"):
        read_npy(str(tmp_path), "train")


def test_check_catches_rows_vocabulary_and_unlabelled_rows(tmp_path):
    ids, labels = _rows()
    write_npy(str(tmp_path), "train", ids, labels)
    split = read_npy(str(tmp_path), "train")
    with pytest.raises(FormatError, match=r"3 rows, the config says 4"):
        split.check(S, 11, rows=4)
    with pytest.raises(FormatError, match=r"token ids in \[0, 10\], outside the vocabulary \[0, 8\)"):
        split.check(S, 8)
    with pytest.raises(FormatError, match=r"rows of 16 tokens, the model takes 32"):
        split.check(32, 11)
    labels[1] = -100
    write_npy(str(tmp_path), "train", ids, labels)
    with pytest.raises(FormatError, match=r"row 1 has no labelled token"):
        read_npy(str(tmp_path), "train").check(S, 11)


def test_synthetic_summary_task_is_what_its_docstring_says(tmp_path):
    ids, labels = synthetic_rows(200, 64, 32, 8, np.random.default_rng(0))
    answer = labels[:, -9:]
    assert (labels[:, :-9] == -100).all() and (answer == ids[:, -9:]).all() and (answer[:, -1] == EOS).all()
    topic = answer[:, 0]
    assert (answer[:, :8] == topic[:, None]).all()
    doc = ids[:, 2:-10]
    share = (doc == topic[:, None]).mean()
    assert 0.45 < share < 0.55  # half the document is the topic, the rest spread over 26 other tokens
    assert doc.min() >= FIRST_CONTENT
    write_synthetic(str(tmp_path), seq_length=64, vocab=32, train_rows=16, eval_rows=4, summary_tokens=8, seed=1)
    assert len(read_split(str(tmp_path), "validation", "parquet", 64)) == 4
