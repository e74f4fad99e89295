"""The SD-2 UNet (latent diffusion's `openaimodel.UNetModel` as Stable Diffusion 2 configures it), written for
one device: plain PyTorch, no process groups.

Module names follow the LDM checkpoint layout (`input_blocks.N.M`, `middle_block`, `output_blocks`, `out`), so
`model.diffusion_model.*` weights of an LDM checkpoint load as they are; models/stable_diffusion/
state_dict_adapter.py maps them to diffusers' `UNet2DConditionModel` and back.

Legend: B batch, C channels, H/W latent height/width, L = H*W tokens, S context tokens (77), D context width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels.group_norm import group_norm


@dataclass
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Levels with a spatial transformer: SD-2's attention_resolutions [4, 2, 1] are downsample factors 1, 2, 4,
    # i.e. the first three of the four levels.
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    head_channels: int = 64
    context_dim: int = 1024
    norm_groups: int = 16  # MLPerf's change from LDM's 32


class GroupNormAct(nn.GroupNorm):
    """GroupNorm, optionally followed by SiLU, through the fused kernel (kernels/group_norm.py) on CUDA."""

    def __init__(self, groups: int, channels: int, eps: float, silu: bool):
        super().__init__(groups, channels, eps=eps)
        self.silu = silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, silu=self.silu)


def timestep_embedding(t_B: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cosines first (LDM's order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_B.device) / half)
    args = t_B.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_dim: int, out_channels: int, groups: int):
        super().__init__()
        # LDM's `normalization()` is GroupNorm with torch's default eps 1e-5.
        self.in_layers = nn.Sequential(GroupNormAct(groups, channels, 1e-5, silu=True), nn.Identity(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(GroupNormAct(groups, out_channels, 1e-5, silu=True), nn.Identity(),
                                        nn.Identity(), nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x_BCHW: torch.Tensor, emb_BE: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x_BCHW)
        h = h + self.emb_layers(emb_BE)[:, :, None, None].to(h.dtype)
        return self.skip_connection(x_BCHW) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head attention through SDPA (flash / memory-efficient kernels on GPU)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        kv_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Identity())

    def forward(self, x_BLC: torch.Tensor, context_BSD: torch.Tensor | None = None) -> torch.Tensor:
        context = x_BLC if context_BSD is None else context_BSD
        B, L, C = x_BLC.shape

        def heads(t):
            return t.view(B, -1, self.heads, C // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.to_q(x_BLC)), heads(self.to_k(context)),
                                             heads(self.to_v(context)))
        return self.to_out(out.transpose(1, 2).reshape(B, L, C))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x_BLC: torch.Tensor, context_BSD: torch.Tensor) -> torch.Tensor:
        x_BLC = x_BLC + self.attn1(self.norm1(x_BLC))
        x_BLC = x_BLC + self.attn2(self.norm2(x_BLC), context_BSD)
        return x_BLC + self.ff(self.norm3(x_BLC))


class SpatialTransformer(nn.Module):
    """Depth 1, linear in/out projections (SD-2's `use_linear_in_transformer`)."""

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = GroupNormAct(groups, channels, 1e-6, silu=False)  # LDM's Normalize(): eps 1e-6
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x_BCHW: torch.Tensor, context_BSD: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BCHW.shape
        h = self.norm(x_BCHW).permute(0, 2, 3, 1).reshape(B, H * W, C)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context_BSD)
        h = self.proj_out(h).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return x_BCHW + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepBlock(nn.Sequential):
    """A sequence of layers, each given what it takes: ResBlocks the time embedding, transformers the context."""

    def forward(self, x, emb, context):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        if len(cfg.attention_levels) != len(cfg.channel_mult):
            raise ValueError(f"attention_levels {cfg.attention_levels} and channel_mult {cfg.channel_mult} differ "
                             "in length")
        self.cfg = cfg
        mc, groups = cfg.model_channels, cfg.norm_groups
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def transformer(ch):
            if ch % cfg.head_channels:
                raise ValueError(f"{ch} channels are not a multiple of head_channels={cfg.head_channels}")
            return SpatialTransformer(ch, ch // cfg.head_channels, cfg.context_dim, groups)

        self.input_blocks = nn.ModuleList([TimestepBlock(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skip_channels, ch = [mc], mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb_dim, mult * mc, groups)]
                ch = mult * mc
                if cfg.attention_levels[level]:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepBlock(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepBlock(Downsample(ch)))
                skip_channels.append(ch)
        self.middle_block = TimestepBlock(ResBlock(ch, emb_dim, ch, groups), transformer(ch),
                                          ResBlock(ch, emb_dim, ch, groups))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * mc, groups)]
                ch = mult * mc
                if cfg.attention_levels[level]:
                    layers.append(transformer(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepBlock(*layers))
        self.out = nn.Sequential(GroupNormAct(groups, ch, 1e-5, silu=True), nn.Identity(),
                                 nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    def forward(self, x_BCHW: torch.Tensor, t_B: torch.Tensor, context_BSD: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t_B, self.cfg.model_channels).to(x_BCHW.dtype))
        h, skips = x_BCHW, []
        for block in self.input_blocks:
            h = block(h, emb, context_BSD)
            skips.append(h)
        h = self.middle_block(h, emb, context_BSD)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context_BSD)
        return self.out(h)


def build_unet(cfg: UNetConfig) -> UNetModel:
    return UNetModel(cfg)
