"""runtime/safe_dcp.py: DCP checkpoints (DLRM's, megatron's torch_dist) resume without unpickling arbitrary objects."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from runtime.safe_dcp import SafeFileSystemReader, safe_megatron_reads


class _RunsCode:
    """What a tampered .metadata can hold: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _save(path, state):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=str(path))


def _state():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(5, 3, generator=g), "h": torch.randn(4, generator=g).to(torch.bfloat16),
            "extra": {"step": 7, "name": "resnet"}}


def test_reads_what_pickle_reads_and_loads_the_same_values(tmp_path):
    _save(tmp_path / "ck", _state())
    with open(tmp_path / "ck" / ".metadata", "rb") as f:
        expected = pickle.load(f)
    safe = SafeFileSystemReader(str(tmp_path / "ck")).read_metadata()
    assert safe.state_dict_metadata == expected.state_dict_metadata and safe.storage_data == expected.storage_data
    target = {"w": torch.zeros(5, 3), "h": torch.zeros(4, dtype=torch.bfloat16), "extra": {"step": 0, "name": ""}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(target, storage_reader=SafeFileSystemReader(str(tmp_path / "ck")))
    source = _state()
    assert torch.equal(target["w"], source["w"]) and torch.equal(target["h"], source["h"])
    assert target["extra"] == source["extra"]


def test_a_tampered_metadata_file_is_refused_before_anything_runs(tmp_path):
    _save(tmp_path / "ck", _state())
    marker = tmp_path / "ran"
    with open(tmp_path / "ck" / ".metadata", "wb") as f:
        pickle.dump(_RunsCode(marker), f)
    with pytest.raises(pickle.UnpicklingError, match=r"\.metadata: refuses to build posix\.system"):
        SafeFileSystemReader(str(tmp_path / "ck")).read_metadata()
    assert not marker.exists()


def test_metadata_that_is_not_a_checkpoints_is_named(tmp_path):
    _save(tmp_path / "ck", _state())
    with open(tmp_path / "ck" / ".metadata", "wb") as f:
        pickle.dump({"not": "metadata"}, f)
    with pytest.raises(pickle.UnpicklingError, match="holds a dict, not checkpoint metadata"):
        SafeFileSystemReader(str(tmp_path / "ck")).read_metadata()


def test_megatrons_load_strategy_builds_safe_readers_only_inside_the_context(tmp_path):
    from megatron.core.dist_checkpointing.strategies import torch as strategy

    original = strategy.FileSystemReader
    with safe_megatron_reads():
        for cache in (False, True):
            reader = strategy._get_filesystem_reader(str(tmp_path), cache_metadata=cache)
            assert isinstance(reader, SafeFileSystemReader)
    assert strategy.FileSystemReader is original
    assert not isinstance(strategy._get_filesystem_reader(str(tmp_path)), SafeFileSystemReader)
