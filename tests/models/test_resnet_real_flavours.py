"""ResNet's real flavours, built on CPU without data: their schedule against the RCP they claim (read from
mlperf-logging's own RCP file, not from our config), and every logged hyperparameter against what the built
optimizer, loss and schedule really use."""

from __future__ import annotations

import glob
import json
import os
import statistics

import mlperf_logging
import pytest
import torch
import torch.nn.functional as F
from conftest import build_logged

from models.resnet import SPEC


def _rcp(batch: int) -> dict:
    path = glob.glob(os.path.join(os.path.dirname(mlperf_logging.__file__), "rcp_checker", "training_4.0.0",
                                  "rcps_resnet.json"))[0]
    return next(v for v in json.load(open(path)).values() if v["BS"] == batch)


@pytest.fixture(scope="module", params=["dgxh100_1x8", "dgxh100_8x8"])
def built(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    cfg = SPEC.config(request.param)
    cfg.train.compile = False  # nothing here runs a step that compiling would change
    bench, logged = build_logged(SPEC, cfg, tmp)
    yield cfg, bench, logged
    bench.close()


def test_the_schedule_is_the_rcp_points(built):
    cfg, bench, logged = built
    rcp = _rcp(cfg.train.global_batch_size)
    hp = rcp["Hyperparams"]
    assert logged["lars_opt_base_learning_rate"] == hp["opt_base_learning_rate"]
    assert logged["lars_opt_learning_rate_warmup_epochs"] == hp["opt_learning_rate_warmup_epochs"]
    assert logged["lars_opt_weight_decay"] == hp["opt_weight_decay"]
    assert logged["lars_opt_momentum"] == hp["opt_momentum"]
    assert logged["lars_opt_learning_rate_decay_steps"] == hp["opt_learning_rate_decay_steps"]
    # an eval lands on the epoch the RCP's runs converged at most often, and on the one after its slowest
    evals = [b.eval_metadata["epoch_num"] for b in bench.blocks()]
    converged = rcp["Epochs to converge"]
    assert statistics.median(converged) in evals
    assert any(e >= max(converged) for e in evals) and evals[-1] == cfg.train.max_epochs
    assert all(b - a == cfg.train.eval_every_epochs for a, b in zip(evals[:-2], evals[1:-1]))


def test_logged_hyperparameters_are_what_the_run_uses(built):
    cfg, bench, logged = built
    groups = bench.optimizer.param_groups
    decayed = [g for g in groups if g["weight_decay"] > 0]
    assert decayed and all(g["weight_decay"] == logged["lars_opt_weight_decay"] for g in decayed)
    assert all(g["momentum"] == logged["lars_opt_momentum"] for g in groups)
    warmup = round(logged["lars_opt_learning_rate_warmup_epochs"] * bench.steps_per_epoch)
    assert bench.learning_rate(warmup) == pytest.approx(logged["lars_opt_base_learning_rate"])
    last = warmup + logged["lars_opt_learning_rate_decay_steps"] - 2  # the schedule's last update
    assert bench.learning_rate(last) > logged["lars_opt_end_learning_rate"]
    assert bench.learning_rate(last) == pytest.approx(logged["lars_opt_end_learning_rate"], rel=1e-2)
    assert logged["global_batch_size"] == cfg.train.global_batch_size
    # the loss smooths labels by the logged amount: against torch's own label-smoothed cross-entropy
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(2, 3, 64, 64, generator=g), torch.tensor([3, 999])
    bench.model.eval()  # BatchNorm in eval mode: the forward is a fixed function of the input
    with torch.no_grad():
        loss = bench.loss((images, labels))
        with bench.autocast():  # the flavour's precision, as the loss's forward runs
            logits = bench.model(images.contiguous(memory_format=bench.memory_format)).float()
    expected = F.cross_entropy(logits, labels, label_smoothing=logged["label_smoothing"])
    assert loss == pytest.approx(float(expected), rel=1e-6)
    assert loss != pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)
