"""The run's own checkpoints: the LoRA adapters and their Adam state only, as megatron distributed checkpoints.

    <checkpoint_dir>/step_00000042/   megatron dist checkpoint (adapters under `model0`, Adam moments after them)
    <checkpoint_dir>/latest           the name of the newest complete one

runtime/mcore/checkpointing.py saves every parameter unless told which to keep: the frozen base (70B, already
on disk as the HF checkpoint) is left out here, the model's sharded state dict filtered to the adapter
parameters, whose ShardedTensors carry their TP split (models/llama2_70b_lora/lora.py), so a checkpoint
reloads under another TP size. On load the base stays as the initial checkpoint left it, and every adapter
must be found.
"""

from __future__ import annotations

from models.llama2_70b_lora.lora import LORA_PREFIX
from runtime.mcore import checkpointing


def is_adapter(key: str) -> bool:
    return key.rsplit(".", 1)[-1].startswith(LORA_PREFIX)


def adapter_state(chunks, optimizer, *, is_loading: bool = False) -> dict:
    return checkpointing.sharded_state(chunks, optimizer, is_loading=is_loading, keep=is_adapter)


def save(directory: str, chunks, optimizer, common: dict) -> str:
    return checkpointing.save(directory, chunks, optimizer, common, keep=is_adapter)


def load(directory: str, chunks, optimizer, check) -> dict | None:
    """Restore the adapters and Adam state of the checkpoint `latest` names; None when there is none."""
    return checkpointing.load(directory, chunks, optimizer, check, keep=is_adapter)
