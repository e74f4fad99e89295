"""DLRMv2's real flavours on CPU without data. Their 26B-parameter tables cannot be built here, so each flavour
is built with the debug model in place of its own and every other section as the flavour has it: the blocks
come from the benchmark class itself (they depend on the data and train sections only), and the optimizers
are built from the flavour's optim section. The blocks are checked against the spec's rule (20 evals per
epoch, every FLOOR(train samples / (GBS * 20)) steps, epoch_num the fraction of the epoch), the optimizer
against the RCP the flavour claims (read from mlperf-logging's rcps_dlrm_dcnv2.json, not from our config),
and every logged hyperparameter against what the dense and the tables' fused Adagrad really hold."""

from __future__ import annotations

import json
import os

import mlperf_logging
import pytest
import torch
from conftest import build_logged

from models.dlrm_dcnv2 import SPEC
from models.dlrm_dcnv2.config import debug
from models.dlrm_dcnv2.parallelize import unwrap

FLAVOURS = ("dgxh100_1x8", "dgxh200_1x8", "dgxh100_8x8")
TRAIN_SAMPLES = 4_195_197_692  # spec: days 0-22
EVAL_SAMPLES = 89_137_319  # spec: ceil(N_23 / 2); closed_dlrm_dcnv2.yaml checks it
# FLOOR(N / GBS) steps per epoch (last partial batch dropped) and FLOOR(N / (GBS * 20)) per eval, by hand
STEPS = {55296: (75868, 3793), 135168: (31036, 1551)}


def _rcp(batch: int) -> dict:
    path = os.path.join(os.path.dirname(mlperf_logging.__file__), "rcp_checker", "training_4.0.0",
                        "rcps_dlrm_dcnv2.json")
    found = [v for v in json.load(open(path)).values() if v["BS"] == batch]
    assert found, f"GBS {batch} is not an RCP point of rcps_dlrm_dcnv2.json"
    return found[0]


@pytest.fixture(scope="module", params=FLAVOURS)
def built(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    cfg = SPEC.config(request.param)
    small = debug()
    cfg.model, cfg.sharding = small.model, small.sharding  # the real tables do not fit on a CPU
    cfg.data.prefetch = 0
    bench, logged = build_logged(SPEC, cfg, tmp)
    yield cfg, bench, logged
    bench.close()


def test_twenty_evals_per_epoch_and_the_tail(built):
    cfg, bench, logged = built
    assert (cfg.data.train_samples, cfg.data.eval_samples) == (TRAIN_SAMPLES, EVAL_SAMPLES)
    gbs = logged["global_batch_size"]
    per_epoch, per_eval = STEPS[gbs]
    assert (per_epoch, per_eval) == (TRAIN_SAMPLES // gbs, TRAIN_SAMPLES // (gbs * 20))
    blocks = bench.blocks()
    assert [b.steps for b in blocks[:20]] == [per_eval] * 20
    # the epoch's tail: the steps past the 20th eval, evaluated at the end of the epoch
    tail = per_epoch - 20 * per_eval
    assert tail > 0 and len(blocks) == 21 and blocks[20].steps == tail
    assert sum(b.steps for b in blocks) == per_epoch and per_epoch * gbs <= TRAIN_SAMPLES < (per_epoch + 1) * gbs
    # epoch_num: steps done / steps per epoch (the reference's it / len(train_dataloader)), 0.05, 0.10, ...
    for k, b in enumerate(blocks[:20], start=1):
        assert b.eval_metadata["epoch_num"] == pytest.approx(k * per_eval / per_epoch, abs=1e-6)
        assert b.eval_metadata["epoch_num"] == pytest.approx(0.05 * k, abs=20 / per_epoch)
        assert b.eval_metadata["epoch_num"] <= 0.05 * k
    assert blocks[20].eval_metadata["epoch_num"] == 1.0
    # blocks chain in samples from 0
    done = 0
    for b in blocks:
        assert b.start_metadata == {"samples_count": done * gbs}
        done += b.steps
        assert b.stop_metadata == {"samples_count": done * gbs}
    # every RCP run's convergence point lies within the epoch: some eval lands at or just past it
    evals = [b.eval_metadata["epoch_num"] for b in blocks]
    for epochs in set(_rcp(gbs)["Epochs to converge"]):
        assert any(epochs - 1e-3 <= e <= epochs + 0.05 for e in evals), epochs


def test_the_flavour_is_its_rcp_point(built):
    _, _, logged = built
    hp = _rcp(logged["global_batch_size"])["Hyperparams"]
    for key, value in hp.items():
        assert logged[key] == value, key  # opt_name, the lr, and the fixed Adagrad / schedule values
    assert logged["gradient_accumulation_steps"] == 1


def test_logged_hyperparameters_are_what_the_optimizers_use(built):
    _, bench, logged = built
    model = unwrap(bench.model)
    dense = bench.dense_optimizer
    in_dense = {id(p) for g in dense.param_groups for p in g["params"]}
    fused = {id(p) for p in model.embeddings.parameters()}
    # every parameter under exactly one optimizer: the tables' fused Adagrad or the dense one
    assert all((id(p) in in_dense) != (id(p) in fused) for p in model.parameters())
    assert all(hasattr(p, "_in_backward_optimizers") == (id(p) in fused) for p in model.parameters())
    for g in dense.param_groups:
        assert g["lr"] == logged["opt_base_learning_rate"]
        assert g["lr_decay"] == logged["opt_adagrad_learning_rate_decay"]
        assert g["weight_decay"] == logged["opt_weight_decay"]
        assert g["eps"] == logged["opt_adagrad_epsilon"]
        assert g["initial_accumulator_value"] == logged["opt_adagrad_initial_accumulator_value"]
    sums = [s["sum"] for s in dense.state_dict()["state"].values()]
    assert sums and all(bool((s == logged["opt_adagrad_initial_accumulator_value"]).all()) for s in sums)
    for name, p in model.embeddings.named_parameters():
        opt = p._in_backward_optimizers[0]
        assert isinstance(opt, torch.optim.Adagrad), name
        (g,) = opt.param_groups
        assert g["lr"] == logged["opt_base_learning_rate"], name
        assert g["eps"] == logged["opt_adagrad_epsilon"], name
        assert g["lr_decay"] == logged["opt_adagrad_learning_rate_decay"], name
        assert g["weight_decay"] == logged["opt_weight_decay"], name
        assert g["initial_accumulator_value"] == logged["opt_adagrad_initial_accumulator_value"], name
        assert bool((opt.state[p]["sum"] == logged["opt_adagrad_initial_accumulator_value"]).all()), name
    assert bench.progress_fields()["lr"] == logged["opt_base_learning_rate"]
    # constant: no warmup, no decay (all three logged 0); the loop never changes the dense lr
    assert logged["opt_learning_rate_warmup_steps"] == logged["opt_learning_rate_decay_steps"] == 0
