"""Dry-run planner: what one GPU holds and does for a GPT-3 config at a world size, without any GPU.

    python -m models.gpt3.plan --flavour dgxh100_64x8 --world-size 512 [--step-time 4.2] [--backend te]
        [train.recompute=none model.attention=local ...]

For each pipeline stage (the first, the busiest middle one, the last) it builds that stage's megatron-core
GPTModel on the meta device (real module tree, no memory) and reads this rank's share from megatron's own
parameter attributes: a parameter marked `tensor_model_parallel` holds 1/TP of its elements, the others
are replicated. Memory per GPU at the stage's peak (when the most micro-batches are in flight), by term:

  weights     the parameters: bf16 2 B (fp32 4 B)
  fp8 cache   TE only (backend te, precision fp8): the FP8 copy of every layer GEMM weight and its
              transpose, 2 B per GEMM parameter, kept across a step's micro-batches (TE's workspace)
  grads       megatron's DDP grad buffer, which main_grad points into: fp32 4 B with
              train.grad_reduce_in_fp32, else the parameters' dtype
  optimizer   fp32 master weights (4 B; none for fp32 parameters) + Adam's two fp32 moments (8 B),
              divided by DP with the distributed optimizer
  activations what backward needs of every micro-batch in flight: `in_flight_chunks` model-chunk
              micro-batches (megatron's schedules) x the chunk's layers x `layer_activation_bytes`; a
              layer recomputed in full keeps only its input (`train.recompute`); with a pipeline, each
              chunk micro-batch's output too (megatron's deallocate_pipeline_outputs is off)
  fp8 copies  local backend, precision fp8: runtime/mcore/fp8_linear.py saves for backward the FP8 cast
              of every layer weight it used, once per forward: 1 B per GEMM parameter per layer and
              micro-batch in flight (layers recomputed in full keep none)
  logits      last stage: the vocab-parallel logits and the loss gradient of the one last-chunk
              micro-batch in flight, and the inputs of the final norm and output layer
  workspace   transient at the peak: one recompute unit re-run in backward (its activations and FP8
              copies), the gradients of one layer's backward (as large as its activations), the weight
              gradient of the largest GEMM before it is added to main_grad, and on the local FP8 path the
              transposed FP8 weight and input that GEMM's backward makes
  reserve     RESERVE_GIB: CUDA context, NCCL buffers, caching-allocator fragmentation

Activations per layer and micro-batch (`layer_activation_bytes`, one TP rank, E = s*b*h, F = s*b*ffn,
d = TP where sequence parallel shards the norms' regions, else 1) on the path the run takes:
  local  megatron's local spec with our kernels (no TE; this stack's image): two LayerNorm inputs
         (2E/d each) + fp32 mean and rstd per row; the QKV GEMM output, which q, k and v view (6E/TP);
         attention: SDPA's output and fp32 log-sum-exp (model.attention sdpa), or the s x s softmax
         output in fp32 plus its bf16 copy (local: 6 B per score, a*s*s*b/TP scores); the GEMM inputs,
         with FP8 the e4m3 casts fp8_linear.py saves (QKV and FC1 all-gathered: E each; proj E/TP; FC2
         F/TP), else megatron's linears' bf16 inputs (2E/d, 2E/d, 2E/TP, 2F/TP); the GeLU input (2F/TP).
  te     Transformer Engine's layers (estimated from the tensors TE's LayerNormLinear, LayerNormMLP and
         fused attention keep): norms as above, QKV output 6E/TP, attention output 2E/TP + softmax
         statistics, FP8 LayerNorm outputs E/d each, proj input E/TP, FC1 output 2F/TP, FC2 input F/TP.
Selective recompute drops the attention term. Korthikanti et al. 2022 count 34*s*b*h/TP (with sequence
parallel) for the bf16 local path with SDPA: what `layer_activation_bytes` gives there.

Also model FLOPs per step (Narayanan et al. 2021, eq. 3: 72*B*s*L*h^2*(1 + s/(6h) + V/(12*h*L)), no
recompute counted) and what a given step time means in TFLOP/s per GPU and MFU on H100/H200.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace

import torch

from runtime import config as config_lib

# Dense peak TFLOP/s (SXM, no sparsity): NVIDIA H100 and H200 datasheets; H200 has H100's compute.
PEAK_TFLOPS = {"H100": {"bf16": 989.4, "fp8": 1978.9}, "H200": {"bf16": 989.4, "fp8": 1978.9}}
# What a process can have: cudaMemGetInfo's total, which torch's out-of-memory message calls the GPU's
# "total capacity": about 79.1 GiB on an H100 SXM 80 GB and 139.8 GiB on an H200 141 GB. The CUDA
# context and NCCL's buffers come out of it too (RESERVE_GIB).
USABLE_GIB = {"H100": 79.1, "H200": 139.8}
# Held outside the tensors counted here: the CUDA context with cuBLAS/cuDNN workspaces (~0.6 GiB on H100),
# NCCL's buffers for the TP, PP, DP and embedding communicators (~1.5 GiB), and the caching allocator's
# reserved-but-unallocated blocks (fragmentation; ~3 GiB, about 4% of HBM, with activations of a few
# sizes freed in another order than allocated under interleaved 1F1B).
RESERVE_GIB = 5.0


@dataclass
class StagePlan:
    stage: str
    pp_rank: int
    layers: int
    params: int  # held by one rank of this stage (its TP shard)
    in_flight: int  # model-chunk micro-batches whose activations are held at the peak
    weights_gib: float
    fp8_cache_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    fp8_copies_gib: float
    logits_gib: float
    workspace_gib: float
    reserve_gib: float

    @property
    def total_gib(self) -> float:
        return (self.weights_gib + self.fp8_cache_gib + self.grads_gib + self.optimizer_gib + self.activations_gib
                + self.fp8_copies_gib + self.logits_gib + self.workspace_gib + self.reserve_gib)


def _rank_params(model, tp: int) -> int:
    total = 0
    for p in model.parameters():
        total += p.numel() // tp if getattr(p, "tensor_model_parallel", False) else p.numel()
    return total


def build_stage_on_meta(cfg, *, layers: int, first: bool, last: bool, tp: int):
    """The megatron GPTModel of one stage at TP=1 on the meta device (shards are counted by attribute)."""
    from megatron.core.models.gpt import GPTModel

    from models.gpt3.model import layer_spec, transformer_config
    from runtime.mcore.parallelize import init_megatron
    from runtime.parallel import ParallelLayout

    init_megatron(ParallelLayout(1, 0), 1, 0)
    m = replace(cfg.model, num_layers=layers, precision="bf16")
    t = replace(cfg.train, sequence_parallel=False, virtual_pp=1, recompute="none")
    config = transformer_config(m, t, tp=1, pp=1, use_te=False)
    # Initialisation runs on meta tensors (free) and is where megatron tags TP-sharded parameters.
    config.use_cpu_initialization = True
    with torch.device("meta"):
        # A stage holding only the output layer keeps its own copy of the tied embedding, as megatron does.
        return GPTModel(config=config, transformer_layer_spec=layer_spec(m, use_te=False),
                        vocab_size=cfg.model.padded_vocab_size(tp), max_sequence_length=m.seq_length,
                        pre_process=first, post_process=last,
                        share_embeddings_and_output_weights=m.share_embeddings_and_output_weights and first,
                        position_embedding_type="learned_absolute")


def in_flight_chunks(pp: int, vpp: int, microbatches: int, pp_rank: int) -> int:
    """Model-chunk micro-batches (one chunk: num_layers / (pp * vpp) layers) whose activations pipeline rank
    `pp_rank` holds at its peak, as megatron-core's schedules run them (pipeline_parallel/schedules.py,
    `get_pp_rank_microbatches`): the warm-up forwards, (pp - rank - 1) without interleaving and
    (pp - rank - 1) * 2 + (vpp - 1) * microbatch_group_size_per_vp_stage (pp, its default) with it, plus the
    forward 1F1B runs before its first backward; all of them when the warm-up covers every chunk
    micro-batch of the step (microbatches * vpp). Without a pipeline one micro-batch at a time."""
    if pp == 1:
        return 1
    total = microbatches * vpp
    warmup = pp - pp_rank - 1 if vpp == 1 else (pp - pp_rank - 1) * 2 + (vpp - 1) * pp
    return total if warmup >= total else warmup + 1


def layer_activation_bytes(s: int, b: int, h: int, a: int, ffn: int, tp: int, *, sequence_parallel: bool,
                           backend: str = "local", attention: str = "sdpa", precision: str = "bf16") -> dict:
    """Bytes one transformer layer keeps for its backward, per micro-batch and TP rank, by term (the
    module docstring derives each). backend "local" (megatron's local spec, our kernels, FP8 through
    runtime/mcore/fp8_linear.py) with attention "sdpa" or "local", or "te"."""
    if backend not in ("local", "te"):
        raise ValueError(f"backend {backend!r}: expected local or te")
    if backend == "local" and attention not in ("sdpa", "local"):
        raise ValueError(f"attention {attention!r}: expected sdpa or local")
    e = 4 if precision == "fp32" else 2  # bytes of an activation element
    E, F = s * b * h, s * b * ffn
    d = tp if sequence_parallel else 1
    rows_per_head = b * (a // tp) * s
    terms = {
        # each LayerNorm keeps its input and fp32 mean and rstd per row
        "norms": 2 * (e * E / d + 8 * s * b / d),
        # the QKV GEMM output, of which q, k and v are views kept by the attention
        "qkv": 3 * e * E / tp,
    }
    if backend == "te" or attention == "sdpa":  # the output and one fp32 log-sum-exp per row and head
        terms["attention"] = e * E / tp + 4 * rows_per_head
    else:  # the fp32 softmax output and, with 16-bit activations, its cast that multiplies V
        terms["attention"] = rows_per_head * s * (4 + (e if e == 2 else 0))
    fp8 = precision == "fp8"
    if backend == "local":
        # fp8_linear.py saves the e4m3 cast of the (all-gathered, under sequence parallel) input; megatron's
        # linears keep their input as they receive it (sharded under sequence parallel) and gather it again
        terms["gemm_inputs"] = (E + E + E / tp + F / tp) if fp8 else e * (E / d + E / d + E / tp + F / tp)
        terms["mlp"] = e * F / tp  # the GeLU input (fc1 output + bias)
    else:
        # FP8 LayerNorm outputs (local shards), proj input, FC2 input (the GeLU output); FC1's output
        one = 1 if fp8 else e
        terms["gemm_inputs"] = one * (E / d + E / tp + E / d + F / tp)
        terms["mlp"] = e * F / tp
    return terms


def layer_gemm_params(h: int, ffn: int) -> int:
    """Weights of one layer's four GEMMs (QKV, proj, FC1, FC2): what FP8 casts."""
    return 3 * h * h + h * h + 2 * h * ffn


def model_flops_per_step(gbs: int, s: int, layers: int, h: int, vocab: int) -> float:
    return 72 * gbs * s * layers * h * h * (1 + s / (6 * h) + vocab / (12 * h * layers))


def resolve_backend(backend: str | None) -> str:
    """The layers the run would build: TE's when it imports on a GPU (runtime.mcore.layers.te_available)."""
    if backend in (None, "auto"):
        from runtime.mcore.layers import te_available

        return "te" if te_available() else "local"
    if backend not in ("local", "te"):
        raise ValueError(f"backend {backend!r}: expected auto, local or te")
    return backend


def plan(cfg, world_size: int, backend: str | None = None, reserve_gib: float = RESERVE_GIB) -> dict:
    m, t, par = cfg.model, cfg.train, cfg.parallel
    tp, pp, cp = par.tp, par.pp, par.cp
    backend = resolve_backend(backend)
    if world_size % (tp * pp * cp):
        raise ValueError(f"world size {world_size} is not divisible by tp*pp*cp = {tp * pp * cp}")
    dp = world_size // (tp * pp * cp)
    if m.num_layers % pp:
        raise ValueError(f"{m.num_layers} layers do not split over pp={pp}")
    if t.global_batch_size % (dp * t.micro_batch_size):
        raise ValueError(f"GBS {t.global_batch_size} is not divisible by dp*mbs = {dp}*{t.micro_batch_size}")
    microbatches = t.global_batch_size // (dp * t.micro_batch_size)
    vpp = t.virtual_pp if pp > 1 else 1
    if m.num_layers % (pp * vpp):
        raise ValueError(f"{m.num_layers} layers do not split over pp*vpp={pp}*{vpp}")
    per_stage, chunk_layers = m.num_layers // pp, m.num_layers // (pp * vpp)
    s, b, h, ffn = m.seq_length, t.micro_batch_size, m.hidden_size, m.ffn_hidden_size
    sp = t.sequence_parallel and tp > 1
    d = tp if sp else 1
    e = 4 if m.precision == "fp32" else 2
    fp8 = m.precision == "fp8"
    attention = "fused" if backend == "te" else m.attention
    layer = layer_activation_bytes(s, b, h, m.num_attention_heads, ffn, tp, sequence_parallel=sp, backend=backend,
                                   attention=attention, precision=m.precision)
    act_layer = sum(layer.values())
    kept_layer = act_layer - (layer["attention"] if t.recompute == "selective" else 0)
    gemm = layer_gemm_params(h, ffn) / tp  # one layer's GEMM weights on one rank
    fp8_copy = gemm if fp8 and backend == "local" else 0  # fp8_linear.py: one e4m3 weight per forward
    checkpoint = e * s * b * h / d  # the input a layer (or group) recomputed in full keeps
    # megatron's schedules keep every chunk micro-batch's output (the tensor sent to the next stage) until
    # its backward unless config.deallocate_pipeline_outputs, which transformer_config leaves off; the
    # last stage's last chunk outputs the loss instead.
    chunk_output = checkpoint if pp > 1 else 0
    if t.recompute == "full":
        if t.recompute_method == "uniform":
            unit = min(t.recompute_num_layers, chunk_layers)
            kept_inputs, full_layers = math.ceil(chunk_layers / unit), 0
        else:  # block: the first recompute_num_layers layers of every chunk, one at a time
            unit = 1
            kept_inputs = min(t.recompute_num_layers, chunk_layers)
            full_layers = chunk_layers - kept_inputs
        rerun = unit * (act_layer + fp8_copy)
    else:
        kept_inputs, full_layers = 0, chunk_layers
        rerun = layer["attention"] if t.recompute == "selective" else 0
    largest_gemm = max(3 * h * h, h * h, h * ffn) / tp
    backward = act_layer + e * largest_gemm + ((largest_gemm + s * b * h) if fp8 and backend == "local" else 0)
    workspace = rerun + backward
    vocab = m.padded_vocab_size(tp)
    # The loss of the one last-chunk micro-batch in flight: our vocab-parallel cross-entropy keeps its
    # gradient (the logits' dtype) beside the logits; megatron's (TE path) keeps an fp32 softmax.
    logits = s * b * vocab / tp * (2 * e if backend == "local" else e + 4) + 2 * e * s * b * h / d

    ranks = [("first", 0, True, pp == 1)]
    if pp > 2:
        ranks.append(("middle", 1, False, False))  # rank 1 holds the most in flight of the middle stages
    if pp > 1:
        ranks.append(("last", pp - 1, False, True))
    gib = 1024 ** 3
    plans, whole = [], {}
    grad_bytes = 4 if t.grad_reduce_in_fp32 or m.precision == "fp32" else 2
    state_bytes = 8 + (0 if m.precision == "fp32" else 4)
    for name, rank, first, last in ranks:
        model = build_stage_on_meta(cfg, layers=per_stage, first=first, last=last, tp=tp)
        params = _rank_params(model, tp)
        whole[name] = sum(p.numel() for p in model.parameters())  # built at TP=1: the stage's full size
        n = in_flight_chunks(pp, vpp, microbatches, rank)
        plans.append(StagePlan(
            stage=name, pp_rank=rank, layers=per_stage, params=params, in_flight=n,
            weights_gib=params * (4 if m.precision == "fp32" else 2) / gib,
            fp8_cache_gib=(2 * gemm * per_stage if fp8 and backend == "te" else 0) / gib,
            grads_gib=params * grad_bytes / gib,
            optimizer_gib=params * state_bytes / (dp * cp if t.distributed_optimizer else 1) / gib,
            activations_gib=(n * (full_layers * kept_layer + kept_inputs * checkpoint)
                             + (n - last) * chunk_output) / gib,
            fp8_copies_gib=n * full_layers * fp8_copy / gib,
            logits_gib=(logits if last else 0) / gib,
            workspace_gib=workspace / gib, reserve_gib=reserve_gib))
    # Whole model, counted once: first + (pp - 2) middles + last, minus the last stage's tied copy.
    if pp == 1:
        total_params = whole["first"]
    else:
        total_params = whole["first"] + (pp - 2) * whole.get("middle", 0) + whole["last"]
        if m.share_embeddings_and_output_weights:
            total_params -= m.padded_vocab_size(tp) * m.hidden_size
    flops = model_flops_per_step(t.global_batch_size, m.seq_length, m.num_layers, m.hidden_size,
                                 m.padded_vocab_size(tp))
    recomputed = (chunk_layers - full_layers) / chunk_layers if t.recompute == "full" else 0.0
    return {"world_size": world_size, "tp": tp, "pp": pp, "vpp": vpp, "cp": cp, "dp": dp,
            "microbatches": microbatches, "total_params": total_params, "stages": plans,
            "backend": backend, "attention": attention, "layer_bytes": layer, "fp8_copy_bytes": fp8_copy,
            "chunk_layers": chunk_layers, "recomputed_fraction": recomputed,
            "flops_per_step": flops, "tokens_per_step": t.global_batch_size * m.seq_length}


def peak_stage(r: dict) -> StagePlan:
    return max(r["stages"], key=lambda st: st.total_gib)


def mfu(flops_per_step: float, world_size: int, step_time_s: float, gpu: str, precision: str) -> tuple[float, float]:
    """(model TFLOP/s per GPU, fraction of the dense peak at `precision`)."""
    tflops = flops_per_step / step_time_s / world_size / 1e12
    return tflops, tflops / PEAK_TFLOPS[gpu]["fp8" if precision == "fp8" else "bf16"]


def _recompute_text(t, chunk_layers: int) -> str:
    if t.recompute != "full":
        return t.recompute
    if t.recompute_method == "block":
        return f"full, block: {min(t.recompute_num_layers, chunk_layers)} of every chunk's {chunk_layers} layers"
    return f"full, uniform: every layer, groups of {t.recompute_num_layers}"


def main(argv=None) -> int:
    from models.gpt3 import SPEC

    p = argparse.ArgumentParser(prog="python -m models.gpt3.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flavour", default="dgxh100_64x8")
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--step-time", type=float, default=0.0, help="seconds per step, for TFLOP/s and MFU")
    p.add_argument("--backend", default="auto", choices=["auto", "local", "te"],
                   help="the layers counted: megatron's local spec (no TE) or TE's; auto: what this machine builds")
    p.add_argument("--reserve-gib", type=float, default=RESERVE_GIB,
                   help="CUDA context + NCCL + allocator fragmentation (default %(default)s)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = config_lib.apply_overrides(SPEC.config(args.flavour), args.overrides)
    r = plan(cfg, args.world_size, backend=args.backend, reserve_gib=args.reserve_gib)
    t, m = cfg.train, cfg.model
    print(f"{args.flavour} on {r['world_size']} GPUs: tp={r['tp']} pp={r['pp']} vpp={r['vpp']} dp={r['dp']} "
          f"micro-batches/step={r['microbatches']} (MBS {t.micro_batch_size}) sequence parallel="
          f"{t.sequence_parallel and r['tp'] > 1} distributed optimizer={t.distributed_optimizer}")
    print(f"layers: {r['backend']} (attention {r['attention']}), precision {m.precision}, grads "
          f"{'fp32' if t.grad_reduce_in_fp32 else 'bf16'}, recompute {_recompute_text(t, r['chunk_layers'])}")
    print(f"total parameters {r['total_params'] / 1e9:.2f}B")
    mib = 1024 ** 2
    terms = ", ".join(f"{k} {v / mib:.1f}" for k, v in r["layer_bytes"].items())
    print(f"per layer and micro-batch (MiB): {terms}; total {sum(r['layer_bytes'].values()) / mib:.1f}"
          + (f"; FP8 weight copy {r['fp8_copy_bytes'] / mib:.1f}" if r["fp8_copy_bytes"] else ""))
    cols = ["weights", "fp8 $", "grads", "optim", "activ", "fp8 cp", "logits", "work", "reserve"]
    print(f"{'stage':7} {'rank':>4} {'layers':>6} {'params/rank':>12} {'in flight':>9} "
          + " ".join(f"{c:>7}" for c in cols) + f" {'total GiB':>9}")
    for st in r["stages"]:
        vals = [st.weights_gib, st.fp8_cache_gib, st.grads_gib, st.optimizer_gib, st.activations_gib,
                st.fp8_copies_gib, st.logits_gib, st.workspace_gib, st.reserve_gib]
        print(f"{st.stage:7} {st.pp_rank:>4} {st.layers:>6} {st.params / 1e9:>11.3f}B "
              f"{st.in_flight:>4}x{r['chunk_layers']:<4}" + " ".join(f"{v:>7.2f}" for v in vals)
              + f" {st.total_gib:>9.2f}")
    print("in flight: model-chunk micro-batches x layers per chunk at the stage's peak (interleaved 1F1B); "
          "fp8 $: TE's FP8 weight cache; fp8 cp: per-micro-batch FP8 weight copies; reserve: CUDA "
          "context, NCCL, allocator fragmentation")
    worst = peak_stage(r)
    print(f"peak: {worst.stage} stage {worst.total_gib:.2f} GiB; " + ", ".join(
        f"{g} {USABLE_GIB[g]} GiB usable: {'fits' if worst.total_gib <= USABLE_GIB[g] else 'DOES NOT FIT'} "
        f"(margin {USABLE_GIB[g] - worst.total_gib:+.2f})" for g in USABLE_GIB))
    if r["recomputed_fraction"]:
        print(f"recompute re-runs the forward of {100 * r['recomputed_fraction']:.0f}% of the layers: about "
              f"+{100 * r['recomputed_fraction'] / 3:.0f}% of the layers' training FLOPs (not in the model FLOPs)")
    print(f"model FLOPs per step {r['flops_per_step']:.4g} ({r['tokens_per_step']} tokens)")
    if args.step_time > 0:
        for gpu in PEAK_TFLOPS:
            tflops, frac = mfu(r["flops_per_step"], r["world_size"], args.step_time, gpu, cfg.model.precision)
            tokens = r["tokens_per_step"] / args.step_time / r["world_size"]
            print(f"{gpu}: {args.step_time:.3f} s/step = {tflops:.1f} TFLOP/s per GPU = {100 * frac:.1f}% MFU "
                  f"({cfg.model.precision} peak), {tokens:.0f} tokens/s per GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
