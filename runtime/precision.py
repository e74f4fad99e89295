"""Mixed precision by name: the config says "fp32", "tf32", "bf16" or "fp16"; benchmarks state which they allow."""

from __future__ import annotations

import contextlib

import torch

_DTYPES = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, allowed: tuple[str, ...]) -> torch.dtype | None:
    """The autocast dtype for `train.precision` (None: full precision), refusing what the benchmark does not
    support. Only tf32 lets matmuls and convolutions use TF32 on Ampere and newer GPUs."""
    if precision not in allowed:
        raise ValueError(f"train.precision={precision!r}: expected one of {', '.join(allowed)}")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    return _DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs a dynamic loss scale (its 5 exponent bits underflow small gradients); bf16 and fp32 do not.
    A step whose gradients overflow is skipped and the scale halved; it doubles after 2000 clean steps."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
