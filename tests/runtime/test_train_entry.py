"""runtime.train as a user on a cluster meets it: typos fail in a line, every started log is closed, a
preempted run resumes by running the same command and says it was resumed."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import REPO, compliance, read_events, train_command

ENV_ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _train(data, run_dir, *args, env=None, timeout=600):
    import os

    return subprocess.run(train_command("resnet", data, run_dir, *args), capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **ENV_ONE_THREAD, **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["train.global_batch_size=0"], "train.global_batch_size=0 must be >= 1"),
    (["data.loader=dale"], "data.loader='dale': expected 'dali' or 'torch'"),
    (["train.eval_offset=3"], r"train.eval_offset=3 must be in \[0, train.eval_every_epochs=1\)"),
    (["data.init_checkpoint=x.pt"], "resnet starts from its own initialisation"),
    (["--flavour", "dgx"], "resnet: unknown flavour 'dgx'"),
    (["optim.lr=1"], "OptimConfig has no field 'lr'"),
])
def test_config_errors_are_one_line_and_exit_2_before_run_start(resnet_debug_data, tmp_path, args, message):
    r = _train(resnet_debug_data, tmp_path, *args, timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert re.fullmatch(f"error: .*{message}.*\n", r.stderr, re.S) and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert list(tmp_path.iterdir()) == []  # the run directory as it was: no log, no config snapshot


@pytest.mark.parametrize("benchmark, override, message", [
    ("ssd", "optim.weight_decay=0.1", "optim.weight_decay=0.1: the closed rules fix it at 0"),
    ("unet3d", "eval.overlap=1.5", r"eval.overlap=1.5 must be in \[0, 1\)"),
    ("gnn", "train.grad_accum=2", "train.grad_accum=2: R-GAT trains without accumulation"),
    ("bert", "data.max_seq_length=4096", "data.max_seq_length=4096 exceeds model.max_position_embeddings"),
    ("llama2_70b_lora", "optim.max_steps=0", "optim.max_steps=0: expected >= 1"),
    ("stable_diffusion", "train.eval_mode=later", "train.eval_mode='later': expected one of"),
    ("dlrm_dcnv2", "optim.eps=1e-7", r"the closed rules fix these DLRMv2 optimizer settings.*optim.eps=1e-07"),
    # a real flavour: the 175B model is never built, the closed learning rates are checked first
    ("gpt3", "optim.base_lr=0.001", r"optim.base_lr=0.001 is not a closed value at GBS 1536: \(2e-05,\)"),
])
def test_a_bad_setting_fails_in_one_line_before_the_run_directory_is_touched(tmp_path, benchmark, override, message):
    """Benchmark.check_settings is asked before any process group, model, log or snapshot exists (an empty data
    directory is enough: the settings are wrong whatever the data)."""
    import os

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    flavour = "dgxh100_32x8" if benchmark == "gpt3" else "debug"
    r = subprocess.run(train_command(benchmark, tmp_path, run_dir, override, flavour=flavour), capture_output=True,
                       text=True, cwd=REPO, env={**os.environ, **ENV_ONE_THREAD}, timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert re.fullmatch(f"error: {message}.*\n", r.stderr, re.S) and r.stderr.count("\n") == 1, r.stderr
    assert list(run_dir.iterdir()) == []


@pytest.mark.parametrize("benchmark", ["gpt3", "llama2_70b_lora"])
def test_megatron_benchmarks_say_a_typo_in_one_line_too(tmp_path, benchmark):
    """megatron-core warns at import that TE and apex are absent (every CPU machine): not before the one line."""
    import os

    r = subprocess.run(train_command(benchmark, tmp_path, tmp_path / "run", "optim.lrr=1"), capture_output=True,
                       text=True, cwd=REPO, env={**os.environ, **ENV_ONE_THREAD}, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: override 'optim.lrr=1': OptimConfig has no field 'lrr'"), r.stderr


def test_a_missing_data_directory_is_named(tmp_path):
    r = _train(tmp_path / "nowhere", tmp_path / "run", timeout=120)
    assert r.returncode == 2 and r.stderr == f"error: --data-dir {tmp_path / 'nowhere'}: no such directory\n"


def test_a_failure_after_run_start_still_closes_the_log(tmp_path):
    """An empty data directory is found when the data opens, inside the timed region: the one rank's log
    still ends with run_stop aborted, and the traceback names the problem."""
    (tmp_path / "data").mkdir()
    r = _train(tmp_path / "data", tmp_path / "run", timeout=300)
    assert r.returncode == 1 and "no train shards" in r.stderr
    events = read_events(tmp_path / "run" / "mlperf_log.txt")
    assert [e["key"] for e in events].count("run_start") == 1
    assert events[-1]["key"] == "run_stop" and events[-1]["metadata"]["status"] == "aborted"


def test_cache_clear_is_true_only_when_the_launcher_dropped_the_cache(resnet_debug_data, tmp_path):
    values = []
    for name, env in (("plain", {}), ("dropped", {"MLPERF_CACHE_CLEARED": "1"})):
        r = _train(resnet_debug_data, tmp_path / name, "run.max_steps=1", env=env, timeout=300)
        assert r.returncode == 3, r.stderr[-2000:]
        values.append([e["value"] for e in read_events(tmp_path / name / "mlperf_log.txt")
                       if e["key"] == "cache_clear"])
    assert values == [[False], [True]]


def test_rerunning_the_same_command_resumes_with_the_checkpoints_seed_and_its_own_log(resnet_debug_data, tmp_path):
    """No --seed: the first attempt draws one; the rerun takes it from the checkpoint, writes
    mlperf_log_attempt2.txt beside the first (aborted) log, and reports the time over both attempts as a
    resumed run, never as one MLPerf time."""
    args = ["run.checkpoint_dir=" + str(tmp_path / "ck")]
    first = _train(resnet_debug_data, tmp_path / "run", *args, "run.max_steps=60")
    assert first.returncode == 3, first.stderr[-2000:]
    seed = re.search(r"^RESULT,resnet,(\d+),", first.stdout, re.M)[1]
    second = _train(resnet_debug_data, tmp_path / "run", *args)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    result = re.search(r"^RESULT,resnet,(\d+),([\d.]+),(\w+),", second.stdout, re.M)
    assert result[1] == seed and result[3] == "success_resumed"
    assert "resumed run: 2 attempts" in second.stdout
    summary = (tmp_path / "run" / "summary.txt").read_text()
    assert "resumed attempts=2" in summary and "time_to_train" not in summary

    logs = [tmp_path / "run" / "mlperf_log.txt", tmp_path / "run" / "mlperf_log_attempt2.txt"]
    for log, status in zip(logs, ("aborted", "success")):
        events = read_events(log)
        keys = [e["key"] for e in events]
        assert keys.count("run_start") == keys.count("run_stop") == 1, log.name
        assert events[-1]["metadata"]["status"] == status
        assert [e["value"] for e in events if e["key"] == "seed"] == [int(seed)]
    ok, report = compliance(logs[1])
    assert ok, report
    # the resumed total covers both attempts' timed parts: more than the second attempt's own seconds
    this_attempt = float(re.search(r"([\d.]+) s in this one", second.stdout)[1])
    assert float(result[2]) > this_attempt


def test_a_seed_that_contradicts_the_checkpoint_is_refused(resnet_debug_data, tmp_path):
    args = ["run.checkpoint_dir=" + str(tmp_path / "ck")]
    first = _train(resnet_debug_data, tmp_path / "a", "--seed", "5", "run.max_steps=2", *args)
    assert first.returncode == 3, first.stderr[-2000:]
    r = _train(resnet_debug_data, tmp_path / "b", "--seed", "6", *args, timeout=120)
    assert r.returncode == 2 and "holds a run with seed 5, this command asks for seed 6" in r.stderr


def test_every_process_a_test_starts_imports_this_checkout(tmp_path):
    """Started from elsewhere (a worker run by file path, from another cwd), a test's subprocess still imports
    this checkout's models/ and runtime/, not a tree that the venv's editable install points at."""
    import os
    import sys

    code = "import models, runtime, kernels, pipelines; print(models.__file__, runtime.__file__, kernels.__file__, " \
           "pipelines.__file__)"
    worker = tmp_path / "worker.py"
    worker.write_text(code + "\n")
    for cmd in ([sys.executable, "-c", code], [sys.executable, str(worker)]):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd="/", env=dict(os.environ), timeout=120)
        assert r.returncode == 0, r.stderr
        for path in r.stdout.split():
            assert path.startswith(str(REPO) + os.sep), (cmd, path)
