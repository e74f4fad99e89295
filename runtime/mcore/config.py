"""Config sections the megatron-core benchmarks share (no megatron import: configs stay cheap to load)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AdamConfig:
    """megatron's Adam (decoupled weight decay, as the references use) with global-norm clipping."""

    base_lr: float = 0.0
    min_lr_ratio: float = 0.1  # the schedule's floor, as a fraction of base_lr
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_grad: float = 1.0
