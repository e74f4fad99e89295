"""GPT-3 175B continued pre-training on C4: what the run loop needs, on megatron-core.

Units: a step is one global batch; samples are 2048-token sequences. `eval_accuracy` is the validation
log-perplexity (token-mean cross-entropy over the whole validation set), lower is better, logged with
`epoch_num` = tokens trained since the initial checkpoint (the RCP unit). The LR schedule (cosine with
linear warmup, floor 10% of peak) is counted in steps at this run's batch size and resumes at
`init_checkpoint_step` = ceil(4000 * 1536 / GBS).

Each step runs megatron's forward_backward schedule over `num_microbatches` micro-batches (no pipelining,
1F1B, or interleaved 1F1B when virtual_pp > 1), which also finalizes gradients (DP all-reduce or
reduce-scatter, tied-embedding sync between the first and last stage, SP norm grads over TP).

Weights and Adam moments come from `data.init_checkpoint` (models/gpt3/reference_checkpoint.py), loaded
untimed while the benchmark is built; the run's own checkpoints are megatron distributed checkpoints
(runtime/mcore/checkpointing.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
from mlperf_logging.mllog import constants

from models.gpt3.config import GPT3Config, allowed_learning_rates, closed_learning_rate
from models.gpt3.model import te_available, transformer_config
from models.gpt3.parallelize import (
    build_model_chunks,
    check_layout,
    init_layout,
    parallelize,
    uses_distributed_optimizer,
)
from models.gpt3.reference_checkpoint import load_reference_checkpoint, write_synthetic_reference_checkpoint
from runtime import checkpoint, schedule
from runtime.benchmark import Benchmark, RunContext
from runtime.init_checkpoint import init_checkpoint_dir
from runtime.mcore import checkpointing
from runtime.mcore.fp8_linear import reset_fp8_state, update_fp8_scales
from runtime.mcore.parallelize import build_optimizer, destroy_megatron
from runtime.mcore.pipeline import from_last_stage, is_last_stage, run_schedule
from runtime.schedule import Block


def write_synthetic_data(cfg: GPT3Config, out_dir: str) -> None:
    """The C4 files and, when the flavour names one, the initial checkpoint in the reference's layout."""
    from pipelines.megatron_data.synthetic import write_synthetic_c4

    d = cfg.data
    write_synthetic_c4(out_dir, d.train_prefixes, d.valid_prefix, vocab=d.synthetic_vocab,
                       train_docs=d.synthetic_train_docs, valid_docs=d.synthetic_valid_docs,
                       doc_tokens=d.synthetic_doc_tokens, branching=d.synthetic_branching, seed=d.synthetic_seed)
    if d.init_checkpoint:
        step = cfg.optim.init_checkpoint_samples // cfg.train.global_batch_size
        write_synthetic_reference_checkpoint(cfg.model, os.path.join(out_dir, d.init_checkpoint), step=step,
                                             seed=d.synthetic_seed)


def cosine_lr(step: int, *, base_lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Megatron's OptimizerParamScheduler (cosine style) at iteration `step`."""
    if warmup_steps > 0 and step <= warmup_steps:
        return base_lr * step / warmup_steps
    if step > decay_steps:
        return min_lr
    ratio = (step - warmup_steps) / (decay_steps - warmup_steps)
    return min_lr + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (base_lr - min_lr)


@dataclass(frozen=True)
class StepSchedule:
    """The run's schedule in steps of its global batch, from the config alone (no model is built): the
    learning rate, the budget and the eval cadence. Steps are counted from the initial checkpoint."""

    base_lr: float  # optim.base_lr, or the closed rule for the batch size when that is 0
    min_lr: float  # base_lr * optim.min_lr_ratio
    warmup_steps: int  # ceil(warmup_samples / GBS)
    decay_steps: int  # ceil(decay_samples / GBS)
    init_step: int  # ceil(init_checkpoint_samples / GBS): where the schedule resumes
    eval_every_steps: int  # ceil(eval_every_samples / GBS)
    total_steps: int  # ceil(max_samples / GBS): the budget

    def learning_rate(self, step: int) -> float:
        """The learning rate of the `step`-th update of the run (0-based), at init_step + step."""
        return cosine_lr(self.init_step + step, base_lr=self.base_lr, min_lr=self.min_lr,
                         warmup_steps=self.warmup_steps, decay_steps=self.decay_steps)

    def eval_end_steps(self) -> list[int]:
        """The steps after which the run evaluates: every eval_every_steps, and at the budget."""
        return schedule.every(self.eval_every_steps, self.total_steps)


def step_schedule(cfg: GPT3Config) -> StepSchedule:
    o, t = cfg.optim, cfg.train
    gbs = t.global_batch_size
    base_lr = o.base_lr or closed_learning_rate(gbs)
    return StepSchedule(base_lr=base_lr, min_lr=base_lr * o.min_lr_ratio,
                        warmup_steps=math.ceil(o.warmup_samples / gbs), decay_steps=math.ceil(o.decay_samples / gbs),
                        init_step=math.ceil(o.init_checkpoint_samples / gbs),
                        eval_every_steps=math.ceil(t.eval_every_samples / gbs),
                        total_steps=math.ceil(t.max_samples / gbs))


def eval_blocks(cfg: GPT3Config) -> list[Block]:
    """The run's blocks, in tokens trained since the initial checkpoint (the RCP unit)."""
    return schedule.blocks(step_schedule(cfg).eval_end_steps(), "tokens", global_batch_size=cfg.train.global_batch_size,
                           tokens_per_sample=cfg.model.seq_length)


class GPT3Benchmark(Benchmark):
    @classmethod
    def check_settings(cls, cfg: GPT3Config, run_dir: str) -> None:
        # before a 175B model is built: the closed rules allow these learning rates at the real sequence length
        gbs, base_lr = cfg.train.global_batch_size, step_schedule(cfg).base_lr
        if cfg.model.seq_length == 2048 and base_lr not in allowed_learning_rates(gbs):
            raise ValueError(f"optim.base_lr={base_lr} is not a closed value at GBS {gbs}: "
                             f"{allowed_learning_rates(gbs)}")

    def __init__(self, cfg: GPT3Config, ctx: RunContext):
        super().__init__(cfg, ctx)
        self.check_settings(cfg, ctx.run_dir)
        m, t, o, layout = cfg.model, cfg.train, cfg.optim, ctx.layout
        self.num_microbatches = check_layout(layout, t)
        self.schedule = step_schedule(cfg)
        self.base_lr = self.schedule.base_lr
        self.warmup_steps = self.schedule.warmup_steps
        self.decay_steps = self.schedule.decay_steps
        self.init_step = self.schedule.init_step
        self.eval_every_steps = self.schedule.eval_every_steps
        self.total_steps = self.schedule.total_steps
        self.seq_length = m.seq_length

        init_layout(layout, t, ctx.seed)
        self.config = transformer_config(m, t, tp=layout.tp, pp=layout.pp, cp=layout.cp)
        chunks = build_model_chunks(m, self.config, pp_rank=layout.coords()["pp"], pp=layout.pp)
        self.model = parallelize(chunks, self.config, t)
        self.optimizer = build_optimizer(self.model, replace(o, base_lr=self.base_lr), self.config,
                                         distributed_optimizer=uses_distributed_optimizer(t))
        self._load_initial_checkpoint()
        device = ctx.device
        s = self.seq_length
        # The local spec's attention needs the causal mask as a tensor (megatron would build it on "cuda");
        # TE's fused attention takes the causal mask type alone.
        self.attention_mask = None if te_available() else \
            torch.triu(torch.ones(s, s, dtype=torch.bool, device=device), diagonal=1)[None, None]
        self.position_ids = torch.arange(s, device=device)
        self.train_data = self.valid_data = None
        self._lr = 0.0

    # -- logging -----------------------------------------------------------------------------------------
    def log_hyperparameters(self) -> None:
        log, o, t = self.ctx.log, self.cfg.optim, self.cfg.train
        log.event(constants.GLOBAL_BATCH_SIZE, t.global_batch_size)
        log.event(constants.GRADIENT_ACCUMULATION_STEPS, self.num_microbatches)
        log.event(constants.MAX_SEQUENCE_LENGTH, self.seq_length)
        log.event(constants.OPT_NAME, "adam")
        log.event(constants.OPT_BASE_LR, self.base_lr)
        log.event(constants.OPT_END_LR, self.schedule.min_lr)
        log.event(constants.OPT_LR_DECAY_STEPS, self.decay_steps)
        log.event(constants.OPT_LR_WARMUP_STEPS, self.warmup_steps)
        log.event(constants.OPT_LR_DECAY_SCHEDULE, "cosine with linear warmup")
        log.event(constants.OPT_ADAM_BETA_1, o.beta1)
        log.event(constants.OPT_ADAM_BETA_2, o.beta2)
        log.event(constants.OPT_ADAM_EPSILON, o.eps)
        log.event(constants.OPT_GRADIENT_CLIP_NORM, o.clip_grad)
        log.event(constants.OPT_WEIGHT_DECAY, o.weight_decay)
        log.event(constants.INIT_CHECKPOINT_STEP, self.init_step)

    # -- batches -------------------------------------------------------------------------------------------
    def _collate(self, samples: list[dict]) -> dict:
        tokens = torch.from_numpy(np.stack([s["tokens"] for s in samples]))
        labels = torch.from_numpy(np.stack([s["labels"] for s in samples]))
        mask = (labels >= 0).float()
        dev = self.ctx.device
        return {"tokens": tokens.to(dev, non_blocking=True), "labels": labels.clamp(min=0).to(dev, non_blocking=True),
                "loss_mask": mask.to(dev, non_blocking=True)}

    def _train_microbatches(self, step: int) -> list[dict]:
        """Megatron's sampler order: micro-batch j of the step is global samples [base + j*mbs*dp, ...),
        of which this DP rank takes its mbs-long slice."""
        t, layout = self.cfg.train, self.ctx.layout
        mbs, dp, rank = t.micro_batch_size, layout.dp, layout.dp_rank
        base = step * t.global_batch_size
        return [self._collate([self.train_data[base + j * mbs * dp + rank * mbs + k] for k in range(mbs)])
                for j in range(self.num_microbatches)]

    def _synthetic_microbatches(self, count: int, mbs: int) -> list[dict]:
        g = torch.Generator().manual_seed(0)
        vocab = self.cfg.model.vocab_size
        out = []
        for _ in range(count):
            tokens = torch.randint(0, vocab, (mbs, self.seq_length), generator=g).numpy()
            labels = np.concatenate([tokens[:, 1:], np.full((mbs, 1), -1)], axis=1)
            out.append(self._collate([{"tokens": a, "labels": b} for a, b in zip(tokens, labels)]))
        return out

    # -- steps ---------------------------------------------------------------------------------------------
    def _forward_step(self, data_iterator, model, *, evaluating: bool = False):
        batch = next(data_iterator)
        b = batch["tokens"].shape[0]
        losses = model(batch["tokens"], self.position_ids.expand(b, -1), self.attention_mask,
                       labels=batch["labels"])
        return losses, partial(self._eval_loss if evaluating else self._train_loss, batch["loss_mask"])

    @staticmethod
    def _train_loss(loss_mask, losses):
        loss = (losses.float() * loss_mask).sum() / loss_mask.sum().clamp(min=1)
        # clone: the schedule divides the returned loss by the micro-batch count in place.
        return loss, {"lm loss": loss.detach().clone()}

    @staticmethod
    def _eval_loss(loss_mask, losses):
        total = (losses.float() * loss_mask).sum()
        return total, {"sum": total.detach().double().clone(), "count": loss_mask.sum().double()}

    def _run_schedule(self, microbatches: list[dict], *, forward_only: bool, mbs: int, evaluating: bool = False):
        return run_schedule(partial(self._forward_step, evaluating=evaluating), self.model, microbatches,
                            forward_only=forward_only, seq_length=self.seq_length, micro_batch_size=mbs)

    def learning_rate(self, step: int) -> float:
        """The learning rate of the run's `step`-th update (0-based; the schedule resumes at init_step)."""
        return self.schedule.learning_rate(step)

    def _step_on(self, microbatches: list[dict], step: int) -> torch.Tensor:
        self._lr = self.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr
        for chunk in self.model:
            chunk.train()
        self.optimizer.zero_grad()
        out = self._run_schedule(microbatches, forward_only=False, mbs=self.cfg.train.micro_batch_size)
        self.optimizer.step()
        update_fp8_scales(self.model)  # delayed scaling (torch FP8 path; TE keeps its own)
        loss = torch.zeros((), device=self.ctx.device)
        if is_last_stage() and out:
            loss = torch.stack([d["lm loss"] for d in out]).mean()
        return from_last_stage(loss)

    def train_step(self, step: int) -> torch.Tensor:
        return self._step_on(self._train_microbatches(step), step)

    def _eval_sums(self, microbatches: list[dict], mbs: int) -> torch.Tensor:
        for chunk in self.model:
            chunk.eval()
        with torch.no_grad():
            out = self._run_schedule(microbatches, forward_only=True, mbs=mbs, evaluating=True)
        sums = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        if is_last_stage() and out:
            sums[0] = sum(d["sum"] for d in out)
            sums[1] = sum(d["count"] for d in out)
        return from_last_stage(sums)

    def evaluate(self) -> float:
        layout, data = self.ctx.layout, self.valid_data
        mbs = self.cfg.train.eval_micro_batch_size or self.cfg.train.micro_batch_size
        # DP rank r evaluates a contiguous share; every replica runs the same number of micro-batches
        # (padded with fully masked samples), which the pipeline schedule needs within a replica, and the
        # interleaved schedule wants that number to be a multiple of pp (it runs them in groups of pp).
        group = mbs * (layout.pp if self.config.virtual_pipeline_model_parallel_size else 1)
        per_rank = math.ceil(math.ceil(len(data) / layout.dp) / group) * group
        mine = range(layout.dp_rank * per_rank, min((layout.dp_rank + 1) * per_rank, len(data)))
        blank = dict(data[0], labels=np.full(self.seq_length, -1, dtype=np.int64))
        samples = [data[i] for i in mine] + [blank] * (per_rank - len(mine))
        microbatches = [self._collate(samples[i:i + mbs]) for i in range(0, per_rank, mbs)]
        sums = self._eval_sums(microbatches, mbs)
        if layout.dp > 1:
            dist.all_reduce(sums, group=layout.dp_group())
        if int(sums[1]) != data.num_predicted_tokens:
            raise RuntimeError(f"evaluated {int(sums[1])} tokens, expected all {data.num_predicted_tokens}")
        return float(sums[0] / sums[1])

    def warmup(self, steps: int) -> None:
        """Untimed forward/backward and eval passes on random tokens. No optimizer step, so nothing needs
        restoring: the weights and Adam moments stay as the initial checkpoint left them."""
        mbs = self.cfg.train.micro_batch_size
        for _ in range(steps):
            for chunk in self.model:
                chunk.train()
            self.optimizer.zero_grad()
            self._run_schedule(self._synthetic_microbatches(self.num_microbatches, mbs), forward_only=False, mbs=mbs)
        if steps > 0:
            self._eval_sums(self._synthetic_microbatches(max(1, self.ctx.layout.pp), mbs), mbs)
        self.optimizer.zero_grad()
        reset_fp8_state(self.model)  # the timed run starts with fresh FP8 statistics, as NVIDIA's does

    # -- data and blocks -------------------------------------------------------------------------------
    def open_data(self) -> dict:
        from pipelines.megatron_data.dataset import BlendedSamples, ValidationSamples
        from pipelines.megatron_data.indexed import IndexedDataset

        d, ctx = self.cfg.data, self.ctx
        cache = d.index_cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "mlperf-stack", "gpt3_index")
        train = [IndexedDataset(os.path.join(ctx.data_dir, p)) for p in d.train_prefixes]
        # The reference's loaded checkpoint carries its consumed-samples counter (4000 steps x 1536): training
        # continues at that position of the blend, so the run visits the samples the reference would.
        self.train_data = BlendedSamples(train, d.train_weights, self.total_steps * self.global_batch_size,
                                         self.seq_length, ctx.seed, cache,
                                         consumed_samples=self.cfg.optim.init_checkpoint_samples)
        self.valid_data = ValidationSamples(IndexedDataset(os.path.join(ctx.data_dir, d.valid_prefix)),
                                            self.seq_length)
        if d.eval_tokens and self.valid_data.num_tokens != d.eval_tokens:
            raise ValueError(f"{ctx.data_dir}/{d.valid_prefix}: {self.valid_data.num_tokens} validation tokens, the "
                             f"config says data.eval_tokens={d.eval_tokens}")
        return {"train_samples": len(self.train_data), "eval_samples": self.valid_data.num_tokens}

    def blocks(self) -> list[Block]:
        return eval_blocks(self.cfg)

    def progress_fields(self) -> dict:
        return {"lr": float(self._lr), "grad_norm": float(self.optimizer.last_grad_norm)}

    # -- checkpoints -----------------------------------------------------------------------------------
    def _load_initial_checkpoint(self) -> None:
        """Untimed, as the rules allow: the reference checkpoint's weights and Adam moments, unless the run
        resumes from a checkpoint of its own (which holds both already)."""
        d, ctx, run = self.cfg.data, self.ctx, self.cfg.run
        if checkpoint.resumes(run, checkpointing.LATEST):
            return
        # Only the real sequence length warns: debug flavours without a checkpoint are not MLPerf runs anyway.
        path = init_checkpoint_dir(ctx, d.init_checkpoint, benchmark="gpt3", what="the reference checkpoint",
                                   warn_if_empty=self.seq_length == 2048)
        if path is None:
            return
        r = load_reference_checkpoint(path, self.model, self.optimizer, threads=d.init_checkpoint_threads)
        if ctx.is_main:
            print(f"gpt3: loaded the initial checkpoint {path} (Adam step {r.step}): rank 0 read "
                  f"{r.bytes_read / 2**20:.1f} MiB from {r.arrays_read} arrays in {r.seconds:.1f} s", flush=True)

    def save_checkpoint(self, directory: str, common: dict) -> None:
        checkpointing.save(directory, self.model, self.optimizer, common)

    def load_checkpoint(self, directory: str, check) -> dict | None:
        return checkpointing.load(directory, self.model, self.optimizer, check)

    def close(self) -> None:
        destroy_megatron()
