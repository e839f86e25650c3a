"""Linear bounds: the CROWN / Fast-Lin backward pass over a bound graph.

Zhang et al. 2018 (CROWN, "Efficient neural network robustness certification with general
activation functions") and Weng et al. 2018 (Fast-Lin). For a linear specification C·f(x) (here
the margins f_y − f_k), the coefficients A = C are pushed backward through the graph in reverse
topological order: linear ops exactly (A ← A·L, bias += A·b), ReLU and max pooling through the
sound linear relaxations of :mod:`rnas.bounds.graph` (which need bounds on their inputs), sums
and concatenations by sending A to every input. At the input, A·x + bias is minimized over the
threat set (:meth:`InputSet.lower`), giving a lower bound of C·f(x) that holds for every x in the
set.

What is implemented — two choices for the intermediate (pre-activation) bounds the relaxations
need:

* ``intermediate="ibp"`` (the default, used by the pipeline): CROWN-IBP (Zhang et al. 2020,
  "Towards stable and efficient training of verifiably robust neural networks"): the boxes of the
  IBP pass, then one CROWN backward pass from the margin specification to the input. Cost: one
  IBP forward plus one backward pass with K − 1 specifications per example.
* ``intermediate="crown"``: full CROWN: every node that feeds a ReLU or max pool gets its own
  backward pass (identity specification, all neurons, in chunks of ``chunk``), its box being
  the intersection of that bound with IBP's; later nodes use the refined boxes. Tighter and
  quadratic in depth: for tiny networks (tests, small certification jobs).

Both are sound for any choice of intermediate boxes that are themselves sound. CROWN can be
looser than IBP on some networks, so the reported certified bound takes, per specification,
the larger of the two (:func:`rnas.bounds.spec_bounds`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnas.bounds.graph import Box, Graph, InputOp, MaxPool, ReLU, split3, unstack
from rnas.bounds.interval import InputSet


def backward(graph: Graph, start: int, A: Tensor, points: list[Tensor], boxes: list[Box]) -> tuple[Tensor, Tensor]:
    """Push A (B, S, *shape of node ``start``) back to the input: returns (A_input, bias (B, S))
    with A·node(x) ≥ A_input·x + bias for every x whose intermediate values lie in ``boxes``."""
    coeffs: dict[int, Tensor] = {start: A}
    bias = torch.zeros(A.shape[:2], dtype=A.dtype, device=A.device)
    a_input = None
    for i in range(start, -1, -1):
        a = coeffs.pop(i, None)
        if a is None:
            continue
        node = graph.nodes[i]
        if isinstance(node.op, InputOp):
            a_input = a
            continue
        ins = node.inputs
        a_ins, b = node.op.crown(a, [boxes[j] for j in ins], [points[j] for j in ins])
        if b is not None:
            bias = bias + b
        for j, aj in zip(ins, a_ins):
            if aj is not None:
                coeffs[j] = coeffs[j] + aj if j in coeffs else aj
    if a_input is None:  # the node does not depend on the input at all
        a_input = torch.zeros(A.shape[:2] + points[0].shape[1:], dtype=A.dtype, device=A.device)
    return a_input, bias


def crown_spec_bounds(graph: Graph, points: list[Tensor], boxes: list[Box], C: Tensor, inputs: InputSet) -> Tensor:
    """Lower bounds (B, S) of C·logits over the threat set (C: (B, S, K))."""
    a_in, bias = backward(graph, graph.output, C, points, boxes)
    return inputs.lower(a_in, bias)


def needs_bounds(graph: Graph) -> dict[int, bool]:
    """Nodes whose boxes a relaxation reads -> True if only ReLUs read them (then only the
    neurons that are unstable, l < 0 < u, need a tighter box: stable ones are relaxed exactly)."""
    out: dict[int, bool] = {}
    for node in graph.nodes:
        if isinstance(node.op, (ReLU, MaxPool)):
            for j in node.inputs:
                out[j] = out.get(j, True) and isinstance(node.op, ReLU)
    return out


def crown_node_box(
    graph: Graph,
    node: int,
    points: list[Tensor],
    boxes: list[Box],
    inputs: InputSet,
    chunk: int,
    neurons: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """CROWN lower and upper bounds (B, len(neurons)) of the given flat neurons of ``node`` (all
    if None), by backward passes with identity specifications, ``chunk`` neurons at a time."""
    shape = points[node].shape
    b, n = shape[0], points[node][0].numel()
    if neurons is None:
        neurons = torch.arange(n, device=points[node].device)
    lows, ups = [], []
    for start in range(0, len(neurons), chunk):
        idx = neurons[start : start + chunk]
        s = len(idx)
        eye = torch.zeros(s, n, dtype=points[node].dtype, device=points[node].device)
        eye[torch.arange(s), idx] = 1.0
        spec = torch.cat([eye, -eye]).unsqueeze(0).expand(b, -1, -1).reshape(b, 2 * s, *shape[1:])
        a_in, bias = backward(graph, node, spec, points, boxes)
        bound = inputs.lower(a_in, bias)  # (B, 2s): lower of x_i, lower of −x_i
        lows.append(bound[:, :s])
        ups.append(-bound[:, s:])
    return torch.cat(lows, 1), torch.cat(ups, 1)


def crown_forward(graph: Graph, inputs: InputSet, chunk: int = 256) -> tuple[list[Tensor], list[Box]]:
    """Point pass plus boxes where every relaxed node's box is CROWN ∩ IBP (full CROWN).

    Nodes are refined in topological order, each from the already refined boxes of the nodes
    before it. A node read only by ReLUs gets CROWN bounds just for the neurons that are
    unstable under its current box in some example of the batch."""
    refine = needs_bounds(graph)
    n = inputs.x0.shape[0]
    stacks: list[Tensor] = []
    for i, node in enumerate(graph.nodes):
        if isinstance(node.op, InputOp):
            lo, up = inputs.box()
            stacks.append(torch.cat([inputs.x0, lo, up]))
            continue
        z = node.op.ibp([stacks[j] for j in node.inputs], n)
        if i in refine:
            x, lo_i, up_i = split3(z, n)
            neurons = None
            if refine[i]:
                neurons = ((lo_i < 0) & (up_i > 0)).flatten(1).any(0).nonzero().flatten()
            if neurons is None or len(neurons):
                points, boxes = unstack(stacks + [z], n)
                lo, up = crown_node_box(graph, i, points, boxes, inputs, chunk, neurons)
                lo_f, up_f = lo_i.flatten(1), up_i.flatten(1)
                if neurons is not None:
                    lo = lo_f.index_copy(1, neurons, lo)
                    up = up_f.index_copy(1, neurons, up)
                lo_i = torch.maximum(lo_f, lo).view_as(lo_i)
                up_i = torch.minimum(up_f, up).view_as(up_i)
                z = torch.cat([x, lo_i, up_i])
        stacks.append(z)
    return unstack(stacks, n)
