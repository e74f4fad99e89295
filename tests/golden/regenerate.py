"""Record the golden losses: short deterministic debug runs whose per-step losses must not change.

    python tests/golden/regenerate.py                 # every case below
    python tests/golden/regenerate.py gpt3_tp2 ...    # some of them

Each case runs `runtime.train <benchmark> --flavour debug` for a few steps with a fixed seed, one intra-op
thread per process (so that CPU reductions always split the same way) and the loss read at every step;
it writes `tests/golden/<case>.json` holding the command's settings and the losses. The contract suite
(tests/test_benchmark_contract.py) reruns every file it finds here and compares.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SEED = 4321
STEPS = 6

# case -> (benchmark, processes, extra overrides)
CASES = {
    "resnet_1p": ("resnet", 1, []),
    "resnet_dp2": ("resnet", 2, []),
    "bert_1p": ("bert", 1, []),
    "bert_dp2": ("bert", 2, []),
    "gpt3_1p": ("gpt3", 1, []),
    "gpt3_tp2": ("gpt3", 2, ["parallel.tp=2"]),
    "gpt3_dp2": ("gpt3", 2, []),
    "dlrm_dcnv2_1p": ("dlrm_dcnv2", 1, []),
    "dlrm_dcnv2_2r": ("dlrm_dcnv2", 2, []),
    "unet3d_1p": ("unet3d", 1, []),
    "unet3d_dp2": ("unet3d", 2, []),
    "ssd_1p": ("ssd", 1, []),
    "ssd_dp2": ("ssd", 2, []),
    "gnn_1p": ("gnn", 1, []),
    "gnn_dp2": ("gnn", 2, []),
    "llama2_70b_lora_1p": ("llama2_70b_lora", 1, []),
    "llama2_70b_lora_tp2": ("llama2_70b_lora", 2, ["parallel.tp=2"]),
    "llama2_70b_lora_dp2": ("llama2_70b_lora", 2, []),
    "stable_diffusion_1p": ("stable_diffusion", 1, []),
    "stable_diffusion_dp2": ("stable_diffusion", 2, []),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def golden_overrides(steps: int) -> list[str]:
    return [f"run.max_steps={steps}", "run.log_every_steps=1", "run.checkpoint_dir="]


def run_case(benchmark: str, nproc: int, overrides: list[str], data_dir: str, run_dir: str,
             seed: int = SEED, steps: int = STEPS) -> list[float]:
    """The per-step training losses of one short run (rank 0's metrics.jsonl)."""
    cmd = [sys.executable, "-m", "runtime.train", benchmark, "--flavour", "debug", "--data-dir", data_dir,
           "--run-dir", run_dir, "--seed", str(seed), *golden_overrides(steps), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    # Ranks wired by RANK/WORLD_SIZE/MASTER_* as a launcher would (torchrun would turn exit 3 into 1).
    port = _free_port()
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**env, "RANK": str(r), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(r),
                                   "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)} if nproc > 1 else env)
             for r in range(nproc)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        if p.returncode != 3:  # run.max_steps ends the run as aborted (exit 3) by design
            raise RuntimeError(f"{' '.join(cmd)} rank {rank} exited {p.returncode}:\n{out[-6000:]}")
    lines = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if "loss" in m]


def synthesize(benchmark: str, root: str) -> str:
    out = os.path.join(root, f"{benchmark}_debug")
    subprocess.run([sys.executable, "-m", "runtime.synthesize", benchmark, "--flavour", "debug", "--out", out],
                   cwd=REPO, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return out


def main(argv: list[str]) -> int:
    names = argv or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown case(s) {unknown}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = {}
        for name in names:
            benchmark, nproc, overrides = CASES[name]
            if benchmark not in data:
                data[benchmark] = synthesize(benchmark, tmp)
            losses = run_case(benchmark, nproc, overrides, data[benchmark], os.path.join(tmp, name))
            record = {"benchmark": benchmark, "nproc": nproc, "overrides": overrides, "seed": SEED,
                      "steps": STEPS, "losses": losses}
            (HERE / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
            print(f"{name}: {len(losses)} losses, first {losses[0]:.6f} last {losses[-1]:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
