"""Llama-2-70B LoRA fine-tuning on SCROLLS GovReport (MLPerf log name `llama2_70b_lora`), on megatron-core:
validation loss 0.925 (lower is better), evaluated in sequences, from the HF Llama-2-70B base checkpoint."""

import runtime.mcore  # noqa: F401  (first: it quiets megatron's import-time warnings)
from models.llama2_70b_lora.benchmark import LlamaLoraBenchmark, write_synthetic_data
from models.llama2_70b_lora.config import DEBUG_LOG_EXCEPTIONS, FLAVOURS
from runtime.benchmark import BenchmarkSpec, Parity

SPEC = BenchmarkSpec(name="llama2_70b_lora", flavours=FLAVOURS, benchmark=LlamaLoraBenchmark,
                     write_synthetic_data=write_synthetic_data, metric="eval_loss", higher_is_better=False,
                     eval_unit="samples", init_checkpoint=True, megatron=True,
                     # LoRA dropout draws differ between layouts and are not checkpointed
                     parity=Parity(deterministic=("model.lora_dropout=0",)),
                     debug_log_exceptions=DEBUG_LOG_EXCEPTIONS)
