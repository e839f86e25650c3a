"""The out-edges of one supernet state, computed together (issue 17).

Every edge that leaves a state reads the same input (with PC-DARTS, the same first C/K channels of
it), so each candidate op can run once for all n out-edges of the state instead of once per edge:

- **Parameter-free ops** (max and average pooling, each followed by an affine-free BN, and the
  stride-1 identity) give the same output on every edge: a train-mode BN normalizes with the
  batch's own statistics. They run once; every edge's BN still updates its own running statistics
  exactly as it would have.
- **sep/dil convs**: the input is repeated n times along the channels, edge-major (channel
  t·C + i is edge t's channel i); the edges' depthwise convs become one depthwise conv over n·C
  channels, their 1x1 convs one grouped 1x1 conv (oneDNN's, or one product with the
  block-diagonal matrix of the edges' 1x1 weights where that is the faster:
  :func:`~rnas.space.ops.grouped_pointwise`), their BNs one BN over n·C channels.
- **FactorizedReduce** (the stride-2 skip of a reduction cell) runs per edge, concatenated.

The weighted sum Σ_o w_{t,o}·op_o(x) is then one scaled add per op for all n edges. The result is
the per-edge forward's function, gradients and BN statistics up to float round-off
(``tests/test_grouped.py``); on the CPU the paper-scale PC-DARTS step runs fewer, larger kernels
(``benchmarks/README.md``). Train mode only: in eval mode each edge's BN normalizes with its own
running statistics, so the edges differ and :class:`~rnas.space.supernet.SearchCell` runs them one
by one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rnas.space.ops import (
    DilConv,
    FactorizedReduce,
    Identity,
    SepConv,
    Zero,
    batch_norm,
    batch_var_mean,
    depthwise,
    grouped_pointwise,
    unhooked,
)


def groupable(bns: list[nn.BatchNorm2d]) -> bool:
    """True when BNs can run as one: train-mode statistics with a fixed momentum, one eps."""
    first = bns[0]
    return all(
        b.training
        and b.track_running_stats
        and b.momentum is not None
        and b.momentum == first.momentum
        and b.eps == first.eps
        and b.affine == first.affine
        for b in bns
    )


def repeat_channels(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, n·C, H, W), the n copies edge-major, in x's memory format."""
    return x if n == 1 else torch.cat([x] * n, dim=1)


def _update_running(bns: list[nn.BatchNorm2d], mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """Each BN's running statistics as ``F.batch_norm`` updates them (unbiased variance), from
    the batch statistics ``mean``/``var`` (C,) that every BN of ``bns`` saw."""
    m = bns[0].momentum
    with torch.no_grad():
        unbiased = var * (count / max(count - 1, 1))
        for b in bns:
            b.running_mean.data.mul_(1 - m).add_(mean, alpha=m)  # .data: see batch_norm_group
            b.running_var.data.mul_(1 - m).add_(unbiased, alpha=m)
            b.num_batches_tracked.add_(1)


def batch_norm_group(x: torch.Tensor, bns: list[nn.BatchNorm2d]) -> torch.Tensor:
    """The n BNs of ``bns`` (C channels each) on x (B, n·C, H, W), edge-major, as one BN."""
    first = bns[0]
    rm = torch.cat([b.running_mean for b in bns])
    rv = torch.cat([b.running_var for b in bns])
    weight = torch.cat([b.weight for b in bns]) if first.affine else None
    bias = torch.cat([b.bias for b in bns]) if first.affine else None
    y = batch_norm(x, rm, rv, weight, bias, True, first.momentum, first.eps)
    with torch.no_grad():  # F.batch_norm updated the concatenation; hand each BN its part
        c = first.num_features
        for t, b in enumerate(bns):
            # through .data, as F.batch_norm's own update: the buffers' version counters stay, so a
            # graph that saved them (BN's backward keeps the running statistics) stays usable
            b.running_mean.data.copy_(rm[t * c : (t + 1) * c])
            b.running_var.data.copy_(rv[t * c : (t + 1) * c])
            b.num_batches_tracked.add_(1)
    return y


def shared_batch_norm(x: torch.Tensor, bns: list[nn.BatchNorm2d]) -> torch.Tensor:
    """The output every BN of ``bns`` (affine-free, train mode) gives on the same x: one
    normalization; each BN's running statistics updated from x's batch statistics."""
    first = bns[0]
    y = batch_norm(x, None, None, None, None, True, 0.0, first.eps)
    with torch.no_grad():
        var, mean = batch_var_mean(x.detach().to(first.running_mean.dtype))
        _update_running(bns, mean, var, x.numel() // x.shape[1])
    return y


def dil_conv_group(
    x: torch.Tensor, convs: list[nn.Sequential], stride: int, onednn: bool | None = None
) -> torch.Tensor:
    """n :class:`~rnas.space.ops.DilConv` units (ReLU, depthwise, 1x1, BN) on their inputs
    already ReLU'd and stacked edge-major, x (B, n·C_in, H, W) -> (B, n·C_out, H/s, W/s).
    ``onednn``: the 1x1 convs' kernel (:func:`~rnas.space.ops.grouped_pointwise`; None: its rule)."""
    dws = [m[1] for m in convs]
    weight = torch.cat([dw.weight for dw in dws])  # (n·C_in, 1, k, k)
    y = depthwise(x, weight, stride, dws[0].dilation[0], own_backward=dws[0].own_backward)
    y = grouped_pointwise(y, torch.cat([m[2].weight for m in convs]), len(convs), onednn=onednn)
    return batch_norm_group(y, [m[3] for m in convs])


def state_ops(
    edges: list[nn.Module],
    primitives: tuple[str, ...],
    xa: torch.Tensor,
    ra: torch.Tensor,
    w: torch.Tensor,
    onednn: bool | None = None,
) -> torch.Tensor:
    """Σ_o w[t, o]·op_o^(t)(xa) for every out-edge t of one state, edge-major (B, n·C, H/s, W/s).

    ``edges``: the :class:`~rnas.space.supernet.MixedOp` s leaving the state (same stride);
    xa the ops' input (B, C, H, W) and ra = ReLU(xa); ``w`` (n, n_ops) the edges' op weights
    (with PC-DARTS' edge weights folded in); ``onednn``: the kernel of the grouped 1x1 convs
    (:func:`dil_conv_group`)."""
    n = len(edges)
    stride = edges[0].stride
    total: torch.Tensor | None = None
    ra_rep: torch.Tensor | None = None

    def add(y: torch.Tensor, o: int) -> None:
        nonlocal total
        scale = w[:, o].to(y.dtype).repeat_interleave(y.shape[1] // n).view(1, -1, 1, 1)
        total = y * scale if total is None else total.addcmul_(y, scale)

    for o, name in enumerate(primitives):
        ops = [e.ops[o] for e in edges]
        if name == "none":
            continue  # w·0: identically zero, value and gradients
        if name in ("max_pool_3x3", "avg_pool_3x3"):
            pooled = ops[0][0](xa)
            add(repeat_channels(shared_batch_norm(pooled, [op[1] for op in ops]), n), o)
        elif name == "skip_connect":
            add(repeat_channels(xa, n) if stride == 1 else torch.cat([op(xa) for op in ops], dim=1), o)
        else:  # sep_conv_* (two DilConv units) and dil_conv_* (one)
            if ra_rep is None:
                ra_rep = repeat_channels(ra, n)
            if name.startswith("sep_conv"):
                y = dil_conv_group(ra_rep, [op[0] for op in ops], stride, onednn)
                y = dil_conv_group(torch.relu(y), [op[1] for op in ops], 1, onednn)
            else:
                y = dil_conv_group(ra_rep, ops, stride, onednn)
            add(y, o)
    if total is None:  # only `none`: a zero edge
        return repeat_channels(xa[:, :, ::stride, ::stride].mul(0.0), n)
    return total


def _is_pool(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[1], nn.BatchNorm2d)


_OP_TYPES: dict[str, Callable[[nn.Module, int], bool]] = {
    "none": lambda m, stride: isinstance(m, Zero),
    "max_pool_3x3": lambda m, stride: _is_pool(m) and isinstance(m[0], nn.MaxPool2d),
    "avg_pool_3x3": lambda m, stride: _is_pool(m) and isinstance(m[0], nn.AvgPool2d),
    "skip_connect": lambda m, stride: isinstance(m, Identity if stride == 1 else FactorizedReduce),
    "sep_conv_3x3": lambda m, stride: isinstance(m, SepConv),
    "sep_conv_5x5": lambda m, stride: isinstance(m, SepConv),
    "dil_conv_3x3": lambda m, stride: isinstance(m, DilConv),
    "dil_conv_5x5": lambda m, stride: isinstance(m, DilConv),
}


def edges_groupable(edges: list[nn.Module], primitives: tuple[str, ...]) -> bool:
    """True when every edge holds the registry's modules for ``primitives`` (nothing swapped),
    no module among them has a hook or an instance-level ``forward`` (both must see every module's
    own forward run), and their BNs can run as one (:func:`groupable`)."""
    bns = []
    for e in edges:
        for name, op in zip(primitives, e.ops):
            check = _OP_TYPES.get(name)
            if check is None or not check(op, e.stride):
                return False
        if not unhooked(e):
            return False
        bns += [m for m in e.modules() if isinstance(m, nn.BatchNorm2d)]
    return bool(bns) and groupable(bns)
