"""Stable Diffusion's offline evaluation (train.eval_mode=offline, NVIDIA's): the reporting rule, a debug run that
trains to its cap and then evaluates its checkpoints (log through the real checker, run_stop at the first passing
checkpoint's time), the standalone evaluator (undecided while the run trains), no pass -> aborted, a resumed offline
run, a second run into the same checkpoint directory refused, a run's index of its own checkpoints only, a SIGTERM
in the offline phase, and scores.json merged between concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, compliance, eval_scores, read_events, train_command

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.stable_diffusion import SPEC, offline_eval  # noqa: E402
from models.stable_diffusion.offline_eval import (  # noqa: E402
    DIR_NAME,
    DONE,
    SCORES,
    ScoreCache,
    read_index,
    reported,
)

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
    scores = eval_scores(events)
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
    logged = eval_scores(read_events(run_dir / "mlperf_log.txt"))
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


def _offline_bench(run_dir, data, log_path, **eval_changes):
    """The offline run's benchmark over `run_dir`'s checkpoints (built as the evaluator is: the directory is full),
    with their run id, as a resumed run has it."""
    from runtime.benchmark import RunContext
    from runtime.distributed import LaunchEnv
    from runtime.mlperf_log import MLPerfLogger
    from runtime.parallel import ParallelLayout

    cfg = SPEC.config("debug")
    cfg.train.eval_mode = "offline"
    for key, value in eval_changes.items():
        setattr(cfg.eval, key, value)
    layout = ParallelLayout(1, 0)
    layout.build_groups()
    log = MLPerfLogger(str(log_path), enabled=True, stdout=False)
    ctx = RunContext(SPEC, LaunchEnv("single", 0, 1, 0, 1, "127.0.0.1", 0), layout, torch.device("cpu"), log,
                     str(run_dir), str(data), seed=1)
    bench = SPEC.benchmark(cfg, ctx, evaluation_only=True)
    bench.run_id = read_index(os.path.join(run_dir, DIR_NAME))[0]["run_id"]
    bench.open_eval_data()
    return bench, log


def test_offline_run_with_no_passing_checkpoint_is_aborted(offline_run, debug_data, tmp_path):
    _, run_dir = offline_run
    bench, log = _offline_bench(run_dir, debug_data("stable_diffusion"), tmp_path / "log.txt", fid_target=1.0)
    verdict = bench.evaluate_offline()
    log.close()
    assert verdict.status == "aborted" and verdict.time_ms is None and "none of the 4 checkpoints" in verdict.reason
    assert [s for s, _ in verdict.evals] == [640, 1280, 1920, 2560] and all(v < 1 for _, v in verdict.evals)
    assert sorted(eval_scores(read_events(tmp_path / "log.txt"))) == [640, 1280, 1920, 2560]


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
    resumed, full = eval_scores(events), eval_scores(read_events(full_dir / "mlperf_log.txt"))
    assert sorted(resumed) == sorted(full) == [1280, 1920]
    for samples in full:
        assert resumed[samples] == pytest.approx(full[samples], rel=1e-6)
    ok, report = compliance(tmp_path / "run" / "mlperf_log_attempt2.txt")
    assert ok, report
    json.loads((kept / "scores.json").read_text())  # the scores found, for an evaluator elsewhere


def _copy_checkpoints(run_dir, to, samples=None, scores=True):
    """`run_dir`'s kept checkpoints (those of `samples`), with or without its scores.json, into `to`."""
    source = run_dir / DIR_NAME
    to.mkdir(parents=True)
    for entry in read_index(source):
        if samples is None or entry["samples_count"] in samples:
            stem = os.path.basename(entry["path"])[:-len(".pt")]
            for ext in (".pt", ".json"):
                shutil.copy(source / (stem + ext), to / (stem + ext))
    if scores:
        shutil.copy(source / SCORES, to / SCORES)
    return to


def test_a_second_run_into_the_same_run_dir_is_refused_before_run_start(offline_run, debug_data, tmp_path):
    # The bug: a second run (another seed, a budget of one checkpoint) into the first run's directory scored the
    # first run's checkpoints and logged success in 0 s. It is refused, in one line, before anything is written
    # into the run directory (no log, no config snapshot).
    _, first_dir = offline_run
    run_dir = tmp_path / "run"
    _copy_checkpoints(first_dir, run_dir / DIR_NAME)
    t0 = time.time()
    r = _run(debug_data("stable_diffusion"), run_dir, "--seed", "2", "train.eval_mode=offline", "train.max_images=640")
    seconds = time.time() - t0
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert errors == [f"error: {run_dir / DIR_NAME} already holds checkpoints (unet_*.json) and this run does not "
                      f"resume (no latest.pt in run.checkpoint_dir): give it another --run-dir or eval.checkpoints, "
                      f"or remove them"], r.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [DIR_NAME] and "RESULT" not in r.stdout
    print(f"refused in {seconds:.1f} s (interpreter and imports included)")


def test_a_runs_index_holds_only_its_own_checkpoints_up_to_what_it_trained(tmp_path):
    # run "a" (seed 1) kept 640, 1280 and 1920 images; run "b" (seed 2) then wrote its 640 over a's
    for run_id, seed, samples in (("a", 1, 640), ("a", 1, 1280), ("a", 1, 1920), ("b", 2, 640)):
        offline_eval.write_checkpoint(str(tmp_path), {"w": torch.zeros(1)},
                                      {"samples_count": samples, "step": samples // 16, "time_ms": samples,
                                       "timed_seconds": 1.0, "seed": seed, "run_id": run_id})
    assert [(e["run_id"], e["samples_count"]) for e in read_index(str(tmp_path), "b", 640)] == [("b", 640)]
    assert [e["samples_count"] for e in read_index(str(tmp_path), "a", 1280)] == [1280]  # 1920: not yet trained
    assert [e["samples_count"] for e in read_index(str(tmp_path), "a", 10 ** 9)] == [1280, 1920]
    with pytest.raises(ValueError, match=r"holds the checkpoints of 2 runs .*\('a', 1\), \('b', 2\)"):
        read_index(str(tmp_path))  # the standalone evaluator's whole directory must be one run's
    legacy = json.loads((tmp_path / "unet_000000000640.json").read_text())
    del legacy["run_id"]
    (tmp_path / "unet_000000000640.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match=r"unet_000000000640.json: missing key\(s\) \['run_id'\]"):
        read_index(str(tmp_path), "a")


def test_a_sigterm_in_the_offline_phase_keeps_the_scores_found_and_the_resume_evaluates_the_rest(
        offline_run, debug_data, tmp_path, monkeypatch):
    _, first_dir = offline_run
    run_dir = tmp_path / "run"
    _copy_checkpoints(first_dir, run_dir / DIR_NAME, scores=False)
    bench, log = _offline_bench(run_dir, debug_data("stable_diffusion"), tmp_path / "log.txt")
    loaded = []
    load_unet = offline_eval.load_unet
    monkeypatch.setattr(offline_eval, "load_unet", lambda model, path: (loaded.append(path), load_unet(model, path)))
    asked = []

    def sigterm_after_the_first():  # the loop's agreed flag, asked before each checkpoint still to evaluate
        asked.append(len(loaded))
        return len(asked) == 2

    assert bench.evaluate_offline(sigterm_after_the_first) is None
    assert [os.path.basename(p) for p in loaded] == ["unet_000000000640.pt"] and asked == [0, 1]
    saved = json.loads((run_dir / DIR_NAME / SCORES).read_text())["scores"]
    assert sorted(saved) == ["640"]
    # the resumed run: the score of 640 read back, only 1280 and 1920 evaluated, the first run's verdict
    loaded.clear()
    verdict = bench.evaluate_offline(lambda: False)
    log.close()
    assert [os.path.basename(p) for p in loaded] == ["unet_000000001280.pt", "unet_000000001920.pt"]
    assert verdict.status == "success" and verdict.samples == 1920
    full = eval_scores(read_events(first_dir / "mlperf_log.txt"))
    resumed = eval_scores(read_events(tmp_path / "log.txt"))
    assert sorted(resumed) == sorted(full) == [1280, 1920]
    for samples in full:
        assert resumed[samples] == pytest.approx(full[samples], rel=1e-9)


def test_the_standalone_evaluator_is_undecided_while_the_run_still_trains(offline_run, debug_data, tmp_path):
    _, run_dir = offline_run
    index = read_index(run_dir / DIR_NAME)
    done = json.loads((run_dir / DIR_NAME / DONE).read_text())  # written with the checkpoint at the budget's end
    assert done == {"run_id": index[0]["run_id"], "samples_count": 2560}
    # two checkpoints of the run so far (their scores known): none passes FID <= 1, but more may come
    partial = _copy_checkpoints(run_dir, tmp_path / "partial", samples=(640, 1280))
    r = _evaluator("--data-dir", str(debug_data("stable_diffusion")), "--checkpoints", str(partial),
                   "eval.fid_target=1")
    assert r.returncode == 4 and r.stdout.splitlines()[-1] == "UNDECIDED,stable_diffusion,2", r.stdout + r.stderr
    assert "NO_PASS" not in r.stdout and "the run is still training" in r.stderr


def _put_scores(directory: str, first: int, n: int) -> None:
    cache = ScoreCache(directory, {"settings": 1})
    for samples in range(first, first + n):
        cache.put({"samples_count": samples, "time_ms": samples}, float(samples), 0.5)


def test_scores_json_merges_the_scores_of_concurrent_writers(tmp_path):
    settings = {"settings": 1}
    run, evaluator = ScoreCache(str(tmp_path), settings), ScoreCache(str(tmp_path), settings)  # both read it empty
    evaluator.put({"samples_count": 640, "time_ms": 5}, 40.0, 0.1)
    run.put({"samples_count": 1280, "time_ms": 6}, 20.0, 0.2)  # used to write its own scores only, losing 640
    merged = ScoreCache(str(tmp_path), settings)
    assert merged.get({"samples_count": 640, "time_ms": 5}) == (40.0, 0.1)
    assert merged.get({"samples_count": 1280, "time_ms": 6}) == (20.0, 0.2)
    # two processes writing 40 scores each at once: every one of them lands
    procs = [multiprocessing.get_context("spawn").Process(target=_put_scores, args=(str(tmp_path), first, 40))
             for first in (10_000, 20_000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    saved = json.loads((tmp_path / SCORES).read_text())["scores"]
    assert len(saved) == 82 and saved["10039"]["FID"] == 10039.0 and saved["20000"]["FID"] == 20000.0


def test_the_standalone_evaluator_refuses_a_directory_of_two_runs(offline_run, debug_data, tmp_path, capsys):
    from models.stable_diffusion import evaluate_checkpoints

    _, run_dir = offline_run
    mixed = _copy_checkpoints(run_dir, tmp_path / "mixed", samples=(640, 1280))
    meta = json.loads((mixed / "unet_000000001280.json").read_text())
    (mixed / "unet_000000001280.json").write_text(json.dumps({**meta, "seed": 2, "run_id": "another"}))
    rc = evaluate_checkpoints.main(["--data-dir", str(debug_data("stable_diffusion")), "--checkpoints", str(mixed)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {mixed}: holds the checkpoints of 2 runs") and "\n" not in err, err
