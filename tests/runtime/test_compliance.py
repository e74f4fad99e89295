"""runtime.compliance (what debug.sh runs): the checker's verdict, except for the one named defect of the
training 4.0.0 rules, which is accepted only when it is the whole failure."""

import subprocess
import sys

from conftest import REPO

from runtime.compliance import KNOWN_DEFECTS


def _check(log):
    r = subprocess.run([sys.executable, "-m", "runtime.compliance", str(log)], capture_output=True, text=True,
                       cwd=REPO)
    return r.returncode, r.stdout + r.stderr


def test_the_open_llama_log_fails_only_the_named_defect_and_is_accepted(debug_run, tmp_path):
    assert KNOWN_DEFECTS == {("open", "llama2_70b_lora"): {"submission_benchmark"}}
    log = debug_run("llama2_70b_lora").run_dir / "mlperf_log.txt"
    code, out = _check(log)
    assert code == 0 and "CHECK for 'submission_benchmark' failed" in out and "compliance: accepted" in out, out
    # anything else wrong in the same log is not excused: a second run_stop
    text = log.read_text()
    bad = tmp_path / "two_stops.txt"
    bad.write_text(text + text.splitlines()[-1] + "\n")
    code, out = _check(bad)
    assert code != 0 and "compliance: accepted" not in out, out


def test_a_compliant_log_passes_and_a_tampered_one_fails(debug_run, tmp_path):
    log = debug_run("resnet").run_dir / "mlperf_log.txt"
    code, out = _check(log)
    assert code == 0 and "SUCCESS" in out and "accepted" not in out, out
    assert (log.parent / "compliance_checker.log").exists()  # the checker's own log beside the checked one
    bad = tmp_path / "no_run_stop.txt"
    bad.write_text("".join(line for line in log.read_text().splitlines(keepends=True)
                           if '"key": "run_stop"' not in line))
    code, out = _check(bad)
    assert code != 0 and "accepted" not in out, out
