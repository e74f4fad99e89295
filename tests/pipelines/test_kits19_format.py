"""The preprocessed KiTS19 layout: round trip, the reference's split, and every broken case named."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipelines.kits19.format import (
    EVAL_SAMPLES,
    TRAIN_SAMPLES,
    KiTS19FormatError,
    case_paths,
    list_cases,
    read_case,
    read_eval_cases,
    split_cases,
    write_case,
)


def _case(shape=(1, 6, 7, 8), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), rng.integers(0, 3, size=shape).astype(np.uint8)


def test_round_trip_keeps_dtype_shape_and_values(tmp_path):
    image, label = _case()
    write_case(str(tmp_path), 7, image, label)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_00007_x.npy", "case_00007_y.npy"]
    case = read_case(str(tmp_path), 7)
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    np.testing.assert_array_equal(case.image, image)
    np.testing.assert_array_equal(case.label, label)
    mapped = read_case(str(tmp_path), 7, mmap=True)
    assert isinstance(mapped.image, np.memmap)
    np.testing.assert_array_equal(mapped.label, label)


def test_the_reference_split_is_168_train_and_42_eval():
    evaluation = read_eval_cases()
    assert len(evaluation) == EVAL_SAMPLES and evaluation[:3] == [0, 3, 5] and evaluation[-1] == 207
    train, held_out = split_cases(list(range(210)), evaluation)
    assert (len(train), len(held_out)) == (TRAIN_SAMPLES, EVAL_SAMPLES)
    assert not set(train) & set(held_out)


def test_a_truncated_file_is_named(tmp_path):
    write_case(str(tmp_path), 3, *_case())
    image_path, _ = case_paths(str(tmp_path), 3)
    data = open(image_path, "rb").read()
    open(image_path, "wb").write(data[:-10])
    for mmap in (False, True):
        with pytest.raises(KiTS19FormatError, match=r"case_00003: .*case_00003_x\.npy is not a readable"):
            read_case(str(tmp_path), 3, mmap=mmap)


def test_a_pickled_array_is_refused(tmp_path):
    write_case(str(tmp_path), 3, *_case())
    _, label_path = case_paths(str(tmp_path), 3)
    np.save(label_path, np.array([{"not": "an array"}], dtype=object), allow_pickle=True)
    with pytest.raises(KiTS19FormatError, match="case_00003"):
        read_case(str(tmp_path), 3)


def test_shape_mismatch_and_bad_labels_are_named(tmp_path):
    image, label = _case()
    write_case(str(tmp_path), 4, image, label)
    image_path, label_path = case_paths(str(tmp_path), 4)
    np.save(label_path, label[:, :-1], allow_pickle=False)
    with pytest.raises(KiTS19FormatError, match=r"case_00004: image shape \(1, 6, 7, 8\) and label shape"):
        read_case(str(tmp_path), 4)
    bad = label.copy()
    bad[0, 1, 2, 3] = 3
    np.save(label_path, bad, allow_pickle=False)
    with pytest.raises(KiTS19FormatError, match=r"case_00004 .*outside \{0, 1, 2\} \(max 3\)"):
        read_case(str(tmp_path), 4)
    assert read_case(str(tmp_path), 4, check_labels=False).label.max() == 3  # the loader checks once per case
    np.save(image_path, image.astype(np.float64), allow_pickle=False)
    with pytest.raises(KiTS19FormatError, match="case_00004: dtypes float64"):
        read_case(str(tmp_path), 4)
    with pytest.raises(KiTS19FormatError, match="case_00009"):
        write_case(str(tmp_path), 9, image, bad)


def test_listing_needs_both_files_of_every_case(tmp_path):
    for i in (2, 0, 1):
        write_case(str(tmp_path), i, *_case())
    (tmp_path / "notes.txt").write_text("ignored")
    assert list_cases(str(tmp_path)) == [0, 1, 2]
    os.remove(case_paths(str(tmp_path), 1)[1])
    with pytest.raises(KiTS19FormatError, match="case_00001 has no case_00001_y.npy"):
        list_cases(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KiTS19FormatError, match="no case_XXXXX"):
        list_cases(str(tmp_path / "empty"))
