"""The MLCommons compliance checker on one log, with the one known defect of its training 4.0.0 rules.

    python -m runtime.compliance LOG      (what launchers/debug.sh runs after a debug run)

prints the checker's own report and exits with its code, except for a failure that is exactly a known
defect of the rules, which it names and accepts: mlperf-logging's `training_4.0.0/open_common.yaml` lists
the benchmarks an open-division log may name and leaves `llama2_70b_lora` out (`closed_common.yaml` has it),
so every open llama2_70b_lora log fails `submission_benchmark` and nothing else can be checked of it. The
debug flavours claim the open division (they are not the reference models), so without this a correct
debug log of that benchmark could never pass. Relabelled closed, the same log passes every closed rule
(tests/test_benchmark_contract.py checks both).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

RULESET = "4.0.0"
KNOWN_DEFECTS = {("open", "llama2_70b_lora"): frozenset({"submission_benchmark"})}


def run_checker(log_path: str) -> tuple[int, str]:
    """The checker's exit code and report. It writes its own compliance_checker.log into its working
    directory: run it beside the log, not wherever the user stands."""
    log_path = os.path.abspath(log_path)
    r = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
                        "--ruleset", RULESET, log_path], capture_output=True, text=True,
                       cwd=os.path.dirname(log_path))
    return r.returncode, r.stdout + r.stderr


def failed_rules(report: str) -> set[str]:
    return set(re.findall(r"CHECK for '(\w+)' failed", report))


def other_problems(report: str) -> list[str]:
    """Warnings and errors of the report that are not a failed rule (nor the final FAILED line)."""
    return [line for line in report.splitlines() if line.startswith(("WARNING", "ERROR"))
            and not re.search(r"CHECK for '(\w+)' failed|^ERROR - FAILED", line)]


def submission(log_path: str) -> tuple[str | None, str | None]:
    """(division, benchmark) the log claims."""
    found = {}
    with open(log_path) as f:
        for line in f:
            if ":::MLLOG " in line:
                event = json.loads(line.split(":::MLLOG ", 1)[1])
                if event["key"] in ("submission_division", "submission_benchmark"):
                    found.setdefault(event["key"], event["value"])
    return found.get("submission_division"), found.get("submission_benchmark")


def known_defect(log_path: str, report: str) -> frozenset[str] | None:
    """The known defect that explains every failure of this report, if one does."""
    defect = KNOWN_DEFECTS.get(submission(log_path))
    if defect and failed_rules(report) == defect and not other_problems(report):
        return defect
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m runtime.compliance LOG", file=sys.stderr)
        return 2
    code, report = run_checker(args[0])
    print(report, end="")
    if code != 0 and (defect := known_defect(args[0], report)):
        division, benchmark = submission(args[0])
        print(f"compliance: accepted: the only failed rule ({', '.join(sorted(defect))}) is a known defect of "
              f"mlperf-logging's training {RULESET} rules for {division} {benchmark} logs (runtime/compliance.py)")
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
