"""BERT's real flavours, built on CPU without data (BERT-large itself, its weights left undrawn: nothing here
reads a weight): the eval cadence, blocks and budget against the spec's rule and the RCP the flavour claims
(read from mlperf-logging's own rcps_bert.json, not from our config), the LAMB schedule against values
computed by hand, and every logged hyperparameter against what the built FusedLAMB really holds."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import replace
from unittest import mock

import mlperf_logging
import pytest
import torch
from conftest import build_logged

from kernels.optimizers import FusedLAMB
from models.bert import SPEC
from models.bert.benchmark import BertBenchmark, eval_interval_samples, lamb_lr
from runtime.data_parallel import unwrap

FLAVOURS = ("dgxh100_1x8", "dgxh100_8x8")
EVAL_SAMPLES = 10_000  # spec: eval_10k


def _rcps() -> dict:
    path = os.path.join(os.path.dirname(mlperf_logging.__file__), "rcp_checker", "training_4.0.0", "rcps_bert.json")
    return json.load(open(path))


def _rcp(batch: int) -> dict:
    found = [v for v in _rcps().values() if v["BS"] == batch]
    assert found, f"GBS {batch} is not an RCP point of rcps_bert.json"
    return found[0]


def _rule_interval(gbs: int) -> int:
    """The spec's FLOOR(0.05 * (230.23 * GBS + 3 000 000), 25 000): down to a multiple of 25 000."""
    return math.floor(0.05 * (230.23 * gbs + 3_000_000) / 25_000) * 25_000


@pytest.fixture(scope="module", params=FLAVOURS)
def built(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    cfg = SPEC.config(request.param)
    cfg.data.init_checkpoint = ""  # the phase-1 weights are data; no assertion reads a weight
    # 336M truncated-normal draws take ~40 s on these CPUs; the weights' values matter to no check here
    with mock.patch.object(torch.nn.init, "trunc_normal_", lambda t, *args, **kwargs: t):
        bench, logged = build_logged(SPEC, cfg, tmp)
    yield cfg, bench, logged
    bench.close()


def test_the_eval_cadence_is_the_rule(built):
    cfg, bench, logged = built
    gbs, total = logged["global_batch_size"], logged["opt_learning_rate_training_steps"]
    interval = _rule_interval(gbs)
    assert interval == {1536: 150_000, 4608: 200_000}[gbs]  # the formula, worked by hand
    assert eval_interval_samples(gbs) == interval
    blocks = bench.blocks()
    evals = [b.eval_metadata["epoch_num"] for b in blocks]
    # the k-th eval comes at the first step boundary at or past k * interval samples: not a step early, not late
    for k, samples in enumerate(evals[:-1], start=1):
        assert samples % gbs == 0
        assert k * interval <= samples < k * interval + gbs, (k, samples)
    within = [k for k in range(1, total * gbs // interval + 1) if math.ceil(k * interval / gbs) < total]
    assert len(evals) - 1 == len(within)  # every multiple of the cadence inside the budget, then the budget's end
    first_steps = {1536: [98, 196, 293], 4608: [44, 87, 131]}[gbs]  # ceil(k * interval / GBS), by hand
    assert evals[:3] == [step * gbs for step in first_steps]
    # and the budget: the last block ends where the learning rate reaches 0
    assert evals[-1] == total * gbs and sum(b.steps for b in blocks) == total
    # blocks chain in samples: each starts where the one before stopped, from 0 (no eval at sample 0)
    assert blocks[0].start_metadata == {"samples_count": 0} and evals[0] > 0
    for before, block in zip([None, *blocks], blocks):
        start = 0 if before is None else before.eval_metadata["epoch_num"]
        assert block.start_metadata["samples_count"] == start
        assert block.stop_metadata["samples_count"] == block.eval_metadata["epoch_num"] == start + block.steps * gbs
    assert cfg.data.eval_samples == EVAL_SAMPLES


def test_the_flavour_is_its_rcp_point(built):
    cfg, bench, logged = built
    rcp = _rcp(logged["global_batch_size"])
    hp = rcp["Hyperparams"]
    assert logged["opt_base_learning_rate"] == hp["opt_base_learning_rate"]
    assert logged["opt_lamb_epsilon"] == hp["opt_epsilon"]
    assert logged["opt_learning_rate_training_steps"] == hp["opt_learning_rate_training_steps"]
    assert logged["opt_learning_rate_warmup_steps"] == logged["num_warmup_steps"] == hp["num_warmup_steps"]
    assert logged["start_warmup_step"] == hp["start_warmup_step"]
    assert logged["opt_lamb_beta_1"] == hp["opt_lamb_beta_1"]
    assert logged["opt_lamb_beta_2"] == hp["opt_lamb_beta_2"]
    assert logged["opt_lamb_weight_decay_rate"] == hp["opt_lamb_weight_decay_rate"]
    # the RCP's runs converged (samples) within the budget, and an eval lands at or after each of them
    converged = rcp["Epochs to converge"]
    evals = [b.eval_metadata["epoch_num"] for b in bench.blocks()]
    assert max(converged) <= evals[-1]
    assert any(statistics.median(converged) <= e < statistics.median(converged) + _rule_interval(rcp["BS"])
               for e in evals)


def test_the_learning_rate_schedule_by_hand(built):
    _, bench, logged = built
    base, total = logged["opt_base_learning_rate"], logged["opt_learning_rate_training_steps"]
    # no warmup at these RCP points: the peak at step 0, then linear to 0 at training_steps
    expected = {1536: {0: 2e-3, 322: 2e-3 * 6 / 7, 1127: 1e-3, 2253: 2e-3 / 2254, 2254: 0.0},
                4608: {0: 3.5e-3, 350: 1.75e-3, 525: 8.75e-4, 699: 3.5e-3 / 700, 700: 0.0}}[logged["global_batch_size"]]
    assert set(expected) >= {0, total}
    for step, lr in expected.items():
        assert bench.learning_rate(step) == pytest.approx(lr, rel=1e-12, abs=1e-15), step
    assert bench.learning_rate(0) == base
    assert bench.learning_rate(total - 1) > 0


def _learning_rate_at(hp: dict):
    """The benchmark's own learning_rate under an RCP point's hyperparameters (it reads the config only)."""
    cfg = SPEC.config("dgxh100_1x8")
    cfg.optim = replace(cfg.optim, base_lr=hp["opt_base_learning_rate"], warmup_steps=hp["num_warmup_steps"],
                        start_warmup_step=hp["start_warmup_step"],
                        training_steps=hp["opt_learning_rate_training_steps"])
    bench = object.__new__(BertBenchmark)  # no model needed
    bench.cfg = cfg
    return bench.learning_rate


def test_the_warmup_is_the_reference_one():
    """RCP points that warm up: lr * (step - start_warmup_step) / warmup_steps while that is below warmup_steps,
    then the linear decay counted from step 0 (the reference's optimization.py)."""
    hp = _rcp(8192)["Hyperparams"]  # 287 warmup steps, entered 76 steps in; 600 steps
    lr, at = hp["opt_base_learning_rate"], _learning_rate_at(hp)
    assert (hp["num_warmup_steps"], hp["start_warmup_step"], hp["opt_learning_rate_training_steps"]) == (287, -76, 600)
    assert at(0) == pytest.approx(lr * 76 / 287)
    assert at(210) == pytest.approx(lr * 286 / 287)
    assert at(211) == pytest.approx(lr * (1 - 211 / 600))  # warmup over: the decayed value, not the peak
    assert at(599) == pytest.approx(lr / 600)
    hp = _rcp(3072)["Hyperparams"]  # 100 warmup steps from step 0; 1141 steps
    at = _learning_rate_at(hp)
    assert (hp["num_warmup_steps"], hp["start_warmup_step"], hp["opt_learning_rate_training_steps"]) == (100, 0, 1141)
    assert at(0) == 0.0
    assert at(50) == pytest.approx(1e-3)
    assert at(99) == pytest.approx(2e-3 * 99 / 100)
    assert at(100) == pytest.approx(2e-3 * (1 - 100 / 1141))
    assert lamb_lr(100, base_lr=2e-3, warmup_steps=100, start_warmup_step=0, training_steps=1141) == at(100)


def test_logged_hyperparameters_are_what_lamb_uses(built):
    cfg, bench, logged = built
    opt = bench.optimizer
    assert isinstance(opt, FusedLAMB) and logged["opt_name"] == "lamb"
    names = {id(p): n for n, p in unwrap(bench.model).named_parameters()}
    seen = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())  # every parameter, once
    for g in opt.param_groups:
        # the reference (exclude_from_weight_decay = LayerNorm, layer_norm, bias) decays everything else,
        # the embeddings included, and takes no trust ratio where it does not decay
        adapt = g["layer_adaptation"] if g["layer_adaptation"] is not None else g["weight_decay"] != 0
        for p in g["params"]:
            name = names[id(p)]
            decayed = "norm" not in name and "bias" not in name
            assert g["weight_decay"] == (logged["opt_lamb_weight_decay_rate"] if decayed else 0.0), name
            assert adapt == decayed, name
        assert g["betas"] == (logged["opt_lamb_beta_1"], logged["opt_lamb_beta_2"])
        assert g["eps"] == logged["opt_lamb_epsilon"]
        assert g["lr"] == logged["opt_base_learning_rate"]
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"embeddings.word.weight", "layers.0.qkv.weight", "heads.transform.weight"} <= decayed
    # one trust ratio per reference variable: the fused [q; k; v] projection splits into its three parts
    H = cfg.model.hidden_size
    segments = {names[id(p)]: s for g in opt.param_groups for p, s in zip(g["params"], g["segments"])}
    assert segments["layers.0.qkv.weight"] == segments["layers.23.qkv.bias"] == (H, H, H)
    assert opt.max_grad_norm == 1.0  # the reference's global-norm clip (not a logged key)
    assert logged["gradient_accumulation_steps"] == cfg.train.grad_accum
    assert logged["global_batch_size"] == bench.global_batch_size == bench.micro_batch * cfg.train.grad_accum
