"""Train-step time of our RetinaNet against torchvision's RetinaNet of the same shape, in the same run.

torchvision's side is `retinanet_resnet50_fpn` as torchvision builds it (ResNet body with FrozenBatchNorm2d,
layers 2-4 trainable, FPN on C3-C5 with P6/P7 from P5, 9 anchors, its heads, focal + L1 losses inside the
model) with the backbone swapped for ResNeXt50-32x4d, built from config with no download: the spec's model,
which tests/models/test_ssd_model.py shows gives our losses and detections with our weights. Its step includes
its own GeneralizedRCNNTransform (normalise + a resize that is the identity here, as images are already at
the model size) and matching per image in Python; ours runs a normalised batch with the matching vectorised
over it (models/ssd/loss.py). Optimizer: our FusedAdam (`--our-optimizer torch`: torch's Adam, to time the
model and loss alone) against torch.optim.Adam (foreach), both lr 1e-4.

Modes: fp32 (NCHW), channels_last (what the benchmark runs, train.channels_last), bf16 (autocast, NHWC).
Each: `--warmup` untimed steps per side, then `--iters` timed ones alternating between the two (so load from
other processes hits both alike); median seconds and ours / torchvision (< 1: ours is faster). The full
model (264 classes) at `--size` (800 for the benchmark; 320 default, sized for a 2-core CPU).

    python perf_tests/ssd_step.py [--size 800 --batch 2 --iters 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import alternate, cpu_name  # noqa: E402

from kernels.optimizers import FusedAdam  # noqa: E402
from models.ssd.anchors import generate_anchors, level_sizes  # noqa: E402
from models.ssd.loss import retinanet_loss  # noqa: E402
from models.ssd.model import SSDModelConfig, build_retinanet  # noqa: E402
from pipelines.openimages.loader import MEAN, STD  # noqa: E402

MODES = ("fp32", "channels_last", "bf16")


def torchvision_retinanet(cfg: SSDModelConfig) -> torch.nn.Module:
    from torchvision.models import resnext50_32x4d
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    body = resnext50_32x4d(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels))
    anchors = AnchorGenerator(tuple(level_sizes(s) for s in cfg.anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    return RetinaNet(backbone, cfg.num_classes, min_size=cfg.image_size, max_size=cfg.image_size,
                     image_mean=list(MEAN), image_std=list(STD), anchor_generator=anchors)


def _targets(batch: int, size: int, g: torch.Generator, num_classes: int):
    """A few boxes per image, as OpenImages has (about 7 a validation image)."""
    boxes, labels = [], []
    for _ in range(batch):
        xy = torch.rand(6, 2, generator=g) * size * 0.6
        wh = torch.rand(6, 2, generator=g) * size * 0.35 + 8
        boxes.append(torch.cat((xy, xy + wh), dim=1))
        labels.append(torch.randint(0, num_classes, (6,), generator=g))
    return boxes, labels


def _autocast(mode: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()


def our_step(cfg: SSDModelConfig, mode: str, images, boxes, labels, optimizer_name: str = "fused"):
    model = build_retinanet(cfg).to(images.device).train()
    fmt = torch.contiguous_format if mode == "fp32" else torch.channels_last
    model = model.to(memory_format=fmt)
    mean, std = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in (MEAN, STD))
    normalised = (images - mean) / std
    normalised = normalised.contiguous(memory_format=fmt)
    gt_boxes, gt_labels = torch.stack(boxes), torch.stack(labels)  # same count per image: no padding needed
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = FusedAdam(trainable, lr=1e-4) if optimizer_name == "fused" else torch.optim.Adam(trainable, lr=1e-4)
    anchors = {}

    def step() -> None:
        with _autocast(mode, images.device):
            cls, box, sizes = model(normalised)
        key = tuple(sizes)
        if key not in anchors:
            anchors[key] = generate_anchors(cfg.image_size, sizes, cfg.anchor_sizes, images.device)
        classification, regression = retinanet_loss(cls, box, anchors[key], gt_boxes, gt_labels)
        (classification + regression).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def torchvision_step(cfg: SSDModelConfig, mode: str, images, boxes, labels):
    model = torchvision_retinanet(cfg).to(images.device).train()
    fmt = torch.contiguous_format if mode == "fp32" else torch.channels_last
    model = model.to(memory_format=fmt)
    inputs = list(images)  # torchvision batches them itself (its ImageList); the first conv takes the model's format
    targets = [{"boxes": b, "labels": c} for b, c in zip(boxes, labels)]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with _autocast(mode, images.device):
            losses = model(inputs, targets)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=320, help="input side (800 in the benchmark)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=264)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--our-optimizer", default="fused", choices=("fused", "torch"),
                        help="torch: torch.optim.Adam on our side too, to time model + loss alone (off CUDA, "
                             "FusedAdam runs its torch reference over flat buffers)")
    args = parser.parse_args()
    cfg = SSDModelConfig(num_classes=args.classes, image_size=args.size)
    g = torch.Generator().manual_seed(0)
    device = torch.device(args.device)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    boxes, labels = _targets(args.batch, args.size, g, args.classes)
    boxes, labels = [b.to(device) for b in boxes], [c.to(device) for c in labels]

    print(f"# ssd_step  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"torch {torch.__version__}, {cpu_name()}, {torch.get_num_threads()} threads, device {device}")
    print(f"RetinaNet ResNeXt50-32x4d FPN, {args.classes} classes, batch {args.batch} x 3 x {args.size}^2, "
          f"warmup {args.warmup}, timed {args.iters} (median); our optimizer: {args.our_optimizer}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
    print("| train step | ours s | ours img/s | torchvision s | torchvision img/s | ours / torchvision "
          "| first step ours / torchvision s |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        runs = {"ours": our_step(cfg, mode, images, boxes, labels, args.our_optimizer),
                "torchvision": torchvision_step(cfg, mode, images, boxes, labels)}
        times = alternate(runs, args.warmup, args.iters, device)
        ours, theirs = (times.median(name) for name in runs)
        print(f"| {mode} | {ours:.2f} | {args.batch / ours:.2f} | {theirs:.2f} | {args.batch / theirs:.2f} | "
              f"{ours / theirs:.3f} | {times.first('ours'):.1f} / {times.first('torchvision'):.1f} |", flush=True)
        del runs
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
