"""A plain-torch LAMB, one tensor at a time: the reference FusedLAMB is tested against.

Written from the LAMB paper (You et al., "Large Batch Optimization for Deep Learning: Training BERT in
76 minutes", Algorithm 2) with the MLPerf BERT reference's choices (spec: /work/shared/spec/bert.md):
  1. all gradients clipped to a global norm of `max_grad_norm` (1.0): g *= max_norm / max(norm, max_norm)
  2. m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,  m^ = m / (1 - b1^t),  v^ = v / (1 - b2^t)
  3. u = m^ / (sqrt(v^) + eps) + wd * w      (no weight decay for LayerNorm and bias: their group has wd 0)
  4. ratio = |w| / |u| when both are > 0, else 1; 1 for groups without layer adaptation (by default the
     groups with wd 0, as the reference excludes the same variables from both)
  5. w -= lr * ratio * u
Moments are fp32 whatever the parameter dtype; the step count t is per group.
"""

from __future__ import annotations

import torch
from torch import nn


def lamb_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """BERT's two groups: weight decay (and layer adaptation) for matrices, none for LayerNorm and biases
    (every 1-D parameter; embeddings are 2-D and decayed, as in the reference)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class LambReference(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0, layer_adaptation: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      layer_adaptation=layer_adaptation, step=0))
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        compute = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
        norm = torch.sqrt(sum(g.to(compute).pow(2).sum() for g in grads))
        clip = self.max_grad_norm / torch.clamp(norm, min=self.max_grad_norm) if self.max_grad_norm > 0 else 1.0
        for group in self.param_groups:
            group["step"] += 1
            (beta1, beta2), t = group["betas"], group["step"]
            adapt = group["layer_adaptation"]
            adapt = group["weight_decay"] != 0 if adapt is None else adapt
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, dtype=compute)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=compute)
                w, g = p.to(compute), p.grad.to(compute) * clip
                m = state["exp_avg"].mul_(beta1).add_((1 - beta1) * g)
                v = state["exp_avg_sq"].mul_(beta2).add_((1 - beta2) * g * g)
                u = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + group["eps"]) + group["weight_decay"] * w
                w_norm, u_norm = w.norm(), u.norm()
                ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.copy_(w - group["lr"] * (ratio if adapt else 1.0) * u)
        return loss
