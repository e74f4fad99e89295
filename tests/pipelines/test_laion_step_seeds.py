"""The per-step random streams of a Stable Diffusion run (pipelines/laion/loader.py step_seed): each seeded from
numpy's SeedSequence([seed, step, tag]), so that the batch indices of step k and the diffusion draws of step k-1 no
longer share a generator seed (they did with seed * 1_000_003 + step and + step + 1), and every (step, tag) has its
own."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.laion.loader import BATCH_INDICES, DIFFUSION_DRAWS, IndexedMoments, step_seed


def test_step_seeds_are_seed_sequences_distinct_per_step_and_stream():
    assert BATCH_INDICES != DIFFUSION_DRAWS
    expected = np.random.SeedSequence([1, 5, DIFFUSION_DRAWS]).generate_state(1, np.uint64)[0]
    assert step_seed(1, 5, DIFFUSION_DRAWS) == int(expected)
    seeds = {step_seed(seed, step, tag) for seed in (0, 1, 2) for step in range(200)
             for tag in (BATCH_INDICES, DIFFUSION_DRAWS)}
    assert len(seeds) == 3 * 200 * 2
    for step in range(1, 200):  # the old collision: batch k's indices drawn from batch k-1's noise stream
        assert step_seed(1, step, BATCH_INDICES) != step_seed(1, step - 1, DIFFUSION_DRAWS)


def test_indexed_batch_indices_come_from_their_own_stream():
    data = IndexedMoments.__new__(IndexedMoments)  # the sampling alone, no shards
    data.num_samples, data.global_batch_size, data.rank, data.world_size, data.local, data.seed = 100, 8, 1, 2, 4, 3
    data.moments, data.captions, data.contexts = torch.arange(100.0), [str(i) for i in range(100)], None
    moments, captions = data.batch(7)
    seed = np.random.SeedSequence([3, 7, BATCH_INDICES]).generate_state(1, np.uint64)[0]
    g = torch.Generator().manual_seed(int(seed))
    index = torch.randint(100, (8,), generator=g)[4:8]  # rank 1's half of the global batch
    assert moments.tolist() == index.float().tolist() and captions == [str(i) for i in index.tolist()]
