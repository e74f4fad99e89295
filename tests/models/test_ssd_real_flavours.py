"""RetinaNet's real flavours built on CPU without a dataset (the full-size model, its ImageNet backbone from a
torchvision resnext50_32x4d state-dict file): the logged hyperparameters against mlperf-logging's RCP file and
against what the built optimizer and schedule use; the warm-up and the epoch blocks worked out by hand."""

from __future__ import annotations

import glob
import json
import os

import mlperf_logging
import pytest
import torch
from conftest import build_logged

from kernels.optimizers import FusedAdam
from models.ssd import SPEC
from models.ssd.config import BACKBONE_FILE

# By hand from the spec: 1,170,301 training images, GBS 256, last partial batch dropped
STEPS_PER_EPOCH = 4571  # 1,170,301 // 256 (256 x 4571 = 1,170,176; 125 images left over)


def _rcp(batch: int) -> dict:
    path = glob.glob(os.path.join(os.path.dirname(mlperf_logging.__file__), "rcp_checker", "training_4.0.0",
                                  "rcps_ssd.json"))[0]
    return next(v for v in json.load(open(path)).values() if v["BS"] == batch)


@pytest.fixture(scope="module")
def imagenet_backbone(tmp_path_factory):
    """A torchvision resnext50_32x4d state dict (random: only its layout matters), saved as BACKBONE_DIR holds it."""
    from torchvision.models import resnext50_32x4d

    tmp = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(3)
    state = resnext50_32x4d(weights=None).state_dict()
    torch.save(state, tmp / BACKBONE_FILE)
    return tmp, state


@pytest.fixture(scope="module", params=["dgxh100_1x8", "dgxh100_8x8"])
def built(request, imagenet_backbone):
    tmp, state = imagenet_backbone
    run_dir = tmp / request.param
    run_dir.mkdir()
    cfg = SPEC.config(request.param)
    cfg.data.init_checkpoint = str(tmp / cfg.data.init_checkpoint)  # the flavour names the file; here it is in tmp
    bench, logged = build_logged(SPEC, cfg, run_dir)
    yield cfg, bench, logged, state
    bench.close()


def test_the_flavours_are_the_rcp_point(built):
    cfg, bench, logged, _ = built
    assert cfg.train.global_batch_size == logged["global_batch_size"] == 256
    hp = _rcp(256)["Hyperparams"]
    assert logged["opt_base_learning_rate"] == hp["opt_base_learning_rate"] == 1e-4
    assert logged["opt_learning_rate_warmup_epochs"] == hp["opt_learning_rate_warmup_epochs"] == 1
    assert logged["opt_learning_rate_warmup_factor"] == hp["opt_learning_rate_warmup_factor"] == 1e-3
    assert logged["opt_weight_decay"] == hp["opt_weight_decay"] == 0
    assert logged["opt_name"] == "adam" and logged["gradient_accumulation_steps"] == 1
    assert logged["weights_initialization"] == "imagenet_backbone"
    assert cfg.data.init_checkpoint.endswith(BACKBONE_FILE)
    assert (cfg.data.train_samples, cfg.data.eval_samples) == (1_170_301, 24_781)
    assert cfg.run.target == 0.34 and cfg.run.submission_division == "closed"
    # one process here: the local batch is the whole global batch
    assert logged["local_batch_size"] == bench.micro_batch == 256


def test_logged_hyperparameters_are_what_the_optimizer_uses(built):
    _, bench, logged, _ = built
    (group,) = bench.optimizer.param_groups
    assert isinstance(bench.optimizer, FusedAdam)
    assert group["weight_decay"] == logged["opt_weight_decay"] and not group["decoupled_weight_decay"]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8  # torch.optim.Adam's defaults, as the reference
    # the frozen stem and layer1 are not in the optimizer; everything else is
    model = bench.model
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in group["params"]} == trainable
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}


def test_the_backbone_is_the_checkpoints(built):
    _, bench, _, state = built
    body = bench.model.body
    torch.testing.assert_close(body.layer4[2].conv2.weight, state["layer4.2.conv2.weight"], rtol=0, atol=0)
    # BN folded once: scale = gamma / sqrt(var + 1e-5), bias = beta - mean * scale
    gamma, beta = state["layer3.0.bn1.weight"], state["layer3.0.bn1.bias"]
    mean, var = state["layer3.0.bn1.running_mean"], state["layer3.0.bn1.running_var"]
    scale = gamma / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(body.layer3[0].bn1.scale, scale)
    torch.testing.assert_close(body.layer3[0].bn1.bias, beta - mean * scale)


def test_the_warmup_by_hand(built):
    _, bench, _, _ = built
    assert bench.steps_per_epoch == STEPS_PER_EPOCH and bench.warmup_steps == STEPS_PER_EPOCH  # 1 epoch
    # factor 1e-3 at step 0, linear in the step to 1 at the end of the first epoch, then the base lr
    assert bench.learning_rate(0) == pytest.approx(1e-7, rel=1e-12)
    assert bench.learning_rate(1) == pytest.approx(1e-4 * (1e-3 + (1 - 1e-3) / 4571), rel=1e-12)
    assert bench.learning_rate(2000) == pytest.approx(1e-4 * (1e-3 * 2571 / 4571 + 2000 / 4571), rel=1e-12)
    assert bench.learning_rate(4570) == pytest.approx(1e-4 * (1e-3 / 4571 + 4570 / 4571), rel=1e-12)
    assert bench.learning_rate(4571) == bench.learning_rate(8 * 4571 - 1) == 1e-4
    bench.set_learning_rate(bench.learning_rate(2000))
    assert bench.optimizer.param_groups[0]["lr"] == bench.learning_rate(2000)


def test_an_eval_after_every_epoch_until_the_cap(built):
    cfg, bench, _, _ = built
    blocks = bench.blocks()
    assert cfg.train.max_epochs == 8  # NVIDIA's cap at this scale
    assert [b.steps for b in blocks] == [4571] * 8
    assert [b.eval_metadata for b in blocks] == [{"epoch_num": e} for e in range(1, 9)]
    assert [b.start_metadata for b in blocks] == [{"first_epoch_num": e, "epoch_count": 1} for e in range(1, 9)]
    # the RCP's runs converged at epoch 4: an eval lands there, with room for slower seeds
    assert set(_rcp(256)["Epochs to converge"]) == {4} and {"epoch_num": 4} in [b.eval_metadata for b in blocks]


def test_the_full_size_model_at_800(built):
    _, bench, _, _ = built
    model_cfg = bench.cfg.model
    assert (model_cfg.image_size, model_cfg.num_classes, model_cfg.fpn_channels) == (800, 264, 256)
    with torch.device("meta"):  # shapes only: the levels a 800x800 input gives
        from models.ssd.model import build_retinanet

        cls, box, sizes = build_retinanet(model_cfg)(torch.empty(1, 3, 800, 800))
    assert [tuple(s) for s in sizes] == [(100, 100), (50, 50), (25, 25), (13, 13), (7, 7)]
    n = 9 * (100 * 100 + 50 * 50 + 25 * 25 + 13 * 13 + 7 * 7)  # 120,087: the spec's "about 120k"
    assert cls.shape == (1, n, 264) and box.shape == (1, n, 4)
    anchors = bench.anchors([(100, 100), (50, 50), (25, 25), (13, 13), (7, 7)])
    assert anchors.shape == (n, 4)
    # the first anchor: P3 (stride 8), location (0, 0), size 32, aspect 0.5 -> w 32*sqrt(2), h 32/sqrt(2)
    w, h = 32 * 2 ** 0.5, 32 / 2 ** 0.5
    torch.testing.assert_close(anchors[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]).round(), rtol=0, atol=0)
