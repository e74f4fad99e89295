"""Evaluations scored in the background: the loop logs each score when it arrives, in order, under the
evaluated block's epoch, stops at the first passing one, awaits what is pending at the budget's end, and a
failed scorer fails the run instead of hanging it. The scoring process survives Slurm's job-wide SIGTERM, a
score's extras (SD's FID and CLIP beside its verdict) reach every rank, and closing the scorer can abandon a score
it is still computing."""

import concurrent.futures
import os
import subprocess
import time
from concurrent.futures.process import BrokenProcessPool

import pytest
import torch
from conftest import compliance
from test_loop import Toy, _ctx, _events

from runtime.config import RunConfig
from runtime.loop import EXIT_NOT_CONVERGED, EXIT_SUCCESS, RunLoop
from runtime.pending_eval import BackgroundScorer, PendingEval


class Score(concurrent.futures.Future):
    """A score that arrives when the toy's step counter says so, or at once when the loop waits for it (as
    a real scorer would finish)."""

    def __init__(self, value, fail):
        super().__init__()
        self.value, self.fail = value, fail

    def arrive(self):
        if not self.done():
            self.set_exception(ValueError("scorer crashed")) if self.fail else self.set_result(self.value)

    def result(self, timeout=None):
        self.arrive()
        return super().result(timeout)


class AsyncToy(Toy):
    """The toy whose accuracy is scored `delay` training steps after its evaluation (so when a score arrives
    is deterministic)."""

    def __init__(self, ctx, delay, fail=False, **kw):
        super().__init__(ctx, **kw)
        self.delay, self.fail = delay, fail
        self.queue = []  # (step at which the score arrives, its future)
        self.step = 0

    def train_step(self, step):
        self.step = step + 1
        for due, future in self.queue:
            if self.step >= due:
                future.arrive()
        return super().train_step(step)

    def evaluate(self):
        future = Score(super().evaluate(), self.fail)
        self.queue.append((self.step + self.delay, future))
        return PendingEval(future, world_size=1, device=self.ctx.device)


def _run(tmp_path, bench_cls, run_cfg, **kw):
    ctx = _ctx(tmp_path)
    ctx.log.event("cache_clear", True)
    ctx.log.start("init_start")
    ctx.log.log_submission("resnet", org="t", platform="cpu", division="closed", status="onprem")
    ctx.log.event("seed", ctx.seed)
    bench = bench_cls(ctx, **kw)
    bench.log_hyperparameters()
    try:
        return RunLoop(bench, ctx, run_cfg).run(), bench, tmp_path / "log.txt"
    finally:
        ctx.log.close()


def test_scores_arrive_in_order_and_the_first_passing_one_stops_the_run_mid_block(tmp_path):
    sync, _, _ = _run(tmp_path / "sync", Toy, RunConfig(target=0.8, log_every_steps=2))
    result, bench, log = _run(tmp_path / "async", AsyncToy, RunConfig(target=0.8, log_every_steps=2), delay=3)
    assert result.status == "success" and result.exit_code == EXIT_SUCCESS
    # the same evaluations as the synchronous run, scored later
    assert [v for _, v in result.evals] == [v for _, v in sync.evals]
    passing = len(sync.evals)  # 1-based epoch of the first passing evaluation
    # 5 steps a block; the passing score arrives 3 steps into the next block, is seen at the sync point of
    # step 4 of that block (log_every_steps=2), and the run stops there, mid-block
    assert bench.step == passing * 5 + 4
    events = _events(log)
    accuracy = [e for e in events if e["key"] == "eval_accuracy"]
    assert [e["metadata"]["epoch_num"] for e in accuracy] == list(range(1, passing + 1))
    keys = [e["key"] for e in events]
    # each eval_accuracy comes after its eval_stop and after the next block started
    for e in accuracy[:-1]:
        stop = next(i for i, x in enumerate(events) if x["key"] == "eval_stop"
                    and x["metadata"]["epoch_num"] == e["metadata"]["epoch_num"])
        assert keys[stop + 1] == "block_start" and events.index(e) > stop + 1
    run_stop = events[keys.index("run_stop")]
    assert run_stop["metadata"] == {**run_stop["metadata"], "status": "success", "epoch_num": passing}
    assert keys[-2:] == ["block_stop", "run_stop"]
    ok, out = compliance(log)
    assert ok, out


def test_scores_still_pending_when_the_budget_ends_are_awaited(tmp_path):
    # the last block's score arrives only after training ends: the run waits for it (here it passes)
    sync, _, _ = _run(tmp_path / "sync", Toy, RunConfig(target=0.8, log_every_steps=5))
    passing = len(sync.evals)
    result, _, log = _run(tmp_path / "async", AsyncToy, RunConfig(target=0.8, log_every_steps=5), delay=100,
                          blocks=passing)
    assert result.status == "success" and [v for _, v in result.evals] == [v for _, v in sync.evals]
    result, _, _ = _run(tmp_path / "short", AsyncToy, RunConfig(target=0.8, log_every_steps=5), delay=100,
                        blocks=passing - 1)
    assert result.status == "aborted" and result.exit_code == EXIT_NOT_CONVERGED
    assert len(result.evals) == passing - 1


def test_a_failed_scorer_fails_the_run_with_its_error(tmp_path):
    with pytest.raises(RuntimeError, match="background scoring failed: scorer crashed"):
        _run(tmp_path, AsyncToy, RunConfig(target=0.8, log_every_steps=1), delay=1, fail=True)


def _slow_square(x):
    time.sleep(0.5)
    return x * x


def _remember(value):
    os.environ["SCORER_INIT"] = value


def _init_value(_):
    return os.environ["SCORER_INIT"]


def test_the_scoring_process_ignores_a_foreign_sigterm(tmp_path):
    scorer = BackgroundScorer(_remember, ("ground truth",))
    try:
        scorer.start()
        assert scorer.submit(_init_value, None).result(timeout=120) == "ground truth"
        future = scorer.submit(_slow_square, 7)
        (pid,) = scorer._executor._processes  # the one worker
        # `kill` is not the worker's parent: Slurm's job-wide SIGTERM looks like this to the worker
        subprocess.run(["kill", "-TERM", str(pid)], check=True)
        assert future.result(timeout=60) == 49
        assert scorer.submit(_slow_square, 3).result(timeout=60) == 9
    finally:
        scorer.close()


def test_pending_eval_extras_arrive_with_the_score():
    future = concurrent.futures.Future()
    pending = PendingEval(future, world_size=1, device=torch.device("cpu"), extras=2)
    assert pending.poll(wait=False) is None and pending.extras is None
    future.set_result((1.25, 28.5, 0.19))
    assert pending.poll(wait=False) == 1.25 and pending.extras == (28.5, 0.19)
    wrong = concurrent.futures.Future()
    wrong.set_result((1.0, 2.0))
    with pytest.raises(RuntimeError, match="returned 2 numbers, expected the score and 2 extras"):
        PendingEval(wrong, world_size=1, device=torch.device("cpu"), extras=2).poll(wait=True)


def _poll_on_two_ranks(rank, init_file, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        future = None
        if rank == 0:  # only rank 0 has the scorer's future
            future = concurrent.futures.Future()
            future.set_result((0.75, 31.5, 0.17))
        pending = PendingEval(future, world_size=2, device=torch.device("cpu"), extras=2)
        results[rank] = (pending.poll(wait=True), pending.extras)
    finally:
        dist.destroy_process_group()


def test_every_rank_learns_the_extras_with_the_score(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_poll_on_two_ranks, args=(str(tmp_path / "init"), results), nprocs=2)
        assert dict(results) == {0: (0.75, (31.5, 0.17)), 1: (0.75, (31.5, 0.17))}


def _sleep(seconds):
    time.sleep(seconds)
    return seconds


def test_closing_the_scorer_abandons_a_score_still_computing():
    scorer = BackgroundScorer(int, ())
    scorer.start()
    assert scorer.submit(_sleep, 0).result(timeout=120) == 0  # the worker is up
    (worker,) = scorer._executor._processes.values()
    busy = scorer.submit(_sleep, 60)
    time.sleep(0.5)
    t0 = time.time()
    scorer.close(abandon=True)
    assert time.time() - t0 < 20
    assert not worker.is_alive() and worker.exitcode is not None  # reaped, its exit status known
    assert isinstance(busy.exception(timeout=30), BrokenProcessPool)  # never a result from a killed worker
