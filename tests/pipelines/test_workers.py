"""DataLoader workers survive a job-wide SIGTERM (Slurm's preemption) but not their parent's."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import torch
from torch.utils.data import DataLoader, Dataset

from pipelines.workers import ignore_sigterm


class _Numbers(Dataset):
    def __len__(self):
        return 10_000

    def __getitem__(self, i):
        return torch.tensor([i])


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_a_sigterm_from_elsewhere_is_ignored_and_the_parents_ends_the_worker():
    # Processes earlier tests left for the session (multiprocessing's resource tracker, started by any spawn) are
    # not this loader's worker.
    before = _children()
    loader = DataLoader(_Numbers(), batch_size=4, num_workers=1, persistent_workers=True,
                        worker_init_fn=ignore_sigterm)
    batches = iter(loader)
    assert next(batches).tolist() == [[0], [1], [2], [3]]
    pid, = _children() - before
    worker = psutil.Process(pid)
    # Slurm's SIGTERM comes from slurmstepd, not from the worker's parent: the worker keeps feeding the rank.
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
    assert next(batches).tolist() == [[4], [5], [6], [7]]
    # The parent's SIGTERM (multiprocessing's terminate) ends it at once.
    os.kill(worker.pid, signal.SIGTERM)
    worker.wait(timeout=10)
    del batches, loader
