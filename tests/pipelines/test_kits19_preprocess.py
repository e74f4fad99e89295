"""The KiTS19 preprocessing chain against hand-made volumes (spacing, interpolation, clip, normalise, pad),
NIfTI in and .npy out, the md5 check, and the synthetic writer going through the same chain."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipelines.kits19.format import list_cases, read_case, read_eval_cases, split_cases
from pipelines.kits19.prepare.preprocess import (
    MEAN_HU,
    STD_HU,
    normalize_intensity,
    pad_to_min_shape,
    preprocess_case,
    preprocess_dataset,
    resample,
    verify_dataset,
    write_checksums,
)
from pipelines.kits19.synthetic import write_raw_case, write_synthetic_kits19


def _ramp(shape):
    d, h, w = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return (d + 10 * h + 100 * w)[None]


def test_resampling_to_the_target_spacing():
    image, label = _ramp((4, 5, 6)), np.arange(4 * 5 * 6, dtype=np.uint8).reshape(1, 4, 5, 6) % 3
    out_image, out_label = resample(image, label, [3.2, 2.4, 2.4])  # twice the target spacing on every axis
    assert out_image.shape == out_label.shape == (1, 8, 10, 12)
    # trilinear with align_corners=True: output i samples input i * (n_in - 1) / (n_out - 1); a ramp is exact
    i, j, k = np.meshgrid(np.arange(8), np.arange(10), np.arange(12), indexing="ij")
    expected = i * 3 / 7 + 10 * j * 4 / 9 + 100 * k * 5 / 11
    np.testing.assert_allclose(out_image[0], expected, rtol=1e-5, atol=1e-4)
    # nearest: output i takes input floor(i * n_in / n_out)
    np.testing.assert_array_equal(out_label[0], label[0][i // 2, j // 2, k // 2])
    # new shape = int(spacing / target * shape), truncated
    assert resample(image, label, [1.7, 1.0, 2.0])[0].shape == (1, 4, 4, 10)


def test_spacing_equal_to_the_target_skips_interpolation_but_header_floats_do_not():
    image, label = _ramp((3, 4, 5)), np.zeros((1, 3, 4, 5), np.uint8)
    same = resample(image, label, [1.6, 1.2, 1.2])
    assert same[0] is image and same[1] is label
    header = [float(np.float32(v)) for v in (1.6, 1.2, 1.2)]  # what a NIfTI header gives back
    again = resample(image, label, header)
    assert again[0] is not image and again[0].shape == image.shape
    np.testing.assert_allclose(again[0], image, atol=1e-5)


def test_clip_and_normalise():
    hu = np.array([-1000.0, -79.0, 101.0, 304.0, 2000.0], dtype=np.float32)
    out = normalize_intensity(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [(-79 - MEAN_HU) / STD_HU] * 2 + [0.0] + [(304 - MEAN_HU) / STD_HU] * 2,
                               rtol=1e-6)


def test_padding_is_centred_edge_padding_up_to_the_minimum():
    image, label = _ramp((3, 9, 4)), np.ones((1, 3, 9, 4), np.uint8)
    label[0, 0] = 2
    out_image, out_label = pad_to_min_shape(image, label, 8)
    assert out_image.shape == out_label.shape == (1, 8, 9, 8)
    # axis 0: 5 missing -> 2 before, 3 after; axis 1 untouched; axis 2: 4 missing -> 2 and 2
    np.testing.assert_array_equal(out_image[0, 2:5, :, 2:6], image[0])
    np.testing.assert_array_equal(out_image[0, 0], out_image[0, 2])  # edge values repeated
    np.testing.assert_array_equal(out_image[0, 7], out_image[0, 4])
    np.testing.assert_array_equal(out_image[0, :, :, 0], out_image[0, :, :, 2])
    assert (out_label[0, :3] == 2).all() and (out_label[0, 3:] == 1).all()


def _write_raw(root, case_id, shape, spacing, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 1000, size=shape).astype(np.int16)
    label = rng.integers(0, 3, size=shape).astype(np.uint8)
    write_raw_case(os.path.join(root, f"case_{case_id:05d}"), image, label, spacing)
    return image, label


def test_nifti_cases_become_the_flat_directory_with_checked_md5s(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    image, label = _write_raw(raw, 5, (6, 20, 18), [3.2, 0.6, 0.6])
    _write_raw(raw, 250, (4, 4, 4), [1.6, 1.2, 1.2])  # ids >= 210 have no public labels: skipped
    assert preprocess_dataset(str(raw), str(out), min_shape=16, verbose=False) == [5]
    assert list_cases(str(out)) == [5]
    case = read_case(str(out), 5)
    # (3.2, 0.6, 0.6) -> x2 slices, /2 in-plane: (12, 10, 9), then padded to 16 on every axis
    expected_image, expected_label = preprocess_case(image.astype(np.float32)[None], label[None],
                                                     [3.2, 0.6, 0.6], 16)
    assert case.image.shape == (1, 16, 16, 16)
    np.testing.assert_array_equal(case.image, expected_image)
    np.testing.assert_array_equal(case.label, expected_label)
    np.testing.assert_allclose(case.image[0, 2:14, 3:13, 3:12].min(), (-79 - MEAN_HU) / STD_HU, rtol=1e-6)

    sums = str(tmp_path / "checksum.json")
    write_checksums(str(out), sums)
    assert verify_dataset(str(out), sums) == []
    with open(out / "case_00005_y.npy", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x07")
    problems = verify_dataset(str(out), sums)
    assert len(problems) == 1 and "case_00005_y.npy: md5" in problems[0]
    os.remove(out / "case_00005_x.npy")
    assert any("missing case_00005_x.npy" in p for p in verify_dataset(str(out), sums))


def test_the_synthetic_set_goes_through_the_chain_and_splits_like_the_real_one(tmp_path):
    train, evaluation = write_synthetic_kits19(str(tmp_path), train_cases=3, eval_cases=2, min_shape=32, seed=5)
    assert evaluation == read_eval_cases()[:2] and len(train) == 3
    assert split_cases(list_cases(str(tmp_path)), read_eval_cases()) == (train, evaluation)
    assert verify_dataset(str(tmp_path), str(tmp_path / "checksum.json")) == []
    shapes = set()
    for case_id in train + evaluation:
        case = read_case(str(tmp_path), case_id)
        assert min(case.image.shape[1:]) >= 32 and set(np.unique(case.label)) == {0, 1, 2}
        shapes.add(case.image.shape)
    assert len(shapes) == 5  # spacings and sizes vary per case
    with pytest.raises(ValueError, match="1..42 eval"):
        write_synthetic_kits19(str(tmp_path / "x"), train_cases=3, eval_cases=43, min_shape=32, seed=5)
