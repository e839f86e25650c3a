"""A from-scratch twin of the public PC-DARTS search network, for the ``search_pcdarts_public_twin`` row.

What it reproduces is the *computation* of the public search code, ``model_search.py`` and the
DARTS ``operations.py`` it imports (Xu et al. 2020, github.com/yuhuixu1993/PC-DARTS; LRNAS,
github.com/fyqsama/LRNAS, builds its search network on the same code), written anew here:

* the eight DARTS primitives on every edge (none, 3x3 max and average pooling each followed
  by a non-affine BatchNorm, skip = identity or FactorizedReduce at stride 2, separable convs
  3x3 / 5x5 = two ReLU-depthwise-pointwise-BN stacks, dilated convs 3x3 / 5x5 with dilation 2),
  every conv a plain ``nn.Conv2d`` (depthwise = ``groups=C``), every op run, ``none`` included
  (it multiplies by zero), and the mixed op summed as ``Σ_o w_o · op_o(x)``;
* partial channels: each edge's ops see the first C/K channels (K = 4), the others bypass
  them (a 2x2 max pool on stride-2 edges), the two parts are concatenated and channel-shuffled
  with K groups, per edge;
* edge normalization: each node is ``Σ_j softmax(β_node)_j · edge_j(state_j)`` (β multiplies
  the whole edge output, bypass included);
* the DARTS macro structure (3·C stem conv + BN, 8 cells with reductions at 1/3 and 2/3, cell
  preprocessing ReLU-1x1 conv-BN or FactorizedReduce, 4 nodes concatenated, global average
  pool, linear classifier); NCHW float32.

The public weight step is ``optimizer.zero_grad(); loss = CE(model(x), y); loss.backward();
clip_grad_norm_(model.parameters(), 5); optimizer.step()`` with SGD(momentum, weight decay) over
the network weights; α and β require gradients there too, so the backward computes theirs.
:func:`weight_step` does the same.

Where the twin and rnas's :class:`rnas.space.supernet.Supernet` differ, and why the row still
compares the same function:

* inputs: the public code normalizes in the data transform, rnas inside the model; the twin
  takes inputs normalized with rnas's own mean and std (:func:`normalized`), outside the
  timed step;
* FactorizedReduce's shifted path (public: ``x[:, :, 1:, 1:]``; rnas pads it back to H) and the
  bypass max pool (public floors, rnas uses ``ceil_mode``) agree on even map sizes, and the
  paper's maps are 32, 16 and 8;
* rnas skips the ``none`` op (w·0 adds nothing, value and gradient) and fuses the per-edge
  work per node; both are exact up to float summation order.

LRNAS's ``model_search.py`` differs from PC-DARTS in two details: no BatchNorm after the
pooling ops and no edge normalization (its cell sums the edges unweighted). ``pool_bn=False,
edge_normalization=False`` builds that variant; rnas always puts a BN after pooling (as DARTS
and PC-DARTS do), so only the PC-DARTS form is compared with rnas's step in loss; the LRNAS form
can be timed but has no rnas counterpart with the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FactorizedReduce(nn.Module):
    """ReLU, then two 1x1 stride-2 convs (one on the input, one on it shifted by a pixel),
    concatenated, BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def relu_conv_bn(c_in: int, c_out: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


def _dw_pw_bn(c: int, kernel: int, stride: int, padding: int, dilation: int, affine: bool) -> list[nn.Module]:
    return [
        nn.ReLU(),
        nn.Conv2d(c, c, kernel, stride=stride, padding=padding, dilation=dilation, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=affine),
    ]


def make_op(name: str, c: int, stride: int, pool_bn: bool = True) -> nn.Module:
    """One primitive on C channels (non-affine BNs, as in the search network)."""
    if name == "none":
        return Zero(stride)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        pool = (
            nn.MaxPool2d(3, stride=stride, padding=1)
            if name == "max_pool_3x3"
            else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        )
        return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False)) if pool_bn else pool
    if name == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(c, c, affine=False)
    kind, _, size = name.rpartition("_")
    k = int(size[0])
    if kind == "sep_conv":
        return nn.Sequential(
            *_dw_pw_bn(c, k, stride, k // 2, 1, affine=False), *_dw_pw_bn(c, k, 1, k // 2, 1, affine=False)
        )
    if kind == "dil_conv":
        return nn.Sequential(*_dw_pw_bn(c, k, stride, 2 * (k // 2), 2, affine=False))
    raise ValueError(f"unknown primitive {name!r}")


def shuffle_channels(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class PartialMixedOp(nn.Module):
    def __init__(self, c: int, stride: int, k: int, pool_bn: bool):
        super().__init__()
        self.k = k
        self.ops = nn.ModuleList(make_op(p, c // k, stride, pool_bn) for p in PRIMITIVES)
        self.bypass_pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        cut = x.shape[1] // self.k
        seen, rest = x[:, :cut], x[:, cut:]
        mixed = sum(w * op(seen) for w, op in zip(weights, self.ops))
        if self.k == 1:
            return mixed
        if mixed.shape[2] != x.shape[2]:  # a stride-2 edge: the bypass is pooled to match
            rest = self.bypass_pool(rest)
        return shuffle_channels(torch.cat([mixed, rest], dim=1), self.k)


class SearchCell(nn.Module):
    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool, k: int, pool_bn: bool):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c, affine=False) if reduction_prev else relu_conv_bn(c_pp, c, False)
        self.pre1 = relu_conv_bn(c_p, c, False)
        self.edges = nn.ModuleList()
        for node in range(4):
            for src in range(node + 2):
                self.edges.append(PartialMixedOp(c, 2 if reduction and src < 2 else 1, k, pool_bn))

    def forward(self, s0, s1, weights, edge_weights):
        states = [self.pre0(s0), self.pre1(s1)]
        e = 0
        for _node in range(4):
            terms = []
            for h in states:
                out = self.edges[e](h, weights[e])
                terms.append(out if edge_weights is None else edge_weights[e] * out)
                e += 1
            states.append(sum(terms))
        return torch.cat(states[2:], dim=1)


class PCDartsTwin(nn.Module):
    """The PC-DARTS search network (C, layers, classes; K partial channels)."""

    def __init__(
        self,
        c: int = 16,
        layers: int = 8,
        num_classes: int = 10,
        input_channels: int = 3,
        k: int = 4,
        pool_bn: bool = True,
        edge_normalization: bool = True,
    ):
        super().__init__()
        c_stem = 3 * c
        self.stem = nn.Sequential(nn.Conv2d(input_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        self.cells = nn.ModuleList()
        c_pp, c_p, c_cur, reduction_prev = c_stem, c_stem, c, False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_cur *= 2
            self.cells.append(SearchCell(c_pp, c_p, c_cur, reduction, reduction_prev, k, pool_bn))
            reduction_prev = reduction
            c_pp, c_p = c_p, 4 * c_cur
        self.classifier = nn.Linear(c_p, num_classes)
        n_edges = 14
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(n_edges, len(PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(n_edges, len(PRIMITIVES)))
        self.betas_normal = nn.Parameter(1e-3 * torch.randn(n_edges)) if edge_normalization else None
        self.betas_reduce = nn.Parameter(1e-3 * torch.randn(n_edges)) if edge_normalization else None

    def arch_parameters(self) -> list[nn.Parameter]:
        arch = (self.alphas_normal, self.alphas_reduce, self.betas_normal, self.betas_reduce)
        return [p for p in arch if p is not None]

    def weights(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    @staticmethod
    def _edge_softmax(beta: torch.Tensor | None) -> torch.Tensor | None:
        if beta is None:
            return None
        parts, start = [], 0
        for n_in in (2, 3, 4, 5):  # node i has i + 2 incoming edges
            parts.append(F.softmax(beta[start : start + n_in], dim=-1))
            start += n_in
        return torch.cat(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: normalized images (B, C_in, H, W)
        w_normal, w_reduce = F.softmax(self.alphas_normal, dim=-1), F.softmax(self.alphas_reduce, dim=-1)
        e_normal, e_reduce = self._edge_softmax(self.betas_normal), self._edge_softmax(self.betas_reduce)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            w, e = (w_reduce, e_reduce) if cell.reduction else (w_normal, e_normal)
            s0, s1 = s1, cell(s0, s1, w, e)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


def copy_from_rnas(twin: PCDartsTwin, supernet: nn.Module) -> PCDartsTwin:
    """Give ``twin`` the weights, BN statistics, α and β of an rnas
    :class:`~rnas.space.supernet.Supernet` of the same configuration (in place).

    Both networks create their modules in the same order (stem, cells: preprocessing, edges in
    node order, ops in PRIMITIVES order, classifier; then α and β), so their parameter and
    buffer lists pair up one to one; every pair's shape is checked. rnas's input-normalization
    buffers have no twin counterpart (see :func:`normalized`)."""
    with torch.no_grad():
        ours = list(twin.weights()) + twin.arch_parameters()
        theirs = list(supernet.weights()) + supernet.arch_parameters()
        if len(ours) != len(theirs):
            raise ValueError(f"{len(ours)} twin parameters vs {len(theirs)} rnas parameters: not the same network")
        for a, b in zip(ours, theirs):
            if a.shape != b.shape:
                raise ValueError(f"parameter shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
            a.copy_(b)
        skip = {id(b) for b in supernet.normalize.buffers()} | {
            id(supernet.mask_normal),
            id(supernet.mask_reduce),
        }
        theirs_buf = [b for b in supernet.buffers() if id(b) not in skip]
        ours_buf = list(twin.buffers())
        if len(ours_buf) != len(theirs_buf):
            raise ValueError(f"{len(ours_buf)} twin buffers vs {len(theirs_buf)} rnas buffers")
        for a, b in zip(ours_buf, theirs_buf):
            if a.shape != b.shape:
                raise ValueError(f"buffer shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
            a.copy_(b)
    return twin


def normalized(supernet: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in [0, 1] normalized as rnas's supernet does it inside (the public code does it in the
    data transform)."""
    with torch.no_grad():
        return supernet.normalize(x)


def weight_step(
    model: PCDartsTwin, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, grad_clip: float = 5.0
) -> float:
    """One public-style weight step; returns the loss."""
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.weights(), grad_clip)
    optimizer.step()
    return float(loss.detach())
