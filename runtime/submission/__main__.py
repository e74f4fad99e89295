"""python -m runtime.submission {package, check, predict, nvidia}: see runtime/submission/__init__.py.

Exit codes: 0 the checkers pass (package, check) or a prediction was made; 1 the checkers found errors; 2 runs or
inputs that cannot be packaged or predicted (one line on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys

from runtime.submission import RULESET
from runtime.submission.runs import RunError

EXIT_FAILED, EXIT_USAGE = 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.submission", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    pk = sub.add_parser("package", help="run directories -> the MLCommons submission tree, then its checkers")
    pk.add_argument("runs", nargs="+", help="run directories, or LOGDIRs holding them (run.sub's <DATESTAMP>_<i>)")
    pk.add_argument("--org", required=True)
    pk.add_argument("--system", required=True, help="the system name (systems/<SYSTEM>.json)")
    pk.add_argument("--division", required=True, choices=["closed", "open"])
    pk.add_argument("--out", required=True, help="the folder that receives <org>/ and the plots")
    pk.add_argument("--impl", default="pytorch", help="implementation folder name (default %(default)s)")
    pk.add_argument("--no-check", action="store_true", help="write the tree only")
    pk.add_argument("--rcp-bypass", action="store_true", help="the package checker's --rcp-bypass")

    ck = sub.add_parser("check", help=f"the MLCommons checkers (ruleset {RULESET}) on an existing <org> folder")
    ck.add_argument("org_dir")
    ck.add_argument("--rcp-bypass", action="store_true")
    ck.add_argument("--work-dir", default="", help="where the checkers' logs and summary.csv go (default: beside)")

    pr = sub.add_parser("predict", help="minutes to train from the RCPs and a throughput")
    pr.add_argument("benchmark")
    pr.add_argument("--gbs", type=int, default=0, help="global batch size (default: the run's or the plan's)")
    pr.add_argument("--run", default="", help="a short run's directory: throughput, eval and start-up seconds")
    pr.add_argument("--throughput", type=float, default=0.0, help="training samples/s of the whole system")
    pr.add_argument("--per-gpu-rate", type=float, default=0.0,
                    help="samples/s per GPU (GPT-3 with --plan: tokens/s per GPU), times --gpus or the plan's GPUs")
    pr.add_argument("--gpus", type=int, default=0)
    pr.add_argument("--plan", default="", help="models.gpt3.plan's output (a file, or - for stdin)")
    pr.add_argument("--eval-seconds", type=float, default=None, help="seconds per evaluation")
    pr.add_argument("--startup-seconds", type=float, default=None, help="timed seconds before the first step")

    sub.add_parser("nvidia", help="the predictor on NVIDIA's published v4.0 facts, against their times")
    return p


def _package(a) -> int:
    from runtime.submission.package import make_package

    result = make_package(a.runs, a.org, a.system, a.division, a.out, a.impl, not a.no_check, a.rcp_bypass)
    print(f"wrote {result.org_dir}")
    for benchmark, (have, need) in sorted(result.counts.items()):
        short = "" if have == need else f"  <- {need - have} missing: the package checker wants exactly {need}"
        print(f"{benchmark}: {have} of {need} required runs{short}")
    for note in result.notes:
        print(note)
    if result.unknown_fields:
        print(f"systems json: fields left for you to fill: {', '.join(result.unknown_fields)}")
    for path in result.plots:
        print(f"plot: {path}")
    if result.report is None:
        return 0
    print("\n".join(result.report.lines()))
    return 0 if result.report.passed else EXIT_FAILED


def _check(a) -> int:
    from runtime.submission.package import check_package

    work = a.work_dir or os.path.dirname(os.path.abspath(a.org_dir))
    report = check_package(a.org_dir, work, a.rcp_bypass)
    print("\n".join(report.lines()))
    return 0 if report.passed else EXIT_FAILED


def _predict(a) -> int:
    from runtime.submission import predict

    gbs, throughput = a.gbs, a.throughput
    eval_seconds, startup = a.eval_seconds, a.startup_seconds
    if a.run:
        m = predict.measure_run(a.run)
        if m.benchmark != a.benchmark:
            raise ValueError(f"{a.run}: a {m.benchmark} run, not {a.benchmark}")
        print(f"measured in {m.source}: {m.throughput:.1f} samples/s, eval "
              f"{'n/a' if m.eval_seconds is None else f'{m.eval_seconds:.2f} s'}, timed start-up "
              f"{m.startup_seconds:.2f} s, untimed init {m.init_seconds:.1f} s (not in the score)")
        gbs = gbs or m.global_batch_size
        throughput = throughput or m.throughput
        eval_seconds = m.eval_seconds if eval_seconds is None else eval_seconds
        startup = m.startup_seconds if startup is None else startup
    if a.plan:
        if a.benchmark != "gpt3":
            raise ValueError("--plan reads models.gpt3.plan's output: GPT-3 only")
        text = sys.stdin.read() if a.plan == "-" else open(a.plan).read()
        world, plan_gbs, plan_rate = predict.read_plan(text, a.per_gpu_rate or None)
        gbs = gbs or plan_gbs
        throughput = throughput or plan_rate
        print(f"plan: {world} GPUs, global batch {plan_gbs} sequences, {plan_rate:.3f} sequences/s")
    elif a.per_gpu_rate:
        if not a.gpus:
            raise ValueError("--per-gpu-rate needs --gpus (or --plan)")
        throughput = throughput or a.per_gpu_rate * a.gpus
    if not gbs or not throughput:
        raise ValueError("need a global batch size and a throughput: --run, --plan, or --gbs with --throughput "
                         "(or --per-gpu-rate and --gpus)")
    p = predict.predict(a.benchmark, gbs, throughput, eval_seconds, startup or 0.0)
    print(predict.describe(p))
    row = predict.NVIDIA_V40.get(a.benchmark)
    if row:
        print(f"  NVIDIA v4.0 published: {row[3]:.2f} min on {row[2]} H100 at global batch {row[0]}")
    return 0


def _nvidia(_a) -> int:
    from runtime.submission.predict import nvidia_table

    print(f"{'benchmark':18} {'GPUs':>5} {'GBS':>6} {'predicted':>9} {'published':>9} {'diff':>7}  missing fact")
    for benchmark, gpus, gbs, predicted, published, diff, missing in nvidia_table():
        print(f"{benchmark:18} {gpus:>5} {gbs:>6} {predicted:>9.2f} {published:>9.2f} {diff:>+6.1f}%  {missing}")
    print("steps only (samples at the RCP mean / NVIDIA's logged throughput); their eval seconds are not among the "
          "published facts in shared/spec")
    return 0


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    try:
        return {"package": _package, "check": _check, "predict": _predict, "nvidia": _nvidia}[a.command](a)
    except (RunError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
