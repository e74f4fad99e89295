"""The packager on real runs: five ResNet debug runs (distinct seeds, stopped at their first evaluation, so that
five of them cost about one full debug run) packaged for the open division, then the MLCommons tools' own
verdicts on that package and on packages with a run missing, a tampered log and a reused seed."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, read_events, read_metrics, train_command

from runtime.submission import checkers, predict
from runtime.submission import runs as runs_lib
from runtime.submission.__main__ import main as cli
from runtime.submission.package import check_package, make_package
from runtime.submission.system_desc import REQUIRED_FIELDS

SEEDS = (101, 102, 103, 104, 105)
# The debug flavour stopped at its first eval: the open rules check eval_accuracy < 1, not the closed target.
OVERRIDES = ("run.target=0.2",)


@pytest.fixture(scope="module")
def run_dirs(debug_data, tmp_path_factory) -> list[Path]:
    logdir = tmp_path_factory.mktemp("resnet_logdir")
    dirs = []
    for i, seed in enumerate(SEEDS, 1):
        run_dir = logdir / f"240101_{i}"
        r = subprocess.run(train_command("resnet", debug_data("resnet"), run_dir, "--seed", str(seed), *OVERRIDES),
                           capture_output=True, text=True, cwd=REPO, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        dirs.append(run_dir)
    # A commit landing in this checkout between two of the runs gives them different revisions, which the packager
    # rightly refuses (test_mixed_runs_are_refused_in_one_line); here the five stand for one revision's runs.
    first = json.loads((dirs[0] / "run_config.json").read_text())["git_revision"]
    for run_dir in dirs[1:]:
        snap = json.loads((run_dir / "run_config.json").read_text())
        if snap["git_revision"] != first:
            (run_dir / "run_config.json").write_text(json.dumps({**snap, "git_revision": first}))
    return dirs


@pytest.fixture(scope="module")
def good_package(run_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("package")
    return make_package([str(run_dirs[0].parent)], "acme", "cpu_box", "open", str(out)), out


def _minutes(log: Path) -> float:
    events = {e["key"]: e["time_ms"] for e in read_events(log)}
    return (events["run_stop"] - events["run_start"]) / 60000


def _tamper(path: Path) -> None:
    """An edited value: the logged accuracies raised to one no model reaches."""
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if '"key": "eval_accuracy"' in line:
            event = json.loads(line.split(":::MLLOG ", 1)[1])
            event["value"] = 1.5
            lines[i] = ":::MLLOG " + json.dumps(event) + "\n"
    path.write_text("".join(lines))


def test_five_debug_runs_make_a_package_the_checkers_accept(good_package, run_dirs):
    result, out = good_package
    report = result.report
    assert report.passed, "\n".join(report.lines())
    assert result.counts == {"resnet": (5, 5)}
    folder = Path(result.org_dir) / "results" / "cpu_box" / "resnet"
    # the logs byte for byte, oldest first (the seeds were drawn in run order)
    assert sorted(p.name for p in folder.iterdir()) == [f"result_{i}.txt" for i in range(5)]
    for i, run_dir in enumerate(run_dirs):
        assert (folder / f"result_{i}.txt").read_bytes() == (run_dir / "mlperf_log.txt").read_bytes()
    package = next(v for v in report.verdicts if v.tool == "package_checker")
    assert package.passed and "PACKAGE CHECKER FOUND NO ERRORS" in package.output
    # what closing it would meet: distinct seeds pass, the debug model's batch of 32 has no RCP to meet
    seeds = next(v for v in report.verdicts if v.tool.startswith("seed_checker"))
    rcp = next(v for v in report.verdicts if v.tool.startswith("rcp_checker"))
    assert seeds.passed and not rcp.passed and "Missing RCP, please submit RCP with BS = 32" in rcp.messages[0]
    # the score: the summarizer's olympic mean equals the middle three run times by hand
    times = sorted(_minutes(d / "mlperf_log.txt") for d in run_dirs)
    assert report.scores["resnet"] == pytest.approx(sum(times[1:4]) / 3, abs=1e-9)

    desc = json.loads((Path(result.org_dir) / "systems" / "cpu_box.json").read_text())
    assert set(desc) == set(REQUIRED_FIELDS) and desc["division"] == "open" and desc["submitter"] == "acme"
    assert desc["accelerators_per_node"] == "0" and desc["framework"].startswith("PyTorch ")
    assert set(result.unknown_fields) == {k for k, v in desc.items() if v == "" and k not in ("hw_notes", "sw_notes")}
    impl = Path(result.org_dir) / "benchmarks" / "resnet" / "implementations" / "pytorch"
    readme = (impl / "README.md").read_text()
    assert "--flavour debug" in readme and "run.target=0.2" in readme  # the overrides the runs really had
    if "code of git commit" in readme:
        assert (impl / "runtime" / "train.py").is_file() and not any(p.name.startswith(".") for p in impl.rglob("*"))
    assert (out / "resnet_cpu_box_eval_curves.png").stat().st_size > 10_000


def test_a_missing_run_fails_with_the_package_checkers_count(run_dirs, tmp_path):
    result = make_package([str(d) for d in run_dirs[:4]], "acme", "cpu_box", "open", str(tmp_path))
    assert result.counts == {"resnet": (4, 5)} and not result.report.passed
    package = result.report.verdicts[0]
    assert any("Incorrect number of files" in m and "found 4, expected 5" in m
               for m in package.messages), package.output


def test_a_tampered_log_is_caught_one_is_dropped_two_fail(good_package, tmp_path, run_dirs):
    result, _ = good_package
    org = tmp_path / "acme"
    shutil.copytree(result.org_dir, org)
    folder = org / "results" / "cpu_box" / "resnet"
    _tamper(folder / "result_1.txt")
    report = check_package(str(org), str(tmp_path))
    package = report.verdicts[0]
    # the checker's rule: one non-compliant file is accepted under olympic scoring, and the summarizer drops it
    assert "1 file does not comply, accepting this under olympic scoring" in package.output
    summary = next(v for v in report.verdicts if v.tool == "result_summarizer")
    assert "Compliance check failed in" in summary.output and "result_1.txt" in summary.output
    times = sorted(_minutes(folder / f"result_{i}.txt") for i in (0, 2, 3, 4))
    assert report.scores["resnet"] == pytest.approx(sum(times[1:]) / 3, abs=1e-9)  # the drop counts as the slow end

    _tamper(folder / "result_3.txt")
    report = check_package(str(org), str(tmp_path))
    assert not report.passed
    assert "2 files do not comply, directory cannot be accepted" in report.verdicts[0].output


def test_reused_seeds_are_refused_and_the_seed_checker_says_so(good_package, run_dirs, tmp_path):
    copy = tmp_path / "logdir" / "240101_6"
    shutil.copytree(run_dirs[0], copy)
    with pytest.raises(runs_lib.RunError, match=r"seed 101 used by two runs"):
        make_package([str(d) for d in run_dirs[:4]] + [str(copy)], "acme", "cpu_box", "open", str(tmp_path / "o"))
    # a tree put together by hand with the same run twice: the MLCommons seed checker's own message
    result, _ = good_package
    folder = tmp_path / "results"
    shutil.copytree(Path(result.org_dir) / "results" / "cpu_box" / "resnet", folder)
    shutil.copyfile(folder / "result_0.txt", folder / "result_4.txt")
    verdict = checkers.seed_check([str(p) for p in folder.glob("result_*.txt")])
    assert not verdict.passed and "already logs the same seed on the same line" in verdict.messages[0]


def test_mixed_runs_are_refused_in_one_line(run_dirs, tmp_path, capsys):
    def variant(name: str, edit) -> Path:
        d = tmp_path / name
        shutil.copytree(run_dirs[4], d)
        snap = json.loads((d / "run_config.json").read_text())
        edit(snap)
        (d / "run_config.json").write_text(json.dumps(snap))
        log = (d / "mlperf_log.txt").read_text().replace('"key": "seed", "value": 105', '"key": "seed", "value": 999')
        (d / "mlperf_log.txt").write_text(log)
        return d

    other_rev = variant("rev", lambda s: s.update(git_revision="0" * 40))
    other_flavour = variant("flav", lambda s: s.update(flavour="dgxh100_1x8"))
    for odd, what in ((other_rev, "mixed git revisions"), (other_flavour, "mixed flavours")):
        code = cli(["package", *map(str, run_dirs[:4]), str(odd), "--org", "a", "--system", "s",
                    "--division", "open", "--out", str(tmp_path / "o"), "--no-check"])
        err = capsys.readouterr().err
        assert code == 2 and what in err and len(err.strip().splitlines()) == 1, err
    code = cli(["package", str(run_dirs[0]), "--org", "a", "--system", "s", "--division", "closed",
                "--out", str(tmp_path / "o"), "--no-check"])
    assert code == 2 and "logs submission_division 'open', the package is 'closed'" in capsys.readouterr().err


def test_the_required_runs_are_the_rules(run_dirs):
    rules = {"resnet": 5, "ssd": 5, "unet3d": 40, "stable_diffusion": 10, "bert": 10, "gpt3": 3,
             "llama2_70b_lora": 10, "dlrm_dcnv2": 10, "gnn": 10}
    assert {b: runs_lib.required_runs(b) for b in rules} == rules


def test_a_short_runs_throughput_is_its_windows_after_the_first(run_dirs):
    run_dir = run_dirs[0]
    m = predict.measure_run(str(run_dir))
    windows, previous = [], 0
    for record in read_metrics(run_dir):
        if "samples_per_s" in record:
            windows.append((record["step"] - previous, record["samples_per_s"]))
            previous = record["step"]
    later = windows[1:]
    assert m.throughput == pytest.approx(sum(s * 32 for s, _ in later) / sum(s * 32 / r for s, r in later))
    events = read_events(run_dir / "mlperf_log.txt")
    t = {e["key"]: e["time_ms"] for e in events}
    assert m.eval_seconds == pytest.approx((t["eval_stop"] - t["eval_start"]) / 1000)
    assert m.init_seconds == pytest.approx((t["init_stop"] - t["init_start"]) / 1000)
    code = cli(["predict", "resnet", "--run", str(run_dir), "--gbs", "3200", "--throughput", "57280"])
    assert code == 0


@pytest.mark.slow
def test_the_planners_output_gives_the_gpt3_prediction(capsys):
    from models.gpt3 import SPEC
    from models.gpt3.plan import main as plan_main

    assert plan_main(["--flavour", "dgxh100_64x8", "--world-size", "512", "--step-time", "10.74"]) == 0
    text = capsys.readouterr().out
    world, gbs, rate = predict.read_plan(text)
    assert (world, gbs) == (512, SPEC.config("dgxh100_64x8").train.global_batch_size)
    assert rate == pytest.approx(gbs / 10.74)
    # the same plan with a measured per-GPU token rate instead of the step time
    assert predict.read_plan(text, per_gpu_tokens=770.0)[2] == pytest.approx(770 * 512 / 2048)
