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


def _spawn(world, cmd, data_dirs, tmp_path):
    """Like conftest.spawn_ranks, with a data directory per rank (to corrupt one rank's view of the data)."""
    import os

    from conftest import free_port

    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "DATADIR": str(data_dirs[rank])}
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


def _last_event(log_path) -> str:
    return log_path.read_text().splitlines()[-1]


def test_a_rank_that_raises_is_named_and_every_log_is_closed(resnet_debug_data, tmp_path):
    """Rank 1 reads a copy of the dataset whose every train record is corrupt: it fails on its first batch,
    inside the timed region, naming the shard; rank 0 names rank 1 as lost and closes its log aborted."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(resnet_debug_data, bad)
    for shard in bad.glob("train-*"):
        data = bytearray(shard.read_bytes())
        data[40] ^= 0x01  # inside the first record's payload: its data CRC no longer matches
        shard.write_bytes(bytes(data))
    cmd = train_command("resnet", "", tmp_path / "run", "run.log_every_steps=1",
                        "run.collective_timeout_s=120", "data.index_dir=" + str(tmp_path / "index"))
    cmd.remove("--data-dir")
    cmd.remove("")
    procs = _spawn(2, cmd, [resnet_debug_data, bad], tmp_path)
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode == 1 and "[rank 1] failed:" in outs[1] and "train-" in outs[1], outs[1][-3000:]
    assert procs[0].returncode == EXIT_LOST_RANK and "lost rank(s) 1 of 2" in outs[0], outs[0][-3000:]
    last = _last_event(tmp_path / "run" / "mlperf_log.txt")
    assert '"key": "run_stop"' in last and '"status": "aborted"' in last


def test_a_collective_that_times_out_names_the_stalled_rank(resnet_debug_data, tmp_path):
    """Rank 1 stops (SIGSTOP: alive but silent, as a hung GPU would be); rank 0's next collective times out
    after run.collective_timeout_s, and it names rank 1 from the missing heartbeats instead of hanging."""
    cmd = train_command("resnet", resnet_debug_data, tmp_path, "run.log_every_steps=1", "run.collective_timeout_s=15")
    procs = spawn_ranks(2, cmd)
    try:
        _wait_for_line(procs[0], "step 3/")
        procs[1].send_signal(signal.SIGSTOP)
        start = time.time()
        out, _ = procs[0].communicate(timeout=120)
        elapsed = time.time() - start
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == EXIT_LOST_RANK, out[-3000:]
    assert "lost rank(s) 1 of 2: no heartbeat" in out and elapsed < 90
    last = _last_event(tmp_path / "mlperf_log.txt")
    assert '"key": "run_stop"' in last and '"status": "aborted"' in last


@pytest.mark.parametrize("world", [1, 2])
def test_a_data_loader_worker_that_dies_closes_every_log(resnet_debug_data, tmp_path, world):
    """The DataLoader worker of rank 0 is killed mid-run: rank 0 fails with torch's error and closes its log
    aborted; on two ranks, rank 1 names rank 0 as lost."""
    import psutil

    cmd = train_command("resnet", resnet_debug_data, tmp_path, "run.log_every_steps=1",
                        "run.collective_timeout_s=120")
    procs = spawn_ranks(world, cmd)
    try:
        _wait_for_line(procs[0], "step 3/")
        workers = psutil.Process(procs[0].pid).children(recursive=True)
        assert workers, "rank 0 has no data loader worker"
        for w in workers:
            w.kill()
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    # torch reports the death in several ways (the worker "is killed by signal", or the pipe it read from
    # reset or at EOF): what matters is that the rank fails, says so, and closes its log.
    assert procs[0].returncode == 1, outs[0][-3000:]
    assert "Traceback" in outs[0] and (world == 1 or "[rank 0] failed:" in outs[0]), outs[0][-3000:]
    if world == 2:
        assert procs[1].returncode == EXIT_LOST_RANK and "lost rank(s) 0 of 2" in outs[1], outs[1][-3000:]
    last = _last_event(tmp_path / "mlperf_log.txt")
    assert '"key": "run_stop"' in last and '"status": "aborted"' in last
