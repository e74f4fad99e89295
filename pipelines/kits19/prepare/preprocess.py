"""KiTS19 NIfTI cases -> the flat directory of preprocessed `.npy` files the benchmark reads.

    python -m pipelines.kits19.prepare.preprocess --data-dir RAW/kits19/data --results-dir /data/kits19
    python -m pipelines.kits19.prepare.preprocess --results-dir /data/kits19 --verify-only

The reference's `preprocess_dataset.py`, step for step (its md5 list, `checksum.json`, is the check
that the result is the same bytes): for each `case_XXXXX/{imaging,segmentation}.nii.gz` with id < 210,
  1. spacing from the image header's pixdim[1:4]; if it differs from [1.6, 1.2, 1.2] mm, the new shape is
     int(spacing / target * shape) per axis, the image resampled trilinearly (align_corners=True) and the
     label by nearest neighbour, both with torch's `interpolate`;
  2. image clipped to [-79, 304] HU, then (x - 101.0) / 76.9;
  3. every axis below 128 edge-padded to 128, centred (the extra voxel, if odd, after);
  4. saved as case_XXXXX_x.npy (float32) and case_XXXXX_y.npy (uint8), shape (1, D, H, W).
Then every output file's md5 is compared with the list (checksum.json here: the reference's, for the
real data; the synthetic writer makes its own).

The spacing comparison is the reference's: header values are float32, so [1.6, 1.2, 1.2] read from a
header (1.600000023841858, ...) counts as different and the case goes through `interpolate` to the same
shape, which the md5 sums were made with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.kits19.format import KiTS19FormatError, case_name, write_case

MAX_CASE_ID = 210  # cases 210-299 of KiTS19 have no public segmentation
TARGET_SPACING = [1.6, 1.2, 1.2]  # mm, along the array's axes (slices first, as KiTS19 stores them)
MIN_SHAPE = 128  # every axis at least this (the training crop)
CLIP_HU = (-79.0, 304.0)
MEAN_HU, STD_HU = 101.0, 76.9
CHECKSUMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checksum.json")


def load_pair(case_dir: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(image float32 (1, D, H, W), label uint8 (1, D, H, W), spacing [mm] x 3) of one raw case."""
    import nibabel

    image = nibabel.load(os.path.join(case_dir, "imaging.nii.gz"))
    label = nibabel.load(os.path.join(case_dir, "segmentation.nii.gz"))
    spacing = image.header["pixdim"][1:4].tolist()
    image_array = image.get_fdata().astype(np.float32)[None]
    label_array = label.get_fdata().astype(np.uint8)[None]
    if image_array.shape != label_array.shape:
        raise KiTS19FormatError(f"{case_dir}: imaging {image_array.shape[1:]} and segmentation "
                                f"{label_array.shape[1:]} differ in shape")
    return image_array, label_array, spacing


def resample(image: np.ndarray, label: np.ndarray, spacing: list[float],
             target_spacing: list[float] = TARGET_SPACING) -> tuple[np.ndarray, np.ndarray]:
    if spacing == target_spacing:
        return image, label
    new_shape = (np.array(spacing) / np.array(target_spacing) * np.array(image.shape[1:])).astype(int).tolist()
    image = F.interpolate(torch.from_numpy(image[None]), size=new_shape, mode="trilinear", align_corners=True)
    label = F.interpolate(torch.from_numpy(label[None]), size=new_shape, mode="nearest")
    return image[0].numpy(), label[0].numpy()


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, *CLIP_HU) - MEAN_HU) / STD_HU


def pad_to_min_shape(image: np.ndarray, label: np.ndarray, min_shape: int = MIN_SHAPE):
    bounds = [max(0, min_shape - s) for s in image.shape[1:]]
    paddings = [(0, 0)] + [(b // 2, b - b // 2) for b in bounds]
    return np.pad(image, paddings, mode="edge"), np.pad(label, paddings, mode="edge")


def preprocess_case(image: np.ndarray, label: np.ndarray, spacing: list[float],
                    min_shape: int = MIN_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    image, label = resample(image, label, spacing)
    image = normalize_intensity(image.copy())
    image, label = pad_to_min_shape(image, label, min_shape)
    return image.astype(np.float32), label.astype(np.uint8)


def raw_cases(data_dir: str) -> list[int]:
    """Ids of the case_XXXXX folders under `data_dir` that the benchmark uses (id < 210)."""
    ids = []
    for name in sorted(os.listdir(data_dir)):
        if name.startswith("case_") and os.path.isdir(os.path.join(data_dir, name)):
            case_id = int(name.split("_")[1])
            if case_id < MAX_CASE_ID:
                ids.append(case_id)
    if not ids:
        raise FileNotFoundError(f"{data_dir}: no case_XXXXX folders (KiTS19's data/ directory)")
    return ids


def _one(job: tuple[str, str, int, int]) -> str:
    data_dir, results_dir, case_id, min_shape = job
    image, label, spacing = load_pair(os.path.join(data_dir, case_name(case_id)))
    image, label = preprocess_case(image, label, spacing, min_shape)
    write_case(results_dir, case_id, image, label)
    return f"{case_name(case_id)}: shape {image.shape[1:]} mean {image.mean():.2f} std {image.std():.2f}"


def preprocess_dataset(data_dir: str, results_dir: str, *, min_shape: int = MIN_SHAPE, workers: int = 1,
                       verbose: bool = True) -> list[int]:
    """Every usable case of `data_dir` into `results_dir`; returns the case ids written."""
    os.makedirs(results_dir, exist_ok=True)
    ids = raw_cases(data_dir)
    jobs = [(data_dir, results_dir, i, min_shape) for i in ids]
    if workers > 1:
        # spawn: torch's thread pools do not survive fork; each worker does one interpolate at a time
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            lines = pool.imap(_one, jobs)
            for line in lines:
                if verbose:
                    print(line, flush=True)
    else:
        for job in jobs:
            line = _one(job)
            if verbose:
                print(line, flush=True)
    return ids


def md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(results_dir: str, path: str) -> dict[str, str]:
    sums = {name: md5(os.path.join(results_dir, name)) for name in sorted(os.listdir(results_dir))
            if name.startswith("case_") and name.endswith(".npy")}
    with open(path, "w") as f:
        json.dump(sums, f, indent=0)
        f.write("\n")
    return sums


def verify_dataset(results_dir: str, checksums: str = CHECKSUMS) -> list[str]:
    """Problems (empty: every file the list names is there with its md5, and no other case file)."""
    with open(checksums) as f:
        expected = json.load(f)
    present = {n for n in os.listdir(results_dir) if n.startswith("case_") and n.endswith(".npy")}
    problems = [f"{results_dir}: missing {n}" for n in sorted(set(expected) - present)]
    problems += [f"{results_dir}: {n} is not in {checksums}" for n in sorted(present - set(expected))]
    for name in sorted(present & set(expected)):
        got = md5(os.path.join(results_dir, name))
        if got != expected[name]:
            problems.append(f"{results_dir}/{name}: md5 {got}, expected {expected[name]}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.kits19.prepare.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="KiTS19's data/ folder (case_XXXXX/imaging.nii.gz, segmentation.nii.gz)")
    p.add_argument("--results-dir", required=True)
    p.add_argument("--checksums", default=CHECKSUMS, help="md5 list to verify against (default: the reference's)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--verify-only", action="store_true")
    args = p.parse_args(argv)
    if not args.verify_only:
        if not args.data_dir:
            p.error("--data-dir is needed unless --verify-only")
        preprocess_dataset(args.data_dir, args.results_dir, workers=args.workers)
    problems = verify_dataset(args.results_dir, args.checksums)
    for line in problems:
        print(line, file=sys.stderr)
    verdict = f"FAILED, {len(problems)} problem(s)" if problems else "all md5 sums match"
    print(f"{args.results_dir}: {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
