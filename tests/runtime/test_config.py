"""Flavours and dotted overrides."""

import json

import pytest

from models.resnet import SPEC
from runtime.config import apply_overrides, write_run_snapshot


def test_overrides_are_parsed_by_field_type():
    cfg = SPEC.config("debug")
    apply_overrides(cfg, ["optim.base_lr=2.5", "train.global_batch_size=64", "train.compile=true",
                          "model.depths=2,2,2,2", "run.seed=none", "data.loader=dali", "train.epochs=1e1",
                          "run.max_steps=2e3"])
    assert cfg.optim.base_lr == 2.5 and cfg.train.global_batch_size == 64 and cfg.train.compile is True
    assert cfg.model.depths == (2, 2, 2, 2) and cfg.run.seed is None and cfg.data.loader == "dali"
    assert cfg.train.epochs == 10.0 and cfg.run.max_steps == 2000 and isinstance(cfg.run.max_steps, int)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=1", "OptimConfig has no field 'lr'"),
    ("train.global_batch_size=big", "'big' is not a valid int"),
    ("train.global_batch_size=2.5e0", "'2.5e0' is not a whole number"),  # was silently 2
    ("train.global_batch_size=1ex", "'1ex' is not a valid int"),
    ("train.compile=maybe", "'maybe' is not a boolean"),
    ("optim", "expected section.field=value"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(SPEC.config("debug"), [override])


def test_unknown_flavour():
    with pytest.raises(ValueError, match="resnet: unknown flavour 'dgx'; known: debug, dgxh100_1x8, dgxh100_8x8"):
        SPEC.config("dgx")


def test_flavours_are_independent_objects():
    a, b = SPEC.config("debug"), SPEC.config("debug")
    apply_overrides(a, ["optim.base_lr=1"])
    assert b.optim.base_lr != 1


def test_real_flavour_is_the_rcp_point():
    cfg = SPEC.config("dgxh100_8x8")
    assert cfg.train.global_batch_size == 3264 and cfg.optim.base_lr == 10.5
    assert cfg.optim.warmup_epochs == 2 and cfg.optim.weight_decay == 5e-5 and cfg.run.target == 0.759
    assert cfg.data.train_samples == 1_281_167 and cfg.data.eval_samples == 50_000
    assert cfg.model.depths == (3, 4, 6, 3) and cfg.model.num_classes == 1000


def test_snapshot(tmp_path):
    import dataclasses
    import importlib.metadata
    import platform
    import subprocess
    from pathlib import Path

    cfg = SPEC.config("debug")
    apply_overrides(cfg, ["optim.base_lr=3.25", "model.depths=2,1,1,1"])  # the resolved config, not the flavour's
    write_run_snapshot(str(tmp_path), "resnet", "debug", cfg, {"layout": "world=1"})
    snap = json.loads((tmp_path / "run_config.json").read_text())
    assert (snap["benchmark"], snap["flavour"], snap["layout"]) == ("resnet", "debug", "world=1")
    assert snap["config"] == json.loads(json.dumps(dataclasses.asdict(cfg), default=str))  # every field
    assert snap["config"]["optim"]["base_lr"] == 3.25 and snap["config"]["model"]["depths"] == [2, 1, 1, 1]
    assert snap["packages"]["torch"] == importlib.metadata.version("torch")
    assert snap["packages"]["python"] == platform.python_version()
    repo = Path(__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert snap["git_revision"] in (head, head + "-dirty"), snap["git_revision"]


def test_precision_names():
    import torch

    from runtime.precision import autocast_dtype

    assert autocast_dtype("bf16", ("fp32", "bf16")) is torch.bfloat16
    assert autocast_dtype("fp32", ("fp32", "bf16")) is None
    with pytest.raises(ValueError, match="train.precision='fp16': expected one of fp32, bf16"):
        autocast_dtype("fp16", ("fp32", "bf16"))
