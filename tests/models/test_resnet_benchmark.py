"""ResNet specifics end to end (parity, resume and the run to target are in tests/test_benchmark_contract.py)."""

import re
import subprocess

from conftest import REPO, train_command


def test_eval_only_reports_the_starting_weights_without_a_run_log(resnet_debug_data, tmp_path):
    """--eval-only on a benchmark without an initial checkpoint: the seed's initial weights, evaluated on the
    whole validation set (same seed, same value), and no MLPerf log, since nothing was timed."""
    values = []
    for name in ("a", "b"):
        r = subprocess.run(train_command("resnet", resnet_debug_data, tmp_path / name, "--seed", "3", "--eval-only"),
                           capture_output=True, text=True, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        values.append(float(re.search(r"^EVAL,resnet,top1,([\d.]+)$", r.stdout, re.M).group(1)))
        assert not (tmp_path / name / "mlperf_log.txt").exists() and "RESULT," not in r.stdout
    # 16 classes: an untrained network is near chance (1/16) and far below the 0.90 target.
    assert values[0] == values[1] and values[0] < 0.5
