"""optim.distributed=true on CPU: apex's DistributedFusedAdam / DistributedFusedLAMB replaced by fakes at their API
boundary (the constructor arguments, AccumulateGrad hooks registered as apex registers them, the calls apex's own
tests make), reducing through torch.distributed on gloo and computing with torch's AdamW / our LAMB reference.
Two ranks through runtime/data_parallel_benchmark.py with the fake give DDP + our optimizer's losses; the model
is not under DDP; accumulation reduces once per step; a resumed optimizer continues exactly; without apex the
flag is a one-line error."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import sys
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kernels import backends
from kernels.lamb_ref import LambReference, lamb_param_groups
from runtime import config as base
from runtime.benchmark import RunContext
from runtime.data_parallel import replicate, sharding_groups
from runtime.data_parallel_benchmark import DataParallelBenchmark
from runtime.distributed import LaunchEnv
from runtime.parallel import ParallelLayout

WORLD, STEPS, ACCUM = 2, 4, 2


def _hook_grad_accumulators(optimizer, on_grad) -> None:
    """As apex does: a hook on each parameter's AccumulateGrad node, which runs once the gradient is in .grad."""
    optimizer.grad_accs = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            accumulator = p.expand_as(p).grad_fn.next_functions[0][0]
            accumulator.register_hook(lambda *unused, p=p: on_grad(p))
            optimizer.grad_accs.append(accumulator)


def _average_grads(params) -> None:
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    torch.nn.utils.vector_to_parameters(flat, [p.grad for p in params])


class FakeDistributedFusedAdam(torch.optim.Optimizer):
    built: list = []
    _step_supports_amp_scaling = True

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, adam_w_mode=True,
                 weight_decay=0.0, process_group=None, distributed_process_group=None, redundant_process_group=None,
                 average_grad_sync=True, overlap_grad_sync=True, **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        FakeDistributedFusedAdam.built.append(dict(adam_w_mode=adam_w_mode, process_group=process_group,
                                                   distributed_process_group=distributed_process_group,
                                                   redundant_process_group=redundant_process_group, **options))
        self.params = [p for g in self.param_groups for p in g["params"]]
        for p in self.params:
            dist.broadcast(p.data, 0)
        self.overlap_grad_sync, self.reductions, self._fired = overlap_grad_sync, 0, set()
        self._math = torch.optim.AdamW(self.params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        _hook_grad_accumulators(self, self._on_grad)

    def _on_grad(self, p):
        if self.overlap_grad_sync:
            self._fired.add(id(p))
            if len(self._fired) == len(self.params):  # the last bucket filled: reduce it
                self.grad_sync()

    @contextlib.contextmanager
    def no_sync(self, greedy_grad_copy=False):
        old, self.overlap_grad_sync = self.overlap_grad_sync, False
        try:
            yield
        finally:
            self.overlap_grad_sync = old

    def grad_sync(self):
        if self._fired != "synced":
            _average_grads(self.params)
            self.reductions += 1
            self._fired = "synced"

    def step(self, closure=None, *, grad_scaler=None):
        self.grad_sync()
        for group in self._math.param_groups:
            group["lr"] = self.param_groups[0]["lr"]
        self._math.step()

    def zero_grad(self, set_to_none=True):
        super().zero_grad(set_to_none=set_to_none)
        self._fired = set()

    def state_dict(self):  # format 2: the whole state, the same on every rank
        return {"format": 2, "state": self._math.state_dict()}

    def load_state_dict(self, state):
        self._math.load_state_dict(state["state"])


class FakeDistributedFusedLAMB(torch.optim.Optimizer):
    built: list = []

    def __init__(self, params, lr=1e-3, bias_correction=True, grad_averaging=True, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, max_grad_norm=0.0, adam_w_mode=True, use_nvlamb=False,
                 step_supports_amp_scaling=True, overlap_reductions=True, dwu_group_size=0, clip_after_ar=True,
                 **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))
        FakeDistributedFusedLAMB.built.append(dict(adam_w_mode=adam_w_mode, use_nvlamb=use_nvlamb,
                                                   dwu_group_size=dwu_group_size, clip_after_ar=clip_after_ar,
                                                   group_keys=[sorted(g) for g in self.param_groups], **options))
        self._step_supports_amp_scaling = step_supports_amp_scaling
        self._lr = torch.tensor(0.0)
        self._step = torch.zeros(1, dtype=torch.int32)
        self._is_accumulation_step, self._global_scale, self._resume_from_checkpoint = False, None, False
        self._lazy_init_stage1_done = self._lazy_init_stage2_done = False
        self._fp32_p = self._fp32_m = self._fp32_v = None
        self.reductions, self._fired = 0, set()
        self.params = [p for g in self.param_groups for p in g["params"]]

    def _lazy_init_stage1(self):
        if self._lazy_init_stage1_done:
            return
        for p in self.params:
            dist.broadcast(p.data, 0)
        _hook_grad_accumulators(self, lambda p: None if self._is_accumulation_step else self._fired.add(id(p)))
        total = sum(p.numel() for p in self.params)
        self._shard = math.ceil(total / dist.get_world_size())
        self._fp32_p, self._fp32_m, self._fp32_v = (torch.zeros(self._shard) for _ in range(3))
        # apex computes through views it makes of these buffers here: rebinding them later is not seen
        self._views = (self._fp32_p[:], self._fp32_m[:], self._fp32_v[:])
        self._lazy_init_stage1_done = True

    def _own(self, flat):
        padded = torch.nn.functional.pad(flat, (0, self._shard * dist.get_world_size() - flat.numel()))
        return padded[dist.get_rank() * self._shard:(dist.get_rank() + 1) * self._shard]

    def _full(self, shard):
        parts = [torch.empty_like(shard) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, shard.contiguous())
        return torch.cat(parts)[:sum(p.numel() for p in self.params)]

    def _lazy_init_stage2(self):
        if self._lazy_init_stage2_done:
            return
        if not self._resume_from_checkpoint:
            self._views[0].copy_(self._own(torch.nn.utils.parameters_to_vector(self.params).detach()))
        self._lazy_init_stage2_done = True

    def set_is_accumulation_step(self, value):
        self._is_accumulation_step = value

    def set_global_scale(self, scale):
        self._global_scale = scale

    def complete_reductions(self):
        assert len(self._fired) == len(self.params), "a backward outside accumulation must precede the step"
        _average_grads(self.params)
        self.reductions += 1
        self._fired = set()

    @torch.no_grad()
    def step(self, closure=None, grad_scaler=None):
        assert self._lazy_init_stage2_done and self._global_scale == 1.0
        shapes = [p.shape for p in self.params]
        masters = [t.view(s).clone() for t, s in zip(self._full(self._views[0]).split([p.numel() for p in
                                                                                      self.params]), shapes)]
        groups = [{"params": masters[i:i + len(g["params"])], "weight_decay": g["weight_decay"]}
                  for i, g in zip(_offsets(self.param_groups), self.param_groups)]
        ref = LambReference(groups, lr=float(self._lr), betas=self.defaults["betas"], eps=self.defaults["eps"],
                            max_grad_norm=self.defaults["max_grad_norm"])
        m_full, v_full = (self._full(v).split([p.numel() for p in self.params]) for v in self._views[1:])
        for master, p, m, v in zip(masters, self.params, m_full, v_full):
            master.grad = p.grad.clone()
            ref.state[master] = {"exp_avg": m.view(p.shape).clone(), "exp_avg_sq": v.view(p.shape).clone()}
        for group in ref.param_groups:
            group["step"] = int(self._step)
        ref.step()
        self._step += 1
        flat = torch.nn.utils.parameters_to_vector
        self._views[0].copy_(self._own(flat(masters)))
        self._views[1].copy_(self._own(flat([ref.state[m]["exp_avg"] for m in masters])))
        self._views[2].copy_(self._own(flat([ref.state[m]["exp_avg_sq"] for m in masters])))
        for p, master in zip(self.params, masters):
            p.copy_(master)

    def state_dict(self):  # this rank's shard, as apex gives it
        return {"step": self._step, "fp32_p": self._fp32_p, "fp32_m": self._fp32_m, "fp32_v": self._fp32_v}

    def load_state_dict(self, state):  # apex rebinds (the adapter must not rely on it after stage 1)
        self._step, self._fp32_p, self._fp32_m, self._fp32_v = (state[k] for k in ("step", "fp32_p", "fp32_m",
                                                                                    "fp32_v"))
        self._resume_from_checkpoint = True


def _offsets(groups):
    offsets, at = [], 0
    for g in groups:
        offsets.append(at)
        at += len(g["params"])
    return offsets


def install_fake_apex(monkeypatch_setitem) -> None:
    adam = types.ModuleType("apex.contrib.optimizers.distributed_fused_adam")
    adam.DistributedFusedAdam = FakeDistributedFusedAdam
    lamb = types.ModuleType("apex.contrib.optimizers.distributed_fused_lamb")
    lamb.DistributedFusedLAMB = FakeDistributedFusedLAMB
    for name, module in {"apex": types.ModuleType("apex"), "apex.contrib": types.ModuleType("apex.contrib"),
                         "apex.contrib.optimizers": types.ModuleType("apex.contrib.optimizers"),
                         adam.__name__: adam, lamb.__name__: lamb}.items():
        monkeypatch_setitem(name, module)


@contextlib.contextmanager
def _cuda_reported():
    """The fakes stand for apex on a GPU, so the seam's CUDA check must pass while it picks the class; only then
    (torch's own optimizers ask the accelerator too), and the arithmetic stays on the CPU."""
    real = torch.cuda.is_available
    torch.cuda.is_available = lambda: True
    try:
        yield
    finally:
        torch.cuda.is_available = real


# --- a small benchmark through DataParallelBenchmark ----------------------------------------------------------
@dataclasses.dataclass
class _Train(base.TrainConfig):
    global_batch_size: int = 8 * WORLD
    grad_accum: int = ACCUM
    precision: str = "fp32"


@dataclasses.dataclass
class _Config(base.BenchmarkConfig):
    train: _Train = dataclasses.field(default_factory=_Train)


class _Regression(DataParallelBenchmark):
    def __init__(self, ctx: RunContext, optimizer: str, distributed: bool):
        super().__init__(_Config(), ctx)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.LayerNorm(16), nn.Linear(16, 3))
        self.model = replicate(model, ctx.layout, ctx.device, benchmark="test", ddp=not distributed)
        if optimizer == "lamb":
            params, options = lamb_param_groups(model, 0.01), dict(lr=2e-2, betas=(0.9, 0.99), eps=1e-6,
                                                                    weight_decay=0.01, max_grad_norm=1.0)
        else:
            params, options = model.parameters(), dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
        if distributed:
            groups = sharding_groups(ctx.layout, ctx.launch.local_world_size)
            options.update(process_group=groups[0], shard_group=groups[1], replica_group=groups[2])
            with _cuda_reported():
                build = backends.distributed_optimizer_class(optimizer)
            self.optimizer = build(params, **options)
        else:
            self.optimizer = backends.optimizer_class(optimizer)(params, **options)

    def learning_rate(self, step):
        return self.cfg.train.global_batch_size * 1e-3 * (1 + step % 3)

    def loss(self, micro_batch):
        x, y = micro_batch
        return nn.functional.mse_loss(self.model(x), y)

    def train_micro_batches(self, step):
        g = torch.Generator().manual_seed(1000 * step + self.ctx.launch.rank)  # each rank its own samples
        x = torch.randn(self.micro_batch * ACCUM, 6, generator=g)
        return self.split_micro_batches((x, torch.sin(x[:, :3] * 2)))

    def synthetic_batches(self):
        return self.train_micro_batches(99), None

    def eval_counts(self, batch):
        return torch.zeros(2, dtype=torch.float64)

    def open_data(self):
        return {}

    def blocks(self):
        return []

    def log_hyperparameters(self):
        pass


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    os.environ["MLPERF_KERNELS"] = "apex"
    install_fake_apex(sys.modules.__setitem__)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    layout = ParallelLayout(WORLD, rank)
    layout.build_groups()
    ctx = RunContext(spec=None, launch=LaunchEnv("env", rank, WORLD, rank, WORLD, "127.0.0.1", 0), layout=layout,
                     device=torch.device("cpu"), log=None, run_dir="", data_dir="", seed=0)
    out = {}
    for name in ("adamw", "lamb"):
        os.environ["MLPERF_KERNELS"] = "reference"  # DDP + our optimizer on its torch path
        ddp = _Regression(ctx, name, distributed=False)
        ddp_losses = [float(ddp.train_step(s)) for s in range(STEPS)]
        os.environ["MLPERF_KERNELS"] = "apex"
        bench = _Regression(ctx, name, distributed=True)
        bench.warmup(2)  # snapshot before any step, restored after: must give an unwarmed start
        losses, saved = [], None
        for s in range(STEPS):
            losses.append(float(bench.train_step(s)))
            if s == 1:
                saved = copy.deepcopy(bench.state_dict())  # every rank calls it; rank 0 would write it
        resumed = _Regression(ctx, name, distributed=True)
        resumed.load_state_dict(_broadcast(saved))
        resumed_losses = [float(resumed.train_step(s)) for s in range(2, STEPS)]
        out[name] = dict(ddp=ddp_losses, dist=losses, resumed=resumed_losses, reductions=bench.optimizer.reductions,
                         ddp_wrapped=isinstance(bench.model, DistributedDataParallel),
                         ref_wrapped=isinstance(ddp.model, DistributedDataParallel),
                         saved_keys=sorted(saved["optimizer"]))
    out["adam_built"], out["lamb_built"] = FakeDistributedFusedAdam.built[-1], FakeDistributedFusedLAMB.built[-1]
    for key in ("adam_built", "lamb_built"):
        out[key] = {k: (v if not isinstance(v, dist.ProcessGroup) else dist.get_world_size(v))
                    for k, v in out[key].items()}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _broadcast(state):
    """What every rank reads back from rank 0's checkpoint file: rank 0's gathered state."""
    box = [state]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distopt")
    mp.spawn(_rank, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_two_ranks_with_apex_distributed_optimizer_give_ddp_losses(two_ranks, name):
    for rank, out in enumerate(two_ranks):
        run = out[name]
        assert run["ref_wrapped"] and not run["ddp_wrapped"], "the optimizer reduces: no DDP under it"
        assert run["ddp"][-1] < run["ddp"][0], "a loss that falls"
        # the same gradients, reduced by the optimizer's hooks instead of DDP's; the math of torch's AdamW / our
        # LAMB reference against our fused optimizers' reference path: equal to float32 rounding
        torch.testing.assert_close(run["dist"], run["ddp"], rtol=1e-5, atol=1e-6, msg=f"rank {rank}")


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_accumulation_reduces_once_per_step(two_ranks, name):
    # 2 warm-up steps + STEPS, each of ACCUM micro-batches: one reduction per step, none per micro-batch
    assert all(out[name]["reductions"] == 2 + STEPS for out in two_ranks)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_resumed_optimizer_continues_exactly(two_ranks, name):
    for out in two_ranks:
        assert out[name]["resumed"] == out[name]["dist"][2:]  # bit for bit


def test_state_forms_and_constructor_arguments(two_ranks):
    for out in two_ranks:
        assert out["adamw"]["saved_keys"] == ["format", "state"]  # apex's gathered format 2
        assert out["lamb"]["saved_keys"] == ["initialized", "rank_shards"]  # every rank's shard, gathered
        # one node of 2 ranks: state sharded over the data-parallel group, which is the world (None: apex's default
        # group), no replica group; AdamW's decoupled decay
        assert out["adam_built"] == {"adam_w_mode": True, "process_group": None,
                                     "distributed_process_group": None, "redundant_process_group": None}
        lamb = out["lamb_built"]
        assert (lamb["adam_w_mode"], lamb["use_nvlamb"], lamb["clip_after_ar"], lamb["dwu_group_size"]) == \
            (True, False, True, WORLD)
        assert all("segments" not in keys and "layer_adaptation" not in keys for keys in lamb["group_keys"])


@pytest.mark.parametrize("name,cls", [("adamw", "DistributedFusedAdam"), ("lamb", "DistributedFusedLAMB")])
def test_flag_without_apex_is_a_one_line_error(clean, name, cls):
    clean.setitem(sys.modules, "apex", None)  # as on the CPU set
    with pytest.raises(ValueError, match=f"trains with apex's {cls}: set MLPERF_KERNELS=apex") as err:
        backends.distributed_optimizer_class(name)
    assert "\n" not in str(err.value)
    clean.setenv("MLPERF_KERNELS", "apex")
    with pytest.raises(ValueError, match=f"optim.distributed=true: MLPERF_KERNELS=apex asks for apex's "
                                         f"distributed_{name[:4]}, but apex does not import") as err:
        backends.distributed_optimizer_class(name)
    assert "\n" not in str(err.value)


def test_lamb_refuses_per_part_trust_ratios(clean):
    clean.setattr(torch.cuda, "is_available", lambda: True)
    install_fake_apex(lambda name, module: clean.setitem(sys.modules, name, module))
    clean.setenv("MLPERF_KERNELS", "apex")
    w = nn.Parameter(torch.ones(6, 2))
    with pytest.raises(ValueError, match="one trust ratio per tensor"):
        backends.distributed_optimizer_class("lamb")([{"params": [w], "segments": [(2, 2, 2)]}],
                                                     process_group=None, shard_group=None, replica_group=None)
