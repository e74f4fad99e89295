"""Evaluations scored off the critical path.

Some metrics take seconds to score once the model has produced its outputs (COCO mAP over 24,781 images).
NVIDIA scores them in a background worker while training continues, and stops at the first finished score
that meets the target. A benchmark's `evaluate()` does the part that needs the model (inference, gathering
the outputs on rank 0), hands the scoring to a worker, and returns a `PendingEval` instead of a float; the
run loop logs `eval_stop` at once and `eval_accuracy` when the score arrives (runtime/loop.py).

Every rank polls at the same points (the loop's sync points), so every rank learns of a score, and so
decides to stop, at the same step. A score may come with `extras`: numbers that every rank learns with it
(Stable Diffusion's FID and CLIP behind its one pass/fail value), for the benchmark's eval_accuracy lines.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.connection
import signal
from typing import Callable

import torch
import torch.distributed as dist

_PENDING, _DONE, _FAILED = 0.0, 1.0, 2.0


class PendingEval:
    """The score of one evaluation, computed by rank 0's worker; `None` on the other ranks.

    With `extras=n` the worker's result is a sequence (score, n more numbers); `poll` still returns the score,
    and `extras` holds the n numbers on every rank once it has arrived."""

    def __init__(self, future: concurrent.futures.Future | None, *, world_size: int, device: torch.device,
                 extras: int = 0):
        self._future = future
        self._world_size = world_size
        self._device = device
        self._n_extras = extras
        self.extras: tuple[float, ...] | None = None

    def _values(self) -> list[float]:
        result = self._future.result()
        if not self._n_extras:
            return [float(result)]
        values = [float(v) for v in result]
        if len(values) != 1 + self._n_extras:
            raise ValueError(f"the scorer returned {len(values)} numbers, expected the score and "
                             f"{self._n_extras} extras")
        return values

    def poll(self, wait: bool) -> float | None:
        """The score once rank 0 has it (all ranks call this together), else None; `wait` blocks for it."""
        state = torch.full((2 + self._n_extras,), float("nan"), dtype=torch.float64, device=self._device)
        state[0] = _PENDING
        error = None
        if self._future is not None and (wait or self._future.done()):
            try:
                state[:] = torch.tensor([_DONE, *self._values()], dtype=torch.float64)
            except Exception as e:  # a failed scorer must fail every rank, not leave them in the broadcast
                state[0], error = _FAILED, e
        if self._world_size > 1:
            dist.broadcast(state, src=0)
        if state[0] == _FAILED:
            raise RuntimeError(f"background scoring failed{f': {error}' if error else ' on rank 0'}") from error
        if state[0] != _DONE:
            return None
        values = state.tolist()
        self.extras = tuple(values[2:])
        return values[1]


class BackgroundScorer:
    """One scoring process (rank 0's), started once with what every score needs (e.g. the ground truth).

    A process, not a thread: scoring is Python-heavy and would take the GIL from the training step. The
    worker is spawned (no fork of a process that holds CUDA contexts and NCCL communicators), ignores a
    SIGTERM that is not its parent's (Slurm's job-wide one, so that a preempted rank can still drain its
    pending scores before checkpointing), and is started by `start()` before it is needed so that its
    import time overlaps training."""

    def __init__(self, initializer: Callable, initargs: tuple):
        self._initializer, self._initargs = initializer, initargs
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(self._initializer, self._initargs))
            # The worker is spawned by this submit, from this thread, and inherits its signal mask: with
            # SIGTERM blocked from its first instruction, no thread it starts (torch's, the executor's) can
            # be the one the kernel picks to die of a SIGTERM meant for the job.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            try:
                self._executor.submit(int)  # spawn now, while the first epoch trains
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def submit(self, fn: Callable, *args) -> concurrent.futures.Future:
        self.start()
        return self._executor.submit(fn, *args)

    def close(self, abandon: bool = False) -> None:
        """Stop the worker once it is idle; with `abandon`, at once, dropping a score it is still computing
        (one the finished run will never log: the interpreter would otherwise wait for it at exit)."""
        if self._executor is not None:
            workers = list((self._executor._processes or {}).values()) if abandon else []
            manager = self._executor._executor_manager_thread
            self._executor.shutdown(wait=False, cancel_futures=True)
            for process in workers:  # SIGTERM from its parent: the one the worker obeys (_init_worker)
                process.terminate()
            for process in workers:
                # Its exit, not a join: the executor's own thread reaps the same child, and the join that
                # loses that race sees no exit status and a process still "alive".
                if not multiprocessing.connection.wait([process.sentinel], timeout=60):
                    process.kill()  # not answering its parent's SIGTERM: no orphan left behind either way
            if workers and manager is not None:
                manager.join(timeout=60)  # it reaps the workers and fails what they were computing
            self._executor = None


def _init_worker(initializer: Callable, initargs: tuple) -> None:
    from pipelines.workers import ignore_sigterm

    ignore_sigterm(0)
    initializer(*initargs)
