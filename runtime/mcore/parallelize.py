"""The megatron layout of a run (GPT-3, Llama 2): parallel_state from our ParallelLayout, DDP-wrapped chunks,
the optimizer.

    state = init_megatron(layout, virtual_pp, seed)      # parallel_state + model-parallel RNG seeds
    chunks = wrap_ddp(chunks, config, distributed_optimizer=...)
    optimizer = build_optimizer(chunks, optim_cfg, config, ...)

Rank order: runtime.parallel.ParallelLayout puts tp fastest, then cp, dp, pp; megatron's order string
"tp-cp-ep-dp-pp" is the same, and `init_megatron` checks that both agree on this rank's coordinates.

Optimizer: on CUDA, megatron's (distributed when asked: ZeRO-1 sharded fp32 master weights and Adam
moments, bf16 params) with its own clipping. On CPU megatron's optimizer asserts CUDA tensors, so
`ReplicatedAdamW` does the same maths by hand: the global gradient norm over the model-parallel group
counting each parameter once (not the tied copy of the embedding, not TP-replicated norms/biases twice),
clip to `clip_grad`, then AdamW (decoupled weight decay, as megatron's Adam) on every parameter.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.optimizer import get_param_id_to_sharded_param_map, optim_state_to_sharding_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.tensor_parallel.layers import param_is_not_tensor_parallel_duplicate
from megatron.core.transformer.module import param_is_not_shared

from runtime.mcore import cpu_shim
from runtime.mcore.config import AdamConfig
from runtime.parallel import ParallelLayout


def init_megatron(layout: ParallelLayout, virtual_pp: int, seed: int) -> None:
    cpu_shim.apply()
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if not dist.is_initialized():
        # A single process still needs a (one-rank) default group for megatron's collectives.
        store = dist.HashStore()
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", store=store, rank=0,
                                world_size=1)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=virtual_pp if layout.pp > 1 and virtual_pp > 1 else None,
        context_parallel_size=layout.cp, order="tp-cp-ep-dp-pp")
    mine = layout.coords()
    theirs = {"tp": parallel_state.get_tensor_model_parallel_rank(),
              "pp": parallel_state.get_pipeline_model_parallel_rank(),
              "dp": parallel_state.get_data_parallel_rank(),
              "cp": parallel_state.get_context_parallel_rank()}
    if mine != theirs:
        raise RuntimeError(f"megatron's rank coordinates {theirs} disagree with the run layout's {mine}")
    layout.adopt_groups(parallel_state.get_data_parallel_group())  # one set of groups: megatron's
    # Same seed within a TP group for replicated weights, offset per TP rank for the sharded ones.
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_megatron() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()


def wrap_ddp(chunks, config, *, distributed_optimizer: bool, grad_reduce_in_fp32: bool):
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=grad_reduce_in_fp32, overlap_grad_reduce=torch.cuda.is_available(),
        overlap_param_gather=distributed_optimizer, use_distributed_optimizer=distributed_optimizer,
        bucket_size=200_000_000 if torch.cuda.is_available() else None)  # NVIDIA: 200 MB buckets
    wrapped = []
    for i, chunk in enumerate(chunks):
        # megatron builds the learned position embedding as a plain fp32 nn.Embedding; Megatron-LM's
        # Float16Module would cast the whole model. Cast just the parameters, so FP8 scaling buffers stay fp32.
        for p in chunk.parameters():
            if p.dtype != config.params_dtype:
                p.data = p.data.to(config.params_dtype)
        if torch.cuda.is_available():
            chunk = chunk.cuda()
        # Only the first chunk's buckets are bucketed; later chunks' grads are reduced as they finish.
        wrapped.append(DistributedDataParallel(config, ddp_config, chunk, disable_bucketing=i > 0))
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = [c.no_sync for c in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
    if distributed_optimizer:
        config.param_sync_func = [c.start_param_sync for c in wrapped] if len(wrapped) > 1 \
            else wrapped[0].start_param_sync
    return wrapped


class ReplicatedAdamW:
    """CPU optimizer with megatron's semantics (see the module docstring); param_groups carry the lr."""

    def __init__(self, chunks, o: AdamConfig):
        self.chunks = chunks
        self.params = [p for c in chunks for p in c.parameters() if p.requires_grad]
        self.clip_grad = o.clip_grad
        self.inner = torch.optim.AdamW(self.params, lr=o.base_lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                       weight_decay=o.weight_decay, foreach=True)
        self.last_grad_norm = 0.0

    @property
    def param_groups(self):
        return self.inner.param_groups  # load_state_dict replaces the list: never hold on to it

    def zero_grad(self) -> None:
        for c in self.chunks:
            c.zero_grad_buffer()
        for p in self.params:
            p.grad = None

    def step(self) -> float:
        grads = []
        for p in self.params:
            p.grad = p.main_grad.to(p.dtype)
            grads.append(p.grad)
        counted = [p.grad for p in self.params if param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p)]
        sq = (torch.stack([g.double().square().sum() for g in counted]).sum() if counted
              else torch.zeros((), dtype=torch.float64))
        if dist.is_initialized() and parallel_state.get_model_parallel_group().size() > 1:
            dist.all_reduce(sq, group=parallel_state.get_model_parallel_group())
        norm = sq.sqrt()
        if self.clip_grad > 0:
            coeff = torch.clamp(self.clip_grad / (norm + 1e-6), max=1.0).to(grads[0].dtype)
            torch._foreach_mul_(grads, coeff)
        self.inner.step()
        self.last_grad_norm = float(norm)
        return self.last_grad_norm

    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
        """Adam moments as ShardedTensors that follow their parameter's TP/PP sharding (megatron's layout:
        `optimizer.state.exp_avg.<param key>`), so a checkpoint reloads under any layout; the shared step
        count is a plain value; megatron keeps each group's parameter list local (it differs per stage)."""
        if is_loading:
            for p in self.params:
                if not self.inner.state[p]:
                    self.inner.state[p] = {"step": torch.zeros(()), "exp_avg": torch.zeros_like(p),
                                           "exp_avg_sq": torch.zeros_like(p)}
        state = self.inner.state_dict()
        steps = {float(s["step"]) for s in state["state"].values()}
        if len(steps) > 1:
            raise RuntimeError(f"Adam step counts differ between parameters: {sorted(steps)}")
        id_map = get_param_id_to_sharded_param_map(model_sharded_state_dict, self.params)
        if len(id_map) != len(self.params):
            raise RuntimeError(f"{len(self.params) - len(id_map)} optimized parameters have no sharded model key")
        optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
        state["state"]["common_step"] = int(steps.pop()) if steps else 0
        return state

    def load_state_dict(self, state: dict, step: int | None = None) -> None:
        """`state` as `sharded_state_dict` built it, tensors filled in; `step` overrides the saved count."""
        state = dict(state, state=dict(state["state"]))
        saved = state["state"].pop("common_step", 0)
        common_step = saved if step is None else step
        state["state"] = {i: dict(s, step=torch.tensor(float(common_step))) for i, s in state["state"].items()}
        self.inner.load_state_dict(state)


class MegatronOptimizer:
    """megatron-core's optimizer (CUDA) behind the same small interface as ReplicatedAdamW."""

    def __init__(self, chunks, o: AdamConfig, config, *, distributed_optimizer: bool):
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        opt_cfg = OptimizerConfig(optimizer="adam", lr=o.base_lr, min_lr=o.base_lr * o.min_lr_ratio,
                                  weight_decay=o.weight_decay, adam_beta1=o.beta1, adam_beta2=o.beta2,
                                  adam_eps=o.eps, clip_grad=o.clip_grad, bf16=config.bf16,
                                  params_dtype=config.params_dtype,
                                  use_distributed_optimizer=distributed_optimizer)
        # An empty dict, not None: megatron 0.16 reads None as its standard overrides (wd_mult 0 for biases
        # and 1-D parameters); the reference decays those too (--do-layernorm-bias-weight-decay).
        self.inner = get_megatron_optimizer(opt_cfg, chunks, config_overrides={})
        self.chunks = chunks
        self.last_grad_norm = 0.0

    @property
    def param_groups(self):
        return self.inner.param_groups

    def zero_grad(self) -> None:
        for c in self.chunks:
            c.zero_grad_buffer()
        self.inner.zero_grad()

    def step(self) -> float:
        ok, grad_norm, _ = self.inner.step()
        if not ok:
            raise RuntimeError("megatron optimizer step skipped (non-finite gradients)")
        self.last_grad_norm = float(grad_norm or 0.0)
        return self.last_grad_norm

    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
        # The distributed optimizer's model-shaped format: `optimizer.state.{param,exp_avg,exp_avg_sq}.<key>`,
        # reshardable to any layout (its flat per-bucket formats are tied to the DP size).
        return self.inner.sharded_state_dict(model_sharded_state_dict, is_loading=is_loading,
                                             metadata={"distrib_optim_sharding_type": "fully_reshardable"})

    def load_state_dict(self, state: dict, step: int | None = None) -> None:
        self.inner.load_state_dict(state)
        if step is None:
            return
        # The reference checkpoint's Adam step (4000) replaces whatever count the loaded state carried.
        for opt in getattr(self.inner, "chained_optimizers", [self.inner]):
            torch_opt = opt.optimizer
            for group in torch_opt.param_groups:
                if "step" in group:
                    group["step"] = step
            for s in torch_opt.state.values():
                if "step" in s:
                    s["step"] = torch.full_like(s["step"], step) if torch.is_tensor(s["step"]) else step


def build_optimizer(chunks, o: AdamConfig, config, *, distributed_optimizer: bool):
    if torch.cuda.is_available():
        return MegatronOptimizer(chunks, o, config, distributed_optimizer=distributed_optimizer)
    return ReplicatedAdamW(chunks, o)
