"""The parallel layout: how the world's ranks split into data, tensor, pipeline and context parallel groups.

One `ParallelLayout` is built per run from the config and the launch, validated against the world size,
and passed explicitly to whoever needs it (the benchmark's `parallelize`, the data loader, megatron-core's
parallel_state for the LLMs). There is no module-level copy of it.

Rank order follows Megatron's default (tp fastest, then cp, then dp, then pp), so a tensor-parallel group
stays inside one node and NVLink domain.

Process groups are built once, before `init_stop`: `build_groups()` for the plain-PyTorch benchmarks, or,
for the megatron-core ones, `adopt_groups()` with the groups megatron's parallel_state built (one source of
truth). Group membership is arithmetic over the rank grid, so the layout of 11,616 ranks costs a reshape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch.distributed as dist

# Dimensions from slowest to fastest varying rank coordinate.
_ORDER = ("pp", "dp", "cp", "tp")


@dataclass
class ParallelLayout:
    world_size: int
    rank: int
    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = field(init=False)
    _dp_group: object = field(default=None, init=False, repr=False)
    _groups_ready: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "cp"):
            if getattr(self, name) < 1:
                raise ValueError(f"parallel layout: {name}={getattr(self, name)} must be >= 1")
        model_parallel = self.tp * self.pp * self.cp
        if self.world_size % model_parallel:
            raise ValueError(f"parallel layout: world size {self.world_size} is not divisible by "
                             f"tp*pp*cp = {self.tp}*{self.pp}*{self.cp} = {model_parallel}")
        self.dp = self.world_size // model_parallel
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"parallel layout: rank {self.rank} outside world of {self.world_size}")

    def _grid(self) -> np.ndarray:
        """Ranks arranged as [pp, dp, cp, tp]."""
        return np.arange(self.world_size).reshape([getattr(self, d) for d in _ORDER])

    def coords(self, rank: int | None = None) -> dict[str, int]:
        """Coordinates of a rank: tp varies fastest, pp slowest."""
        r = self.rank if rank is None else rank
        tp, r = r % self.tp, r // self.tp
        cp, r = r % self.cp, r // self.cp
        dp, pp = r % self.dp, r // self.dp
        return {"tp": tp, "cp": cp, "dp": dp, "pp": pp}

    @property
    def dp_rank(self) -> int:
        return self.coords()["dp"]

    def group_ranks(self, dim: str) -> list[list[int]]:
        """Every group along `dim` (the ranks that differ only in that coordinate), in a fixed order."""
        axis = _ORDER.index(dim)
        grid = np.moveaxis(self._grid(), axis, -1)
        return grid.reshape(-1, grid.shape[-1]).tolist()

    def ranks_sharing(self, dim: str) -> list[int]:
        """The ranks that differ from this one only in the coordinate `dim`."""
        c = self.coords()
        index = tuple(slice(None) if d == dim else c[d] for d in _ORDER)
        return self._grid()[index].tolist()

    def build_groups(self) -> None:
        """Create the data-parallel groups. Collective: every rank calls it, once, before init_stop."""
        if self.dp != self.world_size and dist.is_initialized():
            # new_subgroups_by_enumeration creates every group in the same order on every rank, as
            # new_group requires, and returns the one holding this rank.
            self._dp_group, _ = dist.new_subgroups_by_enumeration(self.group_ranks("dp"))
        self._groups_ready = True

    def adopt_groups(self, dp_group) -> None:
        """Use groups another engine built (megatron-core's parallel_state) instead of building our own."""
        self._dp_group = dp_group
        self._groups_ready = True

    def dp_group(self):
        """The data-parallel process group; None means the whole world."""
        if not self._groups_ready:
            raise RuntimeError("parallel layout: process groups used before build_groups()/adopt_groups()")
        return self._dp_group

    def describe(self) -> str:
        return f"world={self.world_size} dp={self.dp} tp={self.tp} pp={self.pp} cp={self.cp}"
