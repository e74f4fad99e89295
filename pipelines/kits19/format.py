"""The preprocessed KiTS19 layout the reference trains on, read and written.

One flat directory holds, per case, `case_XXXXX_x.npy` (float32, shape (1, D, H, W): the resampled,
clipped, normalised and padded CT) and `case_XXXXX_y.npy` (uint8, the same shape: 0 background,
1 kidney, 2 tumour), saved with `np.save(..., allow_pickle=False)`. The real set is 210 cases:
168 train and the 42 listed in `evaluation_cases.txt` (the reference's list) for evaluation.

Every read goes through `read_case`, which refuses what would otherwise fail later or silently: a
truncated or pickled file, a wrong dtype or rank, image and label shapes that differ, labels outside
{0, 1, 2}. Each error names the case and the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

NUM_CLASSES = 3  # background, kidney, tumour
TRAIN_SAMPLES = 168
EVAL_SAMPLES = 42
IMAGE_SUFFIX, LABEL_SUFFIX = "_x.npy", "_y.npy"
_CASE_FILE = re.compile(r"^case_(\d{5})_([xy])\.npy$")
EVAL_CASES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluation_cases.txt")


class KiTS19FormatError(ValueError):
    """A preprocessed case that cannot be used as it is; the message names the case and its file."""


def case_name(case_id: int) -> str:
    return f"case_{case_id:05d}"


def case_paths(data_dir: str, case_id: int) -> tuple[str, str]:
    base = os.path.join(data_dir, case_name(case_id))
    return base + IMAGE_SUFFIX, base + LABEL_SUFFIX


def read_eval_cases(path: str = EVAL_CASES_FILE) -> list[int]:
    """Case ids of the evaluation split, one 5-digit id per line (the reference's file)."""
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    bad = [i for i in ids if not re.fullmatch(r"\d{5}", i)]
    if bad:
        raise KiTS19FormatError(f"{path}: not 5-digit case ids: {bad[:5]}")
    return sorted(int(i) for i in ids)


def list_cases(data_dir: str) -> list[int]:
    """The case ids of `data_dir`, each with both its image and its label file."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: no such directory")
    found: dict[int, set[str]] = {}
    for name in os.listdir(data_dir):
        m = _CASE_FILE.match(name)
        if m:
            found.setdefault(int(m[1]), set()).add(m[2])
    incomplete = sorted(i for i, kinds in found.items() if kinds != {"x", "y"})
    if incomplete:
        i = incomplete[0]
        missing = (LABEL_SUFFIX if "x" in found[i] else IMAGE_SUFFIX)
        raise KiTS19FormatError(f"{data_dir}: {case_name(i)} has no {case_name(i)}{missing} "
                                f"({len(incomplete)} incomplete case(s))")
    if not found:
        raise KiTS19FormatError(f"{data_dir}: no case_XXXXX_x.npy / case_XXXXX_y.npy files (a preprocessed "
                                f"KiTS19: pipelines/kits19/prepare/preprocess.py)")
    return sorted(found)


def split_cases(case_ids: list[int], eval_cases: list[int]) -> tuple[list[int], list[int]]:
    """(train ids, eval ids): a case is evaluated iff the evaluation list names it, as the reference."""
    wanted = set(eval_cases)
    return [i for i in case_ids if i not in wanted], [i for i in case_ids if i in wanted]


def _load(path: str, where: str, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise KiTS19FormatError(f"{where}: missing file {path}") from None
    except (ValueError, OSError, EOFError) as error:  # truncated data, a bad header, a pickled array
        raise KiTS19FormatError(f"{where}: {path} is not a readable .npy array ({error})") from None


def check_label_values(label: np.ndarray, where: str) -> None:
    top = int(label.max()) if label.size else 0
    if top >= NUM_CLASSES:
        raise KiTS19FormatError(f"{where}: label values outside {{0, 1, 2}} (max {top})")


@dataclass
class Case:
    case_id: int
    image: np.ndarray  # float32 (1, D, H, W)
    label: np.ndarray  # uint8 (1, D, H, W)

    @property
    def name(self) -> str:
        return case_name(self.case_id)


def read_case(data_dir: str, case_id: int, *, mmap: bool = False, check_labels: bool = True) -> Case:
    """One case, checked. With `mmap` the arrays are memory-mapped (a crop then reads only its pages);
    `check_labels` scans the label for values outside {0, 1, 2}."""
    where = case_name(case_id)
    image_path, label_path = case_paths(data_dir, case_id)
    image, label = _load(image_path, where, mmap), _load(label_path, where, mmap)
    if image.dtype != np.float32 or label.dtype != np.uint8:
        raise KiTS19FormatError(f"{where}: dtypes {image.dtype} / {label.dtype}, expected float32 image "
                                f"({image_path}) and uint8 label ({label_path})")
    if image.ndim != 4 or image.shape[0] != 1:
        raise KiTS19FormatError(f"{where}: image shape {image.shape}, expected (1, D, H, W) ({image_path})")
    if label.shape != image.shape:
        raise KiTS19FormatError(f"{where}: image shape {image.shape} and label shape {label.shape} differ "
                                f"({image_path}, {label_path})")
    if check_labels:
        check_label_values(label, f"{where} ({label_path})")
    return Case(case_id, image, label)


def write_case(out_dir: str, case_id: int, image: np.ndarray, label: np.ndarray) -> tuple[str, str]:
    """Save one preprocessed case as the reference does (float32 / uint8, no pickle)."""
    where = case_name(case_id)
    if image.ndim != 4 or image.shape[0] != 1 or label.shape != image.shape:
        raise KiTS19FormatError(f"{where}: image {image.shape} / label {label.shape}: want equal (1, D, H, W)")
    check_label_values(label, where)
    image_path, label_path = case_paths(out_dir, case_id)
    np.save(image_path, image.astype(np.float32), allow_pickle=False)
    np.save(label_path, label.astype(np.uint8), allow_pickle=False)
    return image_path, label_path
