"""FP8 helpers: scaling bookkeeping, quantization against torch's float8 casts, fallback parameter names,
and the torch._scaled_mm linear (on CPU where this torch build supports it, and on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_numerics import force_triton, gpu_test  # noqa: F401 (autouse fixture)

from kernels.fp8 import (
    E4M3,
    E5M2,
    RECIPES,
    FP8Linear,
    Fp8Recipe,
    compute_scale,
    dequantize,
    fp8_autocast,
    make_layernorm_linear,
    make_linear,
    quantize,
    record_amax,
    roll_history,
)

# The formats from the OCP 8-bit floating point specification, written here rather than read from torch:
# (mantissa bits, exponent bias, largest finite value). E4M3 ("fn": no infinities) tops out at 1.75 * 2^8,
# E5M2 at 1.75 * 2^15.
FP8_FORMATS = {E4M3: (3, 7, 448.0), E5M2: (2, 15, 57344.0)}


def textbook_fp8(values: np.ndarray, dtype) -> np.ndarray:
    """fp64 values saturated at the format's largest and rounded to nearest, ties to even, onto its grid:
    |v| in [2^e, 2^(e+1)) for e >= 1 - bias is spaced 2^(e - mantissa bits); below 2^(1 - bias) the
    subnormals keep the smallest normal binade's spacing."""
    mantissa_bits, bias, largest = FP8_FORMATS[dtype]
    v = np.clip(np.asarray(values, dtype=np.float64), -largest, largest)
    magnitude = np.abs(v)
    _, exponent = np.frexp(magnitude)  # magnitude = f * 2^exponent with f in [0.5, 1)
    spacing = np.ldexp(1.0, np.maximum(exponent - 1, 1 - bias) - mantissa_bits)
    return np.sign(v) * np.round(magnitude / spacing) * spacing  # np.round rounds halves to even


def fp8_grid(dtype) -> np.ndarray:
    """Every non-negative finite value of the format, from its definition."""
    mantissa_bits, bias, largest = FP8_FORMATS[dtype]
    steps = np.arange(2 ** mantissa_bits) / 2 ** mantissa_bits
    subnormals = steps * 2.0 ** (1 - bias)
    normals = np.concatenate([(1 + steps) * 2.0 ** e for e in range(1 - bias, 17)])
    return np.concatenate([subnormals, normals[normals <= largest]])


def test_textbook_fp8_by_hand():
    grid = fp8_grid(E4M3)
    assert len(grid) == 127 and grid[1] == 2.0 ** -9 and grid[-1] == 448.0  # 0x00..0x7E; 0x7F is nan
    assert len(fp8_grid(E5M2)) == 124 and fp8_grid(E5M2)[-1] == 57344.0  # 0x00..0x7B; then inf and nans
    # ties to even: 1 + 1/16 lies between 1 and 1.125 (mantissa 000 | 001) -> 1; 1 + 3/16 -> 1.25 (010)
    got = textbook_fp8(np.array([1.0625, 1.1875, -1.1875, 2.0 ** -10, 3 * 2.0 ** -10, 1e9, 460.0]), E4M3)
    assert got.tolist() == [1.0, 1.25, -1.25, 0.0, 2 * 2.0 ** -9, 448.0, 448.0]


@pytest.mark.parametrize("dtype", [E4M3, E5M2], ids=str)
def test_quantize_and_dequantize_against_the_format_definition(dtype):
    """Every value of the format, every midpoint between neighbours (exact ties), quarter points, values
    past the largest (saturated), with both signs; then random values over 40 binades through a scale,
    the product being fp32 as quantize's contract says."""
    grid = fp8_grid(dtype)
    mids = (grid[1:] + grid[:-1]) / 2
    quarters = grid[:-1] + (grid[1:] - grid[:-1]) / 4
    beyond = grid[-1] * np.array([1.0625, 1.25, 2.0, 2.0 ** 20])
    special = np.concatenate([grid, mids, quarters, beyond, grid[1] / 2, grid[1] / 4], axis=None)
    values = np.concatenate([special, -special]).astype(np.float32)
    assert np.array_equal(values.astype(np.float64), np.concatenate([special, -special]))  # all exact in fp32
    got = quantize(torch.from_numpy(values), torch.tensor(1.0), dtype).float().numpy()
    np.testing.assert_array_equal(got, textbook_fp8(values, dtype))

    rng = np.random.default_rng(0)
    x = (np.exp2(rng.uniform(-22, 18, 4000)) * rng.choice([-1.0, 1.0], 4000)).astype(np.float32)
    scale = np.float32(17.3)
    q = quantize(torch.from_numpy(x), torch.tensor(scale), dtype)
    np.testing.assert_array_equal(q.float().numpy(), textbook_fp8(x * scale, dtype))  # x * scale: fp32 product
    back = dequantize(q, torch.tensor(scale)).numpy()
    np.testing.assert_array_equal(back, textbook_fp8(x * scale, dtype).astype(np.float32) / scale)


@pytest.mark.parametrize("dtype", [E4M3, E5M2], ids=str)
@pytest.mark.parametrize("algo", ["max", "most_recent"])
@pytest.mark.parametrize("margin", [0, 3])
def test_compute_scale_against_the_recipe_formula(dtype, algo, margin):
    """scale = fp8 max / amax / 2^margin, amax the history's max or its newest row, in fp64 here; the
    previous scale where amax is 0 or not finite."""
    rng = np.random.default_rng(margin)
    history = np.exp2(rng.uniform(-8, 8, (4, 6)))
    history[:, 3] = 0.0
    history[1, 4] = np.inf
    history[0, 5] = np.nan
    previous = np.arange(1.0, 7.0)
    got = compute_scale(torch.tensor(history, dtype=torch.float32), torch.tensor(previous, dtype=torch.float32),
                        dtype, margin, algo).double().numpy()
    history32 = history.astype(np.float32).astype(np.float64)
    amax = history32.max(0) if algo == "max" else history32[0]
    usable = np.isfinite(amax) & (amax > 0)
    want = np.where(usable, FP8_FORMATS[dtype][2] / np.where(usable, amax, 1.0) / 2.0 ** margin, previous)
    # fp32 arithmetic, but not one correctly rounded division: torch's CPU result was measured 1.2 units
    # of 2^-24 off the fp64 quotient (a product with the reciprocal: two roundings of 2^-24 each)
    np.testing.assert_allclose(got, want, rtol=2.0 ** -23, atol=0)
    if algo == "max":
        assert got[4] == previous[4] and got[3] == previous[3]  # inf and 0 amax keep the old scale
    assert got[5] == previous[5] if algo == "most_recent" else np.isfinite(got[5])


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
