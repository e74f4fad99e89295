"""ResNet debug runs end to end: data parallel parity, resume equality, the run to target."""

import re
import subprocess

import pytest
from conftest import REPO, compliance, read_metrics, spawn_ranks, train_command

from runtime.loop import EXIT_NOT_CONVERGED

STEPS = 6


def _losses(run_dir):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def test_dp2_matches_dp1_at_the_same_global_batch(resnet_debug_data, tmp_path):
    """DP=2 (16 images per rank) against DP=1 accumulating 2 micro-batches of 16: the same samples meet
    BatchNorm in the same groups, so losses and weights agree up to float summation order."""
    common = ["--seed", "7", "run.log_every_steps=1", f"run.max_steps={STEPS}"]
    one = subprocess.run(train_command("resnet", resnet_debug_data, tmp_path / "dp1", "train.grad_accum=2",
                                       *common), capture_output=True, text=True, cwd=REPO)
    assert one.returncode == EXIT_NOT_CONVERGED, one.stdout[-2000:] + one.stderr[-2000:]
    procs = spawn_ranks(2, train_command("resnet", resnet_debug_data, tmp_path / "dp2", *common))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [EXIT_NOT_CONVERGED] * 2, outs[0][-2000:] + outs[1][-2000:]
    dp1, dp2 = _losses(tmp_path / "dp1"), _losses(tmp_path / "dp2")
    assert sorted(dp1) == sorted(dp2) == list(range(1, STEPS + 1))
    for step in dp1:
        assert dp2[step] == pytest.approx(dp1[step], rel=2e-4, abs=1e-5), (step, dp1, dp2)
    assert dp1[STEPS] != dp1[1]  # it trained


def test_resume_gives_the_same_next_loss(resnet_debug_data, tmp_path):
    common = ["--seed", "3", "run.log_every_steps=1"]
    full = subprocess.run(train_command("resnet", resnet_debug_data, tmp_path / "full", *common,
                                        f"run.max_steps={STEPS}"), capture_output=True, text=True, cwd=REPO)
    assert full.returncode == EXIT_NOT_CONVERGED, full.stderr[-2000:]
    ck = tmp_path / "ck"
    for name, steps in (("first", STEPS // 2), ("resumed", STEPS)):
        r = subprocess.run(train_command("resnet", resnet_debug_data, tmp_path / name, *common,
                                         f"run.max_steps={steps}", f"run.checkpoint_dir={ck}"),
                           capture_output=True, text=True, cwd=REPO)
        assert r.returncode == EXIT_NOT_CONVERGED, r.stderr[-2000:]
    assert "resumed from" in r.stdout
    full_losses, resumed = _losses(tmp_path / "full"), _losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(STEPS // 2 + 1, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(full_losses[step], rel=1e-6), (step, resumed, full_losses)


@pytest.mark.slow
def test_debug_run_reaches_its_target_with_a_compliant_log(resnet_debug_data, tmp_path):
    r = subprocess.run(train_command("resnet", resnet_debug_data, tmp_path), capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = re.search(r"^RESULT,resnet,(\d+),([\d.]+),success,", r.stdout, re.M)
    assert result, r.stdout[-2000:]
    evals = [m["eval"] for m in read_metrics(tmp_path) if "eval" in m]
    assert evals[-1] >= 0.90 and all(e < 0.90 for e in evals[:-1])
    ok, report = compliance(tmp_path / "mlperf_log.txt")
    assert ok, report
    for name in ("eval_curve.png", "summary.txt", "run_config.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "eval_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_only_reports_the_starting_weights_without_a_run_log(resnet_debug_data, tmp_path):
    """--eval-only on a benchmark without an initial checkpoint: the seed's initial weights, evaluated on the
    whole validation set (same seed, same value), and no MLPerf log, since nothing was timed."""
    values = []
    for name in ("a", "b"):
        r = subprocess.run(train_command("resnet", resnet_debug_data, tmp_path / name, "--seed", "3", "--eval-only"),
                           capture_output=True, text=True, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        values.append(float(re.search(r"^EVAL,resnet,top1,([\d.]+)$", r.stdout, re.M).group(1)))
        assert not (tmp_path / name / "mlperf_log.txt").exists() and "RESULT," not in r.stdout
    # 16 classes: an untrained network is near chance (1/16) and far below the 0.90 target.
    assert values[0] == values[1] and values[0] < 0.5
