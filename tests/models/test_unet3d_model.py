"""The 3D U-Net's graph: the reference's layer shapes and parameter count, its bias and norm rules, default
init, shapes through the network, and what it refuses."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from models.unet3d.model import UNet3DModelConfig, build_unet3d, min_input_size


def _reference_parameter_count(filters, in_channels=1, classes=3) -> int:
    """From the spec's layer list: a 3^3 conv followed by an affine InstanceNorm has no bias (27 ci co + 2 co);
    a transposed conv k2 has a bias (8 ci co + co); the 1^3 output conv has a bias."""
    def conv_norm(ci, co):
        return 27 * ci * co + 2 * co

    total = conv_norm(in_channels, filters[0]) + conv_norm(filters[0], filters[0])  # input block
    for ci, co in zip(filters[:-1], filters[1:]):  # down blocks
        total += conv_norm(ci, co) + conv_norm(co, co)
    total += 2 * conv_norm(filters[-1], filters[-1])  # bottleneck
    ups = [(filters[-1], filters[-1])] + list(zip(reversed(filters[1:]), reversed(filters[:-1])))
    for ci, co in ups:
        total += 8 * ci * co + co + conv_norm(2 * co, co) + conv_norm(co, co)
    return total + filters[0] * classes + classes


def test_the_reference_model_has_31_2m_parameters():
    with torch.device("meta"):  # plain PyTorch: builds without memory
        model = build_unet3d(UNet3DModelConfig())
    count = sum(p.numel() for p in model.parameters())
    assert count == _reference_parameter_count((32, 64, 128, 256, 320)) == 31_190_243
    assert round(count / 1e6, 1) == 31.2


def test_bias_norm_and_init_rules():
    model = build_unet3d(UNet3DModelConfig(filters=(4, 8, 16, 32, 32)))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    transposed = [m for m in model.modules() if isinstance(m, nn.ConvTranspose3d)]
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert len(transposed) == 5 and all(m.bias is not None and m.kernel_size == (2, 2, 2) for m in transposed)
    three = [m for m in convs if m.kernel_size == (3, 3, 3)]
    assert len(three) == len(norms) == 2 + 2 * 4 + 2 + 2 * 5 and all(m.bias is None for m in three)
    assert all(m.affine and not m.track_running_stats for m in norms)
    assert [m.stride for m in three].count((2, 2, 2)) == 5
    (output,) = [m for m in convs if m.kernel_size == (1, 1, 1)]
    assert output.bias is not None and output.out_channels == 3
    # default PyTorch init: norms start at weight 1, bias 0
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)


def test_shapes_through_the_network_and_the_smallest_crop():
    cfg = UNet3DModelConfig(filters=(2, 4, 4, 8, 8))
    model = build_unet3d(cfg)
    assert min_input_size(cfg) == 64
    x = torch.randn(2, 1, 64, 64, 96)
    assert model(x).shape == (2, 3, 64, 64, 96)
    # 32^3 leaves one voxel at the bottleneck: InstanceNorm cannot train
    with pytest.raises(ValueError, match="Expected more than 1 spatial element when training"):
        model(torch.randn(1, 1, 32, 32, 32))
    fewer_levels = UNet3DModelConfig(filters=(4, 8, 16))
    assert min_input_size(fewer_levels) == 16 and build_unet3d(fewer_levels)(torch.randn(1, 1, 16, 16, 16)).shape \
        == (1, 3, 16, 16, 16)


def test_channels_last_gives_the_same_function():
    torch.manual_seed(0)
    model = build_unet3d(UNet3DModelConfig(filters=(2, 4, 4, 8, 8)))
    x = torch.randn(1, 1, 64, 64, 64)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last_3d)
    got = model(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _dynunet_key(key: str) -> str:
    """Our parameter names -> MONAI DynUNet's (the same graph: tests below)."""
    key = re.sub(r"^down\.", "downsamples.", key)
    key = re.sub(r"^up\.(\d+)\.upsample\.", r"upsamples.\1.transp_conv.conv.", key)
    key = re.sub(r"^up\.(\d+)\.convs\.", r"upsamples.\1.conv_block.", key)
    key = re.sub(r"conv(\d)\.0\.", r"conv\1.conv.", key)
    key = re.sub(r"conv(\d)\.1\.", r"norm\1.", key)
    return re.sub(r"^output\.", "output_block.conv.conv.", key)


def _dynunet(filters):
    from monai.networks.nets import DynUNet

    return DynUNet(3, 1, 3, kernel_size=[3] * (len(filters) + 1), strides=[1] + [2] * len(filters),
                   upsample_kernel_size=[2] * len(filters), filters=[*filters, filters[-1]],
                   norm_name=("INSTANCE", {"affine": True}), act_name="relu", res_block=False, trans_bias=True)


def test_the_model_is_monais_dynunet_in_the_references_configuration():
    """An independent implementation: MONAI's nnU-Net (DynUNet) with instance norm, ReLU, transposed convs
    with bias and no deep supervision has our parameters one for one, and with our weights our outputs."""
    with torch.device("meta"):
        ours, theirs = build_unet3d(UNet3DModelConfig()), _dynunet((32, 64, 128, 256, 320))
    # (DynUNet's state dict also lists every module again under `skip_layers`, its recursive view)
    assert {_dynunet_key(k): tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items() if not k.startswith("skip_layers.")}
    torch.manual_seed(1)
    filters = (4, 8, 8, 16, 16)
    ours, theirs = build_unet3d(UNet3DModelConfig(filters=filters)), _dynunet(filters)
    missing, unexpected = theirs.load_state_dict({_dynunet_key(k): v for k, v in ours.state_dict().items()},
                                                 strict=False)
    assert not unexpected and all(k.startswith("skip_layers.") for k in missing)
    x = torch.randn(2, 1, 64, 64, 64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
