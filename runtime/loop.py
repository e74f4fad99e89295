"""The one run loop every benchmark uses: the timed part of a run, and resuming into it.

runtime/train.py has already logged cache_clear, init_start, the submission keys, the seed and the
benchmark's hyperparameters, built the benchmark and warmed it up (untimed). The loop then:

    resumes from run.checkpoint_dir when it holds a checkpoint (try_resume)
    init_stop + run_start (barriers around both)
    opens the data, then per block: block_start, train steps, block_stop, eval, eval_accuracy
    stops at the target (success), at the end of the budget or on a non-finite loss (aborted), or on
    SIGTERM after saving a checkpoint
    an evaluation scored in the background (runtime/pending_eval.py) logs eval_stop at once and its
    eval_accuracy at the first sync point after its score arrives; the run stops there if it met the target,
    mid-block. Pending scores are awaited before any checkpoint and before giving up at the budget's end
    a benchmark that evaluates offline (Benchmark.evaluates_offline: Stable Diffusion as NVIDIA runs it) keeps a
    checkpoint at each block end instead, trains to the budget, then evaluates them and decides run_stop; it
    polls RunLoop.preempted between checkpoints and, on a SIGTERM, returns None: save and exit 143, the resumed
    run evaluating what is left
    run_stop; train.py prints the RESULT line and writes the plot and summary

Host syncs happen at sync points (every `run.log_every_steps` steps and at block ends): that is where the loss
is read for the progress line and the NaN check, and where ranks agree on a pending SIGTERM. When the sync points
are further apart than `run.preempt_poll_seconds`, the ranks also agree on it every few steps in between (one
scalar all-reduce), so that a preempted job saves before Slurm's SIGKILL.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from mlperf_logging.mllog import constants

from runtime import checkpoint, report
from runtime.benchmark import Benchmark, OfflineVerdict, RunContext
from runtime.config import RunConfig
from runtime.mlperf_log import now_ms
from runtime.pending_eval import PendingEval
from runtime.profiling import StepProfiler

EXIT_SUCCESS, EXIT_NOT_CONVERGED = 0, 3  # 2 is argparse's usage error


@dataclass
class LoopState:
    """Where the run is; saved in checkpoints so a resumed run continues at the same step."""

    global_step: int = 0
    block_index: int = 0
    step_in_block: int = 0
    evals: list = field(default_factory=list)  # (samples trained, metric value)
    attempt: int = 1  # 1 + the times this run was resumed
    earlier_seconds: float = 0.0  # timed seconds of the earlier attempts, up to the checkpoint they left

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "block_index": self.block_index,
                "step_in_block": self.step_in_block, "evals": [list(e) for e in self.evals],
                "attempt": self.attempt, "earlier_seconds": self.earlier_seconds}

    @classmethod
    def from_state_dict(cls, state: dict) -> "LoopState":
        return cls(state["global_step"], state["block_index"], state["step_in_block"],
                   [tuple(e) for e in state["evals"]], state.get("attempt", 1), state.get("earlier_seconds", 0.0))


@dataclass
class RunResult:
    status: str  # "success" or "aborted"
    reason: str
    seconds: float  # this attempt's timed seconds
    samples: int
    evals: list
    exit_code: int
    attempts: int = 1
    total_seconds: float = 0.0  # over all attempts (= seconds unless the run was resumed)


def _barrier(ctx: RunContext) -> None:
    if ctx.launch.world_size > 1:
        dist.barrier()


def _any_rank(ctx: RunContext, flag: bool, seconds: float = 0.0) -> tuple[bool, float]:
    """(flag set on any rank, the largest `seconds` of any rank): one small all-reduce."""
    if ctx.launch.world_size == 1:
        return flag, seconds
    t = torch.tensor([1.0 if flag else 0.0, seconds], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0].item()), float(t[1].item())


class RunLoop:
    def __init__(self, bench: Benchmark, ctx: RunContext, run_cfg: RunConfig, on_run_start=None):
        self.bench, self.ctx, self.run_cfg = bench, ctx, run_cfg
        self.on_run_start = on_run_start
        self.state = LoopState()
        self.blocks = []
        self.t_start = None
        self.preemption = checkpoint.PreemptionFlag()
        self.profiler = StepProfiler(run_cfg.profile_start_step, run_cfg.profile_stop_step)
        self.pending: list[tuple] = []  # (block, samples, PendingEval), oldest first
        self.stopped_at_block = None  # the block whose evaluation ended the run

    # -- checkpoints -----------------------------------------------------------------------------------
    def _check_saved(self, common: dict, where: str) -> None:
        for key in ("loop", "seed"):
            if key not in common:
                raise RuntimeError(f"checkpoint {where}: missing key {key!r}")
        if common["seed"] != self.ctx.seed:
            raise RuntimeError(f"checkpoint {where} was written with seed {common['seed']}, this run uses "
                               f"{self.ctx.seed}: resume with run.seed={common['seed']}")

    def try_resume(self) -> bool:
        directory = self.run_cfg.checkpoint_dir
        if not (directory and self.run_cfg.resume):
            return False
        common = self.bench.load_checkpoint(directory, self._check_saved)
        if common is None:
            return False
        self.state = LoopState.from_state_dict(common["loop"])
        self.state.attempt += 1
        if self.ctx.is_main:
            print(f"resumed from {directory} at step {self.state.global_step}", flush=True)
        return True

    def _timed_seconds(self) -> float:
        """Seconds since run_start, over all attempts of a resumed run."""
        return self.state.earlier_seconds + time.time() - self.t_start

    def save(self) -> None:
        if self.run_cfg.checkpoint_dir:
            state = self.state.state_dict()
            if self.t_start is not None:  # the timed seconds up to this checkpoint, over all attempts
                state["earlier_seconds"] = self._timed_seconds()
            self.bench.save_checkpoint(self.run_cfg.checkpoint_dir, {"loop": state, "seed": self.ctx.seed})
            if self.ctx.is_main:
                checkpoint.write_run_state(self.run_cfg.checkpoint_dir, self.ctx.seed)
            _barrier(self.ctx)

    # -- the timed part --------------------------------------------------------------------------------
    def run(self) -> RunResult:
        bench, ctx, log = self.bench, self.ctx, self.ctx.log
        blocks = self.blocks = bench.blocks()  # a bad schedule setting fails here, before the clock starts
        self.preemption.install()
        _barrier(ctx)
        log.end(constants.INIT_STOP)
        _barrier(ctx)
        # run_start's own time stamp: a run_stop back-dated to a checkpoint (offline evaluation) is timed from it
        self.t_start_ms = now_ms()
        log.start(constants.RUN_START, time_ms=self.t_start_ms)
        if self.on_run_start is not None:
            self.on_run_start()
        t_start = self.t_start = time.time()

        sizes = bench.open_data()
        if not ctx.spec.train_samples_at_stop:
            log.event(constants.TRAIN_SAMPLES, sizes["train_samples"])
        log.event(constants.EVAL_SAMPLES, sizes["eval_samples"])
        total_steps = sum(b.steps for b in blocks)
        status, reason, exit_code = constants.ABORTED, "budget exhausted before the target", EXIT_NOT_CONVERGED

        offline = bench.evaluates_offline()
        # Steps between preemption polls outside the sync points; every step until the first sync point says how
        # long a step takes (0 after it when the sync points come often enough)
        self.poll_every = 1 if self.run_cfg.preempt_poll_seconds > 0 else 0
        window_loss = torch.zeros((), device=ctx.device)
        window_steps, window_t = 0, time.time()
        stop = False
        for index in range(self.state.block_index, len(blocks)):
            block = blocks[index]
            self.state.block_index = index
            log.start(constants.BLOCK_START, metadata=block.start_metadata)
            while self.state.step_in_block < block.steps:
                self.profiler.before_step(self.state.global_step)
                with self.profiler.range(f"step {self.state.global_step}"):
                    loss = bench.train_step(self.state.global_step)
                self.profiler.after_step(self.state.global_step)
                window_loss += loss.detach().float()
                window_steps += 1
                self.state.global_step += 1
                self.state.step_in_block += 1
                at_max = bool(self.run_cfg.max_steps) and self.state.global_step >= self.run_cfg.max_steps
                if (self.state.global_step % self.run_cfg.log_every_steps == 0
                        or self.state.step_in_block == block.steps or at_max):
                    mean_loss = self._global_mean(window_loss / window_steps)
                    window_seconds = time.time() - window_t
                    step_seconds = window_seconds / window_steps
                    self._progress(mean_loss, window_steps, window_seconds, total_steps)
                    window_loss.zero_()
                    window_steps, window_t = 0, time.time()
                    if not math.isfinite(mean_loss):
                        reason, stop = f"non-finite loss {mean_loss} at step {self.state.global_step}", True
                        break
                    if self.pending and (outcome := self._collect(wait=False)):
                        (status, reason, exit_code), stop = outcome, True
                        break
                    preempted, step_seconds = _any_rank(ctx, self.preemption.requested, step_seconds)
                    if preempted:
                        return self._preempted(t_start)
                    self._set_poll_interval(step_seconds)
                    if at_max:
                        if outcome := self._collect(wait=True):
                            (status, reason, exit_code), stop = outcome, True
                            break
                        self.save()
                        reason, stop = f"stopped at run.max_steps={self.run_cfg.max_steps}", True
                        break
                elif self.poll_every and self.state.global_step % self.poll_every == 0:
                    if _any_rank(ctx, self.preemption.requested)[0]:
                        return self._preempted(t_start)
            if stop:
                log.end(constants.BLOCK_STOP, metadata=block.stop_metadata)
                break
            log.end(constants.BLOCK_STOP, metadata=block.stop_metadata)

            samples = self.state.global_step * bench.global_batch_size
            self.state.step_in_block = 0
            self.state.block_index = index + 1
            if offline:  # evaluated once the budget is spent (evaluate_offline below)
                bench.keep_for_offline_eval(self.state.global_step, samples, self._timed_seconds())
                outcome = None
            else:
                outcome = self._evaluate(block, samples)
            if outcome:
                status, reason, exit_code = outcome
                break
            if self.run_cfg.checkpoint_every_blocks and (index + 1) % self.run_cfg.checkpoint_every_blocks == 0:
                if outcome := self._collect(wait=True):
                    status, reason, exit_code = outcome
                    break
                self.save()
        else:  # the budget is spent: the scores still pending, or the offline evaluation, decide
            if offline:
                verdict = bench.evaluate_offline(self.preempted)
                if verdict is None:  # stopped by a SIGTERM between checkpoints: what it scored stays for the resume
                    return self._preempted(t_start)
                status, reason = verdict.status, verdict.reason
                exit_code = EXIT_SUCCESS if status == constants.SUCCESS else EXIT_NOT_CONVERGED
                return self._finish(status, reason, exit_code, t_start, verdict)
            if outcome := self._collect(wait=True):
                status, reason, exit_code = outcome
        return self._finish(status, reason, exit_code, t_start)

    def _set_poll_interval(self, step_seconds: float) -> None:
        """From the slowest rank's mean step time: poll about every run.preempt_poll_seconds, or only at the sync
        points when those come at least as often."""
        poll_seconds = self.run_cfg.preempt_poll_seconds
        every = max(1, int(poll_seconds / max(step_seconds, 1e-9))) if poll_seconds > 0 else 0
        self.poll_every = every if every < self.run_cfg.log_every_steps else 0

    def preempted(self) -> bool:
        """A SIGTERM on any rank, agreed (every rank calls this together): what a long phase outside the train
        steps (an offline evaluation) polls between its units of work."""
        return _any_rank(self.ctx, self.preemption.requested)[0]

    def _preempted(self, t_start: float) -> RunResult:
        """Every rank agreed on a SIGTERM: scores still pending decide first, else save and exit 143."""
        if outcome := self._collect(wait=True):
            return self._finish(*outcome, t_start)
        self.save()
        return self._finish(constants.ABORTED, "preempted by SIGTERM (checkpoint saved)", checkpoint.EXIT_PREEMPTED,
                            t_start)

    def _evaluate(self, block, samples: int) -> tuple | None:
        """Evaluate after `block`; (status, reason, exit code) when the score ends the run."""
        log = self.ctx.log
        log.start(constants.EVAL_START, metadata=block.eval_metadata)
        with self.profiler.range("eval"):
            value = self.bench.evaluate()
        if isinstance(value, PendingEval):
            log.end(constants.EVAL_STOP, metadata=block.eval_metadata)
            # first looked at from the next sync point on: the score never holds up this block's end
            self.pending.append((block, samples, value))
            return None
        return self._record(block, samples, value, before_eval_stop=True)

    def _record(self, block, samples: int, value: float, before_eval_stop: bool = False) -> tuple | None:
        """Log one evaluation's score; (status, reason, exit code) when it ends the run."""
        ctx = self.ctx
        for logged, extra in self.bench.eval_accuracy_lines(value):
            ctx.log.event(constants.EVAL_ACCURACY, logged, metadata={**block.eval_metadata, **extra})
        if before_eval_stop:
            ctx.log.end(constants.EVAL_STOP, metadata=block.eval_metadata)
        self.state.evals.append((samples, value))
        if ctx.is_main:
            print(f"eval after {samples} samples: {ctx.spec.metric} {value:.4f} "
                  f"(target {self.run_cfg.target})", flush=True)
            report.write_metrics_line(ctx.run_dir, {"step": self.state.global_step, "samples": samples,
                                                    "eval": value})
        if not math.isfinite(value):
            self.stopped_at_block = block
            return constants.ABORTED, f"non-finite eval {ctx.spec.metric} {value}", EXIT_NOT_CONVERGED
        if ctx.spec.reached(value, self.run_cfg.target):
            self.stopped_at_block = block
            return constants.SUCCESS, "target reached", EXIT_SUCCESS
        return None

    def _collect(self, wait: bool) -> tuple | None:
        """Log the background scores that have arrived (all of them with `wait`), oldest first; the outcome
        of the first that ends the run."""
        while self.pending:
            block, samples, pending = self.pending[0]
            value = pending.poll(wait)
            if value is None:
                return None
            self.pending.pop(0)
            if outcome := self._record(block, samples, value):
                self.pending.clear()
                return outcome
        return None

    def _global_mean(self, local: torch.Tensor) -> float:
        """The loss over the whole global batch. Every rank gets the same value, so every rank takes the
        same decision at a NaN check."""
        if self.ctx.layout.dp > 1:
            local = local.clone()
            dist.all_reduce(local, group=self.ctx.layout.dp_group())
            local /= self.ctx.layout.dp
        return local.item()

    def _progress(self, mean_loss: float, steps: int, seconds: float, total_steps: int) -> None:
        if not self.ctx.is_main:
            return
        gbs = self.bench.global_batch_size
        rate = steps * gbs / seconds if seconds > 0 else float("nan")
        left = total_steps - self.state.global_step
        eta = left * seconds / steps if steps else float("nan")
        fields = self.bench.progress_fields()
        extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        print(f"step {self.state.global_step}/{total_steps} loss {mean_loss:.4f} {extra} "
              f"{rate:.1f} samples/s budget-ETA {eta / 60:.1f} min", flush=True)
        report.write_metrics_line(self.ctx.run_dir, {"step": self.state.global_step, "loss": mean_loss,
                                                     "samples_per_s": rate, **fields})

    def _position(self) -> dict:
        """Where the run stopped, in its benchmark's eval unit (DLRM's reference logs it with run_stop): the
        position of the evaluation that ended it, else of the last block completed. `epoch_num`, and
        `samples_count` where the benchmark's eval metadata carries it (Llama 2 LoRA's closed rules)."""
        keys = ("epoch_num", "samples_count")
        if self.stopped_at_block is not None:
            metadata = self.stopped_at_block.eval_metadata
            return {k: metadata[k] for k in keys if k in metadata}
        done, position = 0, {"epoch_num": 0}
        for block in self.blocks:
            done += block.steps
            if done > self.state.global_step:
                break
            position = {k: block.eval_metadata[k] for k in keys if k in block.eval_metadata}
        return position

    def _finish(self, status: str, reason: str, exit_code: int, t_start: float,
                verdict: OfflineVerdict | None = None) -> RunResult:
        self.profiler.stop()
        self.preemption.uninstall()
        _barrier(self.ctx)
        samples = self.state.global_step * self.bench.global_batch_size
        if self.ctx.spec.train_samples_at_stop:
            self.ctx.log.event(constants.TRAIN_SAMPLES, samples)
        position, stop_ms = self._position(), None
        if verdict is not None:
            self.state.evals = list(verdict.evals)
            if status == constants.SUCCESS:
                # The run ended when the first passing checkpoint was taken; one taken by an earlier attempt of
                # a resumed run (never one uninterrupted MLPerf time) is clamped to this attempt's start.
                position, stop_ms = verdict.position, max(verdict.time_ms, self.t_start_ms)
                if verdict.samples is not None:  # what the run trained up to its time, for its throughput
                    samples = verdict.samples
        self.ctx.log.end(constants.RUN_STOP, metadata={"status": status, **position}, time_ms=stop_ms)
        seconds = time.time() - t_start if stop_ms is None else (stop_ms - self.t_start_ms) / 1000
        total = self.state.earlier_seconds + seconds
        if stop_ms is not None and verdict.timed_seconds is not None:
            total = verdict.timed_seconds
        return RunResult(status, reason, seconds, samples, list(self.state.evals), exit_code,
                         attempts=self.state.attempt, total_seconds=total)
