"""ResNet-50 v1.5 against torchvision's resnet50 (also v1.5), plus the debug flavour, meta and channels_last."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from models.resnet.model import Bottleneck, ResNetModelConfig, build_resnet, lars_param_groups

TORCHVISION_RESNET50_PARAMS = 25_557_032
DEBUG = ResNetModelConfig(depths=(1, 1, 1, 1), base_width=16, num_classes=16)


def to_torchvision_name(name: str) -> str:
    """Our state-dict key -> torchvision's: stem.0/1 -> conv1/bn1, stages.i -> layer{i+1}, shortcut -> downsample."""
    parts = name.split(".")
    if parts[0] == "stem":
        return {"0": "conv1", "1": "bn1"}[parts[1]] + "." + ".".join(parts[2:])
    if parts[0] == "stages":
        rest = ["downsample" if p == "shortcut" else p for p in parts[3:]]
        return ".".join([f"layer{int(parts[1]) + 1}", parts[2], *rest])
    return name


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    torch.manual_seed(0)
    return build_resnet(ResNetModelConfig())


def test_parameter_count_and_shapes_match_torchvision(resnet50):
    ours = {to_torchvision_name(k): v.shape for k, v in resnet50.state_dict().items()}
    with torch.device("meta"):
        theirs = {k: v.shape for k, v in torchvision.models.resnet50().state_dict().items()}
    assert ours == theirs
    assert sum(p.numel() for p in resnet50.parameters()) == TORCHVISION_RESNET50_PARAMS


def _randomise_norms_and_biases(model: nn.Module, generator: torch.Generator) -> dict:
    """Non-trivial BN affine, running stats and FC bias (a freshly built model has 1, 0 and 0 there)."""
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_var") or (key.endswith("weight") and value.ndim == 1):
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
        elif value.ndim == 1 and value.is_floating_point():
            value.copy_(0.1 * torch.randn(value.shape, generator=generator))
    return state


def _assert_same_outputs_as(reference: nn.Module, ours: nn.Module, generator: torch.Generator, size: int) -> None:
    state = _randomise_norms_and_biases(ours, generator)
    reference.load_state_dict({to_torchvision_name(k): v for k, v in state.items()}, strict=True, assign=True)
    images = torch.randn(2, 3, size, size, generator=generator)
    with torch.no_grad():
        expected = reference.eval()(images)
        actual = ours.eval()(images)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_same_outputs_as_torchvision_in_eval(resnet50):
    with torch.device("meta"):  # no point initialising 25M weights that are overwritten at once
        reference = torchvision.models.resnet50()
    _assert_same_outputs_as(reference, resnet50, torch.Generator().manual_seed(1), 64)


def test_other_depths_and_class_counts_match_torchvision():
    """The knobs the debug flavour turns (one bottleneck per stage, 16 classes) against torchvision's ResNet
    built with the same layers, values not just shapes; base_width has no torchvision counterpart (its stem
    is fixed at 64), so it is checked through the channel counts below."""
    from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck
    from torchvision.models.resnet import ResNet

    torch.manual_seed(0)
    ours = build_resnet(ResNetModelConfig(depths=(1, 1, 1, 1), num_classes=16))
    with torch.device("meta"):
        reference = ResNet(TorchvisionBottleneck, [1, 1, 1, 1], num_classes=16)
    _assert_same_outputs_as(reference, ours, torch.Generator().manual_seed(2), 48)


def test_v15_stride_on_the_3x3_conv_and_projection_on_first_blocks():
    with torch.device("meta"):
        model = build_resnet(ResNetModelConfig())
    for stage_index, stage in enumerate(model.stages):
        for block_index, block in enumerate(stage):
            first = block_index == 0
            stride = (2, 2) if first and stage_index > 0 else (1, 1)
            assert block.conv1.stride == (1, 1) and block.conv3.stride == (1, 1)
            assert block.conv2.stride == stride
            if first:
                assert isinstance(block.shortcut, nn.Sequential) and block.shortcut[0].stride == stride
            else:
                assert isinstance(block.shortcut, nn.Identity)
    sizes = []
    for stage in model.stages:
        stage.register_forward_hook(lambda module, args, out: sizes.append(tuple(out.shape[1:])))
    model(torch.empty(1, 3, 224, 224, device="meta"))
    assert sizes == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]


def test_meta_build_and_forward():
    with torch.device("meta"):
        model = build_resnet(ResNetModelConfig())
        logits = model(torch.empty(4, 3, 224, 224))
    assert all(p.is_meta for p in model.parameters())
    assert logits.shape == (4, 1000) and logits.is_meta


def test_initialisation():
    torch.manual_seed(0)
    model = build_resnet(ResNetModelConfig())
    conv = model.stages[3][0].conv2  # 512 x 512 x 3 x 3: 2.4M samples, std known to ~0.1%
    fan_in = conv.in_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.01)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert torch.all(model.fc.bias == 0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.momentum == 0.1 and bn.eps == 1e-5 and torch.all(bn.weight == 1) for bn in bns)
    zero_init = build_resnet(ResNetModelConfig(depths=(1, 1), zero_init_residual=True))
    blocks = [m for m in zero_init.modules() if isinstance(m, Bottleneck)]
    assert all(torch.all(b.bn3.weight == 0) and torch.all(b.bn2.weight == 1) for b in blocks)


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = build_resnet(DEBUG)
    images = torch.randn(4, 3, 56, 56)
    expected = model(images)
    expected.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model = model.to(memory_format=torch.channels_last)
    actual = model(images.to(memory_format=torch.channels_last))
    actual.square().mean().backward()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    for grad, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, grad, rtol=1e-3, atol=1e-5)


def test_debug_flavour_shapes():
    model = build_resnet(DEBUG)
    assert model(torch.randn(3, 3, 56, 56)).shape == (3, 16)
    assert model.fc.in_features == 16 * 8 * 4
    # base 16: stage widths 16, 32, 64, 128, outputs 4x that (the bottleneck expansion)
    assert [stage[0].conv2.out_channels for stage in model.stages] == [16, 32, 64, 128]
    assert [stage[-1].conv3.out_channels for stage in model.stages] == [64, 128, 256, 512]
    no_pool = build_resnet(ResNetModelConfig(depths=(1, 1), base_width=8, num_classes=5, stem_stride_pool=False))
    assert no_pool(torch.randn(2, 3, 20, 20)).shape == (2, 5)
    # without the stride-2 stem and the max-pool, stage 1 sees the full 20 x 20 and stage 2 halves it
    sizes = []
    for stage in no_pool.stages:
        stage.register_forward_hook(lambda module, args, out: sizes.append(tuple(out.shape[1:])))
    no_pool(torch.randn(1, 3, 20, 20))
    assert sizes == [(32, 20, 20), (64, 10, 10)]


def test_eval_logits_are_the_fc_of_the_pooled_features():
    """A property, independent of how the stages compute: in eval, each image's logits depend on that image
    only, and are the linear head of the global average of the last stage's output."""
    torch.manual_seed(0)
    model = build_resnet(DEBUG).eval()
    images = torch.randn(3, 3, 40, 40)
    features = []
    model.stages[-1].register_forward_hook(lambda module, args, out: features.append(out))
    with torch.no_grad():
        logits = model(images)
        alone = model(images[1:2])
    torch.testing.assert_close(alone, logits[1:2], rtol=1e-5, atol=1e-6)
    pooled = features[0].double().mean((2, 3))
    expected = pooled @ model.fc.weight.double().T + model.fc.bias.double()
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-6)


def test_lars_groups_split_by_what_a_parameter_is(resnet50):
    included, excluded = lars_param_groups(resnet50)
    assert included["lars"] and not excluded["lars"]
    convs = [m.weight for m in resnet50.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 53
    assert {id(p) for p in included["params"]} == {id(p) for p in [*convs, resnet50.fc.weight]}
    bn_params = [p for m in resnet50.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    assert {id(p) for p in excluded["params"]} == {id(p) for p in [*bn_params, resnet50.fc.bias]}
