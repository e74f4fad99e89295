"""R-GAT's real flavours built on CPU without a dataset: the eval cadence and epoch_num against the
reference's formulas (int(0.05 x batches), round(epoch + idx / batches, 2)) computed here by hand, the
learning rates against mlperf-logging's RCP file, every logged hyperparameter against the built optimizer
and model; the loss's global-batch mean over unevenly split last batches; the synthetic labels need the
graph."""

from __future__ import annotations

import json
import math
import os

import mlperf_logging
import numpy as np
import pytest
import torch
from conftest import build_logged

from models.gnn import SPEC
from models.gnn.benchmark import eval_steps
from pipelines.igbh.format import IGBHSizes
from pipelines.igbh.synthetic import write_synthetic_igbh

TRAIN_SEEDS, VAL_SEEDS = 94_605_581, 788_379


def _rcp(batch: int) -> dict:
    path = os.path.join(os.path.dirname(mlperf_logging.__file__), "rcp_checker", "training_4.0.0", "rcps_gnn.json")
    return next(v for v in json.load(open(path)).values() if v["BS"] == batch)


@pytest.mark.parametrize("flavour, gbs, lr, epochs", [("dgxh100_1x8", 16384, 2e-3, 1), ("dgxh100_8x8", 65536, 3e-3, 2)])
def test_real_flavours_log_the_rcp_hyperparameters(flavour, gbs, lr, epochs, tmp_path):
    cfg = SPEC.config(flavour)
    assert _rcp(gbs)["Hyperparams"]["opt_base_learning_rate"] == lr
    bench, logged = build_logged(SPEC, cfg, tmp_path)
    group = bench.optimizer.param_groups[0]
    assert logged["global_batch_size"] == gbs and logged["gradient_accumulation_steps"] == 1
    assert logged["opt_name"] == "adam" and logged["opt_base_learning_rate"] == lr == group["lr"]
    assert (logged["opt_adam_beta_1"], logged["opt_adam_beta_2"], logged["opt_adam_epsilon"]) == (0.9, 0.999, 1e-8)
    assert logged["opt_weight_decay"] == 0.0 == group["weight_decay"]
    assert logged["fan_out"] == [15, 10, 5] and logged["dropout"] == 0.2
    assert (logged["hidden_channels"], logged["num_heads"], logged["num_layers"]) == (512, 4, 3)
    assert (cfg.data.train_samples, cfg.data.eval_samples) == (TRAIN_SEEDS, VAL_SEEDS)
    assert cfg.run.target == 0.72 and cfg.run.submission_division == "closed"
    assert bench.learning_rate(0) == bench.learning_rate(10**6) == lr  # no schedule
    model = bench.model
    assert sum(p.numel() for p in model.parameters()) == 13_115_303
    # every trainable parameter, and only those, is in the optimizer
    assert sum(p.numel() for g in bench.optimizer.param_groups for p in g["params"]) == \
        sum(p.numel() for p in model.parameters() if p.requires_grad)

    batches = math.ceil(TRAIN_SEEDS / gbs)  # the last batch is kept (partial)
    every = int(batches * 0.05)
    blocks = bench.blocks()
    assert len(blocks) == epochs * (batches // every)
    ends = np.cumsum([b.steps for b in blocks])
    assert ends[0] == every and ends[-1] == (epochs - 1) * batches + (batches // every) * every
    first_epoch_nums = [b.eval_metadata["epoch_num"] for b in blocks[:3]]
    assert first_epoch_nums == [round(k * every / batches, 2) for k in (1, 2, 3)]
    if epochs > 1:  # the second epoch restarts the in-epoch count
        second = blocks[batches // every]
        assert second.eval_metadata["epoch_num"] == round(1 + every / batches, 2)


def test_eval_cadence_by_hand():
    # 1x8: ceil(94,605,581 / 16,384) = 5,775 batches, an eval every int(288.75) = 288, 20 per epoch
    evals = eval_steps(5775, 0.05, 1)
    assert len(evals) == 20 and evals[0] == (288, 0.05) and evals[-1] == (5760, 1.0)
    assert evals[9] == (2880, 0.5)
    # 8x8: 1,444 batches an epoch, every 72, 20 per epoch and the second epoch's first at 1.05
    evals = eval_steps(1444, 0.05, 2)
    assert len(evals) == 40 and evals[20] == (1444 + 72, 1.05) and evals[19] == (1440, 1.0)
    # fewer than 20 batches: every batch (the reference's int() would give 0)
    assert eval_steps(7, 0.05, 1) == [(k, round(k / 7, 2)) for k in range(1, 8)]


def test_loss_is_the_global_batch_mean_on_uneven_rank_slices(tmp_path):
    """A 5-seed global batch on 2 ranks (3 + 2 seeds): each rank's loss x 2 ranks averaged is the mean over 5."""
    cfg = SPEC.config("debug")
    bench, _ = build_logged(SPEC, cfg, tmp_path)
    [batch], _ = bench.synthetic_batches()
    bench.model.eval()
    logits = bench._logits(batch)
    per_seed = torch.nn.functional.cross_entropy(logits, batch.y, reduction="none")
    batch.global_seeds = per_seed.numel()
    assert bench.loss(batch).item() == pytest.approx(per_seed.mean().item(), rel=1e-6)


def test_synthetic_labels_need_the_neighbourhood(tmp_path):
    """A paper's own features predict its class poorly; adding its authors', fields' and venues' mean features
    (what one graph layer can aggregate) predicts it far better: the debug target needs message passing."""
    sizes = IGBHSizes(num_papers=3000, num_authors=2000, labelled_papers=3000, feature_dim=32, num_classes=8)
    pdir = write_synthetic_igbh(str(tmp_path), sizes, institutes=20, fos=60, journals=30, conferences=20,
                                val_fraction=0.1, seed=1, write_csc_cache=False)
    feat = {t: np.load(os.path.join(pdir, t, "node_feat.npy")) for t in ("fos", "journal", "conference")}
    feat["paper"] = np.fromfile(os.path.join(pdir, "paper", "node_feat.npy"), np.float32).reshape(3000, 32)
    feat["author"] = np.fromfile(os.path.join(pdir, "author", "node_feat.npy"), np.float32).reshape(2000, 32)
    y = np.fromfile(os.path.join(pdir, "paper", "node_label_2K.npy"), np.float32).astype(np.int64)
    neighbour = np.zeros((3000, 32))
    for rel, t in (("written_by", "author"), ("topic", "fos"), ("published", "journal"), ("venue", "conference")):
        e = np.load(os.path.join(pdir, f"paper__{rel}__{t}", "edge_index.npy"))
        summed = np.zeros((3000, 32))
        np.add.at(summed, e[:, 0], feat[t][e[:, 1]])
        neighbour += summed / np.maximum(np.bincount(e[:, 0], minlength=3000), 1)[:, None]

    def accuracy(x):  # nearest class mean fitted on the first 2000 papers, scored on the last 1000
        means = np.stack([x[:2000][y[:2000] == c].mean(0) for c in range(8)])
        return float((np.argmax(x[2000:] @ means.T - 0.5 * (means ** 2).sum(1), 1) == y[2000:]).mean())

    own, with_graph = accuracy(feat["paper"]), accuracy(np.concatenate([feat["paper"], neighbour], 1))
    assert own < 0.5 and with_graph > 0.72, (own, with_graph)
