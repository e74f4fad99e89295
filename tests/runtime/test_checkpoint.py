"""Atomic checkpoint writes and weights-only reads."""

import os
import pickle

import pytest
import torch

from runtime import checkpoint


def test_round_trip_and_no_temp_files_left(tmp_path):
    path = tmp_path / "ck" / "latest.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "evals": [[10, 0.5]]}
    checkpoint.save_atomic(state, str(path))
    checkpoint.save_atomic({**state, "step": 8}, str(path))
    loaded = checkpoint.load(str(path))
    assert loaded["step"] == 8 and torch.equal(loaded["w"], state["w"]) and loaded["evals"] == [[10, 0.5]]
    assert os.listdir(path.parent) == ["latest.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "latest.pt"
    checkpoint.save_atomic({"step": 1}, str(path))

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save_atomic({"step": 2, "bad": Unsaveable()}, str(path))
    assert checkpoint.load(str(path))["step"] == 1
    assert os.listdir(tmp_path) == ["latest.pt"]


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Payload()}, f)
    with pytest.raises(RuntimeError, match=f"checkpoint {path}: cannot be read as a weights-only checkpoint"):
        checkpoint.load(str(path))


def test_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "latest.pt"
    checkpoint.save_atomic({"w": torch.zeros(1000)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=str(path)):
        checkpoint.load(str(path))
