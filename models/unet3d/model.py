"""The nnU-Net-style 3D U-Net of MLPerf's image segmentation (KiTS19), plain PyTorch for one device.

The reference's graph (mlcommons/training image_segmentation/pytorch/model/): an input block, four
stride-2 down blocks and a stride-2 bottleneck, five up blocks (transposed conv k2 s2 with bias, concat
with the skip, two convs), a 1x1x1 output conv with bias. Every 3x3x3 conv is followed by an affine
InstanceNorm and a ReLU, so it has no bias. Default PyTorch initialisation, as the reference.
With filters [32, 64, 128, 256, 320] it has 31,190,243 parameters.

Tensors are NCDHW. The input's spatial sizes must be multiples of 2**len(filters) (32 for five
levels), and the bottleneck must keep more than one voxel (InstanceNorm normalises over space): a
crop of 64 is the smallest that trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class UNet3DModelConfig:
    filters: tuple[int, ...] = (32, 64, 128, 256, 320)
    in_channels: int = 1
    num_classes: int = 3  # background, kidney, tumour


def _conv_norm_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.InstanceNorm3d(out_channels, affine=True), nn.ReLU(inplace=True))


class ConvBlock(nn.Module):
    """Two conv-norm-ReLUs; the first carries the block's stride (2 in the down blocks)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_norm_relu(in_channels, out_channels, stride)
        self.conv2 = _conv_norm_relu(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2, bias=True)
        self.convs = ConvBlock(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat((self.upsample(x), skip), dim=1))


class UNet3D(nn.Module):
    def __init__(self, cfg: UNet3DModelConfig):
        super().__init__()
        f = cfg.filters
        self.input_block = ConvBlock(cfg.in_channels, f[0])
        self.down = nn.ModuleList(ConvBlock(i, o, stride=2) for i, o in zip(f[:-1], f[1:]))
        self.bottleneck = ConvBlock(f[-1], f[-1], stride=2)
        self.up = nn.ModuleList([UpBlock(f[-1], f[-1])] +
                                [UpBlock(i, o) for i, o in zip(reversed(f[1:]), reversed(f[:-1]))])
        self.output = nn.Conv3d(f[0], cfg.num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_block(x)
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        return self.output(x)


def build_unet3d(cfg: UNet3DModelConfig) -> UNet3D:
    return UNet3D(cfg)


def min_input_size(cfg: UNet3DModelConfig) -> int:
    """The smallest crop that trains: every level halves, and the bottleneck keeps 2 voxels a side."""
    return 2 ** (len(cfg.filters) + 1)
