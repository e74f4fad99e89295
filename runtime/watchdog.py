"""Naming a lost rank instead of hanging.

Every rank bumps a counter `heartbeat/<rank>` in the rendezvous store once a second from a daemon thread.
When a collective fails (gloo reports a closed connection at once; NCCL or a hung peer hits the
collective timeout), the survivors read the counters twice a few seconds apart: a rank whose counter did
not move is gone. If the store itself cannot be reached, the rank hosting it (rank 0, or torchrun's agent
on the first node) is the one lost.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist

EXIT_LOST_RANK = 17
_INTERVAL_S = 1.0


class Heartbeat:
    def __init__(self, master_addr: str, master_port: int, rank: int, world_size: int):
        self.rank = rank
        self.world_size = world_size
        self._addr, self._port = master_addr, master_port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _client(self) -> dist.Store:
        # Its own connection: a TCPStore client is not shared across threads.
        store = dist.TCPStore(self._addr, self._port, is_master=False, timeout=timedelta(seconds=5),
                              wait_for_workers=False)
        return dist.PrefixStore("heartbeat", store)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _beat(self) -> None:
        try:
            store = self._client()
            while not self._stop.is_set():
                store.add(str(self.rank), 1)
                self._stop.wait(_INTERVAL_S)
        except Exception:
            return  # the store went away: the failure path reports it

    def stop(self) -> None:
        self._stop.set()

    def lost_ranks(self) -> tuple[list[int], str]:
        """(ranks whose heartbeat stopped, explanation). Blocks for a few heartbeat intervals."""
        try:
            store = self._client()
            keys = [str(r) for r in range(self.world_size)]
            before = [store.add(k, 0) for k in keys]
            time.sleep(3 * _INTERVAL_S)
            after = [store.add(k, 0) for k in keys]
        except Exception as e:
            host = 0
            return [host], f"the rendezvous store on rank {host}'s host is unreachable ({e})"
        lost = [r for r in range(self.world_size) if r != self.rank and after[r] == before[r]]
        return lost, "no heartbeat for {:.0f} s".format(3 * _INTERVAL_S)


def report_and_exit(heartbeat: Heartbeat | None, error: BaseException, on_lost=None) -> None:
    """Called when a step of a multi-rank run raised: if peers are gone, say which and exit at once.

    os._exit, not sys.exit: tearing down a process group with a dead peer can itself block.
    Returns (so the caller re-raises) when every peer is still alive: then the error is our own.
    """
    if heartbeat is None:
        return
    lost, why = heartbeat.lost_ranks()
    if not lost:
        return
    message = (f"[rank {heartbeat.rank}] lost rank(s) {', '.join(map(str, lost))} of {heartbeat.world_size}: "
               f"{why}; the collective failed with: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
    print(message, file=sys.stderr, flush=True)
    if on_lost is not None:
        try:
            on_lost(message)
        except Exception:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    import os

    os._exit(EXIT_LOST_RANK)
