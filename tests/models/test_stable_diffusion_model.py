"""The SD-2 UNet, its adapters, the noise schedule and the DDIM sampler against diffusers / open_clip / scipy,
built from configurations (nothing downloaded)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.stable_diffusion import diffusion  # noqa: E402
from models.stable_diffusion.model import UNetConfig, build_unet  # noqa: E402
from models.stable_diffusion.state_dict_adapter import (  # noqa: E402
    diffusers_unet_config,
    load_ldm_checkpoint,
    split_checkpoint,
    unet_from_diffusers,
    unet_to_diffusers,
    vae_from_ldm,
    vae_to_ldm,
)

SMALL = UNetConfig(model_channels=32, channel_mult=(1, 2, 2, 2), head_channels=16, context_dim=24)


def _pair(cfg=SMALL, seed=0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    ours = build_unet(cfg).eval()
    ref = UNet2DConditionModel(**diffusers_unet_config(cfg, 16)).eval()
    ref.load_state_dict(unet_to_diffusers(ours.state_dict(), cfg), strict=True)
    return ours, ref


def test_full_size_unet_has_the_sd2_parameter_count():
    with torch.device("meta"):
        model = build_unet(UNetConfig())
    assert sum(p.numel() for p in model.parameters()) == 865_910_724  # diffusers' SD-2 UNet at GroupNorm 16


@pytest.mark.parametrize("attention_levels", [(True, True, True, False), (False, True, True, True)])
def test_unet_matches_diffusers_with_the_same_weights(attention_levels):
    cfg = UNetConfig(model_channels=32, channel_mult=(1, 2, 2, 2), head_channels=16, context_dim=24,
                     attention_levels=attention_levels)
    ours, ref = _pair(cfg)
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 24, generator=g)
    t = torch.tensor([3, 917])
    with torch.no_grad():
        # randomise the zero-initialised parts too, so every weight matters
        for p in ours.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
        ref.load_state_dict(unet_to_diffusers(ours.state_dict(), cfg))
        a, b = ours(x, t, context), ref(x, t, context).sample
    assert a.shape == (2, 4, 16, 16)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_unet_adapter_round_trips_and_names_unknown_keys():
    ours, ref = _pair()
    back = unet_from_diffusers(ref.state_dict(), SMALL)
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    with pytest.raises(KeyError, match="no_such_block"):
        unet_to_diffusers({"no_such_block.weight": torch.zeros(1)}, SMALL)


def test_schedule_and_v_target_match_diffusers():
    from diffusers import DDPMScheduler

    s = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                      prediction_type="v_prediction")
    a = diffusion.alphas_cumprod()
    torch.testing.assert_close(a.float(), s.alphas_cumprod, rtol=1e-5, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(diffusion.v_target(z0, noise, t, a), s.get_velocity(z0, noise, t))
    torch.testing.assert_close(diffusion.noised(z0, noise, t, a), s.add_noise(z0, noise, t))


def test_ddim_matches_diffusers_scheduler_with_the_same_model():
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                      timestep_spacing="leading")
    s.set_timesteps(50)
    assert diffusion.ddim_timesteps(50) == s.timesteps.tolist()
    s.set_timesteps(10)
    assert diffusion.ddim_timesteps(10) == s.timesteps.tolist() == list(range(901, 0, -100))

    cfg = UNetConfig(model_channels=32, channel_mult=(1, 2), attention_levels=(True, True), head_channels=16,
                     context_dim=24)
    ours, ref = _pair(cfg)
    g = torch.Generator().manual_seed(2)
    x_T, cond, uncond = (torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 24, generator=g),
                         torch.randn(2, 5, 24, generator=g))
    ours_z0 = diffusion.ddim_sample(ours, x_T, cond, uncond, diffusion.alphas_cumprod(), steps=10, guidance=8.0)
    x = x_T
    with torch.no_grad():
        for t in s.timesteps:
            v_u, v_c = ref(torch.cat([x, x]), t, torch.cat([uncond, cond])).sample.chunk(2)
            x = s.step(v_u + 8.0 * (v_c - v_u), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours_z0, x, rtol=1e-4, atol=1e-4)


def _small_vae():
    from diffusers import AutoencoderKL

    from models.stable_diffusion.config import DEBUG_VAE

    torch.manual_seed(3)
    return AutoencoderKL(**DEBUG_VAE).eval(), DEBUG_VAE


def test_vae_ldm_layout_round_trip_gives_the_same_decoder():
    from diffusers import AutoencoderKL

    vae, cfg = _small_vae()
    ldm = vae_to_ldm(vae.state_dict(), 2, 1)
    # the LDM layout's names and 1x1-conv attention projections
    assert ldm["encoder.mid.attn_1.q.weight"].dim() == 4
    assert {"decoder.up.1.upsample.conv.weight", "encoder.down.0.downsample.conv.weight",
            "decoder.up.0.block.1.norm1.weight", "encoder.norm_out.weight", "post_quant_conv.weight"} <= ldm.keys()
    other = AutoencoderKL(**cfg).eval()
    other.load_state_dict(vae_from_ldm(ldm, 2, 1), strict=True)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(other.decode(z).sample, vae.decode(z).sample)


def test_checkpoint_loader_reads_the_ldm_layout_and_names_problems(tmp_path):
    vae, _ = _small_vae()
    state = {"first_stage_model." + k: v for k, v in vae_to_ldm(vae.state_dict(), 2, 1).items()}
    state["cond_stage_model.model.ln_final.weight"] = torch.ones(4)
    state["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # the UNet's weights are discarded
    path = tmp_path / "sd.ckpt"
    torch.save({"state_dict": state, "global_step": 875000}, path)
    parts = split_checkpoint(load_ldm_checkpoint(str(path)), str(path))
    assert set(parts) == {"vae", "text"} and "ln_final.weight" in parts["text"]
    assert not any(k.startswith("model.") or k.startswith("out.") for k in parts["vae"])

    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("cond_stage")}}, path)
    with pytest.raises(ValueError, match=r"sd.ckpt: no cond_stage_model.model.\* keys"):
        split_checkpoint(load_ldm_checkpoint(str(path)), str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="sd.ckpt: not a readable torch checkpoint"):
        load_ldm_checkpoint(str(path))


def test_text_encoder_is_the_penultimate_layer_of_open_clip():
    import copy

    from models.stable_diffusion.config import DEBUG_CLIP
    from models.stable_diffusion.frozen import TextEncoder

    torch.manual_seed(4)
    enc = TextEncoder(DEBUG_CLIP).eval()
    tokens = enc.tokenize(["a photo of a red circle", ""])
    # open_clip's own forward of the tower with its last block removed, all tokens out
    ref = copy.deepcopy(enc.tower)
    ref.transformer.resblocks = ref.transformer.resblocks[:-1]
    ref.output_tokens = True
    with torch.no_grad():
        ours = enc(tokens)
        _, expected = ref(tokens)
    assert ours.shape == (2, 77, DEBUG_CLIP["text_cfg"]["width"])
    torch.testing.assert_close(ours, expected)


def test_frechet_distance_matches_the_scipy_sqrtm_formula():
    from scipy import linalg

    from models.stable_diffusion.metrics import feature_statistics, frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(size=(150, 12)) @ rng.normal(size=(12, 12)) + 0.5
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    # 1-d hand case: (1 - 3)^2 + 4 + 9 - 2 * sqrt(36) = 5
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(5.0)


def test_clip_cosines_on_hand_cases():
    from types import SimpleNamespace

    from models.stable_diffusion.frozen import clip_cosines

    image_vectors = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    text_vectors = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    fake = SimpleNamespace(visual=SimpleNamespace(image_size=4), encode_image=lambda x: image_vectors,
                           encode_text=lambda t: text_vectors)
    cos = clip_cosines(fake, torch.rand(2, 3, 8, 8), torch.zeros(2, 77, dtype=torch.long))
    torch.testing.assert_close(cos, torch.tensor([1.0, 0.0]))


def test_pass_ratio_is_at_least_one_exactly_when_both_targets_hold():
    from models.stable_diffusion.benchmark import pass_ratio

    assert pass_ratio(45.0, 0.30, 90.0, 0.15) == pytest.approx(2.0)
    assert pass_ratio(90.0, 0.15, 90.0, 0.15) == pytest.approx(1.0)
    assert pass_ratio(100.0, 0.30, 90.0, 0.15) == pytest.approx(0.9)
    assert pass_ratio(10.0, 0.12, 90.0, 0.15) == pytest.approx(0.8)


def test_fid_inception_blocks_are_torchvisions_with_the_tf_graphs_pooling():
    from models.stable_diffusion.fid_inception import FIDInception, _block_a, _block_e

    torch.manual_seed(5)
    net = FIDInception().eval()
    x = torch.randn(1, 192, 9, 9)
    with torch.no_grad():
        ours, theirs = _block_a(net.net.Mixed_5b, x), net.net.Mixed_5b(x)
        # the same block: equal where the 3x3 pool sees no padding, different on the border where
        # torchvision counts the zero padding in its average
        torch.testing.assert_close(ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1])
        assert not torch.allclose(ours[..., 0, 0], theirs[..., 0, 0])
        y = torch.randn(1, 2048, 5, 5)
        assert not torch.allclose(_block_e(net.net.Mixed_7c, y, lambda t: torch.nn.functional.max_pool2d(t, 3, 1, 1)),
                                  net.net.Mixed_7c(y))
        features = net(torch.rand(2, 3, 64, 64))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


@pytest.mark.slow  # ~25 s in Triton's interpreter
def test_unet_through_the_triton_group_norm_matches_the_reference_path(monkeypatch):
    """The UNet's norms through the fused kernel (Triton's interpreter off a GPU): same outputs and gradients."""
    import sys

    cfg = UNetConfig(model_channels=16, channel_mult=(1, 2), attention_levels=(False, True), head_channels=16,
                     context_dim=24)
    torch.manual_seed(6)
    model = build_unet(cfg)
    g = torch.Generator().manual_seed(7)
    x, context, t = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 24, generator=g), torch.tensor([500])
    results = {}
    for mode in ("reference", "triton"):
        monkeypatch.setenv("MLPERF_KERNELS", mode)
        model.zero_grad()
        out = model(x, t, context)
        out.square().mean().backward()
        results[mode] = (out.detach(), model.input_blocks[1][0].in_layers[0].weight.grad.clone())
    assert "kernels.group_norm_triton" in sys.modules  # the kernel really ran
    torch.testing.assert_close(results["triton"][0], results["reference"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results["triton"][1], results["reference"][1], rtol=1e-3, atol=1e-6)
