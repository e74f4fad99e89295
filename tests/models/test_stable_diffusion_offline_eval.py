"""Stable Diffusion's offline evaluation (train.eval_mode=offline, NVIDIA's): the reporting rule, a debug run that
trains to its cap and then evaluates its checkpoints (log through the real checker, run_stop at the first passing
checkpoint's time), the standalone evaluator, no pass -> aborted, and a resumed offline run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, compliance, read_events, train_command

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.stable_diffusion import SPEC  # noqa: E402
from models.stable_diffusion.offline_eval import DIR_NAME, read_index, reported  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# 4 checkpoints of 640 images; seed 1 first passes both debug targets at the third (as its inline run does)
OFFLINE = ["--seed", "1", "train.eval_mode=offline", f"train.max_images={4 * 640}"]


def test_reporting_rule_pair_and_all():
    # "pair": the first passing checkpoint and the one before it, decided as soon as the pass is seen
    assert reported([False], 5, "pair") is None
    assert reported([False, False, True], 5, "pair") == [1, 2]
    # "all" (one run in ten): every checkpoint up to the first pass
    assert reported([False, False, True], 5, "all") == [0, 1, 2]
    # the first checkpoint passes: the checker needs two aggregated points, so the one after it too
    assert reported([True], 5, "pair") is None and reported([True, False], 5, "pair") == [0, 1]
    assert reported([True], 5, "all") == [0] and reported([True], 1, "pair") == [0]
    # no pass: undecided until every checkpoint is evaluated, then all of them
    assert reported([False, False], 3, "pair") is None and reported([False] * 3, 3, "pair") == [0, 1, 2]
    with pytest.raises(ValueError, match="eval.offline_report='every'"):
        reported([True], 2, "every")


def test_real_flavours_evaluate_offline_to_nvidias_step_caps():
    for flavour, steps in (("dgxh100_1x8", 6000), ("dgxh100_8x8", 3500)):
        cfg = SPEC.config(flavour)
        assert cfg.train.eval_mode == "offline" and cfg.eval.offline_report == "pair"
        assert cfg.train.max_images == steps * cfg.train.global_batch_size
    assert SPEC.config("debug").train.eval_mode == "inline"  # the contract suite's run stops at its first pass


def _run(data, run_dir, *overrides):
    return subprocess.run(train_command("stable_diffusion", data, run_dir, *overrides), capture_output=True,
                          text=True, cwd=REPO, env=ENV, timeout=900)


def _evaluator(*args):
    return subprocess.run([sys.executable, "-m", "models.stable_diffusion.evaluate_checkpoints", *args],
                          capture_output=True, text=True, cwd=REPO, env=ENV, timeout=900)


def _scores(events) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for e in events:
        if e["key"] == "eval_accuracy":
            out.setdefault(e["metadata"]["samples_count"], {})[e["metadata"]["metric"]] = e["value"]
    return out


@pytest.fixture(scope="module")
def offline_run(debug_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sd_offline")
    r = _run(debug_data("stable_diffusion"), run_dir, *OFFLINE)
    return r, run_dir


def test_offline_run_reports_and_stops_at_the_first_passing_checkpoint(offline_run, tmp_path):
    r, run_dir = offline_run
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    log = run_dir / "mlperf_log.txt"
    events = read_events(log)
    keys = [e["key"] for e in events]
    # trained to the cap without evaluating, then the evaluation lines, then run_stop
    last_block = max(i for i, k in enumerate(keys) if k == "block_stop")
    assert keys.count("block_stop") == 4 and "eval_start" not in keys[:last_block]
    assert keys[-1] == "run_stop" and events[-1]["metadata"]["status"] == "success"
    # "pair": the first passing checkpoint (1920 images) and the one before it, FID and CLIP at each
    scores = _scores(events)
    assert sorted(scores) == [1280, 1920] and all(set(v) == {"FID", "CLIP"} for v in scores.values())
    cfg = SPEC.config("debug")
    assert scores[1920]["FID"] <= cfg.eval.fid_target and scores[1920]["CLIP"] >= cfg.eval.clip_target
    assert not (scores[1280]["FID"] <= cfg.eval.fid_target and scores[1280]["CLIP"] >= cfg.eval.clip_target)
    # run_stop carries the time the 1920-image checkpoint was taken: its metadata file, and the block_start
    # logged right after that block (within the time the weights' host copy takes)
    kept = {e["samples_count"]: e for e in read_index(run_dir / DIR_NAME)}
    assert sorted(kept) == [640, 1280, 1920, 2560]
    stop = events[-1]
    assert stop["time_ms"] == kept[1920]["time_ms"] and stop["metadata"]["samples_count"] == 1920
    block_stop_1920 = next(e for e in events if e["key"] == "block_stop" and e["metadata"]["samples_count"] == 1920)
    next_start = next(e for e in events if e["key"] == "block_start" and e["metadata"]["samples_count"] == 1920)
    assert block_stop_1920["time_ms"] <= stop["time_ms"] <= next_start["time_ms"]
    run_start = next(e for e in events if e["key"] == "run_start")
    result = re.search(r"^RESULT,stable_diffusion,1,([\d.]+),success,", r.stdout, re.M)
    assert result and float(result[1]) == pytest.approx((stop["time_ms"] - run_start["time_ms"]) / 1000, abs=1e-3)
    # the real checker: open as logged, and relabelled closed (SD's debug log fails no closed rule)
    closed = tmp_path / "closed.txt"
    closed.write_text(log.read_text().replace('"value": "open"', '"value": "closed"'))
    for path in (log, closed):
        ok, report = compliance(path)
        assert ok, report


def test_standalone_evaluator_reuses_scores_and_reports_by_rule(offline_run, debug_data):
    _, run_dir = offline_run
    data = str(debug_data("stable_diffusion"))
    logged = _scores(read_events(run_dir / "mlperf_log.txt"))
    r = _evaluator("--data-dir", data, "--run-dir", str(run_dir), "eval.offline_report=all")
    assert r.returncode == 0, r.stdout + r.stderr
    evals = re.findall(r"^EVAL,stable_diffusion,(\d+),FID,([\d.]+),CLIP,([\d.]+)$", r.stdout, re.M)
    assert [int(s) for s, _, _ in evals] == [640, 1280, 1920]  # every checkpoint up to the first pass
    for samples, fid, clip in evals[1:]:  # the run's own scores, read back from scores.json
        assert (float(fid), float(clip)) == pytest.approx((logged[int(samples)]["FID"], logged[int(samples)]["CLIP"]),
                                                          abs=1e-6)
    first_pass = re.search(r"^FIRST_PASS,stable_diffusion,1920,(\d+)$", r.stdout, re.M)
    assert first_pass and int(first_pass[1]) == read_events(run_dir / "mlperf_log.txt")[-1]["time_ms"]
    # no checkpoint meets a stricter FID target: all four are evaluated and reported, exit 3
    r = _evaluator("--data-dir", data, "--run-dir", str(run_dir), "eval.fid_target=1")
    assert r.returncode == 3 and "NO_PASS,stable_diffusion" in r.stdout, r.stdout + r.stderr
    assert [int(s) for s in re.findall(r"^EVAL,stable_diffusion,(\d+),", r.stdout, re.M)] == [640, 1280, 1920, 2560]


def test_offline_run_with_no_passing_checkpoint_is_aborted(offline_run, debug_data, tmp_path):
    from runtime.benchmark import RunContext
    from runtime.distributed import LaunchEnv
    from runtime.mlperf_log import MLPerfLogger
    from runtime.parallel import ParallelLayout

    _, run_dir = offline_run
    cfg = SPEC.config("debug")
    cfg.train.eval_mode, cfg.eval.fid_target = "offline", 1.0
    layout = ParallelLayout(1, 0)
    layout.build_groups()
    log = MLPerfLogger(str(tmp_path / "log.txt"), enabled=True, stdout=False)
    ctx = RunContext(SPEC, LaunchEnv("single", 0, 1, 0, 1, "127.0.0.1", 0), layout, torch.device("cpu"), log,
                     str(run_dir), str(debug_data("stable_diffusion")), seed=1)
    bench = SPEC.benchmark(cfg, ctx)
    bench.open_eval_data()
    verdict = bench.evaluate_offline()
    log.close()
    assert verdict.status == "aborted" and verdict.time_ms is None and "none of the 4 checkpoints" in verdict.reason
    assert [s for s, _ in verdict.evals] == [640, 1280, 1920, 2560] and all(v < 1 for _, v in verdict.evals)
    assert sorted(_scores(read_events(tmp_path / "log.txt"))) == [640, 1280, 1920, 2560]


def test_resumed_offline_run_evaluates_every_attempts_checkpoints(offline_run, debug_data, tmp_path):
    _, full_dir = offline_run
    data = debug_data("stable_diffusion")
    resume = [*OFFLINE, f"run.checkpoint_dir={tmp_path / 'ck'}"]
    first = _run(data, tmp_path / "run", *resume, "run.max_steps=80")
    assert first.returncode == 3 and "eval_start" not in first.stdout, first.stdout[-3000:]
    kept = tmp_path / "ck" / DIR_NAME
    assert [e["samples_count"] for e in read_index(kept)] == [640]  # block 2 ended in the next attempt
    second = _run(data, tmp_path / "run", *resume)
    assert second.returncode == 0 and "resumed from" in second.stdout, second.stdout[-3000:]
    assert re.search(r"^RESULT,stable_diffusion,1,[\d.]+,success_resumed,", second.stdout, re.M)
    events = read_events(tmp_path / "run" / "mlperf_log_attempt2.txt")
    index = {e["samples_count"]: e for e in read_index(kept)}
    assert sorted(index) == [640, 1280, 1920, 2560]
    assert events[-1]["key"] == "run_stop" and events[-1]["time_ms"] == index[1920]["time_ms"]
    # the same weights as the uninterrupted run at every checkpoint, so the same scores
    resumed, full = _scores(events), _scores(read_events(full_dir / "mlperf_log.txt"))
    assert sorted(resumed) == sorted(full) == [1280, 1920]
    for samples in full:
        assert resumed[samples] == pytest.approx(full[samples], rel=1e-6)
    ok, report = compliance(tmp_path / "run" / "mlperf_log_attempt2.txt")
    assert ok, report
    json.loads((kept / "scores.json").read_text())  # the scores found, for an evaluator elsewhere
