"""Runs in, a checked submission package out: read and cross-check the runs, pick the required number per
benchmark, write the tree and the plots, run the MLCommons checkers and say what they found."""

from __future__ import annotations

import glob
import json
import os
import shutil
from dataclasses import dataclass, field

from runtime.submission import checkers, layout, plot, system_desc
from runtime.submission import runs as runs_lib


@dataclass
class CheckReport:
    passed: bool
    verdicts: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)  # benchmark -> the summarizer's olympic-mean minutes

    def lines(self) -> list[str]:
        out = []
        for v in self.verdicts:
            out.append(f"{v.tool}: {'PASSED' if v.passed else 'FAILED'}")
            out.extend(f"  {m}" for m in v.messages)
        for benchmark, minutes in sorted(self.scores.items()):
            out.append(f"score {benchmark}: {minutes:.3f} min (result_summarizer, olympic mean)")
        out.append("VERDICT: " + ("the package passes the MLCommons checks" if self.passed else
                                  "the package FAILS the MLCommons checks"))
        return out


def _benchmark_dirs(org_dir: str) -> list[tuple[str, str, str]]:
    """(system, benchmark, folder) under results/."""
    found = []
    for folder in sorted(glob.glob(os.path.join(org_dir, "results", "*", "*"))):
        if os.path.isdir(folder):
            found.append((os.path.basename(os.path.dirname(folder)), os.path.basename(folder), folder))
    return found


def check_package(org_dir: str, work_dir: str, rcp_bypass: bool = False) -> CheckReport:
    org_dir = os.path.abspath(org_dir)
    os.makedirs(work_dir, exist_ok=True)
    verdicts = [checkers.package_checker(org_dir, work_dir, rcp_bypass)]
    for system, benchmark, folder in _benchmark_dirs(org_dir):
        desc_path = os.path.join(org_dir, "systems", f"{system}.json")
        division = json.load(open(desc_path)).get("division", "") if os.path.isfile(desc_path) else ""
        if division != "closed":
            # The package checker runs these two only for closed systems; run here they say what closing it
            # would meet, and do not decide the verdict.
            seeds = checkers.seed_check(glob.glob(os.path.join(folder, "result_*.txt")))
            seeds.tool += f" {benchmark}"
            for verdict in (seeds, checkers.rcp_checker(folder, work_dir)):
                verdict.tool += f" (information: {division or 'unknown'} division)"
                verdict.messages = verdict.messages or ["no findings"]
                verdicts.append(verdict)
    summary, scores = checkers.result_summarizer(org_dir, work_dir)
    verdicts.append(summary)
    return CheckReport(verdicts[0].passed and summary.passed, verdicts, scores)


@dataclass
class PackageResult:
    org_dir: str
    counts: dict  # benchmark -> (runs packaged, runs required)
    unknown_fields: list
    plots: list
    notes: list
    report: CheckReport | None


def make_package(paths: list[str], org: str, system: str, division: str, out: str, impl: str = "pytorch",
                 run_checks: bool = True, rcp_bypass: bool = False) -> PackageResult:
    all_runs = [runs_lib.read_run(p) for p in runs_lib.expand(paths)]
    groups = runs_lib.group_and_check(all_runs, division)
    org_dir = os.path.join(os.path.abspath(out), org)
    counts, notes, plots = {}, [], []
    for benchmark, group in sorted(groups.items()):
        needed = runs_lib.required_runs(benchmark)
        chosen = runs_lib.choose(group, needed)
        counts[benchmark] = (len(chosen), needed)
        if len(group) > needed:
            notes.append(f"{benchmark}: {len(group)} runs, packaged the {needed} consecutive ones whose mean time is "
                         f"closest to the median ({', '.join(os.path.basename(r.run_dir) for r in chosen)})")
        folder = os.path.join(org_dir, "results", system, benchmark)
        if os.path.isdir(folder):  # result files of an earlier packaging would be counted with these
            shutil.rmtree(folder)
        layout.write_results(org_dir, system, benchmark, chosen)
        _, code_note = layout.write_implementation(org_dir, benchmark, impl, chosen, system)
        notes.append(f"{benchmark}: implementation {impl}: {code_note}")
        target = chosen[0].snapshot.get("config", {}).get("run", {}).get("target")
        plots.append(plot.eval_curves(os.path.join(os.path.abspath(out), f"{benchmark}_{system}_eval_curves.png"),
                                      benchmark, chosen, target, _metric(benchmark)))
    desc, unknown = system_desc.describe(org, system, division, all_runs)
    layout.write_system(org_dir, system, desc)
    report = check_package(org_dir, os.path.abspath(out), rcp_bypass) if run_checks else None
    return PackageResult(org_dir, counts, unknown, plots, notes, report)


def _metric(benchmark: str) -> str:
    try:
        from runtime.benchmark import load_spec

        return load_spec(benchmark).metric
    except Exception:  # noqa: BLE001 - the axis label only
        return "eval"
