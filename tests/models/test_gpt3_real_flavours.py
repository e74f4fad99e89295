"""GPT-3's real flavours without the 175B model: their schedule from the config alone (models/gpt3/benchmark.py
step_schedule / eval_blocks: the functions the benchmark itself runs on) against the spec's formulas and the
RCPs the batch size falls between (read from mlperf-logging's rcps_gpt3.json, not from our config), worked by
hand; and every logged hyperparameter against what the built optimizer holds, with a 4-layer, 64-wide model in
place of the flavour's (every other section, the 2048-token sequence included, as the flavour has it)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import mlperf_logging
import pytest
import torch
import torch.distributed as dist
from conftest import read_events

from models.gpt3 import SPEC
from models.gpt3.benchmark import cosine_lr, eval_blocks, step_schedule
from models.gpt3.config import debug
from runtime.benchmark import RunContext
from runtime.distributed import LaunchEnv
from runtime.mlperf_log import MLPerfLogger
from runtime.parallel import ParallelLayout

SEQ = 2048
# The spec's sample counts (written at GBS 1536): warmup 265 x 1536, decay 108 600 x 1536, initial checkpoint
# 4000 x 1536; an eval every 24 576 sequences; the reference's Megatron flags say the same in samples.
WARMUP_SAMPLES, DECAY_SAMPLES, INIT_SAMPLES, EVAL_EVERY = 265 * 1536, 108_600 * 1536, 4000 * 1536, 24_576
# Per flavour, worked by hand: GBS, the closed lr, CEIL(265*1536/GBS), CEIL(108600*1536/GBS),
# CEIL(4000*1536/GBS), CEIL(24576/GBS)
HAND = {"dgxh100_32x8": (1536, 2e-5, 265, 108_600, 4000, 16),
        "dgxh100_64x8": (2304, 2e-5, 177, 72_400, 2667, 11),  # 176.67, exactly 72400, 2666.67, 10.67
        "dgxh100_1452x8": (2904, 2e-5, 141, 57_442, 2116, 9)}  # 140.17, 57441.3, 2115.7, 8.46
FLAVOURS = tuple(HAND)


def _rcps() -> list[dict]:
    path = os.path.join(os.path.dirname(mlperf_logging.__file__), "rcp_checker", "training_4.0.0", "rcps_gpt3.json")
    return sorted(json.load(open(path)).values(), key=lambda v: v["BS"])


def _bracket(gbs: int) -> list[dict]:
    """The RCP points a batch size is judged against: itself, or the nearest below and above it."""
    rcps = _rcps()
    exact = [r for r in rcps if r["BS"] == gbs]
    if exact:
        return exact
    below, above = [r for r in rcps if r["BS"] < gbs], [r for r in rcps if r["BS"] > gbs]
    assert below and above, f"GBS {gbs} is outside the RCPs' range: the closed division needs new RCPs"
    return [below[-1], above[0]]


def _reference_lr(samples: int, base: float) -> float:
    """Megatron's OptimizerParamScheduler as the reference runs it: counted in samples (--lr-warmup-samples
    407040 --lr-decay-samples 166809600, min lr 10% of peak), the update after `samples` consumed."""
    return cosine_lr(samples, base_lr=base, min_lr=0.1 * base, warmup_steps=WARMUP_SAMPLES, decay_steps=DECAY_SAMPLES)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_step_counts_are_the_spec_formulas(flavour):
    cfg = SPEC.config(flavour)
    gbs, _, warmup, decay, init, every = HAND[flavour]
    assert cfg.train.global_batch_size == gbs and cfg.model.seq_length == SEQ
    s = step_schedule(cfg)
    assert (s.warmup_steps, s.decay_steps, s.init_step, s.eval_every_steps) == (warmup, decay, init, every)
    assert s.warmup_steps == math.ceil(WARMUP_SAMPLES / gbs) and s.decay_steps == math.ceil(DECAY_SAMPLES / gbs)
    assert s.init_step == math.ceil(INIT_SAMPLES / gbs) and s.eval_every_steps == math.ceil(EVAL_EVERY / gbs)
    assert s.total_steps == math.ceil(cfg.train.max_samples / gbs)
    assert cfg.data.eval_tokens == 11_590_004  # logged as eval_samples, as NVIDIA does


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_learning_rate_is_the_closed_one_for_the_batch(flavour):
    cfg = SPEC.config(flavour)
    gbs, lr = HAND[flavour][:2]
    s = step_schedule(cfg)
    rcp_lrs = {r["Hyperparams"]["opt_base_learning_rate"] for r in _bracket(gbs)}
    assert rcp_lrs == {lr}  # both neighbouring RCPs ran at it: nothing else is covered
    assert s.base_lr == lr and s.min_lr == pytest.approx(0.1 * lr, rel=1e-12)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_cosine_schedule_by_hand(flavour):
    s = step_schedule(SPEC.config(flavour))
    gbs, base, warmup, decay, init, _ = HAND[flavour]

    def at(step):
        return cosine_lr(step, base_lr=base, min_lr=0.1 * base, warmup_steps=warmup, decay_steps=decay)

    # linear warmup from 0 to the peak, cosine to 10% of it at decay_steps, flat after
    assert at(0) == 0.0 and at(warmup // 2) == pytest.approx(base * (warmup // 2) / warmup)
    assert at(warmup) == pytest.approx(base) and at(warmup + 1) < base
    assert at(decay) == pytest.approx(0.1 * base) and at(decay + 1) == at(10 * decay) == pytest.approx(0.1 * base)
    ratio = (init - warmup) / (decay - warmup)  # where the run resumes, past the warmup
    resumed = 0.1 * base + 0.5 * (1 + math.cos(math.pi * ratio)) * 0.9 * base
    assert resumed == pytest.approx(1.99473e-5, rel=2e-6)  # ratio ~0.0345: about 0.26% under the peak
    assert s.learning_rate(0) == pytest.approx(resumed, rel=1e-12)  # the run's first update: step init_step
    assert s.learning_rate(0) != pytest.approx(base, rel=1e-4)
    # counted in steps at this batch, the schedule is the reference's sample-counted one over the whole budget
    for k in (0, 1, s.eval_every_steps, s.total_steps // 2, s.total_steps - 1):
        assert s.learning_rate(k) == pytest.approx(_reference_lr(INIT_SAMPLES + k * gbs, base), rel=1e-5), k
    assert s.learning_rate(s.total_steps - 1) > s.min_lr  # the budget ends inside the decay


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_eval_blocks_in_tokens(flavour):
    cfg = SPEC.config(flavour)
    gbs, every = HAND[flavour][0], HAND[flavour][5]
    s = step_schedule(cfg)
    blocks = eval_blocks(cfg)
    tokens_per_step = gbs * SEQ
    assert [b.steps for b in blocks[:-1]] == [every] * (len(blocks) - 1) and 0 < blocks[-1].steps <= every
    # the first eval once 24 576 sequences are trained, not a step early
    first = blocks[0].eval_metadata["epoch_num"]
    assert EVAL_EVERY * SEQ <= first < (EVAL_EVERY + gbs) * SEQ
    # epoch_num: tokens trained since the initial checkpoint (the RCP unit), from 0
    done = 0
    for b in blocks:
        assert b.start_metadata == {"first_epoch_num": done * tokens_per_step, "epoch_count": b.steps * tokens_per_step}
        done += b.steps
        assert b.eval_metadata == {"epoch_num": done * tokens_per_step}
    # the budget: max_samples sequences, past every bracketing RCP run's tokens to converge
    assert done == s.total_steps and done * gbs >= cfg.train.max_samples > (done - 1) * gbs
    assert done * tokens_per_step >= max(t for r in _bracket(gbs) for t in r["Epochs to converge"])


# -- the built benchmark (a small model; the flavour's optim and train sections) --------------------------------
@pytest.fixture(scope="module", params=FLAVOURS)
def built(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    cfg = SPEC.config(request.param)
    small = debug().model
    cfg.model = replace(cfg.model, num_layers=small.num_layers, hidden_size=small.hidden_size,
                        num_attention_heads=small.num_attention_heads, ffn_hidden_size=small.ffn_hidden_size,
                        vocab_size=small.vocab_size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    had_group = dist.is_initialized()
    log = MLPerfLogger(str(tmp / "log.txt"), enabled=True, stdout=False)
    ctx = RunContext(SPEC, LaunchEnv("single", 0, 1, 0, 1, "127.0.0.1", 0), ParallelLayout(1, 0), device, log,
                     str(tmp), str(tmp), seed=1)
    bench = SPEC.benchmark(cfg, ctx)
    try:
        bench.log_hyperparameters()
        log.close()
        logged = {e["key"]: e["value"] for e in read_events(tmp / "log.txt")}
        yield cfg, bench, logged
    finally:
        bench.close()
        if not had_group and dist.is_initialized():
            dist.destroy_process_group()


def test_logged_schedule_is_the_one_the_run_steps_on(built):
    cfg, bench, logged = built
    gbs, lr, warmup, decay, init, _ = HAND[[f for f in FLAVOURS if HAND[f][0] == cfg.train.global_batch_size][0]]
    assert logged["global_batch_size"] == gbs
    assert (logged["opt_learning_rate_warmup_steps"], logged["opt_learning_rate_decay_steps"],
            logged["init_checkpoint_step"]) == (warmup, decay, init)
    assert logged["opt_learning_rate_decay_schedule"] == "cosine with linear warmup"
    assert logged["opt_base_learning_rate"] == lr and logged["opt_end_learning_rate"] == pytest.approx(0.1 * lr)
    # what the benchmark sets before each update (learning_rate(step), counted from the checkpoint)
    peak, floor = warmup - init, decay - init + 1
    assert bench.learning_rate(peak) == pytest.approx(logged["opt_base_learning_rate"], rel=1e-12)
    assert bench.learning_rate(peak - 1) < logged["opt_base_learning_rate"] > bench.learning_rate(peak + 1)
    assert bench.learning_rate(floor) == pytest.approx(logged["opt_end_learning_rate"], rel=1e-12)
    assert bench.learning_rate(floor - 2) > logged["opt_end_learning_rate"]
    assert bench.learning_rate(0) == pytest.approx(_reference_lr(INIT_SAMPLES, lr), rel=1e-5)
    assert [b.eval_metadata for b in bench.blocks()] == [b.eval_metadata for b in eval_blocks(cfg)]


def test_logged_hyperparameters_are_what_the_optimizer_uses(built):
    cfg, bench, logged = built
    opt = bench.optimizer
    assert logged["opt_name"] == "adam"
    params = {id(p): n for chunk in bench.model for n, p in chunk.named_parameters() if p.requires_grad}
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    on_cpu = not torch.cuda.is_available()
    if on_cpu:  # megatron's optimizer holds fp32 main copies on CUDA; the CPU one steps the parameters
        assert sorted(grouped) == sorted(params)
    for g in opt.param_groups:
        assert g["betas"] == (logged["opt_adam_beta_1"], logged["opt_adam_beta_2"])
        assert g["eps"] == logged["opt_adam_epsilon"]
        # the reference runs --do-layernorm-bias-weight-decay: every parameter decays, LayerNorm and biases too
        assert g["weight_decay"] == logged["opt_weight_decay"] == 0.1
    if on_cpu:
        names = [params[i] for i in grouped]
        assert any("layernorm" in n for n in names) and any(n.endswith(".bias") for n in names)
        assert isinstance(opt.inner, torch.optim.AdamW)  # decoupled weight decay, as megatron's Adam
    clip = opt.clip_grad if on_cpu else opt.inner.config.clip_grad
    assert clip == logged["opt_gradient_clip_norm"] == 1.0
    # the model the log describes: 2048-token sequences, the micro-batches of one global batch
    embedding = bench.model[0].module.embedding
    assert logged["max_sequence_length"] == embedding.position_embeddings.num_embeddings == bench.seq_length == SEQ
    assert logged["gradient_accumulation_steps"] == bench.num_microbatches
    assert bench.num_microbatches * cfg.train.micro_batch_size * bench.ctx.layout.dp == logged["global_batch_size"]
