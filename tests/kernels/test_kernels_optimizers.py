"""Fused flat-buffer optimizers (Triton) against torch's optimizers, the repo's LARS and the LAMB reference,
over several steps; errors measured against the same reference run in fp64."""

from __future__ import annotations

import copy

import pytest
import torch
from kernel_numerics import DEVICE, assert_derived_close, force_triton  # noqa: F401 (autouse fixture)
from torch import nn

from kernels.lamb_ref import LambReference
from kernels.optimizers import FusedAdagrad, FusedAdam, FusedAdamW, FusedLAMB, FusedLARS
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


def _compare(fused, reference, baseline_dtype=torch.float32, fused_dtype=torch.float32):
    got, _ = _train(fused, fused_dtype)
    torch_own, _ = _train(reference, baseline_dtype)
    exact, _ = _train(reference, torch.float64)
    for i, (g, b, e) in enumerate(zip(got, torch_own, exact)):
        assert_derived_close(f"param {i} {tuple(g.shape)}", g.detach(), e.detach(), b.detach())


LARS_ARGS = dict(lr=2.5, momentum=0.9, weight_decay=1e-2, eeta=1e-3)


def _lars_groups(params):
    return _groups(params, {}, {"lars": False})


def test_lars_matches_resnet_lars():
    _compare(lambda ps: FusedLARS(_lars_groups(ps), **LARS_ARGS), lambda ps: LARS(_lars_groups(ps), **LARS_ARGS))


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


@pytest.mark.parametrize("decoupled", [True, False], ids=["adamw", "adam_l2"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_adam_matches_torch(decoupled, clip):
    args = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    groups = lambda ps: _groups(ps, {"weight_decay": 0.1}, {"weight_decay": 0.0})  # noqa: E731

    def reference(ps):
        inner = (torch.optim.AdamW if decoupled else torch.optim.Adam)(groups(ps), foreach=False, **args)
        if clip is None:
            return inner

        class Clipped:  # torch.nn.utils.clip_grad_norm_ then the step, as a training loop does
            def step(self):
                torch.nn.utils.clip_grad_norm_(ps, clip)
                inner.step()
        return Clipped()

    fused_cls = FusedAdamW if decoupled else FusedAdam
    _compare(lambda ps: fused_cls(groups(ps), max_grad_norm=clip, **args), reference)


@pytest.mark.parametrize("variant", [dict(eps=1e-8), dict(eps=1e-10, lr_decay=0.1, weight_decay=0.01,
                                                          initial_accumulator_value=0.2)], ids=["dlrm", "all_flags"])
def test_adagrad_matches_torch(variant):
    args = dict(lr=0.05, **variant)
    _compare(lambda ps: FusedAdagrad(ps, **args), lambda ps: torch.optim.Adagrad(ps, foreach=False, **args))


LAMB_ARGS = dict(lr=4e-3, betas=(0.6, 0.85), eps=1e-6, max_grad_norm=1.0)


def _lamb_groups(params):
    return _groups(params, {"weight_decay": 0.1}, {"weight_decay": 0.0})


def test_lamb_matches_reference():
    _compare(lambda ps: FusedLAMB(_lamb_groups(ps), **LAMB_ARGS),
             lambda ps: LambReference(_lamb_groups(ps), **LAMB_ARGS))


def test_bf16_parameters_keep_fp32_states():
    """bf16 parameters: fp32 moments make the fused AdamW at least as accurate as torch's bf16 AdamW."""
    args = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    _compare(lambda ps: FusedAdamW(ps, **args), lambda ps: torch.optim.AdamW(ps, foreach=False, **args),
             baseline_dtype=torch.bfloat16, fused_dtype=torch.bfloat16)


@pytest.mark.parametrize("name", ["lars", "lamb", "adamw", "adagrad"])
def test_reference_path_agrees_with_triton(name, monkeypatch):
    make = {"lars": lambda ps: FusedLARS(_lars_groups(ps), **LARS_ARGS),
            "lamb": lambda ps: FusedLAMB(_lamb_groups(ps), **LAMB_ARGS),
            "adamw": lambda ps: FusedAdamW(ps, lr=1e-2, max_grad_norm=1.0),
            "adagrad": lambda ps: FusedAdagrad(ps, lr=0.05)}[name]
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
