"""State-dict adapters between the LDM checkpoint layout (`512-base-ema.ckpt`) and diffusers' modules.

- UNet: our UNetModel has the LDM names (`model.diffusion_model.*` in the checkpoint); `unet_to_diffusers` /
  `unet_from_diffusers` rename to and from diffusers' `UNet2DConditionModel`.
- VAE: `first_stage_model.*` in LDM's layout <-> diffusers' `AutoencoderKL` (`vae_from_ldm`, `vae_to_ldm`);
  LDM's attention projections are 1x1 convolutions where diffusers has linear layers.
- Text encoder: `cond_stage_model.model.*` is an open_clip CLIP state dict (text tower) under that prefix.

Each map is built from the model's configuration, so a missing or unexpected key is an error naming it.
"""

from __future__ import annotations

import torch

from models.stable_diffusion.model import UNetConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."

_RES_LDM_TO_DIFFUSERS = {"in_layers.0.": "norm1.", "in_layers.2.": "conv1.", "emb_layers.1.": "time_emb_proj.",
                         "out_layers.0.": "norm2.", "out_layers.3.": "conv2.", "skip_connection.": "conv_shortcut."}
_VAE_RES = {"nin_shortcut.": "conv_shortcut."}
_VAE_ATTN = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}


def _unet_prefixes(cfg: UNetConfig) -> list[tuple[str, str, dict]]:
    """(LDM prefix, diffusers prefix, leaf renames) for every module of the UNet."""
    res = _RES_LDM_TO_DIFFUSERS
    out = [("time_embed.0.", "time_embedding.linear_1.", {}), ("time_embed.2.", "time_embedding.linear_2.", {}),
           ("input_blocks.0.0.", "conv_in.", {})]
    n, levels = cfg.num_res_blocks, len(cfg.channel_mult)
    for level in range(levels):
        for j in range(n):
            i = 1 + level * (n + 1) + j
            out.append((f"input_blocks.{i}.0.", f"down_blocks.{level}.resnets.{j}.", res))
            if cfg.attention_levels[level]:
                out.append((f"input_blocks.{i}.1.", f"down_blocks.{level}.attentions.{j}.", {}))
        if level != levels - 1:
            out.append((f"input_blocks.{(level + 1) * (n + 1)}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.", {}))
    out += [("middle_block.0.", "mid_block.resnets.0.", res), ("middle_block.1.", "mid_block.attentions.0.", {}),
            ("middle_block.2.", "mid_block.resnets.1.", res)]
    for block in range(levels):
        level = levels - 1 - block
        for j in range(n + 1):
            i = block * (n + 1) + j
            out.append((f"output_blocks.{i}.0.", f"up_blocks.{block}.resnets.{j}.", res))
            if cfg.attention_levels[level]:
                out.append((f"output_blocks.{i}.1.", f"up_blocks.{block}.attentions.{j}.", {}))
            if level and j == n:
                k = 2 if cfg.attention_levels[level] else 1
                out.append((f"output_blocks.{i}.{k}.conv.", f"up_blocks.{block}.upsamplers.0.conv.", {}))
    out += [("out.0.", "conv_norm_out.", {}), ("out.2.", "conv_out.", {})]
    return out


def _rename(key: str, prefixes, *, reverse: bool, what: str) -> str:
    for ldm, diff, leaves in prefixes:
        src, dst = (diff, ldm) if reverse else (ldm, diff)
        if key.startswith(src):
            rest = key[len(src):]
            for a, b in leaves.items():
                a, b = (b, a) if reverse else (a, b)
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
            return dst + rest
    raise KeyError(f"{what}: no mapping for key {key!r}")


def unet_to_diffusers(state: dict, cfg: UNetConfig) -> dict:
    prefixes = _unet_prefixes(cfg)
    return {_rename(k, prefixes, reverse=False, what="UNet (LDM layout)"): v for k, v in state.items()}


def unet_from_diffusers(state: dict, cfg: UNetConfig) -> dict:
    prefixes = _unet_prefixes(cfg)
    return {_rename(k, prefixes, reverse=True, what="UNet (diffusers layout)"): v for k, v in state.items()}


def diffusers_unet_config(cfg: UNetConfig, sample_size: int = 64) -> dict:
    """The `UNet2DConditionModel` keyword arguments of the same network (diffusers calls the number of heads
    `attention_head_dim`)."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    channels = tuple(cfg.model_channels * m for m in cfg.channel_mult)
    return dict(sample_size=sample_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                down_block_types=down, up_block_types=up, block_out_channels=channels,
                layers_per_block=cfg.num_res_blocks, cross_attention_dim=cfg.context_dim,
                attention_head_dim=tuple(c // cfg.head_channels for c in channels), use_linear_projection=True,
                norm_num_groups=cfg.norm_groups, flip_sin_to_cos=True, freq_shift=0,
                mid_block_type="UNetMidBlock2DCrossAttn")


# -- VAE -------------------------------------------------------------------------------------------------------
def _vae_prefixes(levels: int, layers_per_block: int) -> list[tuple[str, str, dict]]:
    out = []
    for part in ("encoder", "decoder"):
        out += [(f"{part}.conv_in.", f"{part}.conv_in.", {}), (f"{part}.norm_out.", f"{part}.conv_norm_out.", {}),
                (f"{part}.conv_out.", f"{part}.conv_out.", {}),
                (f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0.", _VAE_RES),
                (f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1.", _VAE_RES),
                (f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0.", _VAE_ATTN)]
    for level in range(levels):
        for j in range(layers_per_block):
            out.append((f"encoder.down.{level}.block.{j}.", f"encoder.down_blocks.{level}.resnets.{j}.", _VAE_RES))
        if level != levels - 1:
            out.append((f"encoder.down.{level}.downsample.conv.", f"encoder.down_blocks.{level}.downsamplers.0.conv.",
                        {}))
        block = levels - 1 - level  # the decoder's `up` list is indexed by resolution, diffusers' in order of use
        for j in range(layers_per_block + 1):
            out.append((f"decoder.up.{level}.block.{j}.", f"decoder.up_blocks.{block}.resnets.{j}.", _VAE_RES))
        if level:
            out.append((f"decoder.up.{level}.upsample.conv.", f"decoder.up_blocks.{block}.upsamplers.0.conv.", {}))
    out += [("quant_conv.", "quant_conv.", {}), ("post_quant_conv.", "post_quant_conv.", {})]
    return out


def _is_attention_projection(diffusers_key: str) -> bool:
    return ".attentions." in diffusers_key and diffusers_key.endswith(".weight") and "group_norm" not in diffusers_key


def vae_from_ldm(state: dict, levels: int, layers_per_block: int) -> dict:
    """`first_stage_model.*`-stripped LDM keys -> diffusers AutoencoderKL keys (1x1 conv -> linear weights)."""
    prefixes = _vae_prefixes(levels, layers_per_block)
    out = {}
    for key, value in state.items():
        new = _rename(key, prefixes, reverse=False, what="VAE (LDM layout)")
        if _is_attention_projection(new) and value.dim() == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out


def vae_to_ldm(state: dict, levels: int, layers_per_block: int) -> dict:
    prefixes = _vae_prefixes(levels, layers_per_block)
    out = {}
    for key, value in state.items():
        if _is_attention_projection(key) and value.dim() == 2:
            value = value[:, :, None, None]
        out[_rename(key, prefixes, reverse=True, what="VAE (diffusers layout)")] = value
    return out


def split_checkpoint(state: dict, path: str) -> dict[str, dict]:
    """The frozen parts of an LDM checkpoint's state dict by role; the UNet's weights are discarded (MLPerf
    trains it from random initialisation)."""
    parts = {"vae": {}, "text": {}}
    for key, value in state.items():
        if key.startswith(VAE_PREFIX):
            parts["vae"][key[len(VAE_PREFIX):]] = value
        elif key.startswith(TEXT_PREFIX):
            parts["text"][key[len(TEXT_PREFIX):]] = value
    for role, prefix in (("vae", VAE_PREFIX), ("text", TEXT_PREFIX)):
        if not parts[role]:
            raise ValueError(f"{path}: no {prefix}* keys (the {role} weights of an LDM checkpoint)")
    return parts


def load_ldm_checkpoint(path: str) -> dict:
    """The `state_dict` of an LDM / Lightning checkpoint file, loaded without unpickling code."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: the SD checkpoint (VAE + text encoder) is missing") from None
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds no state_dict")
    return state
