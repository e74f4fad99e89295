"""Train-step time of our Llama-2 LoRA (megatron-core, models/llama2_70b_lora) against HF transformers'
LlamaForCausalLM + PEFT LoRA, and on a GPU the tokens/s of a real-width layer stack.

CPU (default): the same small GQA Llama (HF's weights loaded into ours through the HF checkpoint reader),
LoRA r 16 / alpha 32 / dropout 0.1 on the attention (ours: fused QKV + output projection; PEFT: q, k, v, o),
the same batch; one step = forward, the HF Trainer's loss (per-sequence token mean, averaged), backward,
clip to 0.3 and AdamW on the LoRA parameters. `--warmup` untimed steps each, then `--iters` timed steps
alternating between the two; median ms, tokens/s and ours / HF (< 1: ours is faster), in the same run.

    python perf_tests/llama2_step.py [--hidden 256 --layers 4 --heads 8 --groups 2 --seq 512 --batch 2]

GPU (`--gpu-stack`): `--layers` megatron-core layers of Llama-2-70B width (8192, 64 heads / 8 groups, FFN
28672) at sequence 8192, TP 1, frozen base with the adapters, bf16 or FP8 base GEMMs; forward + backward of one
sequence timed with CUDA events. Tokens/s per GPU of the whole 80-layer model is estimated as the stack's
tokens/s x layers / 80 (embedding and output layer left out); NVIDIA's v4.0 8 x H100 run does about 2 230
tokens/s per GPU (spec). Needs CUDA: without it the mode says so and exits 2. No GPU figure is recorded yet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NVIDIA_TOKENS_PER_GPU = 2230.0  # v4.1 8 x H100 (spec: 0.27 sequences/s per GPU)


def _hf_loss(model, tokens, labels):
    return torch.stack([model(input_ids=tokens[i:i + 1], labels=labels[i:i + 1]).loss
                        for i in range(tokens.shape[0])]).mean()


def _our_loss(model, tokens, targets, mask):
    per_token = model(tokens, None, None, labels=targets)
    return ((per_token * mask).sum(1) / mask.sum(1)).mean()


def _step(loss_fn, params, optimizer):
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 0.3)
    optimizer.step()
    return float(loss.detach())


def cpu_compare(args) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.llama2_70b_lora.config import ModelConfig, TrainConfig
    from models.llama2_70b_lora.hf_checkpoint import load_hf_checkpoint
    from models.llama2_70b_lora.model import build_model, transformer_config
    from runtime.mcore.parallelize import destroy_megatron, init_megatron
    from runtime.parallel import ParallelLayout

    torch.manual_seed(0)
    hf_cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.groups, max_position_embeddings=args.seq, tie_word_embeddings=False,
                         rms_norm_eps=1e-5)
    hf = LlamaForCausalLM(hf_cfg)
    m = ModelConfig(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                    num_query_groups=args.groups, ffn_hidden_size=args.ffn, seq_length=args.seq,
                    vocab_size=args.vocab, precision="fp32")
    layout = ParallelLayout(1, 0)
    init_megatron(layout, 1, seed=0)
    ours = build_model(m, transformer_config(m, TrainConfig(sequence_parallel=False), tp=1))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        load_hf_checkpoint(tmp, ours, m, tp=1, tp_rank=0)
    peft_model = get_peft_model(hf, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1,
                                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    labels = tokens.clone()
    labels[:, : args.seq // 2] = -100  # the prompt half carries no loss, as GovReport's documents
    targets = torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], 1)
    mask = torch.cat([(labels[:, 1:] != -100).float(), torch.zeros(args.batch, 1)], 1)

    runs = {}
    for name, model, loss_fn in (
            ("ours", ours, lambda: _our_loss(ours, tokens, targets, mask)),
            ("hf+peft", peft_model, lambda: _hf_loss(peft_model, tokens, labels))):
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        runs[name] = (loss_fn, params, torch.optim.AdamW(params, lr=4e-4, weight_decay=1e-4))
    for fn, params, opt in runs.values():
        for _ in range(args.warmup):
            _step(fn, params, opt)
    times = {name: [] for name in runs}
    for _ in range(args.iters):
        for name, (fn, params, opt) in runs.items():
            t0 = time.perf_counter()
            _step(fn, params, opt)
            times[name].append(time.perf_counter() - t0)
    destroy_megatron()
    tokens_per_step = args.batch * args.seq
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"Llama LoRA train step on CPU ({torch.get_num_threads()} threads): hidden {args.hidden}, "
          f"{args.layers} layers, {args.heads} heads / {args.groups} groups, FFN {args.ffn}, vocab {args.vocab}, "
          f"{args.batch} x {args.seq} tokens, {args.iters} iterations")
    for name, t in med.items():
        print(f"  {name:<8} {t * 1e3:9.1f} ms   {tokens_per_step / t:9.0f} tokens/s")
    print(f"  ours / hf+peft: {med['ours'] / med['hf+peft']:.2f} (load average at the end "
          f"{os.getloadavg()[0]:.1f})")


def gpu_stack(args) -> int:
    if not torch.cuda.is_available():
        print("--gpu-stack needs CUDA", file=sys.stderr)
        return 2
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.transformer.transformer_block import TransformerBlock

    from models.llama2_70b_lora.config import dgxh100_1x8
    from models.llama2_70b_lora.model import layer_spec, te_available, transformer_config
    from runtime.mcore.fp8_linear import update_fp8_scales
    from runtime.mcore.parallelize import init_megatron
    from runtime.parallel import ParallelLayout

    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
    init_megatron(ParallelLayout(1, 0), 1, seed=0)
    cfg = dgxh100_1x8()
    use_te = te_available()
    for precision in args.precision.split(","):
        m = replace(cfg.model, num_layers=args.layers, precision=precision)
        config = transformer_config(m, replace(cfg.train, sequence_parallel=False), tp=1, use_te=use_te)
        block = TransformerBlock(config, layer_spec(m, use_te)).cuda()
        for name, p in block.named_parameters():
            p.requires_grad_(".adapter.lora_" in name)
        s, h = m.seq_length, m.hidden_size
        x = torch.randn(s, 1, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        rope = RotaryEmbedding(h // m.num_attention_heads, 1.0, rotary_base=int(m.rope_theta)).cuda()(s)
        grad = torch.randn_like(x)
        times = []
        for i in range(args.warmup + args.iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            block(x, None, rotary_pos_emb=rope).backward(grad)
            end.record()
            torch.cuda.synchronize()
            update_fp8_scales([block])
            if i >= args.warmup:
                times.append(start.elapsed_time(end) / 1e3)
        t = statistics.median(times)
        stack = s / t
        print(f"{precision}: {args.layers} layers x 8192 wide, seq {s}: {t * 1e3:.1f} ms fwd+bwd, "
              f"{stack:.0f} tokens/s; whole 80-layer model ~{stack * args.layers / 80:.0f} tokens/s per GPU "
              f"(NVIDIA v4.1 H100: {NVIDIA_TOKENS_PER_GPU:.0f}); peak memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        del block
        torch.cuda.empty_cache()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    p.add_argument("--gpu-stack", action="store_true")
    p.add_argument("--precision", default="bf16,fp8")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu_stack:
        return gpu_stack(args)
    cpu_compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
