"""What megatron-core 0.16.1 needs to run on CPU over gloo, in one place, applied only without CUDA.

megatron-core assumes CUDA in a few spots that matter to the debug runs and tests:
  * `torch.cuda.current_device()` names the device of p2p buffers and shape exchanges in the pipeline
    schedules: without CUDA it raises, so it answers "cpu" here;
  * `torch.cuda.synchronize()` after batched p2p: a no-op without CUDA;
  * the RNG tracker keeps CUDA generator states: `_get/_set_cuda_rng_state` are pointed at the CPU
    generator (dropout is 0 for GPT-3, so only recompute's save/restore of states goes through them);
  * the schedules create their token counter with `device="cuda"` hard-coded: their module gets a view of
    `torch` whose `zeros` maps "cuda" to "cpu";
  * with PP and tied embeddings, LanguageModule moves the shared weight `.cuda()` before all-reducing it
    between the first and last stage: during that one method `Tensor.cuda` returns the tensor itself;
  * under context parallelism, RoPE's per-CP-rank slice of the position embedding pins memory and moves its
    index to CUDA: the same slice (chunks rank and 2 cp - 1 - rank of 2 cp) on CPU.
Still CUDA-only after this shim (kept for CUDA, replaced on CPU by runtime/mcore/parallelize.py): the
distributed optimizer and megatron's grad clipping (both assert CUDA tensors).

`apply()` is idempotent and does nothing when CUDA is available, so GPU runs use megatron-core untouched.
"""

from __future__ import annotations

import contextlib
import types

import torch

_applied = False


class _TorchOnCpu(types.ModuleType):
    """`torch` as seen by megatron's schedule module: identical except `zeros(..., device="cuda")`."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, device=None, **kwargs):
        if device is not None and str(device).startswith("cuda"):
            device = "cpu"
        return torch.zeros(*args, device=device, **kwargs)


def _get_rng_state(device=None, clone=False, graph_safe=False):
    return torch.get_rng_state()


def _set_rng_state(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


class CpuRngTracker:
    """megatron's CudaRNGStatesTracker contract (add, fork, get/set_states, reset) over the CPU generator."""

    def __init__(self, *args, **kwargs):
        self.reset()

    def reset(self):
        self.states_, self.seeds_ = {}, set()
        self._is_initialized = False

    def is_initialized(self):
        return self._is_initialized

    def get_states(self):
        return dict(self.states_)

    def set_states(self, states):
        self._is_initialized = True
        self.states_ = states

    def add(self, name, seed):
        if seed in self.seeds_ or name in self.states_:
            raise RuntimeError(f"rng state {name!r} (seed {seed}) already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name!r} was never added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


@contextlib.contextmanager
def _cuda_is_identity():
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def _on_cpu(method):
    def wrapper(*args, **kwargs):
        with _cuda_is_identity():
            return method(*args, **kwargs)

    return wrapper


def _pos_emb_on_this_cp_rank(pos_emb: torch.Tensor, seq_dim: int, cp_group) -> torch.Tensor:
    cp, rank = cp_group.size(), cp_group.rank()
    chunks = pos_emb.view(*pos_emb.shape[:seq_dim], 2 * cp, -1, *pos_emb.shape[seq_dim + 1:])
    picked = chunks.index_select(seq_dim, torch.tensor([rank, 2 * cp - 1 - rank]))
    return picked.reshape(*pos_emb.shape[:seq_dim], -1, *pos_emb.shape[seq_dim + 1:])


def apply() -> bool:
    """Patch megatron-core for CPU when there is no CUDA; returns whether the shim is active."""
    global _applied
    if torch.cuda.is_available():
        return False
    if _applied:
        return True
    from megatron.core.models.common.embeddings import rotary_pos_embedding
    from megatron.core.models.common.language_module.language_module import LanguageModule
    from megatron.core.pipeline_parallel import p2p_communication, schedules
    from megatron.core.tensor_parallel import random as mp_random

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda device=None: None
    mp_random._get_cuda_rng_state = _get_rng_state
    mp_random._set_cuda_rng_state = _set_rng_state
    mp_random.CudaRNGStatesTracker = CpuRngTracker
    mp_random._CUDA_RNG_STATE_TRACKER = CpuRngTracker()
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    schedules.torch = _TorchOnCpu()
    LanguageModule.setup_embeddings_and_output_layer = _on_cpu(LanguageModule.setup_embeddings_and_output_layer)
    rotary_pos_embedding.get_pos_emb_on_this_cp_rank = _pos_emb_on_this_cp_rank
    del p2p_communication  # imported so its torch.cuda.current_device calls resolve to the patch above
    _applied = True
    return True
