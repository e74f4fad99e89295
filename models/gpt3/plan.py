"""Dry-run planner: what one GPU holds and does for a GPT-3 config at a world size, without any GPU.

    python -m models.gpt3.plan --flavour dgxh100_64x8 --world-size 512 [--step-time 4.2] [train.recompute=full]

For each pipeline stage (first, a middle one, last) it builds that stage's megatron-core GPTModel on the
meta device (real module tree, no memory) and reads this rank's share from megatron's own parameter
attributes: a parameter marked `tensor_model_parallel` holds 1/TP of its elements, the others are
replicated. From that:
  * weights (bf16: 2 B; fp32: 4 B), fp32 main grads (4 B), fp32 master weights + Adam moments (12 B),
    the latter divided by DP with the distributed optimizer;
  * activations of the in-flight micro-batches on that stage (Korthikanti et al. 2022, "Reducing
    activation recomputation in large transformer models", eqs. 2-5: s*b*h*(34 + 5*a*s/h) bytes per layer
    without recompute, s*b*h*34 with selective, 2*s*b*h with full; divided by TP with sequence
    parallel; 1F1B keeps pp micro-batches in flight on the first stage, interleaving adds (p-1)/(p*v));
  * model FLOPs per step (Narayanan et al. 2021, eq. 3: 72*B*s*L*h^2*(1 + s/(6h) + V/(12*h*L)), no
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
HBM_GIB = {"H100": 80, "H200": 141}


@dataclass
class StagePlan:
    stage: str
    layers: int
    params: int  # held by one rank of this stage (its TP shard)
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.grads_gib + self.optimizer_gib + self.activations_gib


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


def activation_bytes_per_layer(s: int, b: int, h: int, a: int, tp: int, *, sequence_parallel: bool,
                               recompute: str, flash_attention: bool = True) -> float:
    """Bytes one layer keeps for backward per micro-batch (16-bit activations). Flash/fused attention
    (TE's, as NVIDIA runs) keeps no s x s scores, which is what selective recompute buys without it."""
    if recompute == "full":
        per = 2 * s * b * h
        return per / tp if sequence_parallel else per
    attention_scores = 0 if recompute == "selective" or flash_attention else 5 * a * s * s * b
    if sequence_parallel:
        return (34 * s * b * h + attention_scores) / tp
    return s * b * h * (10 + 24 / tp) + attention_scores / tp


def model_flops_per_step(gbs: int, s: int, layers: int, h: int, vocab: int) -> float:
    return 72 * gbs * s * layers * h * h * (1 + s / (6 * h) + vocab / (12 * h * layers))


def plan(cfg, world_size: int, flash_attention: bool = True) -> dict:
    m, t, par = cfg.model, cfg.train, cfg.parallel
    tp, pp, cp = par.tp, par.pp, par.cp
    if world_size % (tp * pp * cp):
        raise ValueError(f"world size {world_size} is not divisible by tp*pp*cp = {tp * pp * cp}")
    dp = world_size // (tp * pp * cp)
    if m.num_layers % pp:
        raise ValueError(f"{m.num_layers} layers do not split over pp={pp}")
    if t.global_batch_size % (dp * t.micro_batch_size):
        raise ValueError(f"GBS {t.global_batch_size} is not divisible by dp*mbs = {dp}*{t.micro_batch_size}")
    microbatches = t.global_batch_size // (dp * t.micro_batch_size)
    vpp = t.virtual_pp if pp > 1 else 1
    per_stage = m.num_layers // pp
    weight_bytes = 4 if m.precision == "fp32" else 2
    sp = t.sequence_parallel and tp > 1
    act_layer = activation_bytes_per_layer(m.seq_length, t.micro_batch_size, m.hidden_size, m.num_attention_heads,
                                           tp, sequence_parallel=sp, recompute=t.recompute,
                                           flash_attention=flash_attention)
    in_flight = min(pp, microbatches) * (1 + (pp - 1) / (pp * vpp) if vpp > 1 else 1)
    stages = [("first", True, pp == 1), ("middle", False, False), ("last", pp == 1, True)] if pp > 2 else \
        ([("first", True, False), ("last", False, True)] if pp == 2 else [("only", True, True)])
    gib = 1024 ** 3
    plans, whole = [], {}
    for name, first, last in stages:
        model = build_stage_on_meta(cfg, layers=per_stage, first=first, last=last, tp=tp)
        params = _rank_params(model, tp)
        whole[name] = sum(p.numel() for p in model.parameters())  # built at TP=1: the stage's full size
        optimizer = params * 12 / (dp if t.distributed_optimizer else 1)
        # Stage 0 keeps the most micro-batches in flight; later stages fewer (pp - stage); we report the bound.
        acts = per_stage * act_layer * in_flight
        if last:  # fp32 logits of one micro-batch, vocab-parallel
            acts += m.seq_length * t.micro_batch_size * m.padded_vocab_size(tp) * 4 / tp
        plans.append(StagePlan(name, per_stage, params, params * weight_bytes / gib, params * 4 / gib,
                               optimizer / gib, acts / gib))
    # Whole model, counted once: first + (pp - 2) middles + last, minus the last stage's tied copy.
    if pp == 1:
        total_params = whole["only"]
    else:
        total_params = whole["first"] + (pp - 2) * whole.get("middle", 0) + whole["last"]
        if m.share_embeddings_and_output_weights:
            total_params -= m.padded_vocab_size(tp) * m.hidden_size
    flops = model_flops_per_step(t.global_batch_size, m.seq_length, m.num_layers, m.hidden_size,
                                 m.padded_vocab_size(tp))
    return {"world_size": world_size, "tp": tp, "pp": pp, "vpp": vpp, "cp": cp, "dp": dp,
            "microbatches": microbatches, "total_params": total_params, "stages": plans,
            "flops_per_step": flops, "tokens_per_step": t.global_batch_size * m.seq_length}


def mfu(flops_per_step: float, world_size: int, step_time_s: float, gpu: str, precision: str) -> tuple[float, float]:
    """(model TFLOP/s per GPU, fraction of the dense peak at `precision`)."""
    tflops = flops_per_step / step_time_s / world_size / 1e12
    return tflops, tflops / PEAK_TFLOPS[gpu]["fp8" if precision == "fp8" else "bf16"]


def main(argv=None) -> int:
    from models.gpt3 import SPEC

    p = argparse.ArgumentParser(prog="python -m models.gpt3.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flavour", default="dgxh100_64x8")
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--step-time", type=float, default=0.0, help="seconds per step, for TFLOP/s and MFU")
    p.add_argument("--no-flash-attention", action="store_true", help="count the s x s attention scores")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = config_lib.apply_overrides(SPEC.config(args.flavour), args.overrides)
    r = plan(cfg, args.world_size, flash_attention=not args.no_flash_attention)
    print(f"{args.flavour} on {r['world_size']} GPUs: tp={r['tp']} pp={r['pp']} vpp={r['vpp']} dp={r['dp']} "
          f"micro-batches/step={r['microbatches']} recompute={cfg.train.recompute} "
          f"distributed optimizer={cfg.train.distributed_optimizer}")
    print(f"total parameters {r['total_params'] / 1e9:.2f}B")
    print(f"{'stage':8} {'layers':>6} {'params/rank':>12} {'weights':>8} {'grads':>8} {'optim':>8} {'activ':>8} {'total GiB':>9}")
    for s in r["stages"]:
        print(f"{s.stage:8} {s.layers:>6} {s.params / 1e9:>11.3f}B {s.weights_gib:>8.2f} {s.grads_gib:>8.2f} "
              f"{s.optimizer_gib:>8.2f} {s.activations_gib:>8.2f} {s.total_gib:>9.2f}")
    worst = max(s.total_gib for s in r["stages"])
    print("fits (before workspace/fragmentation): " +
          ", ".join(f"{g} {HBM_GIB[g]} GiB {'yes' if worst < HBM_GIB[g] else 'NO'}" for g in HBM_GIB))
    print(f"model FLOPs per step {r['flops_per_step']:.4g} ({r['tokens_per_step']} tokens)")
    if args.step_time > 0:
        for gpu in PEAK_TFLOPS:
            tflops, frac = mfu(r["flops_per_step"], r["world_size"], args.step_time, gpu, cfg.model.precision)
            print(f"{gpu}: {args.step_time:.3f} s/step = {tflops:.1f} TFLOP/s per GPU = {100 * frac:.1f}% MFU "
                  f"({cfg.model.precision} peak), {r['tokens_per_step'] / args.step_time / r['world_size']:.0f} tokens/s per GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
