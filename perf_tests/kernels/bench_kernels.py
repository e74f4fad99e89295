"""Kernel benchmarks on MLPerf-sized shapes: ours vs the torch reference (eager and torch.compile) and vs apex
(NVIDIA's fused ops, the anchor our kernels replace, where apex has the op and imports), as a fraction of ceilings
measured in the same run.

    python perf_tests/kernels/bench_kernels.py [--only cross_entropy,lamb] [--no-compile] [--out FILE.md]
    python perf_tests/kernels/bench_kernels.py --smoke     # CPU: tiny shapes, Triton interpreter, no numbers

Ceilings, measured first: HBM copy bandwidth (a 1 GiB device-to-device copy, counted as read + write)
and the bf16 GEMM rate (torch.matmul, 8192^3). Each case reports ms (median, L2 flushed between runs,
via triton.testing.do_bench), the achieved GB/s on its ideal traffic (or TFLOP/s), that as a fraction
of the measured ceiling, and the speed-up over the eager reference and over torch.compile of the
reference and over apex (x > 1: ours is faster; a row without apex says why: not importable here, an
extension missing from this apex build, or no such op in apex). `--budget-s` stops starting new cases
(and compiles) when spent, so gpu_check.sh always gets a table. The cases are in cases.py. Needs CUDA unless --smoke.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

if "--smoke" in sys.argv:  # before any kernel module defines its @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ["MLPERF_KERNELS"] = "triton"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, to run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases as registry  # noqa: E402


def bench_ms(fn, smoke: bool) -> float:
    if smoke:  # interpreter: one warm call and one timed call; the number only proves the path runs
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def ceilings(device: torch.device, smoke: bool) -> dict:
    n = (16 << 20) if smoke else (1 << 30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = bench_ms(lambda: dst.copy_(src), smoke)
    size = 256 if smoke else 8192
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    gemm_ms = bench_ms(lambda: torch.matmul(a, b), smoke)
    return {"copy_GBps": 2 * n / copy_ms / 1e6, "bf16_gemm_TFLOPs": 2 * size ** 3 / gemm_ms / 1e9}


def run_case(case, ceiling: dict, smoke: bool, compile_ok: bool) -> dict:
    ours = bench_ms(case.ours, smoke)
    eager = bench_ms(case.eager, smoke)
    compiled = None
    if compile_ok and case.compile_target is not None:
        fn = torch.compile(case.compile_target)
        compiled = bench_ms(registry._fwd_bwd(fn, case.compile_args) if case.mode == "fwd+bwd"
                            else (lambda: fn(*case.compile_args)), smoke)
    apex, apex_note = None, case.apex_note
    if case.apex is not None:
        try:  # apex failing on a shape must not hide our numbers
            apex = bench_ms(case.apex, smoke)
        except Exception as exc:
            apex_note = f"apex error: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
    if case.unit == "bytes":
        rate, limit, unit = case.work / ours / 1e6, ceiling["copy_GBps"], "GB/s"
    else:
        rate, limit, unit = case.work / ours / 1e9, ceiling["bf16_gemm_TFLOPs"], "TFLOP/s"
    return {"op": case.op, "shape": case.shape, "mode": case.mode, "ms": ours, "rate": rate, "unit": unit,
            "of_ceiling": rate / limit, "eager_ms": eager, "vs_eager": eager / ours,
            "compiled_ms": compiled, "vs_compiled": compiled / ours if compiled else None,
            "apex_ms": apex, "vs_apex": apex / ours if apex else None, "apex_note": apex_note}


def table(rows: list[dict], ceiling: dict, header: str) -> str:
    lines = [header, "",
             f"Measured ceilings: copy {ceiling['copy_GBps']:.0f} GB/s, "
             f"bf16 GEMM {ceiling['bf16_gemm_TFLOPs']:.0f} TFLOP/s.",
             "", "| op | shape | mode | ms | rate | of ceiling | eager ms | x eager | compiled ms | x compiled "
                 "| apex ms | x apex |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['shape']} | {r['mode']} | error: {r['error']} | | | | | | | | |")
            continue
        compiled = (f"{r['compiled_ms']:.3f} | {r['vs_compiled']:.2f}" if r["compiled_ms"] is not None else "- | -")
        apex = f"{r['apex_ms']:.3f} | {r['vs_apex']:.2f}" if r["apex_ms"] is not None else f"{r['apex_note']} | -"
        lines.append(f"| {r['op']} | {r['shape']} | {r['mode']} | {r['ms']:.3f} | {r['rate']:.0f} {r['unit']} | "
                     f"{100 * r['of_ceiling']:.0f}% | {r['eager_ms']:.3f} | {r['vs_eager']:.2f} | {compiled} | "
                     f"{apex} |")
    return "\n".join(lines) + "\n"


def apex_line() -> str:
    from kernels import backends

    try:
        from importlib.metadata import version

        apex_version = version("apex")
    except Exception:
        apex_version = "version unknown"
    by_state: dict[str, list[str]] = {}
    for op, state in backends.apex_status().items():
        by_state.setdefault(state, []).append(op)
    if list(by_state) == ["imports"]:
        return f"apex {apex_version}: every op imports"
    if len(by_state) == 1:  # apex itself absent: one reason for all
        return f"apex: {next(iter(by_state))}"
    return f"apex {apex_version}: " + "; ".join(f"{', '.join(ops)}: {state[:80]}" for state, ops in by_state.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under the Triton interpreter")
    parser.add_argument("--only", default="", help="comma-separated substrings of op names to run")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    parser.add_argument("--budget-s", type=float, default=1e9, help="start no new case after this many seconds")
    parser.add_argument("--out", type=Path, help="write the markdown table here (and the rows as .json)")
    args = parser.parse_args()
    if os.environ.get("MLPERF_KERNELS", "").strip().lower() == "apex":
        print("bench_kernels: MLPERF_KERNELS=apex would route 'ours' to apex too; apex has its own column: "
              "run without it", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not args.smoke:
        print("bench_kernels: no CUDA device. These benchmarks measure GPU kernels; on CPU run with --smoke "
              "(tiny shapes under the Triton interpreter, to check that every case runs).", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    start = time.monotonic()
    ceiling = ceilings(device, args.smoke)
    only = [s for s in args.only.split(",") if s]
    rows = []
    for build in registry.ALL:
        for case in build(device, args.smoke):
            if only and not any(s in case.op for s in only):
                continue
            spent = time.monotonic() - start
            if spent > args.budget_s:
                rows.append({"op": case.op, "shape": case.shape, "mode": case.mode, "error": "skipped: budget spent"})
                continue
            compile_ok = not args.no_compile and not args.smoke and spent < 0.7 * args.budget_s
            try:
                rows.append(run_case(case, ceiling, args.smoke, compile_ok))
            except Exception as exc:  # one failing case must not hide the others' numbers
                rows.append({"op": case.op, "shape": case.shape, "mode": case.mode,
                             "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU smoke ({platform.processor()})"
    import triton

    header = (f"## Kernel benchmarks, {name}, {datetime.datetime.now():%Y-%m-%d %H:%M}\n\n"
              f"torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}; "
              f"{apex_line()}"
              + (" — SMOKE RUN: interpreter timings, not performance numbers" if args.smoke else ""))
    text = table(rows, ceiling, header)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"ceilings": ceiling, "rows": rows}, indent=1))
    print(text)
    return 1 if any("error" in r and "budget" not in r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
