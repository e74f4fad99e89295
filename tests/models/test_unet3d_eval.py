"""The 3D U-Net's loss, score and sliding-window inference against MONAI (an independent implementation)
and against cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference as monai_sliding_window
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric

from models.unet3d.inference import gaussian_importance_map, sliding_window_inference, window_starts
from models.unet3d.losses import argmax_dice, dice_ce_loss
from models.unet3d.model import UNet3DModelConfig, build_unet3d


@pytest.mark.parametrize("roi", [(64, 64, 64), (128, 128, 128), (32, 48, 40)])
def test_importance_map_is_monais_gaussian(roi):
    ours = gaussian_importance_map(roi, 0.125)
    theirs = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert float(ours.min()) == pytest.approx(1e-3) and float(ours.max()) < 1  # corners floored, peak not 1


def test_window_starts_cover_the_axis_and_end_flush():
    assert window_starts(64, 64, 0.5) == [0]
    assert window_starts(65, 64, 0.5) == [0, 1]
    assert window_starts(200, 128, 0.5) == [0, 64, 72]
    assert window_starts(256, 128, 0.5) == [0, 64, 128]
    assert window_starts(300, 128, 0.5) == [0, 64, 128, 172]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_unet3d(UNet3DModelConfig(filters=(2, 4, 4, 8, 8))).eval()


@pytest.mark.parametrize("shape,window_batch", [((70, 64, 83), 3), ((64, 64, 64), 1), ((50, 70, 96), 4)],
                         ids=["overlapping", "one-window", "padded"])
def test_sliding_window_equals_monai(model, shape, window_batch):
    """Same windows, weights and blending order: the same logits up to the convolutions' float error at another
    batch size (MONAI's is 2 here), and the same argmax (50 < 64: padded)."""
    image = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = monai_sliding_window(image, (64, 64, 64), 2, model, overlap=0.5, mode="gaussian",
                                      sigma_scale=0.125, padding_mode="constant", cval=-2.2)
        ours = sliding_window_inference(model, image, (64, 64, 64), overlap=0.5, sigma_scale=0.125,
                                        padding_value=-2.2, window_batch=window_batch)
    assert ours.shape == theirs.shape == (1, 3, *shape)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))


def test_argmax_dice_equals_monais_dice_metric():
    g = torch.Generator().manual_seed(2)
    label = torch.randint(0, 3, (1, 1, 9, 10, 11), generator=g, dtype=torch.uint8)
    logits = torch.randn(1, 3, 9, 10, 11, generator=g) + 2 * F.one_hot(label[:, 0].long(), 3).permute(0, 4, 1, 2, 3)
    ours = argmax_dice(logits, label)
    metric = DiceMetric(include_background=False, reduction="none")
    theirs = metric(F.one_hot(logits.argmax(1), 3).permute(0, 4, 1, 2, 3), F.one_hot(label[:, 0].long(), 3)
                    .permute(0, 4, 1, 2, 3))[0]
    assert 0.3 < float(theirs.min()) < 0.99
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-6, atol=1e-6)  # smoothing 1e-6 aside


def test_dice_by_hand():
    # 8 voxels; target: 3 kidney, 1 tumour; prediction: 2 of the kidney right + 1 wrong kidney, no tumour.
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2]).view(1, 1, 2, 2, 2)
    predicted = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0])
    logits = F.one_hot(predicted, 3).T.float().reshape(1, 3, 2, 2, 2)
    kidney, tumour = argmax_dice(logits, target).tolist()
    assert kidney == pytest.approx((2 * 2 + 1e-6) / (3 + 3 + 1e-6), rel=1e-12)
    assert tumour == pytest.approx(1e-6 / (1 + 1e-6), rel=1e-12)
    # a class absent from both prediction and target scores 1 (the reference's smoothing), not NaN
    no_tumour = torch.tensor([0, 0, 0, 0, 1, 1, 1, 0]).view(1, 1, 2, 2, 2)
    assert argmax_dice(logits, no_tumour)[1].item() == 1.0


def test_loss_by_hand_and_against_monai():
    # one sample, 2 voxels, logits chosen so softmax is easy to write down
    logits = torch.tensor([[0.0, 0.0], [math.log(2), 0.0], [0.0, math.log(3)]]).view(1, 3, 1, 1, 2)
    label = torch.tensor([1, 2]).view(1, 1, 1, 1, 2)
    p = torch.softmax(logits, 1).view(3, 2)  # voxel 0: (1, 2, 1) / 4; voxel 1: (1, 1, 3) / 5
    assert p[:, 0].tolist() == pytest.approx([0.25, 0.5, 0.25]) and p[:, 1].tolist() == pytest.approx([0.2, 0.2, 0.6])
    dice_kidney = (2 * 0.5 + 1e-6) / (1 + (0.5 + 0.2) + 1e-6)
    dice_tumour = (2 * 0.6 + 1e-6) / (1 + (0.25 + 0.6) + 1e-6)
    cross_entropy = -(math.log(0.5) + math.log(0.6)) / 2
    expected = ((1 - dice_kidney + 1 - dice_tumour) / 2 + cross_entropy) / 2
    assert dice_ce_loss(logits, label).item() == pytest.approx(expected, rel=1e-6)

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 3, 8, 9, 10, generator=g)
    label = torch.randint(0, 3, (3, 1, 8, 9, 10), generator=g)
    monai = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-6, smooth_dr=1e-6,
                       lambda_dice=0.5, lambda_ce=0.5)
    assert dice_ce_loss(logits, label.to(torch.uint8)).item() == pytest.approx(monai(logits, label).item(), rel=1e-6)
