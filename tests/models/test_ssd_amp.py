"""fp16 with a dynamic loss scale, as NVIDIA trains RetinaNet (the real flavours' precision; the scaler lives
in DataParallelBenchmark): torch's GradScaler drives our FusedAdam, a step whose gradients overflow is skipped
and halves the scale, the others equal torch.optim.Adam on the unscaled gradients; an fp16 run resumes exactly."""

from __future__ import annotations

import pytest
import torch

from kernels.optimizers import FusedAdam
from models.ssd.model import SSDModelConfig, build_retinanet


def test_grad_scaler_skips_overflowing_steps_of_fused_adam():
    torch.manual_seed(0)
    ours, reference = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    reference.load_state_dict(ours.state_dict())
    optimizer = FusedAdam(ours.parameters(), lr=1e-2)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=2)
    x = torch.randn(5, 6)
    scales = []
    for step in range(5):
        loss = ours(x).pow(2).sum()
        if step == 1:
            loss = loss * float("inf")  # an fp16 overflow
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scales.append(scaler.get_scale())
        if step != 1:  # the reference takes only the clean steps, unscaled
            reference(x).pow(2).sum().backward()
            reference_optimizer.step()
            reference_optimizer.zero_grad(set_to_none=True)
    # 2^16 kept, halved by the overflow, then doubled after every 2 clean steps (growth_interval)
    assert scales == [2.0**16, 2.0**15, 2.0**15, 2.0**16, 2.0**16]
    assert optimizer.param_groups[0]["step"] == 4  # the skipped step did not count
    torch.testing.assert_close(ours.weight, reference.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.bias, reference.bias, rtol=0, atol=1e-6)


def test_fp16_autocast_losses_are_finite_and_near_fp32():
    from models.ssd.anchors import generate_anchors
    from models.ssd.loss import retinanet_loss

    torch.manual_seed(0)
    cfg = SSDModelConfig(num_classes=3, depths=(1, 1, 1, 1), stem_width=16, groups=4, width_per_group=16,
                         fpn_channels=32, image_size=64, anchor_sizes=(16, 32, 64, 128, 256))
    model = build_retinanet(cfg).train()
    images = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[[4.0, 6.0, 40.0, 44.0]], [[10.0, 8.0, 60.0, 30.0]]])
    labels = torch.tensor([[1], [2]])

    def loss(dtype):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            cls, box, sizes = model(images)
        return sum(retinanet_loss(cls.float(), box.float(), generate_anchors(64, sizes, cfg.anchor_sizes), boxes,
                                  labels))

    full, half = loss(None), loss(torch.float16)
    assert torch.isfinite(half) and half.item() == pytest.approx(full.item(), rel=1e-2)


def test_an_fp16_run_trains_keeps_its_loss_scale_and_resumes_onto_the_uninterrupted_losses(debug_data, tmp_path):
    """The real flavours' precision on the debug model: losses fall, the checkpoint holds the loss scale, and a
    resumed run continues exactly (the scale and its growth counter come back with the weights)."""
    import subprocess

    from conftest import REPO, read_metrics, train_command

    data = debug_data("ssd")
    common = ["--seed", "5", "train.precision=fp16", "run.log_every_steps=1"]

    def run(out, *extra):
        r = subprocess.run(train_command("ssd", data, out, *common, *extra), capture_output=True, text=True,
                           cwd=REPO, timeout=900)
        assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]  # stopped at run.max_steps
        return {m["step"]: m["loss"] for m in read_metrics(out) if "loss" in m}

    full = run(tmp_path / "full", "run.max_steps=8", "run.checkpoint_dir=")
    assert sum(list(full.values())[-3:]) < sum(list(full.values())[:3])
    checkpoints = f"run.checkpoint_dir={tmp_path / 'ck'}"
    run(tmp_path / "first", "run.max_steps=4", checkpoints)
    (saved,) = (tmp_path / "ck").glob("*.pt")
    state = torch.load(saved, weights_only=True)["benchmark"]
    assert state["grad_scaler"]["scale"] > 1
    resumed = run(tmp_path / "resumed", "run.max_steps=8", checkpoints)
    assert sorted(resumed) == list(range(5, 9))
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], rel=1e-6), (step, resumed, full)
