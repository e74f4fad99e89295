"""RetinaNet (MLPerf `ssd`) configurations: `debug` (CPU, about a minute) and DGX H100 systems at the
RCP point GBS 256 (lr 1e-4, warmup 1 epoch from factor 1e-3, weight decay 0; converged in 4.0 epochs)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from models.ssd.model import SSDModelConfig
from runtime import config as base
from runtime.config import RunConfig

OPENIMAGES_TRAIN_SAMPLES = 1_170_301
OPENIMAGES_EVAL_SAMPLES = 24_781
# torchvision's ImageNet resnext50_32x4d state dict (NVIDIA's BACKBONE_DIR), relative to --data-dir
BACKBONE_FILE = "resnext50_32x4d-7cdf4587.pth"


@dataclass
class DataConfig(base.DataConfig):
    # init_checkpoint (base): the backbone's ImageNet weights, the only starting weights the rules give;
    # empty: random backbone and a warning that the run is not valid MLPerf.
    loader: str = "torch"  # "torch" or "dali" (pipelines/openimages)
    num_workers: int = 8  # torch loader processes, or DALI threads, per rank
    # Sizes of the split, known before the clock starts; checked against the data directory once opened.
    train_samples: int = OPENIMAGES_TRAIN_SAMPLES
    eval_samples: int = OPENIMAGES_EVAL_SAMPLES
    # Only for `python -m runtime.synthesize`: coloured boxes of a few classes in the real layout.
    synthetic_classes: int = 4
    synthetic_train_images: int = 512
    synthetic_val_images: int = 64
    synthetic_min_side: int = 96
    synthetic_max_side: int = 160
    synthetic_max_objects: int = 3


@dataclass
class OptimConfig:
    """Adam, weight decay 0 (closed); base lr and the linear warm-up are the tunables."""

    base_lr: float = 1e-4
    warmup_epochs: int = 1  # the checker wants an integer
    warmup_factor: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class TrainConfig(base.TrainConfig):
    global_batch_size: int = 256
    grad_accum: int = 1
    max_epochs: int = 8  # budget: run_stop aborted if mAP has not reached the target by then (NVIDIA's cap)
    precision: str = "fp16"  # autocast: "fp16" with a dynamic grad scaler (NVIDIA's), "bf16" or "fp32"
    channels_last: bool = True
    compile: bool = False
    # COCO scoring in rank 0's background process while the next epoch trains (NVIDIA's choice); false:
    # every rank waits for the score after each eval (simpler to debug; the same numbers)
    async_eval: bool = True


@dataclass
class SSDConfig(base.BenchmarkConfig):
    model: SSDModelConfig = field(default_factory=SSDModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(target=0.34, log_every_steps=100))


def dgxh100_1x8() -> SSDConfig:
    """1 node x 8 H100 x 32 images: GBS 256, the RCP point (4.0 epochs at lr 1e-4, warm-up 1 epoch)."""
    cfg = SSDConfig()
    cfg.data.init_checkpoint = BACKBONE_FILE
    return cfg


def dgxh100_8x8() -> SSDConfig:
    """8 nodes x 8 H100 x 4 images: the same RCP point (GBS 256), so the same hyperparameters."""
    return dgxh100_1x8()


def debug() -> SSDConfig:
    """The same RetinaNet code, narrower and shallower, on 64 px inputs of a small 2-class synthetic set (one
    large rectangle per image, 256 training images an epoch), anchors halved to match the smaller input (16 px
    on P3). Target: COCO mAP@[.5:.95] 0.34 (the closed checker wants an eval >= 0.34), ~12 epochs."""
    cfg = SSDConfig()
    cfg.model = SSDModelConfig(num_classes=2, depths=(1, 1, 1, 1), stem_width=16, groups=4, width_per_group=16,
                               fpn_channels=64, image_size=64, anchor_sizes=(16, 32, 64, 128, 256))
    d = replace(cfg.data, num_workers=0, synthetic_classes=2, synthetic_train_images=256, synthetic_val_images=32,
                synthetic_min_side=64, synthetic_max_side=96, synthetic_max_objects=1)
    cfg.data = replace(d, train_samples=d.synthetic_train_images, eval_samples=d.synthetic_val_images)
    cfg.optim = replace(cfg.optim, base_lr=1e-3)
    cfg.train = replace(cfg.train, global_batch_size=16, max_epochs=30, precision="fp32")
    # Not the reference model, so its log claims the open division.
    cfg.run = replace(cfg.run, target=0.34, log_every_steps=16, warmup_steps=1, submission_division="open")
    return cfg


FLAVOURS = {"debug": debug, "dgxh100_1x8": dgxh100_1x8, "dgxh100_8x8": dgxh100_8x8}
