"""Resuming from torch.distributed.checkpoint directories without unpickling arbitrary objects.

DCP's FileSystemReader reads a checkpoint's `.metadata` with `pickle.load`, so whoever can write into a checkpoint
directory could run code on every rank that resumes from it. SafeFileSystemReader reads that file with an
unpickler that builds only what DCP metadata is made of (DCP's own metadata and plan classes, torch.Size, dtypes,
layouts, paths); anything else is an error naming the file and the global it asked for. The tensors themselves
are read by DCP as raw storage, never unpickled.

    SafeFileSystemReader(path)   a storage_reader for torch.distributed.checkpoint.load (DLRM)
    safe_megatron_reads()        megatron-core's torch_dist load strategy builds its readers from this module's
                                 classes while the context is open (GPT-3, Llama 2 LoRA: runtime/mcore/checkpointing)
"""

from __future__ import annotations

import contextlib
import importlib
import pathlib
import pickle

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

# Modules whose classes (dataclasses and enums describing chunks, storage and save plans) make up DCP metadata.
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.planner",
                "torch.distributed.checkpoint.filesystem")
_OTHER_GLOBALS = {
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,  # a layout by its name
    ("pathlib", "PosixPath"): pathlib.PosixPath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if module in _DCP_MODULES:
            found = getattr(importlib.import_module(module), name, None)
            if isinstance(found, type):
                return found
        elif module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        elif (module, name) in _OTHER_GLOBALS:
            return _OTHER_GLOBALS[module, name]
        raise pickle.UnpicklingError(f"{self.where}: refuses to build {module}.{name}: not part of a "
                                     "torch.distributed.checkpoint's metadata (a tampered or foreign file?)")


def load_metadata(file, where: str) -> Metadata:
    """The Metadata pickled in `file` (an open binary stream), built from the allowed classes only."""
    metadata = _MetadataUnpickler(file, where).load()
    if not isinstance(metadata, Metadata):
        raise pickle.UnpicklingError(f"{where}: holds a {type(metadata).__name__}, not checkpoint metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader whose metadata is read by load_metadata instead of pickle.load; the rest is DCP's."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = load_metadata(f, str(path))
        # as DCP's own reader does: the load id of this read on the storage metadata
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeCachedReader(SafeFileSystemReader):
    """megatron's CachedMetadataFileSystemReader (metadata read once per reader) over the safe read."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self._cached_metadata = None

    def read_metadata(self, *args, **kwargs) -> Metadata:
        if self._cached_metadata is None:
            self._cached_metadata = super().read_metadata(*args, **kwargs)
        return self._cached_metadata


@contextlib.contextmanager
def safe_megatron_reads():
    """megatron-core's torch_dist strategy creates its FileSystemReader (or its caching subclass) inside its load
    functions, with no way to pass one in: while this context is open, the names it builds them from are ours."""
    strategy = importlib.import_module("megatron.core.dist_checkpointing.strategies.torch")
    names = {"FileSystemReader": SafeFileSystemReader, "CachedMetadataFileSystemReader": _SafeCachedReader}
    saved = {name: getattr(strategy, name) for name in names if hasattr(strategy, name)}
    if "FileSystemReader" not in saved:
        raise RuntimeError(f"{strategy.__name__} no longer builds a FileSystemReader: runtime/safe_dcp.py needs "
                           "updating for this megatron-core")
    try:
        for name in saved:
            setattr(strategy, name, names[name])
        yield
    finally:
        for name, original in saved.items():
            setattr(strategy, name, original)
