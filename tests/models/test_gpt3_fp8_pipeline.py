"""GPT-3's FP8 GEMMs without Transformer Engine (runtime/mcore/fp8_linear.py, kernels/fp8.py) with several
micro-batches in flight, as pipeline parallelism runs them: each forward's scales are fixed when it runs
(values saved for its backward, not views of buffers that later forwards write), every micro-batch's amax
reaches the history, the history rolls once per optimizer step, and a zero or vanishing amax never gives an
infinite scale (TE's delayed scaling). The end-to-end check: a two-rank PP=2 FP8 debug run trains as bf16."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import read_metrics, spawn_ranks, train_command

from kernels.fp8 import FP8Linear, Fp8Recipe
from runtime.loop import EXIT_NOT_CONVERGED

IN, OUT, SEQ, BATCH = 64, 48, 8, 4  # _scaled_mm wants every GEMM dimension a multiple of 16: M = SEQ * BATCH


def _cpu_scaled_mm() -> bool:
    try:
        one = torch.tensor(1.0)
        a = torch.zeros(16, 16, dtype=torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError):
        return False


needs_fp8_gemm = pytest.mark.skipif(not _cpu_scaled_mm(), reason="this torch build has no CPU torch._scaled_mm")


# --- one FP8 layer, driven by hand ------------------------------------------------------------------
@pytest.fixture(scope="module")
def megatron_tp1():
    """megatron's parallel state for one process (TP=1), as the benchmark sets it up."""
    from runtime.mcore.parallelize import destroy_megatron, init_megatron
    from runtime.parallel import ParallelLayout

    init_megatron(ParallelLayout(1, 0), 1, seed=0)
    yield
    destroy_megatron()


class _Layer:
    """One FP8 GEMM layer behind a common face: kernels' FP8Linear, or megatron's column / row parallel
    linear with runtime/mcore's FP8 `_forward_impl` (TP=1, bf16 parameters on the CPU)."""

    def __init__(self, kind: str):
        torch.manual_seed(0)
        self.kind = kind
        if kind == "FP8Linear":
            self.module = FP8Linear(IN, OUT, recipe=Fp8Recipe(amax_history_len=4), dtype=torch.bfloat16)
            self.history, self.scale = self.module.amax_history, self.module.scale
            self.update = self.module.update_scales
            return
        from megatron.core.transformer.transformer_config import TransformerConfig

        from runtime.mcore.fp8_linear import Fp8ColumnParallelLinear, Fp8RowParallelLinear

        config = TransformerConfig(num_layers=1, hidden_size=IN, num_attention_heads=4, bf16=True,
                                   params_dtype=torch.bfloat16, use_cpu_initialization=True,
                                   gradient_accumulation_fusion=False, fp8_amax_history_len=4,
                                   fp8_amax_compute_algo="max")
        init = torch.nn.init.xavier_normal_
        if kind == "column":
            self.module = Fp8ColumnParallelLinear(IN, OUT, config=config, init_method=init, bias=True,
                                                  gather_output=False)
        else:
            self.module = Fp8RowParallelLinear(IN, OUT, config=config, init_method=init, bias=True,
                                               input_is_parallel=True, skip_bias_add=False)
        with torch.no_grad():
            self.module.bias.normal_()
        self.history, self.scale = self.module.fp8_amax_history, self.module.fp8_scale
        self.update = self.module.update_fp8_scales

    def __call__(self, x):
        out = self.module(x)
        return out[0] if isinstance(out, tuple) else out

    def params(self):
        return [self.module.weight, self.module.bias]

    def zero_grad(self):
        for p in self.params():
            p.grad = None


KINDS = ["FP8Linear", "column", "row"]


@pytest.fixture(params=KINDS)
def layer(request):
    if request.param != "FP8Linear":
        request.getfixturevalue("megatron_tp1")
    return _Layer(request.param)


def _micro_batch(seed: int, x_scale: float, g_scale: float):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(SEQ, BATCH, IN, generator=g) * x_scale).to(torch.bfloat16).requires_grad_()
    dy = (torch.randn(SEQ, BATCH, OUT, generator=g) * g_scale).to(torch.bfloat16)
    return x, dy


@needs_fp8_gemm
def test_micro_batches_in_flight_get_the_gradients_of_separate_passes_with_their_own_scales(layer):
    """Two forwards before either backward (1F1B's warm-up), the scales changed between them: each
    micro-batch's output and input gradient are those of its own forward/backward pass with the scales its
    forward ran with, and the parameter gradients are the two passes' sums. (Before the fix the backward
    raised autograd's in-place version error: the history and scales were saved as buffer views.)"""
    scales = [torch.tensor([8.0, 64.0, 1024.0]), torch.tensor([2.0, 128.0, 8192.0])]
    batches = [_micro_batch(1, 4.0, 1e-3), _micro_batch(2, 1.0, 1e-2)]

    reference = []  # separate passes, one micro-batch at a time
    for scale, (x, dy) in zip(scales, batches):
        layer.scale.copy_(scale)
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        y.backward(dy)
        reference.append((y.detach(), x.grad.clone(), [p.grad.clone() for p in layer.params()]))
        x.grad = None

    layer.zero_grad()
    outs = []
    for scale, (x, _) in zip(scales, batches):
        layer.scale.copy_(scale)
        outs.append(layer(x))
    layer.scale.fill_(1.0)  # what the buffer holds by the time the backwards run changes nothing
    for (_, dy), y in reversed(list(zip(batches, outs))):
        y.backward(dy)

    for i, ((x, _), y, (y_ref, dx_ref, _)) in enumerate(zip(batches, outs, reference)):
        assert torch.equal(y.detach(), y_ref), f"micro-batch {i}: output"
        assert torch.equal(x.grad, dx_ref), f"micro-batch {i}: input gradient"
    for p, g0, g1 in zip(layer.params(), reference[0][2], reference[1][2]):
        assert torch.equal(p.grad, g1 + g0)
    assert not torch.equal(reference[0][1], reference[1][1])  # the two passes really differ


@needs_fp8_gemm
@pytest.mark.parametrize("order", ["in_flight", "one_after_another"])
def test_every_micro_batch_amax_reaches_the_history(layer, order):
    """Three micro-batches of one step, the largest input and output gradient in the first: the history's
    newest slot holds the max over all of them (not the last micro-batch's), the step's scales come from it,
    and the history rolls once per optimizer step."""
    batches = [_micro_batch(3, 8.0, 2e-2), _micro_batch(4, 1.0, 1e-3), _micro_batch(5, 2.0, 1e-4)]
    if order == "in_flight":
        outs = [layer(x) for x, _ in batches]
        for (_, dy), y in reversed(list(zip(batches, outs))):
            y.backward(dy)
    else:
        for x, dy in batches:
            layer(x).backward(dy)
    amax_x = max(x.detach().abs().max().float().item() for x, _ in batches)
    amax_g = max(dy.abs().max().float().item() for _, dy in batches)
    amax_w = layer.module.weight.detach().abs().max().float().item()
    assert layer.history[0].tolist() == [amax_x, amax_w, amax_g]
    assert layer.history[1:].abs().sum() == 0

    layer.update()
    assert layer.scale.tolist() == pytest.approx([448.0 / amax_x, 448.0 / amax_w, 57344.0 / amax_g], rel=1e-6)
    assert layer.history[-1].tolist() == [amax_x, amax_w, amax_g] and layer.history[0].abs().sum() == 0


@needs_fp8_gemm
@pytest.mark.parametrize("magnitude", [0.0, 1e-40], ids=["zeros", "vanishing"])
def test_zero_or_vanishing_input_gives_a_finite_scale(layer, magnitude):
    """An all-zero input keeps the previous scale (amax 0); one whose amax is so small that fp8_max / amax
    overflows fp32 gets fp32's largest scale (TE's clamp), not inf, so the next step's cast of its zeros
    gives no nan (0 * inf)."""
    for step in range(2):
        x = torch.zeros(SEQ, BATCH, IN, dtype=torch.bfloat16)
        x[0, 0, :4] = magnitude  # a subnormal in bf16 for 1e-40
        x.requires_grad_()
        _, dy = _micro_batch(6 + step, 1.0, 1e-2)
        layer.zero_grad()
        y = layer(x)
        y.backward(dy)
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all(), step
        assert all(torch.isfinite(p.grad).all() for p in layer.params()), step
        layer.update()
        assert torch.isfinite(layer.scale).all(), (step, layer.scale)
    want = 1.0 if magnitude == 0 else torch.finfo(torch.float32).max
    assert layer.scale[0].item() == want


# --- the two-rank pipeline-parallel run -------------------------------------------------------------
STEPS = 12
ARGS = ["--seed", "3", "run.log_every_steps=1", f"run.max_steps={STEPS}", "run.warmup_steps=1",
        "train.max_samples=400"]


def _losses(run_dir):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def _two_ranks(data, run_dir, *extra):
    procs = spawn_ranks(2, train_command("gpt3", data, run_dir, *ARGS, f"data.index_cache_dir={run_dir}", *extra))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [EXIT_NOT_CONVERGED] * 2, outs[0][-3000:] + outs[1][-3000:]
    return _losses(run_dir)


@needs_fp8_gemm
def test_fp8_pipeline_parallel_trains_like_bf16(gpt3_debug_data, tmp_path):
    """PP=2 keeps several micro-batches' forwards in flight before their backwards (4 per step here; the
    interleaved schedule more): the FP8 run completes its steps with finite losses that track the bf16 PP=2
    run (the FP8 TP test's tolerance), plain and interleaved."""
    runs = {"bf16": _two_ranks(gpt3_debug_data, tmp_path / "bf16", "model.precision=bf16", "parallel.pp=2"),
            "fp8": _two_ranks(gpt3_debug_data, tmp_path / "fp8", "model.precision=fp8", "parallel.pp=2"),
            "fp8_interleaved": _two_ranks(gpt3_debug_data, tmp_path / "fp8_vpp", "model.precision=fp8",
                                          "parallel.pp=2", "train.virtual_pp=2")}
    for name, losses in runs.items():
        assert sorted(losses) == list(range(1, STEPS + 1)), (name, losses)
        assert all(math.isfinite(v) for v in losses.values()), (name, losses)
    assert runs["fp8"][STEPS] < runs["fp8"][1] - 0.2  # it trains
    for step in range(1, STEPS + 1):
        for name in ("fp8", "fp8_interleaved"):
            assert runs[name][step] == pytest.approx(runs["bf16"][step], rel=5e-3), (name, step, runs)
    assert runs["fp8"] != runs["bf16"]  # the FP8 GEMMs really ran

