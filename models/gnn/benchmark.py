"""R-GAT on IGBH (MLPerf `gnn`): what the run loop needs (build, warm-up, data, train step, eval, keys).

The unit is the epoch fraction: an eval after every int(eval_fraction x batches per epoch) steps of each
epoch (counted from the epoch's start, as the reference's `idx % validation_freq`), logged with
epoch_num = round(epoch + steps into the epoch / batches per epoch, 2). Graph and feature loading happen
in open_data, inside the timed region: memory maps and the cached CSC structure, no table read whole.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mlperf_logging.mllog import constants

from kernels.backends import optimizer_class
from models.gnn.config import GNNConfig
from models.gnn.model import build_rgnn
from models.gnn.parallelize import parallelize
from pipelines.igbh.graph import EDGE_TYPES
from pipelines.igbh.loader import Batch
from runtime import schedule
from runtime.benchmark import RunContext
from runtime.data_parallel import unwrap
from runtime.data_parallel_benchmark import DataParallelBenchmark
from runtime.schedule import Block


def write_synthetic_data(cfg: GNNConfig, out_dir: str) -> None:
    from pipelines.igbh.synthetic import write_synthetic_igbh

    d = cfg.data
    write_synthetic_igbh(out_dir, d.sizes(cfg.model.num_classes), institutes=d.synthetic_institutes,
                         fos=d.synthetic_fos, journals=d.synthetic_journals, conferences=d.synthetic_conferences,
                         val_fraction=d.synthetic_val_fraction, seed=d.synthetic_seed)


def eval_steps(steps_per_epoch: int, fraction: float, max_epochs: int) -> list[tuple[int, float]]:
    """(global step, epoch_num) of every eval up to the budget: within each epoch at multiples of
    int(fraction x steps_per_epoch) (at least 1), epoch_num rounded to 2 decimals as the reference logs it."""
    every = max(1, int(steps_per_epoch * fraction))
    out = []
    for epoch in range(max_epochs):
        for index in range(every, steps_per_epoch + 1, every):
            out.append((epoch * steps_per_epoch + index, round(epoch + index / steps_per_epoch, 2)))
    return out


class GNNBenchmark(DataParallelBenchmark):
    eval_counters = ("correct", "samples")

    def __init__(self, cfg: GNNConfig, ctx: RunContext):
        super().__init__(cfg, ctx)
        self.check_settings(cfg, ctx.run_dir)
        t, d = cfg.train, cfg.data
        if ctx.device.type == "cpu" and t.cpu_threads > 0:
            torch.set_num_threads(t.cpu_threads)
        self.steps_per_epoch = math.ceil(d.train_samples / t.global_batch_size)  # the last batch is partial
        self.model = parallelize(build_rgnn(cfg.model), ctx.layout, ctx.device)
        trainable = [p for p in unwrap(self.model).parameters() if p.requires_grad]
        # our FusedAdam, or apex's under MLPERF_KERNELS=apex
        self.optimizer = optimizer_class("adam")(trainable, lr=cfg.optim.base_lr)

    @classmethod
    def check_settings(cls, cfg: GNNConfig, run_dir: str) -> None:
        t, d = cfg.train, cfg.data
        if t.grad_accum != 1:
            raise ValueError(f"train.grad_accum={t.grad_accum}: R-GAT trains without accumulation")
        if d.feature_dim != cfg.model.in_channels:
            raise ValueError(f"data.feature_dim={d.feature_dim} differs from model.in_channels={cfg.model.in_channels}")
        if not 0 < t.eval_fraction <= 1 or t.max_epochs < 1:
            raise ValueError(f"train.eval_fraction={t.eval_fraction} must be in (0, 1] and train.max_epochs >= 1")

    # -- logging -----------------------------------------------------------------------------------------
    def log_hyperparameters(self) -> None:
        """closed_gnn.yaml's keys, each once, and the fixed settings beside them."""
        log, t, group = self.ctx.log, self.cfg.train, self.optimizer.param_groups[0]
        log.event(constants.GLOBAL_BATCH_SIZE, t.global_batch_size)
        log.event(constants.GRADIENT_ACCUMULATION_STEPS, t.grad_accum)
        log.event(constants.OPT_NAME, constants.ADAM)
        log.event(constants.OPT_BASE_LR, self.cfg.optim.base_lr)
        log.event("opt_adam_beta_1", group["betas"][0])
        log.event("opt_adam_beta_2", group["betas"][1])
        log.event("opt_adam_epsilon", group["eps"])
        log.event(constants.OPT_WEIGHT_DECAY, group["weight_decay"])
        log.event("fan_out", list(self.cfg.data.fanouts))
        log.event("hidden_channels", self.cfg.model.hidden_channels)
        log.event("num_heads", self.cfg.model.num_heads)
        log.event("num_layers", self.cfg.model.num_layers)
        log.event("dropout", self.cfg.model.dropout)

    # -- steps ---------------------------------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        return self.cfg.optim.base_lr  # no schedule

    def _logits(self, batch: Batch) -> torch.Tensor:
        x = {t: v.float() for t, v in batch.x.items()}  # fp16-stored features compute in fp32, as the reference
        with self.autocast():
            return self.model(x, batch.edge_index, batch.num_seeds).float()

    def loss(self, batch: Batch) -> torch.Tensor:
        """Cross-entropy summed over this rank's seeds over the global batch's seed count, times the ranks
        (DDP averages over them): the mean over the global batch, also when its last batch splits unevenly."""
        total = F.cross_entropy(self._logits(batch), batch.y, reduction="sum")
        return total * (self.ctx.layout.dp / batch.global_seeds)

    def train_micro_batches(self, step: int) -> list:
        return [self.train_data.batch(step)]

    def eval_counts(self, batch: Batch) -> torch.Tensor:
        correct = (self._logits(batch).argmax(1) == batch.y).sum()
        return torch.stack([correct.to(torch.float64),
                            torch.tensor(float(batch.num_seeds), dtype=torch.float64, device=self.ctx.device)])

    def synthetic_batches(self) -> tuple[list, object]:
        """A random subgraph of the flavour's widths: every node type, every edge type, `micro_batch` seeds."""
        g = torch.Generator().manual_seed(0)
        dev, dim, n = self.ctx.device, self.cfg.data.feature_dim, self.micro_batch
        counts = {"paper": 4 * n, "author": 2 * n, "institute": 8, "fos": 8, "journal": 8, "conference": 8}
        x = {t: torch.randn(c, dim, generator=g).to(dev) for t, c in counts.items()}
        edges = {}
        for src, rel, dst in EDGE_TYPES:
            e = 2 * counts[dst]
            edges[(src, rel, dst)] = torch.stack([torch.randint(0, counts[src], (e,), generator=g),
                                                  torch.randint(0, counts[dst], (e,), generator=g)]).to(dev)
        y = torch.randint(0, self.cfg.model.num_classes, (n,), generator=g).to(dev)
        batch = Batch(x, edges, y, n, n * self.ctx.layout.dp)
        return [batch], batch

    # -- data and blocks -------------------------------------------------------------------------------
    def open_data(self) -> dict:
        from pipelines.igbh.dataset import IGBH
        from pipelines.igbh.loader import EvalLoader, TrainLoader
        from pipelines.igbh.sampler import NeighborSampler

        d, ctx = self.cfg.data, self.ctx
        dataset = IGBH(ctx.data_dir, d.sizes(self.cfg.model.num_classes), fp16_features=d.fp16_features)
        sizes = self.check_sizes({"train_samples": dataset.train_idx.numel(),
                                  "eval_samples": dataset.val_idx.numel()})
        on_device = ctx.device.type == "cuda" and d.sample_on_device
        sampler = NeighborSampler(dataset.graph, d.fanouts, ctx.device if on_device else torch.device("cpu"))
        common = dict(rank=ctx.layout.dp_rank, world_size=ctx.layout.dp, seed=ctx.seed, device=ctx.device,
                      prefetch=d.prefetch)
        self.train_data = TrainLoader(dataset, sampler, dataset.train_idx, global_batch_size=self.global_batch_size,
                                      **common)
        self.eval_data = EvalLoader(dataset, sampler, dataset.val_idx, batch_size=d.eval_batch_size, **common)
        return sizes

    def blocks(self) -> list[Block]:
        """Blocks ending at the evals of eval_steps; each eval's epoch_num is the reference's 2-decimal one."""
        evals = eval_steps(self.steps_per_epoch, self.cfg.train.eval_fraction, self.cfg.train.max_epochs)
        out = schedule.blocks([step for step, _ in evals], "epoch_fraction", global_batch_size=self.global_batch_size,
                              steps_per_epoch=self.steps_per_epoch)
        for block, (_, epoch_num) in zip(out, evals):
            block.eval_metadata = {"epoch_num": epoch_num}
        return out
