"""The frozen base's GEMM weights stored in FP8 without Transformer Engine (model.precision fp8, no TE).

runtime/mcore/fp8_linear.py keeps a bf16 weight and casts it to e4m3 in every forward, saving the cast for the
weight gradient: 3 bytes per parameter, which puts Llama-2-70B LoRA at TP 4 over an 80 GB H100
(models/llama2_70b_lora/plan.py, `--weights local_fp8`). The base here never changes, so its weight is cast
once, after the checkpoint is loaded (`store_base_in_fp8`), with a per-tensor scale from its own amax (what
delayed scaling converges to for a constant tensor), and the bf16 copy is dropped: 1 byte per parameter, as
NVIDIA's TE runs store it. No weight gradient is ever computed, so the forward saves no input either; the
backward is the input gradient alone (dy in e5m2 against the stored e4m3 weight). The input and the output
gradient keep fp8_linear.py's delayed scaling (its amax history and scales, updated by its
`update_fp8_scales`), and its TP communication: SP all-gather of the input in forward, all-reduce or SP
reduce-scatter of the input gradient in backward.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel.mappings import _gather_along_first_dim, _reduce_scatter_along_first_dim

from kernels.fp8 import E4M3, E5M2, fp8_max, quantize, record_amax
from runtime.mcore.fp8_linear import Fp8ColumnParallelLinear, Fp8RowParallelLinear


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


class _FrozenFp8Gemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_fp8, w_scale_inv, history, scale, record, allreduce_dgrad, sequence_parallel, group):
        total = _gather_along_first_dim(x, group) if sequence_parallel else x
        x2 = total.reshape(-1, total.shape[-1])
        scale = scale.detach().clone()  # this micro-batch's scales, whatever later forwards do to the buffer
        if record:
            record_amax(history, 0, x2)
        x_fp8 = quantize(x2, scale[0], E4M3)
        y = torch._scaled_mm(x_fp8, w_fp8.t(), scale_a=scale[0].reciprocal(), scale_b=w_scale_inv,
                             out_dtype=_out_dtype(x2))
        ctx.save_for_backward(w_fp8, w_scale_inv, scale)
        ctx.history = history
        ctx.meta = (allreduce_dgrad, sequence_parallel, group, total.shape, x.dtype)
        return y.view(*total.shape[:-1], w_fp8.shape[0]).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        w_fp8, w_scale_inv, scale = ctx.saved_tensors
        allreduce_dgrad, sequence_parallel, group, total_shape, x_dtype = ctx.meta
        dy2 = dy.reshape(-1, dy.shape[-1]).contiguous()
        record_amax(ctx.history, 2, dy2)
        dy_fp8 = quantize(dy2, scale[2], E5M2)
        # dgrad (M, K) = dy (M, N) @ w (N, K): _scaled_mm wants w column-major, a transient transposed copy
        dx = torch._scaled_mm(dy_fp8, w_fp8.t().contiguous().t(), scale_a=scale[2].reciprocal(),
                              scale_b=w_scale_inv, out_dtype=_out_dtype(dy2))
        dx = dx.view(total_shape).to(x_dtype)
        if sequence_parallel:
            dx = _reduce_scatter_along_first_dim(dx, group)
        elif allreduce_dgrad:
            torch.distributed.all_reduce(dx, group=group)
        return dx, None, None, None, None, None, None, None, None


class _StoredFp8:
    """Mixin over fp8_linear.py's linears: the weight held in e4m3 once `store_in_fp8` ran."""

    @torch.no_grad()
    def store_in_fp8(self) -> None:
        if self.weight.dtype == E4M3:
            return
        if self.bias is not None:
            raise ValueError("stored-FP8 linears: no bias (Llama has none)")
        amax = self.weight.detach().abs().max().float()
        scale = fp8_max(E4M3) / amax if amax > 0 else torch.ones((), device=amax.device)
        self.register_buffer("weight_scale_inv", scale.reciprocal().reshape(()), persistent=False)
        stored = quantize(self.weight, scale, E4M3)
        # A buffer, not a parameter: nothing optimizes it, and megatron's DDP wrapping (which casts every
        # parameter to params_dtype) leaves it alone; not persistent: the run's checkpoints hold the adapters only.
        del self.weight
        self.register_buffer("weight", stored, persistent=False)

    def _forward_impl(self, input, weight, bias=None, gradient_accumulation_fusion=False, allreduce_dgrad=False,
                      sequence_parallel=False, grad_output_buffer=None, wgrad_deferral_limit=None, tp_group=None,
                      **kwargs):
        if weight.dtype != E4M3:  # not converted yet (the checkpoint is loaded into the bf16 weight first)
            return super()._forward_impl(input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad,
                                         sequence_parallel, grad_output_buffer, wgrad_deferral_limit, tp_group,
                                         **kwargs)
        return _FrozenFp8Gemm.apply(input, weight, self.weight_scale_inv, self.fp8_amax_history, self.fp8_scale,
                                    torch.is_grad_enabled(), allreduce_dgrad, sequence_parallel, tp_group)


class StoredFp8ColumnParallelLinear(_StoredFp8, Fp8ColumnParallelLinear):
    pass


class StoredFp8RowParallelLinear(_StoredFp8, Fp8RowParallelLinear):
    pass


def stored_fp8_layer_spec(spec):
    """The local layer spec with the MLP's two GEMMs stored in FP8 (the attention's, under the adapters,
    get the same classes through lora.lora_linears)."""
    mlp = spec.submodules.mlp.submodules
    mlp.linear_fc1, mlp.linear_fc2 = StoredFp8ColumnParallelLinear, StoredFp8RowParallelLinear
    return spec


def store_base_in_fp8(model: torch.nn.Module) -> int:
    """Cast every stored-FP8 linear's frozen weight to e4m3 (after the base checkpoint is in); returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, _StoredFp8):
            if module.weight.requires_grad:
                raise ValueError("stored-FP8 linears hold frozen weights only")
            module.store_in_fp8()
            count += 1
    return count
