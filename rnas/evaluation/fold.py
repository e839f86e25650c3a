"""The evaluation's inference copy of a model: batch norms folded into the convolutions before them.

In eval mode a ``BatchNorm2d`` is a fixed per-channel affine map, y = s·x + t with
s = γ / sqrt(running_var + eps) and t = β − s·running_mean, so a convolution followed by it is
one convolution with weights s·W (per output channel) and bias s·b + t. The attacks of the
evaluation run thousands of forward and backward passes through the same eval-mode model
(AutoAttack's APGD-T alone: 9 × 100 per example); each folded norm is one kernel less forward
and one less backward, and the input gradients are those of the unfolded model up to float
rounding (tested on every model family of the project).

Folded, where the norm directly follows a convolution:

* consecutive children of an ``nn.Sequential`` (conv, then norm): the cells' ReLU-conv-BN,
  the separable and dilated convs, the stems, the teacher's SmallCNN;
* :class:`~rnas.space.ops.FactorizedReduce`, whose norm follows the concatenation of its two
  convolutions (the first half of its channels folds into ``conv_1``, the second into ``conv_2``).

Everything else (a norm before its convolution, as in pre-activation ResNets) is left as it is.
The original model is not touched; parameter and MAC counts are taken on it, never on the copy.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rnas.space.ops import FactorizedReduce

__all__ = ["fold_batchnorm"]


def _affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) of the eval-mode norm y = s·x + t, per channel."""
    s = torch.rsqrt(bn.running_var + bn.eps)
    t = -bn.running_mean * s
    if bn.affine:
        s, t = s * bn.weight, t * bn.weight + bn.bias
    return s, t


def _foldable(bn: nn.Module) -> bool:
    return type(bn) is nn.BatchNorm2d and bn.track_running_stats and bn.running_mean is not None and not bn.training


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, s: torch.Tensor, t: torch.Tensor) -> None:
    """conv ← s·conv + t on its output channels (in place, on the copy)."""
    weight = conv.weight * s.view(-1, 1, 1, 1).to(conv.weight)
    conv.weight.copy_(weight)
    bias = t if conv.bias is None else conv.bias * s + t
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(bias)


def _fold(module: nn.Module) -> int:
    folded = 0
    if isinstance(module, FactorizedReduce) and _foldable(module.bn):
        s, t = _affine(module.bn)
        half = module.conv_1.out_channels
        _fold_into(module.conv_1, s[:half], t[:half])
        _fold_into(module.conv_2, s[half:], t[half:])
        module.bn = nn.Identity()
        folded += 1
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and _foldable(bn) and bn.num_features == conv.out_channels:
                _fold_into(conv, *_affine(bn))
                module._modules[b] = nn.Identity()
                folded += 1
    for child in module.children():
        folded += _fold(child)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of the eval-mode ``model`` with every foldable batch norm folded (module docstring);
    the copy is in eval mode with the same parameter ``requires_grad`` flags. A model in
    training mode is refused: its norms normalize with the batch's statistics, not a fixed map."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (a training-mode BatchNorm uses batch statistics)")
    folded = copy.deepcopy(model)
    _fold(folded)
    return folded.eval()
