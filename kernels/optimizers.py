"""Fused multi-tensor optimizers over flat buffers: LARS (ResNet), LAMB (BERT), Adam/AdamW (GPT-3, RetinaNet,
R-GAT), Adagrad (DLRM dense), SGD with (Nesterov) momentum (3D U-Net).

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

import copy
from types import SimpleNamespace

import numpy as np
import torch

from kernels import _optim_kernels as K
from kernels.lamb_ref import check_segments
from kernels.multi_tensor import BLOCK, FlatOptimizer, segment_sum, segment_sumsq
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
        # As torch.optim.Adagrad, every accumulator exists from construction: state_dict() has the same
        # entries before and after the first step (a warm-up that resets the state leaves it as it was).
        for flat in self._flats:
            self._register_state(flat, [True] * len(flat.params))

    def _prepare(self, synced):
        for group in self.param_groups:
            group["step"] += 1

    def _step_flat(self, flat, active):
        accumulator = flat.state("sum", self.state_fill)
        for group, first, count, _, _ in self._groups(flat):
            clr = group["lr"] / (1 + (group["step"] - 1) * group["lr_decay"])
            K.adagrad_update(flat.layout, flat.param, flat.grad, accumulator, active, first, count, clr=clr,
                             eps=group["eps"], weight_decay=group["weight_decay"])


class FusedSGD(FlatOptimizer):
    """torch.optim.SGD with momentum (optionally Nesterov) and L2 weight decay, dampening 0 (what every MLPerf
    SGD uses). The momentum buffer starts at zero, which with dampening 0 is torch's first step (buf = d)."""

    state_names = ("momentum_buffer",)

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = False):
        if not momentum > 0:
            raise ValueError(f"FusedSGD: momentum={momentum}; plain SGD without momentum needs no fused kernel")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                      dampening=0))

    def _step_flat(self, flat, active):
        buf = flat.state("momentum_buffer")
        for group, first, count, _, _ in self._groups(flat):
            K.sgd_update(flat.layout, flat.param, flat.grad, buf, active, first, count, lr=group["lr"],
                         weight_decay=group["weight_decay"], momentum=group["momentum"],
                         nesterov=group["nesterov"])


class FusedLAMB(FlatOptimizer):
    """LAMB as the MLPerf BERT reference (lamb_ref.LambReference, which FusedLAMB is tested against):
    gradients clipped to global norm `max_grad_norm` (scaled by max_norm / max(norm, max_norm)), Adam
    moments with bias correction, u = m^ / (sqrt(v^) + eps) + wd * w, trust ratio |w| / |u| (1 where either
    is 0, and for groups without layer adaptation, which by default are those with weight_decay 0:
    LayerNorm and bias), w -= lr * ratio * u. Build the two groups with `lamb_param_groups` in lamb_ref.py.

    The trust ratio is per variable of the reference, as TF's LAMB takes it: per parameter, or per part
    where a parameter concatenates several variables along dim 0 (BERT's fused [q; k; v] projection holds
    the reference's query, key and value). A group's `segments` entry gives the parts: per parameter None
    or the dim-0 sizes (lamb_param_groups fills it from the model's `fused_parameter_splits()`). The parts
    are fixed at construction, as the flat layout is; a state dict loaded later does not change them.

    How the parts get their own norms and ratios over the flat buffers: each part is a "unit", a
    contiguous range of a tensor's elements (dim 0 is outermost in every layout the flat buffers keep).
    A block lying inside one unit adds its partial sums to that unit (segment_sum over a block -> unit
    table) and takes that unit's ratio in the update kernel; a block shared by several units (a part
    boundary that is not a multiple of BLOCK elements; none in BERT-large, whose parts are multiples of
    1024) is left out of both and done elementwise in torch. Without parts, units are the tensors."""

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0, layer_adaptation: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      layer_adaptation=layer_adaptation, step=0, segments=None))
        self.max_grad_norm = max_grad_norm
        self._clip = None
        self._segments = [copy.deepcopy(group["segments"]) for group in self.param_groups]
        parts = {id(p): sizes for group in self.param_groups
                 for p, sizes in zip(group["params"], check_segments(group)) if sizes is not None and len(sizes) > 1}
        self._units = {id(flat): self._build_units(flat, parts) for flat in self._flats}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group, segments in zip(self.param_groups, self._segments):  # the parts stay the constructed ones
            group["segments"] = copy.deepcopy(segments)

    @staticmethod
    def _build_units(flat, parts: dict) -> SimpleNamespace | None:
        """The trust-ratio units of one flat bucket (None when they are its tensors): a layout whose
        "tensors" are the units (block_tensor: the unit of each block inside one unit, else the extra
        unit U that no ratio is taken for), and the elements of the shared blocks."""
        layout = flat.layout
        if not any(id(p) in parts for p in flat.params):
            return None
        starts, sizes, unit_tensor, first_unit = [], [], [], []
        for i, p in enumerate(flat.params):
            first_unit.append(len(starts))
            numel, offset = layout.numels[i], layout.offsets[i]
            split = parts.get(id(p))
            row = numel // p.shape[0] if split and p.shape[0] else numel
            if split and p.shape[0] > 1 and layout.strides[i][0] != row:
                raise ValueError(f"segments of a parameter of shape {tuple(p.shape)} and strides "
                                 f"{layout.strides[i]}: dim 0 is not outermost")
            for rows in (split or (1,)):
                starts.append(offset)
                sizes.append(rows * row if split else numel)
                unit_tensor.append(i)
                offset += sizes[-1]
        first_unit.append(len(starts))
        U = len(starts)
        start = np.asarray(starts, dtype=np.int64)
        block_start = np.arange(layout.num_blocks, dtype=np.int64) * BLOCK
        # Unit of a block's first and last element (a tensor's padding counts as its last unit's).
        head = np.searchsorted(start, block_start, side="right") - 1
        tail = np.searchsorted(start, block_start + BLOCK - 1, side="right") - 1
        whole = head == tail
        block_unit = np.where(whole, head, U)
        count = np.bincount(head[whole], minlength=U)
        first_block = np.zeros(U, dtype=np.int64)
        whole_blocks = np.flatnonzero(whole)
        has = np.flatnonzero(count)
        first_block[has] = whole_blocks[np.searchsorted(head[whole], has)]
        device = layout.device

        def on_device(values, dtype):
            return torch.as_tensor(np.asarray(values), dtype=dtype).to(device)

        units = copy.copy(layout)
        units.shapes = [torch.Size([n]) for n in sizes] + [torch.Size([0])]
        units.numels = sizes + [0]
        units.offsets = starts + [0]
        units.strides = [(1,)] * (U + 1)
        units.block_tensor = on_device(block_unit, torch.int32)
        units.first_block = on_device(np.append(first_block, 0), torch.int32)
        units.block_count = on_device(np.append(count, 0), torch.int32)
        units.group_tensors = [(first_unit[t0], first_unit[t0 + n] - first_unit[t0])
                               for t0, n in layout.group_tensors]
        shared = np.flatnonzero(~whole)
        elements = (shared[:, None] * BLOCK + np.arange(BLOCK)).reshape(-1)
        element_unit = np.searchsorted(start, elements, side="right") - 1
        return SimpleNamespace(
            layout=units, first_unit=first_unit, unit_tensor=on_device(unit_tensor, torch.long),
            elements=on_device(elements, torch.long) if len(elements) else None,
            element_unit=on_device(element_unit, torch.long),
            element_tensor=on_device(np.asarray(unit_tensor, dtype=np.int64)[element_unit], torch.long),
            # the update kernel must leave the shared blocks (unit U) alone: off in its active flags
            all_active=on_device([1] * U + [0], torch.int8) if len(elements) else None,
            off=torch.zeros(1, dtype=torch.int8, device=device))

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
        units = self._units[id(flat)]
        shared = None
        if units is None:  # the units are the tensors
            unit_layout, unit_active = layout, active
            ranges = [(t0, tn) for *_, t0, tn in groups]
            sums = segment_sum(layout, partial)
        else:
            unit_layout = units.layout
            first_unit = units.first_unit
            ranges = [(first_unit[t0], first_unit[t0 + tn] - first_unit[t0]) for *_, t0, tn in groups]
            sums = segment_sum(unit_layout, partial)
            if active is None:
                unit_active = units.all_active
            else:
                unit_active = active[units.unit_tensor]
                if units.elements is not None:
                    unit_active = torch.cat([unit_active, units.off])
            if units.elements is not None:
                # The shared blocks, elementwise: an inactive tensor's elements count 0 (as in the kernel;
                # its u buffer is not rewritten), and keep their values.
                w_shared, u_shared = flat.param[units.elements].float(), u[units.elements]
                squares = torch.stack([w_shared * w_shared, u_shared * u_shared])
                keep = None if active is None else active[units.element_tensor].bool()
                if keep is not None:
                    squares = torch.where(keep, squares, 0.0)
                sums.index_add_(1, units.element_unit, squares)
                shared = (w_shared, u_shared, keep)
        norms = sums.sqrt()
        pieces = []
        for (group, *_), (u0, un) in zip(groups, ranges):
            w_norm, u_norm = norms[0, u0:u0 + un], norms[1, u0:u0 + un]
            adapt = group["layer_adaptation"]
            adapt = group["weight_decay"] != 0 if adapt is None else adapt
            ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
            pieces.append(group["lr"] * (ratio if adapt else torch.ones_like(ratio)))
        if units is not None:
            pieces.append(torch.zeros(1, device=layout.device))  # the shared blocks' unit U
        scale = torch.cat(pieces).float()
        for _group, first, count, _, _ in groups:
            K.scaled_sub(unit_layout, flat.param, u, scale, unit_active, first, count)
        if shared is not None:
            w_shared, u_shared, keep = shared
            new = w_shared - scale[units.element_unit] * u_shared
            if keep is not None:
                new = torch.where(keep, new, w_shared)
            flat.param[units.elements] = new.to(flat.param.dtype)
