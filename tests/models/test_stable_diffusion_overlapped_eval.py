"""Stable Diffusion's overlapped evaluation (train.eval_mode=overlapped): each kept checkpoint is evaluated by rank 0's
background process while training continues. A debug run reaches its target with a log the real checker passes, its
FID and CLIP equal the inline run's at the same checkpoints (same seed), run_stop is the loop's stop time, and a
job-wide SIGTERM mid-run saves and leaves no scorer process behind, and the resumed run awaits the score still
pending at its budget's end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import psutil
import pytest
from conftest import REPO, build_logged, compliance, eval_scores, read_events, train_command

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.stable_diffusion import SPEC  # noqa: E402
from models.stable_diffusion.offline_eval import DIR_NAME, SCORES, read_index  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SEED = ["--seed", "1"]  # seed 1 first passes both debug targets at the checkpoint of 1920 images
OVERLAPPED = [*SEED, "train.eval_mode=overlapped"]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _run_watched(data, run_dir, *overrides, sigterm_at_first_eval: bool = False):
    """Run training, noting the processes it started once its first evaluation is pending (the scorer among
    them); with `sigterm_at_first_eval`, then send SIGTERM to its whole process group, as Slurm preempts a job.
    Returns (returncode, output, those processes)."""
    proc = subprocess.Popen(train_command("stable_diffusion", data, run_dir, *overrides), cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, children = [], []
    try:
        for line in proc.stdout:
            lines.append(line)
            if '"key": "eval_stop"' in line and not children:
                children = _descendants(proc.pid)
                if sigterm_at_first_eval:
                    os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, "".join(lines), children


def _assert_no_orphans(children: list[psutil.Process]) -> None:
    assert children, "the run started no scorer process"
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running after the run ended: {[(p.pid, p.cmdline()) for p in alive]}"


@pytest.fixture(scope="module")
def runs(debug_data, tmp_path_factory):
    """The overlapped debug run and the inline run of the same seed."""
    data = debug_data("stable_diffusion")
    overlapped_dir, inline_dir = tmp_path_factory.mktemp("sd_overlapped"), tmp_path_factory.mktemp("sd_inline")
    t0 = time.time()
    overlapped = _run_watched(data, overlapped_dir, *OVERLAPPED)
    seconds = time.time() - t0
    inline = subprocess.run(train_command("stable_diffusion", data, inline_dir, *SEED), cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=600)
    return {"overlapped": (*overlapped, overlapped_dir, seconds), "inline": (inline, inline_dir)}


def test_debug_run_reaches_its_target_with_the_inline_runs_scores_and_a_compliant_log(runs, tmp_path):
    rc, out, children, run_dir, seconds = runs["overlapped"]
    assert rc == 0, out[-4000:]
    _assert_no_orphans(children)
    inline, inline_dir = runs["inline"]
    assert inline.returncode == 0, inline.stdout[-3000:] + inline.stderr[-3000:]
    log = run_dir / "mlperf_log.txt"
    events = read_events(log)
    keys = [e["key"] for e in events]
    assert keys[-1] == "run_stop" and events[-1]["metadata"]["status"] == "success"
    # FID and CLIP at each checkpoint up to the first pass, equal to the inline run's (same weights, same code)
    scores, inline_scores = eval_scores(events), eval_scores(read_events(inline_dir / "mlperf_log.txt"))
    assert sorted(inline_scores) == [640, 1280, 1920]
    assert sorted(scores) == [640, 1280, 1920]
    for samples, metrics in inline_scores.items():
        assert set(scores[samples]) == {"FID", "CLIP"}
        assert scores[samples] == pytest.approx(metrics, rel=1e-9), samples
    cfg = SPEC.config("debug")
    assert scores[1920]["FID"] <= cfg.eval.fid_target and scores[1920]["CLIP"] >= cfg.eval.clip_target
    # evaluated in the background: each eval_stop comes at once, its eval_accuracy after the next block began
    for samples in (640, 1280, 1920):
        stop = next(i for i, e in enumerate(events) if e["key"] == "eval_stop"
                    and e["metadata"]["epoch_num"] == samples)
        first_score = next(i for i, e in enumerate(events) if e["key"] == "eval_accuracy"
                           and e["metadata"]["samples_count"] == samples)
        assert keys[stop + 1] == "block_start" and first_score > stop + 1
    # the run trained past the passing checkpoint while it was scored, and stopped at the loop's time: run_stop
    # at the sync point where the score was seen, its position the passing checkpoint's
    trained = max(e["metadata"]["samples_count"] for e in events if e["key"] == "block_stop")
    assert trained > 1920
    last_score = max(e["time_ms"] for e in events if e["key"] == "eval_accuracy")
    assert events[-1]["time_ms"] >= last_score and events[-1]["metadata"]["epoch_num"] == 1920
    run_start = next(e for e in events if e["key"] == "run_start")
    result = re.search(r"^RESULT,stable_diffusion,1,([\d.]+),success,", out, re.M)
    assert result and float(result[1]) == pytest.approx((events[-1]["time_ms"] - run_start["time_ms"]) / 1000,
                                                        abs=0.05)
    # the checkpoints it evaluated, and their scores for an evaluator elsewhere (scores.json)
    kept = {e["samples_count"]: e for e in read_index(run_dir / DIR_NAME)}
    assert {640, 1280, 1920} <= set(kept)
    saved = json.loads((run_dir / DIR_NAME / SCORES).read_text())["scores"]
    for samples in (640, 1280, 1920):
        assert (saved[str(samples)]["FID"], saved[str(samples)]["CLIP"]) == (scores[samples]["FID"],
                                                                                scores[samples]["CLIP"])
    # the real checker: open as logged, and relabelled closed (SD's debug log fails no closed rule)
    closed = tmp_path / "closed.txt"
    closed.write_text(log.read_text().replace('"value": "open"', '"value": "closed"'))
    for path in (log, closed):
        ok, report = compliance(path)
        assert ok, report
    print(f"overlapped debug run: {seconds:.1f} s")


def test_sigterm_mid_run_saves_leaves_no_scorer_and_resumes_to_the_same_scores(runs, debug_data, tmp_path):
    data = debug_data("stable_diffusion")
    # a budget of two checkpoints: the resumed attempt ends with the second one's score still pending
    resume = [*OVERLAPPED, f"run.checkpoint_dir={tmp_path / 'ck'}", "train.max_images=1280"]
    rc, out, children = _run_watched(data, tmp_path / "run", *resume, sigterm_at_first_eval=True)
    assert rc == 143, out[-4000:]
    # the scorer ignored the job-wide SIGTERM, finished the pending score (logged before the save), then ended
    # with its parent
    _assert_no_orphans(children)
    events = read_events(tmp_path / "run" / "mlperf_log.txt")
    assert events[-1]["key"] == "run_stop" and events[-1]["metadata"]["status"] == "aborted"
    assert sorted(eval_scores(events)) == [640]
    assert (tmp_path / "ck" / "latest.pt").exists()

    second = subprocess.run(train_command("stable_diffusion", data, tmp_path / "run", *resume), cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert "resumed from" in second.stdout, second.stdout[-3000:] + second.stderr[-3000:]
    # the budget ended at the checkpoint of 1280 images: its score was awaited and logged, then run_stop (aborted:
    # 1280 images do not reach the targets), with the uninterrupted run's FID and CLIP
    assert second.returncode == 3, second.stdout[-3000:] + second.stderr[-3000:]
    events = read_events(tmp_path / "run" / "mlperf_log_attempt2.txt")
    keys = [e["key"] for e in events]
    assert keys[-3:] == ["eval_accuracy", "eval_accuracy", "run_stop"]
    assert events[-1]["metadata"]["status"] == "aborted"
    full = eval_scores(read_events(runs["overlapped"][3] / "mlperf_log.txt"))
    resumed = eval_scores(events)
    assert sorted(resumed) == [1280] and resumed[1280] == pytest.approx(full[1280], rel=1e-9)


def test_overlapped_mode_refuses_resume_checkpoints_that_would_await_every_score(tmp_path):
    cfg = SPEC.config("debug")
    cfg.train.eval_mode = "overlapped"
    cfg.run.checkpoint_every_blocks = 1
    with pytest.raises(ValueError, match=r"train.eval_mode=overlapped with run.checkpoint_every_blocks=1"):
        build_logged(SPEC, cfg, tmp_path)
    cfg.train.eval_mode = "background"
    with pytest.raises(ValueError, match=r"train.eval_mode='background': expected one of"):
        build_logged(SPEC, cfg, tmp_path)


def test_a_scorer_that_cannot_be_set_up_fails_its_scores_naming_the_reason(tmp_path, monkeypatch):
    from models.stable_diffusion import offline_eval
    from pipelines.laion.format import PROMPTS_FILE

    # in this process, not a spawned one: the initializer and the job as the worker runs them
    monkeypatch.setattr(offline_eval, "_SCORER_BENCH", None)
    monkeypatch.setattr(offline_eval, "_SCORER_ERROR", None)
    cfg = SPEC.config("debug")
    cfg.train.eval_mode = "overlapped"
    offline_eval.start_scorer(cfg, str(tmp_path), str(tmp_path / DIR_NAME), "cpu")  # no eval inputs there
    with pytest.raises(RuntimeError, match=rf"scoring process could not be set up: .*{PROMPTS_FILE}"):
        offline_eval.score_checkpoint({"path": str(tmp_path / "unet.pt"), "samples_count": 640, "time_ms": 1})
