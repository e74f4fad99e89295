"""Megatron's mmap indexed dataset (`.bin` tokens + `.idx` index), read and written without Megatron.

    write_indexed_dataset("out/c4_en_6_c4_spm_text_document", documents)     # documents: iterable of int arrays
    ds = IndexedDataset("out/c4_en_6_c4_spm_text_document")
    ds[i]                       # tokens of sequence i (a read-only view of the mmap)
    ds.get(i, offset, length)   # part of it

`.idx`, little endian: magic b"MMIDIDX\\x00\\x00", version u64 (1), dtype code u8, sequence count u64,
document-index length u64, then sizes i32[n], pointers i64[n] (byte offsets into .bin), doc_idx i64[d].
`.bin`: the tokens of every sequence back to back. The C4 files hold one sequence per document, so
doc_idx is 0..n.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from runtime.atomic_write import atomic_open

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
               8: np.uint16}
CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
_HEADER = len(MAGIC) + 8 + 1 + 8 + 8


class IndexedDatasetError(ValueError):
    pass


def write_indexed_dataset(prefix: str, documents, dtype=np.uint16) -> None:
    """Write `prefix.bin` and `prefix.idx` holding one sequence per document, atomically per file."""
    dtype = np.dtype(dtype)
    if dtype not in CODE_OF:
        raise ValueError(f"{prefix}: unsupported token dtype {dtype}")
    sizes = []
    with atomic_open(prefix + ".bin") as f:  # streamed: a corpus never sits in memory
        for doc in documents:
            doc = np.asarray(doc)
            if dtype.kind in "iu" and doc.size and (doc.min() < np.iinfo(dtype).min or doc.max() > np.iinfo(dtype).max):
                raise ValueError(f"{prefix}: token ids outside the range of {dtype}")
            f.write(doc.astype(dtype, copy=False).tobytes(order="C"))
            sizes.append(doc.size)
    sizes_arr = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes_arr[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    doc_idx = np.arange(len(sizes) + 1, dtype=np.int64)
    with atomic_open(prefix + ".idx") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", CODE_OF[dtype]))
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(sizes_arr.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(doc_idx.tobytes(order="C"))


class IndexedDataset:
    """Read-only view of one `.bin`/`.idx` pair; every inconsistency raises naming the file."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        idx_path, bin_path = prefix + ".idx", prefix + ".bin"
        for path in (idx_path, bin_path):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: no such file (dataset prefix {prefix!r})")
        idx_bytes = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            header = f.read(_HEADER)
        if len(header) < _HEADER:
            raise IndexedDatasetError(f"{idx_path}: truncated header ({len(header)} of {_HEADER} bytes)")
        if header[:len(MAGIC)] != MAGIC:
            raise IndexedDatasetError(f"{idx_path}: not a Megatron mmap index (magic {header[:len(MAGIC)]!r})")
        version, code, n, n_doc = struct.unpack("<QBQQ", header[len(MAGIC):])
        if version != VERSION:
            raise IndexedDatasetError(f"{idx_path}: index version {version}, expected {VERSION}")
        if code not in DTYPE_CODES:
            raise IndexedDatasetError(f"{idx_path}: unknown dtype code {code}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        expected = _HEADER + 4 * n + 8 * n + 8 * n_doc
        if idx_bytes < expected:
            raise IndexedDatasetError(f"{idx_path}: truncated: {idx_bytes} bytes, the header promises {expected} "
                                      f"({n} sequences, {n_doc} document-index entries)")
        self._idx = np.memmap(idx_path, mode="r", dtype=np.uint8)
        self.sizes = np.frombuffer(self._idx, dtype=np.int32, count=n, offset=_HEADER)
        self.pointers = np.frombuffer(self._idx, dtype=np.int64, count=n, offset=_HEADER + 4 * n)
        self.doc_idx = np.frombuffer(self._idx, dtype=np.int64, count=n_doc, offset=_HEADER + 12 * n)
        need = int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize if n else 0
        bin_bytes = os.path.getsize(bin_path)
        if bin_bytes < need:
            raise IndexedDatasetError(f"{bin_path}: truncated: {bin_bytes} bytes, its index {idx_path} needs {need}")
        self._bin = np.memmap(bin_path, mode="r", dtype=np.uint8) if bin_bytes else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        size = int(self.sizes[i])
        length = size - offset if length is None else length
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"{self.prefix}: sequence {i} has {size} tokens; asked [{offset}, {offset + length})")
        return np.frombuffer(self._bin, dtype=self.dtype, count=length,
                             offset=int(self.pointers[i]) + offset * self.dtype.itemsize)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)
