"""perf_tests/benchmarks_gpu_check.sh without a GPU: its dry run runs every benchmark's step script at tiny shapes
on the CPU and prints the summary and each script's tables; without CUDA the real mode refuses to start."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "perf_tests" / "benchmarks_gpu_check.sh"
BENCHMARKS = ("unet3d", "resnet", "ssd", "stable_diffusion", "gnn")


def _run(tmp_path, *args, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path, env=full_env,
                          timeout=240)


def test_dry_run_runs_every_step_script_and_prints_the_table(tmp_path):
    r = _run(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    table = (tmp_path / "out" / "table.md").read_text()
    assert r.stdout.endswith(table)
    rows = dict(re.findall(r"^\| (\w+) \| (.+?) \| \d+ \|$", table, re.M))
    assert rows == {name: "ok" for name in BENCHMARKS}, table
    for name in BENCHMARKS:
        # each script's own comparison table made it into the summary, with a measured row
        section = table.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert re.search(r"^\| \w+ \|.*\d\.\d+ \|$", section, re.M), section  # a row with its measured ratio
    unet3d = table.split("## unet3d\n", 1)[1].split("\n## ", 1)[0]
    assert "baseline NVIDIA v4.0 (spec unet3d.md): samples/s per GPU at batch 7 x 128^3: H100 72.3, H200 76.4" in unet3d
    assert "| sliding-window eval |" in unet3d


def test_real_mode_needs_cuda_and_a_known_benchmark(tmp_path):
    r = _run(tmp_path, "--bogus")
    assert r.returncode == 2 and "usage:" in r.stderr
    r = _run(tmp_path, "--dry-run", ONLY="nosuch")
    assert r.returncode == 2 and "ONLY=nosuch names no benchmark" in r.stderr
    import torch

    if not torch.cuda.is_available():
        r = _run(tmp_path)
        assert r.returncode == 2 and "torch sees no CUDA device" in r.stderr, r.stderr
