"""The frozen networks around the UNet, each built from its configuration and loaded from a file:

- text encoder: OpenCLIP's text tower (ViT-H-14's at full size), output of the penultimate block after the
  final LayerNorm (LDM's FrozenOpenCLIPEmbedder, layer "penultimate"), from `cond_stage_model.model.*`;
- VAE: diffusers' AutoencoderKL from `first_stage_model.*` (state_dict_adapter.vae_from_ldm);
- CLIP scorer: a whole open_clip CLIP (ViT-H-14 `laion2b_s32b_b79k` at full size) from its state-dict file;
- FID features: pool3 of pytorch-fid's InceptionV3 (fid_inception.py) at full size, or a small
  convolutional network of the same role in the debug flavour; both loaded from a file under the data
  directory.

Heavy imports (open_clip, diffusers) happen inside the builders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.stable_diffusion.state_dict_adapter import vae_from_ldm

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _load_strict(module: nn.Module, state: dict, where: str) -> None:
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{where}: missing keys {result.missing_keys[:5]}, unexpected keys "
                         f"{result.unexpected_keys[:5]}")


class TextEncoder(nn.Module):
    def __init__(self, clip_cfg: dict):
        super().__init__()
        from open_clip.model import _build_text_tower

        self.tower = _build_text_tower(clip_cfg["embed_dim"], clip_cfg["text_cfg"])
        self.context_length = clip_cfg["text_cfg"].get("context_length", 77)

    def load(self, text_state: dict, where: str) -> "TextEncoder":
        # The checkpoint's CLIP has a logit scale (and, in some, a vision tower) that conditioning does not use.
        state = {k: v for k, v in text_state.items() if not k.startswith("visual.") and k != "logit_scale"}
        _load_strict(self.tower, state, where)
        return self

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        import open_clip

        return open_clip.tokenize(captions, context_length=self.context_length)

    def forward(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        """(B, S, width): the penultimate block's tokens after ln_final."""
        x, mask = self.tower._embeds(tokens_BS)
        blocks = self.tower.transformer.resblocks
        batch_first = getattr(self.tower.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in list(blocks)[:-1]:
            x = block(x, attn_mask=mask)
        if not batch_first:
            x = x.transpose(0, 1)
        return self.tower.ln_final(x)


def build_vae(vae_cfg: dict, ldm_state: dict, where: str):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**vae_cfg)
    levels, layers = len(vae_cfg["block_out_channels"]), vae_cfg["layers_per_block"]
    _load_strict(vae, vae_from_ldm(ldm_state, levels, layers), where)
    return vae.eval().requires_grad_(False)


def decode_images(vae, z_BCHW: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Latents -> images in [0, 1] (the reference clamps (x + 1) / 2)."""
    x = vae.decode(z_BCHW / scale_factor).sample
    return ((x.float() + 1) / 2).clamp(0, 1)


def build_clip(clip_cfg: dict, path: str):
    from open_clip.model import CLIP

    model = CLIP(**clip_cfg)
    state = torch.load(path, map_location="cpu", weights_only=True)
    _load_strict(model, state, path)
    return model.eval().requires_grad_(False)


def clip_cosines(clip, images_B3HW: torch.Tensor, tokens_BS: torch.Tensor) -> torch.Tensor:
    """Cosine of the normalised image and caption embeddings, one per pair (the MLPerf CLIP score's terms)."""
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = F.interpolate(images_B3HW, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    image = F.normalize(clip.encode_image((x - mean) / std).float(), dim=-1)
    text = F.normalize(clip.encode_text(tokens_BS).float(), dim=-1)
    return (image * text).sum(-1)


class SmallFeatureNet(nn.Module):
    """The debug flavour's FID feature network: strided convolutions and a global average pool."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        layers, ch = [], 3
        for w in widths:
            layers += [nn.Conv2d(ch, w, 3, stride=2, padding=1), nn.ReLU()]
            ch = w
        self.features = nn.Sequential(*layers)
        self.dim = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x * 2 - 1).mean(dim=(2, 3))


def build_feature_net(kind: str, widths: tuple[int, ...], path: str) -> nn.Module:
    if kind == "inception":
        from models.stable_diffusion.fid_inception import FIDInception

        net = FIDInception()
        target = net.net
    elif kind == "small":
        net = target = SmallFeatureNet(widths)
    else:
        raise ValueError(f"eval.fid_network={kind!r}: expected 'inception' or 'small'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: the FID feature network's weights are missing") from None
    _load_strict(target, state, path)
    return net.eval().requires_grad_(False)
