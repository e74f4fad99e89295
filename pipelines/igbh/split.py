"""The reference's seed split (split_seeds.py): the labelled papers are ids [0, n); with torch's generator
seeded 42, one random permutation of them; train = the first int(0.6 n), validation = the next
int(0.005 n). For IGBH-Full (n = 157,675,969): 94,605,581 train and 788,379 validation seeds."""

from __future__ import annotations

import os

import torch

from pipelines.igbh.format import TRAIN_IDX, VAL_IDX
from runtime.atomic_write import atomic_open

SPLIT_SEED = 42
TRAIN_FRACTION = 0.6
VAL_FRACTION = 0.005


def split_sizes(labelled: int, train_fraction: float = TRAIN_FRACTION,
                val_fraction: float = VAL_FRACTION) -> tuple[int, int]:
    return int(labelled * train_fraction), int(labelled * val_fraction)


def split_seeds(labelled: int, seed: int = SPLIT_SEED, train_fraction: float = TRAIN_FRACTION,
                val_fraction: float = VAL_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    n_train, n_val = split_sizes(labelled, train_fraction, val_fraction)
    if n_train < 1 or n_val < 1:
        raise ValueError(f"{labelled} labelled papers give {n_train} train and {n_val} validation seeds")
    order = torch.randperm(labelled, generator=torch.Generator().manual_seed(seed))
    return order[:n_train].clone(), order[n_train:n_train + n_val].clone()


def write_split(pdir: str, labelled: int, **kwargs) -> tuple[int, int]:
    train, val = split_seeds(labelled, **kwargs)
    for tensor, name in ((train, TRAIN_IDX), (val, VAL_IDX)):
        with atomic_open(os.path.join(pdir, name)) as f:
            torch.save(tensor, f)
    return train.numel(), val.numel()
