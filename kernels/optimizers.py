"""Fused multi-tensor optimizers over flat buffers: LARS (ResNet), LAMB (BERT), Adam/AdamW (GPT-3),
Adagrad (DLRM dense).

At construction the parameters of each (device, dtype) are moved into one flat buffer (multi_tensor.py)
and each parameter becomes a view of it; gradients and fp32 optimizer states get flat buffers of the
same layout. A step is then a few launches over all tensors at once (per-tensor norms by a segmented
reduction, one elementwise update per param group) instead of a loop over tensors. The parameters'
`.grad` are made views of the flat gradient buffer at the first step; as long as the training loop
zeroes them with `zero_grad(set_to_none=False)`, autograd accumulates straight into the flat buffer.
`zero_grad(set_to_none=True)` keeps torch's semantics (a parameter without a gradient is skipped) at
the price of one gradient copy per step.

`state_dict()` / `load_state_dict()` have torch's format, with per-parameter state entries that are views
of the flat state buffers (`FusedLARS` uses the same keys as models/resnet/lars.py's LARS, so
checkpoints move between the two). The update math and the reference path are in _optim_kernels.py.
"""

from __future__ import annotations

import torch

from kernels import _optim_kernels as K
from kernels.multi_tensor import FlatOptimizer, segment_sum, segment_sumsq
from kernels.shared_lr import SharedLearningRate, check_lars_hyperparameters


class FusedLARS(SharedLearningRate, FlatOptimizer):
    """models.resnet.lars.LARS, fused: same constructor, `lr_tensor`, `set_lr`, groups (`lars` flag) and
    state-dict keys (`momentum_buffer`); the update rule is documented there."""

    state_names = ("momentum_buffer",)

    def __init__(self, params, lr: float | torch.Tensor = 0.0, momentum: float = 0.9, weight_decay: float = 1e-4,
                 eeta: float = 0.001, epsilon: float = 0.0):
        check_lars_hyperparameters(momentum, weight_decay, eeta, epsilon)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eeta=eeta,
                                      epsilon=epsilon, lars=True))
        self._share_lr(lr)

    def _step_flat(self, flat, active):
        groups = list(self._groups(flat))
        any_lars = any(group["lars"] for group, *_ in groups)
        norms = segment_sumsq(flat.layout, flat.param, flat.grad).sqrt() if any_lars else None
        pieces = []
        for group, _, _, t0, tn in groups:
            lr = group["lr"]
            if group["lars"]:
                w_norm, g_norm = norms[0, t0:t0 + tn], norms[1, t0:t0 + tn]
                ratio = group["eeta"] * w_norm / (g_norm + group["weight_decay"] * w_norm + group["epsilon"])
                ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                pieces.append(lr * ratio)
            else:
                pieces.append((lr * torch.ones(tn, device=flat.layout.device)).float())
        scale = torch.cat(pieces).float()
        momentum = flat.state("momentum_buffer")
        for group, first, count, _, _ in groups:
            K.lars_update(flat.layout, flat.param, flat.grad, momentum, scale, active, first, count,
                          group["weight_decay"] if group["lars"] else 0.0, group["momentum"])


class FusedAdam(FlatOptimizer):
    """torch.optim.Adam (or AdamW with `decoupled_weight_decay=True`), optionally with fused global
    gradient-norm clipping (torch.nn.utils.clip_grad_norm_'s rule) when `max_grad_norm` is set.
    The step counter is per group (`group["step"]`)."""

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, max_grad_norm: float | None = None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, step=0))
        self.max_grad_norm = max_grad_norm
        self._clip = None

    def _prepare(self, synced):
        self._clip = None
        if self.max_grad_norm is not None:
            norm = self._global_grad_norm(synced)
            self._clip = torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0)
        for group in self.param_groups:
            group["step"] += 1

    def _step_flat(self, flat, active):
        m, v = flat.state("exp_avg"), flat.state("exp_avg_sq")
        clip = self._clip.to(flat.layout.device) if self._clip is not None else None
        for group, first, count, _, _ in self._groups(flat):
            (beta1, beta2) = group["betas"]
            K.adam_update(flat.layout, flat.param, flat.grad, m, v, active, clip, first, count, lr=group["lr"],
                          beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                          decoupled=group["decoupled_weight_decay"], step=group["step"])


class FusedAdamW(FusedAdam):
    """torch.optim.AdamW: FusedAdam with decoupled weight decay (default 0.01, as torch)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, max_grad_norm: float | None = None):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True,
                         max_grad_norm=max_grad_norm)


class FusedAdagrad(FlatOptimizer):
    """torch.optim.Adagrad (lr decay, weight decay, initial accumulator value, eps); DLRM's dense layers
    use lr decay 0, weight decay 0, initial accumulator 0, eps 1e-8. Step counter per group."""

    state_names = ("sum",)

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                                      initial_accumulator_value=initial_accumulator_value, step=0))
        self.state_fill = initial_accumulator_value

    def _prepare(self, synced):
        for group in self.param_groups:
            group["step"] += 1

    def _step_flat(self, flat, active):
        accumulator = flat.state("sum", self.state_fill)
        for group, first, count, _, _ in self._groups(flat):
            clr = group["lr"] / (1 + (group["step"] - 1) * group["lr_decay"])
            K.adagrad_update(flat.layout, flat.param, flat.grad, accumulator, active, first, count, clr=clr,
                             eps=group["eps"], weight_decay=group["weight_decay"])


class FusedLAMB(FlatOptimizer):
    """LAMB as the MLPerf BERT reference: gradients clipped to global norm `max_grad_norm` (scaled by
    max_norm / max(norm, max_norm)), Adam moments with bias correction, u = m^ / (sqrt(v^) + eps) + wd * w,
    trust ratio |w| / |u| (1 where either is 0, and for groups without layer adaptation, which by default
    are those with weight_decay 0: LayerNorm and bias), w -= lr * ratio * u. Build the two groups with
    `lamb_param_groups` in lamb_ref.py. The reference is lamb_ref.LambReference."""

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0, layer_adaptation: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      layer_adaptation=layer_adaptation, step=0))
        self.max_grad_norm = max_grad_norm
        self._clip = None

    def _prepare(self, synced):
        norm = self._global_grad_norm(synced)
        self._clip = (self.max_grad_norm / torch.clamp(norm, min=self.max_grad_norm)
                      if self.max_grad_norm > 0 else torch.ones_like(norm))
        for group in self.param_groups:
            group["step"] += 1

    def _step_flat(self, flat, active):
        layout = flat.layout
        m, v, u = flat.state("exp_avg"), flat.state("exp_avg_sq"), flat.state("_update")
        partial = torch.zeros((2, layout.num_blocks), dtype=torch.float32, device=layout.device)
        clip = self._clip.to(layout.device).float()
        groups = list(self._groups(flat))
        for group, first, count, _, _ in groups:
            (beta1, beta2), step = group["betas"], group["step"]
            K.lamb_moments(layout, flat.param, flat.grad, m, v, u, partial, active, clip, first, count,
                           beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                           bc1=1.0 - beta1 ** step, bc2=1.0 - beta2 ** step)
        norms = segment_sum(layout, partial).sqrt()
        pieces = []
        for group, _, _, t0, tn in groups:
            w_norm, u_norm = norms[0, t0:t0 + tn], norms[1, t0:t0 + tn]
            adapt = group["layer_adaptation"]
            adapt = group["weight_decay"] != 0 if adapt is None else adapt
            ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
            pieces.append(group["lr"] * (ratio if adapt else torch.ones_like(ratio)))
        scale = torch.cat(pieces).float()
        for group, first, count, _, _ in groups:
            K.scaled_sub(layout, flat.param, u, scale, active, first, count)
