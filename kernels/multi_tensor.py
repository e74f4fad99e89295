"""Flat multi-tensor buffers and per-tensor reductions: the substrate of the fused optimizers.

apex's multi_tensor_apply hands a CUDA kernel a table of tensor addresses. Here the tensors of one
dtype instead live in one flat buffer (parameters, gradients and each optimizer state alike), each
starting at a multiple of BLOCK elements, so that block b of every buffer belongs to exactly one tensor,
`block_tensor[b]`. An optimizer kernel is then one launch over a run of blocks that reads its
per-tensor scalars (trust ratio, active flag) through that table; padding elements are zero in every
buffer and stay zero under every update rule here.

`FlatOptimizer` is the base of the fused optimizers (optimizers.py): it moves the parameters into the
flat buffers (each parameter becomes a view, in its own memory format), keeps `.grad` pointing into the
flat gradient buffer, creates per-parameter state entries as views of flat fp32 states, and keeps
torch's state-dict format. A parameter that is itself a view of other memory (torchrec's
TableBatchedEmbeddingSlice: a data-parallel table is a slice of its batched embedding kernel's weights,
which the forward reads) cannot move without forking from that memory: it stays where it is ("pinned"),
and each step copies it and its gradient into the flat buffers and the updated values back.

`segment_sumsq` gives per-tensor sums of squares of several flat buffers in two deterministic passes
(no atomics, so a step is bit-reproducible): one program per block writes a partial sum, then one program
per tensor adds its blocks' partials.

BLOCK = 1024 elements: small enough that padding costs little for small tensors (ResNet-50: 161
tensors, <= 0.6 MB of padding in fp32), large enough to amortise the table lookups. Not tuned on a GPU
(none was available): bench_optimizers.py reports the step's GB/s to check it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import use_triton

BLOCK = 1024
SEGMENT_CHUNK = 256


class FlatLayout:
    """Where each of `shapes` lives in a flat buffer of `num_blocks * BLOCK` elements.

    `groups` gives the number of consecutive tensors in each optimizer param group; every group then
    covers one contiguous run of blocks (`group_blocks[i] = (first_block, num_blocks)`), so one kernel
    launch per group can take the group's hyperparameters as scalar arguments.
    """

    def __init__(self, shapes: list[torch.Size], groups: list[int], device: torch.device,
                 strides: list[tuple[int, ...]] | None = None):
        self.shapes = [torch.Size(s) for s in shapes]
        self.numels = [s.numel() for s in self.shapes]
        # Views keep each tensor's memory format (a channels_last conv weight stays channels_last); the
        # elementwise rules and the norms do not care in which order a tensor's elements lie.
        self.strides = strides or [_contiguous_strides(s) for s in self.shapes]
        blocks = [triton.cdiv(n, BLOCK) for n in self.numels]
        firsts = [sum(blocks[:i]) for i in range(len(blocks))]
        self.num_blocks = sum(blocks)
        self.offsets = [f * BLOCK for f in firsts]
        self.block_tensor = torch.repeat_interleave(torch.arange(len(blocks), dtype=torch.int32),
                                                    torch.tensor(blocks, dtype=torch.int64)).to(device)
        self.first_block = torch.tensor(firsts, dtype=torch.int32).to(device)
        self.block_count = torch.tensor(blocks, dtype=torch.int32).to(device)
        self.group_blocks, self.group_tensors = [], []
        start = 0
        for count in groups:
            first = firsts[start] if count else 0
            self.group_blocks.append((first, sum(blocks[start:start + count])))
            self.group_tensors.append((start, count))
            start += count
        self.device = device

    @property
    def num_tensors(self) -> int:
        return len(self.shapes)

    def zeros(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(self.num_blocks * BLOCK, dtype=dtype, device=self.device)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat.as_strided(s, st, o) for o, s, st in zip(self.offsets, self.shapes, self.strides)]

    def expand(self, per_tensor: torch.Tensor, first_block: int, num_blocks: int) -> torch.Tensor:
        """Per-tensor values broadcast to every element of a run of blocks (reference path only)."""
        owners = self.block_tensor[first_block:first_block + num_blocks].long()
        return per_tensor[..., owners].repeat_interleave(BLOCK, dim=-1)


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def dense_strides(t: torch.Tensor) -> tuple[int, ...]:
    """t's strides if t is dense in a standard memory format, else contiguous strides."""
    formats = (torch.channels_last,) if t.dim() == 4 else (torch.channels_last_3d,) if t.dim() == 5 else ()
    if t.is_contiguous() or any(t.is_contiguous(memory_format=f) for f in formats):
        return tuple(t.stride())
    return _contiguous_strides(t.shape)


@triton.jit
def _block_sumsq_kernel(A, B, PARTIAL, num_blocks, HAS_B: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    blk = tl.program_id(0)
    offs = blk.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    a = tl.load(A + offs).to(tl.float32)
    tl.store(PARTIAL + blk, tl.sum(a * a, axis=0))
    if HAS_B:
        b = tl.load(B + offs).to(tl.float32)
        tl.store(PARTIAL + num_blocks + blk, tl.sum(b * b, axis=0))


@triton.jit
def _segment_sum_kernel(PARTIAL, FIRST, COUNT, OUT, num_blocks, num_tensors, CHUNK: tl.constexpr):
    t = tl.program_id(0)
    row = tl.program_id(1)  # which buffer's partials
    first = tl.load(FIRST + t)
    count = tl.load(COUNT + t)
    acc = tl.zeros([CHUNK], dtype=tl.float32)
    for start in range(0, count, CHUNK):
        idx = start + tl.arange(0, CHUNK)
        acc += tl.load(PARTIAL + row * num_blocks + first + idx, mask=idx < count, other=0.0)
    tl.store(OUT + row * num_tensors + t, tl.sum(acc, axis=0))


def block_sumsq(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """(k, num_blocks) fp32 sums of squares of each BLOCK of the flat buffers a (and b)."""
    num_blocks = a.numel() // BLOCK
    if not use_triton(a, b):
        return torch.stack([t.view(-1, BLOCK).float().pow(2).sum(1) for t in (a, b) if t is not None])
    partial = torch.empty((1 if b is None else 2, num_blocks), dtype=torch.float32, device=a.device)
    if num_blocks:
        _block_sumsq_kernel[(num_blocks,)](a, b, partial, num_blocks, HAS_B=b is not None, BLOCK_SIZE=BLOCK)
    return partial


def segment_sum(layout: FlatLayout, partial: torch.Tensor) -> torch.Tensor:
    """(k, num_tensors) per-tensor sums of per-block values (k, num_blocks)."""
    k = partial.shape[0]
    if not use_triton(partial):
        out = torch.zeros((k, layout.num_tensors), dtype=torch.float32, device=partial.device)
        return out.index_add_(1, layout.block_tensor.long(), partial)
    out = torch.empty((k, layout.num_tensors), dtype=torch.float32, device=partial.device)
    if layout.num_tensors:
        _segment_sum_kernel[(layout.num_tensors, k)](partial, layout.first_block, layout.block_count, out,
                                                     layout.num_blocks, layout.num_tensors, CHUNK=SEGMENT_CHUNK)
    return out


def segment_sumsq(layout: FlatLayout, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """(k, num_tensors) fp32 per-tensor sums of squares of flat buffers laid out by `layout`."""
    return segment_sum(layout, block_sumsq(a, b))


def _owns_its_memory(p: torch.Tensor) -> bool:
    """False for a view of another tensor or a tensor sharing a larger storage: moving such a parameter
    into a flat buffer would silently detach it from the memory its module reads."""
    return (p._base is None and p.storage_offset() == 0
            and p.untyped_storage().nbytes() <= p.numel() * p.element_size())


class _Flat:
    """The parameters of one (device, dtype), in param-group order, and their flat buffers."""

    def __init__(self, params: list[torch.nn.Parameter], group_counts: list[int]):
        self.params = params
        self.layout = FlatLayout([p.shape for p in params], group_counts, params[0].device,
                                 [dense_strides(p) for p in params])
        self.param = self.layout.zeros(params[0].dtype)
        self.param_views = self.layout.views(self.param)
        self.pinned = [not _owns_its_memory(p) for p in params]
        for p, view, pinned in zip(params, self.param_views, self.pinned):
            view.copy_(p.detach())
            if not pinned:
                p.data = view
        self.grad = self.layout.zeros(params[0].dtype)
        self.grad_views = self.layout.views(self.grad)
        self.grad_dirty = [True] * len(params)
        self.states: dict[str, torch.Tensor] = {}
        self.state_views: dict[str, list[torch.Tensor]] = {}
        self._active_cache: tuple[tuple[bool, ...], torch.Tensor] | None = None

    def sync(self) -> tuple[list[bool], torch.Tensor | None]:
        """Bring parameters and gradients into the flat buffers; the per-tensor active flags (a
        gradient exists), and their device copy when some are off."""
        flags = []
        for i, (p, pview, gview) in enumerate(zip(self.params, self.param_views, self.grad_views)):
            if self.pinned[i]:
                pview.copy_(p.detach())  # the parameter's own memory is the master copy
            elif p.data_ptr() != pview.data_ptr():  # p.data was replaced (model.to, load with assign=True)
                pview.copy_(p.detach())
                p.data = pview
            grad = p.grad
            if grad is None:
                if self.grad_dirty[i]:  # keep global norms free of stale values
                    gview.zero_()
                    self.grad_dirty[i] = False
                flags.append(False)
                continue
            if grad.data_ptr() != gview.data_ptr():
                gview.copy_(grad)
                if not self.pinned[i]:
                    p.grad = gview
            self.grad_dirty[i] = True
            flags.append(True)
        if all(flags):
            return flags, None
        key = tuple(flags)
        if self._active_cache is None or self._active_cache[0] != key:
            self._active_cache = (key, torch.tensor(flags, dtype=torch.int8).to(self.layout.device))
        return flags, self._active_cache[1]

    def write_back(self, flags: list[bool]) -> None:
        """The updated values of pinned parameters back into their own memory."""
        for p, pview, pinned, active in zip(self.params, self.param_views, self.pinned, flags):
            if pinned and active:
                p.detach().copy_(pview)

    def state(self, name: str, fill: float = 0.0) -> torch.Tensor:
        if name not in self.states:
            self.states[name] = self.layout.zeros(torch.float32).fill_(fill)
            self.state_views[name] = self.layout.views(self.states[name])
        return self.states[name]


class FlatOptimizer(torch.optim.Optimizer):
    """Base: flat layout, gradient sync, lazily created per-parameter state views, torch state dicts."""

    state_names: tuple[str, ...] = ()
    state_fill: float = 0.0

    def __init__(self, params, defaults: dict):
        super().__init__(params, defaults)
        buckets: dict[tuple, list[tuple[int, torch.nn.Parameter]]] = {}
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                buckets.setdefault((p.device, p.dtype), []).append((index, p))
        self._flats = [_Flat([p for _, p in entries],
                             [sum(1 for i, _ in entries if i == g) for g in range(len(self.param_groups))])
                       for entries in buckets.values()]

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "_flats", None) is not None:
            raise NotImplementedError("the flat layout is fixed at construction: pass every group then")
        super().add_param_group(param_group)

    def _groups(self, flat: _Flat):
        """(group, first_block, num_blocks, first_tensor, num_tensors) for the groups present in flat."""
        for group, blocks, tensors in zip(self.param_groups, flat.layout.group_blocks, flat.layout.group_tensors):
            if tensors[1]:
                yield group, blocks[0], blocks[1], tensors[0], tensors[1]

    def _register_state(self, flat: _Flat, flags: list[bool]) -> None:
        for name in self.state_names:
            flat.state(name, self.state_fill)
        for i, p in enumerate(flat.params):
            if flags[i] and not self.state[p]:
                self.state[p] = {name: flat.state_views[name][i] for name in self.state_names}

    def zero_grad(self, set_to_none: bool = True) -> None:
        if set_to_none:
            return super().zero_grad(set_to_none=True)
        for flat in self._flats:
            flat.grad.zero_()  # one fill for every gradient that is still a view of the flat buffer
            for p, gview in zip(flat.params, flat.grad_views):
                if p.grad is not None and p.grad.data_ptr() != gview.data_ptr():
                    p.grad.zero_()

    def load_state_dict(self, state_dict: dict) -> None:
        # Keep the saved tensors: torch's loader casts states to the parameters' dtype, and the flat
        # states are fp32 whatever that dtype is.
        saved = state_dict["state"]
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        position = {id(p): i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        super().load_state_dict(state_dict)
        for flat in self._flats:
            for name in self.state_names:
                # Reset first: a parameter the saved state has no entry for (e.g. a state saved before the
                # first step, restored after a warm-up) must start again from the fill value, not keep ours.
                flat.state(name, self.state_fill).fill_(self.state_fill)
            for i, p in enumerate(flat.params):
                entry = saved.get(ids[position[id(p)]], {})
                for name in self.state_names:
                    if name in entry:
                        flat.state_views[name][i].copy_(entry[name])
                        self.state[p][name] = flat.state_views[name][i]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        synced = [(flat, *flat.sync()) for flat in self._flats]
        self._prepare(synced)
        for flat, flags, active in synced:
            if any(flags):
                self._register_state(flat, flags)
                self._step_flat(flat, active)
                flat.write_back(flags)
        return loss

    def _prepare(self, synced) -> None:
        """Work that needs every bucket before the updates (global gradient norm, step counters)."""

    def _step_flat(self, flat: _Flat, active: torch.Tensor | None) -> None:
        raise NotImplementedError

    def _global_grad_norm(self, synced) -> torch.Tensor:
        device = self._flats[0].layout.device
        total = torch.zeros((), dtype=torch.float32, device=device)
        for flat, _, _ in synced:
            total = total + block_sumsq(flat.grad).sum().to(device)
        return total.sqrt()
