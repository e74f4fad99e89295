"""Rank wiring from each launcher's variables, and the parallel layout's arithmetic."""

import pytest

from runtime.distributed import detect_launch, first_slurm_host
from runtime.parallel import ParallelLayout


def test_torchrun_variables():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "node7", "MASTER_PORT": "1234", "TORCHELASTIC_RUN_ID": "x",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}  # torchrun inside an allocation: torchrun wins
    e = detect_launch(env)
    assert (e.launcher, e.rank, e.world_size, e.local_rank, e.local_world_size) == ("torchrun", 3, 8, 1, 2)
    assert not e.agent_store  # only TORCHELASTIC_USE_AGENT_STORE=True says the agent hosts the store
    assert (e.master_addr, e.master_port) == ("node7", 1234)


def test_slurm_variables_one_task_per_gpu():
    env = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NNODES": "2", "SLURM_STEP_ID": "0",
           "SLURM_NTASKS_PER_NODE": "8", "SLURM_JOB_NODELIST": "gpu[003-004]"}
    e = detect_launch(env)
    assert (e.launcher, e.rank, e.world_size, e.local_rank, e.local_world_size) == ("slurm", 9, 16, 1, 8)
    assert e.master_addr == "gpu003" and e.master_port == 29500


def test_single_task_slurm_and_the_batch_script_are_single_processes():
    e = detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0", "SLURM_STEP_ID": "0"})
    assert (e.launcher, e.world_size) == ("single", 1)
    # python run by the batch script of an 8-task allocation: not a rank of an srun step
    e = detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "5"})
    assert (e.launcher, e.world_size) == ("single", 1)


def test_openmpi_and_mpich_variables():
    e = detect_launch({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
                       "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"})
    assert (e.launcher, e.rank, e.world_size, e.local_rank) == ("openmpi", 1, 2, 1)
    e = detect_launch({"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"})
    assert (e.launcher, e.rank, e.world_size, e.local_world_size) == ("mpich", 0, 2, 2)


def test_bad_variable_is_named():
    with pytest.raises(RuntimeError, match="RANK='x'"):
        detect_launch({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_nodelist_expansion_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert first_slurm_host("node[003-005,9],gpu1") == "node003"
    assert first_slurm_host("login2,gpu1") == "login2"


def test_layout_degrees_and_coordinates():
    layout = ParallelLayout(world_size=16, rank=13, tp=2, pp=2)
    assert layout.dp == 4
    # tp fastest, then cp, then dp, pp slowest: 13 = tp 1 + 2 * (dp 2 + 4 * pp 1)
    assert layout.coords() == {"tp": 1, "cp": 0, "dp": 2, "pp": 1}
    assert layout.ranks_sharing("dp") == [9, 11, 13, 15]
    assert layout.ranks_sharing("tp") == [12, 13]


def test_layout_rejects_a_world_it_does_not_divide():
    with pytest.raises(ValueError, match="not divisible by tp\\*pp\\*cp = 4\\*2\\*1 = 8"):
        ParallelLayout(world_size=12, rank=0, tp=4, pp=2)
    with pytest.raises(ValueError, match="tp=0"):
        ParallelLayout(world_size=2, rank=0, tp=0)
