"""One rank of the HF / PEFT parity check (started by test_llama2_hf_parity.py via spawn_ranks).

    python tests/models/llama2_hf_worker.py HF_DIR FUSED_DIR SEQUENCE_PARALLEL

HF_DIR holds a small LlamaForCausalLM saved by transformers (separate q/k/v), FUSED_DIR the same weights in the
MLPerf model's fused-qkv layout. At TP = world size this rank builds our model, loads each directory
through models/llama2_70b_lora/hf_checkpoint.py and compares the TP-gathered logits with HF's. Then LoRA:
PEFT on HF's q/k/v/o_proj (r 16, alpha 32, no dropout) with the same A on q, k and v, which is one LoRA on
the fused QKV with B = [B_q; B_k; B_v]; the same adapter weights in ours, whose B rows are arranged here by
hand in megatron's per-query-group order and sliced to this rank. Both compute the loss as the HF Trainer
does (each sequence's token-mean, averaged) and backpropagate; prints one JSON line of the largest
differences (logits, loss, every LoRA gradient shard).
"""

import json
import os
import sys

import torch
import torch.distributed as dist

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.llama2_70b_lora.config import ModelConfig, TrainConfig  # noqa: E402
from models.llama2_70b_lora.hf_checkpoint import load_hf_checkpoint, read_hf_config  # noqa: E402
from models.llama2_70b_lora.model import build_model, transformer_config  # noqa: E402
from runtime.mcore.parallelize import init_megatron  # noqa: E402
from runtime.parallel import ParallelLayout  # noqa: E402

RANK, ALPHA = 16, 32.0


def megatron_qkv_rows(q, k, v, heads, groups):
    """Rows of q/k/v ([heads*d, ...], [groups*d, ...]) in megatron's order: per group [its q heads; k; v]."""
    d = q.shape[0] // heads
    per = heads // groups
    return torch.cat([torch.cat([q[g * per * d:(g + 1) * per * d], k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]])
                      for g in range(groups)])


def gather_last(x, tp):
    if tp == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(tp)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


def main(hf_dir, fused_dir, sequence_parallel):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    dist.init_process_group("gloo")
    tp, rank = dist.get_world_size(), dist.get_rank()
    layout = ParallelLayout(world_size=tp, rank=rank, tp=tp)
    init_megatron(layout, 1, seed=0)
    hf_cfg = read_hf_config(hf_dir)
    heads, groups, hidden = hf_cfg["num_attention_heads"], hf_cfg["num_key_value_heads"], hf_cfg["hidden_size"]
    m = ModelConfig(num_layers=hf_cfg["num_hidden_layers"], hidden_size=hidden, num_attention_heads=heads,
                    num_query_groups=groups, ffn_hidden_size=hf_cfg["intermediate_size"], seq_length=32,
                    vocab_size=hf_cfg["vocab_size"], precision="fp32", lora_rank=RANK, lora_alpha=ALPHA,
                    lora_dropout=0.0)
    config = transformer_config(m, TrainConfig(sequence_parallel=sequence_parallel), tp=tp)
    ours = build_model(m, config)

    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, m.vocab_size, (2, m.seq_length), generator=g)
    labels = tokens.clone()
    labels[0, :10] = -100  # prompt positions carry no loss; different counts per sequence
    labels[1, :20] = -100

    hf = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        reference = hf(input_ids=tokens).logits
    result = {}
    ours.eval()
    for name, directory in (("logits", hf_dir), ("logits_fused", fused_dir)):
        load_hf_checkpoint(directory, ours, m, tp=tp, tp_rank=rank)
        with torch.no_grad():
            logits = gather_last(ours(tokens, None, None), tp)
        result[name] = float((logits - reference).abs().max())
    result["logits_scale"] = float(reference.abs().max())

    # The same adapter in both: A shared by q/k/v (one fused LoRA), every B non-zero so its path counts.
    a_qkv, a_o = (torch.randn(RANK, hidden, generator=g) * 0.1 for _ in range(2))
    d = hidden // heads
    b_q, b_k, b_v = (torch.randn(n * d, RANK, generator=g) * 0.1 for n in (heads, groups, groups))
    b_o = torch.randn(hidden, RANK, generator=g) * 0.1
    peft_model = get_peft_model(hf, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, bias="none",
                                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    layers = peft_model.base_model.model.model.layers
    with torch.no_grad():
        for layer in layers:
            for proj, b in (("q_proj", b_q), ("k_proj", b_k), ("v_proj", b_v), ("o_proj", b_o)):
                module = getattr(layer.self_attn, proj)
                module.lora_A["default"].weight.copy_(a_o if proj == "o_proj" else a_qkv)
                module.lora_B["default"].weight.copy_(b)
    b_qkv = megatron_qkv_rows(b_q, b_k, b_v, heads, groups)
    rows_qkv, cols_o, rows_r = b_qkv.shape[0] // tp, hidden // tp, RANK // tp
    with torch.no_grad():
        for layer in ours.decoder.layers:
            qkv, proj = layer.self_attention.linear_qkv.adapter, layer.self_attention.linear_proj.adapter
            qkv.lora_a.copy_(a_qkv[rank * rows_r:(rank + 1) * rows_r])
            qkv.lora_b.copy_(b_qkv[rank * rows_qkv:(rank + 1) * rows_qkv])
            proj.lora_a.copy_(a_o[:, rank * cols_o:(rank + 1) * cols_o])
            proj.lora_b.copy_(b_o[rank * cols_o:(rank + 1) * cols_o])

    peft_model.train()
    hf_loss = torch.stack([peft_model(input_ids=tokens[i:i + 1], labels=labels[i:i + 1]).loss
                           for i in range(tokens.shape[0])]).mean()
    hf_loss.backward()

    ours.train()
    targets = torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], dim=1)
    mask = torch.cat([(labels[:, 1:] != -100).float(), torch.zeros_like(tokens[:, :1]).float()], dim=1)
    per_token = ours(tokens, None, None, labels=targets)
    loss = ((per_token * mask).sum(1) / mask.sum(1)).mean()
    loss.backward()
    result["loss"] = float(loss)
    result["hf_loss"] = float(hf_loss)

    worst, scale = 0.0, 0.0
    for hf_layer, layer in zip(layers, ours.decoder.layers):
        attn = hf_layer.self_attn
        grad = {p: (getattr(attn, p).lora_A["default"].weight.grad, getattr(attn, p).lora_B["default"].weight.grad)
                for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
        expected = {
            # one A feeds q, k and v: its gradient is the sum of PEFT's three
            "qkv_a": (grad["q_proj"][0] + grad["k_proj"][0] + grad["v_proj"][0])[rank * rows_r:(rank + 1) * rows_r],
            "qkv_b": megatron_qkv_rows(grad["q_proj"][1], grad["k_proj"][1], grad["v_proj"][1], heads,
                                       groups)[rank * rows_qkv:(rank + 1) * rows_qkv],
            "o_a": grad["o_proj"][0][:, rank * cols_o:(rank + 1) * cols_o],
            "o_b": grad["o_proj"][1][rank * cols_o:(rank + 1) * cols_o]}
        got = {"qkv_a": layer.self_attention.linear_qkv.adapter.lora_a.grad,
               "qkv_b": layer.self_attention.linear_qkv.adapter.lora_b.grad,
               "o_a": layer.self_attention.linear_proj.adapter.lora_a.grad,
               "o_b": layer.self_attention.linear_proj.adapter.lora_b.grad}
        for key in expected:
            worst = max(worst, float((got[key] - expected[key]).abs().max()))
            scale = max(scale, float(expected[key].abs().max()))
    base_grads = [n for n, p in ours.named_parameters() if p.grad is not None and ".adapter." not in n]
    result.update(grad=worst, grad_scale=scale, base_grads=len(base_grads), rank=rank)
    print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] == "1")
