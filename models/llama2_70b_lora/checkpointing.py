"""The run's own checkpoints: the LoRA adapters and their Adam state only, as megatron distributed checkpoints.

    <checkpoint_dir>/step_00000042/   megatron dist checkpoint (adapters under `model0`, Adam moments after them)
    <checkpoint_dir>/latest           the name of the newest complete one

runtime/mcore/checkpointing.py saves every parameter; the frozen base (70B, already on disk as the HF
checkpoint) is left out here: the model's sharded state dict is filtered to the adapter parameters, whose
ShardedTensors carry their TP split (models/llama2_70b_lora/lora.py), so a checkpoint reloads under another
TP size. On load the base stays as the initial checkpoint left it, and every adapter must be found.
"""

from __future__ import annotations

import psutil  # noqa: F401  megatron's writer processes import it; without it they die and the save hangs
import torch.distributed as dist
from megatron.core import dist_checkpointing

from models.llama2_70b_lora.lora import LORA_PREFIX
from runtime import checkpoint


def _is_adapter(key: str) -> bool:
    return key.rsplit(".", 1)[-1].startswith(LORA_PREFIX)


def adapter_state(chunks, optimizer, *, is_loading: bool = False) -> dict:
    model = {}
    for i, chunk in enumerate(chunks):
        full = chunk.module.sharded_state_dict()
        model[f"model{i}"] = {k: v for k, v in full.items() if _is_adapter(k)}
    return {**model, "optimizer": optimizer.sharded_state_dict(model, is_loading=is_loading)}


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def save(directory: str, chunks, optimizer, common: dict) -> str:
    state = {**adapter_state(chunks, optimizer), "common": common}
    main = not dist.is_initialized() or dist.get_rank() == 0
    return checkpoint.save_step_dir(directory, int(common["loop"]["global_step"]),
                                    lambda path: dist_checkpointing.save(state, path), is_main=main, barrier=_barrier)


def load(directory: str, chunks, optimizer, check) -> dict | None:
    """Restore the adapters and Adam state of the checkpoint `latest` names; None when there is none."""
    path = checkpoint.latest_step_dir(directory)
    if path is None:
        return None
    common = dist_checkpointing.load_common_state_dict(path)
    if "common" not in common:
        raise RuntimeError(f"checkpoint {path}: missing key 'common' (not written by this benchmark?)")
    check(common["common"], path)
    state = dist_checkpointing.load(adapter_state(chunks, optimizer, is_loading=True), path)
    for i, chunk in enumerate(chunks):
        result = chunk.module.load_state_dict(state[f"model{i}"], strict=False)
        missing = [k for k in result.missing_keys if _is_adapter(k)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"checkpoint {path}: adapters missing {missing[:4]}, unexpected "
                               f"{result.unexpected_keys[:4]}")
    optimizer.load_state_dict(state["optimizer"])
    return common["common"]
