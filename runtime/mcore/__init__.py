"""megatron-core glue shared by the benchmarks built on it (GPT-3, Llama 2 70B LoRA): the CPU shim,
parallel_state from the run's layout, DDP wrapping and the optimizer (parallelize.py), the pipeline
schedule runner (pipeline.py), distributed checkpoints (checkpointing.py), FP8 TP linears without
Transformer Engine (fp8_linear.py), and Megatron's zarr checkpoint arrays read by region (zarr_array.py).

Importing this package imports nothing of megatron; each module does, when imported."""
