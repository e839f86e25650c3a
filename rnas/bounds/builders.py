"""Turn a network into a bound-propagation :class:`~rnas.bounds.graph.Graph`.

``build_graph(model)`` walks the module structure (not a trace of the forward code) with one
builder per module type, in the registry :data:`GRAPH_BUILDERS`: ``(graph, module, x) -> node``
for single-input modules. Supported:

* the cell space: :class:`~rnas.space.network.CellNetwork` (final networks) and
  :class:`~rnas.space.supernet.Supernet` (mixed ops: Σ_o softmax(α)_o · op_o(x), with the same
  op-mask skipping and PC-DARTS partial channels / edge normalization as its forward; in
  training mode each state's out-edges as one group of channel blocks, :func:`_state_edges`);
  their ops ``ReLUConvBN``, ``DilConv``, ``SepConv``, ``FactorizedReduce``, ``Zero``,
  ``Identity``, max and average pooling;
* RNAS-CL's width space: :class:`~rnas.space.width.WidthNetwork` (final networks; the identity
  path of a block whose width changes is an exact channel-selection 1x1 conv);
* the fixed families: :class:`~rnas.models.NormalizedModel` around ``SmallCNN``,
  ``PreActResNet18`` or ``WideResNet`` (dropout-free);
* layers: ``Normalize``, ``Conv2d``, ``BatchNorm2d``, ``ReLU``, ``MaxPool2d``, ``AvgPool2d``,
  ``Linear``, ``AdaptiveAvgPool2d(1)``, ``Identity``, ``Sequential``.

Anything else raises :class:`~rnas.bounds.graph.UnsupportedModelError` naming the module.
CellNetwork's drop path is a training-time regularizer and is not part of the graph (bounds
are for the deterministic network); a model in training mode with drop path on is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

from rnas.bounds import graph as g
from rnas.models import NormalizedModel
from rnas.models.normalize import Normalize
from rnas.models.preact_resnet import PreActBlock, PreActResNet18
from rnas.models.small_cnn import SmallCNN
from rnas.models.wide_resnet import WideBasicBlock, WideResNet
from rnas.space import grouped, ops as space_ops
from rnas.space.network import Cell, CellNetwork
from rnas.space.supernet import MixedOp, SearchCell, Supernet
from rnas.space.width import ConvBNAct, WidthBlock, WidthNetwork

Builder = Callable[[g.Graph, nn.Module, int], int]
GRAPH_BUILDERS: dict[type, Builder] = {}


def register(*types: type) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        for t in types:
            GRAPH_BUILDERS[t] = fn
        return fn

    return deco


def add_module(graph: g.Graph, module: nn.Module, x: int) -> int:
    """Append ``module`` applied to node ``x``; returns its output node."""
    for cls in type(module).__mro__:
        if cls in GRAPH_BUILDERS:
            return GRAPH_BUILDERS[cls](graph, module, x)
    known = ", ".join(sorted(t.__name__ for t in GRAPH_BUILDERS))
    raise g.UnsupportedModelError(f"no bound-propagation rule for module {type(module).__name__}; supported: {known}")


def build_graph(model: nn.Module, dtype: torch.dtype | None = None) -> g.Graph:
    """The graph of ``model`` (input: node 0, (B, C, H, W) in [0, 1]; output: logits). ``dtype``:
    the precision the bounds will be propagated in, for the weights a builder computes itself
    (the supernet's softmax(α)); None: the model's."""
    graph = g.Graph(dtype=dtype)
    x = graph.add(g.InputOp())
    add_module(graph, model, x)
    return graph


# -- layers ---------------------------------------------------------------------------


@register(nn.Sequential)
def _sequential(graph, m, x):
    for child in m:
        x = add_module(graph, child, x)
    return x


@register(nn.Identity, space_ops.Identity)
def _identity(graph, m, x):
    return x


@register(Normalize)
def _normalize(graph, m, x):
    return graph.add(g.Normalize(m.mean, m.std), x)


@register(nn.Conv2d)
def _conv(graph, m, x):
    return graph.add(g.Conv(m), x)


@register(nn.BatchNorm2d)
def _bn(graph, m, x):
    return graph.add(g.BatchNorm(m), x)


@register(nn.ReLU)
def _relu(graph, m, x):
    return graph.add(g.ReLU(), x)


@register(nn.MaxPool2d)
def _maxpool(graph, m, x):
    return graph.add(g.MaxPool(m), x)


@register(nn.AvgPool2d)
def _avgpool(graph, m, x):
    return graph.add(g.AvgPool(m), x)


@register(nn.Linear)
def _linear(graph, m, x):
    return graph.add(g.Linear(m), x)


@register(nn.AdaptiveAvgPool2d)
def _gap(graph, m, x):
    if m.output_size not in (1, (1, 1)):
        raise g.UnsupportedModelError(f"AdaptiveAvgPool2d({m.output_size}) (only global pooling)")
    return graph.add(g.GlobalAvgPool(), x)  # (B, C): the networks flatten right after it


@register(space_ops.Zero)
def _zero(graph, m, x):
    return graph.add(g.Zero(m.stride), x)


@register(space_ops.FactorizedReduce)
def _factorized_reduce(graph, m, x):
    x = graph.add(g.ReLU(), x)
    a = graph.add(g.Conv(m.conv_1), x)
    b = graph.add(g.Conv(m.conv_2), graph.add(g.Shift(), x))
    return graph.add(g.BatchNorm(m.bn), graph.add(g.Concat(), a, b))


# -- cell space -----------------------------------------------------------------------


def _mixed_op(graph: g.Graph, m: MixedOp, x: int, weights, active) -> int:
    """Σ_o w_o · op_o(x) over the ops not switched off (as ``MixedOp.forward``). The ``none``
    op's term w·0 is identically zero (value, box and gradient), so it adds no node."""

    def mix(inp: int) -> int:
        terms = [
            graph.add(g.Scale(w, nonnegative=True), add_module(graph, op, inp))  # w = softmax(α)_o
            for i, (w, op) in enumerate(zip(weights, m.ops))
            if (active is None or active[i]) and not isinstance(op, space_ops.Zero)
        ]
        if not terms:  # every op switched off: a zero edge
            return graph.add(g.Zero(m.stride), inp)
        return terms[0] if len(terms) == 1 else graph.add(g.Add(), *terms)

    if m.k == 1:
        return mix(x)
    # PC-DARTS: the first C/K channels go through the ops, the rest bypass, then shuffle.
    xa = graph.add(g.SliceChannels(m.k, first=True), x)
    xb = graph.add(g.SliceChannels(m.k, first=False), x)
    out = mix(xa)
    if m.bypass_pool is not None:
        xb = graph.add(g.MaxPool(m.bypass_pool), xb)
    return graph.add(g.ChannelShuffle(m.k), graph.add(g.Concat(), out, xb))


def _conv_like(convs: list[nn.Conv2d], weight: torch.Tensor, groups: int) -> SimpleNamespace:
    """The fields :class:`~rnas.bounds.graph.Conv` reads, for n same-shaped convs run as one."""
    m = convs[0]
    return SimpleNamespace(
        weight=weight,
        bias=None,
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        groups=groups,
        padding_mode=m.padding_mode,
    )


def _grouped_dil_conv(graph: g.Graph, units: list[nn.Sequential], x: int) -> int:
    """n ``DilConv`` units (ReLU, depthwise, 1x1, BN) on x, their input stacked block-major
    (B, n·C_in, H, W) and already ReLU'd: one depthwise conv, one grouped 1x1 conv and one BN over
    the n blocks (an affine-free training-mode BN normalizes each channel on its own)."""
    n = len(units)
    dws, pws, bns = [u[1] for u in units], [u[2] for u in units], [u[3] for u in units]
    dw = torch.cat([c.weight for c in dws])  # (n·C_in, 1, k, k)
    y = graph.add(g.Conv(_conv_like(dws, dw, dws[0].groups * n)), x)
    pw = torch.cat([c.weight for c in pws])  # (n·C_out, C_in, 1, 1): n groups
    y = graph.add(g.Conv(_conv_like(pws, pw, n)), y)
    bn = SimpleNamespace(training=True, running_mean=None, running_var=None, weight=None, bias=None, eps=bns[0].eps)
    return graph.add(g.BatchNorm(bn), y)


def _cell_groupable(cell: SearchCell, active) -> bool:
    """Whether the graph can run each state's out-edges of ``cell`` as one group: full channels
    (no PC-DARTS split), nothing switched off, training mode (batch statistics, so the edges'
    affine-free BNs after one pool agree), and the registry's modules on every edge
    (:func:`grouped.edges_groupable`)."""
    edges = list(cell.edges)
    return (
        edges[0].k == 1
        and active is None
        and cell.training
        and grouped.edges_groupable(edges, edges[0].primitives)
        and not any(m.affine for e in edges for m in e.modules() if isinstance(m, nn.BatchNorm2d))
    )


def _state_edges(graph: g.Graph, edges: list[MixedOp], x: int, w: torch.Tensor) -> list[int]:
    """The mixed outputs of the n out-edges of one state x, computed as one group as the supernet's
    own training forward does (:func:`rnas.space.grouped.state_ops`): each op's n copies as blocks
    of channels, scaled by the edges' weights w[:, o] ≥ 0, summed over ops, and each edge's output
    its block. The same function and IBP box as one mixed op per edge up to float round-off, and
    a CROWN bound at least as tight (a state's pools are one node, relaxed once on the summed
    coefficients instead of once per edge; tests/test_bounds.py), in about a third of the nodes."""
    n, stride, primitives = len(edges), edges[0].stride, edges[0].primitives
    c = next(m.num_features for m in edges[0].modules() if isinstance(m, nn.BatchNorm2d))  # channels per edge
    terms: list[int] = []
    repeated_relu = None
    for o, name in enumerate(primitives):
        ops = [e.ops[o] for e in edges]
        if name == "none":
            continue  # w·0: no node
        if name in ("max_pool_3x3", "avg_pool_3x3"):  # one pool + affine-free BN, the same on every edge
            y = graph.add(g.RepeatChannels(n), add_module(graph, ops[0], x))
        elif name == "skip_connect":
            if stride == 1:
                y = graph.add(g.RepeatChannels(n), x)
            else:  # one FactorizedReduce per edge, each with its own convs
                y = graph.add(g.Concat(), *[add_module(graph, op, x) for op in ops])
        else:  # sep_conv_* (two DilConv units) and dil_conv_* (one), from one ReLU of the state
            if repeated_relu is None:
                repeated_relu = graph.add(g.RepeatChannels(n), graph.add(g.ReLU(), x))
            if name.startswith("sep_conv"):
                y = _grouped_dil_conv(graph, [op[0] for op in ops], repeated_relu)
                y = _grouped_dil_conv(graph, [op[1] for op in ops], graph.add(g.ReLU(), y))
            else:
                y = _grouped_dil_conv(graph, list(ops), repeated_relu)
        terms.append(graph.add(g.ChannelScale(w[:, o].repeat_interleave(c)), y))
    if not terms:  # only `none`: zero edges
        return [graph.add(g.Zero(stride), x) for _ in edges]
    total = terms[0] if len(terms) == 1 else graph.add(g.Add(), *terms)
    return [graph.add(g.ChannelRange(t * c, (t + 1) * c), total) for t in range(n)]


def _search_cell_grouped(graph: g.Graph, cell: SearchCell, states: list[int], weights: torch.Tensor) -> int:
    """:func:`_search_cell` with each state's out-edges as one group (:func:`_state_edges`), fed
    as soon as the state exists: state j feeds nodes max(0, j − 1) .. nodes − 1."""
    terms: list[list[int]] = [[] for _ in range(cell.nodes)]

    def feed(j: int, h: int) -> None:
        targets, ids = cell.out_edges(j)
        outs = _state_edges(graph, [cell.edges[e] for e in ids], h, weights[ids])
        for node, out in zip(targets, outs):
            terms[node].append(out)

    feed(0, states[0])
    feed(1, states[1])
    nodes = []
    for node in range(cell.nodes):
        nodes.append(graph.add(g.Add(), *terms[node]))
        if node < cell.nodes - 1:
            feed(node + 2, nodes[-1])
    return graph.add(g.Concat(), *nodes)


def _search_cell(graph: g.Graph, cell: SearchCell, s0: int, s1: int, weights, edge_weights, active) -> int:
    states = [add_module(graph, cell.preprocess0, s0), add_module(graph, cell.preprocess1, s1)]
    if edge_weights is None and _cell_groupable(cell, active):
        return _search_cell_grouped(graph, cell, states, weights)
    offset = 0
    for _node in range(cell.nodes):
        terms = []
        for j, h in enumerate(states):
            e = offset + j
            out = _mixed_op(graph, cell.edges[e], h, weights[e], None if active is None else active[e])
            if edge_weights is not None:
                out = graph.add(g.Scale(edge_weights[e], nonnegative=True), out)  # softmax(β)
            terms.append(out)
        offset += len(states)
        states.append(graph.add(g.Add(), *terms))
    return graph.add(g.Concat(), *states[-cell.nodes :])


@register(Supernet)
def _supernet(graph, m, x):
    dt = graph.dtype  # softmax(α), softmax(β) in the propagated dtype
    w_n, w_r = m.op_weights(False, dt), m.op_weights(True, dt)
    e_n, e_r = m.edge_weights(False, dt), m.edge_weights(True, dt)
    a_n, a_r = m.active_ops(False), m.active_ops(True)
    s0 = s1 = add_module(graph, m.stem, add_module(graph, m.normalize, x))
    for cell in m.cells:
        w, e, a = (w_r, e_r, a_r) if cell.reduction else (w_n, e_n, a_n)
        s0, s1 = s1, _search_cell(graph, cell, s0, s1, w, e, a)
    return graph.add(g.Linear(m.classifier), graph.add(g.GlobalAvgPool(), s1))


def _cell(graph: g.Graph, cell: Cell, s0: int, s1: int) -> int:
    if cell.training and cell.drop_prob > 0:
        raise g.UnsupportedModelError("CellNetwork in training mode with drop path (bounds need eval mode)")
    states = [add_module(graph, cell.preprocess0, s0), add_module(graph, cell.preprocess1, s1)]
    for node in range(len(cell.ops) // 2):
        a, b = (add_module(graph, cell.ops[j], states[cell.indices[j]]) for j in (2 * node, 2 * node + 1))
        states.append(graph.add(g.Add(), a, b))
    return graph.add(g.Concat(), *(states[i] for i in cell.concat))


@register(CellNetwork)
def _cell_network(graph, m, x):
    s0 = s1 = add_module(graph, m.stem, add_module(graph, m.normalize, x))
    for cell in m.cells:
        s0, s1 = s1, _cell(graph, cell, s0, s1)
    return graph.add(g.Linear(m.classifier), graph.add(g.GlobalAvgPool(), s1))


# -- fixed families -------------------------------------------------------------------


@register(NormalizedModel)
def _normalized_model(graph, m, x):
    return add_module(graph, m.net, add_module(graph, m.normalize, x))


@register(SmallCNN)
def _small_cnn(graph, m, x):
    return graph.add(g.Linear(m.classifier), graph.add(g.GlobalAvgPool(), add_module(graph, m.features, x)))


@register(PreActBlock)
def _preact_block(graph, m, x):
    pre = graph.add(g.ReLU(), graph.add(g.BatchNorm(m.bn1), x))
    shortcut = graph.add(g.Conv(m.shortcut), pre) if m.shortcut is not None else x
    out = graph.add(g.Conv(m.conv1), pre)
    out = graph.add(g.Conv(m.conv2), graph.add(g.ReLU(), graph.add(g.BatchNorm(m.bn2), out)))
    return graph.add(g.Add(), out, shortcut)


@register(PreActResNet18)
def _preact_resnet(graph, m, x):
    x = graph.add(g.Conv(m.conv1), x)
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        x = add_module(graph, layer, x)
    x = graph.add(g.ReLU(), graph.add(g.BatchNorm(m.bn), x))
    return graph.add(g.Linear(m.linear), graph.add(g.GlobalAvgPool(), x))


@register(WideBasicBlock)
def _wide_block(graph, m, x):
    if m.drop_rate > 0 and m.training:
        raise g.UnsupportedModelError("WideResNet dropout in training mode")
    pre = graph.add(g.ReLU(), graph.add(g.BatchNorm(m.bn1), x))
    shortcut = x if m.conv_shortcut is None else graph.add(g.Conv(m.conv_shortcut), pre)
    out = graph.add(g.ReLU(), graph.add(g.BatchNorm(m.bn2), graph.add(g.Conv(m.conv1), pre)))
    return graph.add(g.Add(), graph.add(g.Conv(m.conv2), out), shortcut)


@register(WideResNet)
def _wide_resnet(graph, m, x):
    x = graph.add(g.Conv(m.conv1), x)
    for group in (m.block1, m.block2, m.block3):
        x = add_module(graph, group, x)
    x = graph.add(g.ReLU(), graph.add(g.BatchNorm(m.bn), x))
    return graph.add(g.Linear(m.fc), graph.add(g.GlobalAvgPool(), x))


# -- RNAS-CL's width space (final network) ------------------------------------------------


def _channel_selection(c_in: int, c_out: int, like: nn.Module) -> nn.Conv2d:
    """The identity path of a width block as an exact linear op: a fixed 1x1 conv that keeps the
    first min(c_in, c_out) channels and zero-pads the rest (``rnas.space.width.match_channels``)."""
    w = like.conv.weight
    conv = nn.Conv2d(c_in, c_out, 1, bias=False).to(device=w.device, dtype=w.dtype)
    conv.weight.requires_grad_(False)
    conv.weight.zero_()
    idx = torch.arange(min(c_in, c_out), device=w.device)
    conv.weight[idx, idx, 0, 0] = 1.0
    return conv


@register(ConvBNAct)
def _conv_bn_act(graph, m, x):
    return add_module(graph, m.act, graph.add(g.BatchNorm(m.bn), graph.add(g.Conv(m.conv), x)))


@register(WidthBlock)
def _width_block(graph, m, x):
    out = add_module(graph, m.project, add_module(graph, m.depthwise, add_module(graph, m.expand, x)))
    if not m.residual:
        return out
    c_in = m.expand.conv.in_channels
    shortcut = x if c_in == m.c_out else graph.add(g.Conv(_channel_selection(c_in, m.c_out, m.expand)), x)
    return graph.add(g.Add(), out, shortcut)


@register(WidthNetwork)
def _width_network(graph, m, x):
    x = add_module(graph, m.stem, add_module(graph, m.normalize, x))
    for block in m.blocks:
        x = add_module(graph, block, x)
    return graph.add(g.Linear(m.classifier), graph.add(g.GlobalAvgPool(), x))
