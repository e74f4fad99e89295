"""RetinaNet: ResNeXt backbone with frozen BatchNorm folded into a per-channel scale and bias, FPN P3-P7,
and the classification and box heads shared across levels. Plain PyTorch for one device.

Shapes: B images, S x S input (fixed size, normalised), N anchors over all levels (9 per location),
K classes. `forward` returns cls_logits [B, N, K], bbox_regression [B, N, 4] (anchor order: level, then
location row-major, then the 9 anchors of a location, as torchvision's heads and anchor generator order
them) and the (H, W) of each level, from which models/ssd/anchors.py builds the anchors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SSDModelConfig:
    num_classes: int = 264
    depths: tuple[int, ...] = (3, 4, 6, 3)  # ResNeXt50
    stem_width: int = 64  # stem channels; layer i has planes stem_width * 2^i, outputs 4x that
    groups: int = 32
    width_per_group: int = 4  # grouped-conv width = int(planes * width_per_group / 64) * groups (torchvision)
    fpn_channels: int = 256
    head_convs: int = 4
    prior_probability: float = 0.01
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # base size on P3..P7
    image_size: int = 800  # every image is resized to image_size x image_size
    # inference
    score_threshold: float = 0.05
    topk_candidates: int = 1000  # per level
    nms_threshold: float = 0.5
    detections_per_image: int = 300


class FrozenScaleBias(nn.Module):
    """BatchNorm with frozen statistics, folded once into y = x * scale + bias (NVIDIA's frozen BN)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1).to(x.dtype) + self.bias.view(1, -1, 1, 1).to(x.dtype)

    @staticmethod
    def fold(weight, bias, running_mean, running_var, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
        """torchvision's FrozenBatchNorm2d arithmetic (eps 1e-5), done once in fp32."""
        scale = weight.float() * (running_var.float() + eps).rsqrt()
        return scale, bias.float() - running_mean.float() * scale


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, groups: int, width_per_group: int):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        out = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(inplanes, width, 1, bias=False), FrozenScaleBias(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = FrozenScaleBias(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), FrozenScaleBias(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), FrozenScaleBias(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNeXtBody(nn.Module):
    """torchvision's ResNet layout (v1.5: stride on the 3x3), returning C3, C4, C5."""

    def __init__(self, cfg: SSDModelConfig):
        super().__init__()
        w = cfg.stem_width
        self.conv1, self.bn1 = nn.Conv2d(3, w, 7, 2, 3, bias=False), FrozenScaleBias(w)
        inplanes, self.out_channels = w, []
        for i, depth in enumerate(cfg.depths):
            planes = w * 2**i
            blocks = [Bottleneck(inplanes if j == 0 else planes * 4, planes, 2 if (i > 0 and j == 0) else 1,
                                 cfg.groups, cfg.width_per_group) for j in range(depth)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes * 4
            self.out_channels.append(inplanes)
        # trainable_backbone_layers=3: the stem and layer1 never train (BN has no parameters at all)
        for module in (self.conv1, self.layer1):
            module.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class FPN(nn.Module):
    """torchvision's FeaturePyramidNetwork over C3-C5 with LastLevelP6P7 on P5; kaiming-uniform(a=1) convs."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        last = self.lateral[-1](features[-1])
        out = [self.output[-1](last)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            out.insert(0, self.output[i](last))
        p6 = self.p6(out[-1])
        return out + [p6, self.p7(F.relu(p6))]


class Heads(nn.Module):
    """Shared 4 x (conv 3x3 + ReLU) towers; N(0, 0.01) weights, zero biases, prior bias on the logits."""

    def __init__(self, cfg: SSDModelConfig, anchors_per_location: int = 9):
        super().__init__()
        c, a = cfg.fpn_channels, anchors_per_location
        self.num_classes = cfg.num_classes
        self.cls_convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(cfg.head_convs))
        self.box_convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(cfg.head_convs))
        self.cls_logits = nn.Conv2d(c, a * cfg.num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(c, a * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - cfg.prior_probability) / cfg.prior_probability))

    @staticmethod
    def _flatten(x: torch.Tensor, last: int) -> torch.Tensor:
        b, _, h, w = x.shape  # [B, A*last, H, W] -> [B, H*W*A, last]
        return x.view(b, -1, last, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, last)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cls, box = [], []
        for x in features:
            y, z = x, x
            for conv in self.cls_convs:
                y = F.relu(conv(y))
            for conv in self.box_convs:
                z = F.relu(conv(z))
            cls.append(self._flatten(self.cls_logits(y), self.num_classes))
            box.append(self._flatten(self.bbox_reg(z), 4))
        return torch.cat(cls, 1), torch.cat(box, 1)


class RetinaNet(nn.Module):
    def __init__(self, cfg: SSDModelConfig):
        super().__init__()
        self.cfg = cfg
        self.body = ResNeXtBody(cfg)
        self.fpn = FPN(self.body.out_channels[1:], cfg.fpn_channels)  # C3, C4, C5
        self.head = Heads(cfg)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        features = self.fpn(self.body(images))
        cls, box = self.head(features)
        return cls, box, [tuple(f.shape[-2:]) for f in features]


def build_retinanet(cfg: SSDModelConfig) -> RetinaNet:
    return RetinaNet(cfg)
