"""Dry-run planner: what one GPU holds and does for a Llama-2 LoRA config at a world size, without any GPU.

    python -m models.llama2_70b_lora.plan --flavour dgxh100_1x8 --world-size 8 [--step-time 4.4]
        [--weights fp8|bf16|local_fp8] [parallel.tp=2 ...]

Memory per GPU (one pipeline stage: NVIDIA's layouts have none), by term; P = this rank's share of the base
(GEMM weights and embeddings split over TP, norms replicated), R = its LoRA parameters:

  base weights   frozen: GEMM weights 1 B (`--weights fp8`: NVIDIA's FP8 parameter storage through TE, and
                 this stack's without TE, models/llama2_70b_lora/fp8_frozen.py), 2 B (`bf16`), or 3 B
                 (`local_fp8`: runtime/mcore/fp8_linear.py as GPT-3 uses it, which keeps the bf16 weight and
                 saves its FP8 cast once per micro-batch in flight: one here; shown for comparison);
                 embeddings, output layer and norms 2 B
  lora state     bf16 parameter 2 B + fp32 main grad 4 B + fp32 master weight 4 B + Adam's moments 8 B per R
  activations    what backward needs, per layer, of the one micro-batch in flight (no pipeline: megatron's
                 no-pipelining schedule runs each micro-batch's backward before the next forward), over
                 every layer: the base is frozen, so its GEMMs keep no inputs for weight gradients, but the
                 gradient to the first layer's adapters flows back through every layer
                 (`layer_activation_bytes`)
  logits         the vocab-parallel logits of the micro-batch (bf16) and their fp32 loss gradient
  workspace      one layer's backward in flight (as large as its activations) and the largest GEMM's FP8
                 transposes (bf16 weights: its dgrad output)
  reserve        RESERVE_GIB: CUDA context, NCCL buffers, caching-allocator fragmentation

Activations per layer and micro-batch, one rank (E = s/cp * b * h tokens x hidden, F = s/cp * b * ffn,
d = TP with sequence parallel else 1, g = groups/heads; bf16):
  two RMSNorm inputs 2E/d each; q, k, v as SDPA keeps them 2E(1 + 2g)/TP; SDPA's output 2E/TP and fp32
  log-sum-exp; SwiGLU's input (gate and up) 4F/TP; the adapters' inputs: the QKV adapter's all-gathered
  normed input 2E (its A's weight gradient needs it) and the projection adapter's 2E/TP, with LoRA dropout
  their 1 B masks (E/d, E/TP); the rank-r intermediates are negligible. Under CP, K and V of the whole
  sequence (gathered for attention) 2E(2g)cp/TP more.

Model FLOPs per step (T = GBS * s tokens; P_l = one layer's GEMM parameters; attention counted over the full
s x s scores, as Narayanan et al. count it, whatever the CP split): the frozen base's forward (2 P_l T + 4 s h T
per layer) and its backward without weight gradients (input gradients only: 2 P_l T + 8 s h T per layer), the
output layer (2 V h T forward, 2 V h T backward), and the adapters' full training (6 R_total T). Achieved
TFLOP/s and MFU from a step time.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from runtime import config as config_lib

PEAK_TFLOPS = {"H100": {"bf16": 989.4, "fp8": 1978.9}, "H200": {"bf16": 989.4, "fp8": 1978.9}}
USABLE_GIB = {"H100": 79.1, "H200": 139.8}
RESERVE_GIB = 5.0
GIB = 1024 ** 3
GEMM_WEIGHT_BYTES = {"fp8": 1, "bf16": 2, "local_fp8": 3}  # per frozen GEMM parameter (module docstring)


@dataclass
class Plan:
    base_params: int  # the whole base model
    lora_params: int  # every adapter
    rank_base_params: int
    rank_lora_params: int
    memory_gib: dict  # term -> GiB on one GPU
    flops_per_step: float

    @property
    def total_gib(self) -> float:
        return sum(self.memory_gib.values())


def layer_gemm_params(h: int, heads: int, groups: int, ffn: int) -> int:
    qkv = h * (h + 2 * h * groups // heads)
    return qkv + h * h + 3 * h * ffn  # QKV, output projection, gate + up, down


def base_params(m) -> int:
    h = m.hidden_size
    per_layer = layer_gemm_params(h, m.num_attention_heads, m.num_query_groups, m.ffn_hidden_size) + 2 * h
    return m.num_layers * per_layer + 2 * m.vocab_size * h + h  # + embeddings, output layer, final norm


def lora_params(m) -> int:
    h, r = m.hidden_size, m.lora_rank
    qkv_out = h + 2 * h * m.num_query_groups // m.num_attention_heads
    return m.num_layers * r * ((h + qkv_out) + (h + h))


def layer_activation_bytes(s: int, b: int, h: int, heads: int, groups: int, ffn: int, tp: int, cp: int, *,
                           sequence_parallel: bool, lora_dropout: bool) -> float:
    e, f = s / cp * b * h, s / cp * b * ffn
    d = tp if sequence_parallel else 1
    g = groups / heads
    total = 2 * (2 * e / d)  # two RMSNorm inputs
    total += 2 * e * (1 + 2 * g) / tp  # q, k, v
    total += 2 * e / tp + 4 * (s / cp) * b * heads / tp  # SDPA output + fp32 log-sum-exp
    total += 4 * f / tp  # SwiGLU input (gate, up)
    total += 2 * e + 2 * e / tp  # adapters' inputs
    if lora_dropout:
        total += e / d + e / tp
    if cp > 1:
        total += 2 * e * 2 * g * cp / tp
    return total


def model_flops_per_step(m, gbs: int) -> float:
    s, h, layers = m.seq_length, m.hidden_size, m.num_layers
    tokens = gbs * s
    p_layer = layer_gemm_params(h, m.num_attention_heads, m.num_query_groups, m.ffn_hidden_size)
    forward = layers * (2 * p_layer + 4 * s * h) + 2 * m.vocab_size * h
    backward = layers * (2 * p_layer + 8 * s * h) + 2 * m.vocab_size * h
    return tokens * (forward + backward) + 6 * lora_params(m) * tokens


def plan(cfg, world_size: int, weights: str = "fp8", reserve_gib: float = RESERVE_GIB) -> Plan:
    m, t, par = cfg.model, cfg.train, cfg.parallel
    tp, cp = par.tp, par.cp
    if world_size % (tp * cp * par.pp):
        raise ValueError(f"world size {world_size} is not divisible by tp*cp*pp = {tp * cp * par.pp}")
    dp = world_size // (tp * cp * par.pp)
    if t.global_batch_size % (dp * t.micro_batch_size):
        raise ValueError(f"GBS {t.global_batch_size} is not divisible by dp*mbs = {dp}*{t.micro_batch_size}")
    if weights not in GEMM_WEIGHT_BYTES:
        raise ValueError(f"weights {weights!r}: expected one of {sorted(GEMM_WEIGHT_BYTES)}")
    h = m.hidden_size
    gemm = m.num_layers * layer_gemm_params(h, m.num_attention_heads, m.num_query_groups, m.ffn_hidden_size) // tp
    embeddings = 2 * m.vocab_size * h // tp
    norms = (2 * m.num_layers + 1) * h
    lora = lora_params(m) // tp
    act = m.num_layers * layer_activation_bytes(m.seq_length, t.micro_batch_size, h, m.num_attention_heads,
                                                m.num_query_groups, m.ffn_hidden_size, tp, cp,
                                                sequence_parallel=t.sequence_parallel and tp > 1,
                                                lora_dropout=m.lora_dropout > 0)
    tokens = m.seq_length // cp * t.micro_batch_size
    largest_gemm = max(h * 3 * h, h * 2 * m.ffn_hidden_size) // tp
    one_layer = act / m.num_layers
    memory = {
        "base weights": (gemm * GEMM_WEIGHT_BYTES[weights] + 2 * (embeddings + norms)) / GIB,
        "lora state": 18 * lora / GIB,
        "activations": act / GIB,
        "logits": tokens * m.vocab_size / tp * (2 + 4) / GIB,
        "workspace": (one_layer + 2 * largest_gemm) / GIB,
        "reserve": reserve_gib,
    }
    return Plan(base_params=base_params(m), lora_params=lora_params(m), rank_base_params=gemm + embeddings + norms,
                rank_lora_params=lora, memory_gib=memory, flops_per_step=model_flops_per_step(m, t.global_batch_size))


def achieved(p: Plan, world_size: int, step_time_s: float, gpu: str, precision: str) -> tuple[float, float]:
    """(TFLOP/s per GPU, MFU) of a step time."""
    tflops = p.flops_per_step / step_time_s / world_size / 1e12
    return tflops, tflops / PEAK_TFLOPS[gpu][precision]


def main(argv=None) -> int:
    from models.llama2_70b_lora.config import FLAVOURS

    ap = argparse.ArgumentParser(prog="python -m models.llama2_70b_lora.plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavour", default="dgxh100_1x8", choices=sorted(FLAVOURS))
    ap.add_argument("--world-size", type=int, required=True)
    ap.add_argument("--gpu", default="H100", choices=sorted(USABLE_GIB))
    ap.add_argument("--weights", default="fp8", choices=sorted(GEMM_WEIGHT_BYTES))
    ap.add_argument("--step-time", type=float, default=0.0, help="seconds per step: print TFLOP/s and MFU")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = config_lib.apply_overrides(FLAVOURS[args.flavour](), args.overrides)
    p = plan(cfg, args.world_size, args.weights)
    print(f"{args.flavour} on {args.world_size} GPUs: tp {cfg.parallel.tp} cp {cfg.parallel.cp} "
          f"GBS {cfg.train.global_batch_size} MBS {cfg.train.micro_batch_size}, seq {cfg.model.seq_length}")
    print(f"base {p.base_params / 1e9:.2f}B parameters ({p.rank_base_params / 1e9:.2f}B per GPU), "
          f"LoRA {p.lora_params / 1e6:.2f}M ({p.rank_lora_params / 1e6:.2f}M per GPU)")
    for term, gib in p.memory_gib.items():
        print(f"  {term:<13} {gib:8.2f} GiB")
    usable = USABLE_GIB[args.gpu]
    print(f"  {'total':<13} {p.total_gib:8.2f} GiB of {usable} ({'fits' if p.total_gib <= usable else 'DOES NOT FIT'})")
    print(f"model FLOPs per step {p.flops_per_step / 1e15:.1f} PFLOP")
    if args.step_time > 0:
        precision = "fp8" if cfg.model.precision == "fp8" else "bf16"
        tflops, util = achieved(p, args.world_size, args.step_time, args.gpu, precision)
        print(f"at {args.step_time} s/step: {tflops:.0f} TFLOP/s per GPU, MFU {util:.1%} of {precision} peak")
    return 0 if p.total_gib <= usable else 1


if __name__ == "__main__":
    sys.exit(main())
