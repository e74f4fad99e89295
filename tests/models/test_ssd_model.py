"""RetinaNet (ssd): our model, loss and detections against torchvision's RetinaNet with the same weights;
focal loss, matching, anchors and box coder against hand-computed and torchvision cases; the real flavours'
schedule against the spec; logged hyperparameters against the built optimizer."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops import sigmoid_focal_loss as tv_focal
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from models.ssd import box_coder
from models.ssd.anchors import generate_anchors, level_sizes
from models.ssd.focal_loss import sigmoid_focal_loss
from models.ssd.inference import detect
from models.ssd.loss import retinanet_loss
from models.ssd.matching import BACKGROUND, IGNORE, match
from models.ssd.model import SSDModelConfig, build_retinanet
from models.ssd.state_dict_adapter import from_torchvision_retinanet
from pipelines.openimages.loader import MEAN, STD

SIZE = 64
CFG = SSDModelConfig(num_classes=5, depths=(1, 1, 1, 1), stem_width=64, groups=2, width_per_group=32,
                     fpn_channels=32, head_convs=4, image_size=SIZE, score_threshold=0.3)


def _torchvision(cfg: SSDModelConfig) -> TVRetinaNet:
    body = ResNet(Bottleneck, list(cfg.depths), groups=cfg.groups, width_per_group=cfg.width_per_group,
                  norm_layer=FrozenBatchNorm2d)
    for name, parameter in body.named_parameters():  # trainable_backbone_layers=3
        parameter.requires_grad_(name.startswith(("layer2", "layer3", "layer4")))
    c = cfg.stem_width * 4
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [c * 2, c * 4, c * 8],
                               cfg.fpn_channels, extra_blocks=LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels))
    anchors = AnchorGenerator(tuple(level_sizes(s) for s in cfg.anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    model = TVRetinaNet(backbone, cfg.num_classes, min_size=SIZE, max_size=SIZE, image_mean=list(MEAN),
                        image_std=list(STD), anchor_generator=anchors, score_thresh=cfg.score_threshold,
                        nms_thresh=cfg.nms_threshold, detections_per_img=cfg.detections_per_image,
                        topk_candidates=cfg.topk_candidates)
    with torch.no_grad():  # random BN statistics, so that folding them is tested
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn_like(t) * 0.1 + (1.0 if t is m.weight else 0.0))
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    return model


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    tv = _torchvision(CFG)
    ours = build_retinanet(CFG)
    missing, unexpected = ours.load_state_dict(from_torchvision_retinanet(tv.state_dict()), strict=True)
    assert not missing and not unexpected
    return tv, ours


def _batch():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, SIZE, SIZE, generator=g)
    boxes = [torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]), torch.tensor([[8.0, 8.0, 40.0, 28.0]])]
    labels = [torch.tensor([1, 3]), torch.tensor([4])]
    return images, boxes, labels


def _normalise(images):
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_losses_match_torchvision(pair):
    tv, ours = pair
    images, boxes, labels = _batch()
    tv.train()
    expected = tv(list(images), [{"boxes": b, "labels": c} for b, c in zip(boxes, labels)])
    cls, box, sizes = ours(_normalise(images))
    gt = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(2, 2, 1)
    gt_labels = torch.full((2, 2), -1)
    for i, (b, c) in enumerate(zip(boxes, labels)):
        gt[i, : len(b)], gt_labels[i, : len(c)] = b, c
    classification, regression = retinanet_loss(cls, box, generate_anchors(SIZE, sizes, CFG.anchor_sizes), gt,
                                                 gt_labels)
    assert classification.item() == pytest.approx(expected["classification"].item(), rel=1e-5)
    assert regression.item() == pytest.approx(expected["bbox_regression"].item(), rel=1e-5)


def test_detections_match_torchvision(pair):
    tv, ours = pair
    images, _, _ = _batch()
    with torch.no_grad():  # a bias that makes some scores pass the threshold
        ours.head.cls_logits.bias.fill_(0.0)
        tv.head.classification_head.cls_logits.bias.fill_(0.0)
    tv.eval()
    with torch.no_grad():
        expected = tv(list(images))
    ours.eval()
    with torch.no_grad():
        cls, box, sizes = ours(_normalise(images))
    got = detect(cls, box, generate_anchors(SIZE, sizes, CFG.anchor_sizes), sizes, torch.tensor([[SIZE, SIZE]] * 2),
                 CFG)
    for e, g in zip(expected, got):
        assert len(e["scores"]) > 0 and len(g["scores"]) == len(e["scores"])
        # near-equal scores may leave NMS' order to ties: compare as sets, ordered by label and box
        order_e, order_g = _canonical(e), _canonical(g)
        torch.testing.assert_close(g["scores"][order_g], e["scores"][order_e], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g["boxes"][order_g], e["boxes"][order_e], rtol=1e-4, atol=1e-3)
        assert torch.equal(g["labels"][order_g], e["labels"][order_e])


def _canonical(detections) -> torch.Tensor:
    import numpy as np

    keys = torch.cat((detections["labels"][:, None].float(), (detections["boxes"] * 10).round()), dim=1).numpy()
    return torch.from_numpy(np.lexsort(keys.T[::-1]).copy())


def test_detections_scale_back_to_the_original_size():
    cfg = SSDModelConfig(num_classes=1, image_size=100, score_threshold=0.0)
    anchors = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    out = detect(torch.full((1, 9, 1), 5.0)[:, :1], torch.zeros(1, 1, 4), anchors, [(1, 1)],
                 torch.tensor([[200, 50]]), cfg)  # original height 200, width 50
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[5.0, 40.0, 15.0, 120.0]]))


def test_anchors_match_torchvision():
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    generator = AnchorGenerator(tuple(level_sizes(s) for s in (32, 64, 128, 256, 512)), ((0.5, 1.0, 2.0),) * 5)
    from torchvision.models.detection.image_list import ImageList

    features = [torch.zeros(1, 1, h, w) for h, w in sizes]
    expected = generator(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), features)[0]
    assert torch.equal(generate_anchors(64, sizes, (32, 64, 128, 256, 512)), expected)
    assert level_sizes(32) == (32, 40, 50)


def test_box_coder_matches_torchvision_and_inverts():
    from torchvision.models.detection._utils import BoxCoder

    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 45.0, 25.0]])
    gt = torch.tensor([[1.0, 2.0, 12.0, 18.0], [0.0, 10.0, 50.0, 30.0]])
    tv = BoxCoder((1.0, 1.0, 1.0, 1.0))
    torch.testing.assert_close(box_coder.encode(gt, anchors), tv.encode_single(gt, anchors))
    torch.testing.assert_close(box_coder.decode(box_coder.encode(gt, anchors), anchors), gt)


def test_focal_loss_by_hand_and_against_torchvision():
    # x = 0: p = 0.5, ce = ln 2, (1 - p_t)^2 = 0.25; positive: 0.25 * 0.25 * ln 2, negative: 0.75 * 0.25 * ln 2
    x, t = torch.zeros(2), torch.tensor([1.0, 0.0])
    torch.testing.assert_close(sigmoid_focal_loss(x, t), torch.tensor([0.0625, 0.1875]) * math.log(2))
    # x = ln 3 for a positive: p = 0.75, ce = ln(4/3), (0.25)^2
    torch.testing.assert_close(sigmoid_focal_loss(torch.tensor([math.log(3)]), torch.tensor([1.0])),
                               torch.tensor([0.25 * 0.0625 * math.log(4 / 3)]))
    logits, targets = torch.randn(50, 7), (torch.rand(50, 7) > 0.8).float()
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), tv_focal(logits, targets, reduction="none"))


def test_matching_by_hand():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],    # IoU 1 with box 0: foreground
                            [0.0, 0.0, 10.0, 8.0],     # IoU 0.8 with box 0
                            [0.0, 0.0, 10.0, 4.5],     # IoU 0.45: ignored
                            [0.0, 0.0, 10.0, 2.0],     # IoU 0.2: background
                            [100.0, 100.0, 110.0, 130.0],  # best anchor of box 1 (IoU 0.25): low-quality match
                            [50.0, 50.0, 60.0, 60.0]])  # touches nothing
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0], [0.0, 0.0, 1.0, 1.0]]])
    valid = torch.tensor([[True, True, False]])  # the third row is padding
    assert match(gt, valid, anchors).tolist() == [[0, 0, IGNORE, BACKGROUND, 1, BACKGROUND]]
    # same as torchvision's Matcher on the unpadded boxes
    from torchvision.models.detection._utils import Matcher
    from torchvision.ops import box_iou

    expected = Matcher(0.5, 0.4, allow_low_quality_matches=True)(box_iou(gt[0, :2], anchors))
    assert match(gt, valid, anchors)[0].tolist() == expected.tolist()
    # an image without boxes: everything background
    assert match(gt, torch.zeros(1, 3, dtype=torch.bool), anchors).tolist() == [[BACKGROUND] * 6]


def test_frozen_layers_and_head_init():
    model = build_retinanet(SSDModelConfig(num_classes=264, depths=(1, 1, 1, 1)))
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    bias = model.head.cls_logits.bias
    assert model.head.cls_logits.out_channels == 9 * 264
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log(99)))
    assert model.head.cls_convs[0].weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_full_size_model_parameter_count():
    model = build_retinanet(SSDModelConfig())
    count = sum(p.numel() for p in model.parameters())
    assert 36e6 < count < 39e6, count  # the spec's ~37M (torchvision's retinanet_resnext50: 37.97M)
