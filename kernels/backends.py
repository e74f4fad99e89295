"""Which of NVIDIA's libraries this process can use, and the one place where their APIs differ by version.

    te_usable()            Transformer Engine imports and CUDA is there (TE's layers, GPT-3's TE spec)
    te_usable(fp8=True)    ... and TE itself reports FP8 support on this GPU (its own check, not ours)
    apex_usable()          apex imports with its CUDA extensions and CUDA is there
    apex_wanted()          MLPERF_KERNELS=apex (kernels/dispatch.py): apex where it has the op, else ours
    optimizer_class("lamb")   apex.optimizers.FusedLAMB when apex is wanted, else kernels.optimizers.FusedLAMB
    distributed_optimizer_class("lamb" | "adamw")   apex's DistributedFusedLAMB / DistributedFusedAdam for
                              optim.distributed=true (they replace DDP's all-reduce); a one-line ValueError
                              when MLPERF_KERNELS is not apex or apex is not usable
    apex_op("group_norm")     one of APEX_OPS' apex classes/functions, or a RuntimeError saying what is missing;
                              kernels/group_norm.py and models/ssd/focal_loss.py route through it when wanted

The GPU image keeps the NGC base's TE and apex (containers/Dockerfile); the CPU set has neither, so every
check here answers False there and the callers take our Triton/torch paths. The answers are cached per
process (an import that fails at load can take seconds); `reset()` clears them (tests that swap fake
modules into sys.modules).

TE's API boundary used here, across the versions megatron-core 0.16 supports (TE 2.9-2.11) and older ones:
FP8 support is `transformer_engine.pytorch.is_fp8_available(return_reason=True)` where that exists (newer
TE), else `transformer_engine.pytorch.fp8.check_fp8_support()`; both give (bool, reason).
"""

from __future__ import annotations

import contextlib
import functools
import importlib

import torch

from kernels import dispatch


def reset() -> None:
    for fn in (_te_module, _te_fp8_support, _apex_module):
        fn.cache_clear()


# --- Transformer Engine ---------------------------------------------------------------------------------
@functools.cache
def _te_module():
    """transformer_engine.pytorch, or the reason it is not usable (str)."""
    try:
        return importlib.import_module("transformer_engine.pytorch")
    except Exception as err:  # ImportError, or a build failing at load (no cuDNN, ABI mismatch with torch)
        return f"transformer_engine.pytorch does not import: {type(err).__name__}: {err}"


@functools.cache
def _te_fp8_support() -> tuple[bool, str]:
    te = _te_module()
    if isinstance(te, str):
        return False, te
    if hasattr(te, "is_fp8_available"):
        answer = te.is_fp8_available(return_reason=True)
    else:
        answer = importlib.import_module("transformer_engine.pytorch.fp8").check_fp8_support()
    ok, reason = answer if isinstance(answer, tuple) else (bool(answer), "")
    return bool(ok), str(reason)


def te_usable(fp8: bool = False) -> bool:
    if not torch.cuda.is_available() or isinstance(_te_module(), str):
        return False
    return _te_fp8_support()[0] if fp8 else True


def te_status() -> str:
    """One line for logs and containers/check_image.py."""
    if not torch.cuda.is_available():
        te = _te_module()
        return "no CUDA" + (f" ({te})" if isinstance(te, str) else " (transformer_engine imports)")
    te = _te_module()
    if isinstance(te, str):
        return te
    ok, reason = _te_fp8_support()
    return "usable, FP8 " + ("supported" if ok else f"not supported: {reason}")


def te_version() -> str | None:
    try:
        return importlib.import_module("transformer_engine").__version__
    except Exception:
        return None


# --- apex -------------------------------------------------------------------------------------------------
# What NVIDIA's v4.0 submissions take from apex, by our name: module path and attribute. The last five are
# the anchors perf_tests/kernels times our kernels against. API facts, read in NVIDIA/apex's source
# (the 25.04-25.09 tags and master of 2026-07; unchanged in that span):
#   contrib GroupNorm(num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, act=None), a
#     module: its CUDA kernel only for NHWC (channels_last) 4-D input, groups in SUPPORTED_GROUPS (16, 32),
#     channels in SUPPORTED_CHANNELS, (input, weight) dtypes in SUPPORTED_DTYPES, affine; torch otherwise
#     (kernels/group_norm.py sends those cases to ours instead). act="silu" fuses the SiLU. Its module imports
#     group_norm_cuda and group_norm_v2_cuda (v2 since apex #1887, 2025-03): an apex built without
#     --group_norm fails that import, which apex_op reports.
#   contrib focal_loss.focal_loss(cls_output, cls_targets_at_level, num_positive_sum, num_real_classes, alpha,
#     gamma, label_smoothing=0.0) (apex #1337, 2022-03): CUDA, contiguous; targets int64 class indices with
#     -1 background and -2 ignored; num_positive_sum a one-element float32 tensor; the last dimension a
#     multiple of 16 bytes / element size (fp16: 8 classes, fp32: 4; fp16/fp32/fp64, no bf16) with
#     num_real_classes >= that multiple; returns sum(loss) / num_positive_sum (models/ssd/focal_loss.py).
APEX_OPS = {
    "adam": ("apex.optimizers", "FusedAdam"),
    "lamb": ("apex.optimizers", "FusedLAMB"),
    "distributed_adam": ("apex.contrib.optimizers.distributed_fused_adam", "DistributedFusedAdam"),
    "distributed_lamb": ("apex.contrib.optimizers.distributed_fused_lamb", "DistributedFusedLAMB"),
    "group_norm": ("apex.contrib.group_norm", "GroupNorm"),
    "focal_loss": ("apex.contrib.focal_loss.focal_loss", "focal_loss"),
    "sgd": ("apex.optimizers", "FusedSGD"),
    "adagrad": ("apex.optimizers", "FusedAdagrad"),
    "layer_norm": ("apex.normalization", "FusedLayerNorm"),
    "rms_norm": ("apex.normalization", "FusedRMSNorm"),
}


@functools.cache
def _apex_module():
    try:
        return importlib.import_module("apex")
    except Exception as err:
        return f"apex does not import: {type(err).__name__}: {err}"


def apex_usable() -> bool:
    return torch.cuda.is_available() and not isinstance(_apex_module(), str)


def apex_wanted() -> bool:
    return dispatch.mode() == "apex"


def apex_op(name: str):
    """The apex class for one of APEX_OPS; a RuntimeError that says what is missing otherwise."""
    if name not in APEX_OPS:
        raise ValueError(f"apex op {name!r}: expected one of {', '.join(APEX_OPS)}")
    apex = _apex_module()
    if isinstance(apex, str):
        raise RuntimeError(f"MLPERF_KERNELS=apex asks for apex's {name}, but {apex} (the NGC image has it; "
                           "the CPU set does not: unset MLPERF_KERNELS or use auto/triton/reference)")
    if not torch.cuda.is_available():
        raise RuntimeError(f"MLPERF_KERNELS=apex asks for apex's {name}: apex's fused ops need CUDA")
    module, attr = APEX_OPS[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise RuntimeError(f"MLPERF_KERNELS=apex asks for {module}.{attr}, which this apex build lacks "
                           f"(built without that extension?): {err}") from err


def apex_status() -> dict[str, str]:
    apex = _apex_module()
    if isinstance(apex, str):
        return {name: apex for name in APEX_OPS}
    out = {}
    for name, (module, attr) in APEX_OPS.items():
        try:
            getattr(importlib.import_module(module), attr)
            out[name] = "imports"
        except Exception as err:
            out[name] = f"missing: {type(err).__name__}: {err}"
    return out


# --- optimizer selection ----------------------------------------------------------------------------------
def _apex_adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
               max_grad_norm=None):
    """kernels.optimizers.FusedAdam's constructor on apex's FusedAdam (adam_w_mode = decoupled decay)."""
    if max_grad_norm is not None:
        raise ValueError("apex FusedAdam has no fused gradient clipping: clip before step() or use "
                         "MLPERF_KERNELS=auto for kernels.optimizers.FusedAdam(max_grad_norm=...)")
    return apex_op("adam")(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                           adam_w_mode=decoupled_weight_decay)


def _apex_adamw(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, max_grad_norm=None):
    return _apex_adam(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True, max_grad_norm=max_grad_norm)


def _apex_lamb_groups(params, weight_decay: float, layer_adaptation) -> list[dict]:
    """Our LAMB param groups for apex's FusedLAMB / DistributedFusedLAMB (use_nvlamb=False: the trust ratio only
    for tensors with weight decay, our default rule). What apex cannot express is refused, not changed: a group
    that splits tensors into parts (`segments`, BERT's fused QKV, one ratio per part in ours) or that sets
    layer_adaptation against that rule."""
    groups = list(params)
    if not (groups and isinstance(groups[0], dict)):
        groups = [{"params": groups}]
    cleaned = []
    for group in groups:
        if any(s is not None and len(s) > 1 for s in group.get("segments") or []):
            raise ValueError("apex's LAMB takes one trust ratio per tensor; this group splits tensors into "
                             "parts (segments): use MLPERF_KERNELS=auto for kernels.optimizers.FusedLAMB")
        adapt = group.get("layer_adaptation", layer_adaptation)
        if adapt is not None and adapt != (group.get("weight_decay", weight_decay) != 0):
            raise ValueError(f"apex's LAMB adapts exactly the tensors with weight decay; layer_adaptation="
                             f"{adapt} with weight_decay={group.get('weight_decay', weight_decay)} differs: "
                             "use MLPERF_KERNELS=auto")
        cleaned.append({k: v for k, v in group.items() if k not in ("segments", "layer_adaptation")})
    return cleaned


def _apex_lamb(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0,
               layer_adaptation=None):
    """kernels.optimizers.FusedLAMB's constructor on apex's FusedLAMB."""
    return apex_op("lamb")(_apex_lamb_groups(params, weight_decay, layer_adaptation), lr=lr, betas=betas, eps=eps,
                           weight_decay=weight_decay, max_grad_norm=max_grad_norm, adam_w_mode=True,
                           use_nvlamb=False)


_APEX_OPTIMIZERS = {"adam": _apex_adam, "adamw": _apex_adamw, "lamb": _apex_lamb}


def apex_optimizer(name: str):
    """apex's optimizer behind kernels.optimizers' constructor signature, whatever MLPERF_KERNELS says (what
    optimizer_class gives under MLPERF_KERNELS=apex; perf_tests/kernels times it beside ours)."""
    if name not in _APEX_OPTIMIZERS:
        raise ValueError(f"apex optimizer {name!r}: expected one of {', '.join(_APEX_OPTIMIZERS)}")
    apex_op("lamb" if name == "lamb" else "adam")  # raises the clear error now, not at construction
    return _APEX_OPTIMIZERS[name]


def optimizer_class(name: str):
    """A constructor with kernels.optimizers' signature: apex's optimizer when MLPERF_KERNELS=apex (an error
    when apex is not usable: asked for and absent is never a silent fallback), ours otherwise."""
    from kernels import optimizers

    ours = {"adam": optimizers.FusedAdam, "adamw": optimizers.FusedAdamW, "lamb": optimizers.FusedLAMB}
    if name not in ours:
        raise ValueError(f"optimizer {name!r}: expected one of {', '.join(ours)}")
    return apex_optimizer(name) if apex_wanted() else ours[name]


# --- apex's distributed optimizers (optim.distributed=true) ----------------------------------------------------
# NVIDIA's v4.0 BERT trains with DistributedFusedLAMB and Stable Diffusion with DistributedFusedAdam (specs, "NVIDIA
# v4.0 implementation"). API facts, read in NVIDIA/apex master of 2026-07-08 (6424da3,
# apex/contrib/optimizers/distributed_fused_{adam,lamb}.py and contrib/test/optimizers/):
#   Both do the data-parallel gradient reduction themselves: their constructors hook each parameter's
#     AccumulateGrad node (param.expand_as(param).grad_fn.next_functions[0][0].register_hook) to copy its gradient
#     into flat buckets and reduce them while the backward runs. The model must not also be under DDP.
#   Both set _step_supports_amp_scaling, so torch's GradScaler.step(opt) calls opt.step(grad_scaler=scaler) and
#     they unscale inside the step, skipping it on a non-finite gradient norm (found_inf recorded for update()).
#   DistributedFusedAdam(params, lr, bias_correction, betas, eps, adam_w_mode=True, weight_decay, dtype=fp32
#     (state), grad_sync_dtype, param_sync_dtype, device="cuda", process_group, distributed_process_group (state
#     sharded over it), redundant_process_group (replicated over it; process_group = distributed x redundant),
#     average_grad_sync=True, overlap_grad_sync=True, overlap_param_sync=False, bucket_cap_mb=100,
#     contiguous_param_buffer, contiguous_grad_buffer, store_params, capturable, ...). Accumulation: its no_sync()
#     context stops the overlapped reduction; step() runs grad_sync() for whatever is left. state_dict() (format 2,
#     "DP-independent", apex #1704, 2023-08) gathers the whole state and returns it on every rank.
#   DistributedFusedLAMB(params, lr, bias_correction, grad_averaging, betas, eps, weight_decay, max_grad_norm,
#     adam_w_mode, use_nvlamb, step_supports_amp_scaling=True, overlap_reductions, dwu_group_size (ranks the state
#     is sharded over; 0: torch.cuda.device_count(), one node), dwu_num_blocks, dwu_num_chunks, clip_after_ar=True,
#     ...) always spans the default (world) group and is driven the way its own test drives it, not by step()
#     alone: _lazy_init_stage1() before the first backward (broadcast from rank 0, hooks, flat shards),
#     _lazy_init_stage2() after it (packing in the order the hooks saw; master weights copied from the model
#     unless a state was loaded), the learning rate in the device tensor `_lr` (param_groups' lr is not read),
#     complete_reductions(), set_global_scale(loss scale), then step(grad_scaler=...). set_is_accumulation_step(True)
#     keeps the hooks from reducing. state_dict() is this rank's shard only ({step, fp32_p, fp32_m, fp32_v});
#     load_state_dict rebinds those attributes, which breaks the views stage 1 made of them, so ours copies in place.
class _AdamProtocol:
    """DistributedFusedAdam as runtime/data_parallel_benchmark.py drives a gradient-syncing optimizer: its own
    no_sync(), step(), zero_grad() and gathered state_dict() already fit."""

    syncs_gradients = True


class _LambProtocol:
    """DistributedFusedLAMB behind the same protocol: no_sync() around the micro-batches that only accumulate,
    then step() (which reads param_groups' lr and finishes the reductions), zero_grad(), and a state_dict of
    every rank's shard (gathered: one checkpoint file from rank 0 holds them; loading needs the same ranks)."""

    syncs_gradients = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lazy_init_stage1()
        self._initial_master = None  # master weights as first copied from the model (see load_state_dict)

    def _init_stage2(self) -> None:
        if not self._lazy_init_stage2_done:
            fresh = not self._resume_from_checkpoint
            self._lazy_init_stage2()
            if fresh:
                self._initial_master = self._fp32_p.clone()

    @contextlib.contextmanager
    def no_sync(self):
        self.set_is_accumulation_step(True)
        try:
            yield
        finally:
            self.set_is_accumulation_step(False)
            self._init_stage2()  # after the first backward, so that the hooks recorded the order once

    def step(self, closure=None, grad_scaler=None):
        self._init_stage2()
        self._lr.fill_(self.param_groups[0]["lr"])
        enabled = grad_scaler is not None and grad_scaler.is_enabled()
        self.set_global_scale(grad_scaler._get_scale_async() if enabled else 1.0)
        self.complete_reductions()
        return super().step(closure=closure, grad_scaler=grad_scaler)

    _SHARD_KEYS = ("step", "fp32_p", "fp32_m", "fp32_v")

    def state_dict(self) -> dict:
        import torch.distributed as dist

        own = super().state_dict()
        shards = [{} for _ in range(dist.get_world_size())]
        for key in self._SHARD_KEYS:
            parts = [torch.empty_like(own[key]) for _ in shards]
            dist.all_gather(parts, own[key].contiguous())
            for shard, part in zip(shards, parts):
                shard[key] = part
        return {"rank_shards": shards, "initialized": self._lazy_init_stage2_done}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        import torch.distributed as dist

        shards, rank = state["rank_shards"], dist.get_rank()
        if len(shards) != dist.get_world_size():
            raise ValueError(f"DistributedFusedLAMB state of {len(shards)} ranks cannot load on "
                             f"{dist.get_world_size()}: its shards follow the world size")
        shard = shards[rank]
        for key in self._SHARD_KEYS:
            getattr(self, f"_{key}").copy_(shard[key])
        if not state["initialized"]:  # saved before any step: the master weights are the model's initial ones
            if self._lazy_init_stage2_done:
                self._fp32_p.copy_(self._initial_master)
            return
        if not self._lazy_init_stage2_done:
            self._resume_from_checkpoint = True  # stage 2 then keeps the loaded master weights


@functools.cache
def _with_protocol(base: type, protocol: type) -> type:
    return type(base.__name__, (protocol, base), {})


def _distributed_adamw(base, params, *, process_group, shard_group, replica_group, lr=1e-3, betas=(0.9, 0.999),
                       eps=1e-8, weight_decay=1e-2, max_grad_norm=None, **apex_options):
    """kernels.optimizers.FusedAdamW's constructor (plus the groups) on DistributedFusedAdam."""
    if max_grad_norm is not None:
        raise ValueError("DistributedFusedAdam clips through its own clip_grad_norm(); max_grad_norm is not taken")
    return _with_protocol(base, _AdamProtocol)(
        params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adam_w_mode=True,
        process_group=process_group, distributed_process_group=shard_group, redundant_process_group=replica_group,
        **apex_options)


def _distributed_lamb(base, params, *, process_group, shard_group, replica_group, lr=1e-3, betas=(0.9, 0.999),
                      eps=1e-6, weight_decay=0.01, max_grad_norm=1.0, layer_adaptation=None, **apex_options):
    """kernels.optimizers.FusedLAMB's constructor on DistributedFusedLAMB, which always spans the world: the
    data-parallel group must be the world, and the state is sharded over `shard_group`'s size (dwu_group_size)."""
    import torch.distributed as dist

    groups = _apex_lamb_groups(params, weight_decay, layer_adaptation)
    if dist.get_world_size(process_group) != dist.get_world_size():
        raise ValueError("DistributedFusedLAMB reduces over the whole world; the data-parallel group is smaller")
    shard_size = dist.get_world_size(shard_group) if shard_group is not None else dist.get_world_size()
    # clip_after_ar: the global-norm clip on the averaged gradient, as ours and the reference do.
    return _with_protocol(base, _LambProtocol)(
        groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
        adam_w_mode=True, use_nvlamb=False, clip_after_ar=True, dwu_group_size=shard_size, **apex_options)


_DISTRIBUTED = {"adamw": ("distributed_adam", _distributed_adamw), "lamb": ("distributed_lamb", _distributed_lamb)}


def distributed_optimizer_class(name: str):
    """For optim.distributed=true: apex's distributed optimizer behind kernels.optimizers' constructor signature
    plus process_group (data parallel), shard_group (the state's shards) and replica_group (None: one shard set)
    keywords and apex's own options. The object says `syncs_gradients` and has `no_sync()`:
    runtime/data_parallel.replicate(ddp=False) and DataParallelBenchmark use them instead of DDP's. Asked for
    and not usable is a one-line ValueError (a config error), never our optimizer instead: ours has no sharded
    state and would need DDP."""
    if name not in _DISTRIBUTED:
        raise ValueError(f"distributed optimizer {name!r}: expected one of {', '.join(_DISTRIBUTED)}")
    op, build = _DISTRIBUTED[name]
    module, attr = APEX_OPS[op]
    if not apex_wanted():
        raise ValueError(f"optim.distributed=true trains with apex's {attr}: set MLPERF_KERNELS=apex on the GPU "
                         f"image (it is {dispatch.mode()!r} here), or set optim.distributed=false")
    try:
        base = apex_op(op)
    except RuntimeError as err:
        raise ValueError(f"optim.distributed=true: {err}") from err
    return functools.partial(build, base)
