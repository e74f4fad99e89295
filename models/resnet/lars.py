"""LARS with the semantics of the MLPerf TF2 reference (`lars_optimizer.py`) and its poly-2 schedule.

Per tensor w with gradient g, schedule lr, momentum m, weight decay wd, trust coefficient eeta:

    included (conv / FC weights):  g' = g + wd * w
                                   trust = eeta * |w| / (|g| + wd * |w| + eps)  if |w| > 0 and |g| > 0, else 1
                                   v = m * v + lr * trust * g'
                                   w = w - v
    excluded (BN and biases):      v = m * v + lr * g ;  w = w - v

The trust ratio is computed from the raw gradient (before weight decay is added) and multiplies the lr
*inside* the momentum, as in the reference's `mom = mom * m - grad * scaled_lr; var += mom`. (NVIDIA's
MXNet SGDwFASTLARSV2 instead keeps lr outside the momentum by rescaling m with lr_t / lr_{t-1}; the two
agree only while the lr is constant.) Momentum buffers start at zero.

`epsilon`: the closed rules fix `lars_epsilon` = 0.0 and that is the default here. The reference reads
`epsilon or backend_config.epsilon()`, so its 0.0 silently becomes Keras' 1e-7; pass 1e-7 to reproduce
it bit for bit. With eps = 0 the denominator cannot vanish where it is used (both norms > 0).

The step is multi-tensor (`torch._foreach_*`), never reads a value back to the host, and keeps the lr
in a device tensor, so a CUDA graph can capture it; the loop updates the lr with `set_lr` between
steps (or copies a device-computed value into `lr_tensor` inside the graph).
"""

from __future__ import annotations

import math

import torch

from kernels.shared_lr import SharedLearningRate, check_lars_hyperparameters


class LARS(SharedLearningRate, torch.optim.Optimizer):
    """Param groups carry `lars` (True: weight decay + trust ratio; False: plain momentum SGD).

    Build the groups with `models.resnet.model.lars_param_groups(model)`; a bare parameter list is
    treated as one `lars=True` group. All groups share one lr tensor (kernels/shared_lr.py).
    """

    def __init__(self, params, lr: float | torch.Tensor = 0.0, momentum: float = 0.9,
                 weight_decay: float = 1e-4, eeta: float = 0.001, epsilon: float = 0.0):
        check_lars_hyperparameters(momentum, weight_decay, eeta, epsilon)
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eeta=eeta, epsilon=epsilon,
                        lars=True)
        super().__init__(params, defaults)
        self._share_lr(lr)

    def _buffers(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        buffers = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:  # zeros, as the reference's slot; lazily on the first step
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        return buffers

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            buffers = self._buffers(params)
            lr, momentum = group["lr"], group["momentum"]
            if group["lars"]:
                steps = self._lars_steps(params, grads, lr, group["weight_decay"], group["eeta"],
                                         group["epsilon"])
            else:
                steps = torch._foreach_mul(grads, lr)
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, steps)
            torch._foreach_sub_(params, buffers)
        return loss

    @staticmethod
    def _lars_steps(params, grads, lr, weight_decay, eeta, epsilon) -> list[torch.Tensor]:
        """lr * trust_ratio * (g + wd * w) for each tensor, from one stacked vector of norms."""
        w_norm = torch.stack(torch._foreach_norm(params)).float()
        g_norm = torch.stack(torch._foreach_norm(grads)).float()
        ratio = eeta * w_norm / (g_norm + weight_decay * w_norm + epsilon)
        # torch.where keeps the 0/0 of a zero tensor out of the result without a data-dependent branch.
        ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
        scaled_lr = (lr * ratio).unbind(0)  # one 0-dim device tensor per parameter
        steps = torch._foreach_add(grads, params, alpha=weight_decay)
        torch._foreach_mul_(steps, scaled_lr)
        return steps


def poly_decay_steps(warmup_steps: float, total_steps: int) -> float:
    """Length of the decay, the value to log as `lars_opt_learning_rate_decay_steps` (reference: +1)."""
    return total_steps - warmup_steps + 1


def poly_warmup_lr(step, *, base_lr: float, warmup_steps: float, total_steps: int,
                   end_lr: float = 1e-4, power: float = 2):
    """The reference's `PolynomialDecayWithWarmup`; `step` = optimizer updates already applied.

    The reference evaluates the schedule at Keras' `optimizer.iterations` before incrementing it, so
    the first update uses step 0 (lr 0: that update changes nothing) and the last of `total_steps`
    updates uses step total_steps - 1. Warmup is `base_lr * step / warmup_steps` up to and including
    step == warmup_steps, where it reaches base_lr. Then the decay is
    `(base_lr - end_lr) * (1 - p / decay_steps) ** power + end_lr`, with p = step - warmup_steps
    clipped to decay_steps = `poly_decay_steps(...)` = total_steps - warmup_steps + 1, as the reference
    computes and logs it; so the lr is still above end_lr on the last step. Without warmup
    (warmup_steps 0) the decay starts at step 0, where the reference would compute 0 / 0.

    `step` may be an int/float (returns a float) or a tensor (returns a tensor on its device, without
    host syncs, e.g. to recompute the lr inside a captured graph).
    """
    decay_steps = poly_decay_steps(warmup_steps, total_steps)
    if isinstance(step, torch.Tensor):
        step = step.to(torch.float32)
        warmup = base_lr * step / (warmup_steps if warmup_steps > 0 else 1.0)
        progress = torch.clamp(step - warmup_steps, max=decay_steps) / decay_steps
        decay = (base_lr - end_lr) * (1 - progress) ** power + end_lr
        return torch.where(step <= warmup_steps, warmup, decay) if warmup_steps > 0 else decay
    if warmup_steps > 0 and step <= warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return (base_lr - end_lr) * math.pow(1 - progress, power) + end_lr
