"""DLRMv2 (DCNv2) configurations: `debug` (CPU, under a minute) and real DGX systems at RCP batch sizes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from models.dlrm_dcnv2.model import DLRMModelConfig
from pipelines.criteo.format import DAYS, EVAL_SAMPLES, MULTI_HOT_SIZES, TABLE_ROWS, TRAIN_SAMPLES
from runtime import config as base
from runtime.config import RunConfig


@dataclass
class DataConfig(base.DataConfig):
    days: int = DAYS  # day files; the last is the validation day, the others the training set
    # Sizes of the split, known before the clock starts (no data access before run_start); checked against
    # what the data directory holds once it is opened.
    train_samples: int = TRAIN_SAMPLES
    eval_samples: int = EVAL_SAMPLES
    prefetch: int = 4  # batches assembled ahead by a background thread; 0: in the training thread
    cache_eval: bool = True  # keep validation batches on the device after the first eval (NVIDIA does)
    # Only for `python -m runtime.synthesize`: the planted-model Criteo (pipelines/criteo/synthetic.py).
    synthetic_rows_per_day: int = 0


@dataclass
class OptimConfig:
    """Adagrad for embeddings (fused into the backward pass) and for the MLPs. Only the learning rate is
    tunable in the closed division; the rest is fixed by closed_dlrm_dcnv2.yaml and checked here."""

    base_lr: float = 0.004
    eps: float = 1e-8
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    warmup_steps: int = 0
    decay_start_step: int = 0
    decay_steps: int = 0

    def check(self) -> None:
        fixed = {"eps": (self.eps, 1e-8), "lr_decay": (self.lr_decay, 0.0), "weight_decay": (self.weight_decay, 0.0),
                 "initial_accumulator_value": (self.initial_accumulator_value, 0.0),
                 "warmup_steps": (self.warmup_steps, 0), "decay_start_step": (self.decay_start_step, 0),
                 "decay_steps": (self.decay_steps, 0)}
        wrong = [f"optim.{k}={v} (must be {want})" for k, (v, want) in fixed.items() if v != want]
        if wrong:
            raise ValueError("the closed rules fix these DLRMv2 optimizer settings, and only the fixed values are "
                             "implemented (constant LR): " + ", ".join(wrong))


@dataclass
class TrainConfig(base.TrainConfig):
    global_batch_size: int = 55296
    eval_batch_size: int = 262144  # global; every rank evaluates eval_batch_size / world samples at a time
    evals_per_epoch: int = 20  # the reference's cadence: every floor(train_samples / (GBS * 20)) steps
    precision: str = "tf32"  # "fp32", "tf32" (TF32 matmuls on GPU) or "bf16" (autocast over the MLPs)


@dataclass
class ShardingConfig:
    """Inputs of torchrec's sharding planner (world > 1)."""

    device_memory_gib: float = 80.0  # per-device memory the planner may fill (H100 SXM: 80)
    host_memory_gib: float = 128.0  # per rank, for CPU runs and any table offloaded to host memory
    reserve_fraction: float = 0.05  # kept free for activations etc. (the reference's HeuristicalStorageReservation)


@dataclass
class DLRMConfig(base.BenchmarkConfig):
    model: DLRMModelConfig = field(default_factory=DLRMModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(target=0.80275, log_every_steps=500))


def dgxh100_1x8() -> DLRMConfig:
    """1 node x 8 H100, 6912 samples per GPU: GBS 55296 (an RCP point, 0.762 epochs), lr 0.004, NVIDIA's eval batch."""
    return DLRMConfig()


def dgxh200_1x8() -> DLRMConfig:
    """1 node x 8 H200: the same RCP point as on H100, with H200's 141 GB for the planner."""
    cfg = dgxh100_1x8()
    cfg.sharding.device_memory_gib = 141.0
    return cfg


def dgxh100_8x8() -> DLRMConfig:
    """8 nodes x 8 H100, 2112 samples per GPU: GBS 135168 (RCP: 0.928 epochs at lr 0.0034), eval batch 1M."""
    cfg = DLRMConfig()
    cfg.train = replace(cfg.train, global_batch_size=135168, eval_batch_size=1048576)
    cfg.optim = replace(cfg.optim, base_lr=0.0034)
    return cfg


# The debug flavour's synthetic set: 4 training days + the validation day; 200 steps of 1024 per epoch, 10 per eval.
DEBUG_DAYS = 5
DEBUG_ROWS_PER_DAY = 51200
DEBUG_TABLE_ROW_CAP = 1000


def debug() -> DLRMConfig:
    """The same model code with 16-d embeddings, tables of at most 1000 rows and narrow MLPs, on the
    synthetic planted-model Criteo (4 x 51200 training rows, 25600 validation rows), 2 CPU cores.

    The planted model's own AUROC on the validation rows is 0.910 (synthetic_info.json). The debug target,
    0.83, is above the real one (0.80275) so the log also meets the closed quality check; at lr 0.012 it was
    reached after 0.35-0.45 epoch over seeds (0.03 and up stalled for some seeds: Adagrad's first steps are
    lr-sized on every weight). The log claims the open division: the closed rules fix eval_samples at the real
    89,137,319, which a synthetic validation set cannot honestly report."""
    cfg = DLRMConfig()
    cfg.model = DLRMModelConfig(embedding_dim=16, table_rows=tuple(min(r, DEBUG_TABLE_ROW_CAP) for r in TABLE_ROWS),
                                multi_hot_sizes=MULTI_HOT_SIZES, bottom_mlp=(64, 32, 16), top_mlp=(128, 64, 1),
                                dcn_layers=3, dcn_low_rank=32)
    cfg.data = replace(cfg.data, days=DEBUG_DAYS, train_samples=(DEBUG_DAYS - 1) * DEBUG_ROWS_PER_DAY,
                       eval_samples=(DEBUG_ROWS_PER_DAY + 1) // 2, prefetch=2,
                       synthetic_rows_per_day=DEBUG_ROWS_PER_DAY)
    cfg.train = replace(cfg.train, global_batch_size=1024, eval_batch_size=8192, precision="fp32")
    cfg.optim = replace(cfg.optim, base_lr=0.012)
    cfg.sharding = replace(cfg.sharding, host_memory_gib=4.0)
    cfg.run = replace(cfg.run, target=0.83, log_every_steps=10, warmup_steps=1, submission_division="open")
    return cfg


FLAVOURS = {"debug": debug, "dgxh100_1x8": dgxh100_1x8, "dgxh200_1x8": dgxh200_1x8, "dgxh100_8x8": dgxh100_8x8}
