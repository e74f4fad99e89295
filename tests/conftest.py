"""Shared fixtures: the synthetic debug dataset (written once per session) and multi-process launching."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Triton kernels run under Triton's interpreter off a GPU; it reads TRITON_INTERPRET when a kernel module is
# first imported, so it is set before any test module can import kernels/ (tests/kernels/kernel_numerics.py
# checks it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Every process a test starts imports this checkout's runtime/models, not whatever tree an editable install
# of the venv points at (another clone, say).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture(scope="session")
def debug_data(tmp_path_factory):
    """debug_data(benchmark) -> the synthetic dataset of its debug flavour, written once per session."""
    from runtime.synthesize import synthesize

    made: dict[str, Path] = {}

    def get(benchmark: str) -> Path:
        if benchmark not in made:
            out = tmp_path_factory.mktemp(f"{benchmark}_debug_data")
            synthesize(benchmark, "debug", str(out))
            made[benchmark] = out
        return made[benchmark]

    return get


@dataclass
class DebugRun:
    returncode: int
    stdout: str
    run_dir: Path


@pytest.fixture(scope="session")
def debug_run(debug_data, tmp_path_factory):
    """debug_run(benchmark) -> one run of its debug flavour to the target (one process), once per session:
    the contract suite checks it, the benchmark's own tests read its log."""
    done: dict[str, DebugRun] = {}

    def get(benchmark: str) -> DebugRun:
        if benchmark not in done:
            run_dir = tmp_path_factory.mktemp(f"{benchmark}_debug_run")
            r = subprocess.run(train_command(benchmark, debug_data(benchmark), run_dir), capture_output=True,
                               text=True, cwd=REPO, timeout=1800)
            done[benchmark] = DebugRun(r.returncode, r.stdout + r.stderr, run_dir)
        return done[benchmark]

    return get


@pytest.fixture(scope="session")
def resnet_debug_data(debug_data) -> Path:
    return debug_data("resnet")


@pytest.fixture(scope="session")
def gpt3_debug_data(debug_data) -> Path:
    """The synthetic C4 files and the reference-layout initial checkpoint of GPT-3's debug flavour."""
    return debug_data("gpt3")


@pytest.fixture(scope="session")
def bert_debug_data(debug_data) -> Path:
    return debug_data("bert")


@pytest.fixture(scope="session")
def dlrm_debug_data(debug_data) -> Path:
    return debug_data("dlrm_dcnv2")


def read_events(log_path) -> list[dict]:
    return [json.loads(line.split(":::MLLOG ", 1)[1]) for line in open(log_path) if ":::MLLOG " in line]


def eval_scores(events) -> dict[int, dict]:
    """samples_count -> {metric: value} of the eval_accuracy lines (Stable Diffusion's FID and CLIP)."""
    out: dict[int, dict] = {}
    for e in events:
        if e["key"] == "eval_accuracy":
            out.setdefault(e["metadata"]["samples_count"], {})[e["metadata"]["metric"]] = e["value"]
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


# Tests that train on a debug dataset (end-to-end runs) or submit to Slurm are the slow part of the suite:
# marked here by the fixtures they use, so that `tests/run.sh -m "not slow"` is a quick inner loop.
_END_TO_END_FIXTURES = {"debug_data", "debug_run", "resnet_debug_data", "gpt3_debug_data", "bert_debug_data",
                        "dlrm_debug_data", "local_slurm"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def build_logged(spec, cfg, run_dir: Path):
    """(benchmark, {key: value} it logs as hyperparameters): a one-process CPU build without data, for tests
    that read a flavour's settings back from the built objects."""
    import torch

    from runtime.benchmark import RunContext
    from runtime.distributed import LaunchEnv
    from runtime.mlperf_log import MLPerfLogger
    from runtime.parallel import ParallelLayout

    layout = ParallelLayout(1, 0)
    layout.build_groups()
    log = MLPerfLogger(str(run_dir / "log.txt"), enabled=True, stdout=False)
    ctx = RunContext(spec, LaunchEnv("single", 0, 1, 0, 1, "127.0.0.1", 0), layout, torch.device("cpu"), log,
                     str(run_dir), str(run_dir), seed=1)
    bench = spec.benchmark(cfg, ctx)
    bench.log_hyperparameters()
    log.close()
    return bench, {e["key"]: e["value"] for e in read_events(run_dir / "log.txt")}


@pytest.fixture
def clean(monkeypatch):
    """kernels/backends.py's cached answers and MLPERF_KERNELS cleared around a test that fakes TE or apex."""
    from kernels import backends

    backends.reset()
    monkeypatch.delenv("MLPERF_KERNELS", raising=False)
    yield monkeypatch
    backends.reset()
