"""Llama-2-70B LoRA fine-tuning on GovReport: what the run loop needs, on megatron-core.

Units: a step is one global batch; samples are 8192-token sequences. `eval_accuracy` is the validation loss
as the reference's HF Trainer computes it (each sequence's token-mean cross-entropy over its labelled
tokens, averaged over the sequences), lower is better, logged with `samples_count` = sequences trained
(the RCP unit; `epoch_num` carries the same number for the runtime and the open rules). Training loss is
the same per-sequence mean, averaged over the global batch (the reference: one sequence per GPU, DDP
averaging).

Schedule (`step_schedule`): AdamW on the LoRA parameters only, lr cosine from base_lr to 0 over
optim.max_steps without warmup (HF's cosine schedule: the update of step k uses 0.5 (1 + cos(pi k / max))),
which is also the budget. Evaluations every CEIL(eval_every_samples / GBS) steps, the first
FLOOR(0.125 GBS + 2) of them skipped (mlcommons/training 7d3dee39, part of the v4.0 rules): the first at
(skip + 1) intervals.

Layouts: TP (with SP), CP and DP, no pipeline (models/llama2_70b_lora/parallelize.py). Under CP each rank
holds two of the sequence's 2*cp chunks (`cp_slice`, megatron's load balance); the per-sequence means are
assembled from every CP rank's part (token counts all-reduced over CP), and each rank's loss is scaled by cp
because megatron averages gradients over DP x CP.

The frozen base comes from `data.init_checkpoint`, a HF Llama checkpoint directory read per TP shard
(models/llama2_70b_lora/hf_checkpoint.py); the run's own checkpoints hold the adapters and their Adam
state only (models/llama2_70b_lora/checkpointing.py).
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

from models.llama2_70b_lora import checkpointing
from models.llama2_70b_lora.config import LlamaLoraConfig
from models.llama2_70b_lora.hf_checkpoint import load_hf_checkpoint
from models.llama2_70b_lora.lora import lora_parameters
from models.llama2_70b_lora.model import build_model, transformer_config
from models.llama2_70b_lora.parallelize import (
    ContextParallelSdpaAttention,
    all_reduce_cp,
    cp_rank,
    cp_slice,
    init_layout,
    parallelize,
)
from runtime import schedule
from runtime.benchmark import Benchmark, RunContext
from runtime.init_checkpoint import init_checkpoint_dir
from runtime.mcore.fp8_linear import reset_fp8_state, update_fp8_scales
from runtime.mcore.parallelize import build_optimizer, destroy_megatron
from runtime.mcore.pipeline import run_schedule
from runtime.schedule import Block


def write_synthetic_data(cfg: LlamaLoraConfig, out_dir: str) -> None:
    """The two splits of the summary task and, when the flavour names one, a random HF-layout base model
    (fused QKV, as the MLPerf checkpoint) to fine-tune."""
    from models.llama2_70b_lora.synthetic_base import write_synthetic_base
    from pipelines.govreport.synthetic import write_synthetic

    d, m = cfg.data, cfg.model
    write_synthetic(out_dir, seq_length=m.seq_length, vocab=m.vocab_size, train_rows=d.train_samples,
                    eval_rows=d.eval_samples, summary_tokens=d.synthetic_summary_tokens, seed=d.synthetic_seed,
                    fmt=d.format, doc_tokens=d.synthetic_doc_tokens)
    if d.init_checkpoint:
        write_synthetic_base(m, os.path.join(out_dir, d.init_checkpoint), seed=d.synthetic_seed)


def eval_skip(global_batch_size: int) -> int:
    """Evaluations skipped at the start: FLOOR(0.125 * GBS + 2)."""
    return math.floor(0.125 * global_batch_size + 2)


@dataclass(frozen=True)
class StepSchedule:
    """The run's schedule in steps of its global batch, from the config alone (no model is built)."""

    base_lr: float
    max_steps: int  # cosine length and budget
    eval_every_steps: int  # CEIL(eval_every_samples / GBS)
    skipped_evals: int  # FLOOR(0.125 GBS + 2)

    def learning_rate(self, step: int) -> float:
        """The lr of the `step`-th update (0-based): cosine to 0 over max_steps, no warmup."""
        return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * min(step, self.max_steps) / self.max_steps))

    def eval_end_steps(self) -> list[int]:
        """Steps after which the run evaluates: (skip + 1) intervals, then every interval, and at max_steps."""
        ends = list(range((self.skipped_evals + 1) * self.eval_every_steps, self.max_steps + 1, self.eval_every_steps))
        if not ends or ends[-1] != self.max_steps:
            ends.append(self.max_steps)
        return ends


def step_schedule(cfg: LlamaLoraConfig) -> StepSchedule:
    gbs = cfg.train.global_batch_size
    return StepSchedule(base_lr=cfg.optim.base_lr, max_steps=cfg.optim.max_steps,
                        eval_every_steps=math.ceil(cfg.train.eval_every_samples / gbs), skipped_evals=eval_skip(gbs))


def eval_blocks(cfg: LlamaLoraConfig) -> list[Block]:
    """Blocks in samples: `samples_count` on every event, and `epoch_num` (the same count) on the evals."""
    return schedule.blocks(step_schedule(cfg).eval_end_steps(), "samples",
                           global_batch_size=cfg.train.global_batch_size, samples_count_on_evals=True)


class LlamaLoraBenchmark(Benchmark):
    @classmethod
    def check_settings(cls, cfg: LlamaLoraConfig, run_dir: str) -> None:
        if cfg.optim.max_steps < 1:
            raise ValueError(f"optim.max_steps={cfg.optim.max_steps}: expected >= 1")

    def __init__(self, cfg: LlamaLoraConfig, ctx: RunContext):
        super().__init__(cfg, ctx)
        self.check_settings(cfg, ctx.run_dir)
        m, t, o, layout = cfg.model, cfg.train, cfg.optim, ctx.layout
        if t.global_batch_size % (layout.dp * t.micro_batch_size):  # dp is known once the ranks are
            raise ValueError(f"train.global_batch_size={t.global_batch_size} is not divisible by "
                             f"dp*micro_batch_size = {layout.dp}*{t.micro_batch_size}")
        self.num_microbatches = t.global_batch_size // (layout.dp * t.micro_batch_size)
        self.schedule = step_schedule(cfg)
        self.seq_length = m.seq_length
        self.cp = layout.cp

        init_layout(layout, ctx.seed)
        self.config = transformer_config(m, t, tp=layout.tp, pp=layout.pp, cp=layout.cp)
        model = build_model(m, self.config, core_attention=ContextParallelSdpaAttention)
        self._load_base(model)
        if m.precision == "fp8":  # no TE: the frozen GEMM weights to e4m3 now that they are in (fp8_frozen.py)
            from models.llama2_70b_lora.fp8_frozen import store_base_in_fp8

            store_base_in_fp8(model)
        self.model = parallelize(model, self.config, t)
        # Only the adapters require grad, so only they reach the optimizer (ReplicatedAdamW / megatron's).
        self.optimizer = build_optimizer(self.model, replace(o, min_lr_ratio=0.0), self.config,
                                         distributed_optimizer=t.distributed_optimizer and torch.cuda.is_available())
        self.train_data = self.valid_data = None
        self._epoch_order = (-1, None)
        self._lr = 0.0

    # -- logging -----------------------------------------------------------------------------------------
    def log_hyperparameters(self) -> None:
        log, o, t, m = self.ctx.log, self.cfg.optim, self.cfg.train, self.cfg.model
        log.event(constants.GLOBAL_BATCH_SIZE, t.global_batch_size)
        log.event(constants.GRADIENT_ACCUMULATION_STEPS, self.num_microbatches)
        log.event(constants.OPT_BASE_LR, self.schedule.base_lr)
        log.event(constants.OPT_LR_WARMUP_FACTOR, 0.0)
        log.event(constants.OPT_LR_TRAINING_STEPS, self.schedule.max_steps)
        log.event(constants.OPT_ADAMW_WEIGHT_DECAY, o.weight_decay)
        log.event(constants.OPT_GRADIENT_CLIP_NORM, o.clip_grad)
        log.event("lora_rank", m.lora_rank)  # no constant for it in mlperf-logging 4.1
        log.event(constants.LORA_ALPHA, m.lora_alpha)
        log.event("lora_dropout", m.lora_dropout)
        log.event(constants.MAX_SEQUENCE_LENGTH, self.seq_length)

    # -- batches -------------------------------------------------------------------------------------------
    def _collate(self, rows: list[tuple]) -> dict:
        dev = self.ctx.device
        tokens, targets, mask = (torch.from_numpy(np.stack(x)) for x in zip(*rows))
        if self.cp > 1:
            rank = cp_rank()
            tokens, targets, mask = (cp_slice(x, self.cp, rank) for x in (tokens, targets, mask))
        return {"tokens": tokens.to(dev, non_blocking=True), "labels": targets.to(dev, non_blocking=True),
                "loss_mask": mask.to(dev, non_blocking=True)}

    def _sample_index(self, position: int) -> int:
        """The training row at global position `position`: epoch e = position // rows is the (seed, e)
        permutation of the rows, so every row is seen once per epoch."""
        rows = len(self.train_data)
        epoch, k = divmod(position, rows)
        if self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, np.random.default_rng([self.ctx.seed, epoch]).permutation(rows))
        return int(self._epoch_order[1][k])

    def _train_microbatches(self, step: int) -> list[dict]:
        """Micro-batch j of the step is global positions [base + j*mbs*dp, ...), of which this DP rank takes
        its mbs-long slice (the same rows per step for any DP size)."""
        t, layout = self.cfg.train, self.ctx.layout
        mbs, dp, rank = t.micro_batch_size, layout.dp, layout.dp_rank
        base = step * t.global_batch_size
        return [self._collate([self.train_data.training_pair(self._sample_index(base + j * mbs * dp + rank * mbs + k))
                               for k in range(mbs)]) for j in range(self.num_microbatches)]

    def _synthetic_microbatches(self, count: int, mbs: int) -> list[dict]:
        g = torch.Generator().manual_seed(0)
        vocab, s = self.cfg.model.vocab_size, self.seq_length
        rows = []
        for _ in range(count * mbs):
            ids = torch.randint(0, vocab, (s,), generator=g).numpy()
            mask = np.zeros(s, np.float32)
            mask[s // 2:-1] = 1.0
            rows.append((ids, np.concatenate([ids[1:], [0]]), mask))
        return [self._collate(rows[i * mbs:(i + 1) * mbs]) for i in range(count)]

    # -- steps ---------------------------------------------------------------------------------------------
    def _forward_step(self, data_iterator, model, *, evaluating: bool = False):
        batch = next(data_iterator)
        losses = model(batch["tokens"], None, None, labels=batch["labels"])
        return losses, partial(self._eval_loss if evaluating else self._train_loss, batch["loss_mask"])

    def _per_sequence(self, loss_mask, losses) -> tuple[torch.Tensor, torch.Tensor]:
        """(each sequence's token-mean loss, whether it has labelled tokens), over the whole sequence under CP."""
        sums = (losses.float() * loss_mask).sum(1)
        counts = loss_mask.sum(1)
        if self.cp > 1:
            counts = counts.clone()
            all_reduce_cp(counts)
        return sums / counts.clamp(min=1), counts > 0

    def _train_loss(self, loss_mask, losses):
        per_seq, _ = self._per_sequence(loss_mask, losses)
        loss = per_seq.mean()
        report = loss.detach().clone()
        if self.cp > 1:
            all_reduce_cp(report)
        # clone: the schedule divides the returned loss by the micro-batch count in place.
        return loss, {"lm loss": report}

    def _eval_loss(self, loss_mask, losses):
        per_seq, has = self._per_sequence(loss_mask, losses)
        total = (per_seq * has).sum()
        return total, {"sum": total.detach().double().clone(), "count": has.sum().double()}

    def _run_schedule(self, microbatches: list[dict], *, forward_only: bool, mbs: int, evaluating: bool = False):
        return run_schedule(partial(self._forward_step, evaluating=evaluating), self.model, microbatches,
                            forward_only=forward_only, seq_length=self.seq_length // self.cp, micro_batch_size=mbs)

    def learning_rate(self, step: int) -> float:
        return self.schedule.learning_rate(step)

    def train_step(self, step: int) -> torch.Tensor:
        self._lr = self.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr
        self.model[0].train()
        self.optimizer.zero_grad()
        out = self._run_schedule(self._train_microbatches(step), forward_only=False,
                                 mbs=self.cfg.train.micro_batch_size)
        self.optimizer.step()
        update_fp8_scales(self.model)
        return torch.stack([d["lm loss"] for d in out]).mean()

    def _eval_sums(self, microbatches: list[dict], mbs: int) -> torch.Tensor:
        self.model[0].eval()
        with torch.no_grad():
            out = self._run_schedule(microbatches, forward_only=True, mbs=mbs, evaluating=True)
        sums = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        sums[0] = sum(d["sum"] for d in out)
        sums[1] = sum(d["count"] for d in out)
        if self.cp > 1:  # each CP rank holds its part of every sequence's mean; the count is whole on each
            all_reduce_cp(sums[:1])
        return sums

    def evaluate(self) -> float:
        layout, data = self.ctx.layout, self.valid_data
        mbs = self.cfg.train.eval_micro_batch_size
        # DP rank r evaluates a contiguous share, padded with fully masked rows so every rank runs as many
        # micro-batches; a row without labelled tokens counts for nothing.
        per_rank = math.ceil(math.ceil(len(data) / layout.dp) / mbs) * mbs
        mine = range(layout.dp_rank * per_rank, min((layout.dp_rank + 1) * per_rank, len(data)))
        ids, targets, _ = data.training_pair(0)
        blank = (ids, targets, np.zeros(self.seq_length, np.float32))
        rows = [data.training_pair(i) for i in mine] + [blank] * (per_rank - len(mine))
        sums = self._eval_sums([self._collate(rows[i:i + mbs]) for i in range(0, per_rank, mbs)], mbs)
        if layout.dp > 1:
            dist.all_reduce(sums, group=layout.dp_group())
        if int(sums[1]) != len(data):
            raise RuntimeError(f"evaluated {int(sums[1])} sequences, expected all {len(data)}")
        return float(sums[0] / sums[1])

    def warmup(self, steps: int) -> None:
        """Untimed forward/backward and eval passes on random tokens, no optimizer step (the adapters and
        their Adam state stay as built); then fresh FP8 statistics, as NVIDIA resets them."""
        mbs = self.cfg.train.micro_batch_size
        for _ in range(steps):
            self.model[0].train()
            self.optimizer.zero_grad()
            self._run_schedule(self._synthetic_microbatches(self.num_microbatches, mbs), forward_only=False, mbs=mbs)
        if steps > 0:
            self._eval_sums(self._synthetic_microbatches(1, mbs), mbs)
        self.optimizer.zero_grad()
        reset_fp8_state(self.model)

    # -- data and blocks -------------------------------------------------------------------------------
    def open_data(self) -> dict:
        from pipelines.govreport.format import read_split

        d, m = self.cfg.data, self.cfg.model
        self.train_data = read_split(self.ctx.data_dir, "train", d.format, m.seq_length)
        self.valid_data = read_split(self.ctx.data_dir, "validation", d.format, m.seq_length)
        self.train_data.check(m.seq_length, m.vocab_size, d.train_samples)
        self.valid_data.check(m.seq_length, m.vocab_size, d.eval_samples)
        if len(self.train_data) < self.global_batch_size:
            raise ValueError(f"{self.train_data.source}: {len(self.train_data)} rows, fewer than one global batch")
        return {"train_samples": len(self.train_data), "eval_samples": len(self.valid_data)}

    def blocks(self) -> list[Block]:
        return eval_blocks(self.cfg)

    def progress_fields(self) -> dict:
        return {"lr": float(self._lr), "grad_norm": float(self.optimizer.last_grad_norm)}

    # -- checkpoints -----------------------------------------------------------------------------------
    def _load_base(self, model) -> None:
        """Untimed, as the rules allow: the frozen base from the HF checkpoint, this rank's TP shard only."""
        d, ctx = self.cfg.data, self.ctx
        path = init_checkpoint_dir(ctx, d.init_checkpoint, benchmark="llama2_70b_lora",
                                   what="a HF Llama-2-70B checkpoint")
        if path is None:
            return
        layout = ctx.layout
        read = load_hf_checkpoint(path, model, self.cfg.model, tp=layout.tp, tp_rank=layout.coords()["tp"])
        if ctx.is_main:
            print(f"llama2_70b_lora: loaded the base model {path}: rank 0 read {read / 2**20:.1f} MiB; "
                  f"{sum(p.numel() for p in lora_parameters(model).values())} LoRA parameters on this rank",
                  flush=True)

    def save_checkpoint(self, directory: str, common: dict) -> None:
        checkpointing.save(directory, self.model, self.optimizer, common)

    def load_checkpoint(self, directory: str, check) -> dict | None:
        return checkpointing.load(directory, self.model, self.optimizer, check)

    def close(self) -> None:
        destroy_megatron()

