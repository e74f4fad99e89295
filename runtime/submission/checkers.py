"""mlperf-logging's own tools on a package, each in its own process as a submitter would run them, with their
verdicts read back from what they print.

The package checker exits 0 whatever it finds: its verdict is its last line ("PACKAGE CHECKER FOUND NO ERRORS" or
"... FOUND ERRORS"). It runs the seed and RCP checks only where systems/<system>.json says closed, accepts one
non-compliant result file per benchmark (four for unet3d) under olympic scoring, and in the closed division writes
scaling.json beside the results when they converge faster than the RCP mean. The result summarizer drops a run
whose log fails compliance and prints the olympic mean in minutes (times the scaling factor).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass, field

from runtime.submission import RULESET, USAGE


@dataclass
class Verdict:
    tool: str
    passed: bool
    messages: list[str] = field(default_factory=list)  # its ERROR and WARNING lines
    output: str = ""


def _run(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=1800)


def _problems(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith(("ERROR", "WARNING"))]


def package_checker(org_dir: str, work_dir: str, rcp_bypass: bool = False) -> Verdict:
    args = ["mlperf_logging.package_checker", org_dir, USAGE, RULESET,
            "--log_output", os.path.join(work_dir, "package_checker.log")]
    if rcp_bypass:
        args.append("--rcp-bypass")
    r = _run(args, work_dir)
    out = r.stdout + r.stderr
    passed = "PACKAGE CHECKER FOUND NO ERRORS" in out and r.returncode == 0
    return Verdict("package_checker", passed, _problems(out), out)


def rcp_checker(benchmark_dir: str, work_dir: str) -> Verdict:
    name = os.path.basename(benchmark_dir.rstrip("/"))
    r = _run(["mlperf_logging.rcp_checker", benchmark_dir, "--rcp_usage", USAGE, "--rcp_version", RULESET,
              "--log_output", os.path.join(work_dir, f"rcp_checker_{name}.log")], work_dir)
    out = r.stdout + r.stderr
    lines = [line.strip() for line in out.splitlines() if "RCP test" in line or line.startswith("ERROR")]
    return Verdict(f"rcp_checker {name}", r.returncode == 0, lines, out)


def result_summarizer(org_dir: str, work_dir: str) -> tuple[Verdict, dict[str, float]]:
    """(its verdict, {benchmark: olympic-mean minutes}) from the csv it writes."""
    csv_path = os.path.join(work_dir, "summary.csv")
    r = _run(["mlperf_logging.result_summarizer", org_dir, USAGE, RULESET, "--csv", csv_path], work_dir)
    out = r.stdout + r.stderr
    scores: dict[str, float] = {}
    if os.path.isfile(csv_path):
        with open(csv_path) as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    try:
                        minutes = float(value)
                    except (TypeError, ValueError):
                        continue
                    if key in _BENCHMARKS and minutes == minutes:  # NaN: no score for that benchmark
                        scores[key] = minutes
    messages = [line.strip() for line in out.splitlines()
                if "ERROR" in line or "NOTICE" in line or " in " in line and "failed" in line]
    return Verdict("result_summarizer", r.returncode == 0 and bool(scores), messages, out), scores


_BENCHMARKS = {"resnet", "ssd", "unet3d", "stable_diffusion", "bert", "gpt3", "llama2_70b_lora", "dlrm_dcnv2", "gnn"}


def olympic_mean(minutes: list[float], benchmark: str, failed: int = 0) -> float | None:
    """The summarizer's score from run times (its own function): drop the fastest and slowest (four each for
    unet3d), a failed run counting as one of the slow ones."""
    from mlperf_logging.result_summarizer.result_summarizer import _compute_olympic_average

    drop = 4 if benchmark == "unet3d" else 1
    return _compute_olympic_average(sorted(minutes), failed, drop) if failed <= drop else None


def seed_check(result_files: list[str]) -> Verdict:
    """The package checker's seed checker on one benchmark's result files. The package checker runs it only in the
    closed division; run directly it says the same for an open package."""
    from mlperf_logging.package_checker.seed_checker import SeedChecker

    errors = SeedChecker(RULESET)._assert_unique_seed_per_run(sorted(result_files))
    return Verdict("seed_checker", not errors, errors)
