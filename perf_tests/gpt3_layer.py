"""Tokens/s and model TFLOP/s per GPU of a GPT-3 175B layer stack at real width, bf16 and FP8.

One GPU, TP=1: `--layers` megatron-core TransformerLayers (TE spec when Transformer Engine imports,
else the local spec, whose FP8 GEMMs are torch._scaled_mm's: runtime/mcore/fp8_linear.py) at d_model
12288, 96 heads, FFN 49152, sequence 2048, micro-batch `--mbs`; forward + backward per micro-batch, timed
with CUDA events after `--warmup` iterations.
Model FLOPs per layer per micro-batch (fwd + bwd, no recompute): 72 * b * s * h^2 * (1 + s / (6h))
(Narayanan et al. 2021 without the logit term). Peaks: models/gpt3/plan.py PEAK_TFLOPS.

    python perf_tests/gpt3_layer.py [--layers 2] [--mbs 1] [--iters 10] [--precision bf16,fp8] [--gpu H100]

Needs CUDA; on a machine without it the script says so and exits 2. Write what it prints to
perf_tests/results/gpt3_layer_<gpu>.md; no figures are recorded here until it has run on one.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def layer_flops(b: int, s: int, h: int) -> float:
    return 72 * b * s * h * h * (1 + s / (6 * h))


def measure(precision: str, layers: int, mbs: int, iters: int, warmup: int) -> tuple[float, float]:
    """(seconds per fwd+bwd micro-batch, peak memory GiB) for one precision."""
    from dataclasses import replace

    from megatron.core.transformer.transformer_block import TransformerBlock

    from models.gpt3.config import dgxh100_64x8
    from models.gpt3.model import layer_spec, te_available, transformer_config
    from runtime.mcore.fp8_linear import update_fp8_scales

    cfg = dgxh100_64x8()
    use_te = te_available()
    m = replace(cfg.model, num_layers=layers, precision=precision)
    t = replace(cfg.train, sequence_parallel=False, virtual_pp=1, recompute="none")
    config = transformer_config(m, t, tp=1, pp=1, use_te=use_te)
    block = TransformerBlock(config, layer_spec(m, use_te)).cuda()
    s, h = m.seq_length, m.hidden_size
    x = torch.randn(s, mbs, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mask = None if use_te else torch.triu(torch.ones(s, s, dtype=torch.bool, device="cuda"), 1)[None, None]
    grad = torch.randn_like(x)
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + iters):
        if i == warmup:
            torch.cuda.synchronize()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        out = block(x, attention_mask=mask)
        out.backward(grad)
        x.grad = None
        for p in block.parameters():
            p.grad = None
        update_fp8_scales([block])  # part of a training step on the torch FP8 path (no-op otherwise)
    stop.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(stop) / 1000 / iters
    del block
    return seconds, torch.cuda.max_memory_allocated() / 1024 ** 3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--mbs", type=int, default=1)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", default="bf16,fp8")
    p.add_argument("--gpu", default="", help="H100 or H200 for the MFU column; default from the device name")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpt3_layer: needs a CUDA GPU (none here); nothing measured", file=sys.stderr)
        return 2
    from models.gpt3.plan import PEAK_TFLOPS
    from runtime.mcore.layers import te_available
    from runtime.mcore.parallelize import init_megatron
    from runtime.parallel import ParallelLayout

    name = torch.cuda.get_device_name()
    gpu = args.gpu or ("H200" if "H200" in name else "H100")
    init_megatron(ParallelLayout(1, 0), 1, 1234)
    print(f"# GPT-3 layer stack on {name}: {args.layers} layers, h=12288, s=2048, mbs={args.mbs}, "
          f"TE={'yes' if te_available() else 'no (local spec; fp8 through torch._scaled_mm)'}, "
          f"torch {torch.__version__}\n")
    print("| precision | ms / micro-batch | tokens/s per GPU | model TFLOP/s | % of dense peak | peak mem GiB |")
    print("|---|---|---|---|---|---|")
    for precision in args.precision.split(","):
        seconds, mem = measure(precision, args.layers, args.mbs, args.iters, args.warmup)
        flops = layer_flops(args.mbs, 2048, 12288) * args.layers
        tflops = flops / seconds / 1e12
        # Tokens/s for the whole 96-layer model: the stack's time scaled to 96 layers.
        tokens = args.mbs * 2048 / (seconds * 96 / args.layers)
        peak = PEAK_TFLOPS[gpu]["fp8" if precision == "fp8" else "bf16"]
        print(f"| {precision} | {seconds * 1e3:.2f} | {tokens:.0f} | {tflops:.1f} | {100 * tflops / peak:.1f} "
              f"| {mem:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
