"""3D U-Net on KiTS19: what the run loop needs (build, warm-up, data, train step, eval, keys).

Epochs of `samples_per_epoch` samples drive the learning rate and the eval cadence (models/unet3d/schedule.py);
`eval_accuracy.epoch_num` is samples, epoch x samples_per_epoch, the RCP unit. The eval is the mean over
the evaluation cases of each case's mean kidney/tumour Dice, from a sliding window over the whole volume;
the cases are spread over the ranks and the per-case sums all-reduced. A mean Dice below 1e-6 means the
model diverged: the run stops as aborted, as the reference's does.
"""

from __future__ import annotations

import math

import torch
from mlperf_logging.mllog import constants

from models.unet3d import schedule
from models.unet3d.config import UNet3DConfig
from models.unet3d.inference import sliding_window_inference
from models.unet3d.losses import argmax_dice, dice_ce_loss
from models.unet3d.model import build_unet3d, min_input_size
from models.unet3d.parallelize import parallelize
from pipelines.kits19.format import NUM_CLASSES, list_cases, read_eval_cases, split_cases
from pipelines.kits19.loader import EvalVolumes, build_train_loader
from runtime import schedule as blocks_schedule
from runtime.benchmark import RunContext
from runtime.data_parallel import unwrap
from runtime.data_parallel_benchmark import DataParallelBenchmark
from runtime.schedule import Block

DIVERGED_DICE = 1e-6  # the reference's threshold


def write_synthetic_data(cfg: UNet3DConfig, out_dir: str) -> None:
    from pipelines.kits19.synthetic import write_synthetic_kits19

    d = cfg.data
    write_synthetic_kits19(out_dir, train_cases=d.train_samples, eval_cases=d.eval_samples, min_shape=d.input_shape,
                           seed=d.synthetic_seed)


def _check_shape(name: str, side: int, cfg: UNet3DConfig) -> None:
    levels = 2 ** len(cfg.model.filters)
    if side % levels or side < min_input_size(cfg.model):
        raise ValueError(f"{name}={side}: want a multiple of {levels} (2 ** len(model.filters)) and at least "
                         f"{min_input_size(cfg.model)} (the bottleneck's InstanceNorm needs more than one voxel)")


class UNet3DBenchmark(DataParallelBenchmark):
    precisions = ("fp32", "tf32", "bf16")
    eval_counters = ("dice_sum", "volumes")

    def __init__(self, cfg: UNet3DConfig, ctx: RunContext):
        super().__init__(cfg, ctx)
        self.check_settings(cfg, ctx.run_dir)
        d, t, o = cfg.data, cfg.train, cfg.optim
        self.steps_per_epoch = d.train_samples // t.global_batch_size  # the last partial batch is dropped
        self.samples_per_epoch = self.steps_per_epoch * t.global_batch_size
        self.eval_epochs = schedule.eval_epochs(start_samples=t.start_eval_samples, every_samples=t.eval_every_samples,
                                                max_samples=t.max_samples, samples_per_epoch=self.samples_per_epoch)
        if ctx.device.type == "cpu" and t.cpu_threads > 0:
            torch.set_num_threads(t.cpu_threads)
        self.memory_format = torch.channels_last_3d if t.channels_last else torch.contiguous_format
        self.model = parallelize(build_unet3d(cfg.model), ctx.layout, ctx.device, channels_last=t.channels_last,
                                 compile=t.compile)
        self.optimizer = schedule.build_sgd(unwrap(self.model).parameters(), momentum=o.momentum,
                                            weight_decay=o.weight_decay)

    @classmethod
    def check_settings(cls, cfg: UNet3DConfig, run_dir: str) -> None:
        d, t, o = cfg.data, cfg.train, cfg.optim
        if d.loader not in ("torch", "dali"):
            raise ValueError(f"data.loader={d.loader!r}: expected 'torch' or 'dali'")
        _check_shape("data.input_shape", d.input_shape, cfg)
        _check_shape("eval.roi_shape", cfg.eval.roi_shape, cfg)
        if not 0 <= cfg.eval.overlap < 1 or cfg.eval.window_batch < 1:
            raise ValueError(f"eval.overlap={cfg.eval.overlap} must be in [0, 1) and eval.window_batch >= 1")
        if d.train_samples < t.global_batch_size:
            raise ValueError(f"data.train_samples={d.train_samples} is smaller than one global batch "
                             f"({t.global_batch_size})")
        schedule.check_decay_boundaries(o.decay_boundary_epochs, o.warmup_epochs)

    # -- logging -----------------------------------------------------------------------------------------
    def log_hyperparameters(self) -> None:
        """closed_unet3d.yaml, each key once (`seed` is runtime/train.py's single line)."""
        log, o, t, d, e = self.ctx.log, self.cfg.optim, self.cfg.train, self.cfg.data, self.cfg.eval
        log.event(constants.GLOBAL_BATCH_SIZE, t.global_batch_size)
        log.event(constants.GRADIENT_ACCUMULATION_STEPS, t.grad_accum)
        log.event(constants.OPT_NAME, constants.SGD)
        log.event(constants.OPT_BASE_LR, o.base_lr)
        log.event("opt_initial_learning_rate", o.init_lr)
        log.event(constants.OPT_LR_WARMUP_EPOCHS, o.warmup_epochs)
        log.event(constants.OPT_LR_DECAY_BOUNDARY_EPOCHS, list(o.decay_boundary_epochs))
        log.event(constants.OPT_LR_DECAY_FACTOR, o.decay_factor)
        log.event(constants.OPT_WEIGHT_DECAY, o.weight_decay)
        log.event("opt_momentum", o.momentum)
        log.event("oversampling", d.oversampling)
        log.event("training_input_shape", [d.input_shape] * 3)
        log.event("validation_input_shape", [e.roi_shape] * 3)
        log.event("validation_overlap", e.overlap)
        log.event("samples_per_epoch", self.samples_per_epoch)

    # -- steps ---------------------------------------------------------------------------------------------
    def epoch_of(self, step: int) -> int:
        """1-based epoch of 0-based `step`."""
        return step // self.steps_per_epoch + 1

    def learning_rate(self, step: int) -> float:
        o = self.cfg.optim
        return schedule.learning_rate(self.epoch_of(step), base_lr=o.base_lr, init_lr=o.init_lr,
                                      warmup_epochs=o.warmup_epochs, decay_boundary_epochs=o.decay_boundary_epochs,
                                      decay_factor=o.decay_factor)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.ctx.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with self.autocast():
            return self.model(images)

    def loss(self, micro_batch) -> torch.Tensor:
        images, labels = micro_batch
        return dice_ce_loss(self._logits(images), labels.to(self.ctx.device, non_blocking=True))

    def train_micro_batches(self, step: int) -> list:
        return self.split_micro_batches(self.next_epoch_batch(step))

    def eval_counts(self, batch) -> torch.Tensor:
        image, label = batch
        e = self.cfg.eval
        logits = sliding_window_inference(self._logits, image.to(self.ctx.device), (e.roi_shape,) * 3,
                                          overlap=e.overlap, sigma_scale=e.sigma_scale,
                                          padding_value=e.padding_value, window_batch=e.window_batch)
        volume_score = argmax_dice(logits, label.to(self.ctx.device)).mean()
        return torch.stack([volume_score, torch.ones((), dtype=torch.float64, device=self.ctx.device)])

    def evaluate(self) -> float:
        value = super().evaluate()
        if value < DIVERGED_DICE:
            # The loop stops on a non-finite eval value (run_stop aborted, exit 3); runtime/ has no other way
            # for a benchmark to stop a run early, so the diverged value is logged as NaN.
            if self.ctx.is_main:
                print(f"unet3d: mean Dice {value:.3g} < {DIVERGED_DICE}: the model diverged; stopping (aborted)",
                      flush=True)
            return math.nan
        return value

    def synthetic_batches(self) -> tuple[list, object]:
        side, roi = self.cfg.data.input_shape, self.cfg.eval.roi_shape
        g = torch.Generator().manual_seed(0)
        n = self.micro_batch * self.cfg.train.grad_accum
        images = torch.randn(n, 1, side, side, side, generator=g)
        labels = torch.randint(0, NUM_CLASSES, (n, 1, side, side, side), generator=g, dtype=torch.uint8)
        volume = torch.randn(1, 1, roi + 8, roi, roi, generator=g)  # two windows along one axis
        return self.split_micro_batches((images, labels)), (volume, torch.zeros(volume.shape, dtype=torch.uint8))

    # -- data and blocks -------------------------------------------------------------------------------
    def open_data(self) -> dict:
        d, ctx = self.cfg.data, self.ctx
        train_ids, eval_ids = split_cases(list_cases(ctx.data_dir), read_eval_cases())
        sizes = self.check_sizes({"train_samples": len(train_ids), "eval_samples": len(eval_ids)})
        common = dict(global_batch_size=self.global_batch_size, rank=ctx.layout.dp_rank, world_size=ctx.layout.dp,
                      patch=(d.input_shape,) * 3, oversampling=d.oversampling, seed=ctx.seed)
        if d.loader == "dali":
            from pipelines.kits19.dali import build_dali_train_loader  # DALI only where it is asked for

            self.train_data = build_dali_train_loader(ctx.data_dir, train_ids, num_threads=max(d.num_workers, 1),
                                                      device="gpu" if ctx.device.type == "cuda" else "cpu", **common)
        else:
            self.train_data = build_train_loader(ctx.data_dir, train_ids, num_workers=d.num_workers,
                                                 pin_memory=ctx.device.type == "cuda", **common)
        self.eval_data = EvalVolumes(ctx.data_dir, eval_ids, rank=ctx.layout.dp_rank, world_size=ctx.layout.dp)
        return sizes

    def blocks(self) -> list[Block]:
        """An eval after each epoch of schedule.eval_epochs (the first, every N after, the budget's last)."""
        ends = [epoch * self.steps_per_epoch for epoch in self.eval_epochs]
        return blocks_schedule.blocks(ends, "samples", global_batch_size=self.global_batch_size)
