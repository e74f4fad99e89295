"""Checkpoints: atomic writes, weights-only reads, and SIGTERM turned into a save-and-exit.

Two shapes: one file written by rank 0 (`save_atomic`, for replicated state), or a step directory every
rank writes its shards into (`save_step_dir`, for sharded state: GPT-3, DLRM's tables).

A checkpoint holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`
and never runs pickled code. It is written to a temporary file in the same directory, fsynced and
renamed over the old one (runtime/atomic_write.py), so a job killed mid-write leaves the previous checkpoint
intact.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import torch

from runtime.atomic_write import atomic_open, fsync_dir, write_text_atomic

LATEST = "latest.pt"
RUN_STATE = "run_state.json"  # beside the checkpoints: what a rerun of the same command must reuse
EXIT_PREEMPTED = 143  # 128 + SIGTERM: what Slurm and shells expect of a process ended by SIGTERM


def save_atomic(state: dict, path: str) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def write_run_state(directory: str, seed: int) -> None:
    write_text_atomic(os.path.join(directory, RUN_STATE), json.dumps({"seed": seed}) + "\n")


def resumes(run, marker: str = LATEST) -> bool:
    """Whether a run with these settings (RunConfig) resumes: run.resume and a checkpoint (its `marker` file, the
    newest checkpoint or the pointer to it) in run.checkpoint_dir."""
    return bool(run.resume and run.checkpoint_dir and os.path.exists(os.path.join(run.checkpoint_dir, marker)))


def saved_seed(directory: str) -> int | None:
    """The seed of the run whose checkpoints `directory` holds; None when it holds none."""
    path = os.path.join(directory, RUN_STATE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return int(json.load(f)["seed"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a run state file ({e}); remove it to start a new run") from None


def load(path: str, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises several types for a damaged or foreign file
        raise RuntimeError(f"checkpoint {path}: cannot be read as a weights-only checkpoint ({e})") from e


class PreemptionFlag:
    """Set by SIGTERM; the loop polls it at its sync points, agrees across ranks, saves and exits.

    The handler only sets a flag: saving from inside a signal handler could interrupt a collective.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self) -> "PreemptionFlag":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:
            pass  # not the main thread (e.g. a test runner thread): no preemption handling there
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


# -- sharded checkpoints: one directory per save, every rank writing its part -------------------------------
STEP_POINTER = "latest"  # text file naming the newest complete step directory
_KEEP = 2  # complete step directories kept; older ones are removed after a save


def save_step_dir(directory: str, step: int, write, *, is_main: bool, barrier) -> str:
    """Collective. Every rank calls `write(tmp_dir)` into `<directory>/.tmp-step_N`; once all have finished,
    rank 0 renames it to `step_N`, points `latest` at it (atomically) and prunes old ones. A job killed
    mid-save leaves `latest` on the previous complete checkpoint."""
    name = f"step_{step:08d}"
    final, tmp = os.path.join(directory, name), os.path.join(directory, ".tmp-" + name)
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    write(tmp)
    barrier()
    if is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(directory)
        write_text_atomic(os.path.join(directory, STEP_POINTER), name + "\n")
        older = sorted(d for d in os.listdir(directory) if d.startswith("step_") and d != name)
        for stale in older[: max(0, len(older) - (_KEEP - 1))]:
            shutil.rmtree(os.path.join(directory, stale), ignore_errors=True)
    barrier()
    return final


def latest_step_dir(directory: str) -> str | None:
    """The step directory `latest` names; None when there is no checkpoint yet."""
    pointer = os.path.join(directory, STEP_POINTER)
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(directory, name)
    if not name or not os.path.isdir(path):
        raise RuntimeError(f"{pointer} names {name!r}, which is not a checkpoint directory in {directory}")
    return path
