"""FP8 training layers: Transformer Engine where it runs, the same parameter names everywhere else.

    linear = make_linear(1024, 4096, backend="auto")            # te.Linear on Hopper + TE, else nn.Linear
    ln_linear = make_layernorm_linear(1024, 3072, eps=1e-12)    # te.LayerNormLinear, else LayerNormLinear
    with fp8_autocast(enabled=True, recipe=recipe_for("bert")):
        y = ln_linear(x)

Backends: "te" (te.Linear / te.LayerNormLinear under te.fp8_autocast with a DelayedScaling recipe),
"torch" (bf16/fp32 torch layers with TE's parameter names, so state dicts interchange), "torch_fp8"
(`FP8Linear`: torch._scaled_mm with e4m3 forward / e5m2 gradients and delayed scaling, for a Hopper
GPU without TE). "auto" picks te when transformer_engine imports and reports FP8 support on this GPU, else torch.

Delayed scaling, as TE's DelayedScaling recipe: every quantized tensor role (input, weight, output
gradient) keeps an amax history of `amax_history_len` steps; a tensor is cast with the scale computed
from the history *before* its own amax is recorded, scale = fp8_max / amax / 2**margin with amax the
history's max ("max") or its latest entry ("most_recent"); a zero or non-finite amax keeps the old scale,
and an amax so small that the scale overflows fp32 gives fp32's largest value (TE's guard), never inf.
Several micro-batches per optimizer step (gradient accumulation, pipeline parallel with many forwards in
flight): every micro-batch folds its amax into the newest history slot (the max over the step), every
micro-batch is cast with the scales current when its forward ran (a value saved for its backward, never a
view of the buffer), and the history rolls and the scales update once per optimizer step
(`update_delayed_scaling`). Forwards without grad (evaluation, the no-grad first pass of activation
recompute) do not record amax.
The recipes NVIDIA's MLPerf v4.0 configs use are in RECIPES (spec: bert.md, gpt3.md, llama2_70b_lora.md).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
ROLES = ("input", "weight", "grad_output")


@dataclass(frozen=True)
class Fp8Recipe:
    amax_history_len: int = 1024
    amax_compute_algo: str = "max"  # or "most_recent"
    margin: int = 0
    fp8_format: str = "HYBRID"  # E4M3 forward, E5M2 backward

    def to_te(self):
        from transformer_engine.common.recipe import DelayedScaling, Format

        return DelayedScaling(margin=self.margin, fp8_format=getattr(Format, self.fp8_format),
                              amax_history_len=self.amax_history_len, amax_compute_algo=self.amax_compute_algo)


RECIPES = {
    "bert": Fp8Recipe(amax_history_len=1, amax_compute_algo="max"),
    "gpt3": Fp8Recipe(amax_history_len=1024, amax_compute_algo="max"),
    "llama2_70b_lora_h100": Fp8Recipe(amax_history_len=32, amax_compute_algo="max"),
    "llama2_70b_lora_h200": Fp8Recipe(amax_history_len=4, amax_compute_algo="most_recent"),
}


def recipe_for(config: str) -> Fp8Recipe:
    return RECIPES[config]


def te_available() -> bool:
    """Transformer Engine imports, CUDA is there and TE reports FP8 support on this GPU (Hopper or newer):
    kernels/backends.py asks TE itself, through the API its version has."""
    from kernels import backends

    return backends.te_usable(fp8=True)


def _backend(backend: str) -> str:
    if backend not in ("auto", "te", "torch", "torch_fp8"):
        raise ValueError(f"backend={backend!r}")
    if backend == "auto":
        return "te" if te_available() else "torch"
    if backend == "te" and not te_available():
        from kernels import backends

        raise RuntimeError(f"backend='te' needs transformer_engine with FP8 on this GPU: {backends.te_status()}")
    return backend


def fp8_autocast(enabled: bool = True, recipe: Fp8Recipe | None = None):
    """te.fp8_autocast when TE is usable, else a no-op (torch_fp8 layers are always FP8)."""
    if te_available():
        import transformer_engine.pytorch as te

        return te.fp8_autocast(enabled=enabled, fp8_recipe=(recipe or Fp8Recipe()).to_te())
    return contextlib.nullcontext()


# --- scaling bookkeeping ----------------------------------------------------------------------------
def fp8_max(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).max


def quantize(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x * scale cast to fp8, saturating at the format's largest value (no inf in e4m3fn)."""
    limit = fp8_max(dtype)
    return (x.float() * scale).clamp(-limit, limit).to(dtype)


def dequantize(x_fp8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (x_fp8.float() / scale).to(dtype)


def compute_scale(amax_history: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, margin: int = 0,
                  algo: str = "max") -> torch.Tensor:
    """New scales from histories (L, ...) and the current scales (...), without leaving the device."""
    amax = amax_history.max(0).values if algo == "max" else amax_history[0]
    new = fp8_max(dtype) / amax / (2.0 ** margin)
    # TE: an amax too small for the scale to be representable in fp32 gives fp32's largest scale, not inf
    # (an inf scale turns zeros into nan in the cast). A zero or non-finite amax keeps the previous scale.
    new = new.clamp(max=torch.finfo(torch.float32).max)
    return torch.where((amax > 0) & torch.isfinite(amax), new, scale)


def record_amax(amax_history: torch.Tensor, column: int, x: torch.Tensor) -> None:
    """Fold x's amax into the newest slot (row 0) of one role's history: the slot holds the max over every
    micro-batch since the last roll (which clears it), so each micro-batch of a step counts, not just the
    last. fmax, as TE's amax reductions (fmaxf): a nan amax does not wipe out the others."""
    slot = amax_history[0, column]
    slot.copy_(torch.fmax(slot, x.detach().abs().max().float()))


def roll_history(amax_history: torch.Tensor) -> torch.Tensor:
    """Make room for the next step: the newest slot moves to the end and row 0 is cleared (TE's order)."""
    rolled = torch.roll(amax_history, -1, 0)
    rolled[0] = 0.0
    return rolled


@torch.no_grad()
def update_delayed_scaling(amax_history: torch.Tensor, scale: torch.Tensor, recipe: Fp8Recipe) -> None:
    """Once per optimizer step, after the backward of its last micro-batch: the next step's scales (columns
    input, weight: e4m3; grad_output: e5m2) from the (L, 3) history, then roll the history, in place."""
    algo, margin = recipe.amax_compute_algo, recipe.margin
    fwd = compute_scale(amax_history[:, :2], scale[:2], E4M3, margin, algo)
    bwd = compute_scale(amax_history[:, 2:], scale[2:], E5M2, margin, algo)
    scale.copy_(torch.cat([fwd, bwd]))
    amax_history.copy_(roll_history(amax_history))


# --- the GEMMs ---------------------------------------------------------------------------------------
def fp8_gemm_forward(x2: torch.Tensor, weight: torch.Tensor, amax_history: torch.Tensor, scale: torch.Tensor,
                     record: bool = True) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """y (M, N) = x2 (M, K) @ weight (N, K)^T with e4m3 operands. Returns y and what the backward needs:
    (x_fp8, w_fp8, scales), the scales a copy of `scale` as it is now, so a later micro-batch's forward or
    a scale update before this backward runs changes nothing here (nor trips autograd's version check).
    `record`: fold this micro-batch's input and weight amax into the history (False for no-grad forwards)."""
    scale = scale.detach().clone()
    if record:
        record_amax(amax_history, 0, x2)
        record_amax(amax_history, 1, weight)
    x_fp8, w_fp8 = quantize(x2, scale[0], E4M3), quantize(weight, scale[1], E4M3)
    inv = scale.reciprocal()
    # _scaled_mm wants the second operand column-major: w_fp8 (N, K) row-major, transposed, is that
    y = torch._scaled_mm(x_fp8, w_fp8.t(), scale_a=inv[0], scale_b=inv[1], out_dtype=_out_dtype(x2))
    return y, (x_fp8, w_fp8, scale)


def fp8_gemm_backward(dy2: torch.Tensor, x_fp8: torch.Tensor, w_fp8: torch.Tensor, scale: torch.Tensor,
                      amax_history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dgrad (M, K), wgrad (N, K)) of fp8_gemm_forward from dy2 (M, N) cast to e5m2 with the grad_output
    scale its forward saw; dy2's amax is folded into the history's grad_output column."""
    dy2 = dy2.contiguous()
    record_amax(amax_history, 2, dy2)
    dy_fp8 = quantize(dy2, scale[2], E5M2)
    inv = scale.reciprocal()
    out = _out_dtype(dy2)
    # dgrad (M, K) = dy (M, N) @ w (N, K); wgrad (N, K) = dy^T (N, M) @ x (M, K)
    dx = torch._scaled_mm(dy_fp8, w_fp8.t().contiguous().t(), scale_a=inv[2], scale_b=inv[1], out_dtype=out)
    dw = torch._scaled_mm(dy_fp8.t().contiguous(), x_fp8.t().contiguous().t(), scale_a=inv[2],
                          scale_b=inv[0], out_dtype=out)
    return dx, dw


# --- torch-native FP8 linear -------------------------------------------------------------------------
class _Fp8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, history, scale, record):
        y, saved = fp8_gemm_forward(x2, weight, history, scale, record)
        ctx.save_for_backward(*saved)  # values: x_fp8, w_fp8 and this forward's scales
        ctx.amax_history = history  # the live buffer, written (not read) by the backward
        ctx.weight_dtype = weight.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        dx, dw = fp8_gemm_backward(dy, *ctx.saved_tensors, ctx.amax_history)
        return dx, dw.to(ctx.weight_dtype), None, None, None


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, amax_history: torch.Tensor,
               scale: torch.Tensor) -> torch.Tensor:
    """x @ weight.T + bias through torch._scaled_mm with the given (3,) scales and (L, 3) histories."""
    x2 = x.reshape(-1, x.shape[-1])
    y = _Fp8LinearFunction.apply(x2, weight, amax_history, scale, torch.is_grad_enabled())
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.view(*x.shape[:-1], weight.shape[0])


class _Fp8Scaling(nn.Module):
    """Delayed-scaling state of one FP8 GEMM: buffers `amax_history` (L, 3) and `scale` (3,) for
    input / weight / grad_output."""

    def _init_scaling(self, recipe: Fp8Recipe | None, device) -> None:
        self.recipe = recipe or Fp8Recipe()
        self.register_buffer("amax_history", torch.zeros(self.recipe.amax_history_len, 3, device=device))
        self.register_buffer("scale", torch.ones(3, device=device))

    @torch.no_grad()
    def update_scales(self) -> None:
        """Scales for the next step from the histories, then roll them (delayed scaling). Call once per
        optimizer step, after the backward of the step's last micro-batch."""
        update_delayed_scaling(self.amax_history, self.scale, self.recipe)


class FP8Linear(_Fp8Scaling):
    """nn.Linear computed with torch._scaled_mm: e4m3 inputs and weights, e5m2 output gradients, delayed
    scaling. in_features and out_features must be multiples of 16 (a _scaled_mm constraint); the output
    is bf16 (or the input's fp16/bf16)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, recipe: Fp8Recipe | None = None,
                 device=None, dtype=None):
        super().__init__()
        if in_features % 16 or out_features % 16:
            raise ValueError("FP8Linear needs in_features and out_features divisible by 16")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._init_scaling(recipe, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias, self.amax_history, self.scale)


# --- fallbacks with TE's parameter names ------------------------------------------------------------
class LayerNormLinear(_Fp8Scaling):
    """te.LayerNormLinear without TE: parameters `layer_norm_weight`, `layer_norm_bias` (LayerNorm only),
    `weight`, `bias`; the norm by this package's fused kernels, then a torch projection, or with
    `fp8=True` an FP8 one (plus FP8Linear's scaling buffers)."""

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-5, bias: bool = True,
                 normalization: str = "LayerNorm", fp8: bool = False, recipe: Fp8Recipe | None = None,
                 device=None, dtype=None):
        super().__init__()
        if normalization not in ("LayerNorm", "RMSNorm"):
            raise ValueError(f"normalization={normalization!r}")
        self.eps, self.normalization, self.fp8 = eps, normalization, fp8
        factory = {"device": device, "dtype": dtype}
        self.layer_norm_weight = nn.Parameter(torch.ones(in_features, **factory))
        self.layer_norm_bias = (nn.Parameter(torch.zeros(in_features, **factory))
                                if normalization == "LayerNorm" else None)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None
        nn.init.normal_(self.weight, std=0.023)  # TE's default init_method
        if fp8:
            self._init_scaling(recipe, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kernels.layer_norm import layer_norm
        from kernels.rms_norm import rms_norm

        if self.normalization == "LayerNorm":
            h = layer_norm(x, self.layer_norm_weight, self.layer_norm_bias, self.eps)
        else:
            h = rms_norm(x, self.layer_norm_weight, self.eps)
        if self.fp8:
            return fp8_linear(h, self.weight, self.bias, self.amax_history, self.scale)
        return F.linear(h, self.weight, self.bias)


def make_linear(in_features: int, out_features: int, bias: bool = True, backend: str = "auto", **kwargs) -> nn.Module:
    """te.Linear, nn.Linear or FP8Linear: all three name their parameters `weight` and `bias`."""
    chosen = _backend(backend)
    if chosen == "te":
        import transformer_engine.pytorch as te

        return te.Linear(in_features, out_features, bias=bias, **kwargs)
    if chosen == "torch_fp8":
        return FP8Linear(in_features, out_features, bias, **kwargs)
    return nn.Linear(in_features, out_features, bias=bias, **kwargs)


def make_layernorm_linear(in_features: int, out_features: int, eps: float = 1e-5, bias: bool = True,
                          normalization: str = "LayerNorm", backend: str = "auto", **kwargs) -> nn.Module:
    chosen = _backend(backend)
    if chosen == "te":
        import transformer_engine.pytorch as te

        return te.LayerNormLinear(in_features, out_features, eps=eps, bias=bias, normalization=normalization,
                                  **kwargs)
    return LayerNormLinear(in_features, out_features, eps, bias, normalization, fp8=chosen == "torch_fp8",
                           **kwargs)
