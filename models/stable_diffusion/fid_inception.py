"""InceptionV3 as pytorch-fid computes FID features (`pt_inception-2015-12-05`, the TF FID graph's weights):
torchvision's Inception3 modules and names, so the weights file loads by name, with the TF graph's pooling in
the mixed blocks, which torchvision's forward does not have:

    Mixed_5b..5d (A), Mixed_6b..6e (C), Mixed_7b (E_1)   3x3 average pool without counting the padding
    Mixed_7c (E_2)                                        3x3 max pool in the pooling branch

Input: images in [0, 1], resized to 299 (bilinear) and scaled to [-1, 1]; output: the 2048-d average pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _avg(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _block_a(m, x):
    b5 = m.branch5x5_2(m.branch5x5_1(x))
    b3 = m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x)))
    return torch.cat([m.branch1x1(x), b5, b3, m.branch_pool(_avg(x))], 1)


def _block_c(m, x):
    b7 = m.branch7x7_3(m.branch7x7_2(m.branch7x7_1(x)))
    bd = x
    for name in ("branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"):
        bd = getattr(m, name)(bd)
    return torch.cat([m.branch1x1(x), b7, bd, m.branch_pool(_avg(x))], 1)


def _block_e(m, x, pool):
    b3 = m.branch3x3_1(x)
    b3 = torch.cat([m.branch3x3_2a(b3), m.branch3x3_2b(b3)], 1)
    bd = m.branch3x3dbl_2(m.branch3x3dbl_1(x))
    bd = torch.cat([m.branch3x3dbl_3a(bd), m.branch3x3dbl_3b(bd)], 1)
    return torch.cat([m.branch1x1(x), b3, bd, m.branch_pool(pool(x))], 1)


def _max(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class FIDInception(nn.Module):
    dim = 2048

    def __init__(self):
        super().__init__()
        from torchvision.models.inception import Inception3

        self.net = Inception3(num_classes=1008, aux_logits=False, transform_input=False, init_weights=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2"):
            x = getattr(n, name)(x)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            x = _block_a(getattr(n, name), x)
        x = n.Mixed_6a(x)
        for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = _block_c(getattr(n, name), x)
        x = n.Mixed_7a(x)
        x = _block_e(n.Mixed_7b, x, _avg)
        x = _block_e(n.Mixed_7c, x, _max)
        return x.mean(dim=(2, 3))
