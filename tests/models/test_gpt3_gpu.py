"""GPT-3 on CUDA, run by perf_tests/gpt3_gpu_check.sh where a GPU is at hand (skipped elsewhere).

On CUDA the benchmark uses megatron-core's own optimizers (fp32, mixed precision with fp32 master weights,
distributed), which the CPU suite cannot reach: each must load the reference-layout initial checkpoint
(moments included) and resume from its own distributed checkpoint onto the uninterrupted run's losses.
"""

import subprocess

import pytest
import torch
from conftest import REPO, read_metrics, train_command

from runtime.loop import EXIT_NOT_CONVERGED

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

STEPS = 4
COMMON = ["--seed", "5", "run.log_every_steps=1", "run.warmup_steps=1", "train.max_samples=160"]


def _train(data, run_dir, *args):
    r = subprocess.run(train_command("gpt3", data, run_dir, *COMMON, *args), capture_output=True, text=True,
                       cwd=REPO, timeout=600)
    assert r.returncode == EXIT_NOT_CONVERGED, r.stdout[-3000:] + r.stderr[-3000:]
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}, r.stdout


# Tolerances: CUDA's embedding backward accumulates with atomics, so two identical runs differ in the last
# bits; bf16 activations turn that into ~1e-4 relative on the loss a few steps later.
@pytest.mark.parametrize("optimizer,rel", [(["model.precision=fp32", "train.distributed_optimizer=false"], 1e-5),
                                           (["model.precision=bf16", "train.distributed_optimizer=false"], 1e-3),
                                           (["model.precision=bf16", "train.distributed_optimizer=true"], 1e-3)],
                         ids=["fp32", "bf16_mixed_precision", "bf16_distributed"])
def test_cuda_optimizers_load_the_initial_checkpoint_and_resume(gpt3_debug_data, tmp_path, optimizer, rel):
    cache = f"data.index_cache_dir={tmp_path}"
    full, out = _train(gpt3_debug_data, tmp_path / "full", *optimizer, cache, f"run.max_steps={STEPS}")
    assert "loaded the initial checkpoint" in out
    assert full[STEPS] < full[1]
    ck = f"run.checkpoint_dir={tmp_path / 'ck'}"
    _train(gpt3_debug_data, tmp_path / "first", *optimizer, cache, ck, "run.max_steps=2")
    resumed, out = _train(gpt3_debug_data, tmp_path / "resumed", *optimizer, cache, ck, f"run.max_steps={STEPS}")
    assert "resumed from" in out and sorted(resumed) == list(range(3, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], rel=rel), (step, resumed, full)
