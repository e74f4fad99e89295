"""GPT-3 175B continued pre-training on C4 (MLPerf log name `gpt3`), on megatron-core: validation
log-perplexity 2.69 (lower is better), evaluated in tokens, from the reference's step-4000 checkpoint."""

import runtime.mcore  # noqa: F401  (first: it quiets megatron's import-time warnings)
from models.gpt3.benchmark import GPT3Benchmark, write_synthetic_data
from models.gpt3.config import DEBUG_LOG_EXCEPTIONS, FLAVOURS
from runtime.benchmark import BenchmarkSpec

SPEC = BenchmarkSpec(name="gpt3", flavours=FLAVOURS, benchmark=GPT3Benchmark,
                     write_synthetic_data=write_synthetic_data, metric="log_perplexity", higher_is_better=False,
                     eval_unit="tokens", init_checkpoint=True, megatron=True,
                     debug_log_exceptions=DEBUG_LOG_EXCEPTIONS)
