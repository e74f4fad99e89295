"""The benchmark contract: what a benchmark declares (`BenchmarkSpec`), what the run loop asks of it
(`Benchmark`), and how the runtime finds it.

A benchmark lives in its own package `models/<name>/`, whose `__init__.py` exports `SPEC`, a
`BenchmarkSpec`; `<name>` is the MLPerf log name. The runtime finds it by that convention and never names
a benchmark, so adding one touches no file in runtime/.

A benchmark is built untimed (model, optimizer, compiled step) without touching the dataset; the loop
then warms it up on synthetic batches, starts the clock, opens the data, and drives blocks of train steps
with an evaluation after each block until the quality target is met.
"""

from __future__ import annotations

import abc
import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from runtime import checkpoint
from runtime.config import BenchmarkConfig
from runtime.data_parallel import unwrap
from runtime.distributed import LaunchEnv
from runtime.mlperf_log import MLPerfLogger
from runtime.parallel import ParallelLayout
from runtime.schedule import UNITS, Block

MODELS_PACKAGE = "models"


@dataclass(frozen=True)
class Parity:
    """How runs of the same mathematics under different layouts compare (the contract tests read it)."""

    # Overrides under which one process computes what two data-parallel ranks compute at the same global
    # batch (e.g. accumulating two micro-batches, so that BatchNorm sees the same groups of samples).
    one_process: tuple[str, ...] = ()
    # Overrides that remove randomness which differs between layouts or is not checkpointed (dropout).
    deterministic: tuple[str, ...] = ()
    # Relative tolerance between layouts: they differ only in float summation order.
    rel: float = 1e-4


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything the runtime, the launchers and the contract tests need to know of one benchmark."""

    name: str  # MLPerf log name (the checker's benchmark key) and the package name under models/
    flavours: Mapping[str, Callable[[], BenchmarkConfig]]  # "debug" and one per real system
    benchmark: type[Benchmark]
    write_synthetic_data: Callable[[BenchmarkConfig, str], None]  # (cfg, out_dir): the small stand-in dataset
    metric: str  # printed beside each eval value, e.g. "top1", "log_perplexity"
    higher_is_better: bool
    eval_unit: str  # what eval_accuracy.epoch_num counts (runtime/schedule.py UNITS)
    # BERT logs `train_samples` as the samples trained, just before run_stop (the RCP checker's
    # --bert_train_samples mode reads it); everyone else logs the dataset size when the data opens.
    train_samples_at_stop: bool = False
    # Whether the rules start the run from given weights (`data.init_checkpoint`); the others refuse one.
    init_checkpoint: bool = False
    # megatron-core builds the process groups of its benchmarks itself and hands them to the layout.
    megatron: bool = False
    parity: Parity = Parity()
    # Compliance rules the debug flavour's log cannot meet under the closed rules (e.g. GPT-3's sequence
    # length and learning rates, DLRM's eval_samples), each with its reason where it is declared. The
    # debug log claims the open division; under its rules, and relabelled closed under those, it fails
    # these rules at most and no other.
    debug_log_exceptions: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.eval_unit not in UNITS:
            raise ValueError(f"benchmark {self.name}: eval_unit {self.eval_unit!r} is not one of {UNITS}")
        if "debug" not in self.flavours:
            raise ValueError(f"benchmark {self.name}: every benchmark has a 'debug' flavour")

    def config(self, flavour: str) -> BenchmarkConfig:
        if flavour not in self.flavours:
            raise ValueError(f"{self.name}: unknown flavour {flavour!r}; known: {', '.join(sorted(self.flavours))}")
        return self.flavours[flavour]()

    def reached(self, value: float, target: float) -> bool:
        return value >= target if self.higher_is_better else value <= target


def _packages() -> list[str]:
    models = importlib.import_module(MODELS_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(models.__path__) if m.ispkg)


def load_spec(name: str) -> BenchmarkSpec:
    """The SPEC of `models/<name>/`; imports only that package."""
    if name not in _packages():
        raise ValueError(f"unknown benchmark {name!r}; the packages under {MODELS_PACKAGE}/ are: "
                         f"{', '.join(_packages())}")
    spec = getattr(importlib.import_module(f"{MODELS_PACKAGE}.{name}"), "SPEC", None)
    if not isinstance(spec, BenchmarkSpec):
        raise ValueError(f"{MODELS_PACKAGE}/{name}/__init__.py exports no SPEC (a runtime.benchmark.BenchmarkSpec)")
    if spec.name != name:
        raise ValueError(f"{MODELS_PACKAGE}/{name}: SPEC.name is {spec.name!r}; it must be the package name")
    return spec


def discover() -> dict[str, BenchmarkSpec]:
    """Every benchmark package under models/ (packages without a SPEC are shared code, not benchmarks)."""
    specs = {}
    for name in _packages():
        spec = getattr(importlib.import_module(f"{MODELS_PACKAGE}.{name}"), "SPEC", None)
        if isinstance(spec, BenchmarkSpec):
            specs[name] = spec
    return specs


@dataclass
class OfflineVerdict:
    """What a benchmark that evaluates its checkpoints after training found (`Benchmark.evaluate_offline`):
    the run_stop it decides. Stable Diffusion's rules allow evaluating saved checkpoints after training (NVIDIA's
    v4.0 submission does): `run_stop` then carries the time at which the first passing checkpoint was taken."""

    status: str  # "success" or "aborted"
    reason: str
    evals: list  # (samples trained, metric value) of the checkpoints it reported, oldest first
    position: dict = field(default_factory=dict)  # run_stop's position metadata: the first passing checkpoint's
    time_ms: int | None = None  # when the first passing checkpoint was taken (success only)
    timed_seconds: float | None = None  # run_start to that checkpoint, over all attempts of a resumed run
    samples: int | None = None  # trained when that checkpoint was taken: the run's samples, not the whole budget's


@dataclass
class RunContext:
    spec: BenchmarkSpec
    launch: LaunchEnv
    layout: ParallelLayout
    device: torch.device
    log: MLPerfLogger
    run_dir: str
    data_dir: str
    seed: int

    @property
    def is_main(self) -> bool:
        return self.launch.rank == 0

    def data_path(self, path: str) -> str:
        """A config path: absolute, or relative to the data directory."""
        return path if os.path.isabs(path) else os.path.join(self.data_dir, path)


class Benchmark(abc.ABC):
    def __init__(self, cfg: BenchmarkConfig, ctx: RunContext):
        self.cfg = cfg
        self.ctx = ctx

    @classmethod  # noqa: B027 (an optional check, not an abstract one)
    def check_settings(cls, cfg: BenchmarkConfig, run_dir: str) -> None:
        """What is wrong with the settings that can be known before anything is built or written into `run_dir`:
        runtime/train.py asks first, so that such a run fails in its first second and leaves the directory as it
        was."""

    @property
    def global_batch_size(self) -> int:
        return self.cfg.train.global_batch_size

    @abc.abstractmethod
    def log_hyperparameters(self) -> None:
        """Benchmark keys of closed_<name>.yaml (and gradient_accumulation_steps, global_batch_size)."""

    @abc.abstractmethod
    def warmup(self, steps: int) -> None:
        """Untimed: run train and eval steps on synthetic batches, then restore the initial state."""

    @abc.abstractmethod
    def open_data(self) -> dict:
        """Timed: open the dataset; returns {"train_samples": n, "eval_samples": m}."""

    @abc.abstractmethod
    def blocks(self) -> list[Block]:
        """All blocks up to the benchmark's budget, in order (runtime/schedule.py builds them)."""

    @abc.abstractmethod
    def train_step(self, step: int) -> torch.Tensor:
        """One optimizer step over one global batch; returns the loss as a device tensor (no host sync)."""

    @abc.abstractmethod
    def evaluate(self) -> float:
        """The quality metric over the whole eval set, identical on every rank."""

    def eval_accuracy_lines(self, value: float) -> list[tuple[float, dict]]:
        """The `eval_accuracy` lines of the evaluation that returned `value`: (logged value, metadata added to
        the block's). One line with the value, unless the rules want several: Stable Diffusion logs FID and
        CLIP as two lines with a `metric` each, and returns one combined value for the target decision."""
        return [(value, {})]

    def progress_fields(self) -> dict:
        """Extra fields for the progress line (e.g. the learning rate)."""
        return {}

    # Evaluation after training. A benchmark that says so is not evaluated after each block: the loop hands each
    # block's end to keep_for_offline_eval (which keeps a checkpoint) and, once the budget is spent, lets
    # evaluate_offline evaluate those checkpoints, log their eval lines and decide run_stop.
    def evaluates_offline(self) -> bool:
        return False

    def keep_for_offline_eval(self, step: int, samples: int, timed_seconds: float) -> None:
        """At the end of a block: keep the weights after `step` steps (`samples` trained, `timed_seconds` since
        run_start over all attempts) for evaluate_offline."""
        raise NotImplementedError(f"{type(self).__name__} does not evaluate offline")

    def evaluate_offline(self, preempted: Callable[[], bool] | None = None) -> OfflineVerdict | None:
        """After the last block, on every rank: evaluate the kept checkpoints in order, log their eval lines.
        `preempted()` (every rank together) is asked between checkpoints: when it is true, return None, and the
        loop saves and exits 143 (a resumed run evaluates what is left)."""
        raise NotImplementedError(f"{type(self).__name__} does not evaluate offline")

    def check_sizes(self, found: dict) -> dict:
        """`found` ({"train_samples": n, "eval_samples": m}) must equal the config's data sizes, which the
        benchmark used before the clock started."""
        d = self.cfg.data
        for key, n in found.items():
            if n != getattr(d, key):
                raise ValueError(f"{self.ctx.data_dir}: holds {n} {key.split('_')[0]} samples, the config says "
                                 f"data.{key}={getattr(d, key)}")
        return found

    # Checkpoints. The defaults write one file from rank 0 (`<dir>/latest.pt`, atomically) holding the loop's
    # `common` dict and `state_dict()`, which fits a benchmark with one `self.model` (possibly under DDP or
    # compile) and one `self.optimizer`; DLRM overrides state_dict for its sharded tables, GPT-3 the whole
    # save/load for megatron's distributed checkpoints.
    def save_checkpoint(self, directory: str, common: dict) -> None:
        state = {**common, "benchmark": self.state_dict()}  # every rank: a sharded state_dict may gather
        if self.ctx.is_main:
            checkpoint.save_atomic(state, os.path.join(directory, checkpoint.LATEST))

    def load_checkpoint(self, directory: str, check) -> dict | None:
        """Restore the newest checkpoint in `directory` and return its `common` dict; None if there is none.
        `check(common, where)` raises before anything is loaded if the checkpoint does not fit this run."""
        path = os.path.join(directory, checkpoint.LATEST)
        if not os.path.exists(path):
            return None
        state = checkpoint.load(path, map_location=self.ctx.device)
        check(state, path)
        if "benchmark" not in state:
            raise RuntimeError(f"checkpoint {path}: missing key 'benchmark'")
        self.load_state_dict(state["benchmark"])
        return state

    def state_dict(self) -> dict:
        return {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def close(self) -> None:  # noqa: B027 - an optional hook: a no-op unless a benchmark overrides it
        """Release data loader workers and the like."""
