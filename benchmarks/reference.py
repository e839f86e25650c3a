"""The straightforward versions the benchmarks compare against (and check results with).

``naive_supernet_forward`` is the DARTS/PC-DARTS supernet forward written the direct way, as the
reference implementations (and this project before issue 9) compute it: every op of every edge
runs on its own (each sep/dil conv applies its own ReLU, the ``none`` op multiplies by zero),
dilated convs go through ``nn.Conv2d`` as they are, the mixed op is ``sum(w·op(x))`` and the
channel shuffle is a view/transpose/reshape. It reads the weights of a
:class:`rnas.space.supernet.Supernet`, so both versions compute the same function of the same
parameters; only the speed differs.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from rnas.space.ops import AvgPool2d, DepthwiseConv2d, DilConv, PointwiseConv2d, SepConv
from rnas.space.supernet import MixedOp, SearchCell, Supernet


def naive_op(op: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(op, SepConv):
        return naive_op(op[1], naive_op(op[0], x))
    if isinstance(op, DilConv):
        relu, dw, pw, bn = op
        return bn(pw(nn.Conv2d.forward(dw, relu(x))))  # the plain (dilated) conv kernel
    if isinstance(op, nn.Sequential):  # pool + BN
        return naive_op(op[1], naive_op(op[0], x))
    if isinstance(op, nn.AvgPool2d):
        return nn.AvgPool2d.forward(op, x)  # the pooling kernel
    return op(x)


def plain_kernels(model: nn.Module) -> nn.Module:
    """Give every :class:`rnas.space.ops.DepthwiseConv2d`, :class:`rnas.space.ops.PointwiseConv2d`
    and :class:`rnas.space.ops.AvgPool2d` of ``model`` the plain ``nn.Conv2d`` / ``nn.AvgPool2d``
    kernel back (in place)."""
    for m in model.modules():
        if isinstance(m, (DepthwiseConv2d, PointwiseConv2d)):
            m.forward = types.MethodType(nn.Conv2d.forward, m)
        elif isinstance(m, AvgPool2d):
            m.forward = types.MethodType(nn.AvgPool2d.forward, m)
    return model


def naive_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def naive_mixed_op(m: MixedOp, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    xa = x if m.k == 1 else x[:, : x.shape[1] // m.k]
    out = sum(w * naive_op(op, xa) for w, op in zip(weights, m.ops))
    if m.k == 1:
        return out
    xb = x[:, x.shape[1] // m.k :]
    if m.bypass_pool is not None:
        xb = m.bypass_pool(xb)
    return naive_shuffle(torch.cat([out, xb], dim=1), m.k)


def naive_cell(cell: SearchCell, s0, s1, weights, edge_weights) -> torch.Tensor:
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    offset = 0
    for _node in range(cell.nodes):
        total = 0
        for j, h in enumerate(states):
            out = naive_mixed_op(cell.edges[offset + j], h, weights[offset + j])
            if edge_weights is not None:
                out = edge_weights[offset + j] * out
            total = total + out
        offset += len(states)
        states.append(total)
    return torch.cat(states[-cell.nodes :], dim=1)


def naive_supernet_forward(net: Supernet, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, classes) of ``net`` at ``x`` (B, C, H, W) in [0, 1], computed the direct way
    (no op masks: every primitive is on)."""
    w_n, w_r = torch.softmax(net.alpha_normal, -1), torch.softmax(net.alpha_reduce, -1)
    e_n, e_r = net.edge_weights(False), net.edge_weights(True)
    s0 = s1 = net.stem(net.normalize(x))
    for cell in net.cells:
        w, e = (w_r, e_r) if cell.reduction else (w_n, e_n)
        s0, s1 = s1, naive_cell(cell, s0, s1, w, e)
    return net.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


class NaiveSupernet(nn.Module):
    """``net`` with the straightforward forward (shares its parameters and buffers, keeps their
    memory format); it answers the parameter-group calls of :class:`~rnas.search.base.BilevelMethod`."""

    def __init__(self, net: Supernet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return naive_supernet_forward(self.net, x)

    def arch_parameters(self) -> list[nn.Parameter]:
        return self.net.arch_parameters()

    def weights(self) -> list[nn.Parameter]:
        return self.net.weights()
