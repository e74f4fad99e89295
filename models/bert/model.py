"""BERT for MLPerf pre-training (phase 2): post-LayerNorm encoder, MLM and NSP heads, plain PyTorch.

Inputs are rows of T tokens that may hold several sequences each (packing). A row's tokens carry
    sequence_ids_RT   1, 2, ... for the sequences of the row, 0 for padding
    position_ids_RT   positions restarting at 0 for every sequence
and attention stays inside each sequence (block-diagonal), so a packed row computes exactly what its
sequences would compute in rows of their own. The heads see only what the loss needs: the MLM head
runs on the gathered masked positions (NVIDIA's `dense_seq_output`), the NSP head on each sequence's
[CLS] token; both are addressed as flat indices into the R*T tokens.

Shapes: R rows, T tokens per row, H hidden, M masked positions, S sequences, V vocabulary.

The projections come from kernels.fp8.make_linear (te.Linear with Transformer Engine on a Hopper GPU,
nn.Linear elsewhere, same parameter names), LayerNorm and its residual add from kernels.layer_norm,
bias + GELU from kernels.bias_gelu, the losses from kernels.cross_entropy. Nothing here knows about
process groups or precision; the model builds on the `meta` device.

Query, key and value are one [3H, H] projection (one GEMM); the reference has three variables, and LAMB's
trust ratio is per variable, so the model names the parts (`fused_parameter_splits`) for the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels import fp8
from kernels.bias_gelu import bias_gelu
from kernels.cross_entropy import cross_entropy
from kernels.layer_norm import FusedLayerNorm

IGNORE_INDEX = -100  # label of a prediction slot to skip (for callers padding to fixed shapes)


@dataclass
class BertModelConfig:
    """BERT-large uncased by default (google-research/bert `uncased_L-24_H-1024_A-16`, 336M parameters)."""

    vocab_size: int = 30522
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    # kernels.fp8.make_linear backend of the encoder projections: auto (te on Hopper + TE, else torch),
    # te, torch, torch_fp8 (torch._scaled_mm FP8 with delayed scaling, a Hopper GPU without TE).
    linear_backend: str = "auto"
    # auto (te when TE imports on a Hopper GPU, else sdpa), te (TE fused attention over cu_seqlens,
    # no padding computed), sdpa (torch SDPA with a block-diagonal mask; any device).
    attention_backend: str = "auto"
    fp8: bool = False  # TE FP8 autocast over the encoder with the `bert` delayed-scaling recipe


def _attention_backend(name: str) -> str:
    if name not in ("auto", "te", "sdpa"):
        raise ValueError(f"attention_backend={name!r}: expected auto, te or sdpa")
    if name == "auto":
        return "te" if fp8.te_available() else "sdpa"
    return name


class SelfAttention(nn.Module):
    """Multi-head self-attention within each sequence of a row, from a fused [q; k; v] projection."""

    def __init__(self, cfg: BertModelConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        self.dropout = cfg.attention_dropout
        self.backend = _attention_backend(cfg.attention_backend)
        if self.backend == "te":
            import transformer_engine.pytorch as te

            # thd: tokens of all rows flattened, sequences delimited by cu_seqlens (padding runs are
            # sequences of their own that nothing reads).
            self.te_attention = te.DotProductAttention(cfg.num_heads, self.head_dim,
                                                       attention_dropout=cfg.attention_dropout,
                                                       qkv_format="thd", attn_mask_type="padding")

    def forward(self, qkv_RT3H: torch.Tensor, mask_R1TT: torch.Tensor | None,
                cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        R, T, _ = qkv_RT3H.shape
        if self.backend == "te":
            q, k, v = qkv_RT3H.view(R * T, 3, self.num_heads, self.head_dim).unbind(1)
            out = self.te_attention(q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                                    max_seqlen_q=T, max_seqlen_kv=T)
            return out.reshape(R, T, -1)
        q, k, v = qkv_RT3H.view(R, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_R1TT,
                                             dropout_p=self.dropout if self.training else 0.0)
        return out.transpose(1, 2).reshape(R, T, -1)


class EncoderLayer(nn.Module):
    """Post-LN block: y = LN(x + drop(attn(x))), z = LN(y + drop(W2 gelu(W1 y + b1) + b2))."""

    def __init__(self, cfg: BertModelConfig):
        super().__init__()
        H, inner, backend = cfg.hidden_size, cfg.intermediate_size, cfg.linear_backend
        self.qkv = fp8.make_linear(H, 3 * H, backend=backend)
        self.attention = SelfAttention(cfg)
        self.attention_output = fp8.make_linear(H, H, backend=backend)
        self.attention_norm = FusedLayerNorm(H, eps=cfg.layer_norm_eps)
        # No GEMM bias: bias_gelu adds it in the same pass as the activation.
        self.intermediate = fp8.make_linear(H, inner, bias=False, backend=backend)
        self.intermediate_bias = nn.Parameter(torch.zeros(inner))
        self.output = fp8.make_linear(inner, H, backend=backend)
        self.output_norm = FusedLayerNorm(H, eps=cfg.layer_norm_eps)
        self.hidden_dropout = cfg.hidden_dropout

    def forward(self, x_RTH, mask_R1TT, cu_seqlens):
        p = self.hidden_dropout if self.training else 0.0
        context = self.attention(self.qkv(x_RTH), mask_R1TT, cu_seqlens)
        attended = F.dropout(self.attention_output(context), p, self.training)
        # Under autocast the residual stream joins the GEMMs' dtype here (the embeddings' LN is fp32).
        y, _ = self.attention_norm(attended, residual=x_RTH.to(attended.dtype))
        inner = bias_gelu(self.intermediate(y), self.intermediate_bias)
        z, _ = self.output_norm(F.dropout(self.output(inner), p, self.training), residual=y)
        return z


class Embeddings(nn.Module):
    def __init__(self, cfg: BertModelConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = FusedLayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = cfg.hidden_dropout

    def forward(self, input_ids_RT, segment_ids_RT, position_ids_RT):
        x = self.word(input_ids_RT) + self.position(position_ids_RT) + self.token_type(segment_ids_RT)
        return F.dropout(self.norm(x), self.dropout, self.training)


class PretrainingHeads(nn.Module):
    """MLM: dense + GELU + LN, then the decoder tied to the word embeddings plus a bias.
    NSP: the pooler (dense + tanh on [CLS]) and a 2-way classifier."""

    def __init__(self, cfg: BertModelConfig):
        super().__init__()
        H = cfg.hidden_size
        self.transform = nn.Linear(H, H)
        self.transform_norm = FusedLayerNorm(H, eps=cfg.layer_norm_eps)
        self.decoder_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.pooler = nn.Linear(H, H)
        self.nsp = nn.Linear(H, 2)

    def forward(self, hidden_NH, word_embeddings_VH, mlm_positions_M, nsp_positions_S):
        h = bias_gelu(F.linear(hidden_NH[mlm_positions_M], self.transform.weight), self.transform.bias)
        mlm_logits_MV = F.linear(self.transform_norm(h), word_embeddings_VH, self.decoder_bias)
        pooled = torch.tanh(self.pooler(hidden_NH[nsp_positions_S]))
        return mlm_logits_MV, self.nsp(pooled)


class BertForPretraining(nn.Module):
    def __init__(self, cfg: BertModelConfig):
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.heads = PretrainingHeads(cfg)
        self.uses_te_attention = _attention_backend(cfg.attention_backend) == "te"
        self.reset_parameters()

    def fused_parameter_splits(self) -> dict[str, tuple[int, ...]]:
        """The parameters that concatenate several of the reference's variables along dim 0, by name, with
        the dim-0 size of each part: every layer's qkv weight and bias are the TF reference's (and HF's)
        query, key and value. The fused projection is one GEMM here, but LAMB takes a trust ratio per
        reference variable (kernels.lamb_ref.lamb_param_groups passes these on to the optimizer)."""
        H = self.cfg.hidden_size
        return {f"layers.{i}.qkv.{part}": (H, H, H) for i in range(len(self.layers)) for part in ("weight", "bias")}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's initializer: truncated normal (2 std) weights, zero biases, unit LayerNorm."""
        std = self.cfg.initializer_range
        for name, p in self.named_parameters():
            if p.ndim >= 2:
                nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)
            elif "norm" in name.split(".")[-2] and name.endswith("weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def forward(self, input_ids_RT, segment_ids_RT, position_ids_RT, sequence_ids_RT, mlm_positions_M,
                nsp_positions_S, cu_seqlens=None):
        """(mlm_logits_MV, nsp_logits_S2) at the flat token indices mlm_positions_M and nsp_positions_S."""
        x = self.embeddings(input_ids_RT, segment_ids_RT, position_ids_RT)
        # Block-diagonal: a token sees the tokens of its own sequence. Padding (id 0) sees only padding,
        # so no row of the mask is empty (SDPA would return NaN there) and no real token sees padding.
        mask = None if self.uses_te_attention else (sequence_ids_RT[:, None, :, None] ==
                                                    sequence_ids_RT[:, None, None, :])
        with fp8.fp8_autocast(enabled=self.cfg.fp8, recipe=fp8.recipe_for("bert")):
            for layer in self.layers:
                x = layer(x, mask, cu_seqlens)
        return self.heads(x.reshape(-1, x.shape[-1]), self.embeddings.word.weight, mlm_positions_M,
                          nsp_positions_S)


def pretraining_loss(mlm_logits_MV, mlm_labels_M, nsp_logits_S2, nsp_labels_S) -> torch.Tensor:
    """MLM cross-entropy averaged over the masked tokens plus NSP cross-entropy averaged over the
    sequences (slots labelled IGNORE_INDEX do not count), as the reference's total loss."""
    mlm = cross_entropy(mlm_logits_MV, mlm_labels_M, ignore_index=IGNORE_INDEX)
    nsp = cross_entropy(nsp_logits_S2, nsp_labels_S, ignore_index=IGNORE_INDEX)
    return mlm + nsp


@torch.no_grad()
def mlm_correct_and_total(mlm_logits_MV, mlm_labels_M) -> torch.Tensor:
    """[correct, total] over the real masked positions, float64 for exact sums over 10k samples."""
    real = mlm_labels_M != IGNORE_INDEX
    correct = ((mlm_logits_MV.argmax(-1) == mlm_labels_M) & real).sum()
    return torch.stack([correct, real.sum()]).double()


def build_bert(cfg: BertModelConfig) -> BertForPretraining:
    return BertForPretraining(cfg)


def fp8_modules(model: nn.Module) -> list[nn.Module]:
    """The torch_fp8 layers whose delayed scales the training step updates after each backward (TE's
    layers update their own inside fp8_autocast)."""
    return [m for m in model.modules() if isinstance(m, fp8.FP8Linear)]


def parameter_count(cfg: BertModelConfig) -> int:
    """Parameters of the model from its config; BERT-large: 336,226,108 (decoder tied to the embeddings,
    as HF's BertForPreTraining counts them too)."""
    H, inner, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    embeddings = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * H + 2 * H
    layer = 4 * H * H + 4 * H + 2 * H * inner + inner + H + 4 * H
    heads = H * H + H + 2 * H + cfg.vocab_size + H * H + H + 2 * H + 2
    return embeddings + L * layer + heads
