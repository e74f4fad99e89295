"""Which of NVIDIA's libraries this process can use, and the one place where their APIs differ by version.

    te_usable()            Transformer Engine imports and CUDA is there (TE's layers, GPT-3's TE spec)
    te_usable(fp8=True)    ... and TE itself reports FP8 support on this GPU (its own check, not ours)
    apex_usable()          apex imports with its CUDA extensions and CUDA is there
    apex_wanted()          MLPERF_KERNELS=apex (kernels/dispatch.py): apex where it has the op, else ours
    optimizer_class("lamb")   apex.optimizers.FusedLAMB when apex is wanted, else kernels.optimizers.FusedLAMB
    apex_op("group_norm")     one of APEX_OPS' apex classes/functions, or a RuntimeError saying what is missing;
                              kernels/group_norm.py and models/ssd/focal_loss.py route through it when wanted

The GPU image keeps the NGC base's TE and apex (containers/Dockerfile); the CPU set has neither, so every
check here answers False there and the callers take our Triton/torch paths. The answers are cached per
process (an import that fails at load can take seconds); `reset()` clears them (tests that swap fake
modules into sys.modules).

TE's API boundary used here, across the versions megatron-core 0.16 supports (TE 2.9-2.11) and older ones:
FP8 support is `transformer_engine.pytorch.is_fp8_available(return_reason=True)` where that exists (newer
TE), else `transformer_engine.pytorch.fp8.check_fp8_support()`; both give (bool, reason).
"""

from __future__ import annotations

import functools
import importlib

import torch

from kernels import dispatch


def reset() -> None:
    for fn in (_te_module, _te_fp8_support, _apex_module):
        fn.cache_clear()


# --- Transformer Engine ---------------------------------------------------------------------------------
@functools.cache
def _te_module():
    """transformer_engine.pytorch, or the reason it is not usable (str)."""
    try:
        return importlib.import_module("transformer_engine.pytorch")
    except Exception as err:  # ImportError, or a build failing at load (no cuDNN, ABI mismatch with torch)
        return f"transformer_engine.pytorch does not import: {type(err).__name__}: {err}"


@functools.cache
def _te_fp8_support() -> tuple[bool, str]:
    te = _te_module()
    if isinstance(te, str):
        return False, te
    if hasattr(te, "is_fp8_available"):
        answer = te.is_fp8_available(return_reason=True)
    else:
        answer = importlib.import_module("transformer_engine.pytorch.fp8").check_fp8_support()
    ok, reason = answer if isinstance(answer, tuple) else (bool(answer), "")
    return bool(ok), str(reason)


def te_usable(fp8: bool = False) -> bool:
    if not torch.cuda.is_available() or isinstance(_te_module(), str):
        return False
    return _te_fp8_support()[0] if fp8 else True


def te_status() -> str:
    """One line for logs and containers/check_image.py."""
    if not torch.cuda.is_available():
        te = _te_module()
        return "no CUDA" + (f" ({te})" if isinstance(te, str) else " (transformer_engine imports)")
    te = _te_module()
    if isinstance(te, str):
        return te
    ok, reason = _te_fp8_support()
    return "usable, FP8 " + ("supported" if ok else f"not supported: {reason}")


def te_version() -> str | None:
    try:
        return importlib.import_module("transformer_engine").__version__
    except Exception:
        return None


# --- apex -------------------------------------------------------------------------------------------------
# What NVIDIA's v4.0 submissions take from apex, by our name: module path and attribute. The last five are
# the anchors perf_tests/kernels times our kernels against. API facts, read in NVIDIA/apex's source
# (the 25.04-25.09 tags and master of 2026-07; unchanged in that span):
#   contrib GroupNorm(num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, act=None), a
#     module: its CUDA kernel only for NHWC (channels_last) 4-D input, groups in SUPPORTED_GROUPS (16, 32),
#     channels in SUPPORTED_CHANNELS, (input, weight) dtypes in SUPPORTED_DTYPES, affine; torch otherwise
#     (kernels/group_norm.py sends those cases to ours instead). act="silu" fuses the SiLU. Its module imports
#     group_norm_cuda and group_norm_v2_cuda (v2 since apex #1887, 2025-03): an apex built without
#     --group_norm fails that import, which apex_op reports.
#   contrib focal_loss.focal_loss(cls_output, cls_targets_at_level, num_positive_sum, num_real_classes, alpha,
#     gamma, label_smoothing=0.0) (apex #1337, 2022-03): CUDA, contiguous; targets int64 class indices with
#     -1 background and -2 ignored; num_positive_sum a one-element float32 tensor; the last dimension a
#     multiple of 16 bytes / element size (fp16: 8 classes, fp32: 4; fp16/fp32/fp64, no bf16) with
#     num_real_classes >= that multiple; returns sum(loss) / num_positive_sum (models/ssd/focal_loss.py).
APEX_OPS = {
    "adam": ("apex.optimizers", "FusedAdam"),
    "lamb": ("apex.optimizers", "FusedLAMB"),
    "distributed_adam": ("apex.contrib.optimizers.distributed_fused_adam", "DistributedFusedAdam"),
    "group_norm": ("apex.contrib.group_norm", "GroupNorm"),
    "focal_loss": ("apex.contrib.focal_loss.focal_loss", "focal_loss"),
    "sgd": ("apex.optimizers", "FusedSGD"),
    "adagrad": ("apex.optimizers", "FusedAdagrad"),
    "layer_norm": ("apex.normalization", "FusedLayerNorm"),
    "rms_norm": ("apex.normalization", "FusedRMSNorm"),
}


@functools.cache
def _apex_module():
    try:
        return importlib.import_module("apex")
    except Exception as err:
        return f"apex does not import: {type(err).__name__}: {err}"


def apex_usable() -> bool:
    return torch.cuda.is_available() and not isinstance(_apex_module(), str)


def apex_wanted() -> bool:
    return dispatch.mode() == "apex"


def apex_op(name: str):
    """The apex class for one of APEX_OPS; a RuntimeError that says what is missing otherwise."""
    if name not in APEX_OPS:
        raise ValueError(f"apex op {name!r}: expected one of {', '.join(APEX_OPS)}")
    apex = _apex_module()
    if isinstance(apex, str):
        raise RuntimeError(f"MLPERF_KERNELS=apex asks for apex's {name}, but {apex} (the NGC image has it; "
                           "the CPU set does not: unset MLPERF_KERNELS or use auto/triton/reference)")
    if not torch.cuda.is_available():
        raise RuntimeError(f"MLPERF_KERNELS=apex asks for apex's {name}: apex's fused ops need CUDA")
    module, attr = APEX_OPS[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise RuntimeError(f"MLPERF_KERNELS=apex asks for {module}.{attr}, which this apex build lacks "
                           f"(built without that extension?): {err}") from err


def apex_status() -> dict[str, str]:
    apex = _apex_module()
    if isinstance(apex, str):
        return {name: apex for name in APEX_OPS}
    out = {}
    for name, (module, attr) in APEX_OPS.items():
        try:
            getattr(importlib.import_module(module), attr)
            out[name] = "imports"
        except Exception as err:
            out[name] = f"missing: {type(err).__name__}: {err}"
    return out


# --- optimizer selection ----------------------------------------------------------------------------------
def _apex_adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
               max_grad_norm=None):
    """kernels.optimizers.FusedAdam's constructor on apex's FusedAdam (adam_w_mode = decoupled decay)."""
    if max_grad_norm is not None:
        raise ValueError("apex FusedAdam has no fused gradient clipping: clip before step() or use "
                         "MLPERF_KERNELS=auto for kernels.optimizers.FusedAdam(max_grad_norm=...)")
    return apex_op("adam")(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                           adam_w_mode=decoupled_weight_decay)


def _apex_adamw(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, max_grad_norm=None):
    return _apex_adam(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True, max_grad_norm=max_grad_norm)


def _apex_lamb(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0,
               layer_adaptation=None):
    """kernels.optimizers.FusedLAMB's constructor on apex's FusedLAMB (use_nvlamb=False: the trust ratio only
    for tensors with weight decay, our default rule). What apex cannot express is refused, not changed: a
    group that splits tensors into parts (`segments`, BERT's fused QKV, one ratio per part in ours) or that
    sets layer_adaptation against that rule."""
    groups = list(params)
    if not (groups and isinstance(groups[0], dict)):
        groups = [{"params": groups}]
    cleaned = []
    for group in groups:
        if any(s is not None and len(s) > 1 for s in group.get("segments") or []):
            raise ValueError("apex FusedLAMB takes one trust ratio per tensor; this group splits tensors into "
                             "parts (segments): use MLPERF_KERNELS=auto for kernels.optimizers.FusedLAMB")
        adapt = group.get("layer_adaptation", layer_adaptation)
        if adapt is not None and adapt != (group.get("weight_decay", weight_decay) != 0):
            raise ValueError(f"apex FusedLAMB adapts exactly the tensors with weight decay; layer_adaptation="
                             f"{adapt} with weight_decay={group.get('weight_decay', weight_decay)} differs: "
                             "use MLPERF_KERNELS=auto")
        cleaned.append({k: v for k, v in group.items() if k not in ("segments", "layer_adaptation")})
    return apex_op("lamb")(cleaned, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                           max_grad_norm=max_grad_norm, adam_w_mode=True, use_nvlamb=False)


_APEX_OPTIMIZERS = {"adam": _apex_adam, "adamw": _apex_adamw, "lamb": _apex_lamb}


def apex_optimizer(name: str):
    """apex's optimizer behind kernels.optimizers' constructor signature, whatever MLPERF_KERNELS says (what
    optimizer_class gives under MLPERF_KERNELS=apex; perf_tests/kernels times it beside ours)."""
    if name not in _APEX_OPTIMIZERS:
        raise ValueError(f"apex optimizer {name!r}: expected one of {', '.join(_APEX_OPTIMIZERS)}")
    apex_op("lamb" if name == "lamb" else "adam")  # raises the clear error now, not at construction
    return _APEX_OPTIMIZERS[name]


def optimizer_class(name: str):
    """A constructor with kernels.optimizers' signature: apex's optimizer when MLPERF_KERNELS=apex (an error
    when apex is not usable: asked for and absent is never a silent fallback), ours otherwise."""
    from kernels import optimizers

    ours = {"adam": optimizers.FusedAdam, "adamw": optimizers.FusedAdamW, "lamb": optimizers.FusedLAMB}
    if name not in ours:
        raise ValueError(f"optimizer {name!r}: expected one of {', '.join(ours)}")
    return apex_optimizer(name) if apex_wanted() else ours[name]
