"""GroupNorm(+SiLU) kernel benchmark on the SD-2 UNet's shapes: ours (kernels/group_norm.py, Triton) against
torch's F.group_norm + F.silu in eager mode and under torch.compile, as GB/s against the measured copy
ceiling. The runner, ceilings and table are perf_tests/kernels/bench_kernels.py's; the cases would join its
registry (perf_tests/kernels/cases.py ALL) as they are.

    python perf_tests/stable_diffusion_group_norm.py [--no-compile]    # needs CUDA
    python perf_tests/stable_diffusion_group_norm.py --smoke           # CPU: tiny shapes, Triton interpreter

Shapes: NVIDIA's per-GPU batch of 64 (GBS 512 on 8 GPUs) at the UNet's four resolutions (latent 64 x 64 at
320 channels down to 8 x 8 at 1280), bf16, channels_last, 16 groups; with SiLU (ResBlocks) and without
(the spatial transformers' norm). Ideal traffic: forward reads x and writes y; forward + backward also reads
dy and x again and writes dx (5 tensors of x's size), the affine parameters being negligible.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if "--smoke" in sys.argv:  # before the kernel module defines its @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ["MLPERF_KERNELS"] = "triton"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "kernels"))
from bench_kernels import ceilings, run_case, table  # noqa: E402
from cases import Case, _fwd_bwd  # noqa: E402

from kernels.group_norm import group_norm, group_norm_ref  # noqa: E402

GROUPS = 16
SD_SHAPES = [(64, 320, 64, 64), (64, 640, 32, 32), (64, 1280, 16, 16), (64, 1280, 8, 8)]


def group_norm_cases(device: torch.device, smoke: bool) -> list[Case]:
    shapes = [(2, 32, 8, 8)] if smoke else SD_SHAPES
    out = []
    for shape in shapes:
        x = torch.randn(*shape, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        w = torch.ones(shape[1], device=device, requires_grad=True)
        b = torch.zeros(shape[1], device=device, requires_grad=True)
        nbytes = x.numel() * x.element_size()
        name = "x".join(map(str, shape))
        for silu in (True, False):
            op = "group_norm_silu" if silu else "group_norm"

            def ours(x, w, b, silu=silu):
                return group_norm(x, GROUPS, w, b, 1e-5, silu=silu)

            def torch_eager(x, w, b, silu=silu):
                y = F.group_norm(x, GROUPS, w, b, 1e-5)
                return F.silu(y) if silu else y

            def reference(x, w, b, silu=silu):
                return group_norm_ref(x, GROUPS, w, b, 1e-5, silu)

            inputs = (x, w, b)
            out.append(Case(op, name, "fwd", "bytes", 2 * nbytes, lambda f=ours, a=inputs: f(*a),
                            lambda f=torch_eager, a=inputs: f(*a), reference, inputs))
            out.append(Case(op, name, "fwd+bwd", "bytes", 5 * nbytes, _fwd_bwd(ours, inputs),
                            _fwd_bwd(torch_eager, inputs), reference, inputs))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("stable_diffusion_group_norm: no CUDA device; on CPU run with --smoke", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    ceiling = ceilings(device, args.smoke)
    rows = [run_case(case, ceiling, args.smoke, not args.no_compile and not args.smoke)
            for case in group_norm_cases(device, args.smoke)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU smoke (interpreter timings)"
    print(table(rows, ceiling, f"## SD GroupNorm kernels, {name}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
