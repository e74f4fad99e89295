"""A lost rank is named instead of hanging the job; SIGTERM saves a checkpoint and exits cleanly."""

import signal
import subprocess
import time

import pytest
import torch
from conftest import REPO, spawn_ranks, train_command

from runtime.checkpoint import EXIT_PREEMPTED
from runtime.watchdog import EXIT_LOST_RANK


def _wait_for_line(proc, text, timeout_s=240):
    """Read proc's output until a line containing `text` appears; returns everything read so far."""
    seen, deadline = [], time.time() + timeout_s
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"never saw {text!r}; output:\n{''.join(seen)[-3000:]}")


@pytest.mark.parametrize("victim", [1, 0], ids=["worker-dies", "store-host-dies"])
def test_killing_a_rank_fails_the_other_fast_and_names_it(resnet_debug_data, tmp_path, victim):
    # log_every_steps=1: a sync point every step, so the survivor is in a collective when the peer dies.
    cmd = train_command("resnet", resnet_debug_data, tmp_path, "run.log_every_steps=1",
                        "run.collective_timeout_s=120")
    procs = spawn_ranks(2, cmd)
    try:
        _wait_for_line(procs[0], "step 3/")
        procs[victim].kill()
        survivor = procs[1 - victim]
        out, _ = survivor.communicate(timeout=60)  # far below the 120 s collective timeout: no hang
    finally:
        for p in procs:
            p.kill()
    assert survivor.returncode == EXIT_LOST_RANK, out[-2000:]
    assert f"lost rank(s) {victim} of 2" in out
    if victim == 1:
        # rank 0 survived: its log is closed with run_stop aborted (not a compliant result: no eval ran)
        last = (tmp_path / "mlperf_log.txt").read_text().splitlines()[-1]
        assert '"key": "run_stop"' in last and '"status": "aborted"' in last


def test_sigterm_saves_a_checkpoint_and_exits_143(resnet_debug_data, tmp_path):
    ck = tmp_path / "ck"
    cmd = train_command("resnet", resnet_debug_data, tmp_path / "run", "run.log_every_steps=2",
                        f"run.checkpoint_dir={ck}", "--seed", "11")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for_line(proc, "step 4/")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, out[-2000:]
    assert "preempted by SIGTERM" in out and "Traceback" not in out
    state = torch.load(ck / "latest.pt", weights_only=True)
    assert state["seed"] == 11 and state["loop"]["global_step"] >= 4 and state["loop"]["global_step"] % 2 == 0
    assert '"status": "aborted"' in (tmp_path / "run" / "mlperf_log.txt").read_text()
