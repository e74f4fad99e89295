"""The training mechanics every plain-PyTorch, data-parallel benchmark shares (ResNet, BERT, and next
RetinaNet, 3D U-Net, Stable Diffusion, R-GAT).

A subclass builds `self.model` (through runtime.data_parallel.replicate) and `self.optimizer`, and supplies
what is its own:

    learning_rate(step)          the schedule, at the 0-based step the update is for
    loss(micro_batch)            forward under self.autocast() + loss, averaged over the micro-batch
    train_micro_batches(step)    this rank's micro-batches of global batch `step`
    synthetic_batches()          (train micro-batches, one eval batch) of random data, for the warm-up
    eval_counts(batch)           float64 counters of one eval batch, named by `eval_counters`, the last of
                                 which counts samples (checked against data.eval_samples after the reduce)
    open_data(), blocks(), log_hyperparameters()

and gets the rest once: gradient accumulation with DDP's `no_sync` on all but the last micro-batch (or the
optimizer's own, for one that says `syncs_gradients`: apex's distributed optimizers, model not under DDP),
autocast by name, the learning rate set before each step, a warm-up that restores the initial weights and
optimizer state, the evaluation's all-reduce with its expected-count check, and the default checkpoints.
"""

from __future__ import annotations

import abc
import contextlib
import copy

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from kernels.shared_lr import SharedLearningRate
from runtime.benchmark import Benchmark, RunContext
from runtime.config import BenchmarkConfig
from runtime.precision import autocast, autocast_dtype, grad_scaler


class DataParallelBenchmark(Benchmark):
    precisions: tuple[str, ...] = ("fp32", "bf16")  # what train.precision may say
    eval_counters: tuple[str, ...] = ("correct", "samples")

    def __init__(self, cfg: BenchmarkConfig, ctx: RunContext):
        super().__init__(cfg, ctx)
        t, dp = cfg.train, ctx.layout.dp
        if t.grad_accum < 1 or t.global_batch_size % (dp * t.grad_accum):
            raise ValueError(f"train.global_batch_size={t.global_batch_size} is not divisible by "
                             f"dp*grad_accum = {dp}*{t.grad_accum}")
        self.micro_batch = t.global_batch_size // (dp * t.grad_accum)  # samples per rank per micro-batch
        self.autocast_dtype = autocast_dtype(t.precision, self.precisions)
        self.grad_scaler = grad_scaler(t.precision, ctx.device)  # fp16 only
        self.train_data = self.eval_data = None
        self._lr = 0.0
        self._epoch_iter, self._iter_epoch = None, -1

    # -- what the benchmark supplies ---------------------------------------------------------------------
    @abc.abstractmethod
    def learning_rate(self, step: int) -> float: ...

    @abc.abstractmethod
    def loss(self, micro_batch) -> torch.Tensor: ...

    @abc.abstractmethod
    def train_micro_batches(self, step: int) -> list: ...

    @abc.abstractmethod
    def synthetic_batches(self) -> tuple[list, object]: ...

    @abc.abstractmethod
    def eval_counts(self, batch) -> torch.Tensor: ...

    def eval_metric(self, counts: torch.Tensor) -> float:
        return float(counts[0] / counts[1])

    def after_step(self) -> None:
        """After each optimizer step (e.g. FP8 scale updates)."""

    # -- shared mechanics ----------------------------------------------------------------------------------
    def autocast(self):
        return autocast(self.ctx.device, self.autocast_dtype)

    def set_learning_rate(self, lr: float) -> None:
        self._lr = lr
        if isinstance(self.optimizer, SharedLearningRate):
            self.optimizer.set_lr(lr)  # in place: a captured graph sees it
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def next_epoch_batch(self, step: int):
        """Global batch `step` from an epoch-based loader (`set_epoch(epoch, start_step)`, then iteration):
        a new iterator at each epoch, started mid-epoch when a resumed run begins there. Needs
        `self.steps_per_epoch`."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if self._iter_epoch != epoch:
            self.train_data.set_epoch(epoch, start_step=index)  # start_step > 0 only when resuming
            self._epoch_iter = iter(self.train_data)
            self._iter_epoch = epoch
        return next(self._epoch_iter)

    def split_micro_batches(self, tensors) -> list[tuple]:
        """(x, y, ...) of this rank's batch -> train.grad_accum micro-batches (x_i, y_i, ...)."""
        return list(zip(*(t.chunk(self.cfg.train.grad_accum) for t in tensors)))

    def step_on(self, micro_batches: list, step: int) -> torch.Tensor:
        """One optimizer step over `micro_batches`; the loss summed over them, as a device tensor."""
        self.set_learning_rate(self.learning_rate(step))
        total = torch.zeros((), device=self.ctx.device)
        count = len(micro_batches)
        for i, micro_batch in enumerate(micro_batches):
            # The gradient all-reduce runs once, in the last micro-batch's backward.
            with self._no_sync() if i < count - 1 else contextlib.nullcontext():
                loss = self.loss(micro_batch) / count
                (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()
            total += loss.detach()
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)  # unscales; skips the step if a gradient is not finite
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.after_step()
        return total

    def _no_sync(self):
        """DDP's no_sync, or that of an optimizer that reduces the gradients itself (apex's distributed
        optimizers under optim.distributed=true, whose model is not under DDP: runtime/data_parallel.py)."""
        if isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        if getattr(self.optimizer, "syncs_gradients", False):
            return self.optimizer.no_sync()
        return contextlib.nullcontext()

    def train_step(self, step: int) -> torch.Tensor:
        micro_batches = self.train_micro_batches(step)
        self.model.train()
        return self.step_on(micro_batches, step)

    @torch.no_grad()
    def eval_totals(self, batches) -> torch.Tensor:
        self.model.eval()
        counts = torch.zeros(len(self.eval_counters), dtype=torch.float64, device=self.ctx.device)
        for batch in batches:
            counts += self.eval_counts(batch)
        return counts

    def evaluate(self) -> float:
        counts = self.eval_totals(self.eval_data)
        if self.ctx.launch.world_size > 1:
            dist.all_reduce(counts, group=self.ctx.layout.dp_group())
        if int(counts[-1]) != self.cfg.data.eval_samples:
            raise RuntimeError(f"evaluated {int(counts[-1])} samples, expected all {self.cfg.data.eval_samples}")
        return self.eval_metric(counts)

    def warmup(self, steps: int) -> None:
        """Allocate / compile / tune on random batches (no dataset access), then put the initial weights and
        optimizer state back, so the timed run starts where an unwarmed one would."""
        if steps <= 0:
            return
        saved = copy.deepcopy(self.state_dict())
        train, evaluation = self.synthetic_batches()
        self.model.train()
        for step in range(steps):
            self.step_on(train, step)
        self.eval_totals([evaluation])
        self.load_state_dict(saved)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.grad_scaler is not None:  # the loss scale survives the warm-up's restore and a resume
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])

    def progress_fields(self) -> dict:
        return {"lr": float(self._lr)}

    def close(self) -> None:
        for data in (self.train_data, self.eval_data):
            close = getattr(data, "close", None)
            if close is not None:
                close()
