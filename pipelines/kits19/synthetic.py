"""A small synthetic KiTS19 in the raw NIfTI layout, put through the real preprocessing chain.

Each case is a CT-like volume in Hounsfield units: air around an elliptic body (30 HU), two ellipsoid
kidneys (180 HU, label 1) and one or two spherical tumours (90 HU, label 2) on a kidney's surface, with
Gaussian noise (15 HU). Spacings vary per case (slices 1.3-2.6 mm, in-plane 0.65-1.0 mm) and so do the
sizes, so that resampling to [1.6, 1.2, 1.2] mm changes every case's shape and some axes end below
`min_shape` and are padded. The raw cases go to `out_dir/raw/case_XXXXX/{imaging,segmentation}.nii.gz`;
`pipelines/kits19/prepare/preprocess.py` then writes the flat `.npy` directory into `out_dir` and an md5
list of it (`out_dir/checksum.json`), which it verifies as it would the real set's.

Case ids follow the reference's split: the evaluation cases are the first ones of
`evaluation_cases.txt`, the training cases the lowest ids not in it, so the loader splits a synthetic
set with the real list.
"""

from __future__ import annotations

import os

import numpy as np

from pipelines.kits19.format import EVAL_SAMPLES, TRAIN_SAMPLES, case_name, read_eval_cases
from pipelines.kits19.prepare.preprocess import (
    MAX_CASE_ID,
    TARGET_SPACING,
    preprocess_dataset,
    verify_dataset,
    write_checksums,
)

BODY_HU, KIDNEY_HU, TUMOUR_HU, AIR_HU, NOISE_HU = -40.0, 110.0, 290.0, -1000.0, 10.0


def synthetic_case_ids(train_cases: int, eval_cases: int) -> tuple[list[int], list[int]]:
    if not (1 <= train_cases <= TRAIN_SAMPLES and 1 <= eval_cases <= EVAL_SAMPLES):
        raise ValueError(f"synthetic KiTS19: 1..{TRAIN_SAMPLES} train and 1..{EVAL_SAMPLES} eval cases, "
                         f"got {train_cases} and {eval_cases}")
    evaluation = read_eval_cases()
    train = [i for i in range(MAX_CASE_ID) if i not in set(evaluation)][:train_cases]
    return train, evaluation[:eval_cases]


def _ellipsoid(grid, centre, semi_axes) -> np.ndarray:
    return sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, semi_axes)) <= 1.0


def synthetic_volume(rng: np.random.Generator, min_shape: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(image HU int16 (D, H, W), label uint8 (D, H, W), spacing mm x 3) of one random case."""
    in_plane = rng.uniform(0.65, 1.0)
    spacing = [float(np.float32(rng.uniform(1.3, 2.6))), float(np.float32(in_plane)), float(np.float32(in_plane))]
    # Physical extent: 0.85-1.3 x min_shape voxels at the target spacing (so some axes get padded).
    extent = [rng.uniform(0.85, 1.3) * min_shape * t for t in TARGET_SPACING]
    shape = [max(8, round(e / s)) for e, s in zip(extent, spacing)]
    grid = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij",
                       sparse=True)
    ez, ey, ex = extent
    image = np.full(shape, AIR_HU, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    body = ((grid[1] / (0.42 * ey)) ** 2 + (grid[2] / (0.46 * ex)) ** 2 <= 1.0) & np.ones(shape, bool)
    image[body] = BODY_HU
    kidneys = []
    for side in (-1.0, 1.0):
        centre = (rng.uniform(-0.08, 0.08) * ez, rng.uniform(0.02, 0.12) * ey, side * rng.uniform(0.17, 0.23) * ex)
        axes = (rng.uniform(0.26, 0.34) * ez, rng.uniform(0.16, 0.2) * ey, rng.uniform(0.13, 0.16) * ex)
        kidneys.append((centre, axes))
        inside = _ellipsoid(grid, centre, axes)
        image[inside], label[inside] = KIDNEY_HU, 1
    with_tumour = [int(rng.integers(2))] if rng.random() < 0.7 else [0, 1]
    for k in with_tumour:
        centre, axes = kidneys[k]
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        depth = rng.uniform(0.55, 0.9)
        tumour_centre = [c + depth * a * d for c, a, d in zip(centre, axes, direction)]
        radius = rng.uniform(0.9, 1.3) * min(axes)
        inside = _ellipsoid(grid, tumour_centre, (radius,) * 3)
        image[inside], label[inside] = TUMOUR_HU, 2
    image += rng.normal(0.0, NOISE_HU, size=shape).astype(np.float32)
    return np.rint(image).astype(np.int16), label, spacing


def write_raw_case(case_dir: str, image: np.ndarray, label: np.ndarray, spacing: list[float]) -> None:
    import nibabel

    os.makedirs(case_dir, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    nibabel.save(nibabel.Nifti1Image(image, affine), os.path.join(case_dir, "imaging.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(label, affine), os.path.join(case_dir, "segmentation.nii.gz"))


def write_synthetic_kits19(out_dir: str, *, train_cases: int, eval_cases: int, min_shape: int, seed: int,
                           keep_raw: bool = True) -> tuple[list[int], list[int]]:
    """Raw NIfTI cases, then the preprocessed flat directory in `out_dir`; returns (train ids, eval ids)."""
    train, evaluation = synthetic_case_ids(train_cases, eval_cases)
    raw = os.path.join(out_dir, "raw")
    for case_id in sorted(train + evaluation):
        image, label, spacing = synthetic_volume(np.random.default_rng([seed, case_id]), min_shape)
        write_raw_case(os.path.join(raw, case_name(case_id)), image, label, spacing)
    preprocess_dataset(raw, out_dir, min_shape=min_shape, verbose=False)
    checksums = os.path.join(out_dir, "checksum.json")
    write_checksums(out_dir, checksums)
    problems = verify_dataset(out_dir, checksums)
    if problems:  # written and read back in the same breath: only a broken disk gets here
        raise RuntimeError("; ".join(problems[:3]))
    if not keep_raw:
        import shutil

        shutil.rmtree(raw)
    return train, evaluation
