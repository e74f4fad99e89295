"""Criteo 1TB multi-hot, as MLPerf DLRMv2 reads it: per day i, three files in one directory.

    day_{i}_dense.npy              float32 (N_i, 13)   log(x + 3) of the integer features, missing -> 0 first
    day_{i}_labels.npy             int32   (N_i, 1)    click (0/1)
    day_{i}_sparse_multi_hot.npz   np.savez (stored, not compressed) of 26 int32 arrays "0".."25",
                                   array k of shape (N_i, MULTI_HOT_SIZES[k]), ids in [0, TABLE_ROWS[k])

Days 0..22 are the training set (shuffled jointly at preprocessing: read them in order, never reshuffle);
the first ceil(N_23 / 2) rows of day 23 are the validation set.

`np.load` of an npz reads a whole member into memory. Each member here is stored uncompressed, so its
bytes sit contiguously inside the zip: `npz_member_memmap` finds where from the member's local zip
header and npy header and memory-maps it, the same way as the .npy files.

A memory map trusts the header: a member shorter than its header says (truncated, or written with another
dtype or shape) would map the next member's bytes and surface only when training reached those rows, as
ids outside their table. So every file and member is checked when a day is opened: its byte length must
be exactly the .npy header's length plus rows x columns x itemsize (`_check_npy_size`), and every array of
a day must have the dense file's row count. Headers are parsed, never unpickled (object dtypes refused).
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

NUM_DENSE = 13
NUM_SPARSE = 26
DAYS = 24
# Rows of the 26 embedding tables (the reference's --num_embeddings_per_feature; ids are taken modulo these).
TABLE_ROWS = (40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10, 2209,
              11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36)
# Ids per sample and feature after multi-hot materialisation (sum 214).
MULTI_HOT_SIZES = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)
TRAIN_SAMPLES = 4_195_197_692  # days 0..22
EVAL_SAMPLES = 89_137_319  # ceil(N_23 / 2)

_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature ... file name length, extra field length
_ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"


class CriteoFormatError(ValueError):
    """The data does not follow the layout above; the message names the file and what is wrong."""


def day_paths(data_dir: str, day: int) -> tuple[str, str, str]:
    """(dense, labels, sparse) paths of one day."""
    return (os.path.join(data_dir, f"day_{day}_dense.npy"), os.path.join(data_dir, f"day_{day}_labels.npy"),
            os.path.join(data_dir, f"day_{day}_sparse_multi_hot.npz"))


def sparse_feature_names(count: int = NUM_SPARSE) -> list[str]:
    """KeyedJaggedTensor keys, in table order (torchrec's DEFAULT_CAT_NAMES)."""
    return [f"cat_{k}" for k in range(count)]


def _read_npy_header(f, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"npy format version {version} is not supported")
    except ValueError as e:
        raise CriteoFormatError(f"{where}: not a valid .npy array ({e})") from None


def _check_npy_size(where: str, shape: tuple[int, ...], dtype: np.dtype, header_bytes: int, actual: int) -> int:
    """Raise unless `actual` bytes are exactly an .npy of `header_bytes` header + the array `shape`, `dtype`
    (a truncated file, or data written with another dtype or shape than its header names). Returns the
    array's byte count."""
    if dtype.hasobject:
        raise CriteoFormatError(f"{where} holds Python objects ({dtype}); only numeric arrays are read, never "
                                "unpickled")
    data = math.prod(shape) * dtype.itemsize
    if actual != header_bytes + data:
        dims = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
        raise CriteoFormatError(f"{where} is {actual} bytes, but its .npy header ({dtype} ({dims})) implies "
                                f"{header_bytes + data} ({header_bytes} header + {data} data): "
                                f"{'truncated' if actual < header_bytes + data else 'trailing bytes'}, or the "
                                "data were written with another dtype or shape than the header names")
    return data


def npz_member_memmap(path: str, name: str) -> np.memmap:
    """Memory-map array `name` of an uncompressed npz (as np.savez writes it) without reading it. The member's
    size in the zip directory must be what its .npy header implies, and its bytes must lie inside the file."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = {info.filename: info for info in zf.infolist()}
    except (zipfile.BadZipFile, OSError) as e:
        raise CriteoFormatError(f"{path}: not a readable npz/zip file ({e}; a truncated file loses the zip "
                                "directory at its end)") from None
    info = members.get(f"{name}.npy") or members.get(name)
    if info is None:
        have = sorted(n[:-4] if n.endswith(".npy") else n for n in members)
        raise CriteoFormatError(f"{path}: no member {name!r} (has {', '.join(have) or 'none'})")
    if info.compress_type != zipfile.ZIP_STORED:
        raise CriteoFormatError(f"{path}: member {name!r} is compressed (np.savez_compressed?); only np.savez's "
                                "stored members can be memory-mapped")
    with open(path, "rb") as f:
        file_bytes = os.fstat(f.fileno()).st_size
        f.seek(info.header_offset)
        raw = f.read(_ZIP_LOCAL_HEADER.size)
        fields = _ZIP_LOCAL_HEADER.unpack(raw) if len(raw) == _ZIP_LOCAL_HEADER.size else (None,)
        if fields[0] != _ZIP_LOCAL_SIGNATURE:
            raise CriteoFormatError(f"{path}: member {name!r} has a corrupt local zip header")
        # The local header's own name/extra lengths (ZIP64 members carry a 20-byte extra field here).
        f.seek(fields[-2] + fields[-1], os.SEEK_CUR)
        start = f.tell()
        shape, fortran, dtype = _read_npy_header(f, f"{path} member {name!r}")
        offset = f.tell()
    # The zip directory's size of the member (ZIP64-aware in zipfile) against what the header implies.
    nbytes = _check_npy_size(f"{path}: member {name!r}", shape, dtype, offset - start, info.file_size)
    if info.compress_size != info.file_size or offset + nbytes > file_bytes:
        raise CriteoFormatError(f"{path}: member {name!r} needs bytes {offset}..{offset + nbytes} of the file, which "
                                f"has {file_bytes} (stored size {info.compress_size}, size {info.file_size}): "
                                "truncated or corrupt zip")
    if fortran:
        raise CriteoFormatError(f"{path}: member {name!r} is Fortran-ordered; expected C order")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _open_npy(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise CriteoFormatError(f"{path}: missing")
    with open(path, "rb") as f:
        shape, _, dtype = _read_npy_header(f, path)
        _check_npy_size(f"{path}: the file", shape, dtype, f.tell(), os.fstat(f.fileno()).st_size)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise CriteoFormatError(f"{path}: not a valid .npy array ({e})") from None


@dataclass
class CriteoDay:
    """One day's three files, memory-mapped and checked against each other."""

    day: int
    rows: int
    dense: np.ndarray  # float32 (rows, 13)
    labels: np.ndarray  # int32 (rows, 1)
    sparse: list[np.ndarray]  # int32 (rows, MULTI_HOT_SIZES[k]) per feature
    sparse_path: str


def open_day(data_dir: str, day: int, multi_hot_sizes=MULTI_HOT_SIZES) -> CriteoDay:
    dense_path, labels_path, sparse_path = day_paths(data_dir, day)
    dense, labels = _open_npy(dense_path), _open_npy(labels_path)
    if dense.dtype != np.float32 or dense.ndim != 2 or dense.shape[1] != NUM_DENSE:
        raise CriteoFormatError(f"{dense_path}: expected float32 (N, {NUM_DENSE}), found {dense.dtype} "
                                f"{dense.shape}")
    rows = dense.shape[0]
    if labels.dtype != np.int32 or labels.shape != (labels.shape[0], 1):
        raise CriteoFormatError(f"{labels_path}: expected int32 (N, 1), found {labels.dtype} {labels.shape}")
    if labels.shape[0] != rows:
        raise CriteoFormatError(f"{labels_path}: {labels.shape[0]} rows, but {dense_path} has {rows}")
    if not os.path.exists(sparse_path):
        raise CriteoFormatError(f"{sparse_path}: missing")
    sparse = []
    for k, size in enumerate(multi_hot_sizes):
        member = npz_member_memmap(sparse_path, str(k))
        if member.dtype != np.int32 or member.ndim != 2 or member.shape[1] != size:
            raise CriteoFormatError(f"{sparse_path}: member '{k}' is {member.dtype} {member.shape}, expected int32 "
                                    f"(N, {size})")
        if member.shape[0] != rows:
            raise CriteoFormatError(f"{sparse_path}: member '{k}' has {member.shape[0]} rows, but {dense_path} "
                                    f"has {rows}")
        sparse.append(member)
    return CriteoDay(day, rows, dense, labels, sparse, sparse_path)


def day_rows(data_dir: str, day: int) -> int:
    """Rows of a day from the dense file's header alone."""
    path = day_paths(data_dir, day)[0]
    if not os.path.exists(path):
        raise CriteoFormatError(f"{path}: missing")
    with open(path, "rb") as f:
        return _read_npy_header(f, path)[0][0]


def write_day(out_dir: str, day: int, dense: np.ndarray, labels: np.ndarray, sparse: list[np.ndarray]) -> None:
    """Write one day in the layout above (np.save / uncompressed np.savez, as the reference's scripts do)."""
    rows = dense.shape[0]
    if dense.dtype != np.float32 or dense.shape != (rows, NUM_DENSE):
        raise ValueError(f"dense must be float32 (N, {NUM_DENSE}), got {dense.dtype} {dense.shape}")
    if labels.dtype != np.int32 or labels.shape != (rows, 1):
        raise ValueError(f"labels must be int32 ({rows}, 1), got {labels.dtype} {labels.shape}")
    if any(s.dtype != np.int32 or s.ndim != 2 or s.shape[0] != rows for s in sparse):
        raise ValueError(f"sparse arrays must be int32 ({rows}, k)")
    dense_path, labels_path, sparse_path = day_paths(out_dir, day)
    np.save(dense_path, dense)
    np.save(labels_path, labels)
    np.savez(sparse_path, **{str(k): s for k, s in enumerate(sparse)})
