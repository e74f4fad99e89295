"""ResNet-50 v1.5 for MLPerf image classification, plain PyTorch for one device.

v1.5 differs from the original ResNet-50 (v1) in one place: a downsampling bottleneck puts its stride 2
on the 3x3 conv rather than on the first 1x1 conv, so no activation is skipped by a strided 1x1.
torchvision's `resnet50` is the same network, which the tests use as an outside reference.

Nothing here knows about process groups, precision or memory format: `channels_last`, autocast, compile
and DDP are applied by the caller. The model builds on the `meta` device (`with torch.device("meta")`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

EXPANSION = 4  # a bottleneck's output has 4x the channels of its inner 3x3 conv

# TF's BatchNormalization(momentum=0.9) keeps 0.9 of the old running mean; PyTorch's momentum is the
# weight of the new batch, so the same filter is momentum=0.1 here.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5


@dataclass
class ResNetModelConfig:
    depths: tuple[int, ...] = (3, 4, 6, 3)  # bottlenecks per stage
    base_width: int = 64  # stem channels and inner width of stage 1; doubles at each later stage
    num_classes: int = 1000
    # False: a stride-1 stem without the max-pool, for small debug images.
    stem_stride_pool: bool = True
    # Zero gamma on the last BN of each residual branch, so every block starts as the identity. Off in
    # the MLPerf reference; NVIDIA exposes it as `--bn-gamma-init0`.
    zero_init_residual: bool = False


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv feeds a BN whose beta does the same job.
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2, bias=False)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, v1.5) -> 1x1 expand, plus an identity or projection shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = _conv(in_channels, width, 1)
        self.bn1 = _batch_norm(width)
        self.conv2 = _conv(width, width, 3, stride)
        self.bn2 = _batch_norm(width)
        self.conv3 = _conv(width, out_channels, 1)
        self.bn3 = _batch_norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(_conv(in_channels, out_channels, 1, stride), _batch_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        y += self.shortcut(x)  # in place is safe: BN's backward needs its input, not its output
        return self.relu(y)


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetModelConfig):
        super().__init__()
        stem_stride = 2 if cfg.stem_stride_pool else 1
        self.stem = nn.Sequential(
            nn.Conv2d(3, cfg.base_width, 7, stride=stem_stride, padding=3, bias=False),
            _batch_norm(cfg.base_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1) if cfg.stem_stride_pool else nn.Identity(),
        )
        stages = []
        in_channels = cfg.base_width
        for index, depth in enumerate(cfg.depths):
            width = cfg.base_width * 2**index
            stride = 1 if index == 0 else 2  # stage 1 is already at 1/4 resolution after the stem
            blocks = [Bottleneck(in_channels if b == 0 else width * EXPANSION, width, stride if b == 0 else 1)
                      for b in range(depth)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width * EXPANSION
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_channels, cfg.num_classes)
        self._init_weights(cfg.zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He-normal over fan_in, untruncated: the reference uses Keras `he_normal` (fan_in,
                # truncated) and NVIDIA MXNet `Xavier(gaussian, "in", 2)`; the closed rules want the
                # reference's distribution and leave truncation free. (torchvision uses fan_out.)
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fc.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.fc.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def forward(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(images_NCHW))
        # Mean over H, W as the reference's `reduce_mean`; same as AdaptiveAvgPool2d(1) + flatten.
        return self.fc(x.mean(dim=(2, 3)))


def build_resnet(cfg: ResNetModelConfig) -> ResNet:
    return ResNet(cfg)


_NO_DECAY_MODULES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def lars_param_groups(model: nn.Module) -> list[dict]:
    """Two optimizer groups: `lars=True` gets weight decay and the trust ratio, `lars=False` neither.

    Excluded: every parameter of a normalization layer and every 1-D parameter (biases). The TF
    reference decides by substrings of variable names ('batch_normalization', 'bn', 'bias') and NVIDIA
    by name suffixes ('gamma', 'beta', 'bias'); here the decision follows from what a parameter is, so
    renaming a module, wrapping the model (DDP, compile) or fusing BN into another class cannot move a
    tensor into the wrong group.
    """
    included, excluded, seen = [], [], set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen:  # tied parameters go once, into the first group that sees them
                continue
            seen.add(id(param))
            if isinstance(module, _NO_DECAY_MODULES) or param.ndim <= 1:
                excluded.append(param)
            else:
                included.append(param)
    return [{"params": included, "lars": True}, {"params": excluded, "lars": False}]
