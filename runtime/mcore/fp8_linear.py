"""FP8 GEMMs for megatron-core's tensor-parallel linears without Transformer Engine (torch._scaled_mm).

    spec = fp8_layer_spec(local_spec)    # linear_qkv / linear_proj / linear_fc1 / linear_fc2 in FP8
    ...
    update_fp8_scales(model_chunks)      # once per optimizer step (delayed scaling)
    reset_fp8_state(model_chunks)        # after warm-up, as NVIDIA resets the FP8 statistics

TE is the production path (its layers fuse the casts and overlap TP communication); it is a source build
that is often unavailable, so this keeps FP8 speed and accuracy measurable with plain torch on any Hopper
GPU (and runnable on CPU, where torch has an FP8 _scaled_mm too). Only the GEMM changes: each layer's
`_forward_impl` (megatron's linear + TP communication) is replaced by one that casts the input and weight
to e4m3 and the output gradient to e5m2 with kernels/fp8.py's delayed scaling, and keeps megatron's
communication: all-gather of the sequence-parallel input in forward, all-reduce (or, with sequence
parallel, reduce-scatter) of the input gradient in backward. Row-parallel layers reduce their output
outside `_forward_impl`, so nothing changes there. The output layer stays in bf16, as with TE.

Delayed scaling as TE's, also with many micro-batches in flight (pipeline parallel, gradient accumulation):
each micro-batch's forward casts with the scales current when it runs and saves them for its backward as
values (other micro-batches' forwards run between a forward and its backward), every micro-batch folds its
input / weight / output-gradient amax into the newest history slot, and `update_fp8_scales` rolls the
history and computes the next scales once per optimizer step (kernels/fp8.py: `update_delayed_scaling`).

amax histories and scales are buffers that are not saved in checkpoints: a resumed run rebuilds them.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import _gather_along_first_dim, _reduce_scatter_along_first_dim

from kernels.fp8 import Fp8Recipe, fp8_gemm_backward, fp8_gemm_forward, update_delayed_scaling


class _Fp8TensorParallelGemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, history, scale, record, allreduce_dgrad, sequence_parallel, group):
        total = _gather_along_first_dim(x, group) if sequence_parallel else x
        x2 = total.reshape(-1, total.shape[-1])
        y, saved = fp8_gemm_forward(x2, weight, history, scale, record)
        if bias is not None:
            y = y + bias.to(y.dtype)
        # Values only (x_fp8, w_fp8, the scales this forward used): with pipeline parallelism other
        # micro-batches' forwards run, and write the history, before this backward.
        ctx.save_for_backward(*saved)
        ctx.amax_history = history  # the live buffer, written (not read) by the backward
        ctx.meta = (allreduce_dgrad, sequence_parallel, group, bias is not None, total.shape, weight.dtype, x.dtype)
        return y.view(*total.shape[:-1], weight.shape[0]).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        allreduce_dgrad, sequence_parallel, group, has_bias, total_shape, w_dtype, x_dtype = ctx.meta
        dy2 = dy.reshape(-1, dy.shape[-1]).contiguous()
        dx, dw = fp8_gemm_backward(dy2, *ctx.saved_tensors, ctx.amax_history)
        dx = dx.view(total_shape).to(x_dtype)
        if sequence_parallel:
            dx = _reduce_scatter_along_first_dim(dx, group)
        elif allreduce_dgrad:
            torch.distributed.all_reduce(dx, group=group)
        db = dy2.sum(0).to(w_dtype) if has_bias else None
        return dx, dw.to(w_dtype), db, None, None, None, None, None, None


class _Fp8Gemm:
    """Delayed-scaling state and the FP8 `_forward_impl` shared by both parallel linears."""

    def _init_fp8(self, recipe: Fp8Recipe) -> None:
        if self.weight.shape[0] % 16 or self.weight.shape[1] % 16:
            raise ValueError(f"FP8 GEMMs need both weight dims divisible by 16, got {tuple(self.weight.shape)}")
        self.fp8_recipe = recipe
        device = self.weight.device
        # Not persistent: per-rank statistics, rebuilt within amax_history_len steps after a resume.
        self.register_buffer("fp8_amax_history", torch.zeros(recipe.amax_history_len, 3, device=device),
                             persistent=False)
        self.register_buffer("fp8_scale", torch.ones(3, device=device), persistent=False)

    def _forward_impl(self, input, weight, bias=None, gradient_accumulation_fusion=False, allreduce_dgrad=False,
                      sequence_parallel=False, grad_output_buffer=None, wgrad_deferral_limit=None, tp_group=None,
                      **_):
        if gradient_accumulation_fusion or grad_output_buffer is not None:
            raise ValueError("FP8 linears do not fuse wgrad accumulation or defer wgrad (TE's features)")
        # No-grad forwards (evaluation; the first pass of activation recompute, whose recomputation in the
        # backward records) leave the history alone.
        return _Fp8TensorParallelGemm.apply(input, weight, bias, self.fp8_amax_history, self.fp8_scale,
                                            torch.is_grad_enabled(), allreduce_dgrad, sequence_parallel, tp_group)

    def update_fp8_scales(self) -> None:
        update_delayed_scaling(self.fp8_amax_history, self.fp8_scale, self.fp8_recipe)

    @torch.no_grad()
    def reset_fp8_state(self) -> None:
        self.fp8_amax_history.zero_()
        self.fp8_scale.fill_(1.0)


def _recipe(config) -> Fp8Recipe:
    return Fp8Recipe(amax_history_len=config.fp8_amax_history_len, amax_compute_algo=config.fp8_amax_compute_algo,
                     margin=config.fp8_margin)


class Fp8ColumnParallelLinear(_Fp8Gemm, ColumnParallelLinear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fp8(_recipe(kwargs["config"]))


class Fp8RowParallelLinear(_Fp8Gemm, RowParallelLinear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fp8(_recipe(kwargs["config"]))


def fp8_layer_spec(spec):
    """The local layer spec with the four GEMMs of each layer in FP8."""
    attn, mlp = spec.submodules.self_attention.submodules, spec.submodules.mlp.submodules
    attn.linear_qkv, attn.linear_proj = Fp8ColumnParallelLinear, Fp8RowParallelLinear
    mlp.linear_fc1, mlp.linear_fc2 = Fp8ColumnParallelLinear, Fp8RowParallelLinear
    return spec


def _fp8_modules(chunks):
    for chunk in chunks:
        for module in chunk.modules():
            if isinstance(module, _Fp8Gemm):
                yield module


def update_fp8_scales(chunks) -> None:
    for module in _fp8_modules(chunks):
        module.update_fp8_scales()


def reset_fp8_state(chunks) -> None:
    for module in _fp8_modules(chunks):
        module.reset_fp8_state()
