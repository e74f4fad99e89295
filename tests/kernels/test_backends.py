"""kernels/backends.py on CPU, with Transformer Engine and apex replaced by fakes at their API boundary
(modules in sys.modules exposing only the calls the seam makes): GPT-3 takes megatron's TE spec when TE
reports itself usable, the FP8 check follows TE's own answer through either of its APIs, and
MLPERF_KERNELS=apex gives apex's optimizers with our arguments translated, or a clear error when absent."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from kernels import backends, fp8
from kernels import optimizers as ours


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


@pytest.fixture
def clean(monkeypatch):
    backends.reset()
    monkeypatch.delenv("MLPERF_KERNELS", raising=False)
    yield monkeypatch
    backends.reset()


def fake_te(monkeypatch, *, new_api: bool, fp8_ok: bool):
    """TE >= 2.x style (te.is_fp8_available(return_reason=True)) or older (te.fp8.check_fp8_support())."""
    answer = (fp8_ok, "" if fp8_ok else "Device compute capability 8.9 or higher required for FP8 execution.")
    calls = []

    def report(*, return_reason=False):
        calls.append(return_reason)
        return answer

    pytorch = _module("transformer_engine.pytorch")
    modules = {"transformer_engine": _module("transformer_engine", __version__="2.10.0", pytorch=pytorch),
               "transformer_engine.pytorch": pytorch}
    if new_api:
        pytorch.is_fp8_available = report
    else:
        modules["transformer_engine.pytorch.fp8"] = _module("transformer_engine.pytorch.fp8",
                                                            check_fp8_support=lambda: report(return_reason=True))
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_nothing_is_usable_on_the_cpu_set(clean):
    clean.setitem(sys.modules, "transformer_engine", None)  # as here: not installed
    clean.setitem(sys.modules, "transformer_engine.pytorch", None)
    clean.setitem(sys.modules, "apex", None)
    assert not backends.te_usable() and not backends.te_usable(fp8=True) and not backends.apex_usable()
    assert not fp8.te_available()
    assert "transformer_engine.pytorch does not import" in backends.te_status()


@pytest.mark.parametrize("new_api", [True, False], ids=["is_fp8_available", "fp8.check_fp8_support"])
def test_te_fp8_follows_te_own_report(clean, new_api):
    clean.setattr(torch.cuda, "is_available", lambda: True)
    calls = fake_te(clean, new_api=new_api, fp8_ok=True)
    assert backends.te_usable() and backends.te_usable(fp8=True) and fp8.te_available()
    assert calls == [True]  # asked once, with the reason, then cached
    assert backends.te_status() == "usable, FP8 supported"
    backends.reset()
    fake_te(clean, new_api=new_api, fp8_ok=False)
    assert backends.te_usable() and not backends.te_usable(fp8=True)  # bf16 TE layers still, FP8 not
    assert fp8._backend("auto") == "torch"
    with pytest.raises(RuntimeError, match="compute capability 8.9 or higher required"):
        fp8._backend("te")


def test_te_without_cuda_is_not_usable(clean):
    clean.setattr(torch.cuda, "is_available", lambda: False)
    fake_te(clean, new_api=True, fp8_ok=True)
    assert not backends.te_usable() and not backends.te_usable(fp8=True)


def test_gpt3_takes_megatron_te_spec_when_te_reports_usable(clean):
    from megatron.core.models.gpt import gpt_layer_specs

    from models.gpt3 import model as gpt3
    from models.gpt3.config import ModelConfig

    te_spec = object()
    clean.setattr(gpt_layer_specs, "get_gpt_layer_with_transformer_engine_spec", lambda: te_spec)
    clean.setitem(sys.modules, "transformer_engine", None)
    clean.setitem(sys.modules, "transformer_engine.pytorch", None)
    local = gpt3.layer_spec(ModelConfig())
    assert local is not te_spec and not gpt3.te_available()
    assert local.submodules.self_attention.submodules.core_attention in gpt3.ATTENTION.values()

    backends.reset()
    clean.setattr(torch.cuda, "is_available", lambda: True)
    fake_te(clean, new_api=True, fp8_ok=True)
    assert gpt3.te_available()
    assert gpt3.layer_spec(ModelConfig()) is te_spec
    assert gpt3.layer_spec(ModelConfig(), use_te=False) is not te_spec  # an explicit choice still wins


class _Recorder:
    """Stands for an apex optimizer class: records how it was constructed."""

    def __init__(self, params, **kwargs):
        self.params, self.kwargs = params, kwargs


def fake_apex(monkeypatch):
    adam = type("FusedAdam", (_Recorder,), {})
    lamb = type("FusedLAMB", (_Recorder,), {})
    optimizers = _module("apex.optimizers", FusedAdam=adam, FusedLAMB=lamb)
    monkeypatch.setitem(sys.modules, "apex", _module("apex", optimizers=optimizers))
    monkeypatch.setitem(sys.modules, "apex.optimizers", optimizers)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return adam, lamb


def test_default_mode_keeps_our_optimizers_even_with_apex_present(clean):
    fake_apex(clean)
    assert backends.optimizer_class("adam") is ours.FusedAdam
    assert backends.optimizer_class("adamw") is ours.FusedAdamW
    assert backends.optimizer_class("lamb") is ours.FusedLAMB


def test_apex_mode_builds_apex_optimizers_with_our_arguments(clean):
    adam, lamb = fake_apex(clean)
    clean.setenv("MLPERF_KERNELS", "apex")
    assert backends.apex_usable() and backends.apex_wanted()
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = backends.optimizer_class("adamw")(params, lr=2e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    assert type(opt) is adam
    assert opt.kwargs == dict(lr=2e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, adam_w_mode=True)
    opt = backends.optimizer_class("adam")(params, lr=1e-3)
    assert opt.kwargs["adam_w_mode"] is False  # L2 decay, as torch.optim.Adam
    with pytest.raises(ValueError, match="no fused gradient clipping"):
        backends.optimizer_class("adam")(params, max_grad_norm=1.0)

    groups = [{"params": params, "weight_decay": 0.01, "segments": [None]},
              {"params": [torch.nn.Parameter(torch.zeros(2))], "weight_decay": 0.0}]
    opt = backends.optimizer_class("lamb")(groups, lr=4e-4, betas=(0.9, 0.999), eps=1e-6, max_grad_norm=1.0)
    assert type(opt) is lamb
    assert opt.kwargs == dict(lr=4e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0,
                              adam_w_mode=True, use_nvlamb=False)
    assert [sorted(g) for g in opt.params] == [["params", "weight_decay"]] * 2  # our extra keys dropped
    split = [{"params": params, "weight_decay": 0.01, "segments": [[1, 2]]}]
    with pytest.raises(ValueError, match="one trust ratio per tensor"):
        backends.optimizer_class("lamb")(split)
    with pytest.raises(ValueError, match="adapts exactly the tensors with weight decay"):
        backends.optimizer_class("lamb")([{"params": params, "weight_decay": 0.0, "layer_adaptation": True}])


def test_apex_mode_without_apex_is_a_clear_error(clean):
    clean.setitem(sys.modules, "apex", None)
    clean.setenv("MLPERF_KERNELS", "apex")
    with pytest.raises(RuntimeError, match="MLPERF_KERNELS=apex asks for apex's lamb, but apex does not import"):
        backends.optimizer_class("lamb")
    assert set(backends.apex_status()) == set(backends.APEX_OPS)
    assert all("apex does not import" in v for v in backends.apex_status().values())


def test_apex_mode_names_a_missing_extension(clean):
    fake_apex(clean)  # apex.optimizers only: built without --group_norm
    clean.setenv("MLPERF_KERNELS", "apex")
    with pytest.raises(RuntimeError, match="apex.contrib.group_norm.GroupNorm, which this apex build lacks"):
        backends.apex_op("group_norm")
    status = backends.apex_status()
    assert status["adam"] == status["lamb"] == "imports" and status["group_norm"].startswith("missing")


def test_apex_is_a_valid_kernels_mode_and_decides_triton_as_auto(clean):
    from kernels import dispatch

    clean.setenv("MLPERF_KERNELS", "apex")
    assert dispatch.mode() == "apex"
    assert dispatch.use_triton(torch.zeros(2)) is False  # CPU tensors: the reference, as auto
