"""megatron-core glue shared by the benchmarks built on it (GPT-3, Llama 2 70B LoRA): the CPU shim,
parallel_state from the run's layout, DDP wrapping and the optimizer (parallelize.py), the pipeline
schedule runner (pipeline.py), distributed checkpoints (checkpointing.py), FP8 TP linears without
Transformer Engine (fp8_linear.py), and Megatron's zarr checkpoint arrays read by region (zarr_array.py).

Importing this package imports nothing of megatron (each module does, when imported); it quiets megatron's
import-time warnings about absent TE and apex."""

import logging
import warnings

import torch

# megatron-core warns at import, module by module, that TE and apex are absent and it falls back to torch: on
# every CPU machine, before a command can even say what is wrong with its arguments. What the stack uses is
# reported by kernels/backends.py and containers/check_image.py instead.
warnings.filterwarnings("ignore", message=r"(Transformer Engine and )?Apex (is|are) not installed",
                        category=UserWarning)
if not torch.cuda.is_available():  # torch's extension loader, imported by megatron, says so at WARNING level
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
