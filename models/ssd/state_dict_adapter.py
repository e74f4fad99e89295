"""Outside weights into our RetinaNet: torchvision's RetinaNet (the parity tests' reference) and the
torchvision ImageNet `resnext50_32x4d` checkpoint (the backbone's starting weights, NVIDIA's BACKBONE_DIR).

Both carry BatchNorm as weight/bias/running_mean/running_var; ours holds the folded scale and bias."""

from __future__ import annotations

import re
import warnings

import torch

from models.ssd.model import FrozenScaleBias, RetinaNet

_BN_PARTS = ("weight", "bias", "running_mean", "running_var")


def _is_bn(prefix: str) -> bool:
    return bool(re.search(r"(^|\.)bn\d$|downsample\.1$", prefix))


def fold_body(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A torchvision ResNet/ResNeXt body (keys under `prefix`) -> our ResNeXtBody keys; `fc` dropped."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        module, _, part = name.rpartition(".")
        if name.startswith("fc.") or part == "num_batches_tracked":
            continue
        if _is_bn(module):
            if part == "weight":
                scale, bias = FrozenScaleBias.fold(*(state[f"{prefix}{module}.{p}"] for p in _BN_PARTS))
                out[f"{module}.scale"], out[f"{module}.bias"] = scale, bias
            continue
        out[name] = value
    return out


def from_torchvision_retinanet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision.models.detection.RetinaNet (ResNet-FPN backbone, LastLevelP6P7) -> RetinaNet keys."""
    out = {f"body.{k}": v for k, v in fold_body(state, "backbone.body.").items()}
    renames = [(r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"fpn.lateral.\1."),
               (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"fpn.output.\1."),
               (r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.", r"fpn.\1."),
               (r"^head\.classification_head\.conv\.(\d+)\.0\.", r"head.cls_convs.\1."),
               (r"^head\.classification_head\.cls_logits\.", "head.cls_logits."),
               (r"^head\.regression_head\.conv\.(\d+)\.0\.", r"head.box_convs.\1."),
               (r"^head\.regression_head\.bbox_reg\.", "head.bbox_reg.")]
    for key, value in state.items():
        for pattern, replacement in renames:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
    return out


def load_backbone(model: RetinaNet, path: str) -> None:
    """The ImageNet weights of a torchvision resnext50_32x4d state-dict file into the backbone."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.body.load_state_dict(fold_body(state), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: not a torchvision ResNeXt state dict for this backbone "
                         f"(missing {missing[:4]}, unexpected {unexpected[:4]})")


def warn_random_backbone() -> None:
    warnings.warn("ssd: no backbone weights (data.init_checkpoint is empty): the backbone starts from random "
                  "weights, so this run is not a valid MLPerf run", stacklevel=2)
