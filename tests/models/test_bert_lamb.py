"""The BERT optimizer against hand-written numpy: LAMB steps (groups, clipping, trust ratios), the
warmup + linear-decay schedule with start_warmup_step, the eval cadence and the blocks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kernels.lamb_ref import lamb_param_groups
from kernels.optimizers import FusedLAMB
from models.bert.benchmark import BertBenchmark, eval_interval_samples, lamb_lr
from models.bert.config import FLAVOURS, dgxh100_1x8
from models.bert.model import BertModelConfig, build_bert, pretraining_loss
from pipelines.bert.packing import build_batch, random_sequences

TINY = BertModelConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                       max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)


def numpy_lamb_step(weights, grads, m, v, decay, t, *, lr, beta1, beta2, eps, weight_decay, max_norm):
    """One LAMB step in float64, in place, from the paper's Algorithm 2 with the MLPerf reference's
    choices: global-norm clip to max_norm, bias-corrected moments, weight decay and trust ratio only for
    the decayed tensors (matrices), ratio 1 when a norm is 0."""
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    scale = max_norm / max(norm, max_norm)
    for i, (w, g) in enumerate(zip(weights, grads)):
        g = g * scale
        m[i] = beta1 * m[i] + (1 - beta1) * g
        v[i] = beta2 * v[i] + (1 - beta2) * g * g
        update = (m[i] / (1 - beta1 ** t)) / (np.sqrt(v[i] / (1 - beta2 ** t)) + eps)
        ratio = 1.0
        if decay[i]:
            update = update + weight_decay * w
            w_norm, u_norm = np.linalg.norm(w), np.linalg.norm(update)
            ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        weights[i] = w - lr * ratio * update


@pytest.mark.parametrize("grad_scale", [1.0, 1e-3])  # clipping active (norm >> 1) and inactive
def test_fused_lamb_matches_numpy_on_bert(grad_scale):
    torch.manual_seed(0)
    model = build_bert(TINY)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = lamb_param_groups(model, weight_decay=0.01)
    decayed = {names[id(p)] for p in groups[0]["params"]}
    # Decay (and layer adaptation) for matrices and embeddings; none for LayerNorm and biases.
    assert all(n.endswith("weight") and "norm" not in n for n in decayed)
    assert {n for n in names.values() if n not in decayed} == \
        {n for n, p in model.named_parameters() if p.ndim == 1}
    hyper = dict(lr=3e-3, beta1=0.66, beta2=0.996, eps=1e-6, weight_decay=0.01, max_norm=1.0)
    optimizer = FusedLAMB(groups, lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"],
                          weight_decay=0.01, max_grad_norm=1.0)
    params = [p for g in groups for p in g["params"]]
    decay = [names[id(p)] in decayed for p in params]
    weights = [p.detach().double().numpy().copy() for p in params]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    rng = np.random.default_rng(1)
    for t in (1, 2, 3):
        batch = build_batch(random_sequences(rng, 4, TINY.vocab_size, 30, 5), 32, 5)
        mlm, nsp = model(**batch.model_inputs())
        (pretraining_loss(mlm, batch.mlm_labels, nsp, batch.nsp_labels) * 1000 * grad_scale).backward()
        grads = [p.grad.double().numpy().copy() for p in params]
        if t == 1:
            norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
            assert (norm > 10) == (grad_scale == 1.0), norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        numpy_lamb_step(weights, grads, m, v, decay, t, **hyper)
        for p, w, name in zip(params, weights, (names[id(p)] for p in params)):
            np.testing.assert_allclose(p.detach().double().numpy(), w, rtol=2e-5, atol=1e-7, err_msg=name)


def test_lr_schedule_is_the_reference_formula():
    # README example: lr 0.00288293, warmup 287, start_warmup_step -76, 600 steps
    lr = dict(base_lr=0.00288293, warmup_steps=287, start_warmup_step=-76, training_steps=600)
    assert lamb_lr(0, **lr) == pytest.approx(0.00288293 * 76 / 287)
    assert lamb_lr(210, **lr) == pytest.approx(0.00288293 * 286 / 287)  # last warmup step
    assert lamb_lr(211, **lr) == pytest.approx(0.00288293 * (1 - 211 / 600))  # decay from step 0 on
    assert lamb_lr(600, **lr) == 0.0 and lamb_lr(650, **lr) == 0.0
    no_warmup = dict(base_lr=2e-3, warmup_steps=0, start_warmup_step=0, training_steps=2254)
    assert lamb_lr(0, **no_warmup) == 2e-3
    assert lamb_lr(1127, **no_warmup) == pytest.approx(1e-3)


def test_eval_cadence_follows_the_rule():
    assert [eval_interval_samples(b) for b in (256, 768, 1536, 2048, 3072, 4096, 8192)] == \
        [150_000, 150_000, 150_000, 150_000, 175_000, 175_000, 225_000]
    cfg = dgxh100_1x8()
    blocks = BertBenchmark.blocks(SimpleNamespace(cfg=cfg, global_batch_size=1536))
    ends = np.cumsum([b.steps for b in blocks])
    assert ends[0] == math.ceil(150_000 / 1536) and ends[1] == math.ceil(300_000 / 1536)
    assert ends[-1] == cfg.optim.training_steps == 2254
    assert [b.eval_metadata["epoch_num"] for b in blocks] == [int(e) * 1536 for e in ends]
    assert [b.start_metadata["samples_count"] for b in blocks] == [0] + [int(e) * 1536 for e in ends[:-1]]


def test_flavours_build_and_divide():
    for name, make in FLAVOURS.items():
        cfg = make()
        assert cfg.run.target >= 0.72, name  # the compliance checker's floor, debug included
        assert cfg.train.global_batch_size % cfg.train.grad_accum == 0
