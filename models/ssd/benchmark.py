"""RetinaNet on OpenImages (MLPerf `ssd`): what the run loop needs (build, warm-up, data, train step, eval,
keys). Epochs are the unit: an eval after every epoch, logged with epoch_num = epoch index + 1; the
warm-up is linear per step over `warmup_epochs` from `warmup_factor`."""

from __future__ import annotations

import torch
import torch.distributed as dist
from mlperf_logging.mllog import constants

from kernels.backends import optimizer_class
from models.ssd.anchors import generate_anchors
from models.ssd.coco_eval import CocoScorer, ground_truth, mean_average_precision, to_coco_detections
from models.ssd.config import SSDConfig
from models.ssd.inference import detect
from models.ssd.loss import retinanet_loss
from models.ssd.model import build_retinanet
from models.ssd.parallelize import parallelize
from models.ssd.state_dict_adapter import load_backbone, warn_random_backbone
from runtime import schedule
from runtime.benchmark import RunContext
from runtime.data_parallel import unwrap
from runtime.data_parallel_benchmark import DataParallelBenchmark
from runtime.pending_eval import PendingEval
from runtime.schedule import Block


def write_synthetic_data(cfg: SSDConfig, out_dir: str) -> None:
    from pipelines.openimages.synthetic import write_synthetic_openimages

    d = cfg.data
    write_synthetic_openimages(out_dir, classes=d.synthetic_classes, train_images=d.synthetic_train_images,
                               val_images=d.synthetic_val_images, min_side=d.synthetic_min_side,
                               max_side=d.synthetic_max_side, max_objects=d.synthetic_max_objects,
                               seed=d.synthetic_seed)


def warmup_lr(step: int, *, base_lr: float, warmup_steps: int, warmup_factor: float) -> float:
    """The reference's warmup_lr_scheduler: factor * (1 - a) + a with a = step / warmup_steps, then 1."""
    if step >= warmup_steps:
        return base_lr
    alpha = step / warmup_steps
    return base_lr * (warmup_factor * (1 - alpha) + alpha)


class SSDBenchmark(DataParallelBenchmark):
    eval_counters = ("images",)
    precisions = ("fp32", "bf16", "fp16")

    def __init__(self, cfg: SSDConfig, ctx: RunContext):
        super().__init__(cfg, ctx)
        self.check_settings(cfg, ctx.run_dir)
        t, d, o = cfg.train, cfg.data, cfg.optim
        self.steps_per_epoch = d.train_samples // t.global_batch_size  # last partial batch dropped
        self.warmup_steps = o.warmup_epochs * self.steps_per_epoch
        model = build_retinanet(cfg.model)
        if d.init_checkpoint:
            load_backbone(model, ctx.data_path(d.init_checkpoint))
        elif ctx.is_main:
            warn_random_backbone()
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.model = parallelize(model, ctx.layout, ctx.device, channels_last=t.channels_last, compile=t.compile)
        trainable = [p for p in unwrap(self.model).parameters() if p.requires_grad]
        # our FusedAdam, or apex's under MLPERF_KERNELS=apex
        self.optimizer = optimizer_class("adam")(trainable, lr=o.base_lr, weight_decay=o.weight_decay)
        self._anchors = {}
        self._detections, self._gt, self._category_ids = None, None, None
        self._scorer = None  # rank 0's background COCO scorer (train.async_eval)

    @classmethod
    def check_settings(cls, cfg: SSDConfig, run_dir: str) -> None:
        t, d, o = cfg.train, cfg.data, cfg.optim
        if d.loader not in ("torch", "dali"):
            raise ValueError(f"data.loader={d.loader!r}: expected 'torch' or 'dali'")
        if o.weight_decay != 0:
            raise ValueError(f"optim.weight_decay={o.weight_decay}: the closed rules fix it at 0")
        if d.train_samples < t.global_batch_size:
            raise ValueError(f"data.train_samples={d.train_samples} is smaller than one global batch")

    # -- logging -----------------------------------------------------------------------------------------
    def log_hyperparameters(self) -> None:
        log, o, t = self.ctx.log, self.cfg.optim, self.cfg.train
        group = self.optimizer.param_groups[0]
        log.event(constants.GLOBAL_BATCH_SIZE, t.global_batch_size)
        log.event(constants.GRADIENT_ACCUMULATION_STEPS, t.grad_accum)
        log.event("local_batch_size", self.micro_batch)
        log.event(constants.OPT_NAME, constants.ADAM)
        log.event(constants.OPT_BASE_LR, o.base_lr)
        log.event(constants.OPT_WEIGHT_DECAY, group["weight_decay"])
        log.event(constants.OPT_LR_WARMUP_EPOCHS, o.warmup_epochs)
        log.event(constants.OPT_LR_WARMUP_FACTOR, o.warmup_factor)
        log.event("weights_initialization", "imagenet_backbone" if self.cfg.data.init_checkpoint else "random")

    # -- steps ---------------------------------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        o = self.cfg.optim
        return warmup_lr(step, base_lr=o.base_lr, warmup_steps=self.warmup_steps, warmup_factor=o.warmup_factor)

    def anchors(self, feature_sizes) -> torch.Tensor:
        key = tuple(feature_sizes)
        if key not in self._anchors:
            self._anchors[key] = generate_anchors(self.cfg.model.image_size, feature_sizes,
                                                  self.cfg.model.anchor_sizes, self.ctx.device)
        return self._anchors[key]

    def _forward(self, images: torch.Tensor):
        with self.autocast():
            return self.model(images.to(self.ctx.device, non_blocking=True)
                              .contiguous(memory_format=self.memory_format))

    def loss(self, micro_batch) -> torch.Tensor:
        cls, box, sizes = self._forward(micro_batch.images)
        device = self.ctx.device
        classification, regression = retinanet_loss(cls, box, self.anchors(sizes), micro_batch.boxes.to(device),
                                                     micro_batch.labels.to(device))
        return classification + regression

    def _split(self, batch) -> list:
        return [type(batch)(*parts) for parts in self.split_micro_batches(batch)]

    def train_micro_batches(self, step: int) -> list:
        return self._split(self.next_epoch_batch(step))

    def eval_counts(self, batch) -> torch.Tensor:
        cls, box, sizes = self._forward(batch.images)
        detections = detect(cls, box, self.anchors(sizes), sizes, batch.sizes.to(self.ctx.device), self.cfg.model)
        if self._detections is not None:
            self._detections.append(to_coco_detections(batch.image_ids, detections, self._category_ids))
        return torch.tensor([float(len(batch.image_ids))], dtype=torch.float64, device=self.ctx.device)

    def evaluate(self) -> float | PendingEval:
        """Detections of every rank gathered on rank 0 and scored there, every image once: in the background
        while training goes on (the loop logs the mAP when it arrives), or here with the mAP broadcast."""
        import numpy as np

        self._detections = []
        counts = self.eval_totals(self.eval_data)
        local = np.concatenate(self._detections) if self._detections else np.zeros((0, 7))
        self._detections = None
        world = self.ctx.launch.world_size
        group = self.ctx.layout.dp_group() if world > 1 else None
        if world > 1:
            dist.all_reduce(counts, group=group)
            gathered = [None] * self.ctx.layout.dp if self.ctx.is_main else None
            dist.gather_object(local, gathered, dst=0, group=group)
        else:
            gathered = [local]
        if int(counts[-1]) != self.cfg.data.eval_samples:
            raise RuntimeError(f"evaluated {int(counts[-1])} images, expected all {self.cfg.data.eval_samples}")
        if self.cfg.train.async_eval:
            future = self._scorer.submit(np.concatenate(gathered)) if self.ctx.is_main else None
            return PendingEval(future, world_size=world, device=self.ctx.device)
        value = torch.zeros(1, dtype=torch.float64, device=self.ctx.device)
        if self.ctx.is_main:
            value[0] = mean_average_precision(self._gt, np.concatenate(gathered))
        if world > 1:
            dist.broadcast(value, src=0, group=group)
        return float(value[0])

    def synthetic_batches(self) -> tuple[list, object]:
        from pipelines.openimages.loader import Batch

        s, n = self.cfg.model.image_size, self.micro_batch * self.cfg.train.grad_accum
        g = torch.Generator().manual_seed(0)
        xy = torch.rand(n, 2, 2, generator=g) * s / 2
        boxes = torch.cat((xy[:, 0], xy[:, 0] + xy[:, 1] + 4), dim=1)[:, None]
        labels = torch.randint(0, self.cfg.model.num_classes, (n, 1), generator=g)
        batch = Batch(torch.randn(n, 3, s, s, generator=g), boxes, labels, torch.arange(n),
                      torch.full((n, 2), s, dtype=torch.int64))
        return self._split(batch), Batch(*(x[: self.micro_batch] for x in batch))

    # -- data and blocks -------------------------------------------------------------------------------
    def open_data(self) -> dict:
        d, ctx = self.cfg.data, self.ctx
        log = print if ctx.is_main else None
        common = dict(rank=ctx.layout.dp_rank, world_size=ctx.layout.dp, image_size=self.cfg.model.image_size,
                      log=log)
        if d.loader == "dali":
            from pipelines.openimages.dali import DaliEvalLoader as Eval
            from pipelines.openimages.dali import DaliTrainLoader as Train

            common.update(num_threads=max(d.num_workers, 1), device="gpu" if ctx.device.type == "cuda" else "cpu")
        else:
            from pipelines.openimages.loader import EvalLoader as Eval
            from pipelines.openimages.loader import TrainLoader as Train

            common.update(num_workers=d.num_workers)
        self.train_data = Train(ctx.data_dir, global_batch_size=self.global_batch_size, seed=ctx.seed, **common)
        self.eval_data = Eval(ctx.data_dir, batch_size=self.micro_batch, **common)
        split = self.eval_data.split
        if len(split.category_ids) != self.cfg.model.num_classes:
            raise ValueError(f"{ctx.data_dir}: {len(split.category_ids)} categories, model.num_classes="
                             f"{self.cfg.model.num_classes}")
        self._category_ids = split.category_ids
        if ctx.is_main:
            self._gt = ground_truth(split.coco)
            if self.cfg.train.async_eval:
                self._scorer = CocoScorer(self._gt)
                self._scorer.start()
        return self.check_sizes({"train_samples": self.train_data.num_samples,
                                 "eval_samples": self.eval_data.num_samples})

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()

    def blocks(self) -> list[Block]:
        """An eval after every epoch, from epoch 1 to the budget."""
        ends = [(e + 1) * self.steps_per_epoch for e in range(self.cfg.train.max_epochs)]
        return schedule.blocks(ends, "epochs", global_batch_size=self.global_batch_size,
                               steps_per_epoch=self.steps_per_epoch)
