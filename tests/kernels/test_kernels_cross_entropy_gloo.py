"""Vocab-parallel cross-entropy over 2 gloo processes (the Triton path under the interpreter on CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from kernel_numerics import DEVICE

WORKER = Path(__file__).with_name("vocab_parallel_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_the_full_vocabulary_reference():
    # gloo moves CPU tensors: the Triton path needs the interpreter there (the CPU test setup); on a GPU
    # machine the ranks run the reference shard statistics and this checks the collectives only
    kernels = "triton" if DEVICE.type == "cpu" else "reference"
    port, world = _free_port(), 2
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "MLPERF_KERNELS": kernels,
               "TRITON_INTERPRET": "1" if kernels == "triton" else "0"}
        procs.append(subprocess.Popen([sys.executable, str(WORKER)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out}"
