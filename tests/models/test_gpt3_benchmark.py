"""GPT-3 debug runs on gloo: TP=2 (with and without SP), PP=2 and interleaved PP=2 each match the one-process
losses; resume across layouts (DP=2, same-layout resume and the run to target: tests/test_benchmark_contract.py)."""

import subprocess

import pytest
from conftest import REPO, read_metrics, spawn_ranks, train_command

from runtime.loop import EXIT_NOT_CONVERGED

STEPS = 3
COMMON = ["--seed", "11", "run.log_every_steps=1", f"run.max_steps={STEPS}", "run.warmup_steps=0",
          "train.max_samples=160"]


def _losses(run_dir):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


@pytest.fixture(scope="module")
def single_process(gpt3_debug_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gpt3_single")
    r = subprocess.run(train_command("gpt3", gpt3_debug_data, run_dir, *COMMON, "data.index_cache_dir=" + str(run_dir)),
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == EXIT_NOT_CONVERGED, r.stdout[-2000:] + r.stderr[-3000:]
    losses = _losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1]  # it trained
    return losses


@pytest.mark.parametrize("layout", [["parallel.tp=2"], ["parallel.tp=2", "train.sequence_parallel=true"],
                                    ["parallel.pp=2"], ["parallel.pp=2", "train.virtual_pp=2"]],
                         ids=["tp2", "tp2_sp", "pp2", "pp2_interleaved"])
def test_two_rank_layout_matches_one_process(gpt3_debug_data, single_process, tmp_path, layout):
    """Same global batch, same initial weights (keyed by global parameter name), same sample order: the
    layouts differ only in float summation order (TP splits GEMMs and the vocab softmax, SP shards the
    norms' sequence and sums their grads over TP, PP sends activations (interleaved: 1 layer per chunk,
    2 chunks per rank), DP averages gradients)."""
    procs = spawn_ranks(2, train_command("gpt3", gpt3_debug_data, tmp_path, *COMMON, *layout,
                                         "data.index_cache_dir=" + str(tmp_path)))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [EXIT_NOT_CONVERGED] * 2, outs[0][-3000:] + outs[1][-3000:]
    losses = _losses(tmp_path)
    assert sorted(losses) == sorted(single_process)
    for step, loss in single_process.items():
        assert losses[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), (step, single_process, losses)


def _run(ranks, data, run_dir, *args):
    cmd = train_command("gpt3", data, run_dir, *args)
    if ranks == 1:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
        return [r.returncode], r.stdout + r.stderr
    procs = spawn_ranks(ranks, cmd)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return [p.returncode for p in procs], "\n".join(outs)


@pytest.mark.parametrize("ranks,first,then,rel",
                         [(2, ["parallel.tp=2"], ["parallel.pp=2", "train.virtual_pp=2"], 1e-4)],
                         ids=["tp2_then_pp2_interleaved"])
def test_resume_gives_the_same_next_losses(gpt3_debug_data, single_process, tmp_path, ranks, first, then, rel):
    """megatron dist_checkpointing: the step counter, LR schedule, Adam moments and sample order all continue,
    also when the checkpoint was written by another TP/PP layout (resharded on load)."""
    ck = tmp_path / "ck"
    common = [a for a in COMMON if not a.startswith("run.max_steps")] + [f"run.checkpoint_dir={ck}",
                                                                        "data.index_cache_dir=" + str(tmp_path)]
    codes, out = _run(ranks, gpt3_debug_data, tmp_path / "first", *common, "run.max_steps=1", *first)
    assert codes == [EXIT_NOT_CONVERGED] * ranks, out[-4000:]
    assert (ck / "latest").read_text().strip() == "step_00000001"
    codes, out = _run(ranks, gpt3_debug_data, tmp_path / "resumed", *common, f"run.max_steps={STEPS}", *then)
    assert codes == [EXIT_NOT_CONVERGED] * ranks, out[-4000:]
    assert "resumed from" in out
    resumed = _losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(2, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(single_process[step], rel=rel), (step, resumed, single_process)
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "run_state.json", "step_00000001", f"step_{STEPS:08d}"]


def test_fp8_gemms_train_like_bf16_and_agree_across_tensor_parallel_ranks(gpt3_debug_data, tmp_path):
    """The torch._scaled_mm FP8 path (no TE here): e4m3/e5m2 GEMMs with delayed scaling track bf16 training
    within FP8's error, and at TP=2 with sequence parallel (gathered inputs, reduce-scattered input
    gradients, per-shard scales) they track TP=1."""
    steps = 12
    args = ["--seed", "3", "run.log_every_steps=1", f"run.max_steps={steps}", "run.warmup_steps=1",
            "train.max_samples=400", f"data.index_cache_dir={tmp_path}"]
    runs = {}
    for name, extra in (("bf16", ["model.precision=bf16"]), ("fp8", ["model.precision=fp8"])):
        r = subprocess.run(train_command("gpt3", gpt3_debug_data, tmp_path / name, *args, *extra),
                           capture_output=True, text=True, cwd=REPO, timeout=600)
        assert r.returncode == EXIT_NOT_CONVERGED, r.stdout[-2000:] + r.stderr[-3000:]
        runs[name] = _losses(tmp_path / name)
    procs = spawn_ranks(2, train_command("gpt3", gpt3_debug_data, tmp_path / "fp8_tp2", *args, "model.precision=fp8",
                                         "parallel.tp=2", "train.sequence_parallel=true"))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [EXIT_NOT_CONVERGED] * 2, outs[0][-3000:] + outs[1][-3000:]
    runs["fp8_tp2"] = _losses(tmp_path / "fp8_tp2")
    assert runs["fp8"][steps] < runs["fp8"][1] - 0.2  # it trains
    for step in range(1, steps + 1):
        assert runs["fp8"][step] == pytest.approx(runs["bf16"][step], rel=5e-3), (step, runs)
        assert runs["fp8_tp2"][step] == pytest.approx(runs["fp8"][step], rel=5e-3), (step, runs)
    assert runs["fp8"] != runs["bf16"]  # the FP8 GEMMs really ran
