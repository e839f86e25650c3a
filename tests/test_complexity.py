"""count_parameters / count_macs on models small enough to count by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnas.evaluation.complexity import count_macs, count_parameters


class Hand(nn.Module):
    """Conv2d(1, 2, 3, padding=1) on 1x4x4 -> BN -> ReLU -> Linear(32, 3), plus an unused
    auxiliary head.

    params: conv 2·1·9 + 2 = 20, BN 2 + 2 = 4, linear 32·3 + 3 = 99   -> 123
            (auxiliary Linear(32, 5): 165, excluded by default)
    MACs:   conv 2·4·4 outputs · 1 · 9 = 288, linear 32 · 3 = 96       -> 384
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(32, 3)
        self.auxiliary_head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_count_parameters_by_hand():
    model = Hand()
    assert count_parameters(model) == 123
    assert count_parameters(model, exclude_prefixes=()) == 123 + 165
    assert count_parameters(model, exclude_prefixes=("auxiliary", "bn")) == 119
    model.conv.bias.requires_grad_(False)  # frozen parameters are not trainable
    assert count_parameters(model) == 121


def test_count_parameters_counts_shared_weights_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, shared)
    assert count_parameters(model) == 20


def test_count_macs_by_hand():
    assert count_macs(Hand(), (1, 4, 4)) == 288 + 96


@pytest.mark.parametrize(
    "layer, shape, expected",
    [
        (nn.Conv2d(1, 2, 3, stride=2, padding=1), (1, 4, 4), 2 * 2 * 2 * 1 * 9),
        (nn.Conv2d(4, 4, 3, padding=1, groups=2), (4, 4, 4), 4 * 4 * 4 * 2 * 9),
        (nn.Conv2d(4, 4, 3, padding=1, groups=4), (4, 4, 4), 4 * 4 * 4 * 1 * 9),  # depthwise
        (nn.Conv2d(3, 5, (1, 3)), (3, 2, 6), 5 * 2 * 4 * 3 * 1 * 3),
        (nn.Conv2d(2, 2, 3, padding=2, dilation=2), (2, 5, 5), 2 * 5 * 5 * 2 * 9),
        (nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(2), nn.ReLU()), (3, 4, 4), 0),
    ],
)
def test_count_macs_layers(layer, shape, expected):
    assert count_macs(layer, shape) == expected


def test_count_macs_counts_reused_modules_every_call():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Flatten(), shared, shared)
    assert count_macs(model, (1, 2, 2)) == 2 * 16


def test_count_macs_restores_modes_and_state():
    model = Hand().train()
    model.bn.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, (1, 4, 4))  # BN on a batch of 1 would fail (and update stats) in train
    assert model.training and model.conv.training and not model.bn.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_count_macs_without_parameters_and_bad_shape():
    assert count_macs(nn.Flatten(), (1, 2, 2)) == 0
    with pytest.raises(ValueError, match="input_shape"):
        count_macs(Hand(), (4, 4))
