"""The benchmark cases of bench_kernels.py: MLPerf-sized shapes for every kernel in kernels/.

Each case gives three callables running the same work: ours (the Triton path), the torch reference in
eager mode, and the reference to be wrapped in torch.compile (None where compiling it means nothing);
and the work one call does, as ideal bytes moved (memory-bound kernels: every input read once, every
output written once) or as FLOPs (GEMMs). Shapes, one sequence unless stated (tokens x features):
BERT 512 x 1024 (and a 48-sequence per-GPU batch, NVIDIA's 8-GPU setting), GPT-3 2048 x 12288,
Llama 8192 x 8192; vocabularies 30522 (BERT), 51200 (GPT-3, padded), 32000 (Llama).

Where apex has the op (the anchor our kernels replace in NVIDIA's submissions) a case also carries apex's version
of the same work, configured as ours (kernels/backends.py's translations for the optimizers), run only when apex
is usable on this device; otherwise `apex_note` says why ("apex not importable ...", "apex has no LARS").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import backends


@dataclass
class Case:
    op: str
    shape: str
    mode: str  # "fwd", "fwd+bwd" or "step"
    unit: str  # "bytes" or "flops"
    work: float
    ours: Callable[[], object]
    eager: Callable[[], object]
    compile_target: Callable | None = None  # a function of the same inputs, compiled by the runner
    compile_args: tuple = ()
    apex: Callable[[], object] | None = None  # apex's version of the same work, where apex is usable
    apex_note: str = "no apex op timed"  # why there is no apex timing


def apex_or_why(name: str, device: torch.device):
    """(apex's class or function for one of backends.APEX_OPS, "") when apex runs here; (None, the reason)
    otherwise, so that the table says why a row has no apex column."""
    if device.type != "cuda":
        return None, "apex not importable: no CUDA device"
    status = backends.apex_status()[name]
    if status != "imports":
        return None, f"apex not importable: {status[:70]}"
    return backends.apex_op(name), ""


def _with_kernels_mode(mode: str, fn):
    """fn run with MLPERF_KERNELS=mode (read per call by kernels/dispatch.py), the previous value restored."""
    def run():
        before = os.environ.get("MLPERF_KERNELS")
        os.environ["MLPERF_KERNELS"] = mode
        try:
            return fn()
        finally:
            if before is None:
                del os.environ["MLPERF_KERNELS"]
            else:
                os.environ["MLPERF_KERNELS"] = before
    return run


def _fwd_bwd(fn, inputs, *extra):
    """A closure running fn forward and its backward for a fixed random upstream gradient, computing every
    gradient a training step would: the inputs' and, for a module, its parameters' (a baseline that skipped
    the weight gradient would do a third less work than the path it is compared with)."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if isinstance(fn, torch.nn.Module):
        leaves += [p for p in fn.parameters() if p.requires_grad]
    upstream = []

    def run():
        out = fn(*inputs, *extra)
        outs = out if isinstance(out, tuple) else (out,)
        if not upstream:
            upstream.extend(torch.randn_like(o) for o in outs)
        return torch.autograd.grad(outs, leaves, upstream)

    return run


def _rand(*shape, device, dtype=torch.bfloat16, grad=True):
    return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)


def norm_cases(device, smoke):
    from kernels.layer_norm import layer_norm, layer_norm_ref
    from kernels.rms_norm import rms_norm, rms_norm_ref

    shapes = {"bert 512x1024": (512, 1024), "bert 48x512x1024": (24576, 1024), "gpt3 2048x12288": (2048, 12288),
              "llama 8192x8192": (8192, 8192)}
    if smoke:
        shapes = {"smoke 64x96": (64, 96)}
    apex_layer_norm, layer_norm_note = apex_or_why("layer_norm", device)
    apex_rms_norm, rms_norm_note = apex_or_why("rms_norm", device)
    cases = []
    for name, (m, n) in shapes.items():
        x, r = _rand(m, n, device=device), _rand(m, n, device=device)
        w, b = _rand(n, device=device, dtype=torch.float32), _rand(n, device=device, dtype=torch.float32)
        e = x.element_size()
        if "llama" in name:
            apex = None
            if apex_rms_norm is not None:  # bf16 parameters: apex's FusedRMSNorm takes the input's dtype
                apex = _fwd_bwd(apex_rms_norm(n, eps=1e-5).to(device, torch.bfloat16), (x,))
            cases.append(Case("rms_norm", name, "fwd+bwd", "bytes", 5 * m * n * e,
                              _fwd_bwd(rms_norm, (x, w, 1e-5)), _fwd_bwd(rms_norm_ref, (x, w, 1e-5)),
                              rms_norm_ref, (x, w, 1e-5), apex, rms_norm_note))
            continue
        apex_fwd = apex_fwd_bwd = None
        if apex_layer_norm is not None:
            module = apex_layer_norm(n, eps=1e-5).to(device, torch.bfloat16)
            apex_fwd = torch.no_grad()(lambda module=module, x=x: module(x))  # as ours: no graph kept
            # apex has no residual fusion: the add is a separate kernel, as in a model using apex's norm
            apex_fwd_bwd = _fwd_bwd(_ResidualThenNorm(module), (x, r))
        cases.append(Case("layer_norm", name, "fwd", "bytes", 2 * m * n * e,
                          lambda x=x, w=w, b=b: layer_norm(x.detach(), w.detach(), b.detach()),
                          lambda x=x, w=w, b=b: layer_norm_ref(x.detach(), w.detach(), b.detach()),
                          layer_norm_ref, (x.detach(), w.detach(), b.detach()), apex_fwd, layer_norm_note))
        # pre-LN block: x + residual -> (y, sum); backward reads dy, dsum, sum; writes dx
        cases.append(Case("layer_norm+residual", name, "fwd+bwd", "bytes", (4 + 4) * m * n * e,
                          _fwd_bwd(lambda *a: layer_norm(*a[:4], residual=a[4]), (x, w, b, 1e-5, r)),
                          _fwd_bwd(lambda *a: layer_norm_ref(*a[:4], residual=a[4]), (x, w, b, 1e-5, r)),
                          lambda *a: layer_norm_ref(*a[:4], residual=a[4]), (x, w, b, 1e-5, r),
                          apex_fwd_bwd, layer_norm_note))
    return cases


class _ResidualThenNorm(torch.nn.Module):
    """(norm(x + residual), x + residual) through a norm module: the pre-LN block's outputs, as ours returns."""

    def __init__(self, norm: torch.nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x, residual):
        total = x + residual
        return self.norm(total), total


def elementwise_cases(device, smoke):
    from kernels.bias_dropout_add import bias_dropout_add, bias_dropout_add_ref
    from kernels.bias_gelu import bias_gelu, bias_gelu_ref

    gelu_shapes = {"bert ffn 48x512x4096": (24576, 4096), "gpt3 ffn 2048x49152": (2048, 49152)}
    bda_shapes = {"bert 48x512x1024": (24576, 1024), "gpt3 2048x12288": (2048, 12288)}
    if smoke:
        gelu_shapes, bda_shapes = {"smoke 64x96": (64, 96)}, {"smoke 64x96": (64, 96)}
    cases = []
    for name, (m, n) in gelu_shapes.items():
        x, b = _rand(m, n, device=device), _rand(n, device=device)
        for approximate in ("tanh", "none"):
            args = (x, b, approximate)
            cases.append(Case(f"bias_gelu {approximate}", name, "fwd+bwd", "bytes", 5 * m * n * x.element_size(),
                              _fwd_bwd(bias_gelu, args), _fwd_bwd(bias_gelu_ref, args), bias_gelu_ref, args))
    for name, (m, n) in bda_shapes.items():
        x, r, b = _rand(m, n, device=device), _rand(m, n, device=device), _rand(n, device=device)
        ours = (x, b, r, 0.1, True, 1234, 0)
        ref = (x, b, r, 0.1, 1234, 0)  # the reference regenerates the same Philox mask in torch
        cases.append(Case("bias_dropout_add p=0.1", name, "fwd+bwd", "bytes", 5 * m * n * x.element_size(),
                          _fwd_bwd(bias_dropout_add, ours), _fwd_bwd(bias_dropout_add_ref, ref),
                          bias_dropout_add_ref, ref))
    return cases


def cross_entropy_cases(device, smoke):
    from kernels.cross_entropy import cross_entropy, cross_entropy_ref

    shapes = {"bert mlm 48x76 x 30522": (3648, 30522), "gpt3 2048 x 51200": (2048, 51200),
              "llama 8192 x 32000": (8192, 32000)}
    if smoke:
        shapes = {"smoke 16 x 1000": (16, 1000)}
    cases = []
    for name, (m, v) in shapes.items():
        logits = _rand(m, v, device=device)
        target = torch.randint(0, v, (m,), device=device)
        args = (logits, target, -100, 0.1)
        # ideal traffic: logits read once, gradient written once (the kernel reads them twice)
        cases.append(Case("cross_entropy ls=0.1", name, "fwd+bwd", "bytes", 2 * m * v * logits.element_size(),
                          _fwd_bwd(cross_entropy, args), _fwd_bwd(cross_entropy_ref, args),
                          cross_entropy_ref, args))
    return cases


def _bert_large_shapes():
    h, f, layers = 1024, 4096, 24
    shapes = [(30522, h), (512, h), (2, h), (h,), (h,)]
    for _ in range(layers):
        shapes += [(h, h), (h,)] * 4 + [(h,), (h,), (f, h), (f,), (h, f), (h,), (h,), (h,)]
    return shapes + [(h, h), (h,), (h,), (h,), (30522,)]


def _resnet50_shapes():
    try:
        from models.resnet.model import ResNetModelConfig, build_resnet

        return [p.shape for p in build_resnet(ResNetModelConfig()).parameters()]
    except Exception:  # the model module's config changed: a stand-in with ResNet-50's 25.6M parameters
        return [(64, 3, 7, 7)] + [(256, 256, 3, 3)] * 43 + [(256,)] * 100 + [(1000, 2048), (1000,)]


def _gpt3_shard_shapes(layers=4, h=12288, tp=8):
    per_layer = [(3 * h // tp, h), (3 * h // tp,), (h, h // tp), (h,), (4 * h // tp, h), (4 * h // tp,),
                 (h, 4 * h // tp), (h,), (h,), (h,), (h,), (h,)]
    return per_layer * layers


def _dlrm_dense_shapes():
    d = 26 * 128 + 128  # concatenated embeddings and bottom-MLP output
    bottom = [(512, 13), (512,), (256, 512), (256,), (128, 256), (128,)]
    cross = [(512, d), (d, 512), (d,)] * 3  # DCN-v2: 3 low-rank (512) cross layers
    top = [(1024, d), (1024,), (1024, 1024), (1024,), (512, 1024), (512,), (256, 512), (256,), (1, 256), (1,)]
    return bottom + cross + top


def _unet3d_shapes():
    from models.unet3d.model import UNet3DModelConfig, build_unet3d

    with torch.device("meta"):
        return [tuple(p.shape) for p in build_unet3d(UNet3DModelConfig()).parameters()]


def optimizer_cases(device, smoke):
    from kernels.lamb_ref import LambReference
    from kernels.optimizers import FusedAdagrad, FusedAdamW, FusedLAMB, FusedLARS, FusedSGD
    from models.resnet.lars import LARS

    sets = {"lars": ("resnet50", _resnet50_shapes()), "lamb": ("bert-large", _bert_large_shapes()),
            "adamw": ("gpt3 TP8 4-layer shard", _gpt3_shard_shapes()), "adagrad": ("dlrm dense", _dlrm_dense_shapes()),
            "sgd": ("unet3d", _unet3d_shapes())}
    if smoke:
        sets = {k: (f"smoke {k}", [(33, 17), (17,), (1100,)]) for k in sets}
    builders = {
        "lars": (28, lambda ps: FusedLARS([{"params": ps}], lr=0.1), lambda ps: LARS([{"params": ps}], lr=0.1)),
        "lamb": (48, lambda ps: FusedLAMB(ps, lr=1e-3), lambda ps: LambReference(ps, lr=1e-3)),
        "adamw": (28, lambda ps: FusedAdamW(ps, lr=1e-4, weight_decay=0.1),
                  lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.1, foreach=True)),
        "adagrad": (20, lambda ps: FusedAdagrad(ps, lr=0.01, eps=1e-8),
                    lambda ps: torch.optim.Adagrad(ps, lr=0.01, eps=1e-8, foreach=True)),
        # SGD: read w, g, buf; write w, buf (fp32)
        "sgd": (20, lambda ps: FusedSGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, foreach=True)),
    }
    apex_builders = _apex_optimizers(device)
    cases = []
    for key, (name, shapes) in sets.items():
        bytes_per_param, fused, reference = builders[key]
        apex_make, apex_note = apex_builders[key]
        steps = []
        for make in (fused, reference, apex_make):
            if make is None:
                steps.append(None)
                continue
            params = [torch.nn.Parameter(torch.randn(s, device=device) * 0.01) for s in shapes]
            optimizer = make(params)
            for p in params:
                p.grad = torch.randn_like(p) * 1e-3
            optimizer.step()  # the fused one moves the gradients into its flat buffer here
            steps.append(optimizer.step)
        n = sum(torch.Size(s).numel() for s in shapes)
        cases.append(Case(f"{key} step", f"{name} ({n / 1e6:.1f}M params)", "step", "bytes", bytes_per_param * n,
                          steps[0], steps[1], None, (), steps[2], apex_note))
    return cases


def _apex_optimizers(device):
    """key -> (apex's optimizer built with ours' arguments, or None; why not). LAMB and AdamW through
    kernels/backends.py's translation of our constructors (what MLPERF_KERNELS=apex trains with)."""
    out = {"lars": (None, "apex has no LARS (NVIDIA's ResNet uses its own MXNet/DALI LARS)")}
    lamb, why = apex_or_why("lamb", device)
    out["lamb"] = (lambda ps: backends.apex_optimizer("lamb")(ps, lr=1e-3)) if lamb else None, why
    adam, why = apex_or_why("adam", device)
    out["adamw"] = ((lambda ps: backends.apex_optimizer("adamw")(ps, lr=1e-4, weight_decay=0.1)) if adam else None,
                    why)
    adagrad, why = apex_or_why("adagrad", device)
    out["adagrad"] = (lambda ps: adagrad(ps, lr=0.01, eps=1e-8)) if adagrad else None, why
    sgd, why = apex_or_why("sgd", device)
    out["sgd"] = (lambda ps: sgd(ps, lr=0.1, momentum=0.9, nesterov=True)) if sgd else None, why
    return out


GROUP_NORM_GROUPS = 16
SD_GROUP_NORM_SHAPES = [(64, 320, 64, 64), (64, 640, 32, 32), (64, 1280, 16, 16), (64, 1280, 8, 8)]


def group_norm_cases(device: torch.device, smoke: bool) -> list[Case]:
    """GroupNorm(+SiLU) on the SD-2 UNet's shapes: NVIDIA's per-GPU batch of 64 at the four resolutions (latent
    64 x 64 at 320 channels down to 8 x 8 at 1280), bf16, channels_last, 16 groups; with SiLU (ResBlocks) and
    without (the spatial transformers' norm). Forward reads x, writes y; forward + backward also reads dy and
    x again and writes dx (5 tensors of x's size)."""
    from kernels.group_norm import group_norm, group_norm_ref

    shapes = [(2, 32, 8, 8)] if smoke else SD_GROUP_NORM_SHAPES
    apex_group_norm, apex_note = apex_or_why("group_norm", device)
    out = []
    for shape in shapes:
        x = torch.randn(*shape, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        w = torch.ones(shape[1], device=device, requires_grad=True)
        b = torch.zeros(shape[1], device=device, requires_grad=True)
        nbytes = x.numel() * x.element_size()
        name = "x".join(map(str, shape))
        for silu in (True, False):
            op = "group_norm_silu" if silu else "group_norm"

            def ours(x, w, b, silu=silu):
                return group_norm(x, GROUP_NORM_GROUPS, w, b, 1e-5, silu=silu)

            def torch_eager(x, w, b, silu=silu):
                y = F.group_norm(x, GROUP_NORM_GROUPS, w, b, 1e-5)
                return F.silu(y) if silu else y

            def reference(x, w, b, silu=silu):
                return group_norm_ref(x, GROUP_NORM_GROUPS, w, b, 1e-5, silu)

            inputs = (x, w, b)
            apex_fwd = apex_fwd_bwd = None
            if apex_group_norm is not None:  # apex's module with fp32 parameters, as the UNet's
                module = apex_group_norm(GROUP_NORM_GROUPS, shape[1], eps=1e-5, device=device,
                                         act="silu" if silu else None)
                apex_fwd, apex_fwd_bwd = (lambda m=module, x=x: m(x)), _fwd_bwd(module, (x,))
            out.append(Case(op, name, "fwd", "bytes", 2 * nbytes, lambda f=ours, a=inputs: f(*a),
                            lambda f=torch_eager, a=inputs: f(*a), reference, inputs, apex_fwd, apex_note))
            out.append(Case(op, name, "fwd+bwd", "bytes", 5 * nbytes, _fwd_bwd(ours, inputs),
                            _fwd_bwd(torch_eager, inputs), reference, inputs, apex_fwd_bwd, apex_note))
    return out


# RetinaNet at 800 x 800: 9 anchors at each position of P3-P7 (100^2 + 50^2 + 25^2 + 13^2 + 7^2), 264 OpenImages
# classes, NVIDIA's per-GPU batch of the 8-node system (GBS 256 on 64 GPUs); fp16 logits as under autocast.
SSD_FOCAL_SHAPE = (4, 9 * (100 ** 2 + 50 ** 2 + 25 ** 2 + 13 ** 2 + 7 ** 2), 264)


def focal_loss_cases(device: torch.device, smoke: bool) -> list[Case]:
    """RetinaNet's classification loss, forward + backward: ours (models/ssd/focal_loss.py's torch path), the
    reference's arithmetic (torchvision's sigmoid_focal_loss on one-hot targets, masked and normalised per image)
    and apex's fused kernel through our seam (MLPERF_KERNELS=apex for the call). Ideal traffic: the logits read
    once and their gradient written once."""
    from torchvision.ops import sigmoid_focal_loss as torchvision_focal_loss

    from models.ssd.focal_loss import retinanet_focal_loss

    b, n, k = (2, 300, 16) if smoke else SSD_FOCAL_SHAPE
    logits = _rand(b, n, k, device=device, dtype=torch.float16)
    generator = torch.Generator(device=device).manual_seed(0)
    state = torch.randint(0, 100, (b, n), device=device, generator=generator)
    foreground, ignored = state < 1, (state >= 1) & (state < 3)  # ~1% foreground, ~2% ignored
    labels = torch.randint(0, k, (b, n), device=device, generator=generator)
    count = foreground.sum(1).clamp(min=1).float()

    def ours(logits):
        return retinanet_focal_loss(logits, labels, foreground, ignored, count)

    def reference(logits):
        target = F.one_hot(labels, k).float() * foreground[..., None]
        loss = torchvision_focal_loss(logits.float(), target, alpha=0.25, gamma=2.0, reduction="none")
        return (torch.where(ignored[..., None], 0.0, loss).sum((1, 2)) / count).mean()

    apex_focal, apex_note = apex_or_why("focal_loss", device)
    apex = _with_kernels_mode("apex", _fwd_bwd(ours, (logits,))) if apex_focal is not None else None
    return [Case("focal_loss", "x".join(map(str, (b, n, k))), "fwd+bwd", "bytes", 2 * logits.numel() * 2,
                 _fwd_bwd(ours, (logits,)), _fwd_bwd(reference, (logits,)), ours, (logits,), apex, apex_note)]


def fp8_cases(device, smoke):
    from kernels.fp8 import FP8Linear

    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9) or smoke:
        return []
    m, k, n = 8192, 12288, 12288  # 4 GPT-3 sequences through one d_model x d_model projection
    fp8 = FP8Linear(k, n, bias=False).to(device)
    bf16 = torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16)
    x = _rand(m, k, device=device)
    return [Case("fp8 linear (_scaled_mm)", f"{m}x{k} @ {k}x{n}", "fwd+bwd", "flops", 6 * m * k * n,
                 _fwd_bwd(fp8, (x,)), _fwd_bwd(bf16, (x,)), None)]


ALL = (norm_cases, elementwise_cases, cross_entropy_cases, optimizer_cases, group_norm_cases, focal_loss_cases,
       fp8_cases)
