"""GroupNorm(+SiLU) kernel benchmark on the SD-2 UNet's shapes: ours (kernels/group_norm.py, Triton) against
torch's F.group_norm + F.silu in eager mode and under torch.compile, as GB/s against the measured copy
ceiling. The runner, ceilings and table are perf_tests/kernels/bench_kernels.py's, the cases its registry's
(perf_tests/kernels/cases.py group_norm_cases, also run by gpu_check.sh); this runs them alone.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent / "kernels"))
from bench_kernels import ceilings, run_case, table  # noqa: E402
from cases import group_norm_cases  # noqa: E402


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
