"""DLRM's dense optimizer is kernels.optimizers.FusedAdagrad (models/dlrm_dcnv2/benchmark.py `dense_optimizer`):
on the reference path it is torch.optim.Adagrad bit for bit, and under MLPERF_KERNELS=triton (TRITON_INTERPRET=1,
a fresh process: it must be set before the kernels are imported) it launches the Triton Adagrad kernel and
gives the same parameters to fp32 rounding. Both over a small DLRM's MLPs plus two data-parallel tables laid
out as torchrec lays them out (TableBatchedEmbeddingSlice views of one batched weight, which must be updated
in place), with gradients from the model's own forward and backward."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchrec import KeyedJaggedTensor

from models.dlrm_dcnv2.benchmark import dense_optimizer
from models.dlrm_dcnv2.config import debug
from models.dlrm_dcnv2.model import DLRMModelConfig, build_dlrm, materialize_embeddings
from models.dlrm_dcnv2.parallelize import reset_optimizer_state, set_learning_rate
from pipelines.criteo.format import sparse_feature_names

REPO = Path(__file__).resolve().parents[2]
SMALL = DLRMModelConfig(embedding_dim=6, table_rows=(7, 1, 13, 5), multi_hot_sizes=(3, 1, 5, 2),
                        bottom_mlp=(11, 6), top_mlp=(9, 5, 1), dcn_layers=2, dcn_low_rank=4)
DP_ROWS, STEPS = (3, 5), 3


class _Twin:
    """The model's dense parameters and two data-parallel table slices of one batched weight."""

    def __init__(self, model: nn.Module, batched: nn.Parameter):
        from torchrec.distributed.composable.table_batched_embedding_slice import TableBatchedEmbeddingSlice

        self.model, self.batched = model, batched
        dim, starts = SMALL.embedding_dim, [0, DP_ROWS[0] * SMALL.embedding_dim]
        self.tables = [TableBatchedEmbeddingSlice(batched, s, s + rows * dim, -1, dim)
                       for s, rows in zip(starts, DP_ROWS)]
        self.params = [p for n, p in model.named_parameters() if not n.startswith("embeddings.")] + self.tables

    def backward(self, step: int) -> None:
        g = torch.Generator().manual_seed(100 + step)
        batch = 6
        values = torch.cat([torch.randint(0, rows, (batch * size,), generator=g)
                            for rows, size in zip(SMALL.table_rows, SMALL.multi_hot_sizes)])
        sparse = KeyedJaggedTensor(keys=sparse_feature_names(SMALL.num_tables), values=values,
                                   lengths=torch.tensor(SMALL.multi_hot_sizes).repeat_interleave(batch), stride=batch)
        logits = self.model(torch.rand(batch, 13, generator=g) * 4, sparse)
        loss = F.binary_cross_entropy_with_logits(logits, torch.randint(0, 2, (batch,), generator=g).float())
        loss = loss + (self.batched * torch.randn(self.batched.shape, generator=g)).square().sum()
        loss.backward()

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]


def _twins() -> tuple[_Twin, _Twin]:
    torch.manual_seed(0)
    model = build_dlrm(SMALL, sparse_device="meta")
    materialize_embeddings(model, torch.device("cpu"))
    batched = nn.Parameter(torch.randn(sum(DP_ROWS) * SMALL.embedding_dim))
    return _Twin(model, batched), _Twin(copy.deepcopy(model), nn.Parameter(batched.detach().clone()))


def _train(twin: _Twin, optimizer, steps: int = STEPS, first: int = 0) -> None:
    for step in range(first, first + steps):
        optimizer.zero_grad(set_to_none=True)  # as DLRMBenchmark._step_on
        twin.backward(step)
        optimizer.step()


def _torch_adagrad(params, o):
    return torch.optim.Adagrad(params, lr=o.base_lr, lr_decay=o.lr_decay, weight_decay=o.weight_decay, eps=o.eps,
                               initial_accumulator_value=o.initial_accumulator_value)


def _optim_config():
    o = debug().optim
    o.base_lr = 0.05  # large enough that a wrong update shows within a few steps
    return o


def test_dense_optimizer_is_torch_adagrad_bit_for_bit_on_the_reference_path(monkeypatch):
    monkeypatch.setenv("MLPERF_KERNELS", "reference")
    o = _optim_config()
    fused_twin, torch_twin = _twins()
    fused, reference = dense_optimizer(fused_twin.params, o), _torch_adagrad(torch_twin.params, o)
    assert type(fused).__name__ == "FusedAdagrad"
    before = fused_twin.batched.detach().clone()
    _train(fused_twin, fused)
    _train(torch_twin, reference)
    for i, (a, b) in enumerate(zip(fused_twin.snapshot(), torch_twin.snapshot())):
        assert torch.equal(a, b), f"parameter {i} {tuple(a.shape)}"
    # the data-parallel tables were updated in place, in the batched weight the forward reads
    assert torch.equal(fused_twin.batched.detach(), torch_twin.batched.detach())
    assert not torch.equal(fused_twin.batched.detach(), before)
    for p, q in zip(fused_twin.params, torch_twin.params):
        assert torch.equal(fused.state[p]["sum"], reference.state[q]["sum"])


def test_dense_optimizer_reset_learning_rate_and_state_dict(monkeypatch):
    """What warm-up and checkpoints do with it: lr 0 leaves the weights, the reset gives back the
    just-built state, and a state dict restored into a fresh optimizer continues the same steps."""
    monkeypatch.setenv("MLPERF_KERNELS", "reference")
    o = _optim_config()
    twin, other = _twins()
    optimizer = dense_optimizer(twin.params, o)
    fresh = copy.deepcopy(optimizer.state_dict())
    no_tables = nn.Module()  # reset/set_learning_rate also visit the in-backward table optimizers: none here
    no_tables.embeddings = nn.Module()
    set_learning_rate(no_tables, optimizer, 0.0)
    weights = twin.snapshot()
    _train(twin, optimizer, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(twin.snapshot(), weights))
    set_learning_rate(no_tables, optimizer, o.base_lr)
    reset_optimizer_state(no_tables, optimizer)
    state = optimizer.state_dict()
    assert [g["step"] for g in state["param_groups"]] == [g["step"] for g in fresh["param_groups"]] == [0]
    for k, entry in fresh["state"].items():
        assert torch.equal(state["state"][k]["sum"], entry["sum"])

    _train(twin, optimizer, steps=2)
    saved = copy.deepcopy(optimizer.state_dict())
    for p, q in zip(other.params, twin.params):
        p.data.copy_(q.detach())
    resumed = dense_optimizer(other.params, o)
    resumed.load_state_dict(saved)
    _train(twin, optimizer, steps=2, first=2)
    _train(other, resumed, steps=2, first=2)
    for a, b in zip(twin.snapshot(), other.snapshot()):
        assert torch.equal(a, b)


def test_dense_optimizer_refuses_what_adagrad_refuses():
    o = _optim_config()
    o.weight_decay = -1.0
    with pytest.raises(ValueError, match="weight_decay=-1.0"):
        dense_optimizer([nn.Parameter(torch.zeros(3))], o)


def triton_path_check() -> None:
    """Run in a fresh process with TRITON_INTERPRET=1 and MLPERF_KERNELS=triton (the test below)."""
    import kernels._optim_kernels as K

    launches = []
    kernel = K._adagrad_kernel

    class Spy:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    K._adagrad_kernel = Spy()
    o = _optim_config()
    fused_twin, torch_twin = _twins()
    fused = dense_optimizer(fused_twin.params, o)
    _train(fused_twin, fused)
    assert len(launches) == STEPS, launches  # one launch per step over every dense parameter (one group)
    _train(torch_twin, _torch_adagrad(torch_twin.params, o))
    # fp32: the interpreter's multiply-adds round twice where torch's fuse them (about an ulp of the
    # accumulator per step, a fraction of an ulp of the update) and the weights' rounding then follows its
    # own course: within 4 fp32 ulps of each parameter's scale per step.
    eps = torch.finfo(torch.float32).eps
    for i, (a, b) in enumerate(zip(fused_twin.snapshot(), torch_twin.snapshot())):
        budget = 4 * STEPS * eps * b.abs().max().item()
        err = (a - b).abs().max().item()
        assert err <= budget, f"parameter {i} {tuple(a.shape)}: {err:.3e} > {budget:.3e}"
    print("ok")


def test_triton_adagrad_kernel_steps_the_dense_parameters_as_torch_adagrad():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "MLPERF_KERNELS": "triton"}
    code = "import sys; sys.path.insert(0, 'tests/models'); import test_dlrm_kernels as t; t.triton_path_check()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-5000:]
