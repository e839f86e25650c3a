"""Per-channel normalization as the first layer of a model.

Inputs are kept in [0, 1] everywhere (RobustBench's convention) and normalized inside the model,
so an attack's epsilon is always in pixel units: x_norm = (x - mean) / std, per channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["NORMALIZATION", "Normalize", "normalization_for"]

#: Per-dataset channel statistics ``(mean, std)`` of the [0, 1] training images.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.5,), (0.5,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197)),
}


def normalization_for(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of ``dataset``; ValueError listing the known datasets otherwise."""
    try:
        return NORMALIZATION[dataset]
    except KeyError:
        known = ", ".join(sorted(NORMALIZATION))
        raise ValueError(f"no normalization for dataset {dataset!r}; known: {known}") from None


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers of shape (1, C, 1, 1)."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"mean and std need the same, non-zero length: {mean}, {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive: {std}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def num_channels(self) -> int:
        return int(self.mean.shape[1])

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
