"""Shared fixtures: the synthetic debug dataset (written once per session) and multi-process launching."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def resnet_debug_data(tmp_path_factory) -> Path:
    from runtime.synthesize import synthesize

    out = tmp_path_factory.mktemp("resnet_debug_data")
    synthesize("resnet", "debug", str(out))
    return out


@pytest.fixture(scope="session")
def gpt3_debug_data(tmp_path_factory) -> Path:
    """The synthetic C4 files and the reference-layout initial checkpoint of GPT-3's debug flavour."""
    from runtime.synthesize import synthesize

    out = tmp_path_factory.mktemp("gpt3_debug_data")
    synthesize("gpt3", "debug", str(out))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(benchmark: str, data_dir, run_dir, *overrides: str, flavour: str = "debug") -> list[str]:
    return [sys.executable, "-m", "runtime.train", benchmark, "--flavour", flavour, "--data-dir", str(data_dir),
            "--run-dir", str(run_dir), *overrides]


def spawn_ranks(world_size: int, command: list[str], run_dirs: list | None = None, **popen) -> list[subprocess.Popen]:
    """Start `world_size` processes wired by RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, as a launcher would."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, **popen))
    return procs


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def compliance(log_path) -> tuple[bool, str]:
    """The real MLCommons checker on one log: (passed, its output)."""
    r = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
                        "--ruleset", "4.0.0", str(log_path)], capture_output=True, text=True, cwd=REPO)
    out = r.stdout + r.stderr
    return r.returncode == 0 and "SUCCESS" in out, out
