"""The DARTS search supernet (Liu et al. 2019) with the PC-DARTS option (Xu et al. 2020).

Every edge is a :class:`MixedOp`: the sum of all candidate ops weighted by
``softmax(α_edge)``. Architecture parameters live apart from the network weights:
``arch_parameters()`` gives the α tensors (and PC-DARTS edge-normalization β),
``weights()`` everything else, so the bilevel optimizer updates each set on its own split.

PC-DARTS (``partial_channels = K > 1``): each mixed op sees only 1/K of the channels, the
rest bypass it; the two parts are concatenated and channel-shuffled (groups K). Edge
normalization weighs each node's incoming edges by ``softmax(β)`` over that node's edges.

The ``mask_normal`` / ``mask_reduce`` buffers (1 = on, 0 = off; shape like α) let a method
switch single primitives off (LRNAS' contribution estimation): they multiply the softmax
weights without renormalizing, and an op whose mask is 0 is not run at all, so the output is
that of the supernet with the op replaced by zero and the op's weights get no gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from rnas.models.normalize import Normalize
from rnas.space import grouped
from rnas.space.genotype import Genotype, derive_genotype, num_edges
from rnas.space.network import cell_normalization
from rnas.space.ops import (
    PRIMITIVES,
    DepthwiseConv2d,
    FactorizedReduce,
    ReLUConvBN,
    Zero,
    make_op,
    memory_format_of,
    scaled_by_closing_bn,
)
from rnas.space.plan import cell_plan


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet/PC-DARTS shuffle: output channel ``i·groups + g`` is input channel
    ``g·(C/groups) + i``, so the C/K channels an op processed are spread over the tensor.
    A channels-last input gives a channels-last output (the shuffle runs on the NHWC view)."""
    b, c, h, w = x.shape
    if memory_format_of(x) == torch.channels_last:
        nhwc = x.permute(0, 2, 3, 1)  # (B, H, W, C), contiguous
        out = nhwc.reshape(b, h, w, groups, c // groups).transpose(3, 4).reshape(b, h, w, c)
        return out.permute(0, 3, 1, 2)
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def per_copy_batch_norm(bn: nn.BatchNorm2d, copies: int, x: torch.Tensor) -> torch.Tensor:
    """``bn`` on x (G·b, C, H, W), G stacked copies of a b-example batch, each normalized with
    its own batch statistics in train mode (as ``bn`` would on that copy alone; the running
    statistics are not updated) and with the running statistics in eval mode."""
    if not bn.training:
        return nn.BatchNorm2d.forward(bn, x)  # running statistics: per example already
    g = copies
    b, c, h, w = x.shape
    # (G·b, C, H, W) -> (b, G·C, H, W): one batch norm over G·C channels = per copy and channel
    y = x.reshape(g, b // g, c, h, w).transpose(0, 1).reshape(b // g, g * c, h, w)
    weight = bn.weight.repeat(g) if bn.affine else None
    bias = bn.bias.repeat(g) if bn.affine else None
    y = nn.functional.batch_norm(y, None, None, weight, bias, True, 0.0, bn.eps)
    return y.reshape(b // g, g, c, h, w).transpose(0, 1).reshape(b, c, h, w)


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _first_channels(x: torch.Tensor, n: int) -> torch.Tensor:
    """x[:, :n] copied once into x's memory format (every op of the edge reads it; a strided
    view would be copied again inside each conv)."""
    return x[:, :n].contiguous(memory_format=_layout(x))


def _partial_split(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PC-DARTS' two parts of a state, (x[:, :n] as :func:`_first_channels` copies it, x[:, n:]),
    cut by one ``split``: its backward concatenates the two gradients, in x's memory format.
    Two slices would each scatter their gradient into a new NCHW zero tensor and add the two, so
    the channels-last BN that made x (a cell's preprocessing) differentiated an NCHW gradient,
    torch's slow mixed-layout kernel: 3-8 ms a call on the paper search step's (64, 16-32, 32,
    32) maps against ~0.6 for two channels-last operands (benchmarks/README.md, session 22)."""
    xa, xb = x.split([n, x.shape[1] - n], dim=1)
    return xa.contiguous(memory_format=_layout(x)), xb


class _CatChannels(torch.autograd.Function):
    """``torch.cat(xs, dim=1)`` whose backward hands each input a contiguous gradient in that
    input's memory format, not a strided slice of the concatenated gradient. In the per-edge
    cell the nodes are concatenated into its output, and the closing BN of every op into a node
    (which takes the op weight, :func:`~rnas.space.ops.scaled_by_closing_bn`) receives the
    node's gradient: CPU BatchNorm backward on a strided channels-last slice with a weight to
    differentiate takes ~6x as long (40 vs 7 ms on (64, 16, 32, 32), benchmarks/README.md).
    Differentiable twice (DSRNA's Jacobian, the unrolled DARTS step)."""

    @staticmethod
    def forward(ctx, *xs: torch.Tensor) -> torch.Tensor:
        ctx.sizes = [x.shape[1] for x in xs]
        ctx.formats = [memory_format_of(x) for x in xs]
        return torch.cat(xs, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(g.contiguous(memory_format=f) for g, f in zip(grad.split(ctx.sizes, dim=1), ctx.formats))


def cat_nodes(nodes: list[torch.Tensor]) -> torch.Tensor:
    """A cell's output: its nodes concatenated along the channels (see :class:`_CatChannels`)."""
    return _CatChannels.apply(*nodes)


class MixedOp(nn.Module):
    """One supernet edge: ``Σ_o w_o · op_o(x)`` (DARTS); with ``K = partial_channels > 1``
    the ops see only the first C/K channels, the other channels bypass them (max-pooled on a
    stride-2 edge), and the concatenation is channel-shuffled with K groups (PC-DARTS)."""

    fold_weights: bool = True  # w_o as the weight of op o's closing BN (tests switch it per instance)

    def __init__(self, channels: int, stride: int, partial_channels: int = 1, primitives: tuple[str, ...] = PRIMITIVES):
        super().__init__()
        if partial_channels < 1 or channels % partial_channels:
            raise ValueError(f"partial_channels K={partial_channels} must divide the edge's {channels} channels")
        self.k = partial_channels
        self.stride = stride
        self.primitives = tuple(primitives)
        c = channels // self.k
        self.ops = nn.ModuleList()
        for name in primitives:
            op = make_op(name, c, stride, affine=False)
            if "pool" in name:  # DARTS: BN after pooling so its scale matches the convs
                op = nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
            self.ops.append(op)
        # ceil_mode: the same H/stride rounding as the strided ops on odd sizes (PC-DARTS' own
        # MaxPool2d(2, 2) floors, which breaks a 7x7 input); identical on even sizes.
        self.bypass_pool = nn.MaxPool2d(2, 2, ceil_mode=True) if (self.k > 1 and stride == 2) else None

    def mix(
        self,
        xa: torch.Tensor,
        weights: torch.Tensor,
        active: list[bool] | None = None,
        xa_relu: torch.Tensor | None = None,
        shared: dict | None = None,
    ) -> torch.Tensor:
        """``Σ_o w_o · op_o(xa)`` on the ops' input xa (B, C/K, H, W) -> (B, C/K, H/s, W/s).

        ``xa_relu``: ReLU(xa) when the caller has it (the cell computes one per state, and every
        sep/dil conv of every edge leaving that state starts from it instead of its own ReLU).
        The `none` op's term w·0 is identically zero (value and gradients), so it is not run;
        the other terms accumulate in place. An op closed by an affine-free BN takes w as that BN's
        weight (:func:`~rnas.space.ops.scaled_by_closing_bn`, ``fold_weights``); the others are
        added as w·y by one fused addcmul. ``shared``: the caller's dict for xa, through which the
        out-edges of one state compute each pool once (see ``scaled_by_closing_bn``)."""
        out = None
        for i, (w, op) in enumerate(zip(weights, self.ops)):
            if isinstance(op, Zero) or (active is not None and not active[i]):
                continue
            wy = scaled_by_closing_bn(op, xa, xa_relu, w, shared) if self.fold_weights else None
            if wy is not None:
                out = wy if out is None else out.add_(wy)
                continue
            if xa_relu is not None and hasattr(op, "forward_preactivated"):
                y = op.forward_preactivated(xa_relu)
            else:
                y = op(xa)
            out = w * y if out is None else out.addcmul_(w, y)
        if out is None:  # every op switched off (or only `none`): a zero edge, (B, C/K, H/s, W/s)
            out = xa[:, :, :: self.stride, :: self.stride].mul(0.0)
        return out

    def bypass_part(self, xb: torch.Tensor) -> torch.Tensor:
        """PC-DARTS: the channels the ops do not see, xb = x[:, C/K:] (cut by :func:`_partial_split`),
        taken to the edge's stride: (B, C − C/K, H/s, W/s)."""
        return self.bypass_pool(xb) if self.bypass_pool is not None else xb

    def forward(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        active: list[bool] | None = None,
        x_relu: torch.Tensor | None = None,
        shared: dict | None = None,
    ) -> torch.Tensor:
        # x: (B, C, H, W); weights: (n_ops,); active: per op, False = switched off (skipped);
        # x_relu: ReLU(x) when the caller has it; shared: the caller's dict for x (see mix)
        if self.k == 1:
            return self.mix(x, weights, active, x_relu, shared)
        c_ops = x.shape[1] // self.k
        xa, xb = _partial_split(x, c_ops)
        ra = None if x_relu is None else _first_channels(x_relu, c_ops)
        return channel_shuffle(torch.cat([self.mix(xa, weights, active, ra), self.bypass_part(xb)], dim=1), self.k)


class SearchCell(nn.Module):
    """A DARTS search cell: two preprocessed inputs, ``nodes`` nodes, each the sum of mixed-op
    edges from every earlier state. In train mode with nothing masked, the out-edges of each state
    run together (:mod:`rnas.space.grouped`; ``group_edges`` False: one by one, the same function)."""

    group_edges: bool = True  # class default; tests and benchmarks switch it per instance
    # Grouping pays where kernels are small (per-call overhead, poorly vectorized few-channel
    # kernels) and costs where they are large (the block-diagonal 1x1 product does n times the
    # multiply-adds). Grouped when an op's input (C/K channels x H x W per image) holds at most
    # group_tiny_values values, or at most group_max_values with at most group_max_channels
    # channels (benchmarks/README.md, "Grouped edges": every PC-DARTS K = 4 cell and every digits
    # cell grouped; the paper's DARTS K = 1 cells, 16-64 channels on 32x32-8x8 maps, not).
    onednn_grouped: bool | None = None  # the grouped 1x1 convs' kernel (None: ops.grouped_pointwise's rule)
    group_tiny_values: int = 1024
    group_max_values: int = 4096
    group_max_channels: int = 16

    def __init__(
        self,
        nodes: int,
        c_pp: int,
        c_p: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
        partial_channels: int = 1,
        primitives: tuple[str, ...] = PRIMITIVES,
    ):
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.preprocess0 = (
            FactorizedReduce(c_pp, c, affine=False) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, affine=False)
        )
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for node in range(nodes):
            for src in range(node + 2):
                stride = 2 if reduction and src < 2 else 1
                self.edges.append(MixedOp(c, stride, partial_channels, primitives))

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        weights: torch.Tensor,
        edge_weights: torch.Tensor | None = None,
        active: list[list[bool]] | None = None,
    ) -> torch.Tensor:
        # weights: (n_edges, n_ops); edge_weights: (n_edges,) or None; active: (n_edges, n_ops) or None
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        grouping = (
            self.group_edges
            and active is None
            and weights.dim() == 2  # not per-example weights (coalitions: see Supernet.coalitions)
            and self.training
            and self._worth_grouping(states[1])
        )
        if grouping and self._groupable():
            return self._forward_grouped(states, weights, edge_weights)
        if self.edges[0].k > 1:
            return self._forward_partial(states, weights, edge_weights, active)
        relus = [torch.relu(h) for h in states]  # one ReLU per state, shared by its out-edges' convs
        shared: list[dict] = [{} for _ in states]  # per state: its pools, computed once (MixedOp.mix)
        offset = 0
        for node in range(self.nodes):
            total = 0
            for j, h in enumerate(states):
                e = offset + j
                out = self.edges[e](h, weights[e], None if active is None else active[e], relus[j], shared[j])
                if edge_weights is not None:
                    out = edge_weights[e] * out
                total = total + out
            offset += len(states)
            states.append(total)
            if node < self.nodes - 1:  # the last node feeds no edge of this cell
                relus.append(torch.relu(total))
                shared.append({})
        return cat_nodes(states[-self.nodes :])

    def out_edges(self, j: int) -> tuple[list[int], list[int]]:
        """(nodes, edge indices) of the out-edges of state j (0, 1: the cell inputs; 2 + i: node
        i): j feeds nodes max(0, j − 1) .. nodes − 1, node i's edges numbered from Σ_{k<i} (k + 2)."""
        nodes = list(range(max(0, j - 1), self.nodes))
        return nodes, [num_edges(node) + j for node in nodes]

    def _worth_grouping(self, h: torch.Tensor) -> bool:
        c = h.shape[1] // self.edges[0].k
        values = c * h.shape[2] * h.shape[3]
        return values <= self.group_tiny_values or (c <= self.group_max_channels and values <= self.group_max_values)

    def _groupable(self) -> bool:
        """Checked on every forward (modules can be swapped, hooked or put in eval mode)."""
        return grouped.edges_groupable(list(self.edges), self.edges[0].primitives)

    def _forward_grouped(
        self, states: list[torch.Tensor], weights: torch.Tensor, edge_weights: torch.Tensor | None
    ) -> torch.Tensor:
        """The cell with each state's out-edges computed together (:func:`rnas.space.grouped.state_ops`).
        State j feeds nodes max(0, j−1)..nodes−1; its edges' outputs are added into those nodes'
        sums as soon as the state exists. PC-DARTS: the edge weights β fold into the op weights, and
        each node's bypass part is Σ_j β_j·bypass_j (shuffle and concatenation are linear)."""
        k = self.edges[0].k
        primitives = self.edges[0].primitives
        ops_sum: list[torch.Tensor | None] = [None] * self.nodes
        owned = [False] * self.nodes  # ops_sum[node] is a tensor of its own (not a view): add in place
        bypass_sum: list[torch.Tensor | None] = [None] * self.nodes

        def feed(j: int, h: torch.Tensor) -> None:
            targets, ids = self.out_edges(j)
            edges = [self.edges[e] for e in ids]
            w = weights[ids]
            beta = None if edge_weights is None else edge_weights[ids]
            if beta is not None:
                w = w * beta[:, None]
            xa, xb = _partial_split(h, h.shape[1] // k) if k > 1 else (h, None)
            out = grouped.state_ops(edges, primitives, xa, torch.relu(xa), w, self.onednn_grouped)
            # split, not slicing: its backward concatenates the gradients in their memory format
            # (a slice's backward scatters into a new NCHW tensor, slow on channels_last networks)
            parts = out.split(out.shape[1] // len(ids), dim=1)
            xb = edges[0].bypass_part(xb) if k > 1 else None
            for t, node in enumerate(targets):
                y = parts[t]
                if ops_sum[node] is None:
                    ops_sum[node] = y
                elif owned[node]:
                    ops_sum[node].add_(y)
                else:
                    ops_sum[node], owned[node] = ops_sum[node] + y, True
                if xb is not None:
                    b = beta[t] * xb if beta is not None else xb
                    bypass_sum[node] = b if bypass_sum[node] is None else bypass_sum[node] + b

        feed(0, states[0])
        feed(1, states[1])
        nodes = []
        for node in range(self.nodes):
            total = ops_sum[node]
            if k > 1:
                total = channel_shuffle(torch.cat([total, bypass_sum[node]], dim=1), k)
            nodes.append(total)
            if node < self.nodes - 1:  # the last node feeds no edge of this cell
                feed(node + 2, total)
        return torch.cat(nodes, dim=1)

    def _forward_partial(
        self,
        states: list[torch.Tensor],
        weights: torch.Tensor,
        edge_weights: torch.Tensor | None,
        active: list[list[bool]] | None,
    ) -> torch.Tensor:
        """PC-DARTS cell, computed per node instead of per edge. Shuffle and concatenation are
        linear, so node = Σ_j β_j·shuffle(cat(mix_j, bypass_j)) = shuffle(cat(Σ_j β_j·mix_j,
        Σ_j β_j·bypass_j)): one concatenation and one shuffle per node (not per edge), and each
        state's partial channels, their ReLU and its bypass are cut once for all its out-edges."""
        k = self.edges[0].k
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]] = []

        def add_state(h: torch.Tensor, first_edge: MixedOp) -> None:
            xa, xb = _partial_split(h, h.shape[1] // k)  # (B, C/K, H, W), (B, C − C/K, H, W)
            parts.append((xa, torch.relu(xa), first_edge.bypass_part(xb), {}))  # {}: its pools (MixedOp.mix)

        offset = 0
        for j, h in enumerate(states):
            add_state(h, self.edges[j])
        nodes = []
        for node in range(self.nodes):
            ops_sum = bypass_sum = None
            for j, (xa, ra, xb, shared) in enumerate(parts):
                e = offset + j
                y = self.edges[e].mix(xa, weights[e], None if active is None else active[e], ra, shared)
                beta = edge_weights[e] if edge_weights is not None else y.new_ones(())
                ops_sum = beta * y if ops_sum is None else ops_sum.addcmul_(beta, y)
                bypass_sum = beta * xb if bypass_sum is None else bypass_sum.addcmul_(beta, xb)
            offset += len(parts)
            total = channel_shuffle(torch.cat([ops_sum, bypass_sum], dim=1), k)
            nodes.append(total)
            if node < self.nodes - 1:  # the last node feeds no edge of this cell
                add_state(total, self.edges[offset + len(parts)])
        return torch.cat(nodes, dim=1)


class Supernet(nn.Module):
    """DARTS search network: stem, ``layers`` search cells, global pool, classifier."""

    def __init__(
        self,
        init_channels: int,
        layers: int,
        num_classes: int,
        input_channels: int = 3,
        dataset: str | None = None,
        nodes: int = 4,
        stem_multiplier: int = 3,
        partial_channels: int = 1,
        primitives: tuple[str, ...] = PRIMITIVES,
    ):
        super().__init__()
        self.nodes = nodes
        self.primitives = tuple(primitives)
        self.partial_channels = partial_channels
        self.model_args: dict[str, Any] = {
            "init_channels": init_channels,
            "layers": layers,
            "num_classes": num_classes,
            "input_channels": input_channels,
            "dataset": dataset,
            "nodes": nodes,
            "stem_multiplier": stem_multiplier,
            "partial_channels": partial_channels,
            "primitives": list(self.primitives),
        }
        self.normalize = Normalize(*cell_normalization(dataset, input_channels))
        c_curr = stem_multiplier * init_channels
        self.stem = nn.Sequential(nn.Conv2d(input_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        plan = cell_plan(init_channels, layers, stem_multiplier, nodes)
        self.cells = nn.ModuleList(
            SearchCell(nodes, c_pp, c_p, c_curr, reduction, reduction_prev, partial_channels, self.primitives)
            for c_pp, c_p, c_curr, reduction, reduction_prev in plan
        )
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(nodes * plan[-1][2], num_classes)
        for m in self.modules():  # autograd's depthwise backward: no gain measured in the search
            if isinstance(m, DepthwiseConv2d):  # (benchmarks/README.md "Depthwise backward")
                m.own_backward = False

        n_e, n_ops = num_edges(nodes), len(self.primitives)
        # Architecture parameters (small random init as in DARTS: 1e-3 * N(0, 1)).
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(n_e, n_ops))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(n_e, n_ops))
        self.beta_normal = nn.Parameter(1e-3 * torch.randn(n_e)) if partial_channels > 1 else None
        self.beta_reduce = nn.Parameter(1e-3 * torch.randn(n_e)) if partial_channels > 1 else None
        self.register_buffer("mask_normal", torch.ones(n_e, n_ops))
        self.register_buffer("mask_reduce", torch.ones(n_e, n_ops))
        self._coalitions: torch.Tensor | None = None  # (G, 2, n_e, n_ops) inside `coalitions`

    # -- parameter groups ----------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        params = [self.alpha_normal, self.alpha_reduce]
        if self.beta_normal is not None:
            params += [self.beta_normal, self.beta_reduce]
        return params

    def weights(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- architecture weights ------------------------------------------------------
    def op_weights(self, reduction: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
        """softmax(α) per edge (computed in ``dtype`` if given, e.g. a float64 bound pass)."""
        alpha, mask = (self.alpha_reduce, self.mask_reduce) if reduction else (self.alpha_normal, self.mask_normal)
        w = torch.softmax(alpha, dim=-1, dtype=dtype)
        if bool((mask != 1).any()):
            w = w * mask  # no renormalization: switching an op off removes its term w_o·op_o(x)
        return w

    def active_ops(self, reduction: bool) -> list[list[bool]] | None:
        """Per edge and op, False where the mask switched the op off (the forward skips it,
        so it neither contributes nor gets a gradient); None when nothing is masked."""
        mask = self.mask_reduce if reduction else self.mask_normal
        if bool((mask != 0).all()):
            return None
        return (mask != 0).tolist()

    # -- coalitions: G masked copies of the supernet in one forward (LRNAS) ------------
    @contextmanager
    def coalitions(self, masks: torch.Tensor) -> Iterator[None]:
        """Score G coalitions in one forward: inside the block, a batch of G·b examples is G
        stacked copies of a b-example batch, copy g run by the supernet with ``masks[g]`` as its
        mask (``masks`` (G, 2·n_edges·n_ops), 1 = on, normal cell first; ``mask_normal`` and
        ``mask_reduce`` are ignored). An op that is on in some copy runs on every copy, its output
        scaled per example by w_o·mask, so where it is off it adds exactly zero; an op off in
        every copy is not run. In train mode every BN normalizes each copy with that copy's own
        statistics (:func:`per_copy_batch_norm`) and the running statistics are left alone. The
        same function as G masked forwards, within float round-off (tests/test_lrnas.py)."""
        n_e, n_ops = self.mask_normal.shape
        if masks.dim() != 2 or masks.shape[1] != 2 * n_e * n_ops:
            raise ValueError(f"coalition masks must be (G, {2 * n_e * n_ops}), got {tuple(masks.shape)}")
        groups = masks.shape[0]
        bns = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        self._coalitions = masks.view(groups, 2, n_e, n_ops).to(self.mask_normal)
        for bn in bns:
            bn.forward = partial(per_copy_batch_norm, bn, groups)  # instance attribute: this block only
        try:
            yield
        finally:
            self._coalitions = None
            for bn in bns:
                del bn.forward

    def _coalition_weights(self, reduction: bool, batch: int) -> torch.Tensor:
        """(n_edges, n_ops, B, 1, 1, 1): softmax(α)·mask of each example's coalition copy."""
        masks = self._coalitions[:, int(reduction)]  # (G, n_e, n_ops)
        groups = masks.shape[0]
        if batch % groups:
            raise ValueError(f"a coalition batch of {batch} examples is not {groups} equal copies")
        alpha = self.alpha_reduce if reduction else self.alpha_normal
        w = torch.softmax(alpha, dim=-1)[None] * masks  # (G, n_e, n_ops)
        w = w.repeat_interleave(batch // groups, dim=0)  # (B, n_e, n_ops)
        return w.permute(1, 2, 0).reshape(*w.shape[1:], batch, 1, 1, 1)

    def _coalition_active(self, reduction: bool) -> list[list[bool]] | None:
        """Per edge and op, False where the op is off in every coalition copy: all its terms are
        w·0, so the forward skips it (the coalitions along one permutation share every player
        switched off before the first of them; later stacks skip more and more ops). The same
        values as running it, bit for bit: adding a zero term changes no sum. None: all run."""
        on = (self._coalitions[:, int(reduction)] != 0).any(0)
        return None if bool(on.all()) else on.tolist()

    def edge_weights(self, reduction: bool, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        beta = self.beta_reduce if reduction else self.beta_normal
        if beta is None:
            return None
        out, start = [], 0
        for node in range(self.nodes):
            n_in = node + 2
            out.append(torch.softmax(beta[start : start + n_in], dim=-1, dtype=dtype))
            start += n_in
        return torch.cat(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C_in, H, W) in [0, 1]
        if self._coalitions is not None:
            w_n, w_r = (self._coalition_weights(red, x.shape[0]) for red in (False, True))
            a_n, a_r = (self._coalition_active(red) for red in (False, True))
        else:
            w_n, w_r = self.op_weights(False), self.op_weights(True)
            a_n, a_r = self.active_ops(False), self.active_ops(True)
        e_n, e_r = self.edge_weights(False), self.edge_weights(True)
        s0 = s1 = self.stem(self.normalize(x))
        for cell in self.cells:
            w, e, a = (w_r, e_r, a_r) if cell.reduction else (w_n, e_n, a_n)
            s0, s1 = s1, cell(s0, s1, w, e, a)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def genotype(self) -> Genotype:
        """Derive the discrete cell (with PC-DARTS, α weights are scaled by edge weights)."""
        with torch.no_grad():
            cells = []
            for red in (False, True):
                w = self.op_weights(red)
                e = self.edge_weights(red)
                if e is not None:
                    w = w * e[:, None]
                cells.append(w)
        return derive_genotype(cells[0], cells[1], self.nodes, self.primitives)
