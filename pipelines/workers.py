"""What every torch DataLoader worker of the project shares."""

from __future__ import annotations

import signal


def ignore_sigterm(worker_id: int) -> None:
    """`worker_init_fn` of every DataLoader: Slurm's preemption (requeue, time limit) sends SIGTERM to every
    process of the job at once, workers included. torch's own worker handler re-raises it, so the worker
    died and its rank failed on the next batch before reaching the sync point where it saves its checkpoint.
    Ignored here, the worker keeps feeding until the rank has saved; it still exits when its parent does."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
