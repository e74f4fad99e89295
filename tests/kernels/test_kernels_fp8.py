"""FP8 helpers: scaling bookkeeping, quantization against torch's float8 casts, fallback parameter names,
and the torch._scaled_mm linear (on CPU where this torch build supports it, and on CUDA)."""

from __future__ import annotations

import pytest
import torch
from kernel_numerics import force_triton, gpu_test  # noqa: F401 (autouse fixture)

from kernels.fp8 import (E4M3, E5M2, RECIPES, FP8Linear, Fp8Recipe, compute_scale, dequantize,
                         fp8_autocast, make_layernorm_linear, make_linear, quantize, record_amax, roll_history)


@pytest.mark.parametrize("dtype", [E4M3, E5M2], ids=str)
def test_quantize_is_the_float8_cast_of_the_scaled_tensor(dtype):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    scale = torch.tensor(17.0)
    q = quantize(x, scale, dtype)
    assert q.dtype == dtype and torch.equal(q.view(torch.uint8), (x * scale).to(dtype).view(torch.uint8))
    mantissa_bits = 3 if dtype == E4M3 else 2
    # round to nearest: relative error <= 2^-(mantissa bits + 1) for normal numbers
    normal = (x * scale).abs() > torch.finfo(dtype).smallest_normal
    err = (dequantize(q, scale) - x).abs()[normal] / x.abs()[normal]
    assert err.max() <= 2.0 ** -(mantissa_bits + 1)
    big = torch.tensor([1e9, -1e9])
    assert torch.equal(dequantize(quantize(big, torch.tensor(1.0), dtype), torch.tensor(1.0)),
                       torch.tensor([1.0, -1.0]) * torch.finfo(dtype).max)


@pytest.mark.parametrize("algo", ["max", "most_recent"])
def test_delayed_scaling_uses_the_history_of_previous_steps(algo):
    length, margin = 3, 1
    layer = FP8Linear(16, 16, recipe=Fp8Recipe(amax_history_len=length, amax_compute_algo=algo, margin=margin))
    amaxes = [2.0, 8.0, 0.5, 1.0, 0.25]
    seen = []
    for amax in amaxes:
        scale_before = layer.scale.clone()
        record_amax(layer.amax_history, 0, torch.tensor([amax, -amax / 2]))
        record_amax(layer.amax_history, 1, torch.tensor([1.0]))
        record_amax(layer.amax_history, 2, torch.tensor([0.0]))  # a zero amax keeps the old scale
        layer.update_scales()
        seen.append(amax)
        window = max(seen[-length:]) if algo == "max" else seen[-1]
        assert layer.scale[0].item() == pytest.approx(448.0 / window / 2 ** margin)
        assert layer.scale[1].item() == pytest.approx(448.0 / 2 ** margin)
        assert layer.scale[2].item() == scale_before[2].item() == 1.0
        assert layer.amax_history[0].abs().sum() == 0  # the newest slot is free for the next step


def test_compute_scale_keeps_scale_for_nonfinite_amax_and_roll_order():
    history = torch.tensor([[float("inf")], [1.0]])
    assert compute_scale(history, torch.tensor([3.0]), E4M3).item() == 3.0
    rolled = roll_history(torch.tensor([[5.0], [6.0], [7.0]]))
    assert rolled.flatten().tolist() == [0.0, 7.0, 5.0]


def test_compute_scale_never_overflows_to_inf():
    """TE's guard: an amax so small that fp8_max / amax overflows fp32 gives fp32's largest scale (an inf
    scale would turn the zeros of the next cast into nan); amax 0 keeps the previous scale."""
    history = torch.tensor([[1e-40, 0.0, 2.0]])
    for dtype in (E4M3, E5M2):
        got = compute_scale(history, torch.tensor([3.0, 5.0, 7.0]), dtype)
        assert got.tolist() == [torch.finfo(torch.float32).max, 5.0, torch.finfo(dtype).max / 2.0]


def test_record_amax_keeps_the_max_over_the_micro_batches_of_a_step():
    """Every micro-batch of a step folds its amax into the newest slot, whatever their order; the roll at
    the optimizer step clears it for the next step."""
    history = torch.zeros(3, 3)
    for amax in (1.0, 4.0, 0.5, 0.0):
        record_amax(history, 0, torch.tensor([-amax, amax / 3]))
    record_amax(history, 2, torch.tensor([float("nan"), 2.0]))  # nan, as fmaxf, leaves the others
    record_amax(history, 2, torch.tensor([0.25]))
    assert history[0].tolist() == [4.0, 0.0, 0.25] and history[1:].abs().sum() == 0
    history = roll_history(history)
    assert history[0].abs().sum() == 0 and history[-1].tolist() == [4.0, 0.0, 0.25]


def test_no_grad_forwards_leave_the_history_alone():
    """Evaluation (and the no-grad first pass of activation recompute) runs with the current scales but
    records nothing: only training micro-batches feed the delayed scaling."""
    if not _cpu_scaled_mm():
        pytest.skip("this torch build has no CPU torch._scaled_mm")
    layer = FP8Linear(32, 16, recipe=Fp8Recipe(amax_history_len=2))
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = layer(x)
    assert layer.amax_history.abs().sum() == 0
    layer(x).sum().backward()
    assert layer.amax_history[0, 0].item() == x.abs().max().item() and layer.amax_history[0, 2].item() == 1.0
    assert torch.equal(layer(x).detach(), y)


def test_recipes_match_nvidia_configs():
    assert (RECIPES["bert"].amax_history_len, RECIPES["bert"].amax_compute_algo) == (1, "max")
    assert (RECIPES["gpt3"].amax_history_len, RECIPES["gpt3"].amax_compute_algo) == (1024, "max")
    assert RECIPES["llama2_70b_lora_h200"].amax_compute_algo == "most_recent"
    assert all(r.fp8_format == "HYBRID" and r.margin == 0 for r in RECIPES.values())


def test_fallback_layers_have_transformer_engine_parameter_names(monkeypatch):
    monkeypatch.setenv("MLPERF_KERNELS", "reference")  # CPU tensors here, also on a GPU machine
    assert set(dict(make_linear(32, 16, backend="torch").named_parameters())) == {"weight", "bias"}
    assert set(dict(make_linear(32, 16, backend="torch_fp8").named_parameters())) == {"weight", "bias"}
    ln = make_layernorm_linear(32, 16, backend="torch")
    assert set(dict(ln.named_parameters())) == {"layer_norm_weight", "layer_norm_bias", "weight", "bias"}
    rms = make_layernorm_linear(32, 16, normalization="RMSNorm", bias=False, backend="torch")
    assert set(dict(rms.named_parameters())) == {"layer_norm_weight", "weight"}
    fp8 = make_layernorm_linear(32, 16, backend="torch_fp8")
    assert set(dict(fp8.named_parameters())) == {"layer_norm_weight", "layer_norm_bias", "weight", "bias"}
    x = torch.randn(3, 32)
    with fp8_autocast(enabled=True, recipe=RECIPES["bert"]):
        assert ln(x).shape == (3, 16)


def _cpu_scaled_mm() -> bool:
    try:
        one = torch.tensor(1.0)
        torch._scaled_mm(torch.zeros(16, 16, dtype=E4M3), torch.zeros(16, 16, dtype=E4M3).t(), scale_a=one,
                         scale_b=one, out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError):
        return False


def _check_fp8_linear(device):
    """Forward, dgrad and wgrad equal fp64 GEMMs of the dequantized fp8 operands up to the bf16 output
    rounding (a few bf16 ulps of the largest value for fp32 accumulation over K): this checks the scales,
    their inverses and the operand layouts; fp8's own rounding is the same on both sides."""
    gen = torch.Generator().manual_seed(0)
    layer = FP8Linear(64, 48, recipe=Fp8Recipe(amax_history_len=4)).to(device)
    x = (torch.randn(32, 64, generator=gen) * 5).to(device, torch.bfloat16).requires_grad_()
    dy = (torch.randn(32, 48, generator=gen) * 1e-3).to(device, torch.bfloat16)
    for _ in range(2):  # the second step runs with scales from the first step's amaxes
        x.grad, layer.weight.grad = None, None
        scale = layer.scale.clone()
        y = layer(x)
        y.backward(dy)
        xq = dequantize(quantize(x.detach(), scale[0], E4M3), scale[0]).double()
        wq = dequantize(quantize(layer.weight.detach(), scale[1], E4M3), scale[1]).double()
        gq = dequantize(quantize(dy, scale[2], E5M2), scale[2]).double()
        checks = (("y", y - layer.bias, xq @ wq.T), ("dx", x.grad, gq @ wq), ("dw", layer.weight.grad, gq.T @ xq))
        for name, got, want in checks:
            err = (got.double() - want).abs().max().item()
            assert err <= 4 * 2.0 ** -8 * want.abs().max().item(), f"{name}: {err}"
        layer.update_scales()
    assert layer.scale[0].item() == pytest.approx(448.0 / x.detach().abs().max().item(), rel=1e-6)


@pytest.mark.skipif(not _cpu_scaled_mm(), reason="this torch build has no CPU torch._scaled_mm")
def test_fp8_linear_cpu():
    _check_fp8_linear("cpu")


@gpu_test
def test_fp8_linear_cuda():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 GEMMs need sm_89 or newer")
    _check_fp8_linear("cuda")
