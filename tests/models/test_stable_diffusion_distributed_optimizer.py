"""Stable Diffusion with optim.distributed=true (apex's DistributedFusedAdam, NVIDIA's v4.0): without apex the flag is
a one-line error before the model is built; with the fake apex of tests/runtime/test_distributed_optimizer.py two
gloo ranks train debug steps with the UNet not under DDP, the optimizer built with NVIDIA's options, and the losses
of DDP + our AdamW."""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "runtime"))
from test_distributed_optimizer import (  # noqa: E402 - the fake apex at its API boundary, shared, not copied
    FakeDistributedFusedAdam,
    _cuda_reported,
    install_fake_apex,
)

from models.stable_diffusion import SPEC  # noqa: E402

WORLD, STEPS = 2, 3


def test_the_flag_without_apex_is_a_one_line_error_before_the_model_is_built(tmp_path, clean):
    from conftest import build_logged

    from models.stable_diffusion import benchmark

    monkeypatch = clean
    monkeypatch.setitem(sys.modules, "apex", None)  # as on the CPU set

    def no_model(*args, **kwargs):
        raise AssertionError("the UNet was built before the optimizer was known usable")

    monkeypatch.setattr(benchmark, "build_unet", no_model)
    cfg = SPEC.config("debug")
    cfg.optim.distributed = True
    with pytest.raises(ValueError, match="trains with apex's DistributedFusedAdam: set MLPERF_KERNELS=apex") as err:
        build_logged(SPEC, cfg, tmp_path)
    assert "\n" not in str(err.value)


def _rank(rank: int, init_file: str, data_dir: str, run_dir: str, out_dir: str) -> None:
    from runtime.benchmark import RunContext
    from runtime.distributed import LaunchEnv
    from runtime.mlperf_log import MLPerfLogger
    from runtime.parallel import ParallelLayout

    install_fake_apex(sys.modules.__setitem__)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    layout = ParallelLayout(WORLD, rank)
    layout.build_groups()
    ctx = RunContext(SPEC, LaunchEnv("env", rank, WORLD, rank, WORLD, "127.0.0.1", 0), layout, torch.device("cpu"),
                     MLPerfLogger(None, enabled=False), run_dir, data_dir, seed=1)
    out = {}
    for distributed in (False, True):
        cfg = SPEC.config("debug")
        cfg.optim.distributed = distributed
        torch.manual_seed(7)  # the same initial UNet for both
        # apex "on a GPU" while the optimizer is picked; the UNet's kernels then take their CPU (reference) path
        os.environ["MLPERF_KERNELS"] = "apex" if distributed else "reference"
        with _cuda_reported() if distributed else contextlib.nullcontext():
            bench = SPEC.benchmark(cfg, ctx)
        os.environ["MLPERF_KERNELS"] = "reference"
        bench.open_data()
        out[distributed] = dict(losses=[float(bench.train_step(s)) for s in range(STEPS)],
                                ddp=isinstance(bench.model, DistributedDataParallel),
                                reductions=getattr(bench.optimizer, "reductions", None))
        bench.close()
    built = FakeDistributedFusedAdam.built[-1]
    out["built"] = {k: (dist.get_world_size(v) if isinstance(v, dist.ProcessGroup) else v) for k, v in built.items()}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_ranks_train_without_ddp_with_ddp_losses(debug_data, tmp_path):
    data = str(debug_data("stable_diffusion"))
    mp.spawn(_rank, args=(str(tmp_path / "init"), data, str(tmp_path), str(tmp_path)), nprocs=WORLD, join=True)
    outs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for rank, out in enumerate(outs):
        ddp, apex = out[False], out[True]
        assert ddp["ddp"] and not apex["ddp"], "DistributedFusedAdam reduces the gradients: no DDP under it"
        assert apex["reductions"] == STEPS  # the optimizer's own reduction, once a step
        # the same global batches and gradients; torch's AdamW (the fake's math) against our FusedAdamW
        torch.testing.assert_close(apex["losses"], ddp["losses"], rtol=1e-5, atol=1e-6, msg=f"rank {rank}")
        # one node of two ranks: the state sharded over the data-parallel group (the world: None), no replicas;
        # NVIDIA's fp16 reduce-scatter / all-gather, contiguous buffers and 288 MB buckets
        assert out["built"] == {"adam_w_mode": True, "process_group": None, "distributed_process_group": None,
                                "redundant_process_group": None, "grad_sync_dtype": torch.float16,
                                "param_sync_dtype": torch.float16, "contiguous_param_buffer": True,
                                "contiguous_grad_buffer": True, "bucket_cap_mb": 288}
