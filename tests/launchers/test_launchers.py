"""The launchers: run_and_time.sh, mpirun.sh, run.sub/resnet.sub, the config files and dropcache.py.

Fast tests drive the shell logic in DRYRUN mode (no training): which launcher run_and_time.sh picks from
the environment, the nsys and bindpcie wrappers, argument pass-through, the config files' arithmetic.
Slow tests train the resnet debug flavour on CPU through each launch path and run the real MLCommons
compliance checker on the log it leaves:
  torchrun, 2 processes | torchrun as 2 nodes of 1 process (c10d rendezvous) | mpirun, 2 ranks |
  sbatch launchers/resnet.sub on the local Slurm (tests/infra/start_slurm.sh).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, compliance, free_port

LAUNCHERS = REPO / "launchers"
RUN_AND_TIME = LAUNCHERS / "run_and_time.sh"
MPIRUN_SH = LAUNCHERS / "mpirun.sh"
RESNET_SUB = LAUNCHERS / "resnet.sub"
# Every benchmark's wrapper and config files, found by glob, so a new benchmark is covered without a test edit.
SUBS = sorted(p for p in LAUNCHERS.glob("*.sub") if p.name != "run.sub")
CONFIGS = sorted(LAUNCHERS.glob("*/config_*.sh"))
RESNET_CONFIGS = [c for c in CONFIGS if c.parent.name == "resnet"]
# Variables by which a launcher announces itself: a test run inside a Slurm job or mpirun must not see them.
_LAUNCH_PREFIXES = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "MPI_LOCAL", "TORCHELASTIC_")
_LAUNCH_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NNODES",
                "NODE_RANK", "DGXNGPU", "DGXNNODES", "DGXSYSTEM", "NVTX_FLAG", "EXTRA_ARGS", "SEED", "SEED_BASE",
                "LAUNCH_MODE", "RUNDIR", "LOGDIR", "DATADIR", "BENCHMARK", "FLAVOUR", "CONT", "NEXP",
                "LOAD_CHECKPOINTS_PATH", "MLPERF_REPO", "WALLTIME", "WALLTIME_RUNANDTIME", "WALLTIME_MARGIN",
                "ENABLE_IB_BINDING", "TENSOR_MODEL_PARALLEL", "PIPELINE_MODEL_PARALLEL", "INTERLEAVED_PIPELINE",
                "MICRO_BATCH_SIZE", "MINIBS", "PREPROC_DATA", "SPM", "CHECKPOINT_DIR", "CHECKPOINT_EVERY_BLOCKS",
                "SAVE_CHECKPOINTS", "DATESTAMP"}


def clean_env(tmp_path: Path | None = None, **overrides) -> dict:
    """This environment minus any launcher's variables, with this interpreter's bin (the venv) on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCH_PREFIXES) and k not in _LAUNCH_VARS}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def run(cmd, env, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], env=env, cwd=kw.pop("cwd", REPO), capture_output=True, text=True,
                          timeout=timeout, **kw)


def dryrun(script: Path, env: dict, *args: str) -> tuple[str, list[str]]:
    """(mode line, the command as argv) that the script would run."""
    r = run(["bash", script, *args], {**env, "DRYRUN": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    cmd = next(line for line in lines if line.startswith("DRYRUN:"))
    return lines[0], shlex.split(cmd[len("DRYRUN:"):])


def fake_tool(directory: Path, name: str, body: str = 'echo "$0 $*"') -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)
    return path


def base_env(tmp_path, **overrides) -> dict:
    return clean_env(**{"BENCHMARK": "resnet", "FLAVOUR": "debug", "DATADIR": "/data/x", "LOGDIR": tmp_path / "logs",
                        **overrides})


def entry_args(cmd: list[str]) -> list[str]:
    """Everything from `-m runtime.train` on."""
    i = cmd.index("-m")
    assert cmd[i + 1] == "runtime.train", cmd
    return cmd[i + 1:]


# ---------------------------------------------------------------------------------------------------
# run_and_time.sh: the launcher it picks, and the command it builds
# ---------------------------------------------------------------------------------------------------

def test_one_slurm_task_per_gpu_runs_python_directly(tmp_path):
    env = base_env(tmp_path, SLURM_STEP_ID=0, SLURM_PROCID=5, SLURM_NTASKS=16, SLURM_NNODES=2, SLURM_JOB_ID=77,
                   SEED=123)
    mode, cmd = dryrun(RUN_AND_TIME, env)
    assert mode == "run_and_time: mode=direct rank=5"
    assert cmd[:2] == ["python", "-u"] and "torchrun" not in cmd
    assert entry_args(cmd) == ["runtime.train", "resnet", "--flavour", "debug", "--data-dir", "/data/x",
                               "--run-dir", f"{tmp_path}/logs/resnet_77", "--seed", "123"]


def test_the_batch_script_itself_is_one_process_per_node(tmp_path):
    # sbatch --ntasks=16: the batch script sees SLURM_NTASKS=16 but is not one of 16 srun tasks.
    env = base_env(tmp_path, SLURM_PROCID=0, SLURM_NTASKS=16, SLURM_NNODES=2, SLURM_NODEID=0, DGXNGPU=8,
                   MASTER_ADDR="node001")
    assert dryrun(RUN_AND_TIME, env)[0] == "run_and_time: mode=torchrun rank=0"


@pytest.mark.parametrize("mpi_vars", [{"OMPI_COMM_WORLD_SIZE": 2, "OMPI_COMM_WORLD_RANK": 1},
                                      {"PMI_SIZE": 2, "PMI_RANK": 1}], ids=["openmpi", "mpich"])
def test_ranks_started_by_mpi_run_python_directly(tmp_path, mpi_vars):
    mode, cmd = dryrun(RUN_AND_TIME, base_env(tmp_path, **mpi_vars))
    assert mode == "run_and_time: mode=direct rank=1"
    assert cmd[0] == "python"


def test_interactive_single_node_uses_standalone_torchrun(tmp_path):
    mode, cmd = dryrun(RUN_AND_TIME, base_env(tmp_path, DGXNGPU=8))
    assert mode == "run_and_time: mode=torchrun rank=0"
    assert cmd[:cmd.index("-m")] == ["torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=8"]


def test_one_slurm_task_per_node_uses_torchrun_with_node_rank(tmp_path):
    # srun --ntasks-per-node=1: as many tasks as nodes, so each task starts its node's ranks with torchrun.
    env = base_env(tmp_path, DGXNGPU=8, SLURM_STEP_ID=0, SLURM_PROCID=1, SLURM_NODEID=1, SLURM_NTASKS=2, SLURM_NNODES=2,
                   SLURM_JOB_ID=99, MASTER_ADDR="node001", MASTER_PORT=29500)
    mode, cmd = dryrun(RUN_AND_TIME, env)
    assert mode == "run_and_time: mode=torchrun rank=1"
    launcher = cmd[:cmd.index("-m")]
    assert launcher[0] == "torchrun"
    for flag in ("--nnodes=2", "--nproc_per_node=8", "--rdzv_backend=c10d",
                 "--rdzv_endpoint=node001:29500", "--rdzv_id=99", "--rdzv_conf=is_host=0"):
        assert flag in launcher, (flag, launcher)


@pytest.mark.parametrize("node_rank,is_host", [(0, 1), (1, 0)])
def test_multi_node_torchrun_node_zero_hosts_the_rendezvous(tmp_path, node_rank, is_host):
    env = base_env(tmp_path, NNODES=2, NODE_RANK=node_rank, DGXNGPU=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=4321)
    _, cmd = dryrun(RUN_AND_TIME, env)
    assert f"--rdzv_conf=is_host={is_host}" in cmd and "--rdzv_endpoint=127.0.0.1:4321" in cmd
    assert "--standalone" not in cmd


def test_multi_node_torchrun_without_master_addr_fails_clearly(tmp_path):
    r = run(["bash", RUN_AND_TIME], {**base_env(tmp_path, NNODES=2, NODE_RANK=1), "DRYRUN": "1"})
    assert r.returncode != 0 and "MASTER_ADDR" in r.stderr


def test_launch_mode_override(tmp_path):
    env = base_env(tmp_path, SLURM_STEP_ID=0, SLURM_PROCID=0, SLURM_NTASKS=8, SLURM_NNODES=1, LAUNCH_MODE="torchrun",
                   DGXNGPU=8)
    assert dryrun(RUN_AND_TIME, env)[1][0] == "torchrun"
    r = run(["bash", RUN_AND_TIME], {**base_env(tmp_path, LAUNCH_MODE="mpi"), "DRYRUN": "1"})
    assert r.returncode == 2 and "LAUNCH_MODE" in r.stderr


def test_extra_args_and_script_arguments_pass_through(tmp_path):
    env = base_env(tmp_path, EXTRA_ARGS="optim.base_lr=4 train.max_epochs=20", RUNDIR="/r")
    _, cmd = dryrun(RUN_AND_TIME, env, "run.log_every_steps=5", "--seed", "7")
    assert entry_args(cmd) == ["runtime.train", "resnet", "--flavour", "debug", "--data-dir", "/data/x",
                               "--run-dir", "/r", "optim.base_lr=4", "train.max_epochs=20",
                               "run.log_every_steps=5", "--seed", "7"]


def test_the_initial_checkpoint_is_passed_as_data_init_checkpoint(tmp_path):
    env = base_env(tmp_path, BENCHMARK="gpt3", LOAD_CHECKPOINTS_PATH="/load_checkpoints", RUNDIR="/r",
                   EXTRA_ARGS="parallel.tp=2")
    _, cmd = dryrun(RUN_AND_TIME, env)
    assert entry_args(cmd)[-2:] == ["data.init_checkpoint=/load_checkpoints", "parallel.tp=2"]
    _, cmd = dryrun(RUN_AND_TIME, base_env(tmp_path, RUNDIR="/r"))
    assert not any(a.startswith("data.init_checkpoint") for a in cmd)


def test_checkpoint_dir_and_interval_become_the_run_overrides(tmp_path):
    """run.sub hands each run its checkpoint directory as CHECKPOINT_DIR (saved on SIGTERM, resumed when the same
    command runs again); CHECKPOINT_EVERY_BLOCKS adds periodic saves. Relative means relative to the caller."""
    env = base_env(tmp_path, RUNDIR="/r", CHECKPOINT_DIR="results/r_1_checkpoint", CHECKPOINT_EVERY_BLOCKS=2,
                   EXTRA_ARGS="optim.base_lr=4")
    r = run(["bash", RUN_AND_TIME], {**env, "DRYRUN": "1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cmd = shlex.split(r.stdout.splitlines()[1][len("DRYRUN:"):])
    assert run_overrides(cmd) == [f"run.checkpoint_dir={tmp_path}/results/r_1_checkpoint",
                                  "run.checkpoint_every_blocks=2", "optim.base_lr=4"]
    _, cmd = dryrun(RUN_AND_TIME, base_env(tmp_path, RUNDIR="/r", CHECKPOINT_DIR="", CHECKPOINT_EVERY_BLOCKS=""))
    assert not any(a.startswith("run.checkpoint") for a in cmd)
    assert "CHECKPOINT_EVERY_BLOCKS=often: expected a number of blocks" in refused(
        tmp_path, CHECKPOINT_EVERY_BLOCKS="often")


def test_on_sigterm_run_and_time_waits_for_the_run_to_save_and_exit(tmp_path):
    """Slurm signals every process of a job at once: run_and_time.sh must not die before the training process it
    started, which saves a checkpoint and exits 143 (slurmstepd kills what is left of a step once its tasks end)."""
    ready = tmp_path / "ready"
    fake_python = fake_tool(tmp_path / "bin", "python", f"""
trap 'echo "rank: SIGTERM, saving"; sleep 1; echo "rank: saved"; exit 143' TERM
touch {ready}
for _ in $(seq 600); do sleep 0.1; done
exit 1""")
    env = base_env(tmp_path, LAUNCH_MODE="direct", PYTHON=fake_python, RUNDIR=tmp_path / "run")
    proc = subprocess.Popen(["bash", str(RUN_AND_TIME)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)  # as Slurm does: the script and the run alike
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, out + err
    assert out.index("rank: saved") < out.index("ENDING TIMING RUN AT"), out
    assert "run_and_time: resnet rank 0 exit 143 after" in out
    assert "run_and_time: SIGTERM: rank 0 waited for its run to stop" in err


def test_relative_paths_are_the_callers(tmp_path):
    env = base_env(tmp_path, DATADIR="data/imagenet", LOGDIR="results", DRYRUN=1)
    r = run(["bash", RUN_AND_TIME], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cmd = shlex.split(r.stdout.splitlines()[1][len("DRYRUN:"):])
    assert entry_args(cmd)[4:8] == ["--data-dir", f"{tmp_path}/data/imagenet",
                                    "--run-dir", f"{tmp_path}/results/resnet_local"]


@pytest.mark.parametrize("var", ["BENCHMARK", "FLAVOUR", "DATADIR"])
def test_missing_required_variable_is_named(tmp_path, var):
    env = base_env(tmp_path)
    del env[var]
    r = run(["bash", RUN_AND_TIME], {**env, "DRYRUN": "1"})
    assert r.returncode != 0 and var in r.stderr


def test_nvtx_flag_wraps_each_rank_in_nsys(tmp_path):
    tools = tmp_path / "bin"
    fake_tool(tools, "nsys")
    env = base_env(tmp_path, NVTX_FLAG=1, DGXSYSTEM="DGXH100_01x08x408", SLURM_JOB_ID=4242, SLURM_STEP_ID=0,
                   SLURM_PROCID=3,
                   SLURM_NTASKS=8, SLURM_NNODES=1, PROFILE_START_STEP=5, PROFILE_STOP_STEP=9)
    env["PATH"] = f"{tools}:{env['PATH']}"
    _, cmd = dryrun(RUN_AND_TIME, env)
    python_at = cmd.index("python")
    assert cmd[:python_at] == [
        "nsys", "profile", "--capture-range=cudaProfilerApi", "--capture-range-end=stop", "--sample=none",
        "--cpuctxsw=none", "--trace=cuda,nvtx", "-f", "true",
        "-o", f"{tmp_path}/logs/resnet_DGXH100_01x08x408_4242_3"]
    # The capture range the entry point opens with cudaProfilerStart/Stop.
    assert cmd[-2:] == ["run.profile_start_step=5", "run.profile_stop_step=9"]


def test_nvtx_flag_without_nsys_fails_clearly(tmp_path):
    env = base_env(tmp_path, NVTX_FLAG=1)
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not (Path(p) / "nsys").exists())
    r = run(["bash", RUN_AND_TIME], {**env, "DRYRUN": "1"})
    assert r.returncode == 2
    assert "NVTX_FLAG=1 but nsys is not on PATH" in r.stderr


@pytest.mark.parametrize("ib,nnodes,expect", [
    ("0", 1, ["bindpcie", "--cpu=exclusive", "--"]),
    ("1", 2, ["bindpcie", "--cpu=exclusive", "--ib=single", "--"]),
    ("1", 1, ["bindpcie", "--cpu=exclusive", "--"]),  # one node: no IB traffic to pin
])
def test_bindpcie_pins_direct_ranks_when_installed(tmp_path, ib, nnodes, expect):
    tools = tmp_path / "bin"
    fake_tool(tools, "bindpcie")
    env = base_env(tmp_path, SLURM_STEP_ID=0, SLURM_PROCID=0, SLURM_NTASKS=8 * nnodes, SLURM_NNODES=nnodes,
                   ENABLE_IB_BINDING=ib)
    env["PATH"] = f"{tools}:{env['PATH']}"
    _, cmd = dryrun(RUN_AND_TIME, env)
    assert cmd[:cmd.index("python")] == expect


def test_no_bindpcie_without_the_binary_or_under_torchrun(tmp_path):
    _, cmd = dryrun(RUN_AND_TIME, base_env(tmp_path, SLURM_STEP_ID=0, SLURM_PROCID=0, SLURM_NTASKS=8, SLURM_NNODES=1))
    if not shutil.which("bindpcie"):
        assert cmd[0] == "python"
    tools = tmp_path / "bin"
    fake_tool(tools, "bindpcie")
    env = base_env(tmp_path, DGXNGPU=2)
    env["PATH"] = f"{tools}:{env['PATH']}"
    assert dryrun(RUN_AND_TIME, env)[1][0] == "torchrun"


# ---------------------------------------------------------------------------------------------------
# run_and_time.sh: NVIDIA's GPT-3 launcher variables
# ---------------------------------------------------------------------------------------------------

GPT3_DGX_CONFIGS = [c for c in CONFIGS if c.parent.name == "gpt3" and not c.stem.startswith("config_CPU")]


def slurm_ranks(world: int, nodes: int, **overrides) -> dict:
    """What srun gives rank 0 of `world` tasks on `nodes` nodes (one task per GPU: ranks run python directly)."""
    return {"SLURM_STEP_ID": 0, "SLURM_PROCID": 0, "SLURM_NTASKS": world, "SLURM_NNODES": nodes, **overrides}


def run_overrides(cmd: list[str]) -> list[str]:
    """The section.field=value arguments after --run-dir."""
    args = entry_args(cmd)
    return args[args.index("--run-dir") + 2:]


def refused(tmp_path, **env) -> str:
    """run_and_time.sh's refusal: exit 2 and one line on stderr, which is returned."""
    r = run(["bash", RUN_AND_TIME], {**base_env(tmp_path, **env), "DRYRUN": "1"})
    assert r.returncode == 2 and "DRYRUN:" not in r.stdout, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


def test_nvidia_gpt3_variables_become_the_overrides_of_their_fields(tmp_path):
    env = base_env(tmp_path, BENCHMARK="gpt3", FLAVOUR="dgxh100_64x8", TENSOR_MODEL_PARALLEL=4,
                   PIPELINE_MODEL_PARALLEL=8, INTERLEAVED_PIPELINE=4, MICRO_BATCH_SIZE=2, MINIBS=144,
                   EXTRA_ARGS="train.max_samples=1000", **slurm_ranks(512, 64))
    _, cmd = dryrun(RUN_AND_TIME, env, "run.max_steps=5")
    # Before EXTRA_ARGS and the arguments; MINIBS x DP, DP = 512 ranks / (TP 4 x PP 8) = 16.
    assert run_overrides(cmd) == ["parallel.tp=4", "parallel.pp=8", "train.virtual_pp=4", "train.micro_batch_size=2",
                                  "train.global_batch_size=2304", "train.max_samples=1000", "run.max_steps=5"]


@pytest.mark.parametrize("var,value,override", [
    ("TENSOR_MODEL_PARALLEL", "2", "parallel.tp=2"),
    ("PIPELINE_MODEL_PARALLEL", "4", "parallel.pp=4"),
    ("INTERLEAVED_PIPELINE", "2", "train.virtual_pp=2"),
    ("INTERLEAVED_PIPELINE", "null", "train.virtual_pp=1"),  # NVIDIA's "not interleaved"
    ("INTERLEAVED_PIPELINE", "0", "train.virtual_pp=1"),
    ("MICRO_BATCH_SIZE", "4", "train.micro_batch_size=4"),
])
def test_each_nvidia_layout_variable_alone(tmp_path, var, value, override):
    _, cmd = dryrun(RUN_AND_TIME, base_env(tmp_path, BENCHMARK="gpt3", DGXNGPU=8, **{var: value}))
    assert run_overrides(cmd) == [override]


@pytest.mark.parametrize("config", GPT3_DGX_CONFIGS, ids=lambda c: c.stem)
def test_minibs_from_the_config_name_gives_the_flavours_batch(tmp_path, config):
    """NVIDIA's config name <N>x<G>x<MINIBS>x<TP>x<PP>_mbs<MBS>, as variables on N x G ranks, asks for exactly the
    layout and global batch of the flavour our config file names."""
    from models.gpt3.config import FLAVOURS

    values = source_config(config)
    name = re.search(r"_(\d+)x(\d+)x(\d+)x(\d+)x(\d+)_mbs(\d+)", config.stem)
    nodes, gpus, minibs, tp, pp, mbs = map(int, name.groups())
    env = base_env(tmp_path, BENCHMARK="gpt3", FLAVOUR=values["FLAVOUR"], TENSOR_MODEL_PARALLEL=tp,
                   PIPELINE_MODEL_PARALLEL=pp, MICRO_BATCH_SIZE=mbs, MINIBS=minibs, **slurm_ranks(nodes * gpus, nodes))
    _, cmd = dryrun(RUN_AND_TIME, env)
    cfg = FLAVOURS[values["FLAVOUR"]]()
    assert run_overrides(cmd) == [f"parallel.tp={cfg.parallel.tp}", f"parallel.pp={cfg.parallel.pp}",
                                  f"train.micro_batch_size={cfg.train.micro_batch_size}",
                                  f"train.global_batch_size={cfg.train.global_batch_size}"]


@pytest.mark.parametrize("env,gbs", [
    # srun, 512 ranks in groups of TP 4 x PP 8: DP 16.
    ({"TENSOR_MODEL_PARALLEL": 4, "PIPELINE_MODEL_PARALLEL": 8, **slurm_ranks(512, 64)}, 144 * 16),
    # The layout from EXTRA_ARGS (the CPU config sets parallel.tp=2 there): 2 ranks, TP 2, DP 1.
    ({"EXTRA_ARGS": "parallel.tp=2 parallel.pp=1", "DGXNGPU": 2}, 144),
    # torchrun over 2 nodes x 4 processes, TP 2: DP 4.
    ({"TENSOR_MODEL_PARALLEL": 2, "PIPELINE_MODEL_PARALLEL": 1, "DGXNGPU": 4, "NNODES": 2, "MASTER_ADDR": "n1"},
     144 * 4),
    # Open MPI's world size; context parallelism from the overrides divides too: DP 6 / 2.
    ({"TENSOR_MODEL_PARALLEL": 1, "PIPELINE_MODEL_PARALLEL": 1, "EXTRA_ARGS": "parallel.cp=2",
      "OMPI_COMM_WORLD_SIZE": 6, "OMPI_COMM_WORLD_RANK": 0}, 144 * 3),
], ids=["srun", "extra-args", "torchrun-2-nodes", "mpirun-cp"])
def test_minibs_is_the_batch_per_data_parallel_replica(tmp_path, env, gbs):
    _, cmd = dryrun(RUN_AND_TIME, base_env(tmp_path, BENCHMARK="gpt3", MINIBS=144, **env))
    assert f"train.global_batch_size={gbs}" in run_overrides(cmd)


def test_minibs_without_model_parallelism_is_the_batch_per_rank(tmp_path):
    _, cmd = dryrun(RUN_AND_TIME, base_env(tmp_path, BENCHMARK="resnet", MINIBS=51, **slurm_ranks(64, 8)))
    assert run_overrides(cmd) == [f"train.global_batch_size={51 * 64}"]


NON_GPT3 = sorted({c.parent.name for c in CONFIGS} - {"gpt3"})


@pytest.mark.parametrize("benchmark", NON_GPT3)
@pytest.mark.parametrize("var", ["TENSOR_MODEL_PARALLEL", "PIPELINE_MODEL_PARALLEL", "INTERLEAVED_PIPELINE",
                                 "MICRO_BATCH_SIZE"])
def test_nvidia_layout_variable_for_another_benchmark_is_refused(tmp_path, benchmark, var):
    error = refused(tmp_path, BENCHMARK=benchmark, DGXNGPU=8, **{var: 2})
    assert f"{var}=2 is NVIDIA's GPT-3 variable, which {benchmark} does not take; unset {var}" in error


@pytest.mark.parametrize("benchmark", sorted({c.parent.name for c in CONFIGS}))
def test_nvidia_variables_map_only_onto_fields_the_benchmark_has(tmp_path, benchmark):
    """run_and_time.sh's table of fields, held to models/<benchmark>/config.py: every override it makes names a
    field of the benchmark's config, and GPT-3 takes all five variables."""
    import importlib

    cfg = importlib.import_module(f"models.{benchmark}.config").FLAVOURS["debug"]()
    taken = 0
    for var in ("TENSOR_MODEL_PARALLEL", "PIPELINE_MODEL_PARALLEL", "INTERLEAVED_PIPELINE", "MICRO_BATCH_SIZE",
                "MINIBS"):
        # The layout as overrides, so that MINIBS can be honoured wherever there is model parallelism.
        env = base_env(tmp_path, BENCHMARK=benchmark, DGXNGPU=1, **{var: 1})
        r = run(["bash", RUN_AND_TIME, "parallel.tp=1", "parallel.pp=1"], {**env, "DRYRUN": "1"})
        if r.returncode == 2:
            continue
        assert r.returncode == 0, r.stderr
        taken += 1
        override = run_overrides(shlex.split(r.stdout.splitlines()[1][len("DRYRUN:"):]))[-3]
        section, field = override.split("=")[0].split(".")
        assert hasattr(getattr(cfg, section, None), field), f"{var} -> {override}: no such field in {benchmark}"
    if benchmark == "gpt3":
        assert taken == 5


@pytest.mark.parametrize("env,message", [
    ({"MICRO_BATCH_SIZE": "two"}, "MICRO_BATCH_SIZE=two: expected a positive integer"),
    ({"TENSOR_MODEL_PARALLEL": 0}, "TENSOR_MODEL_PARALLEL=0: expected a positive integer"),
    ({"MINIBS": 16, "TENSOR_MODEL_PARALLEL": 4, "PIPELINE_MODEL_PARALLEL": 1, "DGXNGPU": 6},
     "MINIBS=16: 6 ranks do not split into TP 4 x PP 1 x CP 1 groups"),
    ({"MINIBS": 16, "TENSOR_MODEL_PARALLEL": 4}, "MINIBS=16 is GBS / DP: set TENSOR_MODEL_PARALLEL and "
                                                 "PIPELINE_MODEL_PARALLEL too"),
    ({"MINIBS": 16, "EXTRA_ARGS": "parallel.tp=2 parallel.pp=two"}, "TP 2, PP two and CP 1 are not all positive"),
    ({"TENSOR_MODEL_PARALLEL": 4, "EXTRA_ARGS": "parallel.tp=2"},
     "TENSOR_MODEL_PARALLEL gives parallel.tp=4 but EXTRA_ARGS or the arguments set parallel.tp=2; keep one"),
    ({"MINIBS": 8, "TENSOR_MODEL_PARALLEL": 1, "PIPELINE_MODEL_PARALLEL": 1,
      "EXTRA_ARGS": "train.global_batch_size=16"},
     "MINIBS gives train.global_batch_size=64 but EXTRA_ARGS or the arguments set train.global_batch_size=16"),
], ids=["not-a-number", "zero", "indivisible-world", "layout-unknown", "layout-not-a-number",
        "disagrees-with-extra-args", "gbs-disagrees"])
def test_nvidia_variable_that_cannot_be_honoured_is_refused(tmp_path, env, message):
    assert message in refused(tmp_path, **{"BENCHMARK": "gpt3", "DGXNGPU": 8, **env})


def test_agreeing_variable_and_override_are_both_kept(tmp_path):
    env = base_env(tmp_path, BENCHMARK="gpt3", DGXNGPU=8, TENSOR_MODEL_PARALLEL=2, EXTRA_ARGS="parallel.tp=2")
    assert run_overrides(dryrun(RUN_AND_TIME, env)[1]) == ["parallel.tp=2", "parallel.tp=2"]


@pytest.mark.parametrize("benchmark", ["gpt3", "resnet"])
def test_spm_is_refused_because_nothing_reads_it(tmp_path, benchmark):
    error = refused(tmp_path, BENCHMARK=benchmark, SPM="/lustre/c4/spm/c4_en_301_5Mexp2_spm.model")
    assert "SPM=" in error and "not used" in error and "unset SPM" in error
    _, cmd = dryrun(RUN_AND_TIME, base_env(tmp_path, BENCHMARK=benchmark, SPM=""))  # empty is unset
    assert run_overrides(cmd) == []


def test_preproc_data_is_the_data_dir_when_datadir_is_unset(tmp_path):
    env = base_env(tmp_path, BENCHMARK="gpt3", PREPROC_DATA="/lustre/c4/preprocessed_c4_spm")
    del env["DATADIR"]
    _, cmd = dryrun(RUN_AND_TIME, env)
    assert entry_args(cmd)[4:6] == ["--data-dir", "/lustre/c4/preprocessed_c4_spm"]
    _, cmd = dryrun(RUN_AND_TIME, {**env, "DATADIR": "/lustre/c4/preprocessed_c4_spm"})  # the same: fine
    assert entry_args(cmd)[4:6] == ["--data-dir", "/lustre/c4/preprocessed_c4_spm"]
    assert "two dataset directories" in refused(tmp_path, BENCHMARK="gpt3", PREPROC_DATA="/lustre/c4")


# ---------------------------------------------------------------------------------------------------
# mpirun.sh: which MPI, which flags
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version,flavour", [
    ("mpirun (Open MPI) 4.1.5\n\nReport bugs to http://www.open-mpi.org/community/help/", "openmpi"),
    ("HYDRA build details:\n    Version: 4.1.2", "mpich"),
])
def test_mpirun_detects_the_mpi_and_builds_its_flags(tmp_path, version, flavour):
    fake = fake_tool(tmp_path / "bin", "mpirun", f"cat <<'EOF'\n{version}\nEOF")
    env = clean_env(MPIRUN=fake, MASTER_ADDR="10.0.0.1")
    mode, cmd = dryrun(MPIRUN_SH, env, "4", "resnet", "--flavour", "debug", "--data-dir", "/d")
    assert mode == f"mpirun.sh: {flavour}"
    assert cmd[0] == str(fake)
    assert cmd[cmd.index("-m"):] == ["-m", "runtime.train", "resnet", "--flavour", "debug", "--data-dir", "/d"]
    if flavour == "openmpi":
        assert cmd[1:3] == ["-np", "4"]
        assert {"--oversubscribe", "--bind-to", "none"} <= set(cmd)
        assert ("--allow-run-as-root" in cmd) == (os.geteuid() == 0)
        # Remote ranks get only what -x forwards.
        assert ["-x", "MASTER_ADDR"] == cmd[cmd.index("MASTER_ADDR") - 1:cmd.index("MASTER_ADDR") + 1]
        assert ["-x", "MASTER_PORT"] == cmd[cmd.index("MASTER_PORT") - 1:cmd.index("MASTER_PORT") + 1]
    else:
        assert cmd[1:3] == ["-n", "4"] and "--allow-run-as-root" not in cmd


@pytest.mark.parametrize("hostfile,expect", [("# cluster\n\nnode007 slots=8\nnode008 slots=8\n", "node007"),
                                             ("gpu-a:8\ngpu-b:8\n", "gpu-a"), (None, "127.0.0.1")])
def test_mpirun_names_rank_zeros_host(tmp_path, hostfile, expect):
    # A fake MPICH whose "ranks" print their environment: what every rank would get.
    fake = fake_tool(tmp_path / "bin", "mpirun", 'if [[ "$1" == --version ]]; then echo "HYDRA build"; else env; fi')
    env = clean_env(MPIRUN=fake)
    if hostfile is not None:
        (tmp_path / "hosts").write_text(hostfile)
        env["HOSTFILE"] = str(tmp_path / "hosts")
    r = run(["bash", MPIRUN_SH, "16", "resnet"], env)
    assert r.returncode == 0, r.stderr
    assert f"MASTER_ADDR={expect}" in r.stdout.splitlines()


def test_mpirun_rejects_an_unknown_mpi_and_bad_usage(tmp_path):
    fake = fake_tool(tmp_path / "bin", "mpirun", "echo 'SomeOtherMPI 1.0'")
    r = run(["bash", MPIRUN_SH, "2", "resnet"], clean_env(MPIRUN=fake))
    assert r.returncode == 2 and "cannot tell which MPI" in r.stderr
    r = run(["bash", MPIRUN_SH, "resnet"], clean_env())
    assert r.returncode == 2 and "usage" in r.stderr


# ---------------------------------------------------------------------------------------------------
# Config files and the .sub wrappers
# ---------------------------------------------------------------------------------------------------

def source_config(config: Path, cwd: Path = REPO, **env) -> dict:
    """What sourcing the config file exports (what sbatch hands to run.sub): the variables it set or changed."""
    base = clean_env(**env)
    dump = f"{shlex.quote(sys.executable)} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    r = run(["bash", "-c", f"source {shlex.quote(str(config))} && {dump}"], base, cwd=cwd)
    assert r.returncode == 0, r.stderr
    exported = json.loads(r.stdout.splitlines()[-1])
    return {k: v for k, v in exported.items()
            if (k in env or base.get(k) != v) and k not in ("PWD", "OLDPWD", "SHLVL", "_")}


def test_there_are_the_three_resnet_configs():
    assert {c.name for c in RESNET_CONFIGS} == {"config_DGXH100_01x08x408.sh", "config_DGXH100_08x08x51.sh",
                                                "config_CPU_01x02x16.sh"}


def test_every_benchmark_with_a_wrapper_has_configs():
    assert {s.stem for s in SUBS} == {c.parent.name for c in CONFIGS}
    assert {"resnet", "bert", "gpt3", "dlrm_dcnv2"} <= {s.stem for s in SUBS}


def _shape(pattern: str, system: str) -> list[int]:
    m = re.fullmatch(r"[A-Z0-9]+_" + pattern, system)
    assert m, f"{system} does not follow the benchmark's name pattern {pattern}"
    return [int(g) if g is not None else 1 for g in m.groups()]


def _batch_per_gpu(system, cfg):
    """resnet, dlrm_dcnv2: <N>x<G>x<localBS>."""
    nodes, gpus, local = _shape(r"(\d+)x(\d+)x(\d+)", system)
    assert nodes * gpus * local == cfg.train.global_batch_size
    return nodes, gpus


def _bert(system, cfg):
    """<N>x<G>x<localBS>x<GA>[_pack] (the CPU config leaves GA out: 1)."""
    nodes, gpus, local, accum = _shape(r"(\d+)x(\d+)x(\d+)(?:x(\d+))?(?:_pack)?", system)
    assert accum == cfg.train.grad_accum
    assert nodes * gpus * local * accum == cfg.train.global_batch_size
    return nodes, gpus


def _gpt3(system, cfg):
    """<N>x<G>x<MINIBS>x<TP>x<PP>_mbs<MBS>[_cg], MINIBS = GBS / DP."""
    nodes, gpus, minibs, tp, pp, mbs = _shape(r"(\d+)x(\d+)x(\d+)x(\d+)x(\d+)_mbs(\d+)(?:_cg)?", system)
    assert (tp, pp, mbs) == (cfg.parallel.tp, cfg.parallel.pp, cfg.train.micro_batch_size)
    dp = nodes * gpus // (tp * pp * cfg.parallel.cp)
    assert minibs * dp == cfg.train.global_batch_size
    return nodes, gpus


def _llama2(system, cfg):
    """<N>x<G>x<MINIBS>xtp<TP>pp<PP>cp<CP>, MINIBS = GBS / DP."""
    nodes, gpus, minibs, tp, pp, cp = _shape(r"(\d+)x(\d+)x(\d+)xtp(\d+)pp(\d+)cp(\d+)", system)
    assert (tp, pp, cp) == (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.cp)
    assert minibs * (nodes * gpus // (tp * pp * cp)) == cfg.train.global_batch_size
    return nodes, gpus


# How each benchmark's config names spell its shape (shared/spec/launcher_conventions.md, section 2).
NAME_RULES = {"resnet": _batch_per_gpu, "dlrm_dcnv2": _batch_per_gpu, "bert": _bert, "gpt3": _gpt3,
              "unet3d": _batch_per_gpu, "ssd": _batch_per_gpu, "gnn": _batch_per_gpu, "llama2_70b_lora": _llama2,
              "stable_diffusion": _batch_per_gpu}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.parent.name}-{c.stem}")
def test_config_shape_matches_its_name_and_its_flavour(config):
    import importlib

    from runtime.config import apply_overrides

    benchmark = config.parent.name
    assert benchmark in NAME_RULES, f"add the config name rule of {benchmark} to NAME_RULES"
    values = source_config(config)
    system = config.stem.removeprefix("config_")
    assert values["DGXSYSTEM"] == system
    assert values["BENCHMARK"] == benchmark
    # The name's shape is a promise about the layout and batch of the flavour, as the overrides leave it.
    flavours = importlib.import_module(f"models.{benchmark}.config").FLAVOURS
    cfg = apply_overrides(flavours[values["FLAVOUR"]](), values.get("EXTRA_ARGS", "").split())
    nodes, gpus = NAME_RULES[benchmark](system, cfg)
    assert (int(values["DGXNNODES"]), int(values["DGXNGPU"])) == (nodes, gpus)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.parent.name}-{c.stem}")
def test_config_walltime_scales_with_nexp_and_respects_overrides(config):
    # NEXP is exported with the value WALLTIME was computed for, so run.sub runs as many runs as the
    # allocation has time for (GPT-3's configs default to NVIDIA's 3, the others to 1).
    one = source_config(config)
    nexp, per_run = int(one["NEXP"]), int(one["WALLTIME_RUNANDTIME"])
    assert nexp == ({"gpt3": 3, "unet3d": 40}.get(config.parent.name, 1) if "_CPU_" not in config.name else 1)
    margin = int(one["WALLTIME"]) - nexp * per_run
    assert margin > 0 and margin == int(one["WALLTIME_MARGIN"])
    five = source_config(config, NEXP=5)
    assert five["NEXP"] == "5" and int(five["WALLTIME"]) == 5 * per_run + margin
    assert int(source_config(config, WALLTIME_RUNANDTIME=7)["WALLTIME"]) == nexp * 7 + margin
    assert int(source_config(config, WALLTIME_MARGIN=1)["WALLTIME"]) == nexp * per_run + 1
    for var, value in (("DGXNNODES", "3"), ("FLAVOUR", "custom"), ("DGXNGPU", "4"), ("DGXSOCKETCORES", "3"),
                       ("ENABLE_IB_BINDING", "0"), ("EXTRA_ARGS", "run.max_steps=1")):
        assert source_config(config, **{var: value})[var] == value, var


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.parent.name}-{c.stem}")
def test_config_file_keeps_only_its_own_lines(config):
    """The system block and the derivations live in launchers/systems/ and launchers/config_common.sh, sourced by
    the config file's last line; the config file sets no variable of theirs."""
    code = [line for line in config.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert code[-1] == 'source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"'
    shared = {"DGXSYSTEM", "WALLTIME", "DGXNGPU", "DGXSOCKETCORES", "DGXNSOCKET", "DGXHT", "NCCL_TEST"}
    assigned = {m[1] for line in code[:-1] if (m := re.match(r"(?:export )?(\w+)=", line))}
    assert not assigned & shared, assigned & shared
    assert all(re.fullmatch(r"export (\w+)=\$\{\1:-[^}]*\}( +#.*)?", line) for line in code[:-1]), \
        "every value is an overridable default: export VAR=${VAR:-default}"


@pytest.mark.parametrize("system", sorted((LAUNCHERS / "systems").glob("*.sh")), ids=lambda s: s.stem)
def test_every_system_block_sets_the_same_overridable_defaults(system):
    values = source_config(system)
    assert set(values) >= {"DGXNGPU", "DGXSOCKETCORES", "DGXNSOCKET", "DGXHT", "ENABLE_IB_BINDING", "WALLTIME_MARGIN"}
    assert all(v.isdigit() for v in values.values()), values
    assert source_config(system, DGXNGPU=4, WALLTIME_MARGIN=2) == {**values, "DGXNGPU": "4", "WALLTIME_MARGIN": "2"}
    # Some config file runs on it (no block is dead).
    assert any(c.stem.removeprefix("config_").split("_")[0] == system.stem for c in CONFIGS)


def test_config_is_sourced_alone_from_any_cwd(tmp_path):
    config = LAUNCHERS / "gpt3" / "config_DGXH100_64x8x144x4x8_mbs2.sh"
    expect = {"DGXSYSTEM": "DGXH100_64x8x144x4x8_mbs2", "DGXNGPU": "8", "WALLTIME": str(3 * 90 + 15)}
    for cwd, path in ((tmp_path, config), (config.parent, Path(config.name)), (LAUNCHERS, Path("gpt3") / config.name)):
        values = source_config(path, cwd=cwd)
        assert {k: values[k] for k in expect} == expect, (cwd, path)


def test_dgxsystem_and_the_system_block_come_from_the_config_files_own_name(tmp_path):
    # A config copied under a new name (NVIDIA's way to make a variant) into a copy of launchers/.
    copy = tmp_path / "launchers"
    shutil.copytree(LAUNCHERS / "systems", copy / "systems")
    shutil.copy(LAUNCHERS / "config_common.sh", copy)
    (copy / "dlrm_dcnv2").mkdir()
    source = (LAUNCHERS / "dlrm_dcnv2" / "config_DGXH100_01x08x6912.sh").read_text()
    (copy / "dlrm_dcnv2" / "config_DGXH200_02x08x3456.sh").write_text(source)
    values = source_config(copy / "dlrm_dcnv2" / "config_DGXH200_02x08x3456.sh", DGXNNODES=2)
    assert values["DGXSYSTEM"] == "DGXH200_02x08x3456" and values["DGXNGPU"] == "8"
    # A system without a block under launchers/systems/ stops the sourcing shell with one clear line.
    (copy / "dlrm_dcnv2" / "config_L40S_01x04x6912.sh").write_text(source)
    r = run(["bash", "-c", f"source {copy}/dlrm_dcnv2/config_L40S_01x04x6912.sh || echo refused $?"], clean_env())
    assert r.stdout.strip() == "refused 1" and "no system block" in r.stderr and "systems/L40S.sh" in r.stderr, r


# ---------------------------------------------------------------------------------------------------
# The <benchmark>.sub wrappers
# ---------------------------------------------------------------------------------------------------

def spool_copy_of(sub: Path, tmp_path: Path) -> Path:
    """sbatch runs a copy of the script from slurmd's spool directory: emulate that by running a copy."""
    copy = tmp_path / "spool" / "slurm_script"
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(sub, copy)
    return copy


def test_resnet_sub_finds_the_repository_from_the_submit_dir(tmp_path):
    # sbatch runs a copy of the script from the spool directory: emulate that by running a copy.
    spool_copy = tmp_path / "spool" / "slurm_script"
    spool_copy.parent.mkdir()
    shutil.copy(RESNET_SUB, spool_copy)
    for submit_dir in (REPO, LAUNCHERS):
        r = run(["bash", spool_copy], clean_env(SLURM_SUBMIT_DIR=submit_dir), cwd=tmp_path)
        # It reached run.sub (whose first guard wants an allocation), so it found the repository.
        assert r.returncode != 0 and "runs inside an allocation" in r.stderr, r.stderr
    r = run(["bash", spool_copy], clean_env(SLURM_SUBMIT_DIR=tmp_path), cwd=tmp_path)
    assert r.returncode != 0 and "cannot find the repository" in r.stderr, r.stderr


@pytest.mark.parametrize("sub", SUBS, ids=lambda s: s.stem)
def test_every_sub_finds_run_sub_the_same_way(sub, tmp_path):
    spool_copy = spool_copy_of(sub, tmp_path)
    # SLURM_JOB_ID: run.sub gets past its allocation guard to the config guard, which names the benchmark:
    # so the wrapper found run.sub and exported its BENCHMARK.
    reached = f"source launchers/{sub.stem}/config_<SYSTEM>_<shape>.sh before sbatch"
    for where in ({"SLURM_SUBMIT_DIR": REPO}, {"SLURM_SUBMIT_DIR": LAUNCHERS}, {"MLPERF_REPO": REPO},
                  {"MLPERF_REPO": REPO, "SLURM_SUBMIT_DIR": tmp_path}):
        r = run(["bash", spool_copy], clean_env(SLURM_JOB_ID=1, **where), cwd=tmp_path)
        assert r.returncode != 0 and reached in r.stderr, (where, r.stderr)
        assert "launchers/.." not in r.stderr  # run.sub got the checkout's own path
    # Submitted from the checkout without SLURM_SUBMIT_DIR (salloc, or bash by hand): the cwd.
    r = run(["bash", spool_copy], clean_env(SLURM_JOB_ID=1), cwd=LAUNCHERS)
    assert reached in r.stderr, r.stderr
    # Nowhere near a checkout: one line that says what is missing, before run.sub.
    for where in ({"SLURM_SUBMIT_DIR": tmp_path}, {"MLPERF_REPO": tmp_path / "nope", "SLURM_SUBMIT_DIR": REPO}):
        r = run(["bash", spool_copy], clean_env(SLURM_JOB_ID=1, **where), cwd=tmp_path)
        assert r.returncode == 1 and r.stderr.splitlines() == [
            f"{sub.stem}.sub: cannot find the repository in {next(iter(where.values()))} or its parent; "
            "set MLPERF_REPO"], r.stderr


@pytest.mark.parametrize("sub", SUBS, ids=lambda s: s.stem)
def test_every_sub_is_the_shared_wrapper_with_its_own_header(sub):
    """Only the #SBATCH header, the usage comment and BENCHMARK differ between the wrappers."""
    lines = sub.read_text().splitlines()
    code = [line for line in lines if line.strip() and not line.startswith("#")]
    reference = [line for line in RESNET_SUB.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert code == [line.replace("BENCHMARK=resnet", f"BENCHMARK={sub.stem}") for line in reference]
    assert f"#SBATCH --job-name=mlperf-{sub.stem}" in lines
    assert any(f"launchers/{sub.stem}/config_" in line and line.startswith("#") for line in lines)
    assert any(f"sbatch -N $DGXNNODES -t $WALLTIME launchers/{sub.stem}.sub" in line for line in lines)
    assert len(code) <= 5, code  # set, BENCHMARK, and three lines that find and run run.sub


def test_run_sub_needs_a_config(tmp_path):
    env = clean_env(SLURM_JOB_ID=1, MLPERF_REPO=REPO, BENCHMARK="resnet")
    r = run(["bash", LAUNCHERS / "run.sub"], env)
    assert r.returncode != 0 and "source launchers/resnet/config_" in r.stderr


def fake_slurm(tmp_path: Path, *keep: str) -> tuple[Path, Path]:
    """No pyxis here: a fake srun records each step (arguments and the variables `keep` of the environment the
    tasks would get) in a JSON-lines file; a fake scontrol expands any node list to node001, node002."""
    tools, steps_file = tmp_path / "bin", tmp_path / "steps.jsonl"
    fake_tool(tools, "srun", f"""python3 - "$@" <<'EOF'
import json, os, sys
with open("{steps_file}", "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in {keep!r}}}}}) + "\\n")
EOF""")
    fake_tool(tools, "scontrol", 'printf "node001\\nnode002\\n"')
    return tools, steps_file


def test_run_sub_with_cont_runs_every_step_in_one_pyxis_container_per_node(tmp_path):
    tools, steps_file = fake_slurm(tmp_path, "DATADIR", "LOGDIR", "RUNDIR", "SEED", "MASTER_ADDR", "MASTER_PORT",
                                   "BENCHMARK", "FLAVOUR", "DGXSYSTEM", "LOAD_CHECKPOINTS_PATH", "MLPERF_CACHE_CLEARED")
    env = clean_env(SLURM_JOB_ID=4711, SLURM_JOB_NUM_NODES=2, SLURM_JOB_NODELIST="node[001-002]",
                    SLURM_CLUSTER_NAME="eos", MLPERF_REPO=REPO, BENCHMARK="resnet", CONT="nvcr.io#mlperf/stack:1",
                    DATADIR=tmp_path / "imagenet", LOGDIR=tmp_path / "results", NEXP=2, SEED_BASE=10,
                    DATESTAMP="stamp", CHECK_COMPLIANCE=0, EXTRA_MOUNTS="/lustre/ckpt:/ckpt",
                    LOAD_CHECKPOINTS_PATH="/lustre/init/ckpt4000")
    (tmp_path / "imagenet").mkdir()
    # The 8-node config cut to the 2 nodes of the fake allocation.
    env.update(source_config(LAUNCHERS / "resnet" / "config_DGXH100_08x08x51.sh", DGXNNODES=2, NEXP=2))
    env["PATH"] = f"{tools}:{env['PATH']}"
    r = run(["bash", LAUNCHERS / "run.sub"], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    steps = [json.loads(line) for line in steps_file.read_text().splitlines()]
    argvs = [s["argv"] for s in steps]
    name = "--container-name=mlperf_resnet_4711"

    # Stale containers removed first and again on exit; the image unpacked once per node, by name.
    assert "enroot remove" in argvs[0][-1] and "enroot remove" in argvs[-1][-1]
    assert argvs[1] == ["--ntasks=2", "--ntasks-per-node=1", "--container-image=nvcr.io#mlperf/stack:1", name, "true"]
    training = [s for s in steps if s["argv"][-1] == "/workspace/mlperf/launchers/run_and_time.sh"]
    assert len(training) == 2
    for i, step in enumerate(training, start=1):
        argv = step["argv"]
        mounts = (f"--container-mounts={tmp_path}/imagenet:/data,{tmp_path}/results:/results,/lustre/ckpt:/ckpt,"
                  "/lustre/init/ckpt4000:/load_checkpoints:ro")
        for flag in (name, mounts,
                     "--container-workdir=/workspace/mlperf", "--container-env=MASTER_PORT,MASTER_ADDR",
                     "--no-container-mount-home", "-l", "--kill-on-bad-exit=1", "--ntasks=16", "--ntasks-per-node=8"):
            assert flag in argv, (flag, argv)
        # Paths as the container sees them; a fresh seed per run; rank 0's host serves the rendezvous.
        assert step["env"] == {"DATADIR": "/data", "LOGDIR": "/results", "RUNDIR": f"/results/stamp_{i}",
                               "SEED": str(9 + i), "MASTER_ADDR": "node001", "MASTER_PORT": "29500",
                               "BENCHMARK": "resnet", "FLAVOUR": "dgxh100_8x8", "DGXSYSTEM": "DGXH100_08x08x51",
                               "LOAD_CHECKPOINTS_PATH": "/load_checkpoints", "MLPERF_CACHE_CLEARED": "1"}
    # The cache drop runs on the host (no container), once per node, on the host's dataset path, before each run.
    drops = [i for i, a in enumerate(argvs) if any("dropcache.py" in x for x in a)]
    assert len(drops) == 2 and all(not any(x.startswith("--container") for x in argvs[i]) for i in drops)
    assert argvs[drops[0]][:2] == ["--ntasks=2", "--ntasks-per-node=1"]
    assert argvs[drops[0]][-1] == f"{tmp_path}/imagenet"
    assert drops[0] < argvs.index(training[0]["argv"]) and drops[1] < argvs.index(training[1]["argv"], drops[0] + 2)
    log = (tmp_path / "results" / "stamp_1.log").read_text()
    assert ":::DLPAL nvcr.io#mlperf/stack:1 4711 2 node[001-002] eos DGXH100_08x08x51" in log

    # Without the drop, the run is told so: its log's cache_clear says false.
    steps_file.unlink()
    r = run(["bash", LAUNCHERS / "run.sub"], {**env, "CLEAR_CACHES": "0", "NEXP": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    steps = [json.loads(line) for line in steps_file.read_text().splitlines()]
    assert not any("dropcache.py" in x for s in steps for x in s["argv"])
    training = [s for s in steps if s["argv"][-1] == "/workspace/mlperf/launchers/run_and_time.sh"]
    assert [s["env"]["MLPERF_CACHE_CLEARED"] for s in training] == ["0"]


def test_run_sub_takes_nvidias_preproc_data_and_refuses_spm(tmp_path):
    """NVIDIA's GPT-3 names the dataset PREPROC_DATA: mounted at /data as DATADIR would be, and not passed on (the
    host path means nothing in the container). SPM is refused before any container exists."""
    tools, steps_file = fake_slurm(tmp_path, "DATADIR", "PREPROC_DATA")
    (tmp_path / "c4").mkdir()
    env = clean_env(SLURM_JOB_ID=4712, SLURM_JOB_NUM_NODES=2, SLURM_JOB_NODELIST="node[001-002]", MLPERF_REPO=REPO,
                    BENCHMARK="gpt3", CONT="nvcr.io#mlperf/stack:1", PREPROC_DATA=tmp_path / "c4",
                    LOGDIR=tmp_path / "results", DATESTAMP="stamp", CHECK_COMPLIANCE=0)
    env.update(source_config(LAUNCHERS / "gpt3" / "config_DGXH100_32x8x192x4x8_mbs2.sh", DGXNNODES=2, NEXP=1))
    env["PATH"] = f"{tools}:{env['PATH']}"
    r = run(["bash", LAUNCHERS / "run.sub"], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    steps = [json.loads(line) for line in steps_file.read_text().splitlines()]
    training = [s for s in steps if s["argv"][-1] == "/workspace/mlperf/launchers/run_and_time.sh"]
    assert len(training) == 1 and training[0]["env"] == {"DATADIR": "/data", "PREPROC_DATA": None}
    assert any(a.startswith(f"--container-mounts={tmp_path}/c4:/data,") for a in training[0]["argv"])

    steps_file.unlink()
    r = run(["bash", LAUNCHERS / "run.sub"], {**env, "SPM": "/lustre/spm.model"})
    assert r.returncode == 2 and "run.sub: SPM=/lustre/spm.model is not used" in r.stderr
    assert not steps_file.exists()
    r = run(["bash", LAUNCHERS / "run.sub"], {**env, "DATADIR": tmp_path / "other"})
    assert r.returncode == 2 and "run.sub: DATADIR and PREPROC_DATA differ" in r.stderr


def test_run_sub_requeued_job_continues_where_it_was(tmp_path):
    """A job Slurm requeued (same job id, SLURM_RESTART_COUNT > 0) runs run.sub again: it keeps the DATESTAMP,
    skips the runs that finished (counted as they ended), resumes the interrupted run with its seed and checkpoint
    directory under a log of its own per attempt, and starts the runs that never began afresh."""
    tools, steps_file = fake_slurm(tmp_path, "RUNDIR", "SEED", "CHECKPOINT_DIR", "CHECKPOINT_EVERY_BLOCKS")
    # The "ranks": run 1 ends without reaching its target (3); run 2, while FAKE_PREEMPT is set, is ended as Slurm
    # ends a job: SIGTERM to every process of it (here its process group), after which the ranks, which Slurm
    # started and not srun, save and exit 143.
    srun = tools / "srun"
    srun.write_text(srun.read_text() + """
if [[ "${@: -1}" == */run_and_time.sh ]]; then
    echo "ranks of $RUNDIR, seed $SEED"
    case "$RUNDIR" in
        *_1) exit 3 ;;
        *_2) if [[ -n "${FAKE_PREEMPT:-}" ]]; then
                 kill -TERM 0
                 sleep 1
                 echo "ranks: SIGTERM, checkpoint saved"
                 exit 143
             fi ;;
    esac
fi
""")
    logdir = tmp_path / "results"
    (tmp_path / "imagenet").mkdir()
    env = clean_env(SLURM_JOB_ID=4713, SLURM_JOB_NUM_NODES=1, SLURM_JOB_NODELIST="node001", MLPERF_REPO=REPO,
                    BENCHMARK="resnet", CONT="nvcr.io#mlperf/stack:1", DATADIR=tmp_path / "imagenet", LOGDIR=logdir,
                    CLEAR_CACHES=0, NCCL_TEST=0, CHECKPOINT_EVERY_BLOCKS=2)
    env.update(source_config(LAUNCHERS / "resnet" / "config_DGXH100_01x08x408.sh", NEXP=3))
    env["PATH"] = f"{tools}:{env['PATH']}"

    def start(**extra) -> tuple[subprocess.CompletedProcess, list[dict]]:
        steps_file.unlink(missing_ok=True)
        r = run(["bash", LAUNCHERS / "run.sub"], {**env, **{k: str(v) for k, v in extra.items()}},
                start_new_session=True)  # its own process group: the fake SIGTERM reaches nothing else
        steps = [json.loads(line) for line in steps_file.read_text().splitlines()]
        return r, steps

    def training(steps):
        return {s["env"]["RUNDIR"].rsplit("_", 1)[1]: s["env"] for s in steps
                if s["argv"][-1].endswith("/run_and_time.sh")}

    def checked(steps):
        return [s["argv"][-1] for s in steps if "mlperf_logging.compliance_checker" in s["argv"]]

    # First start: run 1 ends (3), run 2 is preempted; run.sub waits for its ranks, then stops with 143.
    first, steps = start(FAKE_PREEMPT=1)
    assert first.returncode == 143, first.stdout[-3000:] + first.stderr[-3000:]
    state = logdir / "job_4713_state"
    base = (state / "datestamp").read_text().strip()
    runs = training(steps)
    assert sorted(runs) == ["1", "2"]
    seed2 = runs["2"]["SEED"]
    assert runs["2"]["CHECKPOINT_DIR"] == f"/results/{base}_2_checkpoint"
    assert runs["2"]["CHECKPOINT_EVERY_BLOCKS"] == "2"
    assert checked(steps) == [f"/results/{base}_1.log"]  # the interrupted run is not checked
    stopped = f"run.sub: run 2 stopped on SIGTERM (exit 143; log {logdir}/{base}_2.log)"
    assert stopped in first.stderr, first.stderr[-3000:]
    first_log = (logdir / f"{base}_2.log").read_text()
    assert "ranks: SIGTERM, checkpoint saved" in first_log  # the log kept the ranks' output until they exited
    assert sorted(p.name for p in logdir.glob("*.log")) == [f"{base}_1.log", f"{base}_2.log"]
    # What the ranks would have left: run 2's checkpoint, and a stale one of another job for run 3.
    for i in (2, 3):
        (logdir / f"{base}_{i}_checkpoint").mkdir()
        (logdir / f"{base}_{i}_checkpoint" / "latest.pt").write_text("x")

    # The requeued job: same job id, restart count 1, a DATESTAMP that would be drawn anew.
    second, steps = start(SLURM_RESTART_COUNT=1)
    out = second.stdout + second.stderr
    assert f"run 1 finished before this job was requeued (exit 3, {base}_1.log); not rerun" in second.stdout, out
    runs = training(steps)
    assert sorted(runs) == ["2", "3"]
    assert runs["2"]["SEED"] == seed2 and runs["2"]["RUNDIR"] == f"/results/{base}_2"
    assert runs["2"]["CHECKPOINT_DIR"] == f"/results/{base}_2_checkpoint"
    assert runs["3"]["RUNDIR"] == f"/results/{base}_3"
    assert (logdir / f"{base}_2_checkpoint" / "latest.pt").exists()  # resumed from
    assert not (logdir / f"{base}_3_checkpoint").exists()  # never this job's: removed before run 3 began
    assert checked(steps) == [f"/results/{base}_2_attempt2.log", f"/results/{base}_3.log"]
    assert (logdir / f"{base}_2.log").read_text() == first_log  # the first attempt's log as it was
    attempt2 = (logdir / f"{base}_2_attempt2.log").read_text()
    assert f"Beginning trial 2 of 3 (seed {seed2}), attempt 2" in attempt2 and f"seed {seed2}" in attempt2
    assert sorted(p.name for p in logdir.glob("*.log")) == [f"{base}_1.log", f"{base}_2.log",
                                                            f"{base}_2_attempt2.log", f"{base}_3.log"]
    # Run 1's exit 3 still counts: the job fails as it would have without the requeue.
    assert second.returncode == 1 and "run.sub: 3 run(s), 1 failed, 0 failed the compliance check" in second.stdout

    # A first start under a job id met before (a reset cluster) is a new job; SAVE_CHECKPOINTS=0: no checkpoints.
    third, steps = start(SLURM_RESTART_COUNT=0, NEXP=1, DATESTAMP="fresh", SAVE_CHECKPOINTS=0)
    assert "run.sub: 1 run(s), 1 failed, 0 failed the compliance check" in third.stdout, third.stderr[-3000:]
    assert (state / "datestamp").read_text().strip() == "fresh" and sorted(p.name for p in state.iterdir()) == [
        "datestamp", "run_1.attempt", "run_1.check", "run_1.done", "run_1.seed"]
    assert training(steps)["1"]["RUNDIR"] == "/results/fresh_1" and training(steps)["1"]["CHECKPOINT_DIR"] == ""


# ---------------------------------------------------------------------------------------------------
# dropcache.py
# ---------------------------------------------------------------------------------------------------

def _resident_bytes(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def test_dropcache_fadvise_evicts_the_dataset_pages(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    files = [data / "train" / f"shard-{i}" for i in range(3)] + [data / "index"]
    for f in files:
        f.write_bytes(os.urandom(1 << 20))
    r = run([sys.executable, LAUNCHERS / "dropcache.py", "--method", "fadvise", data], clean_env())
    assert r.returncode == 0, r.stderr
    assert re.search(r"fadvise: POSIX_FADV_DONTNEED on 4 files \(4\.0 MiB\)", r.stdout), r.stdout

    fs_type = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout
    if shutil.which("fincore") and "tmpfs" not in fs_type:  # tmpfs pages are the file: they cannot be dropped
        for f in files:
            f.read_bytes()
        assert sum(map(_resident_bytes, files)) > 0
        run([sys.executable, LAUNCHERS / "dropcache.py", "--method", "fadvise", data], clean_env())
        assert sum(map(_resident_bytes, files)) == 0


def test_dropcache_missing_datadir_fails(tmp_path):
    r = run([sys.executable, LAUNCHERS / "dropcache.py", "--method", "fadvise", tmp_path / "nope"], clean_env())
    assert r.returncode == 1 and "no such path" in r.stderr


# ---------------------------------------------------------------------------------------------------
# End to end: the resnet debug flavour through every launch path
# ---------------------------------------------------------------------------------------------------

def result_lines(output: str) -> list[list[str]]:
    """RESULT,<benchmark>,<seed>,<seconds>,<status>,<start> lines, with any `srun -l` prefix removed."""
    return [line.split("RESULT,", 1)[1].split(",") for line in output.splitlines() if "RESULT,resnet," in line]


def assert_compliant(log: Path) -> None:
    assert log.is_file(), f"no MLPerf log at {log}"
    passed, out = compliance(log)
    assert passed, f"compliance checker on {log}:\n{out}"


def mllog_events(log: Path) -> list[dict]:
    return [json.loads(line.split(":::MLLOG ", 1)[1]) for line in log.read_text().splitlines() if ":::MLLOG " in line]


def assert_one_successful_run(output: str, logdir: Path, launcher: str) -> Path:
    """One RESULT line with status success, one mlperf_log.txt (rank 0's) that passes the checker, and the
    entry point saw the launcher and the 2-rank world we meant to start."""
    results = result_lines(output)
    assert len(results) == 1, f"expected one RESULT line from rank 0, got {results}\n{output[-3000:]}"
    assert results[0][0] == "resnet" and results[0][3] == "success", results[0]
    logs = list(logdir.rglob("mlperf_log.txt"))
    assert len(logs) == 1, logs
    assert_compliant(logs[0])
    run_config = json.loads((logs[0].parent / "run_config.json").read_text())
    assert run_config["launcher"] == launcher
    assert run_config["layout"].startswith("world=2 "), run_config["layout"]
    seeds = [e["value"] for e in mllog_events(logs[0]) if e["key"] == "seed"]
    assert seeds == [int(results[0][1])]
    return logs[0]


@pytest.mark.slow
def test_torchrun_two_processes(resnet_debug_data, tmp_path):
    env = base_env(tmp_path, DATADIR=resnet_debug_data, DGXNGPU=2, RUNDIR=tmp_path / "logs" / "run")
    r = run(["bash", RUN_AND_TIME], env, timeout=1800)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "STARTING TIMING RUN AT" in out and "ENDING TIMING RUN AT" in out
    assert_one_successful_run(out, tmp_path / "logs", launcher="torchrun")


@pytest.mark.slow
def test_torchrun_two_nodes_one_process_each(resnet_debug_data, tmp_path):
    # Two torchrun agents on one machine, as on two nodes: c10d rendezvous at MASTER_ADDR:MASTER_PORT,
    # hosted by node rank 0.
    port = free_port()
    procs = []
    for node_rank in (0, 1):
        env = base_env(tmp_path, DATADIR=resnet_debug_data, DGXNGPU=1, NNODES=2, NODE_RANK=node_rank,
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RDZV_ID=f"test{port}",
                       RUNDIR=tmp_path / "logs" / "run")
        procs.append(subprocess.Popen(["bash", str(RUN_AND_TIME)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=1800)[0])
    finally:
        for p in procs:
            p.kill()
    for node_rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"node {node_rank}:\n{out[-4000:]}"
    assert all("--rdzv_backend=c10d" in out for out in outputs)
    assert_one_successful_run("\n".join(outputs), tmp_path / "logs", launcher="torchrun")


def open_mpi_mpirun() -> str | None:
    """An Open MPI mpirun on this machine (Debian: openmpi-bin), whatever `mpirun` on PATH is."""
    for candidate in (shutil.which("mpirun.openmpi"), "/usr/bin/mpirun", shutil.which("mpirun")):
        if candidate and os.path.exists(candidate):
            version = subprocess.run([candidate, "--version"], capture_output=True, text=True).stdout
            if "Open MPI" in version:
                return candidate
    return None


@pytest.mark.slow
@pytest.mark.parametrize("mpi", ["path", "openmpi"])
def test_mpirun_two_ranks(resnet_debug_data, tmp_path, mpi):
    # "path": the mpirun found on PATH (MPICH's from the venv here); "openmpi": Open MPI where installed.
    env = clean_env(MASTER_PORT=free_port())
    if mpi == "openmpi":
        env["MPIRUN"] = open_mpi_mpirun() or pytest.skip("no Open MPI here (apt-get install openmpi-bin)")
    run_dir = tmp_path / "logs" / "run"
    r = run(["bash", MPIRUN_SH, "2", "resnet", "--flavour", "debug", "--data-dir", resnet_debug_data,
             "--run-dir", run_dir], env, timeout=1800)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    flavour = re.search(r"mpirun\.sh: (\w+), 2 ranks", out).group(1)
    if mpi == "openmpi":
        assert flavour == "openmpi"
    assert_one_successful_run(out, tmp_path / "logs", launcher=flavour)


# ---------------------------------------------------------------------------------------------------
# End to end under Slurm: sbatch launchers/resnet.sub with the CPU config
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_slurm():
    """The local Slurm of tests/infra/start_slurm.sh. Skipped where it cannot start (no root, no apt),
    except in CI, where the sbatch path must be tested."""
    r = subprocess.run(["bash", str(REPO / "tests/infra/start_slurm.sh")], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        reason = f"the local Slurm did not start (tests/infra/start_slurm.sh):\n{(r.stdout + r.stderr)[-2000:]}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)


def job_field(job_id: str, field: str) -> str | None:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    m = re.search(rf"\b{field}=(\S+)", out)
    return m.group(1) if m else None


def wait_for_job(job_id: str, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
        if not queued.stdout.strip():
            return
        time.sleep(3)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} still {job_field(job_id, 'JobState')} after {timeout_s:.0f} s; cancelled")


def sbatch_config(config: Path, env: dict, out_dir: Path, *sbatch_args: str) -> str:
    """`source <config> && sbatch ... launchers/<benchmark>.sub`, as a user submits it; returns the job id. The job's
    output goes to out_dir/slurm-<job>.out."""
    submit = (f"source {shlex.quote(str(config))} && sbatch --parsable {' '.join(sbatch_args)} "
              f"-o {shlex.quote(str(out_dir))}/slurm-%j.out -N $DGXNNODES -t $WALLTIME "
              f"launchers/{config.parent.name}.sub")
    r = run(["bash", "-c", submit], env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def job_output(out_dir: Path) -> str:
    return "".join(p.read_text() for p in out_dir.glob("slurm-*.out"))


def run_job(config: Path, env: dict, out_dir: Path) -> tuple[str, str]:
    """Submit, wait for the job's end (its own time limit: NEXP runs of WALLTIME_RUNANDTIME minutes, plus a little)
    and check that it COMPLETED; returns (job id, its output)."""
    job_id = sbatch_config(config, env, out_dir)
    wait_for_job(job_id, timeout_s=(int(env["NEXP"]) * int(env["WALLTIME_RUNANDTIME"]) + 5 + 2) * 60)
    output = job_output(out_dir)
    assert job_field(job_id, "JobState") == "COMPLETED", output[-4000:]
    return job_id, output


@pytest.mark.slow
@pytest.mark.slurm
def test_sbatch_resnet_sub_cpu_config(local_slurm, resnet_debug_data, tmp_path):
    logdir = tmp_path / "results"
    datestamp = "testrun"
    config = LAUNCHERS / "resnet" / "config_CPU_01x02x16.sh"
    # What a user types, with two runs so the loop and the per-run seeds are exercised. fadvise: evict the
    # dataset only; dropping the whole page cache would slow everyone else on a shared test machine.
    # WALLTIME_RUNANDTIME: a shared 2-core machine can be many times slower than the config's estimate.
    env = clean_env(DATADIR=resnet_debug_data, LOGDIR=logdir, NEXP=2, SEED_BASE=4242, DATESTAMP=datestamp,
                    MASTER_PORT=free_port(), DROPCACHE_METHOD="fadvise", WALLTIME_RUNANDTIME=15)
    job_id, output = run_job(config, env, tmp_path)
    assert job_field(job_id, "ExitCode") == "0:0"
    assert "run.sub: 2 run(s), 0 failed, 0 failed the compliance check" in output
    for i, seed in ((1, 4242), (2, 4243)):
        log = logdir / f"{datestamp}_{i}.log"
        assert_compliant(log)
        text = log.read_text()
        assert re.search(rf"^:::DLPAL host {job_id} 1 \S+ mlperf-local CPU_01x02x16$", text, re.M), text[:2000]
        assert json.loads(re.search(r"^:::SYSJSON (.*)$", text, re.M).group(1))["accelerators_per_node"] == 2
        assert "dropcache" in text and "fadvise: POSIX_FADV_DONTNEED" in text
        # srun -l: one task per "GPU", each running python directly (not torchrun).
        for rank in (0, 1):
            assert re.search(rf"^{rank}: STARTING TIMING RUN AT .*\(direct, rank {rank}\)", text, re.M)
        results = result_lines(text)
        assert len(results) == 1 and results[0][1] == str(seed) and results[0][3] == "success", results
        events = mllog_events(log)
        assert [e["value"] for e in events if e["key"] == "seed"] == [seed]
        assert [e["value"] for e in events if e["key"] == "submission_platform"] == ["CPU_01x02x16"]
        # run.sub kept the checker's own report next to the log.
        assert "SUCCESS" in (logdir / f"{datestamp}_{i}_compliance.txt").read_text()
        # The entry point's own copy of the log, in the run directory, and what it saw of the launch.
        run_dir = logdir / f"{datestamp}_{i}"
        assert_compliant(run_dir / "mlperf_log.txt")
        run_config = json.loads((run_dir / "run_config.json").read_text())
        assert run_config["launcher"] == "slurm" and run_config["layout"].startswith("world=2 ")


@pytest.mark.slow
@pytest.mark.slurm
def test_sbatch_gpt3_sub_cpu_config(local_slurm, gpt3_debug_data, tmp_path):
    """`sbatch launchers/gpt3.sub` as a user submits it, TP=2 over the node's two tasks, starting from the
    reference-layout checkpoint handed over as LOAD_CHECKPOINTS_PATH."""
    logdir = tmp_path / "results"
    config = LAUNCHERS / "gpt3" / "config_CPU_01x02x16x2x1_mbs4.sh"
    env = clean_env(DATADIR=gpt3_debug_data, LOAD_CHECKPOINTS_PATH=gpt3_debug_data / "init_checkpoint", LOGDIR=logdir,
                    NEXP=1, SEED_BASE=11, DATESTAMP="gpt3run", MASTER_PORT=free_port(), DROPCACHE_METHOD="fadvise",
                    CHECK_COMPLIANCE=0, WALLTIME_RUNANDTIME=20)
    run_job(config, env, tmp_path)
    log = logdir / "gpt3run_1.log"
    text = log.read_text()
    assert f"loaded the initial checkpoint {gpt3_debug_data}/init_checkpoint" in text, text[-3000:]
    assert re.search(r"^(\S+: )?RESULT,gpt3,\d+,[\d.]+,success,", text, re.M), text[-3000:]
    assert json.loads((logdir / "gpt3run_1" / "run_config.json").read_text())["config"]["parallel"]["tp"] == 2
    # The two closed rules a CPU-sized model cannot meet fail; nothing else does.
    _, report = compliance(log)
    failed = set(re.findall(r"CHECK for '(\w+)' failed", report))
    assert failed == {"max_sequence_length", "opt_base_learning_rate"}, report


@pytest.mark.slow
@pytest.mark.slurm
def test_sbatch_unet3d_sub_cpu_config(local_slurm, debug_data, tmp_path):
    """`sbatch launchers/unet3d.sub` with its CPU config: the synthetic KiTS19 (NIfTI through the real chain), two
    tasks of one sample each, to the target; the log (open division, as the debug flavour claims) passes the
    checker, in run.sub's check and in ours."""
    data, logdir = debug_data("unet3d"), tmp_path / "results"
    config = LAUNCHERS / "unet3d" / "config_CPU_01x02x1.sh"
    env = clean_env(DATADIR=data, LOGDIR=logdir, NEXP=1, SEED_BASE=31, DATESTAMP="unet3drun", MASTER_PORT=free_port(),
                    DROPCACHE_METHOD="fadvise", WALLTIME_RUNANDTIME=15)
    _, output = run_job(config, env, tmp_path)
    assert "run.sub: 1 run(s), 0 failed, 0 failed the compliance check" in output, output[-4000:]
    log = logdir / "unet3drun_1.log"
    assert_compliant(log)
    assert "SUCCESS" in (logdir / "unet3drun_1_compliance.txt").read_text()
    text = log.read_text()
    assert re.search(r"^(\S+: )?RESULT,unet3d,31,[\d.]+,success,", text, re.M), text[-3000:]
    events = mllog_events(log)
    assert [e["value"] for e in events if e["key"] == "seed"] == [31]
    assert [e["value"] for e in events if e["key"] == "submission_division"] == ["open"]
    dice = [e["value"] for e in events if e["key"] == "eval_accuracy"]
    assert dice and dice[-1] >= 0.908 and all(d < 0.908 for d in dice[:-1]), dice
    run_config = json.loads((logdir / "unet3drun_1" / "run_config.json").read_text())
    assert run_config["launcher"] == "slurm" and run_config["layout"].startswith("world=2 ")


@pytest.mark.slow
@pytest.mark.slurm
def test_sbatch_requeued_job_resumes_the_interrupted_run(local_slurm, resnet_debug_data, tmp_path):
    """sbatch --requeue, then `scontrol requeue` once the run has trained and evaluated. Slurm sends SIGTERM to every
    process of the job at once (batch script, srun, ranks, and the ranks' DataLoader workers; SIGKILL KillWait
    seconds later); run.sub waits for the ranks and stops; the requeued job (restart count 1) resumes that run from
    its checkpoint with the same seed and DATESTAMP, under a log of its own, to the target.

    The ranks save at their next sync point and exit 143: their DataLoader workers ignore the SIGTERM
    (pipelines/workers.py; torch's own handler let them die of it, and the rank then failed before saving)."""
    logdir = tmp_path / "results"
    config = LAUNCHERS / "resnet" / "config_CPU_01x02x16.sh"
    # No SEED_BASE and no DATESTAMP: both drawn on the first start, so that reusing them is what is tested.
    # run.log_every_steps=4: the ranks look for a SIGTERM every 4 steps (24 in the flavour), well within KillWait.
    extra = "run.log_every_steps=4"
    env = clean_env(DATADIR=resnet_debug_data, LOGDIR=logdir, NEXP=1, MASTER_PORT=free_port(),
                    DROPCACHE_METHOD="fadvise", WALLTIME_RUNANDTIME=15, CHECKPOINT_EVERY_BLOCKS=1, EXTRA_ARGS=extra)
    # --open-mode=append: the job's output file keeps the first start's lines when the requeued job reopens it.
    job_id = sbatch_config(config, env, tmp_path, "--requeue", "--open-mode=append")

    try:
        # Requeue once the first attempt has evaluated once (so a periodic checkpoint exists) and trains on.
        deadline = time.time() + 15 * 60
        while True:
            logs = list(logdir.glob("*_1.log"))
            text = logs[0].read_text() if logs else ""
            evaluated = re.search(r"^0: eval after \d+ samples", text, re.M)
            if evaluated and re.search(r"^0: step \d+/", text[evaluated.end():], re.M):
                break
            assert job_field(job_id, "JobState") in ("PENDING", "RUNNING"), job_output(tmp_path)[-4000:]
            assert time.time() < deadline, "first attempt: no eval in 15 min\n" + job_output(tmp_path)[-3000:]
            time.sleep(0.5)
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
        # Slurm holds a requeued job back for its credentials' lifetime (EligibleTime = requeue + 121 s): once
        # it is pending again, let it start now.
        deadline = time.time() + 120
        while job_field(job_id, "JobState") != "PENDING" and time.time() < deadline:
            time.sleep(1)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
    except BaseException:
        subprocess.run(["scancel", job_id])
        raise
    wait_for_job(job_id, timeout_s=(15 + 5 + 2) * 60)
    output = job_output(tmp_path)

    assert job_field(job_id, "JobState") == "COMPLETED", output[-4000:]
    assert job_field(job_id, "Restarts") == "1" and job_field(job_id, "ExitCode") == "0:0"
    assert re.search(r"^run\.sub: run 1 stopped on SIGTERM \(exit \d+; ", output, re.M), output[-4000:]
    assert "run.sub: 1 run(s), 0 failed, 0 failed the compliance check" in output, output[-4000:]
    # The same DATESTAMP: one log per attempt of run 1, nothing else.
    first, = logdir.glob("*_1.log")
    base = first.name[: -len("_1.log")]
    second = logdir / f"{base}_1_attempt2.log"
    assert sorted(p.name for p in logdir.glob("*.log")) == [first.name, second.name]
    first_text, second_text = first.read_text(), second.read_text()
    assert not re.search(r"RESULT,resnet,\d+,[\d.]+,success", first_text), "the target was reached before the requeue"
    run_dir = logdir / f"{base}_1"
    seed = int(re.search(r"^Beginning trial 1 of 1 \(seed (\d+)\)$", first_text, re.M).group(1))
    assert [e["value"] for e in mllog_events(first) if e["key"] == "seed"] == [seed]

    # The second attempt: resumed from the run's checkpoint with the same seed, to the target, and compliant.
    assert f"Beginning trial 1 of 1 (seed {seed}), attempt 2" in second_text
    resumed = re.search(rf"^0: resumed from {re.escape(str(logdir))}/{base}_1_checkpoint at step (\d+)$", second_text,
                        re.M)
    assert resumed, second_text[-4000:]
    gbs, = [e["value"] for e in mllog_events(first) if e["key"] == "global_batch_size"]
    last_eval = [int(n) for n in re.findall(r"^0: eval after (\d+) samples", first_text, re.M)][-1]
    sigterm_saved = "0: run stopped: aborted (preempted by SIGTERM (checkpoint saved))" in first_text
    # The SIGTERM checkpoint: saved after the last eval, the ranks exited 143.
    assert sigterm_saved, first_text[-4000:]
    assert int(resumed.group(1)) * gbs > last_eval
    for rank in (0, 1):
        exited = re.search(rf"^{rank}: run_and_time: resnet rank {rank} exit 143 ", first_text, re.M)
        assert exited, first_text[-3000:]
    results = result_lines(second_text)
    assert len(results) == 1 and results[0][1] == str(seed) and results[0][3] == "success_resumed", results
    for log in (second, run_dir / "mlperf_log_attempt2.txt"):
        events = mllog_events(log)
        assert [e["value"] for e in events if e["key"] == "seed"] == [seed]
        assert [e["key"] for e in events].count("run_stop") == 1 and events[-1]["metadata"]["status"] == "success"
        assert_compliant(log)
    assert "SUCCESS" in (logdir / f"{base}_1_attempt2_compliance.txt").read_text()
    assert (logdir / f"job_{job_id}_state" / "run_1.done").read_text().split() == ["0", second.name]

    # The first attempt's job log (kept until the ranks exited) and MLPerf log: one run_start, closed by run_stop
    # aborted.
    def closed_as_aborted(log: Path) -> bool:
        events = mllog_events(log)
        keys = [e["key"] for e in events]
        return (keys.count("run_start") == keys.count("run_stop") == 1 and events[-1]["key"] == "run_stop"
                and events[-1]["metadata"]["status"] == "aborted")

    unclosed = [log.name for log in (first, run_dir / "mlperf_log.txt") if not closed_as_aborted(log)]
    assert not unclosed, first_text[-4000:]


def test_debug_sh_never_writes_into_the_users_datadir(tmp_path):
    """A DATADIR the user exported is read as it is: debug.sh synthesises only into its own data/ directory.
    Here it holds no dataset, so the run fails reading it, and it stays as the user left it."""
    data = tmp_path / "mine"
    data.mkdir()
    (data / "notes.txt").write_text("the user's\n")
    env = {**os.environ, "DATADIR": str(data), "RUNDIR": str(tmp_path / "run")}
    r = subprocess.run(["bash", str(LAUNCHERS / "debug.sh"), "resnet"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode != 0 and "no train shards" in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt"]
    missing = subprocess.run(["bash", str(LAUNCHERS / "debug.sh"), "resnet"], capture_output=True, text=True,
                             env={**env, "DATADIR": str(tmp_path / "absent")}, timeout=600)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
