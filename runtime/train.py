"""The training entry point of every benchmark, under torchrun, srun, mpirun or alone.

    python -m runtime.train resnet --flavour debug --data-dir DIR --run-dir DIR [--seed N] [optim.base_lr=2 ...]
    python -m runtime.train gpt3 --flavour dgxh100_64x8 --data-dir DIR --eval-only data.init_checkpoint=CKPT

--eval-only builds the benchmark as a run would (initial checkpoint, or the run's own checkpoint when
run.checkpoint_dir holds one), evaluates once on the whole validation set and prints
`EVAL,<benchmark>,<metric>,<value>`: the check that a checkpoint loads right (GPT-3's reference checkpoint
scores 2.7767). No MLPerf log is written.

Exit codes: 0 target reached; 3 budget exhausted or diverged (run_stop aborted); 143 preempted by SIGTERM
after saving a checkpoint; 17 a peer rank was lost (named on stderr).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import sys

import numpy as np
import torch
import torch.distributed as dist
from mlperf_logging.mllog import constants

from runtime import config as config_lib
from runtime import report, watchdog
from runtime.benchmark import BenchmarkSpec, RunContext, load_spec
from runtime.distributed import detect_launch, init_distributed, pick_device
from runtime.loop import RunLoop
from runtime.mlperf_log import MLPerfLogger
from runtime.parallel import ParallelLayout


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark")
    p.add_argument("--flavour", default="debug", help="named configuration, e.g. debug, dgxh100_8x8")
    p.add_argument("--data-dir", default=os.environ.get("DATADIR", ""))
    p.add_argument("--run-dir", default="", help="where the log, config snapshot, plot and summary go")
    p.add_argument("--seed", type=int, default=None, help="overrides run.seed")
    p.add_argument("--eval-only", action="store_true", help="evaluate the starting weights once, no training")
    p.add_argument("overrides", nargs="*", help="section.field=value")
    return p.parse_intermixed_args(argv)


def _agree_on_seed(requested: int | None, world_size: int, device: torch.device) -> int:
    """A fresh seed per run unless one is given, the same on every rank (drawn on rank 0)."""
    seed = requested if requested is not None else random.SystemRandom().randrange(2**31)
    if world_size > 1:
        t = torch.tensor([seed], dtype=torch.int64, device=device)  # nccl only moves device tensors
        dist.broadcast(t, src=0)
        seed = int(t.item())
    return seed


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_run_settings(spec: BenchmarkSpec, cfg, data_dir: str) -> None:
    """What can be known wrong before any process group or model exists."""
    if not data_dir:
        raise ValueError(f"{spec.name} needs --data-dir (or DATADIR); for the debug flavour: python -m "
                         f"runtime.synthesize {spec.name} --flavour debug --out DIR")
    if cfg.data.init_checkpoint and not spec.init_checkpoint:
        raise ValueError(f"{spec.name} starts from its own initialisation under the MLPerf rules; "
                         f"data.init_checkpoint={cfg.data.init_checkpoint!r} would not be used")
    if cfg.train.global_batch_size < 1:
        raise ValueError(f"train.global_batch_size={cfg.train.global_batch_size} must be >= 1")


def main(argv=None) -> int:
    args = parse_args(argv)
    spec = load_spec(args.benchmark)
    cfg = config_lib.apply_overrides(spec.config(args.flavour), args.overrides)
    if args.seed is not None:
        cfg.run.seed = args.seed
    check_run_settings(spec, cfg, args.data_dir)

    launch = detect_launch()
    device = pick_device(launch)
    launch, store = init_distributed(launch, device, cfg.run.collective_timeout_s)
    layout = ParallelLayout(launch.world_size, launch.rank, **vars(cfg.parallel))
    if not spec.megatron:  # megatron-core builds its own groups and hands them over (runtime/megatron)
        layout.build_groups()
    heartbeat = None
    if store is not None:
        heartbeat = watchdog.Heartbeat(launch.master_addr, launch.master_port, launch.rank,
                                       launch.world_size).start()

    run_dir = args.run_dir or os.path.join("runs", f"{args.benchmark}_{datetime.datetime.now():%Y%m%d_%H%M%S}")
    is_main = launch.rank == 0
    log = MLPerfLogger(os.path.join(run_dir, "mlperf_log.txt"), enabled=is_main and not args.eval_only)
    # cache_clear first: the host dropped the page cache before this process started (launchers/run.sub).
    log.event(constants.CACHE_CLEAR, True)
    log.start(constants.INIT_START)

    seed = _agree_on_seed(cfg.run.seed, launch.world_size, device)
    cfg.run.seed = seed
    _seed_everything(seed)
    platform = cfg.run.submission_platform or os.environ.get("DGXSYSTEM") or \
        f"{launch.world_size}x{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}"
    log.log_submission(args.benchmark, org=cfg.run.submission_org, platform=platform,
                       division=cfg.run.submission_division, status=cfg.run.submission_status)
    log.event(constants.SEED, seed)
    if is_main:
        config_lib.write_run_snapshot(run_dir, args.benchmark, args.flavour, cfg,
                                      {"launcher": launch.launcher, "layout": layout.describe(),
                                       "device": str(device)})
        print(f"{args.benchmark}/{args.flavour}: {layout.describe()} via {launch.launcher} on {device}, "
              f"seed {seed}, run dir {run_dir}", flush=True)

    ctx = RunContext(spec=spec, launch=launch, layout=layout, device=device, log=log, run_dir=run_dir,
                     data_dir=args.data_dir, seed=seed)
    bench = None
    loop = None

    def on_lost(message: str) -> None:
        log.end(constants.RUN_STOP, metadata={"status": constants.ABORTED})
        log.close()

    try:
        bench = spec.benchmark(cfg, ctx)
        if args.eval_only:
            RunLoop(bench, ctx, cfg.run).try_resume()
            bench.open_data()
            value = bench.evaluate()
            if is_main:
                print(f"EVAL,{args.benchmark},{spec.metric},{value:.6f}", flush=True)
        else:
            bench.log_hyperparameters()
            bench.warmup(cfg.run.warmup_steps)
            loop = RunLoop(bench, ctx, cfg.run)
            loop.try_resume()
            result = loop.run()
    except Exception as e:
        if launch.world_size > 1:
            watchdog.report_and_exit(heartbeat, e, on_lost if is_main else None)
        raise
    finally:
        if bench is not None:
            bench.close()

    if args.eval_only:
        result = None
    elif is_main:
        start = datetime.datetime.fromtimestamp(loop.t_start_ms / 1000).strftime("%Y-%m-%d %I:%M:%S %p")
        print(f"run stopped: {result.status} ({result.reason})", flush=True)
        print(f"RESULT,{args.benchmark},{seed},{result.seconds:.3f},{result.status},{start}", flush=True)
        report.write_plot(run_dir, args.benchmark, spec.metric, result.evals, cfg.run.target)
        line = report.summary_line(args.benchmark, seed, result.status, result.seconds, result.samples,
                                   result.evals)
        with open(os.path.join(run_dir, "summary.txt"), "w") as f:
            f.write(line + "\n")
        print(line, flush=True)
    log.close()
    if heartbeat is not None:
        heartbeat.stop()
    if launch.world_size > 1:
        dist.destroy_process_group()
    return 0 if result is None else result.exit_code


if __name__ == "__main__":
    sys.exit(main())
