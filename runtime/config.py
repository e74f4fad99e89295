"""Typed configuration: a dataclass per benchmark, named flavours, a few dotted overrides.

A benchmark's config module defines nested dataclasses and a `FLAVOURS` dict of functions returning a
config (`debug`, `dgxh100_8x8`, ...), each a few lines deriving from another. The command line then
changes single fields with `section.field=value`; the value is parsed by the field's declared type, and
an unknown field or unparseable value is an error rather than a silently ignored string.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
import types
import typing
from dataclasses import dataclass

# Packages whose versions go into every run directory.
_RECORDED_PACKAGES = ("torch", "torchvision", "triton", "numpy", "nvidia-dali-cuda130", "mlperf-logging",
                      "mpi4py", "megatron-core", "transformer-engine", "torchrec", "fbgemm-gpu-cpu")


@dataclass
class RunConfig:
    """What every benchmark's run needs, whatever the model."""

    seed: int | None = None  # None: drawn fresh per run (the seed checker wants a distinct seed per run)
    target: float = 0.0  # quality target; the benchmark's metric direction decides >= or <=
    # Progress lines, the NaN check and the cross-rank preemption check happen every this many steps: a
    # step count, not a time, because every rank must reach the same sync points.
    log_every_steps: int = 50
    # Between sync points the ranks also agree on a pending SIGTERM about this often (a step count derived from
    # the all-reduced step time at each sync point, so every rank polls at the same steps): Slurm kills a job
    # KillWait seconds (30 by default) after its SIGTERM, and the checkpoint must be written within that.
    preempt_poll_seconds: float = 5.0  # 0: only at sync points
    collective_timeout_s: float = 600.0  # a hung or lost peer fails the job after this long
    warmup_steps: int = 2  # untimed steps on synthetic data before run_start (compilation, graphs)
    checkpoint_dir: str = ""  # empty: no checkpoints
    checkpoint_every_blocks: int = 0  # 0: only on SIGTERM
    resume: bool = True  # pick up checkpoint_dir/latest.pt when present
    max_steps: int = 0  # > 0: stop (aborted) after this many steps; for profiling and tests
    # cudaProfilerStart/Stop around steps [start, stop) for nsys --capture-range=cudaProfilerApi; 0, 0: off
    profile_start_step: int = 0
    profile_stop_step: int = 0
    # Submission metadata (closed_common.yaml); platform defaults to $DGXSYSTEM or "<n>x<device>".
    submission_org: str = "mlperf-stack"
    submission_platform: str = ""
    submission_division: str = "closed"
    submission_status: str = "onprem"


@dataclass
class ParallelConfig:
    """What `runtime.parallel.ParallelLayout` takes; data parallelism fills the rest of the world."""

    tp: int = 1
    pp: int = 1
    cp: int = 1


@dataclass
class DataConfig:
    """What the runtime and the launchers read of every benchmark's data settings."""

    # The weights a run starts from (`LOAD_CHECKPOINTS_PATH` in the launchers), absolute or relative to
    # --data-dir; empty: the benchmark's own initialisation. Benchmarks whose rules start from random
    # weights refuse a non-empty value (BenchmarkSpec.init_checkpoint).
    init_checkpoint: str = ""
    # Only for `python -m runtime.synthesize`: the seed of the small stand-in dataset.
    synthetic_seed: int = 1234


@dataclass
class TrainConfig:
    global_batch_size: int = 0  # samples per optimizer step, in the benchmark's sample unit


@dataclass
class BenchmarkConfig:
    """The base every benchmark's config extends; each redeclares its sections with its own subclasses."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


def _parse(value: str, tp, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        return _parse(value, args[0], where)
    if tp is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: {value!r} is not a boolean")
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        return tuple(_parse(v, inner, where) for v in value.strip("()[] ").split(",") if v.strip())
    if tp is int and "e" in value.lower():  # 6.5e6 style; a value that is not whole is refused, not truncated
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not a valid int") from None
        if not number.is_integer():
            raise ValueError(f"{where}: {value!r} is not a whole number")
        return int(number)
    if tp in (int, float, str):
        try:
            return tp(value)
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not a valid {tp.__name__}") from None
    raise ValueError(f"{where}: fields of type {tp} cannot be overridden from the command line")


def apply_overrides(cfg, overrides: list[str]):
    """Apply `a.b.c=value` strings to a (nested) dataclass in place; returns cfg."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected section.field=value")
        path, value = item.split("=", 1)
        target, *parts = [cfg] + path.split(".")
        for i, name in enumerate(parts):
            hints = typing.get_type_hints(type(target))
            if name not in hints:
                known = ", ".join(f.name for f in dataclasses.fields(target))
                raise ValueError(f"override {item!r}: {type(target).__name__} has no field {name!r} (has: {known})")
            if i == len(parts) - 1:
                setattr(target, name, _parse(value, hints[name], f"override {item!r}"))
            else:
                target = getattr(target, name)
    return cfg


def git_revision() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in _RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def write_run_snapshot(run_dir: str, benchmark: str, flavour: str, cfg, extra: dict) -> None:
    """The resolved config, git revision and package versions, so a log can be traced to its code."""
    os.makedirs(run_dir, exist_ok=True)
    snapshot = {"benchmark": benchmark, "flavour": flavour, "config": dataclasses.asdict(cfg),
                "git_revision": git_revision(), "packages": package_versions(), **extra}
    with open(os.path.join(run_dir, "run_config.json"), "w") as f:
        json.dump(snapshot, f, indent=2, default=str)
