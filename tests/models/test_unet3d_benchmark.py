"""The 3D U-Net's real flavours built on CPU without a dataset: their schedule against the spec's formulas
and RCP (computed here from the spec's own numbers), every logged hyperparameter against what the built
optimizer, loader and evaluation use; the eval count against MONAI; divergence; the debug run's keys."""

from __future__ import annotations

import glob
import json
import math
import os

import mlperf_logging
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import read_events, read_metrics
from monai.inferers import sliding_window_inference as monai_sliding_window
from monai.metrics import DiceMetric

import models.unet3d.benchmark as unet3d_benchmark
from kernels.optimizers import FusedSGD
from models.unet3d import SPEC
from pipelines.kits19.format import write_case
from runtime.benchmark import RunContext
from runtime.distributed import LaunchEnv
from runtime.mlperf_log import MLPerfLogger
from runtime.parallel import ParallelLayout

# The spec (shared/spec/unet3d.md): 168 training cases, first eval at CEIL(1000*168/spe), then every
# CEIL(20*168/spe), non-converged after CEIL(10000*168/spe); RCP at BS 56: lr 2.0, warmup 168,000 samples
# (1000 epochs) from 1e-4, momentum 0.9, weight decay 0, no decay.
TRAIN_CASES, FIRST, EVERY, BUDGET = 168, 1000, 20, 10000
CLOSED_KEYS = ("global_batch_size", "opt_name", "opt_base_learning_rate", "opt_learning_rate_warmup_epochs",
               "opt_learning_rate_decay_boundary_epochs", "opt_learning_rate_decay_factor", "opt_weight_decay",
               "train_samples", "eval_samples", "seed", "opt_momentum", "oversampling", "training_input_shape",
               "validation_input_shape", "validation_overlap", "gradient_accumulation_steps")


def _rcp(batch: int) -> dict:
    path = glob.glob(os.path.join(os.path.dirname(mlperf_logging.__file__), "rcp_checker", "training_4.0.0",
                                  "rcps_unet3d.json"))[0]
    return next(v for v in json.load(open(path)).values() if v["BS"] == batch)


def _build(flavour: str, tmp, **overrides):
    cfg = SPEC.config(flavour)
    cfg.train.compile = False  # nothing here runs a step that compiling would change
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    layout = ParallelLayout(1, 0)
    layout.build_groups()
    log = MLPerfLogger(str(tmp / "log.txt"), enabled=True, stdout=False)
    ctx = RunContext(SPEC, LaunchEnv("single", 0, 1, 0, 1, "127.0.0.1", 0), layout, torch.device("cpu"), log,
                     str(tmp), str(tmp), seed=1)
    return cfg, SPEC.benchmark(cfg, ctx), log


@pytest.fixture(scope="module", params=["dgxh100_1x8", "dgxh100_7x8"])
def built(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    # 210 one-voxel cases: enough for open_data to split and build its loaders (no sample is drawn)
    for case_id in range(210):
        write_case(str(tmp), case_id, np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.uint8))
    cfg, bench, log = _build(request.param, tmp)
    bench.log_hyperparameters()
    sizes = bench.open_data()
    log.close()
    logged = {e["key"]: e["value"] for e in read_events(tmp / "log.txt")}
    yield cfg, bench, logged, sizes
    bench.close()


def test_the_schedule_follows_the_spec_formulas(built):
    cfg, bench, logged, sizes = built
    gbs = cfg.train.global_batch_size
    assert gbs == 56 and sizes == {"train_samples": 168, "eval_samples": 42}
    samples_per_epoch = TRAIN_CASES // gbs * gbs
    assert samples_per_epoch == 168 == logged["samples_per_epoch"]
    first, every, budget = (math.ceil(n * TRAIN_CASES / samples_per_epoch) for n in (FIRST, EVERY, BUDGET))
    blocks = bench.blocks()
    evals = [b.eval_metadata["epoch_num"] for b in blocks]
    # eval_accuracy.epoch_num in samples (the RCP unit): epoch x samples per epoch
    assert evals == [e * samples_per_epoch for e in range(first, budget + 1, every)]
    assert evals[0] == 168_000 and evals[-1] == 1_680_000
    assert sum(b.steps for b in blocks) * gbs == budget * samples_per_epoch
    assert blocks[1].start_metadata == {"samples_count": 168_000}
    # an eval within one cadence of the RCP's mean convergence point
    rcp = _rcp(gbs)
    mean = float(np.mean(rcp["Epochs to converge"]))
    assert any(0 <= e - mean < every * samples_per_epoch for e in evals)


def test_the_hyperparameters_are_the_rcps(built):
    cfg, bench, logged, _ = built
    hp = _rcp(cfg.train.global_batch_size)["Hyperparams"]
    assert logged["opt_base_learning_rate"] == hp["opt_base_learning_rate"]
    assert logged["opt_initial_learning_rate"] == hp["opt_initial_learning_rate"]
    assert logged["opt_momentum"] == hp["opt_momentum"] and logged["opt_weight_decay"] == hp["opt_weight_decay"]
    assert logged["opt_learning_rate_decay_boundary_epochs"] == hp["opt_learning_rate_decay_boundary_epochs"]
    assert logged["opt_learning_rate_decay_factor"] == hp["opt_learning_rate_decay_factor"]
    # the RCP file states the warmup in samples; the log in epochs, as the reference's flag
    assert logged["opt_learning_rate_warmup_epochs"] * logged["samples_per_epoch"] == \
        hp["opt_learning_rate_warmup_epochs"]
    assert (logged["oversampling"], logged["validation_overlap"]) == (0.4, 0.5)
    assert logged["training_input_shape"] == logged["validation_input_shape"] == [128, 128, 128]


def test_logged_hyperparameters_are_what_the_run_uses(built, monkeypatch):
    cfg, bench, logged, _ = built
    (group,) = bench.optimizer.param_groups
    assert isinstance(bench.optimizer, FusedSGD) and group["nesterov"] and group["dampening"] == 0
    assert group["momentum"] == logged["opt_momentum"] and group["weight_decay"] == logged["opt_weight_decay"]
    assert logged["opt_name"] == "sgd" and logged["global_batch_size"] == cfg.train.global_batch_size
    assert logged["gradient_accumulation_steps"] * bench.micro_batch == cfg.train.global_batch_size  # one rank
    # the learning rate the loop sets: linear from the initial lr over the warmup epochs, then the base lr
    spe, warmup = bench.steps_per_epoch, logged["opt_learning_rate_warmup_epochs"]
    base, init = logged["opt_base_learning_rate"], logged["opt_initial_learning_rate"]
    assert bench.learning_rate(0) == pytest.approx(init + (base - init) / warmup)
    assert bench.learning_rate(spe * 500) == pytest.approx(init + (base - init) * 501 / warmup)
    assert bench.learning_rate(spe * warmup - 1) == pytest.approx(base)
    assert bench.learning_rate(spe * 9999) == pytest.approx(base)  # no decay boundaries
    bench.set_learning_rate(bench.learning_rate(7))
    assert group["lr"] == bench.learning_rate(7)
    # the loader crops what is logged
    dataset = bench.train_data.dataset
    assert dataset.oversampling == logged["oversampling"]
    assert list(dataset.patch) == logged["training_input_shape"]
    # the evaluation slides the logged window with the logged overlap
    seen = {}

    def fake_sliding_window(model, image, roi, **kwargs):
        seen.update(roi=list(roi), **kwargs)
        return torch.zeros(1, 3, *image.shape[2:])

    monkeypatch.setattr(unet3d_benchmark, "sliding_window_inference", fake_sliding_window)
    bench.eval_counts((torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4, dtype=torch.uint8)))
    assert seen["roi"] == logged["validation_input_shape"] and seen["overlap"] == logged["validation_overlap"]
    assert seen["padding_value"] == -2.2 and seen["sigma_scale"] == 0.125


def test_the_eval_count_is_monais_window_and_dice(tmp_path):
    _, bench, _ = _build("debug", tmp_path, train__cpu_threads=0)
    model = bench.model.eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 1, 70, 64, 80, generator=g)
    label = torch.zeros(1, 1, 70, 64, 80, dtype=torch.uint8)
    label[..., 10:40, 10:40, 10:40] = 1
    label[..., 20:30, 20:30, 20:30] = 2
    with torch.no_grad():
        counts = bench.eval_counts((image, label))
        logits = monai_sliding_window(image.contiguous(memory_format=torch.channels_last_3d), (64, 64, 64), 4,
                                      model, overlap=0.5, mode="gaussian", sigma_scale=0.125, cval=-2.2)
    prediction = F.one_hot(logits.argmax(1), 3).permute(0, 4, 1, 2, 3)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(
        prediction, F.one_hot(label[:, 0].long(), 3).permute(0, 4, 1, 2, 3))
    assert counts[1].item() == 1.0
    assert counts[0].item() == pytest.approx(dice.mean().item(), abs=1e-5)  # smoothing 1e-6 aside


def test_a_diverged_model_stops_the_run(tmp_path, monkeypatch):
    _, bench, _ = _build("debug", tmp_path)
    bench.eval_data = []
    monkeypatch.setattr(bench, "eval_totals", lambda batches: torch.tensor([4e-7, 4.0], dtype=torch.float64))
    assert math.isnan(bench.evaluate())  # the loop's non-finite eval: run_stop aborted, exit 3
    monkeypatch.setattr(bench, "eval_totals", lambda batches: torch.tensor([2.0, 4.0], dtype=torch.float64))
    assert bench.evaluate() == 0.5


def test_bad_settings_fail_before_the_run(tmp_path):
    with pytest.raises(ValueError, match="data.input_shape=48: want a multiple of 32"):
        _build("debug", tmp_path, data__input_shape=48)
    with pytest.raises(ValueError, match="decay_boundary_epochs"):
        _build("debug", tmp_path, optim__decay_boundary_epochs=(1,))


@pytest.mark.slow
def test_debug_log_has_the_closed_keys_once_and_evals_in_samples(debug_run):
    run = debug_run("unet3d")
    assert run.returncode == 0, run.stdout[-3000:]
    events = read_events(run.run_dir / "mlperf_log.txt")
    keys = [e["key"] for e in events]
    for key in CLOSED_KEYS:
        assert keys.count(key) == 1, key
    values = {e["key"]: e["value"] for e in events}
    spe = values["samples_per_epoch"]
    accuracy = [e for e in events if e["key"] == "eval_accuracy"]
    evals = [m for m in read_metrics(run.run_dir) if "eval" in m]
    assert [e["metadata"]["epoch_num"] for e in accuracy] == [m["samples"] for m in evals]
    assert all(m["samples"] % spe == 0 for m in evals)
    assert accuracy[-1]["value"] >= 0.908  # the closed target itself
