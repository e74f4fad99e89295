"""kernels/backends.py on CPU, with Transformer Engine and apex replaced by fakes at their API boundary
(modules in sys.modules exposing only the calls the seam makes): GPT-3 takes megatron's TE spec when TE
reports itself usable, the FP8 check follows TE's own answer through either of its APIs, and
MLPERF_KERNELS=apex gives apex's optimizers with our arguments translated, or a clear error when absent."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from kernels import backends, fp8
from kernels import optimizers as ours


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


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


def test_bert_llama_and_fp8_take_te_when_te_reports_usable(clean):
    # Imported before the fake TE goes in (megatron probes TE's submodules at import).
    from models.bert import model as bert
    from models.llama2_70b_lora import model as llama

    clean.setitem(sys.modules, "transformer_engine", None)
    clean.setitem(sys.modules, "transformer_engine.pytorch", None)
    assert bert._attention_backend("auto") == "sdpa" and not llama.te_available() and fp8._backend("auto") == "torch"
    backends.reset()
    clean.setattr(torch.cuda, "is_available", lambda: True)
    fake_te(clean, new_api=True, fp8_ok=True)
    assert bert._attention_backend("auto") == "te"  # TE's fused THD attention for packed BERT
    assert llama.te_available()  # transformer_config and build_model take TE's spec and FP8 from this answer
    assert fp8._backend("auto") == "te"  # TE's FP8 linears; torch._scaled_mm stays the fallback
    assert bert._attention_backend("sdpa") == "sdpa"  # an explicit choice still wins


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


# --- apex group norm and focal loss through their seams ------------------------------------------------------
# The fakes check what apex's API demands (the asserts of apex/contrib/group_norm/group_norm.py and of
# focal_loss_cuda's forward) and compute the math by hand in torch: the group statistics over an explicit reshape,
# and the focal loss in the CUDA kernel's own form (softplus terms, pad classes and -2 rows skipped, one divisor).
class FakeApexGroupNorm(torch.nn.Module):
    SUPPORTED_CHANNELS = frozenset([128, 256, 320, 640, 1280])
    SUPPORTED_GROUPS = frozenset([16, 32])
    SUPPORTED_DTYPES = frozenset([(torch.float32, torch.float32), (torch.float16, torch.float32),
                                  (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)])
    built: list = []
    seen: list = []

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, act=None):
        super().__init__()
        self.num_groups, self.eps, self.act = num_groups, eps, act
        self.weight = torch.nn.Parameter(torch.full((num_channels,), float("nan"), device=device, dtype=dtype))
        self.bias = torch.nn.Parameter(torch.full((num_channels,), float("nan"), device=device, dtype=dtype))
        FakeApexGroupNorm.built.append(dict(num_groups=num_groups, num_channels=num_channels, eps=eps,
                                            affine=affine, act=act))

    def forward(self, x):
        assert x.is_contiguous(memory_format=torch.channels_last), "Only support NHWC layout."
        FakeApexGroupNorm.seen.append((x.dtype, self.weight, self.bias))
        b, c = x.shape[:2]
        grouped = x.float().reshape(b, self.num_groups, -1)
        mean = grouped.mean(-1, keepdim=True)
        var = ((grouped - mean) ** 2).mean(-1, keepdim=True)
        y = ((grouped - mean) / torch.sqrt(var + self.eps)).reshape(x.shape)
        y = y * self.weight.float()[None, :, None, None] + self.bias.float()[None, :, None, None]
        if self.act == "silu":
            y = y * torch.sigmoid(y)
        return y.to(x.dtype).contiguous(memory_format=torch.channels_last)


def fake_apex_focal_loss(calls):
    def focal_loss(cls_output, cls_targets_at_level, num_positive_sum, num_real_classes, alpha, gamma,
                   label_smoothing=0.0):
        vector = 16 // cls_output.element_size()
        assert cls_output.dtype in (torch.float16, torch.float32, torch.float64), "no bf16 dispatch"
        assert cls_output.is_contiguous() and cls_targets_at_level.is_contiguous()
        assert cls_targets_at_level.dtype == torch.int64, "Invalid label type."
        assert num_positive_sum.numel() == 1 and num_positive_sum.dtype == torch.float32
        assert cls_output.dim() == cls_targets_at_level.dim() + 1
        assert cls_output.shape[:-1] == cls_targets_at_level.shape
        assert cls_output.shape[-1] % vector == 0, "Pad number of classes first"
        assert cls_output.shape[-1] >= num_real_classes >= vector, "Too few classes."
        calls.append(dict(cls=cls_output.detach().clone(), targets=cls_targets_at_level.clone(),
                          divisor=num_positive_sum.item(), num_real_classes=num_real_classes, alpha=alpha,
                          gamma=gamma, label_smoothing=label_smoothing))
        p = cls_output.float()
        sigma = torch.sigmoid(p)
        y = cls_targets_at_level[..., None]
        column = torch.arange(p.shape[-1])
        positive = (y >= 0) & (column == y)
        negative_loss = (1 - alpha) * sigma ** gamma * F.softplus(p)
        positive_loss = alpha * (1 - sigma) ** gamma * F.softplus(-p)
        loss = torch.where(positive, positive_loss, negative_loss)
        loss = torch.where((y != -2) & (column < num_real_classes), loss, 0.0)
        return loss.sum() / num_positive_sum.reshape(())

    return focal_loss


def fake_apex_contrib(monkeypatch):
    FakeApexGroupNorm.built, FakeApexGroupNorm.seen = [], []
    focal_calls: list = []
    group_norm = _module("apex.contrib.group_norm", GroupNorm=FakeApexGroupNorm)
    focal = _module("apex.contrib.focal_loss.focal_loss", focal_loss=fake_apex_focal_loss(focal_calls))
    modules = {"apex": _module("apex"), "apex.contrib": _module("apex.contrib"),
               "apex.contrib.group_norm": group_norm, "apex.contrib.focal_loss": _module("apex.contrib.focal_loss"),
               "apex.contrib.focal_loss.focal_loss": focal}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return focal_calls


def _grads(fn, *leaves):
    """fn's output and the gradients of its leaves for one fixed random upstream gradient."""
    out = fn()
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(11)).to(out.dtype)
    return (out, *torch.autograd.grad(out, leaves, upstream))


def test_group_norm_takes_apex_only_when_asked_and_gives_our_numbers(clean):
    from kernels.group_norm import group_norm, group_norm_ref
    from models.stable_diffusion.model import GroupNormAct

    fake_apex_contrib(clean)
    torch.manual_seed(0)
    x = torch.randn(2, 320, 4, 3, requires_grad=True)  # NCHW: the seam must hand apex NHWC
    w = torch.nn.Parameter(1 + 0.1 * torch.randn(320))
    b = torch.nn.Parameter(0.1 * torch.randn(320))
    ours = _grads(lambda: group_norm_ref(x, 16, w, b, 1e-5, silu=True), x, w, b)
    assert not FakeApexGroupNorm.built
    for out, ref in zip(_grads(lambda: group_norm(x, 16, w, b, 1e-5, silu=True), x, w, b), ours):  # default mode
        assert torch.equal(out, ref)
    assert not FakeApexGroupNorm.seen, "apex present but not asked for: ours"

    clean.setenv("MLPERF_KERNELS", "apex")
    through_apex = _grads(lambda: group_norm(x, 16, w, b, 1e-5, silu=True), x, w, b)
    assert FakeApexGroupNorm.built == [dict(num_groups=16, num_channels=320, eps=1e-5, affine=True, act="silu")]
    dtype, weight, bias = FakeApexGroupNorm.seen[-1]
    assert weight is w and bias is b, "our parameters, not the apex module's own"
    for out, ref in zip(through_apex, ours):  # y, dx, dw, db
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert through_apex[0].is_contiguous(memory_format=torch.channels_last)

    # SD's spatial-transformer norm (no SiLU, eps 1e-6) through the model's own module, under fp16 autocast-like
    # inputs: apex gets fp16 activations with fp32 parameters, a pair its kernel supports.
    norm = GroupNormAct(16, 640, 1e-6, silu=False)
    h = torch.randn(2, 640, 2, 2).half()
    y = norm(h)
    assert FakeApexGroupNorm.built[-1] == dict(num_groups=16, num_channels=640, eps=1e-6, affine=True, act=None)
    assert FakeApexGroupNorm.seen[-1][0] == torch.float16 and y.dtype == torch.float16
    torch.testing.assert_close(y, group_norm_ref(h, 16, norm.weight, norm.bias, 1e-6), rtol=1e-3, atol=1e-3)
    norm(h)
    assert len(FakeApexGroupNorm.built) == 2, "one apex module per shape, built once"

    # What apex's kernel does not cover stays on ours: the debug UNet's 64 channels, 8 groups, 3-D input.
    count = len(FakeApexGroupNorm.seen)
    for shape, groups in (((2, 64, 4, 4), 16), ((2, 320, 4, 4), 8), ((2, 320, 6), 16)):
        xs, ws, bs = torch.randn(shape), torch.ones(shape[1]), torch.zeros(shape[1])
        assert torch.equal(group_norm(xs, groups, ws, bs, 1e-5, silu=True),
                           group_norm_ref(xs, groups, ws, bs, 1e-5, True))
    assert len(FakeApexGroupNorm.seen) == count


def test_group_norm_apex_mode_without_apex_is_a_clear_error(clean):
    from kernels.group_norm import group_norm

    clean.setitem(sys.modules, "apex", None)
    clean.setenv("MLPERF_KERNELS", "apex")
    with pytest.raises(RuntimeError, match="asks for apex's group_norm, but apex does not import"):
        group_norm(torch.randn(1, 320, 2, 2), 16, torch.ones(320), torch.zeros(320), silu=True)


def _retinanet_batch(num_classes, dtype=torch.float32):
    """A real batch through matching, as models/ssd/loss.py builds it: 3 images of 40 anchors, the last with no
    box (its foreground count clamps to 1)."""
    from models.ssd.matching import IGNORE, match

    torch.manual_seed(3)
    anchors = torch.cat([torch.rand(40, 2) * 50, torch.rand(40, 2) * 50 + 10], 1)
    anchors[:, 2:] += anchors[:, :2]
    gt_boxes = anchors[torch.tensor([[3, 17, 30], [5, 8, 0], [0, 0, 0]])] + torch.randn(3, 3, 4)
    gt_labels = torch.tensor([[1, num_classes - 1, 0], [num_classes - 1, 0, -1], [-1, -1, -1]])
    matches = match(gt_boxes, gt_labels >= 0, anchors)
    foreground = matches >= 0
    labels = torch.gather(gt_labels, 1, matches.clamp(min=0))
    cls = (torch.randn(3, 40, num_classes) * 2).to(dtype).requires_grad_(True)
    inputs = dict(labels_BN=labels, foreground_BN=foreground, ignored_BN=matches == IGNORE,
                  num_foreground_B=foreground.sum(1).clamp(min=1).to(torch.float32))
    assert foreground.any() and (matches == IGNORE).any() and (matches == -1).any()
    return cls, inputs, (anchors, gt_boxes, gt_labels)


def test_retinanet_focal_loss_default_path_is_the_loss_module_arithmetic(clean):
    # Byte for byte what models/ssd/loss.py computes today, so routing loss.py through it keeps the goldens.
    from models.ssd.focal_loss import retinanet_focal_loss
    from models.ssd.loss import retinanet_loss

    fake_apex_contrib(clean)  # present, not asked for
    cls, inputs, (anchors, gt_boxes, gt_labels) = _retinanet_batch(5)
    box = torch.zeros(3, 40, 4)
    assert torch.equal(retinanet_focal_loss(cls, **inputs), retinanet_loss(cls, box, anchors, gt_boxes, gt_labels)[0])


@pytest.mark.parametrize("num_classes,dtype,sent", [(5, torch.float32, torch.float32),
                                                    (264, torch.float16, torch.float16),
                                                    (13, torch.bfloat16, torch.float32)],
                         ids=["fp32-pad-to-8", "fp16-264-classes", "bf16-cast-up"])
def test_focal_loss_through_apex_gets_its_api_and_gives_our_numbers(clean, num_classes, dtype, sent):
    from models.ssd.focal_loss import retinanet_focal_loss

    calls = fake_apex_contrib(clean)
    cls, inputs, _ = _retinanet_batch(num_classes, dtype)
    ours = _grads(lambda: retinanet_focal_loss(cls, **inputs), cls)
    assert not calls
    clean.setenv("MLPERF_KERNELS", "apex")
    through_apex = _grads(lambda: retinanet_focal_loss(cls, **inputs), cls)

    vector = 16 // sent.itemsize
    assert len(calls) == 3, "one call per image: the loss divides per image"
    for b, call in enumerate(calls):
        assert call["cls"].dtype == sent and call["cls"].shape == (40, -(-num_classes // vector) * vector)
        assert torch.equal(call["cls"][:, :num_classes], cls[b].detach().to(sent))
        assert not call["cls"][:, num_classes:].any(), "pad classes are zeros"
        expected = torch.where(inputs["foreground_BN"][b], inputs["labels_BN"][b], -1)
        assert torch.equal(call["targets"], torch.where(inputs["ignored_BN"][b], -2, expected))
        assert call["divisor"] == inputs["num_foreground_B"][b].item() * 3
        assert (call["num_real_classes"], call["alpha"], call["gamma"], call["label_smoothing"]) == \
               (num_classes, 0.25, 2.0, 0.0)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-3, atol=1e-4)
    torch.testing.assert_close(through_apex[0], ours[0], **tolerance)  # the loss
    torch.testing.assert_close(through_apex[1].float(), ours[1].float(), **tolerance)  # d loss / d logits
    assert ours[0].item() > 0


def test_focal_loss_with_fewer_classes_than_apex_vector_stays_ours(clean):
    from models.ssd.focal_loss import retinanet_focal_loss

    calls = fake_apex_contrib(clean)
    cls, inputs, _ = _retinanet_batch(2)  # the debug flavour's 2 classes: apex needs >= 4 in fp32
    ours = retinanet_focal_loss(cls, **inputs)
    clean.setenv("MLPERF_KERNELS", "apex")
    assert torch.equal(retinanet_focal_loss(cls, **inputs), ours) and not calls
    clean.setitem(sys.modules, "apex", None)
    backends.reset()
    with pytest.raises(RuntimeError, match="asks for apex's focal_loss, but apex does not import"):
        retinanet_focal_loss(cls, **inputs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_apex_group_norm_and_focal_loss_give_our_numbers(clean):
    """On the GPU image (perf_tests/gpu_check.sh): the real apex ops through the seams against ours."""
    if not backends.apex_usable():
        pytest.skip(backends.apex_status()["group_norm"])
    from kernels.group_norm import group_norm, group_norm_ref
    from models.ssd.focal_loss import retinanet_focal_loss

    torch.manual_seed(0)
    x = torch.randn(8, 320, 32, 32, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.nn.Parameter(1 + 0.1 * torch.randn(320, device="cuda"))
    b = torch.nn.Parameter(0.1 * torch.randn(320, device="cuda"))
    ours = _grads(lambda: group_norm_ref(x.float(), 16, w, b, 1e-5, silu=True), x, w, b)
    clean.setenv("MLPERF_KERNELS", "apex")
    through_apex = _grads(lambda: group_norm(x, 16, w, b, 1e-5, silu=True), x, w, b)
    for out, ref in zip(through_apex, ours):  # bf16 output: a few bf16 ulps
        torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)

    cls, inputs, _ = _retinanet_batch(264)
    cls = cls.detach().cuda().requires_grad_(True)
    inputs = {k: v.cuda() for k, v in inputs.items()}
    through_apex = _grads(lambda: retinanet_focal_loss(cls, **inputs), cls)
    clean.delenv("MLPERF_KERNELS")
    ours = _grads(lambda: retinanet_focal_loss(cls, **inputs), cls)
    for out, ref in zip(through_apex, ours):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)


def test_kernel_benchmarks_time_apex_beside_ours_or_say_why_not(clean):
    # perf_tests/kernels/cases.py: where apex has the op, the case carries it; here (no CUDA) each says why not.
    from conftest import REPO

    clean.syspath_prepend(str(REPO / "perf_tests" / "kernels"))
    import cases

    cpu = torch.device("cpu")
    built = cases.norm_cases(cpu, True) + cases.group_norm_cases(cpu, True) + cases.focal_loss_cases(cpu, True)
    assert {c.op for c in built} >= {"layer_norm", "layer_norm+residual", "group_norm", "group_norm_silu",
                                     "focal_loss"}
    assert all(c.apex is None and c.apex_note == "apex not importable: no CUDA device" for c in built)
    optimizers = cases._apex_optimizers(cpu)
    assert optimizers["lars"][1].startswith("apex has no LARS")
    assert all(optimizers[k] == (None, "apex not importable: no CUDA device")
               for k in ("lamb", "adamw", "adagrad", "sgd"))
    (focal,) = cases.focal_loss_cases(cpu, True)
    focal.ours(), focal.eager()  # both sides run: ours through the seam, the reference through torchvision
