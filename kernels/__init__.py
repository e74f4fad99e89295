"""Fused kernels in Triton (what apex gave NVIDIA's MLPerf implementations), each with its torch reference.

Every `kernels/<op>.py` holds `<op>_ref` (torch), the Triton kernel(s), an autograd.Function and one public
function, registered as `torch.ops.mlperf_kernels.*` custom ops so torch.compile traces models using them.
`dispatch.py` decides Triton (CUDA) vs reference (elsewhere; `MLPERF_KERNELS` forces either).

    layer_norm.layer_norm, FusedLayerNorm          rms_norm.rms_norm, FusedRMSNorm
    bias_gelu.bias_gelu                            bias_dropout_add.bias_dropout_add
    cross_entropy.cross_entropy                    cross_entropy_parallel.vocab_parallel_cross_entropy
    optimizers.FusedLARS / FusedLAMB / FusedAdam / FusedAdamW / FusedAdagrad     lamb_ref.LambReference
    fp8.make_linear / make_layernorm_linear / FP8Linear / fp8_autocast / RECIPES

Nothing is imported here: importing a kernel module imports triton, which only the caller should pay for.
"""
