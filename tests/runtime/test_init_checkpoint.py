"""data.init_checkpoint: the one rule GPT-3 and Llama-2-70B LoRA share (runtime/init_checkpoint.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from runtime.init_checkpoint import init_checkpoint_dir


def ctx(data_dir, is_main=True):
    return SimpleNamespace(is_main=is_main,
                           data_path=lambda p: p if os.path.isabs(p) else os.path.join(data_dir, p))


def test_relative_path_resolves_under_the_data_directory(tmp_path):
    (tmp_path / "ckpt").mkdir()
    assert init_checkpoint_dir(ctx(tmp_path), "ckpt", benchmark="gpt3", what="x") == str(tmp_path / "ckpt")
    assert init_checkpoint_dir(ctx("/elsewhere"), str(tmp_path / "ckpt"), benchmark="gpt3", what="x") == \
        str(tmp_path / "ckpt")


def test_empty_value_warns_on_rank_zero_only(tmp_path, capsys):
    assert init_checkpoint_dir(ctx(tmp_path), "", benchmark="llama2_70b_lora", what="x") is None
    out = capsys.readouterr().out
    assert out.startswith("llama2_70b_lora: WARNING:") and "not a valid MLPerf run" in out
    assert init_checkpoint_dir(ctx(tmp_path, is_main=False), "", benchmark="llama2_70b_lora", what="x") is None
    assert init_checkpoint_dir(ctx(tmp_path), "", benchmark="gpt3", what="x", warn_if_empty=False) is None
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("make", ["missing", "file"])
def test_not_a_directory_names_path_and_remedy(tmp_path, make):
    if make == "file":
        (tmp_path / "ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(FileNotFoundError) as err:
        init_checkpoint_dir(ctx(tmp_path), "ckpt", benchmark="gpt3", what="the reference checkpoint")
    msg = str(err.value)
    assert f"{tmp_path / 'ckpt'} is not a directory" in msg
    assert "models/gpt3/prepare/README.md" in msg and "python -m runtime.synthesize gpt3 --flavour debug" in msg
