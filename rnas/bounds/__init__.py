"""Sound lower bounds of the classification margin over an ε-ball (DSRNA's certified bound).

For a model f (inputs in [0, 1], logits out), an example (x₀, y) and ε (pixel units, L∞ or L2),
these functions give lower bounds of f_y(x) − f_k(x) for every k ≠ y that hold for *every* x in
{‖x − x₀‖ ≤ ε} ∩ [0, 1]^d. The margin lower bound is their minimum; the example is certified
when it is positive. Bounds are differentiable in the network weights and, for the supernet,
in the architecture parameters α (mixed ops are weighted by softmax(α)).

Methods (:data:`BOUND_METHODS`):

* ``"ibp"`` — interval bound propagation (:mod:`rnas.bounds.interval`);
* ``"crown"`` — CROWN linear bounds (:mod:`rnas.bounds.crown`), by default CROWN-IBP (IBP
  intermediate bounds, one backward pass from the margin specification); ``intermediate="crown"``
  gives full CROWN for small networks.

The *reported* bound of several methods is, per specification, the largest (tightest) of their
lower bounds, so it is never looser than IBP (:func:`spec_bounds` with ``methods=("ibp",
"crown")``, or ``method="both"`` below).

BatchNorm follows the module's mode: running statistics in eval mode (certification), the
clean batch's statistics held fixed in training mode (the search; see
:class:`rnas.bounds.graph.BatchNorm`). Supported models: see :mod:`rnas.bounds.builders`.

Example::

    lb = margin_lower_bound(model.eval(), x, y, eps=0.1, norm="linf", method="both")  # (B,)
    certified = lb > 0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnas.bounds.builders import GRAPH_BUILDERS, build_graph
from rnas.bounds.crown import crown_forward, crown_spec_bounds
from rnas.bounds.graph import Box, Graph, UnsupportedModelError
from rnas.bounds.interval import NORMS, InputSet, Norm, ibp_spec_bounds, margin_spec

__all__ = [
    "BOUND_METHODS",
    "CERTIFY_METHODS",
    "GRAPH_BUILDERS",
    "NORMS",
    "BoundResult",
    "InputSet",
    "UnsupportedModelError",
    "build_graph",
    "margin_lower_bound",
    "margin_spec",
    "spec_bounds",
]

SpecBound = Callable[[Graph, list[Tensor], list[Box], Tensor, InputSet], Tensor]


def _ibp(graph: Graph, points: list[Tensor], boxes: list[Box], C: Tensor, inputs: InputSet) -> Tensor:
    return ibp_spec_bounds(graph, points, boxes, C)


#: name -> (graph, clean values, boxes, specification C (B, S, K), threat set) -> lower bounds (B, S)
BOUND_METHODS: dict[str, SpecBound] = {
    "ibp": _ibp,
    "crown": crown_spec_bounds,
}
#: what a certification may ask for: one method, or "both" (the tighter of IBP and CROWN)
CERTIFY_METHODS: dict[str, tuple[str, ...]] = {"ibp": ("ibp",), "crown": ("crown",), "both": ("ibp", "crown")}


@dataclass
class BoundResult:
    """``lower[name]``: (B, K−1) lower bounds of f_y − f_k (k ≠ y, in class order) per method;
    ``logits``: the clean logits (B, K) of the point pass (the model's own output)."""

    lower: dict[str, Tensor]
    logits: Tensor

    def best(self) -> Tensor:
        """Per specification, the tightest bound of the methods computed (B, K−1)."""
        values = list(self.lower.values())
        out = values[0]
        for v in values[1:]:
            out = torch.maximum(out, v)
        return out

    def margin(self, name: str | None = None) -> Tensor:
        """Lower bound (B,) of f_y − max_{k≠y} f_k: of one method, or the tightest (None)."""
        spec = self.best() if name is None else self.lower[name]
        return spec.min(dim=1).values


def spec_bounds(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    norm: Norm = "linf",
    methods: tuple[str, ...] = ("ibp",),
    intermediate: str = "ibp",
    chunk: int = 256,
    dtype: torch.dtype | None = None,
) -> BoundResult:
    """Margin lower bounds of ``model`` at (x (B, C, H, W) in [0, 1], y (B,)) over the ε-ball
    (``eps``: one radius, or a tensor (B,) with one radius per example).

    One graph, one point + IBP pass shared by every method in ``methods`` (keys of
    :data:`BOUND_METHODS`). ``intermediate``: ``"ibp"`` (CROWN-IBP) or ``"crown"`` (full CROWN,
    whose refined boxes then also feed the IBP bound); ``chunk``: neurons per backward pass in
    full CROWN. ``dtype``: propagate in this precision (e.g. float64 for a float32 model whose
    loose bounds overflow float32; parameters and buffers are cast on the fly, and what the pass
    derives from them — softmax(α), ``Normalize``'s 1/std, eval-mode BN's scale — is computed in
    it; gradients still reach them); the returned bounds and logits are in it: cast them to the
    model's dtype only after any rescaling (a float64 bound beyond 3.4e38 reads −inf in float32)."""
    if dtype is not None:
        x = x.to(dtype)
    unknown = [m for m in methods if m not in BOUND_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown bound method(s) {unknown}; known: {', '.join(BOUND_METHODS)}")
    if intermediate not in ("ibp", "crown"):
        raise ValueError(f"intermediate must be 'ibp' or 'crown', got {intermediate!r}")
    graph = build_graph(model, x.dtype)  # every op of the passes in x's (the requested) dtype
    inputs = InputSet(x, eps.to(x.device) if isinstance(eps, torch.Tensor) else float(eps), norm)
    if intermediate == "crown":
        points, boxes = crown_forward(graph, inputs, chunk)
    else:
        points, boxes = graph.forward(x, inputs.box())
    logits = points[graph.output]
    C = margin_spec(y, logits.shape[1], logits.dtype)
    lower = {m: BOUND_METHODS[m](graph, points, boxes, C, inputs) for m in methods}
    return BoundResult(lower, logits)


def margin_lower_bound(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: Norm = "linf", method: str = "ibp"
) -> Tensor:
    """Lower bound (B,) of f_y(x') − max_{k≠y} f_k(x') over every x' in the ε-ball ∩ [0, 1].

    ``method``: ``"ibp"``, ``"crown"`` (CROWN-IBP) or ``"both"`` (per specification the tighter)."""
    if method not in CERTIFY_METHODS:
        raise ValueError(f"unknown bound method {method!r}; known: {', '.join(CERTIFY_METHODS)}")
    return spec_bounds(model, x, y, eps, norm, CERTIFY_METHODS[method]).margin()
