"""The directory a benchmark starts its weights from (`data.init_checkpoint`): GPT-3's reference checkpoint,
Llama-2-70B's HF base. One rule for both, so that a missing path fails alike in the first second.

An empty value is allowed (throughput runs from random weights) but is not a valid MLPerf run: rank 0 says so.
A value that is not a directory is an error naming the path, what belongs there and how to make one.
"""

from __future__ import annotations

import os


def init_checkpoint_dir(ctx, value: str, *, benchmark: str, what: str, warn_if_empty: bool = True) -> str | None:
    """The checkpoint directory `value` names (absolute, or under the data directory), or None when it is empty.

    `what` says what belongs there (e.g. "a HF Llama-2-70B checkpoint"); the prepare README of the benchmark and
    the synthesize command are named in the error."""
    if not value:
        if warn_if_empty and ctx.is_main:
            print(f"{benchmark}: WARNING: data.init_checkpoint is empty, so the model starts from random weights: "
                  "this run measures throughput but is not a valid MLPerf run", flush=True)
        return None
    path = ctx.data_path(value)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"data.init_checkpoint: {path} is not a directory ({what}: "
                                f"models/{benchmark}/prepare/README.md; for the debug flavour, synthesize the data "
                                f"into a new directory: python -m runtime.synthesize {benchmark} --flavour debug "
                                "--out DIR)")
    return path
