"""Fused flat-buffer optimizers (Triton) against torch's optimizers, the repo's LARS and the LAMB reference,
over several steps; errors measured against the same reference run in fp64, which is first checked
against the update rule written here from its definition (numpy, fp64)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from kernel_numerics import (  # noqa: F401 (force_triton: autouse fixture)
    DEVICE,
    TEXTBOOK_RTOL,
    assert_derived_close,
    assert_textbook_close,
    force_triton,
)
from torch import nn

from kernels.lamb_ref import LambReference
from kernels.optimizers import FusedAdagrad, FusedAdam, FusedAdamW, FusedLAMB, FusedLARS, FusedSGD
from models.resnet.lars import LARS

# a matrix, a bias, a conv kernel, a single element, a tensor spanning two 1024-element blocks
SHAPES = [(33, 17), (17,), (5, 3, 3, 3), (1,), (1100,)]
DECAYED, UNDECAYED = [0, 2, 4], [1, 3]
STEPS = 3


def _params(dtype):
    gen = torch.Generator().manual_seed(7)
    return [nn.Parameter(torch.randn(s, generator=gen).to(DEVICE, dtype)) for s in SHAPES]


def _grads(step):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=gen) * 0.5 for s in SHAPES]  # global norm ~26: clipping at 1.0 acts


def _groups(params, decayed: dict, undecayed: dict):
    return [{"params": [params[i] for i in DECAYED], **decayed},
            {"params": [params[i] for i in UNDECAYED], **undecayed}]


def _train(make_optimizer, dtype, steps=STEPS, params=None):
    params = params if params is not None else _params(dtype)
    optimizer = make_optimizer(params)
    for step in range(steps):
        for p, g in zip(params, _grads(step)):
            p.grad = g.to(DEVICE, p.dtype)
        optimizer.step()
    return params, optimizer


# -- the update rules from their definitions: numpy fp64, one tensor at a time, no torch optimizer code ------
def _start():
    """The parameters _train starts from in fp64, and each step's gradients, as numpy arrays."""
    return ([p.detach().cpu().double().numpy().copy() for p in _params(torch.float64)],
            [[g.double().numpy() for g in _grads(step)] for step in range(STEPS)])


def _norm(a):
    return float(np.sqrt(np.sum(a * a)))


def textbook_lars(lr, momentum, weight_decay, eeta, epsilon=0.0):
    """LARS (You et al. 2017) as the MLPerf TF reference applies it: for the decayed tensors (the `lars`
    group) trust = eeta |w| / (|g| + wd |w| + eps) (1 if a norm is 0) and v = m v + lr trust (g + wd w);
    for the others v = m v + lr g; then w -= v. Momentum starts at 0."""
    w, grads = _start()
    v = [np.zeros_like(p) for p in w]
    for g_step in grads:
        for i, g in enumerate(g_step):
            if i in DECAYED:
                w_norm, g_norm = _norm(w[i]), _norm(g)
                trust = eeta * w_norm / (g_norm + weight_decay * w_norm + epsilon) if w_norm and g_norm else 1.0
                v[i] = momentum * v[i] + lr * trust * (g + weight_decay * w[i])
            else:
                v[i] = momentum * v[i] + lr * g
            w[i] = w[i] - v[i]
    return w


def _clip_coefficient(g_step, rule, max_norm):
    """torch.nn.utils.clip_grad_norm_: min(1, max_norm / (|g| + 1e-6)); the LAMB reference's:
    max_norm / max(|g|, max_norm). |g| is the global norm over every tensor."""
    if max_norm is None:
        return 1.0
    total = float(np.sqrt(sum(np.sum(g * g) for g in g_step)))
    return min(1.0, max_norm / (total + 1e-6)) if rule == "torch" else max_norm / max(total, max_norm)


def textbook_adam(lr, betas, eps, decay_of, decoupled, clip=None):
    """Adam (Kingma & Ba 2015, Algorithm 1) with torch's eps placement, w -= lr m^ / (sqrt(v^) + eps),
    m^ = m / (1 - b1^t), v^ = v / (1 - b2^t); weight decay as L2 (g += wd w) or decoupled (AdamW,
    Loshchilov & Hutter: w *= 1 - lr wd first); gradients optionally clipped to a global norm first."""
    (beta1, beta2), (w, grads) = betas, _start()
    m, v = [np.zeros_like(p) for p in w], [np.zeros_like(p) for p in w]
    for t, g_step in enumerate(grads, start=1):
        coefficient = _clip_coefficient(g_step, "torch", clip)
        for i, g in enumerate(g_step):
            g, wd = g * coefficient, decay_of(i)
            if decoupled:
                w[i] = w[i] * (1 - lr * wd)
            else:
                g = g + wd * w[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            w[i] = w[i] - lr * (m[i] / (1 - beta1 ** t)) / (np.sqrt(v[i] / (1 - beta2 ** t)) + eps)
    return w


def textbook_adagrad(lr, eps, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0):
    """Adagrad (Duchi et al. 2011) in torch's documented form: lr_t = lr / (1 + (t - 1) lr_decay),
    g += wd w, s += g^2 (s starts at the initial accumulator value), w -= lr_t g / (sqrt(s) + eps)."""
    w, grads = _start()
    s = [np.full_like(p, initial_accumulator_value) for p in w]
    for t, g_step in enumerate(grads, start=1):
        step_lr = lr / (1 + (t - 1) * lr_decay)
        for i, g in enumerate(g_step):
            g = g + weight_decay * w[i]
            s[i] = s[i] + g * g
            w[i] = w[i] - step_lr * g / (np.sqrt(s[i]) + eps)
    return w


def textbook_sgd(lr, momentum, weight_decay, nesterov):
    """SGD with momentum (Polyak; Nesterov in Sutskever et al. 2013's form, as torch documents it):
    d = g + wd w, b = m b + d (b starts at 0), then d = d + m b (Nesterov) or d = b, and w -= lr d."""
    w, grads = _start()
    b = [np.zeros_like(p) for p in w]
    for g_step in grads:
        for i, g in enumerate(g_step):
            d = g + weight_decay * w[i]
            b[i] = momentum * b[i] + d
            w[i] = w[i] - lr * (d + momentum * b[i] if nesterov else b[i])
    return w


def textbook_lamb(lr, betas, eps, max_grad_norm, decay_of, segments_of=lambda i: None, start=None):
    """LAMB (You et al. 2020, Algorithm 2) with the MLPerf BERT reference's choices: gradients clipped to a
    global norm (g *= max_norm / max(|g|, max_norm)); Adam moments with bias correction; u = m^ / (sqrt(v^) +
    eps) + wd w; w -= lr r u with the trust ratio r = |w| / |u| (1 if a norm is 0) for the decayed tensors
    and r = 1 for the others; r per dim-0 part where a tensor has `segments_of(i)`."""
    (beta1, beta2), (w, grads) = betas, start or _start()
    m, v = [np.zeros_like(p) for p in w], [np.zeros_like(p) for p in w]
    for t, g_step in enumerate(grads, start=1):
        coefficient = _clip_coefficient(g_step, "lamb", max_grad_norm)
        for i, g in enumerate(g_step):
            g, wd = g * coefficient, decay_of(i)
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            u = (m[i] / (1 - beta1 ** t)) / (np.sqrt(v[i] / (1 - beta2 ** t)) + eps) + wd * w[i]
            parts = np.cumsum((0,) + tuple(segments_of(i) or (len(w[i]),)))
            for a, b in zip(parts[:-1], parts[1:]):
                w_part, u_part = w[i][a:b], u[a:b]
                w_norm, u_norm = _norm(w_part), _norm(u_part)
                ratio = w_norm / u_norm if wd != 0 and w_norm and u_norm else 1.0
                w[i][a:b] = w_part - lr * ratio * u_part
    return w


def _compare(fused, reference, textbook, baseline_dtype=torch.float32, fused_dtype=torch.float32,
             textbook_rtol=TEXTBOOK_RTOL):
    """The reference's fp64 run against the textbook's; then the fused optimizer (in fused_dtype) against the
    reference's fp64 run, with the budget derived from the reference's own run in baseline_dtype."""
    exact, _ = _train(reference, torch.float64)
    for i, (e, t) in enumerate(zip(exact, textbook)):
        assert_textbook_close(f"param {i} {tuple(e.shape)}", e.detach().cpu(), torch.from_numpy(t), textbook_rtol)
    got, _ = _train(fused, fused_dtype)
    torch_own, _ = _train(reference, baseline_dtype)
    for i, (g, b, e) in enumerate(zip(got, torch_own, exact)):
        assert_derived_close(f"param {i} {tuple(g.shape)}", g.detach(), e.detach(), b.detach(),
                             working_dtype=fused_dtype)


def test_textbook_rules_by_hand():
    """One step of each rule on a single weight, worked out on paper: w = 3, g = 4 (|w| = 3, |g| = 4)."""
    w, g = np.array([3.0]), np.array([4.0])
    # Adam, first step: m^ = g, v^ = g^2, so w -= lr * g / (|g| + eps) = lr * sign(g) (eps 0)
    m_hat, v_hat = (1 - 0.9) * g / (1 - 0.9), (1 - 0.999) * g * g / (1 - 0.999)
    assert (w - 0.5 * m_hat / (np.sqrt(v_hat) + 0.0)).tolist() == [2.5]
    # LARS, first step: trust = 0.001 * 3 / (4 + 0.1 * 3) = 0.003 / 4.3; v = 2 * trust * (4 + 0.3)
    assert (w - 2.0 * (0.001 * 3 / 4.3) * (g + 0.1 * w)).tolist() == pytest.approx([3.0 - 0.006], rel=1e-14)
    # Adagrad, first step: s = 16, w -= lr * 4 / 4 = lr
    assert (w - 0.25 * g / (np.sqrt(g * g) + 0.0)).tolist() == [2.75]


LARS_ARGS = dict(lr=2.5, momentum=0.9, weight_decay=1e-2, eeta=1e-3)


def _lars_groups(params):
    return _groups(params, {}, {"lars": False})


# models/resnet/lars.py takes the norms .float() (its lr and trust ratios are fp32 device tensors), so even
# its fp64 run carries fp32 trust ratios: 2^-24 relative on updates of ~1e-3 of the weights (measured 1.3e-9
# of the largest weight after the 3 steps), far below the fp32 ulp the kernel is held to.
LARS_TEXTBOOK_RTOL = 1e-8


def test_lars_matches_resnet_lars():
    _compare(lambda ps: FusedLARS(_lars_groups(ps), **LARS_ARGS), lambda ps: LARS(_lars_groups(ps), **LARS_ARGS),
             textbook_lars(**LARS_ARGS), textbook_rtol=LARS_TEXTBOOK_RTOL)


def test_lars_state_dicts_interchange_with_resnet_lars():
    for source, target_cls in ((LARS, FusedLARS), (FusedLARS, LARS)):
        params, trained = _train(lambda ps, source=source: source(_lars_groups(ps), **LARS_ARGS), torch.float32,
                                 steps=2)
        resumed_params = [nn.Parameter(p.detach().clone()) for p in params]
        resumed = target_cls(_lars_groups(resumed_params), **LARS_ARGS)
        # a checkpoint's copy: torch's loader would alias a live optimizer's tensors of the same dtype
        resumed.load_state_dict(copy.deepcopy(trained.state_dict()))
        assert resumed.lr_tensor is resumed.param_groups[1]["lr"]
        assert set(resumed.state_dict()["state"][0]) == {"momentum_buffer"}
        for p, g in zip(resumed_params, _grads(2)):
            p.grad = g.to(DEVICE)
        resumed.step()
        for p, g in zip(params, _grads(2)):
            p.grad = g.to(DEVICE)
        trained.step()
        for a, b in zip(resumed_params, params):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


def test_lars_lr_tensor_skipped_params_and_gradient_views():
    params = _params(torch.float32)
    optimizer = FusedLARS(_lars_groups(params), **LARS_ARGS)
    optimizer.set_lr(torch.tensor(0.5))
    assert optimizer.lr_tensor.item() == 0.5 and optimizer.param_groups[1]["lr"] is optimizer.lr_tensor
    before = params[1].detach().clone()
    for i, (p, g) in enumerate(zip(params, _grads(0))):
        p.grad = None if i == 1 else g.to(DEVICE)
    optimizer.step()
    assert torch.equal(params[1].detach(), before) and params[1] not in optimizer.state
    optimizer.zero_grad(set_to_none=False)  # gradients stay views of the flat buffer, zeroed in one fill
    pointers = [p.grad.data_ptr() for p in params if p.grad is not None]
    (params[0] * 2).sum().backward()
    assert params[0].grad.data_ptr() == pointers[0] and torch.equal(params[0].grad, torch.full_like(params[0], 2.0))


def _clipped(optimizer_cls, clip, groups=lambda ps: ps, **args):
    """torch.nn.utils.clip_grad_norm_ then the torch optimizer's step, as a training loop does."""
    def make(ps):
        inner = optimizer_cls(groups(ps), foreach=False, **args)
        if clip is None:
            return inner

        class Clipped:
            def step(self):
                torch.nn.utils.clip_grad_norm_(ps, clip)
                inner.step()
        return Clipped()
    return make


@pytest.mark.parametrize("decoupled", [True, False], ids=["adamw", "adam_l2"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_adam_matches_torch(decoupled, clip):
    args = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    groups = lambda ps: _groups(ps, {"weight_decay": 0.1}, {"weight_decay": 0.0})  # noqa: E731
    reference = _clipped(torch.optim.AdamW if decoupled else torch.optim.Adam, clip, groups, **args)
    fused_cls = FusedAdamW if decoupled else FusedAdam
    _compare(lambda ps: fused_cls(groups(ps), max_grad_norm=clip, **args), reference,
             textbook_adam(**args, decay_of=lambda i: 0.1 if i in DECAYED else 0.0, decoupled=decoupled, clip=clip))


@pytest.mark.parametrize("variant", [dict(eps=1e-8), dict(eps=1e-10, lr_decay=0.1, weight_decay=0.01,
                                                          initial_accumulator_value=0.2)], ids=["dlrm", "all_flags"])
def test_adagrad_matches_torch(variant):
    args = dict(lr=0.05, **variant)
    _compare(lambda ps: FusedAdagrad(ps, **args), lambda ps: torch.optim.Adagrad(ps, foreach=False, **args),
             textbook_adagrad(**args))


@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "heavy_ball"])
def test_sgd_matches_torch(nesterov):
    """3D U-Net's optimizer: Nesterov momentum 0.9 (weight decay only in one group here, as a check of groups)."""
    args = dict(lr=0.05, momentum=0.9, nesterov=nesterov)
    groups = lambda ps: _groups(ps, {"weight_decay": 1e-2}, {"weight_decay": 0.0})  # noqa: E731
    textbook = textbook_sgd(0.05, 0.9, 1e-2, nesterov)
    undecayed = textbook_sgd(0.05, 0.9, 0.0, nesterov)
    textbook = [undecayed[i] if i in UNDECAYED else t for i, t in enumerate(textbook)]
    _compare(lambda ps: FusedSGD(groups(ps), **args), lambda ps: torch.optim.SGD(groups(ps), foreach=False, **args),
             textbook)


def test_sgd_state_dicts_interchange_with_torch():
    args = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for source, target_cls in ((torch.optim.SGD, FusedSGD), (FusedSGD, torch.optim.SGD)):
        params, trained = _train(lambda ps, source=source: source(ps, **args), torch.float32, steps=2)
        resumed_params = [nn.Parameter(p.detach().clone()) for p in params]
        resumed = target_cls(resumed_params, **args)
        resumed.load_state_dict(copy.deepcopy(trained.state_dict()))  # a checkpoint's copy, not aliases
        assert set(resumed.state_dict()["state"][0]) == {"momentum_buffer"}
        for p, g in zip(resumed_params, _grads(2)):
            p.grad = g.to(DEVICE, p.dtype)
        resumed.step()
        for p, g in zip(params, _grads(2)):
            p.grad = g.to(DEVICE, p.dtype)
        trained.step()
        for a, b in zip(params, resumed_params):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-6, atol=1e-7)


LAMB_ARGS = dict(lr=4e-3, betas=(0.6, 0.85), eps=1e-6, max_grad_norm=1.0)


def _lamb_groups(params):
    return _groups(params, {"weight_decay": 0.1}, {"weight_decay": 0.0})


def _textbook_lamb(**kwargs):
    return textbook_lamb(**kwargs, decay_of=lambda i: 0.1 if i in DECAYED else 0.0)


def test_lamb_matches_reference():
    _compare(lambda ps: FusedLAMB(_lamb_groups(ps), **LAMB_ARGS),
             lambda ps: LambReference(_lamb_groups(ps), **LAMB_ARGS), _textbook_lamb(**LAMB_ARGS))


def test_lamb_reference_per_part_trust_ratios_against_the_textbook():
    """LambReference's `segments` (one trust ratio per dim-0 part of a fused parameter, as BERT's [q; k; v])
    against the textbook rule applied to the parts; parts of 1, 15 and 17 rows of the (33, 17) matrix."""
    segments = {0: (1, 15, 17)}
    groups = lambda ps: [  # noqa: E731
        {"params": [ps[i] for i in DECAYED], "weight_decay": 0.1, "segments": [segments.get(i) for i in DECAYED]},
        {"params": [ps[i] for i in UNDECAYED], "weight_decay": 0.0}]
    exact, _ = _train(lambda ps: LambReference(groups(ps), **LAMB_ARGS), torch.float64)
    want = _textbook_lamb(**LAMB_ARGS, segments_of=segments.get)
    for i, (e, t) in enumerate(zip(exact, want)):
        assert_textbook_close(f"param {i}", e.detach().cpu(), torch.from_numpy(t))
    whole = _textbook_lamb(**LAMB_ARGS)
    assert not np.allclose(want[0], whole[0], rtol=1e-6, atol=0)  # the parts' ratios do change the update


def test_bf16_parameters_keep_fp32_states():
    """bf16 parameters: fp32 moments make the fused AdamW at least as accurate as torch's bf16 AdamW."""
    args = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    _compare(lambda ps: FusedAdamW(ps, **args), lambda ps: torch.optim.AdamW(ps, foreach=False, **args),
             textbook_adam(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, decay_of=lambda i: 0.1, decoupled=True),
             baseline_dtype=torch.bfloat16, fused_dtype=torch.bfloat16)


@pytest.mark.parametrize("name", ["lars", "lamb", "adamw", "adagrad", "sgd"])
def test_reference_path_within_the_derived_bound(name, monkeypatch):
    """The fused optimizers' torch path (MLPERF_KERNELS=reference: what runs off CUDA), held to the kernel's
    bound against the textbook-checked fp64 reference."""
    monkeypatch.setenv("MLPERF_KERNELS", "reference")
    adamw, adagrad = dict(lr=1e-2, max_grad_norm=1.0), dict(lr=0.05, eps=1e-10)
    sgd = dict(lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True)
    fused, reference, textbook, rtol = {
        "lars": (lambda ps: FusedLARS(_lars_groups(ps), **LARS_ARGS), lambda ps: LARS(_lars_groups(ps), **LARS_ARGS),
                 textbook_lars(**LARS_ARGS), LARS_TEXTBOOK_RTOL),
        "lamb": (lambda ps: FusedLAMB(_lamb_groups(ps), **LAMB_ARGS),
                 lambda ps: LambReference(_lamb_groups(ps), **LAMB_ARGS), _textbook_lamb(**LAMB_ARGS), TEXTBOOK_RTOL),
        "adamw": (lambda ps: FusedAdamW(ps, **adamw), _clipped(torch.optim.AdamW, 1.0, lr=1e-2),
                  textbook_adam(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, decay_of=lambda i: 1e-2, decoupled=True,
                                clip=1.0), TEXTBOOK_RTOL),
        "adagrad": (lambda ps: FusedAdagrad(ps, **adagrad), _clipped(torch.optim.Adagrad, None, **adagrad),
                    textbook_adagrad(**adagrad), TEXTBOOK_RTOL),
        "sgd": (lambda ps: FusedSGD(ps, **sgd), _clipped(torch.optim.SGD, None, **sgd),
                textbook_sgd(**sgd), TEXTBOOK_RTOL),
    }[name]
    _compare(fused, reference, textbook, textbook_rtol=rtol)


@pytest.mark.parametrize("name", ["lars", "lamb", "adamw", "adagrad", "sgd"])
def test_reference_path_agrees_with_triton(name, monkeypatch):
    make = {"lars": lambda ps: FusedLARS(_lars_groups(ps), **LARS_ARGS),
            "lamb": lambda ps: FusedLAMB(_lamb_groups(ps), **LAMB_ARGS),
            "adamw": lambda ps: FusedAdamW(ps, lr=1e-2, max_grad_norm=1.0),
            "adagrad": lambda ps: FusedAdagrad(ps, lr=0.05),
            "sgd": lambda ps: FusedSGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True)}[name]
    triton_params, _ = _train(make, torch.float32)
    monkeypatch.setenv("MLPERF_KERNELS", "reference")
    reference_params, _ = _train(make, torch.float32)
    for a, b in zip(triton_params, reference_params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-6, atol=1e-7)


def test_flat_views_keep_channels_last_and_match_lars():
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(8, 4, 3, 3, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last)
               for _ in range(2)]
    grad = torch.randn(8, 4, 3, 3, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last)
    fused_param, ref_param = nn.Parameter(weights[0]), nn.Parameter(weights[0].clone())
    fused = FusedLARS([fused_param], **LARS_ARGS)
    reference = LARS([ref_param], **LARS_ARGS)
    assert fused_param.is_contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        fused_param.grad, ref_param.grad = grad.clone(), grad.clone()
        fused.step()
        reference.step()
    assert fused.state[fused_param]["momentum_buffer"].stride() == ref_param.stride()
    torch.testing.assert_close(fused_param.detach(), ref_param.detach(), rtol=1e-6, atol=1e-7)


def test_fused_lars_drops_into_the_resnet_benchmark_setup():
    """What models/resnet/benchmark.py builds, with FusedLARS in place of LARS: a (small) channels_last
    ResNet, its two param groups, a train step; both optimizers end at the same weights."""
    import torch.nn.functional as F

    from models.resnet.model import ResNetModelConfig, build_resnet, lars_param_groups

    cfg = ResNetModelConfig(depths=(1, 1, 1, 1), base_width=8, num_classes=10, stem_stride_pool=False)
    models = []
    for optimizer_cls in (FusedLARS, LARS):
        torch.manual_seed(0)
        model = build_resnet(cfg).to(DEVICE).to(memory_format=torch.channels_last)
        optimizer = optimizer_cls(lars_param_groups(model), lr=0.0, momentum=0.9, weight_decay=5e-5, eeta=1e-3,
                                  epsilon=0.0)
        gen = torch.Generator().manual_seed(1)
        for lr in (0.5, 1.0):
            optimizer.set_lr(lr)
            images = torch.randn(4, 3, 16, 16, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last)
            labels = torch.randint(0, 10, (4,), generator=gen).to(DEVICE)
            F.cross_entropy(model(images), labels, label_smoothing=0.1).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        models.append(model)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", ["lars", "adamw", "lamb"])
def test_restoring_a_state_saved_before_the_first_step_resets_the_moments(name):
    """A warm-up restores the state saved before it: the moments its steps built must not survive."""
    make = {"lars": lambda p: FusedLARS(_lars_groups(p), **LARS_ARGS),
            "adamw": lambda p: FusedAdamW(p, lr=1e-2, weight_decay=0.1),
            "lamb": lambda p: FusedLAMB(p, lr=1e-2, weight_decay=0.01)}[name]
    fresh_params, _ = _train(make, torch.float32, steps=2)
    params = _params(torch.float32)
    optimizer = make(params)
    saved_weights = [p.detach().clone() for p in params]
    saved = copy.deepcopy(optimizer.state_dict())
    for step in range(3):  # the "warm-up"
        for p, g in zip(params, _grads(10 + step)):
            p.grad = g.to(DEVICE, p.dtype)
        optimizer.step()
    with torch.no_grad():
        for p, w in zip(params, saved_weights):
            p.copy_(w)
    optimizer.load_state_dict(saved)
    for step in range(2):
        for p, g in zip(params, _grads(step)):
            p.grad = g.to(DEVICE, p.dtype)
        optimizer.step()
    for got, want in zip(params, fresh_params):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("decoupled", [True, False], ids=["adamw", "adam_l2"])
def test_adam_reference_paths_agree_bit_for_bit(decoupled):
    """Off CUDA, a step with every gradient present updates the flat buffers in place; one with a missing gradient
    takes the masked out-of-place path. Both are adam_update's one arithmetic: the same bits on the tensors both
    update, and the skipped tensor untouched."""
    results = []
    for skip in (None, 1):
        params = _params(torch.float32)
        optimizer = (FusedAdamW if decoupled else FusedAdam)(_groups(params, {"weight_decay": 0.1},
                                                                     {"weight_decay": 0.0}), lr=1e-2)
        before = [p.detach().clone() for p in params]
        for step in range(2):
            for i, (p, g) in enumerate(zip(params, _grads(step))):
                p.grad = None if i == skip else g.to(DEVICE)
            optimizer.step()
        if skip is not None:
            assert torch.equal(params[skip].detach(), before[skip])
        results.append([p.detach().clone() for p in params])
    for i, (full, masked) in enumerate(zip(*results)):
        if i != 1:
            assert torch.equal(full, masked), f"tensor {i}"
