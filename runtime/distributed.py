"""Process wiring: one entry point under torchrun, srun and mpirun.

Each launcher describes the job in its own environment variables. `detect_launch()` reads whichever set
is present into one `LaunchEnv`; `init_distributed()` turns that into a torch.distributed process group
(nccl on CUDA, gloo on CPU) with a collective timeout, plus a heartbeat so that a rank that dies is named
by the survivors instead of leaving them hanging (see `runtime/watchdog.py`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_MASTER_PORT = 29500  # NVIDIA's choice: outside the ephemeral range, so it is rarely taken.


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, whoever launched it."""

    launcher: str  # "torchrun", "env" (RANK/WORLD_SIZE set by hand), "slurm", "openmpi", "mpich" or "single"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    agent_store: bool = False  # torchrun's agent already hosts the rendezvous store at MASTER_ADDR:PORT


def _int(env: dict, key: str) -> int:
    try:
        return int(env[key])
    except ValueError as e:
        raise RuntimeError(f"environment variable {key}={env[key]!r} is not an integer") from e


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm nodelist such as 'node[003-005,9],gpu1'."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass  # no scontrol on this node (e.g. inside a container): expand the first entry ourselves
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        first = rest.rstrip("]").split(",")[0].split("-")[0]
        return prefix + first
    return head


def detect_launch(env: dict | None = None) -> LaunchEnv:
    """Read the launcher's variables. torchrun wins over Slurm (torchrun inside an allocation), and
    Slurm over MPI (srun --mpi=pmix also sets PMI variables)."""
    env = dict(os.environ if env is None else env)
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else DEFAULT_MASTER_PORT
    addr = env.get("MASTER_ADDR")

    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv("torchrun" if "TORCHELASTIC_RUN_ID" in env else "env", _int(env, "RANK"),
                         _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
                         _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else _int(env, "WORLD_SIZE"),
                         addr or "127.0.0.1", port, agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True")
    # Only an srun step's tasks are ranks: the batch script itself (no SLURM_STEP_ID) is one process even
    # in a many-task allocation, and must not wait for peers that will never come.
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env and _int(env, "SLURM_NTASKS") > 1:
        local_world = _int(env, "SLURM_NTASKS_PER_NODE") if env.get("SLURM_NTASKS_PER_NODE", "").isdigit() \
            else _int(env, "SLURM_NTASKS") // max(1, _int(env, "SLURM_NNODES") if "SLURM_NNODES" in env else 1)
        return LaunchEnv("slurm", _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"),
                         _int(env, "SLURM_LOCALID"), local_world,
                         addr or first_slurm_host(env.get("SLURM_JOB_NODELIST", "localhost")), port)
    if "OMPI_COMM_WORLD_RANK" in env:
        return LaunchEnv("openmpi", _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE"),
                         _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"), _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"),
                         addr or "", port)
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        return LaunchEnv("mpich", _int(env, "PMI_RANK"), _int(env, "PMI_SIZE"),
                         _int(env, "MPI_LOCALRANKID") if "MPI_LOCALRANKID" in env else 0,
                         _int(env, "MPI_LOCALNRANKS") if "MPI_LOCALNRANKS" in env else _int(env, "PMI_SIZE"),
                         addr or "", port)
    return LaunchEnv("single", 0, 1, 0, 1, addr or "127.0.0.1", port)


def _mpi_master(launch: LaunchEnv) -> LaunchEnv:
    """mpirun exports no rendezvous address: rank 0 announces its host name over MPI itself."""
    if launch.master_addr:
        return launch
    from mpi4py import MPI  # lazy: only MPI launches need it

    addr = MPI.COMM_WORLD.bcast(socket.gethostname() if launch.rank == 0 else None, root=0)
    return dataclasses.replace(launch, master_addr=addr)


def pick_device(launch: LaunchEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(launch: LaunchEnv, device: torch.device, timeout_s: float) -> tuple[LaunchEnv, dist.Store | None]:
    """Create the default process group; returns the launch with its rendezvous address resolved and the
    store (None for a single process).

    We host the TCPStore ourselves rather than using env:// so that the heartbeat watchdog can open its
    own client connection to the same store. Under torchrun the agent already hosts a store at
    MASTER_ADDR:MASTER_PORT, so every worker joins it as a client.
    """
    if launch.world_size == 1:
        return launch, None
    if launch.launcher in ("openmpi", "mpich"):
        launch = _mpi_master(launch)
    timeout = timedelta(seconds=timeout_s)
    is_host = launch.rank == 0 and not launch.agent_store
    store = dist.TCPStore(launch.master_addr, launch.master_port, launch.world_size, is_master=is_host,
                          timeout=timeout, wait_for_workers=False)
    # Torchrun's agent store is shared with torch.elastic's own keys; keep ours apart.
    store = dist.PrefixStore("mlperf", store)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=launch.rank,
                            world_size=launch.world_size, timeout=timeout,
                            device_id=device if device.type == "cuda" else None)
    return launch, store
