"""What the run loop needs from a benchmark, and where each benchmark lives.

A benchmark is built untimed (model, optimizer, compiled step) without touching the dataset; the loop
then warms it up on synthetic batches, starts the clock, opens the data, and drives blocks of train steps
with an evaluation after each block until the quality target is met.
"""

from __future__ import annotations

import abc
import importlib
import os
from dataclasses import dataclass, field

import torch

from runtime import checkpoint
from runtime.data_parallel import unwrap
from runtime.distributed import LaunchEnv
from runtime.mlperf_log import MLPerfLogger
from runtime.parallel import ParallelLayout

# Log name -> package. Each package has `config.py` (FLAVOURS) and `benchmark.py` (BENCHMARK class).
BENCHMARKS = {
    "resnet": "models.resnet",
    "bert": "models.bert",
    "gpt3": "models.gpt3",
    "dlrm_dcnv2": "models.dlrm_dcnv2",
}


@dataclass
class Block:
    """Train steps between two evaluations, with the metadata each MLPerf event of the block carries.

    `eval_metadata` holds `epoch_num` (or `samples_count`) in the unit the RCP checker reads for this
    benchmark: epochs for ResNet, samples for BERT, tokens for GPT-3, epoch fractions for DLRM.
    """

    steps: int
    start_metadata: dict
    stop_metadata: dict
    eval_metadata: dict


@dataclass
class RunContext:
    launch: LaunchEnv
    layout: ParallelLayout
    device: torch.device
    log: MLPerfLogger
    run_dir: str
    data_dir: str
    seed: int
    extra: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.launch.rank == 0


class Benchmark(abc.ABC):
    name: str  # MLPerf log name, e.g. "resnet"
    metric_name: str = "accuracy"
    higher_is_better: bool = True
    # BERT logs `train_samples` as the samples trained, just before run_stop (the RCP checker's
    # --bert_train_samples mode reads it); everyone else logs the dataset size when the data opens.
    train_samples_at_stop: bool = False

    def __init__(self, cfg, ctx: RunContext):
        self.cfg = cfg
        self.ctx = ctx

    @property
    def global_batch_size(self) -> int:
        """Every config so far keeps it in `train.global_batch_size`."""
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
        """All blocks up to the benchmark's budget, in order."""

    @abc.abstractmethod
    def train_step(self, step: int) -> torch.Tensor:
        """One optimizer step over one global batch; returns the loss as a device tensor (no host sync)."""

    @abc.abstractmethod
    def evaluate(self) -> float:
        """The quality metric over the whole eval set, identical on every rank."""

    def progress_fields(self) -> dict:
        """Extra fields for the progress line (e.g. the learning rate)."""
        return {}

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

    def reached(self, value: float, target: float) -> bool:
        return value >= target if self.higher_is_better else value <= target

    def close(self) -> None:
        """Release data loader workers and the like."""


def load_benchmark(name: str):
    """(FLAVOURS, Benchmark class) of a benchmark, imported only when asked for."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    package = BENCHMARKS[name]
    config = importlib.import_module(f"{package}.config")
    bench = importlib.import_module(f"{package}.benchmark")
    return config.FLAVOURS, bench.BENCHMARK
