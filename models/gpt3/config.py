"""GPT-3 175B configurations: `debug` (CPU, minutes) and NVIDIA's v4.0 DGX H100 layouts.

`parallel` holds only what `runtime.parallel.ParallelLayout` takes (tp, pp, cp); the rest of the
megatron layout (virtual pipeline, sequence parallel, distributed optimizer, recompute) is in `train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from runtime import config as base
from runtime.config import ParallelConfig, RunConfig
from runtime.mcore.config import AdamConfig

SEQ_LEN = 2048
REFERENCE_GBS = 1536  # the batch size the schedule's sample counts are written at


@dataclass
class ModelConfig:
    num_layers: int = 96
    hidden_size: int = 12288
    num_attention_heads: int = 96
    ffn_hidden_size: int = 49152
    seq_length: int = SEQ_LEN
    vocab_size: int = 50257  # the SentencePiece model's; padded for TP by `padded_vocab_size`
    make_vocab_size_divisible_by: int = 128  # Megatron's default; times TP
    layernorm_epsilon: float = 1e-5
    init_method_std: float = 0.006
    share_embeddings_and_output_weights: bool = True  # Megatron's default, as the reference checkpoint
    # "fp32", "bf16" (bf16 params, fp32 main grads and master weights) or "fp8" (bf16 + FP8 layer GEMMs:
    # Transformer Engine's when it imports, else torch._scaled_mm's, runtime/mcore/fp8_linear.py)
    precision: str = "bf16"
    fp8_amax_history_len: int = 1024  # NVIDIA v4.0: delayed scaling, HYBRID, max over the history
    fused_norm: bool = True  # kernels.layer_norm.FusedLayerNorm in the local (non-TE) spec
    # Core attention of the local (non-TE) spec. "local": megatron's DotProductAttention, which keeps the
    # s x s softmax output in fp32 and its bf16 copy for backward (6 bytes per score: 1.2 GB per layer and
    # micro-batch at s 2048, MBS 2, 24 heads per TP rank); "sdpa": torch's scaled_dot_product_attention
    # (flash / memory-efficient kernels on H100), which keeps q, k, v, the output and one fp32 log-sum-exp
    # per row and head, never the scores. TE's spec ignores this: its fused attention keeps no scores either.
    attention: str = "local"

    def padded_vocab_size(self, tp: int) -> int:
        multiple = self.make_vocab_size_divisible_by * tp
        return math.ceil(self.vocab_size / multiple) * multiple


@dataclass
class DataConfig(base.DataConfig):
    train_prefixes: tuple[str, ...] = ("c4_en_6_c4_spm_text_document", "c4_en_7_c4_spm_text_document")
    train_weights: tuple[float, ...] = (0.5, 0.5)
    valid_prefix: str = "c4_en_validation_subset_c4_spm_text_document"
    # Where doc/sample/shuffle index arrays are cached (never in the dataset, which may be read-only);
    # empty: ~/.cache/mlperf-stack/gpt3_index.
    index_cache_dir: str = ""
    # The initial checkpoint (Megatron zarr layout: models/gpt3/reference_checkpoint.py), absolute or
    # relative to --data-dir. Empty: random weights, which only a throughput run may use.
    init_checkpoint: str = ""
    init_checkpoint_threads: int = 8  # concurrent reads per rank (a parallel file system wants several)
    eval_tokens: int = 11_590_004  # validation tokens (logged as eval_samples, as NVIDIA does); checked on open
    # Only for `python -m runtime.synthesize`: a learnable Markov language in the real file layout.
    synthetic_vocab: int = 256
    synthetic_train_docs: int = 2000  # per file; fewer and the tiny model memorises them instead
    synthetic_valid_docs: int = 40
    synthetic_doc_tokens: tuple[int, ...] = (40, 400)  # min, max document length
    synthetic_branching: int = 16  # successors per token, Zipf-like (p ~ k^-1.5): entropy 1.86 nats


@dataclass
class OptimConfig(AdamConfig):
    base_lr: float = 0.0  # 0: the closed rule for the batch size (`closed_learning_rate`)
    warmup_samples: int = 265 * REFERENCE_GBS
    decay_samples: int = 108_600 * REFERENCE_GBS
    init_checkpoint_samples: int = 4000 * REFERENCE_GBS  # the schedule resumes after these


@dataclass
class TrainConfig(base.TrainConfig):
    global_batch_size: int = 2048
    micro_batch_size: int = 1
    virtual_pp: int = 1  # model chunks per pipeline stage (interleaved 1F1B when > 1)
    sequence_parallel: bool = True  # needs tp > 1 and a norm that marks its grads (TE, or our FusedLayerNorm)
    distributed_optimizer: bool = True  # CUDA only; CPU uses the replicated path of parallelize.py
    recompute: str = "none"  # "none", "selective" (core attention) or "full" (whole layers)
    # For "full" (megatron's recompute_method): "uniform" recomputes every layer, in groups of
    # recompute_num_layers whose input alone is kept; "block" recomputes the first recompute_num_layers
    # layers of every model chunk (one layer at a time) and keeps the other layers' activations.
    recompute_method: str = "uniform"
    recompute_num_layers: int = 1
    eval_every_samples: int = 24_576
    eval_micro_batch_size: int = 0  # 0: micro_batch_size
    max_samples: int = 3_000_000  # budget: run_stop aborted when the target is not met by then
    grad_reduce_in_fp32: bool = True


@dataclass
class GPT3Config(base.BenchmarkConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(target=2.69, log_every_steps=10, warmup_steps=2))


# closed_gpt3.yaml and open_gpt3.yaml alike pin the real model's sequence length (2048) and learning rates
# (2e-5/3e-5); a model that CPU cores train to the target in minutes can have neither, so these two rules,
# and only these, fail on the debug flavour's log under either division's rules.
DEBUG_LOG_EXCEPTIONS = frozenset({"max_sequence_length", "opt_base_learning_rate"})


def closed_learning_rate(global_batch_size: int) -> float:
    """NVIDIA's rule inside the closed table: 2e-5 below GBS 3600, else 3e-5 (both allowed in (3072, 4096))."""
    return 2e-5 if global_batch_size < 3600 else 3e-5


def allowed_learning_rates(global_batch_size: int) -> tuple[float, ...]:
    if global_batch_size <= 3072:
        return (2e-5,)
    if global_batch_size < 4096:
        return (2e-5, 3e-5)
    return (3e-5,)


# Memory on an 80 GB H100: `python -m models.gpt3.plan --flavour <name> --world-size <n>` prints it by term.
# NVIDIA's v4.0 runs recompute nothing (their ACT_CKPT_* variables are unset: NeMo's null); they fit
# through TE's leaner saved activations, weights held in FP8 (no bf16 copy) and a bf16 grad buffer (apex
# DistributedFusedAdam, grad_sync_dtype bf16). This stack's image runs megatron's local spec (the NGC
# image's TE is built against another torch: containers/Dockerfile), whose FP8 linears
# (runtime/mcore/fp8_linear.py) save an FP8 copy of every layer weight per micro-batch in flight (0.42 GiB
# per layer at TP 4), and keeps fp32 main grads: without recompute the first stage needs 137 GiB at
# 64x8 (267 GiB with the local attention's s x s scores), 141 GiB at 32x8, 107 GiB at 1452x8. Hence SDPA
# attention and full recompute of as few layers per model chunk as fit with 2 GiB to spare after the
# planner's 5 GiB reserve for the CUDA context, NCCL and allocator fragmentation.
def dgxh100_64x8() -> GPT3Config:
    """64 nodes x 8 H100 (512 GPUs): TP4 PP8 interleaved by 4, MBS 2, GBS 2304 (dp 16, 72 micro-batches).
    Recomputes 2 of every chunk's 3 layers (block): first stage 76.3 GiB of 79.1 by the planner (1 of 3:
    107 GiB)."""
    cfg = GPT3Config()
    cfg.model.precision = "fp8"
    cfg.model.attention = "sdpa"
    cfg.parallel = ParallelConfig(tp=4, pp=8)
    cfg.train = replace(cfg.train, global_batch_size=2304, micro_batch_size=2, virtual_pp=4, recompute="full",
                        recompute_method="block", recompute_num_layers=2)
    return cfg


def dgxh100_1452x8() -> GPT3Config:
    """1452 nodes x 8 H100 (11 616 GPUs): TP4 PP6 interleaved by 8, MBS 1, GBS 2904 (dp 484, 6 micro-batches).
    All 6 micro-batches x 8 chunks are in flight on the first stage at once: every layer recomputed, 49.6 GiB
    (1 of every chunk's 2 layers: 78.6 GiB, 0.5 to spare)."""
    cfg = GPT3Config()
    cfg.model.precision = "fp8"
    cfg.model.attention = "sdpa"
    cfg.parallel = ParallelConfig(tp=4, pp=6)
    cfg.train = replace(cfg.train, global_batch_size=2904, micro_batch_size=1, virtual_pp=8, recompute="full",
                        recompute_method="uniform", recompute_num_layers=1)
    return cfg


def dgxh100_32x8() -> GPT3Config:
    """32 nodes x 8 H100 (256 GPUs), the smallest published scale: TP4 PP8 interleaved by 4, GBS 1536.
    DP 8 doubles 64x8's optimizer shard (+3.9 GiB), which leaves no room for its unrecomputed layer (80.2
    GiB): every layer recomputed, 49.6 GiB."""
    cfg = dgxh100_64x8()
    cfg.train = replace(cfg.train, global_batch_size=1536, micro_batch_size=2, recompute_method="uniform",
                        recompute_num_layers=1)
    return cfg


def debug() -> GPT3Config:
    """The same model code at a width 2 CPU cores train in minutes, on the synthetic Markov C4."""
    cfg = GPT3Config()
    cfg.model = replace(cfg.model, num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256,
                        seq_length=64, vocab_size=cfg.data.synthetic_vocab, init_method_std=0.02,
                        precision="fp32")
    # eval_tokens 0: whatever the synthetic validation file holds. The initial checkpoint is written beside
    # the data by `python -m runtime.synthesize gpt3`, with the same name-keyed weights for every layout.
    cfg.data = replace(cfg.data, eval_tokens=0, init_checkpoint="init_checkpoint")
    # Sample counts at GBS 16: warm up over 20 steps, decay over 600, "checkpoint" after 1 step (> 0 as
    # the checker wants), eval every 20 steps.
    gbs = 16
    cfg.optim = replace(cfg.optim, base_lr=3e-3, warmup_samples=20 * gbs, decay_samples=600 * gbs,
                        init_checkpoint_samples=gbs)
    cfg.train = replace(cfg.train, global_batch_size=gbs, micro_batch_size=4, sequence_parallel=False,
                        distributed_optimizer=False, eval_every_samples=20 * gbs, max_samples=400 * gbs)
    # The closed target itself: the chain's entropy (1.86 nats) sits below it, so the curve crosses 2.69
    # slowly enough that the crossing eval lands in the checker's (2.6, 2.69] window.
    # Not the reference model, so its log claims the open division (DEBUG_LOG_EXCEPTIONS: the two rules that
    # open_gpt3.yaml pins as well as closed_gpt3.yaml).
    cfg.run = replace(cfg.run, target=2.69, log_every_steps=10, warmup_steps=1, submission_division="open")
    return cfg


FLAVOURS = {"debug": debug, "dgxh100_32x8": dgxh100_32x8, "dgxh100_64x8": dgxh100_64x8,
            "dgxh100_1452x8": dgxh100_1452x8}
