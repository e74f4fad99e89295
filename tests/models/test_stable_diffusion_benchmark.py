"""Stable Diffusion's flavours, schedule and logged keys, the debug target against an untrained UNet, and the
debug run's FID / CLIP lines as the checker aggregates them."""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import build_logged, read_events

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.stable_diffusion import SPEC  # noqa: E402
from models.stable_diffusion.benchmark import eval_interval_steps, hyperparameters, learning_rate  # noqa: E402
from runtime.precision import grad_scaler  # noqa: E402


@pytest.mark.parametrize("flavour, gbs, lr, interval", [("dgxh100_1x8", 512, 6.4e-5, 1000),
                                                       ("dgxh100_8x8", 1024, 1.28e-4, 500)])
def test_real_flavours_log_the_closed_hyperparameters(flavour, gbs, lr, interval):
    cfg = SPEC.config(flavour)
    keys = hyperparameters(cfg)
    assert keys == {"global_batch_size": gbs, "gradient_accumulation_steps": 1, "opt_name": "adamw",
                    "opt_adamw_beta_1": 0.9, "opt_adamw_beta_2": 0.999, "opt_adamw_epsilon": 1e-8,
                    "opt_adamw_weight_decay": 0.01, "opt_base_learning_rate": pytest.approx(lr, rel=1e-12),
                    "opt_learning_rate_warmup_steps": 1000}
    assert eval_interval_steps(cfg) == interval  # 512,000 images
    u = cfg.model.unet
    assert (u.model_channels, u.channel_mult, u.num_res_blocks, u.attention_levels, u.head_channels, u.context_dim,
            u.norm_groups) == (320, (1, 2, 4, 4), 2, (True, True, True, False), 64, 1024, 16)
    assert (cfg.model.latent_size, cfg.eval.ddim_steps, cfg.eval.guidance, cfg.eval.fid_target,
            cfg.eval.clip_target, cfg.data.train_samples, cfg.data.eval_samples) == (64, 50, 8.0, 90.0, 0.15,
                                                                                     6_513_144, 30_000)
    assert cfg.run.checkpoint_every_blocks == 1 and cfg.eval.fid_network == "inception"
    # fp16 with the shared dynamic loss scale (runtime/precision.py grad_scaler), NVIDIA's precision
    assert cfg.train.precision == "fp16" and "fp16" in SPEC.benchmark.precisions
    assert grad_scaler(cfg.train.precision, torch.device("cpu")) is not None


def test_warmup_is_linear_from_1e_6_then_constant():
    base = 6.4e-5
    assert learning_rate(0, base_lr=base, warmup_steps=1000) == pytest.approx(base * 1e-6)
    assert learning_rate(500, base_lr=base, warmup_steps=1000) == pytest.approx(base * (1e-6 + (1 - 1e-6) * 0.5))
    assert learning_rate(1000, base_lr=base, warmup_steps=1000) == base
    assert learning_rate(10 ** 6, base_lr=base, warmup_steps=1000) == base


def test_debug_build_logs_its_keys_and_blocks(tmp_path):
    bench, logged = build_logged(SPEC, SPEC.config("debug"), tmp_path)
    assert logged["opt_name"] == "adamw" and logged["opt_base_learning_rate"] == pytest.approx(1e-3)
    blocks = bench.blocks()
    assert [b.steps for b in blocks] == [40] * 15
    assert blocks[0].eval_metadata == {"epoch_num": 640, "samples_count": 640}  # the spec lists both
    group = bench.optimizer.param_groups[0]
    assert group["decoupled_weight_decay"] and group["weight_decay"] == 0.01 and group["betas"] == (0.9, 0.999)


@pytest.mark.slow
def test_an_untrained_unet_misses_the_debug_targets(debug_data, tmp_path):
    from runtime.benchmark import RunContext
    from runtime.distributed import LaunchEnv
    from runtime.mlperf_log import MLPerfLogger
    from runtime.parallel import ParallelLayout

    cfg = SPEC.config("debug")
    layout = ParallelLayout(1, 0)
    layout.build_groups()
    log = MLPerfLogger(str(tmp_path / "log.txt"), enabled=True, stdout=False)
    ctx = RunContext(SPEC, LaunchEnv("single", 0, 1, 0, 1, "127.0.0.1", 0), layout, torch.device("cpu"), log,
                     str(tmp_path), str(debug_data("stable_diffusion")), seed=1)
    bench = SPEC.benchmark(cfg, ctx)
    bench.open_data()
    value = bench.evaluate()
    log.close()
    lines = {extra["metric"]: logged for logged, extra in bench.eval_accuracy_lines(value)}
    assert lines["FID"] > 2 * cfg.eval.fid_target and lines["CLIP"] < cfg.eval.clip_target
    assert value < 0.6 and math.isfinite(value)


@pytest.mark.slow
def test_debug_run_logs_fid_and_clip_at_every_checkpoint(debug_run):
    run = debug_run("stable_diffusion")
    events = read_events(run.run_dir / "mlperf_log.txt")
    metric_lines = [e for e in events if e["key"] == "eval_accuracy"]
    assert all("metric" in e["metadata"] for e in metric_lines)  # FID and CLIP lines only, no combined one
    by_count: dict[int, dict] = {}
    for e in metric_lines:
        by_count.setdefault(e["metadata"]["samples_count"], {})[e["metadata"]["metric"]] = e["value"]
    assert len(by_count) >= 2 and all(set(v) == {"FID", "CLIP"} for v in by_count.values())
    cfg = SPEC.config("debug")
    passing = [c for c, v in by_count.items() if v["FID"] <= cfg.eval.fid_target and v["CLIP"] >= cfg.eval.clip_target]
    assert passing == [max(by_count)]  # the run stops at the first checkpoint passing both
    assert events[-1]["key"] == "run_stop" and events[-1]["metadata"]["status"] == "success"
