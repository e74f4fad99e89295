"""DLRMv2 (DCNv2) on multi-hot Criteo: what the run loop needs (build, warm-up, data, train step, eval, keys).

The unit of progress is the fraction of the one training epoch: 20 blocks of floor(train / (GBS * 20))
steps, an exact AUROC over all validation samples after each, `eval_accuracy.epoch_num` = steps done /
steps per epoch (0.05, 0.10, ...: what the RCP checker reads). A remainder of steps past the 20th block is
a last block ending at the epoch (1.0). The learning rate is constant (closed rules).
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from mlperf_logging.mllog import constants

from models.dlrm_dcnv2.auroc import binary_auroc
from models.dlrm_dcnv2.config import DLRMConfig
from models.dlrm_dcnv2.model import build_dlrm
from models.dlrm_dcnv2.parallelize import parallelize, reset_optimizer_state, set_learning_rate, unwrap
from pipelines.criteo.format import NUM_DENSE, sparse_feature_names
from runtime import checkpoint, schedule
from runtime.benchmark import Benchmark, RunContext
from runtime.precision import autocast, autocast_dtype
from runtime.safe_dcp import SafeFileSystemReader
from runtime.schedule import Block


def write_synthetic_data(cfg: DLRMConfig, out_dir: str) -> None:
    from pipelines.criteo.synthetic import write_synthetic_criteo

    d = cfg.data
    if d.synthetic_rows_per_day <= 0:
        raise ValueError("this flavour has no synthetic data size (data.synthetic_rows_per_day); use the debug "
                         "flavour or set data.synthetic_rows_per_day=N")
    info = write_synthetic_criteo(out_dir, days=d.days, rows_per_day=d.synthetic_rows_per_day,
                                  table_rows=cfg.model.table_rows, multi_hot_sizes=cfg.model.multi_hot_sizes,
                                  seed=d.synthetic_seed)
    print(f"planted model's validation AUROC: {info['planted_model_validation_auroc']:.4f} "
          f"(the most any model can reach; target {cfg.run.target})")


def dense_optimizer(params, o) -> torch.optim.Optimizer:
    """Adagrad over the MLPs and every other parameter outside the tables' fused in-backward Adagrad (on
    several ranks also the tables torchrec's planner makes data parallel, whose weights are slices of their
    batched embedding kernel's buffer: the optimizer updates those in place, kernels/multi_tensor.py). It is
    the fused flat-buffer Adagrad of kernels/optimizers.py: one Triton launch per step on a GPU; on CPU
    torch's own operations, bit for bit torch.optim.Adagrad. It implements every Adagrad hyperparameter the
    config has (lr, lr_decay, weight_decay, eps, initial_accumulator_value); the closed rules fix all but
    lr (OptimConfig.check). Its step count is per param group (`param_groups[i]["step"]`), its accumulators
    ("sum") exist from construction, as torch's."""
    from kernels.optimizers import FusedAdagrad

    if o.base_lr < 0 or o.eps < 0 or o.lr_decay < 0 or o.weight_decay < 0 or o.initial_accumulator_value < 0:
        raise ValueError(f"dense Adagrad: lr={o.base_lr}, eps={o.eps}, lr_decay={o.lr_decay}, "
                         f"weight_decay={o.weight_decay}, initial_accumulator_value={o.initial_accumulator_value}: "
                         "each must be >= 0 (as torch.optim.Adagrad requires)")
    return FusedAdagrad(params, lr=o.base_lr, lr_decay=o.lr_decay, weight_decay=o.weight_decay, eps=o.eps,
                        initial_accumulator_value=o.initial_accumulator_value)


class DLRMBenchmark(Benchmark):
    @classmethod
    def check_settings(cls, cfg: DLRMConfig, run_dir: str) -> None:
        cfg.optim.check()
        t = cfg.train
        if cfg.data.train_samples // (t.global_batch_size * t.evals_per_epoch) < 1:
            raise ValueError(f"data.train_samples={cfg.data.train_samples} is less than {t.evals_per_epoch} global "
                             f"batches of {t.global_batch_size}")

    def __init__(self, cfg: DLRMConfig, ctx: RunContext):
        super().__init__(cfg, ctx)
        self.check_settings(cfg, ctx.run_dir)
        t, world = cfg.train, ctx.launch.world_size
        for key in ("global_batch_size", "eval_batch_size"):
            if getattr(t, key) % world:
                raise ValueError(f"train.{key}={getattr(t, key)} is not divisible by the {world} ranks")
        self.local_batch = t.global_batch_size // world
        self.local_eval_batch = t.eval_batch_size // world
        self.steps_per_epoch = cfg.data.train_samples // t.global_batch_size  # last partial batch dropped
        self.steps_per_eval = cfg.data.train_samples // (t.global_batch_size * t.evals_per_epoch)
        self.autocast_dtype = autocast_dtype(t.precision, ("fp32", "tf32", "bf16"))

        o, s = cfg.optim, cfg.sharding
        model = build_dlrm(cfg.model, sparse_device="meta", dense_device=ctx.device)
        self.model = parallelize(model, ctx.layout, ctx.device, local_world_size=ctx.launch.local_world_size,
                                 local_batch=self.local_batch, lr=o.base_lr, eps=o.eps,
                                 device_memory_gib=s.device_memory_gib, host_memory_gib=s.host_memory_gib,
                                 reserve_fraction=s.reserve_fraction, seed=ctx.seed)
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        dense = [p for _, p in in_backward_optimizer_filter(self.model.named_parameters())]
        self.dense_optimizer = dense_optimizer(dense, o)
        self.train_reader = self.eval_reader = None
        self._train_iter, self._next_step = None, -1
        self._eval_cache: list | None = None

    # -- logging -----------------------------------------------------------------------------------------
    def log_hyperparameters(self) -> None:
        log, o = self.ctx.log, self.cfg.optim
        log.event(constants.GLOBAL_BATCH_SIZE, self.global_batch_size)
        log.event(constants.GRADIENT_ACCUMULATION_STEPS, 1)
        log.event(constants.OPT_NAME, constants.ADAGRAD)
        log.event(constants.OPT_BASE_LR, o.base_lr)
        log.event(constants.OPT_ADAGRAD_LR_DECAY, o.lr_decay)
        log.event(constants.OPT_WEIGHT_DECAY, o.weight_decay)
        log.event(constants.OPT_ADAGRAD_INITIAL_ACCUMULATOR_VALUE, o.initial_accumulator_value)
        log.event(constants.OPT_ADAGRAD_EPSILON, o.eps)
        log.event(constants.OPT_LR_WARMUP_STEPS, o.warmup_steps)
        log.event(constants.OPT_LR_DECAY_START_STEP, o.decay_start_step)
        log.event(constants.OPT_LR_DECAY_STEPS, o.decay_steps)

    # -- steps ---------------------------------------------------------------------------------------------
    def _autocast(self):
        return autocast(self.ctx.device, self.autocast_dtype)

    def _step_on(self, batch) -> torch.Tensor:
        batch = batch.to(self.ctx.device, non_blocking=True)
        with self._autocast():
            logits = self.model(batch.dense, batch.sparse)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels)
        self.dense_optimizer.zero_grad(set_to_none=True)
        loss.backward()  # the embedding tables' Adagrad runs in here
        self.dense_optimizer.step()
        return loss.detach()

    def train_step(self, step: int) -> torch.Tensor:
        if self._train_iter is None or step != self._next_step:  # first step, or resumed mid-epoch
            self._close_train_iter()
            from pipelines.criteo.loader import Prefetcher, TrainBatches

            batches = TrainBatches(self.train_reader, self.global_batch_size, self.ctx.launch.rank,
                                   self.ctx.launch.world_size, self.steps_per_epoch, start_step=step)
            self._train_iter = Prefetcher(batches, self.cfg.data.prefetch) if self.cfg.data.prefetch else iter(batches)
        self._next_step = step + 1
        return self._step_on(next(self._train_iter))

    def _random_batch(self, batch: int, generator: torch.Generator):
        from torchrec import KeyedJaggedTensor

        from pipelines.criteo.loader import CriteoBatch

        m = self.cfg.model
        values = torch.cat([torch.randint(0, rows, (batch * size,), generator=generator, dtype=torch.int32)
                            for rows, size in zip(m.table_rows, m.multi_hot_sizes)])
        lengths = torch.tensor(m.multi_hot_sizes, dtype=torch.int32).repeat_interleave(batch)
        sparse = KeyedJaggedTensor(keys=sparse_feature_names(m.num_tables), values=values, lengths=lengths,
                                   stride=batch)
        return CriteoBatch(torch.rand(batch, NUM_DENSE, generator=generator), sparse,
                           torch.randint(0, 2, (batch,), generator=generator).float(), batch)

    def warmup(self, steps: int) -> None:
        """Train and eval steps on random batches at learning rate 0, then Adagrad's state back to zero: the
        weights never move (lr 0 updates are exact no-ops), and nothing of the size of the tables is copied."""
        if steps <= 0:
            return
        g = torch.Generator().manual_seed(0)
        set_learning_rate(self.model, self.dense_optimizer, 0.0)
        for _ in range(steps):
            self._step_on(self._random_batch(self.local_batch, g))
        self._forward_scores(self._random_batch(self.local_eval_batch, g))
        set_learning_rate(self.model, self.dense_optimizer, self.cfg.optim.base_lr)
        reset_optimizer_state(self.model, self.dense_optimizer)

    # -- evaluation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _forward_scores(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        try:
            batch = batch.to(self.ctx.device, non_blocking=True)
            with self._autocast():
                logits = self.model(batch.dense, batch.sparse)
            # Scored as the reference does (torchmetrics on sigmoid outputs): float32 sigmoid ties matter. A
            # non-finite logit (a diverged model: sigmoid would turn +-inf into a finite 1 or 0) is scored NaN,
            # so the AUROC is NaN and the run loop aborts ("non-finite eval") instead of logging a result.
            logits = logits.float()
            return torch.where(torch.isfinite(logits), torch.sigmoid(logits), float("nan")), batch.labels
        finally:
            self.model.train()

    def _eval_batches(self):
        if self._eval_cache is not None:
            return self._eval_cache
        from pipelines.criteo.loader import EvalBatches, Prefetcher

        batches = EvalBatches(self.eval_reader, self.local_eval_batch, self.ctx.launch.rank,
                              self.ctx.launch.world_size)
        source = Prefetcher(batches, self.cfg.data.prefetch) if self.cfg.data.prefetch else iter(batches)
        if not self.cfg.data.cache_eval:
            return source
        self._eval_cache = [b.to(self.ctx.device, non_blocking=True) for b in source]
        return self._eval_cache

    def evaluate(self) -> float:
        """AUROC over every validation sample: each rank scores its share, rank 0 sorts them all. NaN on every
        rank if any score is not finite (binary_auroc): the run loop then stops, aborted."""
        scores, labels = [], []
        for batch in self._eval_batches():
            s, y = self._forward_scores(batch)
            scores.append(s)
            labels.append(y)
        # [score, label] rows; padding rows are cut after the gather (they sit at the tail of the last rank)
        local = torch.stack([torch.cat(scores), torch.cat(labels)], dim=1)
        world, n = self.ctx.launch.world_size, len(self.eval_reader)
        if world > 1:
            gathered = [torch.empty_like(local) for _ in range(world)] if self.ctx.is_main else None
            dist.gather(local, gathered, dst=0)
            local = torch.cat(gathered) if self.ctx.is_main else local
        value = torch.zeros(1, dtype=torch.float64, device=self.ctx.device)
        if self.ctx.is_main:
            if local.shape[0] < n:
                raise RuntimeError(f"scored {local.shape[0]} validation samples, expected {n}")
            auroc = binary_auroc(local[:n, 0], local[:n, 1])  # on the device (torch.sort path on GPU)
            bad = int((~torch.isfinite(local[:n, 0])).sum()) if math.isnan(auroc) else 0
            if bad:
                print(f"eval: {bad} of {n} validation scores are not finite (the model diverged): AUROC NaN",
                      flush=True)
            value[0] = auroc
        if world > 1:
            dist.broadcast(value, src=0)
        return float(value.item())

    # -- data and blocks -------------------------------------------------------------------------------
    def open_data(self) -> dict:
        from pipelines.criteo.format import open_day
        from pipelines.criteo.loader import CriteoReader

        d, ctx, m = self.cfg.data, self.ctx, self.cfg.model
        days = [open_day(ctx.data_dir, day, m.multi_hot_sizes) for day in range(d.days)]
        pin = ctx.device.type == "cuda"
        self.train_reader = CriteoReader(days[:-1], m.table_rows, m.multi_hot_sizes, pin_memory=pin)
        validation = days[-1]
        self.eval_reader = CriteoReader([validation], m.table_rows, m.multi_hot_sizes, 0,
                                        math.ceil(validation.rows / 2), pin_memory=pin)
        return self.check_sizes({"train_samples": len(self.train_reader), "eval_samples": len(self.eval_reader)})

    def blocks(self) -> list[Block]:
        ends = [k * self.steps_per_eval for k in range(1, self.cfg.train.evals_per_epoch + 1)]
        if ends[-1] < self.steps_per_epoch:
            ends.append(self.steps_per_epoch)  # the epoch's tail, evaluated at its end
        return schedule.blocks(ends, "epoch_fraction", global_batch_size=self.global_batch_size,
                               steps_per_epoch=self.steps_per_epoch)

    def progress_fields(self) -> dict:
        return {"lr": float(self.dense_optimizer.param_groups[0]["lr"])}

    # -- checkpoints -----------------------------------------------------------------------------------
    def _embedding_optimizers(self) -> dict:
        return {name: p._in_backward_optimizers[0] for name, p in unwrap(self.model).embeddings.named_parameters()}

    def state_dict(self) -> dict:
        """One rank: the whole state (the loop's single-file checkpoint)."""
        return {"model": self.model.state_dict(), "dense_optimizer": self.dense_optimizer.state_dict(),
                "embedding_optimizers": {k: o.state_dict() for k, o in self._embedding_optimizers().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        for name, opt in self._embedding_optimizers().items():
            opt.load_state_dict(state["embedding_optimizers"][name])

    # Several ranks: the sharded tables and their fused Adagrad accumulators go through
    # torch.distributed.checkpoint (each rank writes its own shards, and a run sharded differently can read
    # them back); the replicated dense optimizer state and the loop's position go in a weights-only file
    # from rank 0. A step directory per save (runtime/checkpoint.save_step_dir).
    _REPLICATED = "replicated.pt"

    def _sharded_state(self) -> dict:
        return {"model": self.model.state_dict(), "fused_optimizer": self.model.fused_optimizer.state_dict()}

    def save_checkpoint(self, directory: str, common: dict) -> None:
        if self.ctx.launch.world_size == 1:
            return super().save_checkpoint(directory, common)
        import torch.distributed.checkpoint as dcp

        def write(path: str) -> None:
            dcp.save(self._sharded_state(), checkpoint_id=path)
            if self.ctx.is_main:
                checkpoint.save_atomic({**common, "dense_optimizer": self.dense_optimizer.state_dict()},
                                       os.path.join(path, self._REPLICATED))

        checkpoint.save_step_dir(directory, int(common["loop"]["global_step"]), write, is_main=self.ctx.is_main,
                                 barrier=dist.barrier)

    def load_checkpoint(self, directory: str, check) -> dict | None:
        if self.ctx.launch.world_size == 1:
            return super().load_checkpoint(directory, check)
        import torch.distributed.checkpoint as dcp

        path = checkpoint.latest_step_dir(directory)
        if path is None:
            return None
        replicated = checkpoint.load(os.path.join(path, self._REPLICATED))
        check(replicated, path)
        state = self._sharded_state()
        dcp.load(state, storage_reader=SafeFileSystemReader(path))  # in place, into this run's own shards
        self.model.load_state_dict(state["model"])
        self.model.fused_optimizer.load_state_dict(state["fused_optimizer"])
        self.dense_optimizer.load_state_dict(replicated["dense_optimizer"])
        return replicated

    def _close_train_iter(self) -> None:
        if self._train_iter is not None and hasattr(self._train_iter, "close"):
            self._train_iter.close()
        self._train_iter = None

    def close(self) -> None:
        self._close_train_iter()
