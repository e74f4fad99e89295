"""GPT-3's own checkpoints through megatron-core's dist_checkpointing: any TP/PP/VPP layout, resharded on load.

    <checkpoint_dir>/step_00000042/   a megatron distributed checkpoint (torch_dist backend)
    <checkpoint_dir>/latest           the name of the newest complete one

Every rank writes only the tensors it is the main replica of (model chunks under `model0`, `model1`, ...
as Megatron-LM names them; Adam moments keyed after their parameter); the loop's position and seed go to
the checkpoint's common part. A checkpoint is written under a temporary name and renamed once every rank
has finished, then `latest` is replaced atomically, so a job killed mid-save resumes from the previous
one. Loading asks megatron-core for this rank's current layout, so a run saved at TP2 resumes at PP2.
"""

from __future__ import annotations

import os
import shutil

import psutil  # noqa: F401  megatron's writer processes import it; without it they die and the save hangs
import torch.distributed as dist
from megatron.core import dist_checkpointing

from runtime.checkpoint import write_text_atomic

LATEST = "latest"
_KEEP = 2  # complete checkpoints kept; older ones are removed after a save


def sharded_state(chunks, optimizer, *, is_loading: bool = False) -> dict:
    model = {f"model{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(chunks)}
    return {**model, "optimizer": optimizer.sharded_state_dict(model, is_loading=is_loading)}


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def save(directory: str, chunks, optimizer, common: dict) -> str:
    name = f"step_{int(common['loop']['global_step']):08d}"
    final, tmp = os.path.join(directory, name), os.path.join(directory, ".tmp-" + name)
    main = not dist.is_initialized() or dist.get_rank() == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    dist_checkpointing.save({**sharded_state(chunks, optimizer), "common": common}, tmp)
    _barrier()
    if main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_text_atomic(os.path.join(directory, LATEST), name + "\n")
        older = sorted(d for d in os.listdir(directory) if d.startswith("step_") and d != name)
        for stale in older[: max(0, len(older) - (_KEEP - 1))]:
            shutil.rmtree(os.path.join(directory, stale), ignore_errors=True)
    _barrier()
    return final


def load(directory: str, chunks, optimizer, check) -> dict | None:
    """Restore the checkpoint `latest` names; None when there is none. `check(common, where)` may raise."""
    pointer = os.path.join(directory, LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(directory, name)
    if not name or not os.path.isdir(path):
        raise RuntimeError(f"{pointer} names {name!r}, which is not a checkpoint directory in {directory}")
    common = dist_checkpointing.load_common_state_dict(path)
    if "common" not in common:
        raise RuntimeError(f"checkpoint {path}: missing key 'common' (not written by this benchmark?)")
    check(common["common"], path)
    state = dist_checkpointing.load(sharded_state(chunks, optimizer, is_loading=True), path)
    for i, chunk in enumerate(chunks):
        chunk.module.load_state_dict(state[f"model{i}"])
    optimizer.load_state_dict(state["optimizer"])
    return common["common"]
