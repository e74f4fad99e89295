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

import psutil  # noqa: F401  megatron's writer processes import it; without it they die and the save hangs
import torch.distributed as dist
from megatron.core import dist_checkpointing

from runtime import checkpoint
from runtime.safe_dcp import safe_megatron_reads

LATEST = checkpoint.STEP_POINTER


def sharded_state(chunks, optimizer, *, is_loading: bool = False, keep=None) -> dict:
    """The model chunks' sharded state (only the entries whose key `keep` accepts, when given: Llama LoRA keeps
    its adapters, its frozen base being the initial checkpoint) and the optimizer's."""
    model = {}
    for i, chunk in enumerate(chunks):
        full = chunk.module.sharded_state_dict()
        model[f"model{i}"] = full if keep is None else {k: v for k, v in full.items() if keep(k)}
    return {**model, "optimizer": optimizer.sharded_state_dict(model, is_loading=is_loading)}


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def save(directory: str, chunks, optimizer, common: dict, keep=None) -> str:
    state = {**sharded_state(chunks, optimizer, keep=keep), "common": common}
    main = not dist.is_initialized() or dist.get_rank() == 0
    return checkpoint.save_step_dir(directory, int(common["loop"]["global_step"]),
                                    lambda path: dist_checkpointing.save(state, path), is_main=main, barrier=_barrier)


def load(directory: str, chunks, optimizer, check, keep=None) -> dict | None:
    """Restore the checkpoint `latest` names; None when there is none. `check(common, where)` may raise. With
    `keep`, the other entries stay as they are and every kept one must be in the checkpoint."""
    path = checkpoint.latest_step_dir(directory)
    if path is None:
        return None
    common = dist_checkpointing.load_common_state_dict(path)
    if "common" not in common:
        raise RuntimeError(f"checkpoint {path}: missing key 'common' (not written by this benchmark?)")
    check(common["common"], path)
    with safe_megatron_reads():  # its .metadata read without unpickling arbitrary objects
        state = dist_checkpointing.load(sharded_state(chunks, optimizer, is_loading=True, keep=keep), path)
    for i, chunk in enumerate(chunks):
        if keep is None:
            chunk.module.load_state_dict(state[f"model{i}"])
            continue
        result = chunk.module.load_state_dict(state[f"model{i}"], strict=False)
        missing = [k for k in result.missing_keys if keep(k)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"checkpoint {path}: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}")
    optimizer.load_state_dict(state["optimizer"])
    return common["common"]
