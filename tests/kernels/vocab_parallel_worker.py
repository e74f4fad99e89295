"""One rank of the 2-process vocab-parallel cross-entropy check (started by test_kernels_cross_entropy_gloo.py).

Every rank builds the same logits, keeps its vocabulary shard, and checks its loss and its shard of the
gradient against the single-process fp64 reference; the exit status is the verdict.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from kernels.cross_entropy import cross_entropy_ref  # noqa: E402
from kernels.cross_entropy_parallel import vocab_parallel_cross_entropy  # noqa: E402


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(0)
    rows, vocab = 6, 1000
    logits = torch.randn(rows, vocab, generator=gen) * 4
    target = torch.randint(0, vocab, (rows,), generator=gen)
    target[1] = -100
    start, end = rank * vocab // world, (rank + 1) * vocab // world
    shard = logits[:, start:end].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(shard, target, start, vocab, label_smoothing=0.1)
    loss.backward()
    full = logits.double().requires_grad_()
    want = cross_entropy_ref(full, target, label_smoothing=0.1)
    want.backward()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shard.grad.double(), full.grad[:, start:end], rtol=1e-5, atol=1e-7)
    dist.destroy_process_group()
    print(f"rank {rank}: ok")


if __name__ == "__main__":
    main()
