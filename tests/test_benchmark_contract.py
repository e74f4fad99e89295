"""The contract every benchmark meets, checked for each package under models/ that declares a SPEC.

A new benchmark is picked up here without editing this file: its debug run reaches its target with a log
the MLCommons checker passes, two data-parallel ranks match one process at the same global batch, a resumed
run continues onto the uninterrupted losses, its launchers agree with its flavours, and its golden losses
hold. What is specific to one benchmark stays in that benchmark's own test file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, compliance, read_events, read_metrics, spawn_ranks, train_command

from runtime.benchmark import discover
from runtime.compliance import KNOWN_DEFECTS, known_defect
from runtime.config import BenchmarkConfig
from runtime.loop import EXIT_NOT_CONVERGED

SPECS = discover()
NAMES = sorted(SPECS)
GOLDEN = sorted((REPO / "tests" / "golden").glob("*.json"))
STEPS = 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _losses(run_dir) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def _train(name: str, data, run_dir, *overrides: str, ranks: int = 1) -> str:
    """A short run that stops at run.max_steps (exit 3 on every rank); returns rank 0's output."""
    cmd = train_command(name, data, run_dir, *overrides)
    if ranks == 1:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=900)
        codes, out = [r.returncode], r.stdout + r.stderr
    else:
        procs = spawn_ranks(ranks, cmd)
        outs = [p.communicate(timeout=900)[0] for p in procs]
        codes, out = [p.returncode for p in procs], "\n".join(outs)
    assert codes == [EXIT_NOT_CONVERGED] * ranks, out[-4000:]
    return out


# -- the declaration -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_the_spec_is_complete_and_every_flavour_builds(name):
    spec = SPECS[name]
    assert spec.name == name and "debug" in spec.flavours
    for flavour in spec.flavours:
        cfg = spec.config(flavour)
        assert isinstance(cfg, BenchmarkConfig), flavour
        assert cfg.train.global_batch_size >= 1 and cfg.run.target > 0, flavour
        assert not cfg.data.init_checkpoint or spec.init_checkpoint, flavour
        # the debug model is not the reference model: only the real systems' runs claim the closed division
        assert cfg.run.submission_division == ("open" if flavour == "debug" else "closed"), flavour
        # every field is reachable by a dotted override, as launchers and users set them
        assert {f.name for f in dataclasses.fields(cfg)} >= {"data", "train", "parallel", "run"}
    # a fresh object per call: overriding one run's config never leaks into the next
    a, b = spec.config("debug"), spec.config("debug")
    a.run.target = -1.0
    assert b.run.target != -1.0


# -- the debug run to its target ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_debug_run_reaches_its_target_with_a_compliant_log(name, debug_run, tmp_path):
    spec, run = SPECS[name], debug_run(name)
    assert run.returncode == 0, run.stdout[-4000:]
    assert re.search(rf"^RESULT,{name},\d+,[\d.]+,success,", run.stdout, re.M), run.stdout[-2000:]
    target = spec.config("debug").run.target
    evals = [m["eval"] for m in read_metrics(run.run_dir) if "eval" in m]
    assert spec.reached(evals[-1], target) and not any(spec.reached(e, target) for e in evals[:-1]), evals

    log = run.run_dir / "mlperf_log.txt"
    events = read_events(log)
    assert [e["value"] for e in events if e["key"] == "submission_division"] == ["open"]  # not the reference model
    # Under the division it claims, and relabelled closed under those rules: the declared exceptions at most.
    closed = tmp_path / "closed_log.txt"
    closed.write_text(log.read_text().replace('"key": "submission_division", "value": "open"',
                                              '"key": "submission_division", "value": "closed"'))
    for path, division in ((log, "open"), (closed, "closed")):
        ok, report = compliance(path)
        failed = set(re.findall(r"CHECK for '(\w+)' failed", report))
        if defect := KNOWN_DEFECTS.get((division, name)):  # a defect of the checker's rules, named there
            assert failed == defect and known_defect(path, report), report
            continue
        assert f"training_4.0.0/{division}_{name}.yaml" in report, report
        assert failed <= set(spec.debug_log_exceptions), (division, report)
        if division == "closed":
            assert failed == set(spec.debug_log_exceptions), report
        problems = [line for line in report.splitlines() if line.startswith(("WARNING", "ERROR"))
                    and not re.search(r"CHECK for '(\w+)' failed|^ERROR - FAILED", line)]
        assert not problems and (ok or failed), report

    keys = [e["key"] for e in events]
    assert keys.count("run_start") == keys.count("run_stop") == 1 and keys.count("seed") == 1
    assert events[-1]["key"] == "run_stop" and events[-1]["metadata"]["status"] == "success"
    # one eval_accuracy line per evaluation (per metric, where the rules want several: SD's FID and CLIP)
    lines: dict = {}
    for e in events:
        if e["key"] == "eval_accuracy":
            lines.setdefault(e["metadata"].get("metric"), []).append(e["metadata"]["epoch_num"])
    for positions in lines.values():
        assert events[-1]["metadata"]["epoch_num"] == positions[-1]  # where it stopped, in the RCP unit
        assert len(positions) == len(evals) and positions == sorted(set(positions)), positions
    for artefact in ("eval_curve.png", "summary.txt", "run_config.json"):
        assert (run.run_dir / artefact).stat().st_size > 0, artefact


# -- layouts and resume ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_process_run(debug_data, tmp_path_factory):
    """one_process_run(name) -> the run directory of STEPS steps in one process at the parity settings (seed 7,
    deterministic, the one-process micro-batching): the reference of both the two-rank and the resume test."""
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            run_dir = tmp_path_factory.mktemp(f"{name}_one_process")
            _train(name, debug_data(name), run_dir, *_parity_settings(name), f"run.max_steps={STEPS}")
            done[name] = run_dir
        return done[name]

    return get


def _parity_settings(name: str, one_process: bool = True) -> list[str]:
    parity = SPECS[name].parity
    return ["--seed", "7", "run.log_every_steps=1", *parity.deterministic, *(parity.one_process if one_process else ())]


@pytest.mark.parametrize("name", NAMES)
def test_two_data_parallel_ranks_match_one_process(name, debug_data, one_process_run, tmp_path):
    """Same global batch: one process (accumulating micro-batches where the benchmark says so) against two
    data-parallel ranks; they differ only in float summation order."""
    out = _train(name, debug_data(name), tmp_path / "two", *_parity_settings(name, one_process=False),
                 f"run.max_steps={STEPS}", ranks=2)
    assert "world=2 dp=2" in out
    one, two = _losses(one_process_run(name)), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=SPECS[name].parity.rel, abs=1e-6), (step, one, two)
    assert one[STEPS] != one[1]  # it trained


@pytest.mark.parametrize("name", NAMES)
def test_resume_gives_the_uninterrupted_losses(name, debug_data, one_process_run, tmp_path):
    """Half the steps, then the same command again from the checkpoint: the second half's losses are the
    uninterrupted run's (the two-rank test's one-process reference, micro-batching included)."""
    data, common = debug_data(name), _parity_settings(name)
    checkpoints = f"run.checkpoint_dir={tmp_path / 'ck'}"
    _train(name, data, tmp_path / "first", *common, f"run.max_steps={STEPS // 2}", checkpoints)
    out = _train(name, data, tmp_path / "resumed", *common, f"run.max_steps={STEPS}", checkpoints)
    assert "resumed from" in out
    full, resumed = _losses(one_process_run(name)), _losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(STEPS // 2 + 1, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], rel=1e-6), (step, resumed, full)


# -- launchers ---------------------------------------------------------------------------------------------------
def _sourced(config: Path, *names: str) -> dict[str, str]:
    script = f'source "{config}"; ' + "; ".join(f'echo "{n}=${{{n}:-}}"' for n in names)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"]}).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.mark.parametrize("name", NAMES)
def test_launchers_agree_with_the_flavours(name):
    spec = SPECS[name]
    sub = REPO / "launchers" / f"{name}.sub"
    assert sub.exists() and f"BENCHMARK={name}" in sub.read_text()
    configs = sorted((REPO / "launchers" / name).glob("config_*.sh"))
    assert configs, f"launchers/{name}/ has no config_<SYSTEM>_<shape>.sh"
    for config in configs:
        values = _sourced(config, "BENCHMARK", "FLAVOUR", "DGXSYSTEM", "DGXNNODES", "DGXNGPU")
        assert values["BENCHMARK"] == name and values["FLAVOUR"] in spec.flavours, (config.name, values)
        assert values["DGXSYSTEM"] == config.stem.removeprefix("config_")
        shape = re.search(r"_0*(\d+)x0*(\d+)x", config.name)
        assert shape and (shape[1], shape[2]) == (values["DGXNNODES"], values["DGXNGPU"]), (config.name, values)


# -- golden losses -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_benchmark_has_golden_losses(name):
    assert (REPO / "tests" / "golden" / f"{name}_1p.json").exists(), \
        f"record them: python tests/golden/regenerate.py (add {name}'s cases to its CASES)"


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda p: p.stem)
def test_golden_losses_hold(golden, debug_data, tmp_path):
    """Bit-identical to the recorded losses (same code path, one intra-op thread, fixed seed), unless the
    file states a tolerance and its reason."""
    from golden.regenerate import run_case

    record = json.loads(golden.read_text())
    losses = run_case(record["benchmark"], record["nproc"], record["overrides"], str(debug_data(record["benchmark"])),
                      str(tmp_path), seed=record["seed"], steps=record["steps"])
    if "rel" in record:
        assert record.get("reason"), f"{golden.name} states a tolerance without its reason"
        assert losses == pytest.approx(record["losses"], rel=record["rel"]), (losses, record["losses"])
    else:
        assert losses == record["losses"]
