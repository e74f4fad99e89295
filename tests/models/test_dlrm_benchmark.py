"""DLRM-DCNv2 debug runs: 2 gloo ranks (sharded tables, fused Adagrad) against 1 rank (torch Adagrad) with the
eval AUROC, the sharded resume, and the warm-up / checkpoint state in process (the run to target and its log:
tests/test_benchmark_contract.py)."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch
from conftest import REPO, read_events, read_metrics, spawn_ranks, train_command

from runtime.loop import EXIT_NOT_CONVERGED

STEPS = 11  # one eval (after step 10, the first 0.05 epoch) and a step past it


def _losses(run_dir):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def _evals(run_dir):
    return {m["step"]: m["eval"] for m in read_metrics(run_dir) if "eval" in m}


def test_two_sharded_ranks_match_one_rank_at_the_same_global_batch(dlrm_debug_data, tmp_path):
    """Same global batches (rank r reads its half of each), same initial tables (drawn per row block from the
    seed, not per shard): losses and the eval AUROC agree up to float summation order, although one run
    updates its tables with torch.optim.Adagrad and the other with FBGEMM's fused EXACT_ADAGRAD."""
    common = ["--seed", "7", "run.log_every_steps=1", f"run.max_steps={STEPS}"]
    one = subprocess.run(train_command("dlrm_dcnv2", dlrm_debug_data, tmp_path / "one", *common),
                         capture_output=True, text=True, cwd=REPO)
    assert one.returncode == EXIT_NOT_CONVERGED, one.stdout[-2000:] + one.stderr[-2000:]
    procs = spawn_ranks(2, train_command("dlrm_dcnv2", dlrm_debug_data, tmp_path / "two", *common))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [EXIT_NOT_CONVERGED] * 2, outs[0][-3000:] + outs[1][-3000:]
    assert "world=2" in outs[0]
    one_losses, two_losses = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one_losses) == sorted(two_losses) == list(range(1, STEPS + 1))
    for step in one_losses:
        assert two_losses[step] == pytest.approx(one_losses[step], rel=1e-5, abs=1e-6), (step, one_losses, two_losses)
    assert one_losses[STEPS] < one_losses[1]  # it trained
    one_eval, two_eval = _evals(tmp_path / "one"), _evals(tmp_path / "two")
    assert list(one_eval) == list(two_eval) == [10]
    assert two_eval[10] == pytest.approx(one_eval[10], abs=1e-4)


# -- in process: warm-up and checkpoint state ----------------------------------------------------------------
def _benchmark(data_dir, tmp_path, seed=5, log=None):
    from models.dlrm_dcnv2 import SPEC
    from models.dlrm_dcnv2.benchmark import DLRMBenchmark
    from models.dlrm_dcnv2.config import debug
    from runtime.benchmark import RunContext
    from runtime.distributed import LaunchEnv
    from runtime.mlperf_log import MLPerfLogger
    from runtime.parallel import ParallelLayout

    torch.manual_seed(seed)
    ctx = RunContext(spec=SPEC, launch=LaunchEnv("single", 0, 1, 0, 1, "127.0.0.1", 0), layout=ParallelLayout(1, 0),
                     device=torch.device("cpu"), log=log or MLPerfLogger(None, enabled=False), run_dir=str(tmp_path),
                     data_dir=str(data_dir), seed=seed)
    cfg = debug()
    cfg.data.prefetch = 0
    return DLRMBenchmark(cfg, ctx)


def _clone(state):
    if isinstance(state, dict):
        return {k: _clone(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_clone(v) for v in state]
    return state.clone() if torch.is_tensor(state) else state


def _assert_same(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def test_warmup_leaves_weights_and_adagrad_state_as_initialised(dlrm_debug_data, tmp_path):
    bench = _benchmark(dlrm_debug_data, tmp_path)
    before = _clone(bench.state_dict())
    bench.warmup(2)
    _assert_same(bench.state_dict(), before)
    assert bench.dense_optimizer.param_groups[0]["lr"] == bench.cfg.optim.base_lr


def test_state_dict_round_trip_gives_the_same_next_steps(dlrm_debug_data, tmp_path):
    bench = _benchmark(dlrm_debug_data, tmp_path)
    bench.open_data()
    for step in range(2):
        bench.train_step(step)
    saved = _clone(bench.state_dict())
    expected = [float(bench.train_step(step)) for step in (2, 3)]
    resumed = _benchmark(dlrm_debug_data, tmp_path, seed=99)  # other initial weights, then the checkpoint
    resumed.load_state_dict(saved)
    resumed.open_data()
    assert [float(resumed.train_step(step)) for step in (2, 3)] == expected
    bench.close()
    resumed.close()


def _poison_last_layer(bench, value: float) -> None:
    """What a diverged update leaves behind: a non-finite weight in the dense part (here the logit's bias)."""
    from models.dlrm_dcnv2.parallelize import unwrap

    with torch.no_grad():
        unwrap(bench.model).top_mlp[-1].bias.fill_(value)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_evaluate_of_a_diverged_model_is_nan(dlrm_debug_data, tmp_path, capsys, poison):
    """NaN logits gave NaN scores whose AUROC was a finite number that depended on where the NaNs sorted; +inf
    logits gave sigmoid 1.0 everywhere and an AUROC of 0.5. Either would have been logged as a result."""
    bench = _benchmark(dlrm_debug_data, tmp_path)
    bench.open_data()
    assert 0.0 <= bench.evaluate() <= 1.0
    _poison_last_layer(bench, poison)
    value = bench.evaluate()
    assert math.isnan(value), value
    n = len(bench.eval_reader)
    out = capsys.readouterr().out
    assert f"eval: {n} of {n} validation scores are not finite (the model diverged): AUROC NaN" in out
    bench.close()


def test_a_run_whose_eval_sees_nan_scores_stops_aborted(dlrm_debug_data, tmp_path):
    """In process, the real run loop: the last update of the first block leaves a NaN weight (its own loss,
    computed before the update, is finite), so the eval after it sees NaN scores: eval_accuracy NaN, then
    run_stop aborted with the reason "non-finite eval", not a logged AUROC and the run going on."""
    from mlperf_logging.mllog import constants

    from models.dlrm_dcnv2.benchmark import DLRMBenchmark
    from runtime.loop import RunLoop
    from runtime.mlperf_log import MLPerfLogger

    log_path = tmp_path / "mlperf_log.txt"
    log = MLPerfLogger(str(log_path), enabled=True, stdout=False)
    bench = _benchmark(dlrm_debug_data, tmp_path, log=log)
    first_block = bench.steps_per_eval

    def train_step(step):
        loss = DLRMBenchmark.train_step(bench, step)
        if step == first_block - 1:
            _poison_last_layer(bench, float("nan"))
        return loss

    bench.train_step = train_step
    try:
        result = RunLoop(bench, bench.ctx, bench.cfg.run).run()
    finally:
        bench.close()
        log.close()
    assert result.status == constants.ABORTED and result.exit_code == EXIT_NOT_CONVERGED
    assert result.reason.startswith("non-finite eval auroc nan"), result.reason
    assert len(result.evals) == 1 and math.isnan(result.evals[0][1])
    events = read_events(log_path)
    accuracy = [e for e in events if e["key"] == constants.EVAL_ACCURACY]
    assert len(accuracy) == 1 and math.isnan(float(accuracy[0]["value"]))
    assert events[-1]["key"] == constants.RUN_STOP and events[-1]["metadata"]["status"] == constants.ABORTED
    assert [m["step"] for m in read_metrics(tmp_path) if "loss" in m and math.isfinite(m["loss"])] == [first_block]


def test_two_sharded_ranks_resume_onto_the_uninterrupted_run(dlrm_debug_data, tmp_path):
    """torch.distributed.checkpoint of the sharded tables and fused Adagrad accumulators, plus rank 0's file
    of the dense optimizer: a run stopped after step 6 continues onto the losses of one that never stopped."""
    common = ["--seed", "7", "run.log_every_steps=1"]
    ck = f"run.checkpoint_dir={tmp_path / 'ck'}"

    def run(name, *args):
        procs = spawn_ranks(2, train_command("dlrm_dcnv2", dlrm_debug_data, tmp_path / name, *common, *args))
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [EXIT_NOT_CONVERGED] * 2, outs[0][-3000:] + outs[1][-3000:]
        return _losses(tmp_path / name), outs[0]

    full, _ = run("full", f"run.max_steps={STEPS}")
    run("first", ck, "run.max_steps=6")
    assert (tmp_path / "ck" / "latest").read_text().strip() == "step_00000006"
    resumed, out = run("resumed", ck, f"run.max_steps={STEPS}")
    assert "resumed from" in out
    assert sorted(resumed) == list(range(7, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], rel=1e-6), (step, resumed, full)
