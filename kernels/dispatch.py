"""One place that decides whether a kernel call runs the Triton kernel or the torch reference.

    MLPERF_KERNELS=auto       (default) Triton for CUDA tensors when triton imports, the reference otherwise
    MLPERF_KERNELS=triton     always Triton; off CUDA this needs TRITON_INTERPRET=1 set before the kernel
                              modules are imported (that is how tests/kernels runs the Triton path on CPU)
    MLPERF_KERNELS=reference  always the torch reference (a debugging switch on GPU machines)
    MLPERF_KERNELS=apex       NVIDIA apex's op where apex has one (fused Adam/LAMB, group norm, focal loss:
                              kernels/backends.py, an error when apex is not usable), auto's choice elsewhere;
                              the GPU image keeps the NGC base's apex, so our kernels can be timed against it

The variable is read on every call, not cached, so a test can flip it with monkeypatch. This module
imports nothing heavy: triton is only located, never imported, until a kernel module is.
"""

from __future__ import annotations

import importlib.util
import os

import torch

MODES = ("auto", "triton", "reference", "apex")


def mode() -> str:
    value = os.environ.get("MLPERF_KERNELS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"MLPERF_KERNELS={value!r}: expected one of {', '.join(MODES)}")
    return value


# Located once at import (find_spec does not import triton); a plain constant, which torch.compile can
# trace through, unlike a cached function.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return _TRITON_FOUND


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (kernels then pick small blocks)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """The decision for one call, from the tensors it will touch (None entries are ignored). Under
    MLPERF_KERNELS=apex an op apex has is dispatched by kernels/backends.py before this; the others decide
    as auto."""
    chosen = mode()
    if chosen == "reference":
        return False
    if chosen == "triton":
        if not triton_available():
            raise RuntimeError("MLPERF_KERNELS=triton but triton is not installed")
        return True
    present = [t for t in tensors if t is not None]
    return triton_available() and bool(present) and all(t.is_cuda for t in present)


def num_programs_hint(device: torch.device) -> int:
    """How many persistent programs a kernel that accumulates per-program partials (the norms' weight
    gradients) launches: one per SM on a GPU, so the (programs, N) fp32 partials stay small next to
    the rows they summarise (132 x 12288 x 4 B = 6.5 MB for GPT-3 on an H100/H200); a handful under the
    interpreter. Untuned: no GPU was available to measure."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def warps_for(block_elements: int) -> int:
    """num_warps for a one-row-per-program kernel: enough threads that each holds <= ~16 fp32 values of
    the row in registers. Not tuned on hardware yet (no GPU was available when this was written); the
    rule is the common one (Triton's layer-norm tutorial, Liger's calculate_settings)."""
    if block_elements >= 32768:
        return 32
    if block_elements >= 8192:
        return 16
    if block_elements >= 2048:
        return 8
    return 4
