"""The training entry point of every benchmark, under torchrun, srun, mpirun or alone.

    python -m runtime.train resnet --flavour debug --data-dir DIR --run-dir DIR [--seed N] [optim.base_lr=2 ...]
    python -m runtime.train gpt3 --flavour dgxh100_64x8 --data-dir DIR --eval-only data.init_checkpoint=CKPT

--eval-only builds the benchmark as a run would (initial checkpoint, or the run's own checkpoint when
run.checkpoint_dir holds one), evaluates once on the whole validation set and prints
`EVAL,<benchmark>,<metric>,<value>`: the check that a checkpoint loads right (GPT-3's reference checkpoint
scores 2.7767). No MLPerf log is written.

A preempted run resumes by running the same command: the checkpoint in run.checkpoint_dir brings its seed
and position. Each attempt writes its own MLPerf log (mlperf_log.txt, then mlperf_log_attempt2.txt, ...),
each closed by run_stop; the RESULT line and summary.txt of a resumed run say so and give the timed
seconds over all attempts, which are not one uninterrupted MLPerf time.

Exit codes: 0 target reached; 2 a config or data error found before run_start (one line on stderr;
MLPERF_TRACEBACK=1 shows the traceback); 3 budget exhausted or diverged (run_stop aborted); 143 preempted
by SIGTERM after saving a checkpoint; 17 a peer rank was lost (named on stderr).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import signal
import sys

import numpy as np
import torch
import torch.distributed as dist
from mlperf_logging.mllog import constants

from runtime import checkpoint, report, watchdog
from runtime import config as config_lib
from runtime.benchmark import BenchmarkSpec, RunContext, load_spec
from runtime.distributed import detect_launch, init_distributed, pick_device
from runtime.loop import RunLoop
from runtime.mlperf_log import MLPerfLogger
from runtime.parallel import ParallelLayout

EXIT_USAGE = 2
# Set by launchers/run.sub when it really dropped the page cache before this run (cache_clear says so).
CACHE_CLEARED_ENV = "MLPERF_CACHE_CLEARED"


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
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir}: no such directory")
    if cfg.data.init_checkpoint and not spec.init_checkpoint:
        raise ValueError(f"{spec.name} starts from its own initialisation under the MLPerf rules; "
                         f"data.init_checkpoint={cfg.data.init_checkpoint!r} would not be used")
    if cfg.train.global_batch_size < 1:
        raise ValueError(f"train.global_batch_size={cfg.train.global_batch_size} must be >= 1")


def resume_seed(cfg) -> None:
    """A run that resumes takes the seed of the checkpoint it resumes (the same command, rerun)."""
    run = cfg.run
    saved = checkpoint.saved_seed(run.checkpoint_dir) if run.checkpoint_dir and run.resume else None
    if saved is None:
        return
    if run.seed is not None and run.seed != saved:
        raise ValueError(f"run.checkpoint_dir={run.checkpoint_dir} holds a run with seed {saved}, this command "
                         f"asks for seed {run.seed}: drop the seed to resume that run, or use another directory")
    run.seed = saved


def attempt_log_path(run_dir: str) -> str:
    """mlperf_log.txt, or for a later attempt in the same run directory the next mlperf_log_attemptN.txt:
    a log is never appended to, so each one holds exactly one run_start/run_stop."""
    path, attempt = os.path.join(run_dir, "mlperf_log.txt"), 1
    while os.path.exists(path):
        attempt += 1
        path = os.path.join(run_dir, f"mlperf_log_attempt{attempt}.txt")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    timed = []  # non-empty once run_start is logged: errors from then on are the run's, not the command's
    try:
        return _run(args, timed)
    except (ValueError, OSError) as e:
        if timed or os.environ.get("MLPERF_TRACEBACK") == "1":
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE


def _run(args, timed: list) -> int:
    spec = load_spec(args.benchmark)
    cfg = config_lib.apply_overrides(spec.config(args.flavour), args.overrides)
    if args.seed is not None:
        cfg.run.seed = args.seed
    check_run_settings(spec, cfg, args.data_dir)
    resume_seed(cfg)
    run_dir = args.run_dir or os.path.join("runs", f"{args.benchmark}_{datetime.datetime.now():%Y%m%d_%H%M%S}")
    spec.benchmark.check_settings(cfg, run_dir)

    launch = detect_launch()
    device = pick_device(launch)
    launch, store = init_distributed(launch, device, cfg.run.collective_timeout_s)
    layout = ParallelLayout(launch.world_size, launch.rank, **vars(cfg.parallel))
    if not spec.megatron:  # megatron-core builds its own groups and hands them over (runtime/mcore)
        layout.build_groups()
    heartbeat = None
    if store is not None:
        heartbeat = watchdog.Heartbeat(launch.master_addr, launch.master_port, launch.rank,
                                       launch.world_size).start()

    is_main = launch.rank == 0
    log_path = attempt_log_path(run_dir) if is_main else ""
    log = MLPerfLogger(log_path, enabled=is_main and not args.eval_only)
    # cache_clear first: true only when the launcher dropped the page cache before this process started.
    log.event(constants.CACHE_CLEAR, os.environ.get(CACHE_CLEARED_ENV) == "1")
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

    def close_log(message: str = "") -> None:
        if log.run_open:  # every log that started a run ends it
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
            loop = RunLoop(bench, ctx, cfg.run, on_run_start=lambda: timed.append(True))
            loop.try_resume()
            result = loop.run()
    except Exception as e:
        # Failing already: torch's SIGCHLD handler would raise again, anywhere in what follows (naming peers,
        # logging run_stop), as each DataLoader worker goes; their deaths are expected now.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if launch.world_size > 1:
            watchdog.report_and_exit(heartbeat, e, close_log if is_main else None)
            # every peer is alive: the error is this rank's own, and its peers will name it as lost
            print(f"[rank {launch.rank}] failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                  file=sys.stderr, flush=True)
        close_log()
        raise
    finally:
        if bench is not None:
            bench.close()

    if args.eval_only:
        result = None
    elif is_main:
        start = datetime.datetime.fromtimestamp(loop.t_start_ms / 1000).strftime("%Y-%m-%d %I:%M:%S %p")
        print(f"run stopped: {result.status} ({result.reason})", flush=True)
        if result.attempts > 1:
            # Not one uninterrupted MLPerf time: the status says so, the seconds are all attempts' timed parts.
            print(f"RESULT,{args.benchmark},{seed},{result.total_seconds:.3f},{result.status}_resumed,{start}",
                  flush=True)
            print(f"resumed run: {result.attempts} attempts, {result.total_seconds:.1f} s timed over all of "
                  f"them, {result.seconds:.1f} s in this one (log {log_path}); not an uninterrupted MLPerf time",
                  flush=True)
        else:
            print(f"RESULT,{args.benchmark},{seed},{result.seconds:.3f},{result.status},{start}", flush=True)
        report.write_plot(run_dir, args.benchmark, spec.metric, result.evals, cfg.run.target)
        line = report.summary_line(args.benchmark, seed, result.status, result.total_seconds, result.samples,
                                   result.evals, attempts=result.attempts)
        with open(os.path.join(run_dir, "summary.txt"), "w") as f:
            f.write(line + "\n")
        print(line, flush=True)
    close_log()
    if heartbeat is not None:
        heartbeat.stop()
    if launch.world_size > 1:
        dist.destroy_process_group()
    return 0 if result is None else result.exit_code


if __name__ == "__main__":
    sys.exit(main())
