"""LARS and its schedule against expectations computed here by hand, independently of the optimizer code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.resnet.lars import LARS, poly_decay_steps, poly_warmup_lr
from models.resnet.model import lars_param_groups

MOMENTUM, WEIGHT_DECAY, EETA = 0.9, 0.01, 0.001


def test_two_steps_with_round_numbers():
    """w = (3, 4), g = (0.6, 0.8): |w| = 5, |g| = 1, so every intermediate is exact on paper."""
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    bias = nn.Parameter(torch.tensor([1.0]))
    optimizer = LARS([{"params": [weight]}, {"params": [bias], "lars": False}], lr=2.0,
                     momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, eeta=EETA)
    weight.grad, bias.grad = torch.tensor([[0.6, 0.8]]), torch.tensor([0.5])
    optimizer.step()
    # trust = 0.001 * 5 / (1 + 0.01 * 5) = 0.005 / 1.05; g' = (0.63, 0.84) = 1.05 * g
    # v = 2 * trust * g' = (0.006, 0.008); bias: v = 2 * 0.5 = 1
    torch.testing.assert_close(weight.detach(), torch.tensor([[2.994, 3.992]]))
    torch.testing.assert_close(bias.detach(), torch.tensor([0.0]))
    optimizer.step()  # same gradients
    # w = 0.998 * (3, 4): |w| = 4.99, trust = 0.00499 / 1.0499, g' = 1.0499 * g, so lr * trust * g' =
    # (0.005988, 0.007984); v = 0.9 * (0.006, 0.008) + that = (0.011388, 0.015184); bias v = 0.9 + 1
    torch.testing.assert_close(weight.detach(), torch.tensor([[2.982612, 3.976816]]))
    torch.testing.assert_close(bias.detach(), torch.tensor([-1.9]))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(4, 5)
        self.dead = nn.Linear(5, 2, bias=False)  # all-zero weight: trust ratio 1
        nn.init.zeros_(self.dead.weight)


def expected_step(w, g, v, lr, included):
    """One update of one tensor in float64, written from the formula in the reference."""
    if included:
        w_norm, g_norm = np.sqrt(np.sum(w * w)), np.sqrt(np.sum(g * g))
        trust = EETA * w_norm / (g_norm + WEIGHT_DECAY * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
        v = MOMENTUM * v + lr * trust * (g + WEIGHT_DECAY * w)
    else:
        v = MOMENTUM * v + lr * g
    return w - v, v


def test_steps_match_hand_computation_per_tensor():
    torch.manual_seed(0)
    model = Tiny()
    groups = lars_param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in groups[0]["params"]) == ["conv.weight", "dead.weight", "fc.weight"]
    assert sorted(names[id(p)] for p in groups[1]["params"]) == ["bn.bias", "bn.weight", "conv.bias", "fc.bias"]

    optimizer = LARS(groups, lr=0.5, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, eeta=EETA)
    included = {id(p) for p in groups[0]["params"]}
    params = list(model.parameters())
    weights = [p.detach().double().numpy().copy() for p in params]
    velocities = [np.zeros_like(w) for w in weights]
    generator = torch.Generator().manual_seed(1)
    for lr in (0.5, 2.0):  # the second step also checks that set_lr reaches every group
        optimizer.set_lr(lr)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        model.fc.weight.grad.zero_()  # zero gradient norm: trust ratio 1, update = lr * wd * w
        grads_before = [p.grad.clone() for p in params]
        optimizer.step()
        for i, p in enumerate(params):
            g = grads_before[i].double().numpy()
            weights[i], velocities[i] = expected_step(weights[i], g, velocities[i], lr, id(p) in included)
            torch.testing.assert_close(p.detach().double(), torch.from_numpy(weights[i]), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(p.grad, grads_before[i], rtol=0, atol=0)  # gradients left alone
    assert not torch.all(model.dead.weight == 0)  # moved by the full lr, not by a 0/0 trust ratio


def test_step_never_reads_values_on_the_host():
    """Meta tensors hold no data, so any .item() / bool() / data-dependent branch would raise here."""
    with torch.device("meta"):
        model = Tiny()
        optimizer = LARS(lars_param_groups(model), lr=torch.tensor(1.0))
        for p in model.parameters():
            p.grad = torch.empty_like(p)
        optimizer.step()
        optimizer.set_lr(torch.tensor(3.0))
        optimizer.step()


def test_lr_tensor_shared_and_state_dict_round_trip():
    model = Tiny()
    optimizer = LARS(lars_param_groups(model), lr=1.0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    optimizer.set_lr(torch.tensor(0.25))
    state = optimizer.state_dict()
    restored = LARS(lars_param_groups(model), lr=7.0)
    lr_tensor = restored.lr_tensor
    restored.load_state_dict(state)
    assert restored.param_groups[0]["lr"] is restored.param_groups[1]["lr"] is lr_tensor
    assert restored.lr_tensor.item() == 0.25
    for p in model.parameters():
        torch.testing.assert_close(restored.state[p]["momentum_buffer"], optimizer.state[p]["momentum_buffer"])
    restored.set_lr(0.5)
    assert all(g["lr"].item() == 0.5 for g in restored.param_groups)


# base 10, 4 warmup steps, 12 steps in all: decay over 12 - 4 + 1 = 9 steps as in the reference.
SCHEDULE = dict(base_lr=10.0, warmup_steps=4, total_steps=12, end_lr=1e-4, power=2)
DECAY_SPAN = 10.0 - 1e-4


@pytest.mark.parametrize("step, expected", [
    (0, 0.0),  # the first update of the reference runs at lr 0
    (2, 5.0),  # mid-warmup
    (4, 10.0),  # end of warmup: still the warmup branch, which has reached base_lr
    (5, DECAY_SPAN * (8 / 9) ** 2 + 1e-4),
    (8, DECAY_SPAN * (5 / 9) ** 2 + 1e-4),  # mid-decay
    (11, DECAY_SPAN * (2 / 9) ** 2 + 1e-4),  # the last of the 12 updates, still above end_lr
    (13, 1e-4),  # p = 9 = decay_steps
    (100, 1e-4),  # clipped past the end
])
def test_poly_warmup_schedule(step, expected):
    assert poly_warmup_lr(step, **SCHEDULE) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    on_device = poly_warmup_lr(torch.tensor(step), **SCHEDULE)
    assert on_device.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_logged_decay_steps_are_the_ones_used():
    assert poly_decay_steps(SCHEDULE["warmup_steps"], SCHEDULE["total_steps"]) == 9


def test_schedule_without_warmup_and_with_fractional_warmup():
    assert poly_warmup_lr(0, base_lr=2.0, warmup_steps=0, total_steps=9) == pytest.approx(2.0)
    assert poly_warmup_lr(torch.tensor(0), base_lr=2.0, warmup_steps=0, total_steps=9).item() == pytest.approx(2.0)
    # warmup epochs * steps per epoch need not be whole: 2.5 warmup steps
    assert poly_warmup_lr(2, base_lr=5.0, warmup_steps=2.5, total_steps=10) == pytest.approx(4.0)
    assert poly_warmup_lr(3, base_lr=5.0, warmup_steps=2.5, total_steps=10) == pytest.approx(
        (5.0 - 1e-4) * (1 - 0.5 / 8.5) ** 2 + 1e-4)
