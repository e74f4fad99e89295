"""ResNet-50 v1.5 on ImageNet: what the run loop needs (build, warm-up, data, train step, eval, keys).

Epochs are the unit of everything here: the LR schedule, the eval cadence (every `eval_every_epochs`
with an offset), the budget, and `eval_accuracy.epoch_num` (epochs completed, as the RCP checker reads).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from mlperf_logging.mllog import constants

from kernels.optimizers import FusedLARS
from models.resnet.config import ResNetConfig
from models.resnet.lars import poly_decay_steps, poly_warmup_lr
from models.resnet.model import build_resnet, lars_param_groups
from models.resnet.parallelize import parallelize
from runtime import schedule
from runtime.benchmark import RunContext
from runtime.data_parallel import unwrap
from runtime.data_parallel_benchmark import DataParallelBenchmark
from runtime.schedule import Block


def write_synthetic_data(cfg: ResNetConfig, out_dir: str) -> None:
    from pipelines.imagenet.synthetic import write_synthetic_imagenet

    d = cfg.data
    write_synthetic_imagenet(out_dir, num_classes=d.synthetic_classes,
                             train_per_class=d.synthetic_train_per_class, val_per_class=d.synthetic_val_per_class,
                             num_train_shards=d.synthetic_train_shards, num_val_shards=d.synthetic_val_shards,
                             min_side=d.synthetic_min_side, max_side=d.synthetic_max_side, seed=d.synthetic_seed,
                             val_label_noise=d.synthetic_val_label_noise)


class ResNetBenchmark(DataParallelBenchmark):
    precisions = ("fp32", "bf16", "fp16")

    def __init__(self, cfg: ResNetConfig, ctx: RunContext):
        super().__init__(cfg, ctx)
        self.check_settings(cfg, ctx.run_dir)
        t = cfg.train
        self.steps_per_epoch = cfg.data.train_samples // t.global_batch_size  # last partial batch dropped
        self.warmup_steps = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        # poly_decay_steps = total - warmup + 1, as the reference computes (and an RCP states) it
        self.total_steps = cfg.optim.decay_steps + self.warmup_steps - 1 if cfg.optim.decay_steps else \
            math.ceil(t.epochs * self.steps_per_epoch)
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format

        self.model = parallelize(build_resnet(cfg.model), ctx.layout, ctx.device, channels_last=t.channels_last,
                                 compile=t.compile)
        o = cfg.optim
        # FusedLARS: the LARS of models/resnet/lars.py over one flat buffer (Triton on CUDA, the same maths
        # in torch elsewhere); built after the model has its final device and memory format.
        self.optimizer = FusedLARS(lars_param_groups(unwrap(self.model)), lr=o.base_lr, momentum=o.momentum,
                                   weight_decay=o.weight_decay, eeta=o.trust_coefficient,
                                   epsilon=o.epsilon)

    @classmethod
    def check_settings(cls, cfg: ResNetConfig, run_dir: str) -> None:
        t, d = cfg.train, cfg.data
        if d.loader not in ("dali", "torch"):
            raise ValueError(f"data.loader={d.loader!r}: expected 'dali' or 'torch'")
        if not 0 <= t.eval_offset < t.eval_every_epochs:
            raise ValueError(f"train.eval_offset={t.eval_offset} must be in [0, train.eval_every_epochs="
                             f"{t.eval_every_epochs})")
        if d.train_samples < t.global_batch_size:
            raise ValueError(f"data.train_samples={d.train_samples} is smaller than one global batch")

    # -- logging -----------------------------------------------------------------------------------------
    def log_hyperparameters(self) -> None:
        log, o, t = self.ctx.log, self.cfg.optim, self.cfg.train
        log.event(constants.GLOBAL_BATCH_SIZE, t.global_batch_size)
        log.event(constants.GRADIENT_ACCUMULATION_STEPS, t.grad_accum)
        log.event(constants.OPT_NAME, constants.LARS)
        log.event(constants.LARS_OPT_BASE_LEARNING_RATE, o.base_lr)
        log.event(constants.LARS_OPT_END_LR, o.end_lr)
        log.event(constants.LARS_OPT_LR_DECAY_POLY_POWER, o.poly_power)
        log.event(constants.LARS_OPT_LR_DECAY_STEPS, poly_decay_steps(self.warmup_steps, self.total_steps))
        log.event(constants.LARS_EPSILON, o.epsilon)
        log.event(constants.LARS_OPT_LEARNING_RATE_WARMUP_EPOCHS, o.warmup_epochs)
        log.event(constants.LARS_OPT_MOMENTUM, o.momentum)
        log.event(constants.LARS_OPT_WEIGHT_DECAY, o.weight_decay)
        log.event(constants.MODEL_BN_SPAN, self.micro_batch)
        log.event("label_smoothing", o.label_smoothing)

    # -- steps ---------------------------------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        o = self.cfg.optim
        return poly_warmup_lr(step, base_lr=o.base_lr, warmup_steps=self.warmup_steps,
                              total_steps=self.total_steps, end_lr=o.end_lr, power=o.poly_power)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(images.to(self.ctx.device, non_blocking=True)
                              .contiguous(memory_format=self.memory_format))

    def loss(self, micro_batch) -> torch.Tensor:
        images, labels = micro_batch
        return F.cross_entropy(self._logits(images).float(), labels.to(self.ctx.device, non_blocking=True),
                               label_smoothing=self.cfg.optim.label_smoothing)

    def train_micro_batches(self, step: int) -> list:
        return self.split_micro_batches(self.next_epoch_batch(step))

    def eval_counts(self, batch) -> torch.Tensor:
        images, labels = batch
        correct = (self._logits(images).argmax(1) == labels.to(self.ctx.device)).sum()
        return torch.stack([correct.double(), torch.tensor(labels.numel(), dtype=torch.float64,
                                                             device=self.ctx.device)])

    def synthetic_batches(self) -> tuple[list, object]:
        size = self.cfg.data.image_size
        g = torch.Generator().manual_seed(0)
        images = torch.randn(self.micro_batch * self.cfg.train.grad_accum, 3, size, size, generator=g)
        labels = torch.randint(0, self.cfg.model.num_classes, (images.shape[0],), generator=g)
        return self.split_micro_batches((images, labels)), (images[: self.micro_batch], labels[: self.micro_batch])

    # -- data and blocks -------------------------------------------------------------------------------
    def open_data(self) -> dict:
        d, ctx = self.cfg.data, self.ctx
        # Record-offset indexes (DALI's format) are cached outside the dataset, which may be read-only.
        index_dir = d.index_dir or os.path.join(os.path.expanduser("~"), ".cache", "mlperf-stack", "index")
        common = dict(rank=ctx.layout.dp_rank, world_size=ctx.layout.dp, image_size=d.image_size,
                      index_dir=index_dir)
        if d.loader == "dali":
            from pipelines.imagenet.dali import build_dali_eval_loader, build_dali_train_loader

            common.update(num_threads=d.num_workers, device="gpu" if ctx.device.type == "cuda" else "cpu")
            train, evaluate = build_dali_train_loader, build_dali_eval_loader
        else:
            from pipelines.imagenet.loader import build_eval_loader, build_train_loader

            common.update(num_workers=d.num_workers, device=ctx.device)
            train, evaluate = build_train_loader, build_eval_loader
        self.train_data = train(ctx.data_dir, global_batch_size=self.global_batch_size, seed=ctx.seed, **common)
        self.eval_data = evaluate(ctx.data_dir, batch_size=self.micro_batch, resize_size=d.eval_resize, **common)
        return self.check_sizes({"train_samples": self.train_data.num_samples,
                                 "eval_samples": self.eval_data.num_samples})

    def blocks(self) -> list[Block]:
        """Eval after epoch (every - offset), then every `eval_every_epochs`, and at the last epoch."""
        t = self.cfg.train
        ends = schedule.every(t.eval_every_epochs, t.max_epochs, t.eval_offset)
        return schedule.blocks([e * self.steps_per_epoch for e in ends], "epochs",
                               global_batch_size=self.global_batch_size, steps_per_epoch=self.steps_per_epoch)
