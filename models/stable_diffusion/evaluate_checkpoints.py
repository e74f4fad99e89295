"""Evaluate the kept checkpoints of a Stable Diffusion run (train.eval_mode=offline, or overlapped), alone or under
torchrun / srun / mpirun on other nodes, while the run trains or after it.

    python -m models.stable_diffusion.evaluate_checkpoints --flavour dgxh100_1x8 --data-dir /data \\
        --run-dir /results/run0 [--all] [eval.offline_report=all ...]

`--run-dir` is the run's directory or its run.checkpoint_dir (the checkpoints are in its unet_checkpoints/), or
`--checkpoints DIR` names the directory itself. Checkpoints are evaluated in order until the reporting rule is
decided (`--all`: every one); each score goes into the directory's scores.json, where the run's own offline
phase finds it and does not evaluate that checkpoint again. Prints one line per checkpoint to report,
`EVAL,stable_diffusion,<samples>,FID,<fid>,CLIP,<clip>`, then `FIRST_PASS,stable_diffusion,<samples>,<time_ms>`
(the time the run's run_stop carries) and exits 0. With no passing checkpoint: `NO_PASS,stable_diffusion`, exit 3,
once the run has kept its last checkpoint (its training_done.json); before that the run may still train to a
passing one: `UNDECIDED,stable_diffusion,<checkpoints evaluated>`, exit 4. The directory must hold one run's
checkpoints.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

from models.stable_diffusion import SPEC, offline_eval
from runtime import config as config_lib
from runtime.benchmark import RunContext
from runtime.distributed import detect_launch, init_distributed, pick_device
from runtime.mlperf_log import MLPerfLogger
from runtime.parallel import ParallelLayout

EXIT_PASS, EXIT_USAGE, EXIT_NO_PASS, EXIT_UNDECIDED = 0, 2, 3, 4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.stable_diffusion.evaluate_checkpoints", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flavour", default="debug", help="the run's flavour (its eval settings and model)")
    p.add_argument("--data-dir", default=os.environ.get("DATADIR", ""))
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", help="the run's directory or run.checkpoint_dir (holding unet_checkpoints/)")
    where.add_argument("--checkpoints", help="the checkpoint directory itself")
    p.add_argument("--all", action="store_true", help="evaluate every checkpoint, not only up to the decision")
    p.add_argument("overrides", nargs="*", help="section.field=value, as the run had them")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = config_lib.apply_overrides(SPEC.config(args.flavour), args.overrides)
    directory = args.checkpoints or os.path.join(args.run_dir, offline_eval.DIR_NAME)
    if not args.data_dir or not os.path.isdir(args.data_dir):
        print(f"error: --data-dir {args.data_dir!r}: no such directory", file=sys.stderr)
        return EXIT_USAGE
    if not os.path.isdir(directory):
        print(f"error: {directory}: no checkpoint directory", file=sys.stderr)
        return EXIT_USAGE

    launch = detect_launch()
    device = pick_device(launch)
    launch, _ = init_distributed(launch, device, cfg.run.collective_timeout_s)
    layout = ParallelLayout(launch.world_size, launch.rank, **vars(cfg.parallel))
    layout.build_groups()
    ctx = RunContext(spec=SPEC, launch=launch, layout=layout, device=device,
                     log=MLPerfLogger(None, enabled=False), run_dir=directory, data_dir=args.data_dir,
                     seed=cfg.run.seed or 0)  # the train seed plays no part in an evaluation
    try:
        bench = offline_eval.evaluation_benchmark(cfg, ctx)
        with torch.no_grad():
            entries, chosen = offline_eval.score_checkpoints(bench, directory, cfg.eval.offline_report,
                                                             every=args.all)
    except (ValueError, FileNotFoundError) as e:  # every rank reads the same index: all of them stop here
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    finally:
        if launch.world_size > 1:
            dist.destroy_process_group()
    if launch.rank != 0:
        return EXIT_PASS
    for i in chosen:
        e = entries[i]
        print(f"EVAL,{SPEC.name},{e['samples_count']},FID,{e['FID']:.6f},CLIP,{e['CLIP']:.6f}", flush=True)
    first = next((e for e in entries if e.get("passed")), None)
    if first is None:
        if not offline_eval.training_done(directory, entries[0]["run_id"]):
            print(f"UNDECIDED,{SPEC.name},{len(entries)}", flush=True)
            print(f"none of the {len(entries)} checkpoints passes, and the run is still training (no "
                  f"{offline_eval.DONE} of run {entries[0]['run_id']} in {directory})", file=sys.stderr, flush=True)
            return EXIT_UNDECIDED
        print(f"NO_PASS,{SPEC.name}", flush=True)
        return EXIT_NO_PASS
    print(f"FIRST_PASS,{SPEC.name},{first['samples_count']},{first['time_ms']}", flush=True)
    return EXIT_PASS


if __name__ == "__main__":
    sys.exit(main())
