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

The norms of step 4 are per variable of the reference (TF `lamb_optimizer_v1`: one ratio per variable).
Where one parameter concatenates several of them along dim 0 (BERT's fused [q; k; v] projection holds the
reference's query, key and value), its group's `segments` entry gives their dim-0 sizes, and step 4 is
taken for each part on its own: a group may carry `segments`, a list parallel to `params` of None (the
whole tensor) or a tuple of dim-0 sizes summing to the parameter's first dimension.
"""

from __future__ import annotations

import torch
from torch import nn


def lamb_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """BERT's two groups: weight decay (and layer adaptation) for matrices, none for LayerNorm and biases
    (every 1-D parameter; embeddings are 2-D and decayed, as in the reference).

    A model whose parameters concatenate several of the reference's variables declares them in a method
    `fused_parameter_splits()` -> {parameter name: dim-0 sizes of the parts}; the groups' `segments` carry
    them, so that LAMB takes one trust ratio per reference variable. Other models (HF's BERT, with its
    separate query / key / value) get one per parameter."""
    declared = getattr(model, "fused_parameter_splits", None)
    splits = {name: tuple(sizes) for name, sizes in (declared() if declared is not None else {}).items()}
    decay, no_decay = ([], []), ([], [])
    seen = set()
    for name, p in model.named_parameters():
        params, segments = no_decay if p.ndim <= 1 else decay
        params.append(p)
        segments.append(splits.get(name))
        seen.add(name)
    unknown = sorted(set(splits) - seen)
    if unknown:
        raise ValueError(f"fused_parameter_splits() names parameters the model does not have: {unknown[:4]}")
    return [{"params": decay[0], "weight_decay": weight_decay, "segments": decay[1]},
            {"params": no_decay[0], "weight_decay": 0.0, "segments": no_decay[1]}]


def check_segments(group: dict) -> list[tuple[int, ...] | None]:
    """A group's `segments` (None entries where absent), checked against its parameters' shapes."""
    params, segments = group["params"], group.get("segments")
    if segments is None:
        return [None] * len(params)
    if len(segments) != len(params):
        raise ValueError(f"segments has {len(segments)} entries for {len(params)} parameters")
    checked = []
    for p, sizes in zip(params, segments):
        if sizes is not None:
            sizes = tuple(int(s) for s in sizes)
            if p.ndim == 0 or not sizes or any(s <= 0 for s in sizes) or sum(sizes) != p.shape[0]:
                raise ValueError(f"segments {sizes} do not split dim 0 of a parameter of shape {tuple(p.shape)}")
        checked.append(sizes)
    return checked


def _trust_ratio(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    w_norm, u_norm = w.norm(), u.norm()
    return torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))


class LambReference(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0, layer_adaptation: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      layer_adaptation=layer_adaptation, step=0, segments=None))
        self.max_grad_norm = max_grad_norm
        for group in self.param_groups:
            check_segments(group)

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
            for p, sizes in zip(group["params"], check_segments(group)):
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
                if sizes is None:
                    p.copy_(w - group["lr"] * (_trust_ratio(w, u) if adapt else 1.0) * u)
                else:  # one ratio per part, as for separate variables
                    p.copy_(torch.cat([wp - group["lr"] * (_trust_ratio(wp, up) if adapt else 1.0) * up
                                       for wp, up in zip(w.split(sizes), u.split(sizes))]))
        return loss
