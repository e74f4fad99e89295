"""Process-group membership of the parallel layout: arithmetic over the rank grid, built once."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from runtime.parallel import ParallelLayout


def _brute_force_groups(world: int, tp: int, pp: int, cp: int, dim: str) -> set[tuple[int, ...]]:
    """Independent of the layout's grid: decompose every rank by hand (tp fastest, then cp, dp, pp) and
    group the ranks that agree on every other coordinate."""
    dp = world // (tp * pp * cp)
    groups: dict[tuple, list[int]] = {}
    for r in range(world):
        coords = {"tp": r % tp, "cp": r // tp % cp, "dp": r // (tp * cp) % dp, "pp": r // (tp * cp * dp)}
        key = tuple(v for k, v in sorted(coords.items()) if k != dim)
        groups.setdefault(key, []).append(r)
    return {tuple(g) for g in groups.values()}


@pytest.mark.parametrize("tp,pp,cp", [(1, 1, 1), (2, 3, 1), (2, 2, 2), (4, 1, 3)])
@pytest.mark.parametrize("dim", ["dp", "tp", "pp", "cp"])
def test_group_membership_matches_a_rank_by_rank_decomposition(tp, pp, cp, dim):
    world = 48
    layout = ParallelLayout(world, 0, tp=tp, pp=pp, cp=cp)
    groups = layout.group_ranks(dim)
    assert {tuple(g) for g in groups} == _brute_force_groups(world, tp, pp, cp, dim)
    assert sorted(r for g in groups for r in g) == list(range(world))  # a partition of the world
    for rank in (0, 5, 47):
        assert ParallelLayout(world, rank, tp=tp, pp=pp, cp=cp).ranks_sharing(dim) in groups


def test_membership_for_11616_ranks_is_arithmetic():
    """dgxh100_1452x8 (TP4 PP6, dp 484): the old per-rank loop over the world was quadratic (about 180 s per
    rank extrapolated); the grid reshape takes milliseconds. The bound only catches a quadratic regression."""
    start = time.perf_counter()
    layout = ParallelLayout(11_616, 11_615, tp=4, pp=6)
    groups = layout.group_ranks("dp")
    mine = layout.ranks_sharing("dp")
    elapsed = time.perf_counter() - start
    assert layout.dp == 484 and len(groups) == 24 and all(len(g) == 484 for g in groups)
    # rank 11615 = tp 3, dp 483, pp 5: its dp peers step by tp=4 within stage 5's 1936 ranks
    assert mine == list(range(5 * 1936 + 3, 6 * 1936, 4)) and mine in groups
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def test_groups_must_be_built_before_use():
    layout = ParallelLayout(1, 0)
    with pytest.raises(RuntimeError, match="before build_groups"):
        layout.dp_group()
    layout.build_groups()
    assert layout.dp_group() is None  # the whole (one-rank) world


def _worker(rank: int, world: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    layout = ParallelLayout(world, rank, tp=2)
    layout.build_groups()
    t = torch.tensor([float(rank)])
    dist.all_reduce(t, group=layout.dp_group())
    results[rank] = (dist.get_process_group_ranks(layout.dp_group()), t.item())
    dist.destroy_process_group()


def test_built_dp_groups_reduce_over_the_right_ranks():
    from conftest import free_port

    world = 4
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(world, free_port(), results), nprocs=world)
        results = dict(results)
    # tp=2: dp groups {0, 2} and {1, 3}
    assert results == {0: ([0, 2], 2.0), 2: ([0, 2], 2.0), 1: ([1, 3], 4.0), 3: ([1, 3], 4.0)}
