"""The parallel layout: how the world's ranks split into data, tensor, pipeline and context parallel groups.

One `ParallelLayout` is built per run from the config and the launch, validated against the world size,
and passed explicitly to whoever needs it (the benchmark's `parallelize`, the data loader, megatron-core's
parallel_state for the LLMs). There is no module-level copy of it.

Rank order follows Megatron's default (tp fastest, then cp, then dp, then pp), so a tensor-parallel group
stays inside one node and NVLink domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist


@dataclass
class ParallelLayout:
    world_size: int
    rank: int
    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = field(init=False)
    _dp_group: object = field(default=None, init=False, repr=False)

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

    # Coordinates of a rank: tp varies fastest, pp slowest.
    def coords(self, rank: int | None = None) -> dict[str, int]:
        r = self.rank if rank is None else rank
        tp, r = r % self.tp, r // self.tp
        cp, r = r % self.cp, r // self.cp
        dp, pp = r % self.dp, r // self.dp
        return {"tp": tp, "cp": cp, "dp": dp, "pp": pp}

    @property
    def dp_rank(self) -> int:
        return self.coords()["dp"]

    def ranks_sharing(self, varying: str) -> list[int]:
        """The ranks that differ from this one only in the coordinate `varying`."""
        mine = self.coords()
        return [r for r in range(self.world_size)
                if all(v == mine[k] for k, v in self.coords(r).items() if k != varying)]

    def dp_group(self):
        """The data-parallel process group (None means the whole world when tp=pp=cp=1).

        `new_group` is collective over the world, so every rank builds every dp group in the same order.
        """
        if self.dp == self.world_size or not dist.is_initialized():
            return None
        if self._dp_group is None:
            groups = {}
            for r in range(self.world_size):
                key = tuple(self.__class__(self.world_size, r, self.tp, self.pp, self.cp).ranks_sharing("dp"))
                if key not in groups:
                    groups[key] = dist.new_group(list(key))
            self._dp_group = groups[tuple(self.ranks_sharing("dp"))]
        return self._dp_group

    def describe(self) -> str:
        return f"world={self.world_size} dp={self.dp} tp={self.tp} pp={self.pp} cp={self.cp}"
