"""The 3D U-Net's epoch arithmetic: learning rate, eval cadence and budget, from the reference's rules.

Everything here counts epochs of `samples_per_epoch` samples (the training cases a global batch size
covers with the last partial batch dropped: 168 at GBS 28, 56 and 84). The rules' constants are written
as samples at the reference's 168 samples per epoch and converted with CEIL(samples / samples_per_epoch),
as the reference's main.py does:
    first eval   CEIL(1000 * 168 / samples_per_epoch)
    then every   CEIL(20 * 168 / samples_per_epoch)
    budget       CEIL(10000 * 168 / samples_per_epoch)   (not converged by then: aborted)
Learning rate at 1-based epoch e (the reference sets it at the start of each epoch):
    e <= W (W > 0):  init_lr + (base_lr - init_lr) * e / W            (linear warmup)
    otherwise:       base_lr * factor ** (number of decay boundaries b < e)   (MultiStepLR)
"""

from __future__ import annotations

import math

from kernels.optimizers import FusedSGD


def epochs_for(samples: int, samples_per_epoch: int) -> int:
    return math.ceil(samples / samples_per_epoch)


def eval_epochs(*, start_samples: int, every_samples: int, max_samples: int, samples_per_epoch: int) -> list[int]:
    """Epochs after which to evaluate: the first eval, every `every` epochs after it, and the budget's end."""
    start = epochs_for(start_samples, samples_per_epoch)
    every = epochs_for(every_samples, samples_per_epoch)
    last = epochs_for(max_samples, samples_per_epoch)
    if start > last:
        raise ValueError(f"the first eval (epoch {start}) comes after the budget (epoch {last})")
    ends = list(range(start, last + 1, every))
    if ends[-1] != last:
        ends.append(last)
    return ends


def learning_rate(epoch: int, *, base_lr: float, init_lr: float, warmup_epochs: int,
                  decay_boundary_epochs: tuple[int, ...], decay_factor: float) -> float:
    if warmup_epochs > 0 and epoch <= warmup_epochs:
        return init_lr + (base_lr - init_lr) * epoch / warmup_epochs
    return base_lr * decay_factor ** sum(1 for b in decay_boundary_epochs if b < epoch)


def check_decay_boundaries(boundaries: tuple[int, ...], warmup_epochs: int) -> None:
    """A boundary inside the warmup would be overwritten by the next warmup step in the reference (and its
    factor then applied again from the warmup's end): refuse it rather than guess."""
    early = [b for b in boundaries if b < warmup_epochs]
    if early or list(boundaries) != sorted(set(boundaries)):
        raise ValueError(f"optim.decay_boundary_epochs={tuple(boundaries)}: want increasing epochs >= "
                         f"optim.warmup_epochs={warmup_epochs}")


def build_sgd(params, *, momentum: float, weight_decay: float) -> FusedSGD:
    """The reference's optimizer, SGD with Nesterov momentum, as one fused multi-tensor update over flat
    buffers (kernels/optimizers.py; torch.optim.SGD's numbers, its state-dict keys). The loop sets the lr
    before every step."""
    return FusedSGD(params, lr=0.0, momentum=momentum, nesterov=True, weight_decay=weight_decay)
