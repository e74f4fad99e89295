"""One learning-rate tensor shared by every param group, for optimizers whose step must not sync.

The lr lives in a float32 tensor on the parameters' device, referenced by every group (and by `defaults`,
so a group added later shares it too). The loop writes it in place between steps with `set_lr` (a float
travels as a kernel argument, a tensor as a device copy), so a CUDA graph captured over the step sees
each new value. Used by models/resnet/lars.py's LARS and kernels/optimizers.py's FusedLARS alike.
"""

from __future__ import annotations

import torch


class SharedLearningRate:
    """Mixin for a torch.optim.Optimizer subclass; call `_share_lr(lr)` at the end of __init__."""

    def _share_lr(self, lr: float | torch.Tensor) -> None:
        device = next(p for group in self.param_groups for p in group["params"]).device
        lr_tensor = torch.as_tensor(lr, dtype=torch.float32).to(device).clone()
        self.defaults["lr"] = lr_tensor
        for group in self.param_groups:
            group["lr"] = lr_tensor

    @property
    def lr_tensor(self) -> torch.Tensor:
        return self.param_groups[0]["lr"]

    def set_lr(self, value: float | torch.Tensor) -> None:
        if isinstance(value, torch.Tensor):
            self.lr_tensor.copy_(value)
        else:
            self.lr_tensor.fill_(value)

    def load_state_dict(self, state_dict: dict) -> None:
        lr_tensor = self.lr_tensor
        super().load_state_dict(state_dict)
        # The loaded groups hold copies of the saved lr, possibly on another device: copy the value into
        # the tensor we had, so that it stays shared and anything holding it (a captured graph) sees it.
        lr_tensor.copy_(torch.as_tensor(self.param_groups[0]["lr"]))
        self.defaults["lr"] = lr_tensor
        for group in self.param_groups:
            group["lr"] = lr_tensor


def check_lars_hyperparameters(momentum: float, weight_decay: float, eeta: float, epsilon: float) -> None:
    if momentum < 0.0 or weight_decay < 0.0 or eeta <= 0.0 or epsilon < 0.0:
        raise ValueError(f"bad LARS hyperparameters: momentum={momentum} weight_decay={weight_decay} "
                         f"eeta={eeta} epsilon={epsilon}")
