"""What every torch DataLoader worker of the project shares."""

from __future__ import annotations

import os
import signal
import threading


def ignore_sigterm(worker_id: int) -> None:
    """`worker_init_fn` of every DataLoader: a SIGTERM from anyone but the worker's parent is ignored.

    Slurm's preemption (requeue, time limit) sends SIGTERM to every process of the job at once, workers
    included; torch's worker handler let them die of it, and the rank then failed on its next batch before
    reaching the sync point where it saves its checkpoint. The parent's own SIGTERM (DataLoader shutdown,
    multiprocessing's exit) must still end the worker, or the rank would wait for it forever. The signal is
    blocked and taken by a thread that can see who sent it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    parent = os.getppid()

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent or os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=wait, name="sigterm-from-parent", daemon=True).start()
