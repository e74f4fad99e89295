"""BERT-large phase 2 on Wikipedia: what the run loop needs (build, warm-up, data, train step, eval, keys).

Samples (sequences) are the unit of everything here: the global batch, the eval cadence (every
FLOOR(0.05 * (230.23 * GBS + 3e6), 25000) samples, no eval at 0), and `eval_accuracy.epoch_num`
(samples trained, as the RCP checker reads). The budget is `optim.training_steps`, where the learning
rate reaches 0: a run that has not reached the target there stops as aborted.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from mlperf_logging.mllog import constants

from kernels.backends import distributed_optimizer_class, optimizer_class
from kernels.fp8 import te_available
from kernels.lamb_ref import lamb_param_groups
from models.bert.config import BertConfig
from models.bert.model import build_bert, fp8_modules, mlm_correct_and_total, pretraining_loss
from models.bert.parallelize import parallelize
from models.bert.state_dict_adapter import load_checkpoint, load_into
from pipelines.bert.format import BertFormatError
from pipelines.bert.loader import EvalBatches, TrainBatches
from pipelines.bert.packing import PretrainingBatch, build_batch, random_sequences
from pipelines.bert.store import SequenceStore
from runtime import schedule
from runtime.benchmark import RunContext
from runtime.data_parallel import replicate, sharding_groups, unwrap
from runtime.data_parallel_benchmark import DataParallelBenchmark
from runtime.schedule import Block


def lamb_lr(step: int, *, base_lr: float, warmup_steps: int, start_warmup_step: int, training_steps: int) -> float:
    """The reference's schedule at 0-based `step` (the update it is used for): a linear decay from
    base_lr to 0 at training_steps, replaced by base_lr * (step - start_warmup_step) / warmup_steps
    while step - start_warmup_step < warmup_steps (a negative start_warmup_step begins partway)."""
    decayed = base_lr * (1.0 - min(step, training_steps) / training_steps)
    if warmup_steps > 0 and step - start_warmup_step < warmup_steps:
        return base_lr * (step - start_warmup_step) / warmup_steps
    return decayed


def eval_interval_samples(global_batch_size: int) -> int:
    """The rule's cadence: 150k samples up to GBS 2048, 175k at 3072/4096, 225k at 8192."""
    return int(0.05 * (230.23 * global_batch_size + 3_000_000)) // 25_000 * 25_000


def write_synthetic_data(cfg: BertConfig, out_dir: str) -> None:
    from pipelines.bert.synthetic import write_synthetic_bert

    d = cfg.data
    write_synthetic_bert(out_dir, num_shards=d.synthetic_shards, documents_per_shard=d.synthetic_documents_per_shard,
                         eval_documents=d.synthetic_eval_documents, eval_samples=d.eval_samples,
                         num_topics=d.synthetic_topics, words_per_topic=d.synthetic_words_per_topic,
                         vocab_size=cfg.model.vocab_size, max_seq_length=d.max_seq_length,
                         max_predictions=d.max_predictions_per_seq, dupe_factor=d.synthetic_dupe_factor,
                         seed=d.synthetic_seed)


class BertBenchmark(DataParallelBenchmark):
    eval_counters = ("correct", "masked", "samples")

    @classmethod
    def check_settings(cls, cfg: BertConfig, run_dir: str) -> None:
        if cfg.data.max_seq_length > cfg.model.max_position_embeddings:
            raise ValueError(f"data.max_seq_length={cfg.data.max_seq_length} exceeds "
                             f"model.max_position_embeddings={cfg.model.max_position_embeddings}")

    def __init__(self, cfg: BertConfig, ctx: RunContext):
        super().__init__(cfg, ctx)
        self.check_settings(cfg, ctx.run_dir)
        t, o = cfg.train, cfg.optim
        # Before the model is built: optim.distributed=true without apex fails in the first second.
        lamb = distributed_optimizer_class("lamb") if o.distributed else optimizer_class("lamb")
        if ctx.device.type == "cpu" and t.cpu_threads > 0:
            torch.set_num_threads(t.cpu_threads)

        model = build_bert(cfg.model)
        if cfg.data.init_checkpoint:
            path = ctx.data_path(cfg.data.init_checkpoint)
            load_into(model, load_checkpoint(path), path)
        # Same initial weights everywhere (seeded identically before the build); dropout differs by rank.
        torch.manual_seed(ctx.seed + ctx.launch.rank)
        # our FusedLAMB, or apex's under MLPERF_KERNELS=apex (which refuses the per-part Q/K/V trust ratios)
        groups = {}
        if o.distributed:  # DistributedFusedLAMB reduces the gradients itself: no DDP under it
            self.model = replicate(model, ctx.layout, ctx.device, benchmark="bert", compile=t.compile, ddp=False)
            process_group, shard_group, replica_group = sharding_groups(ctx.layout, ctx.launch.local_world_size)
            groups = dict(process_group=process_group, shard_group=shard_group, replica_group=replica_group)
        else:
            self.model = parallelize(model, ctx.layout, ctx.device, compile=t.compile)
        self.optimizer = lamb(lamb_param_groups(unwrap(self.model), o.weight_decay), lr=o.base_lr,
                              betas=(o.lamb_beta_1, o.lamb_beta_2), eps=o.lamb_epsilon,
                              weight_decay=o.weight_decay, max_grad_norm=o.max_grad_norm, **groups)
        self.fp8_layers = fp8_modules(unwrap(self.model))
        if cfg.model.fp8 and not self.fp8_layers and not te_available() and ctx.is_main:
            print("bert: model.fp8=true but Transformer Engine is not usable here, so the GEMMs run in "
                  f"{t.precision}; model.linear_backend=torch_fp8 gives torch FP8 GEMMs on a Hopper GPU", flush=True)

    # -- logging -----------------------------------------------------------------------------------------
    def log_hyperparameters(self) -> None:
        """closed_bert.yaml, each key once, with the names the checker wants (not the TF reference's
        misspelt `opt_learning_rate_trainnig_steps`, and with the three keys it omits)."""
        log, o, t = self.ctx.log, self.cfg.optim, self.cfg.train
        log.event(constants.GLOBAL_BATCH_SIZE, t.global_batch_size)
        log.event(constants.GRADIENT_ACCUMULATION_STEPS, t.grad_accum)
        log.event(constants.OPT_NAME, constants.LAMB)
        log.event(constants.OPT_BASE_LR, o.base_lr)
        log.event(constants.OPT_LAMB_EPSILON, o.lamb_epsilon)
        log.event(constants.OPT_LR_TRAINING_STEPS, o.training_steps)
        log.event(constants.OPT_LR_WARMUP_STEPS, o.warmup_steps)
        log.event(constants.NUM_WARMUP_STEPS, o.warmup_steps)
        log.event(constants.START_WARMUP_STEP, o.start_warmup_step)
        log.event(constants.OPT_LAMB_BETA_1, o.lamb_beta_1)
        log.event(constants.OPT_LAMB_BETA_2, o.lamb_beta_2)
        log.event(constants.OPT_LAMB_WEIGHT_DECAY, o.weight_decay)

    # -- steps ---------------------------------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        o = self.cfg.optim
        return lamb_lr(step, base_lr=o.base_lr, warmup_steps=o.warmup_steps, start_warmup_step=o.start_warmup_step,
                       training_steps=o.training_steps)

    def _forward(self, batch: PretrainingBatch):
        batch = batch.to(self.ctx.device, non_blocking=True)
        with self.autocast():
            mlm_logits, nsp_logits = self.model(**batch.model_inputs())
        return batch, mlm_logits, nsp_logits

    def loss(self, micro_batch: PretrainingBatch) -> torch.Tensor:
        batch, mlm_logits, nsp_logits = self._forward(micro_batch)
        # bf16 logits straight into the kernel: it keeps fp32 statistics without an fp32 copy of the
        # (predictions x 30522) logits
        return pretraining_loss(mlm_logits, batch.mlm_labels, nsp_logits, batch.nsp_labels)

    def after_step(self) -> None:
        for layer in self.fp8_layers:
            layer.update_scales()

    def train_micro_batches(self, step: int) -> list:
        return self.train_data.get(step)

    def eval_counts(self, batch: PretrainingBatch) -> torch.Tensor:
        batch, mlm_logits, _ = self._forward(batch)
        counts = torch.zeros(3, dtype=torch.float64, device=self.ctx.device)
        counts[:2] += mlm_correct_and_total(mlm_logits, batch.mlm_labels)
        counts[2] += batch.num_sequences
        return counts

    def _synthetic_batch(self, rng: np.random.Generator, sequences: int) -> PretrainingBatch:
        d = self.cfg.data
        return build_batch(random_sequences(rng, sequences, self.cfg.model.vocab_size, d.max_seq_length,
                                            d.max_predictions_per_seq),
                           d.max_seq_length, d.max_predictions_per_seq, d.max_sequences_per_row, d.row_multiple)

    def synthetic_batches(self) -> tuple[list, object]:
        rng = np.random.default_rng(0)
        train = [self._synthetic_batch(rng, self.micro_batch) for _ in range(self.cfg.train.grad_accum)]
        return train, self._synthetic_batch(rng, self.cfg.data.eval_batch_sequences)

    # -- data and blocks -------------------------------------------------------------------------------
    def open_data(self) -> dict:
        d, ctx = self.cfg.data, self.ctx
        root = os.path.join(ctx.data_dir, d.store_dir)
        train, evaluation = SequenceStore(os.path.join(root, "train")), SequenceStore(os.path.join(root, "eval"))
        for store in (train, evaluation):
            if (store.max_seq_length, store.max_predictions) != (d.max_seq_length, d.max_predictions_per_seq):
                raise BertFormatError(f"{store.dir}: written for {store.max_seq_length} tokens / "
                                      f"{store.max_predictions} predictions, the config says "
                                      f"{d.max_seq_length} / {d.max_predictions_per_seq}")
        if len(evaluation) != d.eval_samples:
            raise BertFormatError(f"{evaluation.dir}: holds {len(evaluation)} eval samples, the config says "
                                  f"data.eval_samples={d.eval_samples}")
        layout = ctx.layout
        self.train_data = TrainBatches(train, global_batch_size=self.global_batch_size, dp_rank=layout.dp_rank,
                                       dp_size=layout.dp, grad_accum=self.cfg.train.grad_accum, seed=ctx.seed,
                                       max_per_row=d.max_sequences_per_row, row_multiple=d.row_multiple,
                                       pin_memory=ctx.device.type == "cuda")
        self.eval_data = EvalBatches(evaluation, dp_rank=layout.dp_rank, dp_size=layout.dp,
                                     batch_sequences=d.eval_batch_sequences, max_per_row=d.max_sequences_per_row,
                                     row_multiple=d.row_multiple)
        return {"train_samples": len(train), "eval_samples": len(evaluation)}

    def blocks(self) -> list[Block]:
        """An eval at every multiple of the cadence (rounded up to whole steps) and at the last step."""
        gbs, total = self.global_batch_size, self.cfg.optim.training_steps
        interval = self.cfg.train.eval_every_samples or eval_interval_samples(gbs)
        ends = []
        k = 1
        while (end := math.ceil(k * interval / gbs)) < total:
            ends.append(end)
            k += 1
        ends.append(total)
        return schedule.blocks(ends, "samples", global_batch_size=gbs)
