"""BERT debug runs end to end: the run to target with a compliant log, data-parallel parity, resume."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from conftest import REPO, compliance, read_metrics, spawn_ranks, train_command

from runtime.loop import EXIT_NOT_CONVERGED

STEPS = 4
CLOSED_BERT_KEYS = ("global_batch_size", "opt_base_learning_rate", "opt_lamb_epsilon",
                    "opt_learning_rate_training_steps", "opt_learning_rate_warmup_steps", "num_warmup_steps",
                    "start_warmup_step", "opt_lamb_beta_1", "opt_lamb_beta_2", "opt_lamb_weight_decay_rate")
NO_DROPOUT = ("model.hidden_dropout=0", "model.attention_dropout=0")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def bert_debug_data(tmp_path_factory):
    from runtime.synthesize import synthesize

    out = tmp_path_factory.mktemp("bert_debug_data")
    synthesize("bert", "debug", str(out))
    return out


def _run(data, run_dir, *overrides):
    return subprocess.run(train_command("bert", data, run_dir, *overrides), capture_output=True, text=True,
                          cwd=REPO, env=ENV, timeout=600)


def _losses(run_dir):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def _events(log_path):
    return [json.loads(line.split(":::MLLOG ", 1)[1]) for line in open(log_path) if ":::MLLOG " in line]


def test_debug_run_reaches_its_target_with_a_compliant_log(bert_debug_data, tmp_path):
    r = _run(bert_debug_data, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"^RESULT,bert,\d+,[\d.]+,success,", r.stdout, re.M), r.stdout[-2000:]
    evals = [m for m in read_metrics(tmp_path) if "eval" in m]
    assert evals[-1]["eval"] >= 0.75 and all(m["eval"] < 0.75 for m in evals[:-1])
    ok, report = compliance(tmp_path / "mlperf_log.txt")
    assert ok, report
    events = _events(tmp_path / "mlperf_log.txt")
    keys = [e["key"] for e in events]
    for key in CLOSED_BERT_KEYS:
        assert keys.count(key) == 1, key
    assert not any("trainnig" in k for k in keys)  # the TF reference's misspelt key
    accuracy = [e for e in events if e["key"] == "eval_accuracy"]
    # epoch_num counts training samples: steps so far x GBS 32 (the debug cadence: every 50 steps)
    assert [e["metadata"]["epoch_num"] for e in accuracy] == [m["samples"] for m in evals]
    assert all(m["samples"] % 1600 == 0 for m in evals)
    assert events[-1]["key"] == "run_stop" and events[-1]["metadata"]["status"] == "success"


def test_dp2_matches_dp1_accumulating_the_same_micro_batches(bert_debug_data, tmp_path):
    """DP=2 (16 sequences per rank) against DP=1 accumulating the same two micro-batches of 16: the
    same packed rows, the same averaged gradient, so the same losses up to summation order."""
    common = ["--seed", "7", "run.log_every_steps=1", f"run.max_steps={STEPS}", *NO_DROPOUT]
    one = _run(bert_debug_data, tmp_path / "dp1", "train.grad_accum=2", *common)
    assert one.returncode == EXIT_NOT_CONVERGED, one.stdout[-2000:] + one.stderr[-2000:]
    procs = spawn_ranks(2, train_command("bert", bert_debug_data, tmp_path / "dp2", *common))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [EXIT_NOT_CONVERGED] * 2, outs[0][-2000:] + outs[1][-2000:]
    dp1, dp2 = _losses(tmp_path / "dp1"), _losses(tmp_path / "dp2")
    assert sorted(dp1) == sorted(dp2) == list(range(1, STEPS + 1))
    for step in dp1:
        assert dp2[step] == pytest.approx(dp1[step], rel=1e-4), (step, dp1, dp2)
    assert dp1[STEPS] != dp1[1]


def test_resume_gives_the_same_losses(bert_debug_data, tmp_path):
    common = ["--seed", "3", "run.log_every_steps=1", *NO_DROPOUT]
    full = _run(bert_debug_data, tmp_path / "full", *common, f"run.max_steps={STEPS}")
    assert full.returncode == EXIT_NOT_CONVERGED, full.stderr[-2000:]
    checkpoints = tmp_path / "ck"
    for name, steps in (("first", STEPS // 2), ("resumed", STEPS)):
        r = _run(bert_debug_data, tmp_path / name, *common, f"run.max_steps={steps}", f"run.checkpoint_dir={checkpoints}")
        assert r.returncode == EXIT_NOT_CONVERGED, r.stderr[-2000:]
    assert "resumed from" in r.stdout
    expected, resumed = _losses(tmp_path / "full"), _losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(STEPS // 2 + 1, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], rel=1e-6), (step, resumed, expected)


@pytest.mark.parametrize("config", sorted((REPO / "launchers" / "bert").glob("config_*.sh")), ids=lambda p: p.name)
def test_launcher_config_shape_matches_its_name_and_flavour(config):
    """config_<SYSTEM>_<nodes>x<gpus>x<sequences per GPU micro-batch>[x<grad accum>][_pack].sh"""
    from models.bert.config import FLAVOURS

    script = f'source "{config}"; echo "$FLAVOUR $DGXNNODES $DGXNGPU $DGXSYSTEM $BENCHMARK"'
    flavour, nodes, gpus, system, benchmark = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]}
    ).stdout.split()
    assert benchmark == "bert" and system == config.stem.removeprefix("config_")
    shape = re.search(r"_(\d+)x(\d+)x(\d+)(?:x(\d+))?(_pack)?$", system)
    cfg = FLAVOURS[flavour]()
    assert (int(shape[1]), int(shape[2])) == (int(nodes), int(gpus))
    grad_accum = int(shape[4] or 1)
    assert grad_accum == cfg.train.grad_accum
    assert int(nodes) * int(gpus) * int(shape[3]) * grad_accum == cfg.train.global_batch_size
