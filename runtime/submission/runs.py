"""What a run directory holds, read and cross-checked before anything is packaged.

A run directory (runtime/train.py's --run-dir; run.sub makes LOGDIR/<DATESTAMP>_<i>) holds mlperf_log.txt and
run_config.json (resolved config, flavour, git revision, package versions, launcher, layout, device), and on
Slurm run.sub's console log sits beside it as <run dir>.log with a `:::SYSJSON` line describing the node.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from mlperf_logging.benchmark_meta import get_result_file_counts

from runtime.submission import USAGE

LOG_NAME = "mlperf_log.txt"
SNAPSHOT_NAME = "run_config.json"
TOKEN = ":::MLLOG "


class RunError(ValueError):
    """A run directory that cannot be packaged, or runs that cannot go into one package; one line."""


def required_runs(benchmark: str) -> int:
    """The number of result files the package checker demands, from its own table."""
    counts = get_result_file_counts(USAGE)
    if benchmark not in counts:
        raise RunError(f"{benchmark}: not a benchmark the MLPerf package checker knows")
    return counts[benchmark]


@dataclass
class Run:
    run_dir: str
    log_path: str
    benchmark: str
    flavour: str
    git_revision: str
    platform: str  # submission_platform as logged: the system the run claims
    division: str
    status_key: str  # submission_status as logged (onprem, cloud, preview, research)
    seed: int
    global_batch_size: float
    start_ms: int
    stop_ms: int
    status: str  # run_stop's metadata status: success or aborted
    evals: list = field(default_factory=list)  # (position in the RCP unit, value)
    snapshot: dict = field(default_factory=dict)
    sysjson: dict = field(default_factory=dict)  # run.sub's :::SYSJSON line, when its console log is beside

    @property
    def minutes(self) -> float:
        return (self.stop_ms - self.start_ms) / 60000.0

    @property
    def converged(self) -> bool:
        return self.status == "success"


def _events(path: str) -> list[dict]:
    events = []
    with open(path, encoding="latin-1") as f:  # as the MLCommons parsers read logs
        for number, line in enumerate(f, 1):
            if TOKEN not in line:
                continue
            try:
                events.append(json.loads(line.split(TOKEN, 1)[1]))
            except json.JSONDecodeError as e:
                raise RunError(f"{path}:{number}: an MLLOG line that is not JSON ({e.msg})") from None
    return events


def _one(events: list[dict], key: str, path: str):
    found = [e for e in events if e.get("key") == key]
    if not found:
        raise RunError(f"{path}: no `{key}` line (not a complete MLPerf log)")
    values = {json.dumps(e.get("value")) for e in found}
    if len(values) > 1:
        raise RunError(f"{path}: `{key}` logged with different values {sorted(values)}")
    return found[0]


def read_sysjson(console_log: str) -> dict:
    """The `:::SYSJSON {...}` line run.sub writes into a run's console log, or {}."""
    if not os.path.isfile(console_log):
        return {}
    with open(console_log, encoding="latin-1") as f:
        for line in f:
            if ":::SYSJSON " in line:
                try:
                    return json.loads(line.split(":::SYSJSON ", 1)[1])
                except json.JSONDecodeError:
                    return {}
    return {}


def read_run(run_dir: str) -> Run:
    run_dir = os.path.abspath(run_dir)
    log_path, snap_path = os.path.join(run_dir, LOG_NAME), os.path.join(run_dir, SNAPSHOT_NAME)
    for path in (log_path, snap_path):
        if not os.path.isfile(path):
            raise RunError(f"{path}: missing (a run directory holds {LOG_NAME} and {SNAPSHOT_NAME})")
    attempts = sorted(n for n in os.listdir(run_dir) if n.startswith("mlperf_log_attempt"))
    if attempts:
        raise RunError(f"{run_dir}: a resumed run ({', '.join(attempts)}): its time is not one uninterrupted "
                       f"MLPerf run and cannot be submitted")
    try:
        with open(snap_path) as f:
            snapshot = json.load(f)
    except json.JSONDecodeError as e:
        raise RunError(f"{snap_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    for key in ("benchmark", "flavour", "git_revision"):
        if key not in snapshot:
            raise RunError(f"{snap_path}: missing key {key!r}")

    events = _events(log_path)
    benchmark = _one(events, "submission_benchmark", log_path)["value"]
    if benchmark != snapshot["benchmark"]:
        raise RunError(f"{run_dir}: the log says benchmark {benchmark!r}, {SNAPSHOT_NAME} {snapshot['benchmark']!r}")
    start, stop = _one(events, "run_start", log_path), _one(events, "run_stop", log_path)
    evals = [(e["metadata"].get("epoch_num", e["metadata"].get("samples_count")), e["value"])
             for e in events if e.get("key") == "eval_accuracy"]
    return Run(run_dir=run_dir, log_path=log_path, benchmark=benchmark, flavour=snapshot["flavour"],
               git_revision=snapshot["git_revision"],
               platform=_one(events, "submission_platform", log_path)["value"],
               division=_one(events, "submission_division", log_path)["value"],
               status_key=_one(events, "submission_status", log_path)["value"],
               seed=int(_one(events, "seed", log_path)["value"]),
               global_batch_size=_one(events, "global_batch_size", log_path)["value"],
               start_ms=int(start["time_ms"]), stop_ms=int(stop["time_ms"]),
               status=stop.get("metadata", {}).get("status", ""), evals=evals, snapshot=snapshot,
               sysjson=read_sysjson(run_dir.rstrip("/") + ".log"))


def expand(paths: list[str]) -> list[str]:
    """Run directories from the arguments: a run directory itself, or a LOGDIR holding run directories."""
    found = []
    for path in paths:
        if os.path.isfile(os.path.join(path, LOG_NAME)):
            found.append(path)
        elif os.path.isdir(path):
            inner = sorted(os.path.join(path, d) for d in os.listdir(path)
                           if os.path.isfile(os.path.join(path, d, LOG_NAME)))
            if not inner:
                raise RunError(f"{path}: neither a run directory ({LOG_NAME}) nor a directory of run directories")
            found.extend(inner)
        else:
            raise RunError(f"{path}: no such directory")
    return found


def _same(runs: list[Run], attribute: str, what: str) -> None:
    values = {}
    for run in runs:
        values.setdefault(getattr(run, attribute), run.run_dir)
    if len(values) > 1:
        shown = "; ".join(f"{v!r} ({d})" for v, d in values.items())
        raise RunError(f"{runs[0].benchmark}: runs of mixed {what}: {shown}")


def group_and_check(runs: list[Run], division: str) -> dict[str, list[Run]]:
    """Runs by benchmark, oldest first, refusing what one package cannot hold: mixed flavours, git revisions or
    systems, a seed used twice, a run that claims another division."""
    if not runs:
        raise RunError("no runs given")
    _same(runs, "platform", "systems (submission_platform)")
    by_benchmark: dict[str, list[Run]] = {}
    for run in runs:
        if run.division != division:
            raise RunError(f"{run.log_path}: logs submission_division {run.division!r}, the package is {division!r}")
        by_benchmark.setdefault(run.benchmark, []).append(run)
    for benchmark, group in by_benchmark.items():
        required_runs(benchmark)
        _same(group, "flavour", "flavours")
        _same(group, "git_revision", "git revisions")
        _same(group, "global_batch_size", "global batch sizes")
        seen: dict[int, str] = {}
        for run in group:
            if run.seed in seen:
                raise RunError(f"{benchmark}: seed {run.seed} used by two runs ({seen[run.seed]} and {run.run_dir}); "
                               f"every run must draw its own seed")
            seen[run.seed] = run.run_dir
        group.sort(key=lambda r: r.start_ms)
    return by_benchmark


def choose(runs: list[Run], needed: int) -> list[Run]:
    """`needed` runs out of more: the rules' N consecutive runs (by start time) whose mean time is closest to the
    median of all of them."""
    if len(runs) <= needed:
        return runs
    times = sorted(r.minutes for r in runs)
    median = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
    windows = [runs[i:i + needed] for i in range(len(runs) - needed + 1)]
    return min(windows, key=lambda w: abs(sum(r.minutes for r in w) / needed - median))
