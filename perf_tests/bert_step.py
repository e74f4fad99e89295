"""Train-step time of our BERT against HF transformers' BertForPreTraining: forward + loss + backward + LAMB.

Both models get the same optimizer (FusedLAMB over the same decay / no-decay groups) and the same
sequences (random tokens, lengths uniform in [8, seq]: about half padding, as Wikipedia at 512). HF runs
its own training path: padded rows with an attention mask, MLM logits at every position, the loss from
`labels` (-100 elsewhere). Ours gathers the masked positions before the vocabulary projection. Modes:

    fp32           both fp32, ours one sequence per row (the same rows as HF)
    fp32_packed    ours packs up to 2 sequences per row (fewer rows); HF as in fp32
    bf16_packed    fp32_packed under bf16 autocast, both

Each mode: `--warmup` untimed steps per model, then `--iters` timed steps alternating between the two
models; median ms, sequences/s and ours / HF (< 1 means ours is faster).

    python perf_tests/bert_step.py [--hidden 256 --layers 4 --heads 4 --seq 128 --batch 16 --iters 5]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers  # noqa: E402

from kernels.lamb_ref import lamb_param_groups  # noqa: E402
from kernels.optimizers import FusedLAMB  # noqa: E402
from models.bert.model import BertModelConfig, build_bert, pretraining_loss  # noqa: E402
from models.bert.state_dict_adapter import from_hf, load_into  # noqa: E402
from pipelines.bert.packing import build_batch, random_sequences  # noqa: E402

MODES = ("fp32", "fp32_packed", "bf16_packed")


def hf_inputs(sequences, seq: int) -> dict[str, torch.Tensor]:
    n = len(sequences)
    ids, segments, mask = (torch.zeros(n, seq, dtype=torch.long) for _ in range(3))
    labels = torch.full((n, seq), -100, dtype=torch.long)
    for i, (tokens, b_start, positions, masked_ids, _) in enumerate(sequences):
        ids[i, :len(tokens)] = torch.as_tensor(tokens)
        segments[i, b_start:len(tokens)] = 1
        mask[i, :len(tokens)] = 1
        labels[i, torch.as_tensor(positions, dtype=torch.long)] = torch.as_tensor(masked_ids)
    nsp = torch.as_tensor([s[4] for s in sequences])
    return {"input_ids": ids, "token_type_ids": segments, "attention_mask": mask, "labels": labels,
            "next_sentence_label": nsp}


def make_steps(cfg: BertModelConfig, mode: str, sequences, seq: int, predictions: int, device: torch.device):
    hf = transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, layer_norm_eps=cfg.layer_norm_eps)).train()
    ours = build_bert(cfg).train()
    load_into(ours, from_hf(hf.state_dict()), "hf")  # same weights, so the same numerics to optimise
    hf, ours = hf.to(device), ours.to(device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if mode.startswith("bf16") \
        else contextlib.nullcontext
    batch = build_batch(sequences, seq, predictions, max_per_row=2 if mode.endswith("packed") else 1).to(device)
    inputs = {k: v.to(device) for k, v in hf_inputs(sequences, seq).items()}

    def optimizer(model):
        return FusedLAMB(lamb_param_groups(model, 0.01), lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)

    hf_opt, our_opt = optimizer(hf), optimizer(ours)

    def hf_step():
        with autocast():
            loss = hf(**inputs).loss
        loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    def our_step():
        with autocast():
            mlm, nsp = ours(**batch.model_inputs())
        pretraining_loss(mlm, batch.mlm_labels, nsp, batch.nsp_labels).backward()
        our_opt.step()
        our_opt.zero_grad(set_to_none=True)

    return {"ours": our_step, "hf": hf_step}, batch.num_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--predictions", type=int, default=20)
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 keeps the default")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--device", default="cpu", help="cpu or cuda (BERT-large on a GPU: --hidden 1024 --layers 24 "
                                                   "--heads 16 --seq 512 --predictions 76 --batch 48)")
    a = p.parse_args()
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = BertModelConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_layers=a.layers, num_heads=a.heads,
                          intermediate_size=4 * a.hidden, max_position_embeddings=a.seq)
    sequences = random_sequences(np.random.default_rng(0), a.batch, a.vocab, a.seq, a.predictions)
    tokens = sum(len(s[0]) for s in sequences)

    print(f"# bert_step  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads, device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(f"hidden {a.hidden}, layers {a.layers}, heads {a.heads}, vocab {a.vocab}; {a.batch} sequences of "
          f"<= {a.seq} tokens ({tokens} real tokens, {tokens / (a.batch * a.seq):.0%} of the padded rows); "
          f"warmup {a.warmup}, timed {a.iters} (median)")
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
    print("| mode | our rows | ours ms | ours seq/s | HF ms | HF seq/s | ours / HF |")
    print("|---|---|---|---|---|---|---|")
    for mode in a.modes.split(","):
        torch.manual_seed(0)
        steps, rows = make_steps(cfg, mode, sequences, a.seq, a.predictions, device)
        times = {name: [] for name in steps}
        for _name, step in steps.items():
            for _ in range(a.warmup):
                step()
            sync()
        # Alternate step by step, so load from other processes hits both models alike.
        for _ in range(a.iters):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                sync()  # a GPU step is timed to its end, not to its last launch
                times[name].append(time.perf_counter() - start)
        ours, theirs = statistics.median(times["ours"]), statistics.median(times["hf"])
        print(f"| {mode} | {rows} | {ours * 1e3:.0f} | {a.batch / ours:.1f} | {theirs * 1e3:.0f} | "
              f"{a.batch / theirs:.1f} | {ours / theirs:.3f} |", flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
