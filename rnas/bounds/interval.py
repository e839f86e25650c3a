"""The threat set, the margin specification, and interval bound propagation (IBP).

Threat set (:class:`InputSet`): the ε-ball around the clean input x₀ (pixel units; L∞ or L2)
intersected with the valid image range [0, 1] — normalization is the network's first layer, so
the box is taken before it. IBP starts from the box hull of that set,
[max(x₀ − ε, 0), min(x₀ + ε, 1)] (for L2 the hull of the ball is the same box, so IBP is
loose for L2; CROWN concretizes over the ball itself).

Margin specification (:func:`margin_spec`): for label y and each other class k, the linear
function f_y − f_k of the logits; the margin lower bound is min_k of their lower bounds, and
the example is certified at ε when it is > 0.

IBP (Gowal et al. 2018, "On the effectiveness of interval bound propagation"): boxes pushed
forward node by node (:meth:`Graph.forward`). The last layer is "elided" as in that paper: the
specification is folded into the final linear layer, lower(f_y − f_k) = (W_y − W_k)·c −
|W_y − W_k|·r + b_y − b_k with c, r the centre and radius of the classifier's input box, which is
never looser than subtracting the logit intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from rnas.bounds.graph import Box, Graph, Linear, cast

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")


@dataclass(frozen=True)
class InputSet:
    """{x : ‖x − x₀‖_p ≤ ε} ∩ [0, 1]^d, with x₀ (B, C, H, W) in [0, 1] and ε in pixel units: one
    radius for the batch (a float) or one per example (a tensor (B,), e.g. a root search over ε)."""

    x0: Tensor
    eps: float | Tensor
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; known: {', '.join(NORMS)}")
        if isinstance(self.eps, Tensor):
            if self.eps.shape != self.x0.shape[:1]:
                raise ValueError(f"per-example eps must have shape ({self.x0.shape[0]},), got {tuple(self.eps.shape)}")
            if not bool((self.eps >= 0).all()):
                raise ValueError("eps must be >= 0 (pixel units) for every example")
        elif not (self.eps >= 0):
            raise ValueError(f"eps must be >= 0 (pixel units), got {self.eps}")

    def _eps(self, ndim: int) -> float | Tensor:
        """ε broadcastable against a (B, ...) tensor of ``ndim`` dimensions."""
        if isinstance(self.eps, Tensor):
            return self.eps.to(self.x0.dtype).view(-1, *([1] * (ndim - 1)))
        return self.eps

    def box(self) -> Box:
        """The box hull [max(x₀ − ε, 0), min(x₀ + ε, 1)] (exact for L∞). Below float64 the ends
        are computed in float64 and rounded outward to x₀'s dtype, so the box holds the whole
        ball even where ε is below the dtype's resolution at x₀ (float32: ~6e-8 at 0.5), where
        x₀ ± ε rounded to nearest would be x₀ itself."""
        eps = self._eps(self.x0.dim())
        if self.x0.dtype == torch.float64:
            return (self.x0 - eps).clamp(0.0, 1.0), (self.x0 + eps).clamp(0.0, 1.0)
        x64 = self.x0.double()
        e64 = eps.double() if isinstance(eps, Tensor) else eps
        lo64, up64 = (x64 - e64).clamp(0.0, 1.0), (x64 + e64).clamp(0.0, 1.0)
        lo, up = lo64.to(self.x0.dtype), up64.to(self.x0.dtype)
        lo = torch.where(lo.double() > lo64, torch.nextafter(lo, torch.full_like(lo, -math.inf)), lo)
        up = torch.where(up.double() < up64, torch.nextafter(up, torch.full_like(up, math.inf)), up)
        return lo.clamp(0.0, 1.0), up.clamp(0.0, 1.0)

    def lower(self, A: Tensor, bias: Tensor) -> Tensor:
        """min over the set of A·x + bias; A (B, S, C, H, W), bias (B, S) -> (B, S).

        L∞: the box is the exact set: Σ A⁺·l + A⁻·u. L2: the set lies in both the ball and the
        box hull, so the larger of min over the ball (A·x₀ − ε‖A‖₂) and min over the box is a
        sound (not always exact) lower bound over their intersection."""
        lo, up = self.box()
        flat = A.flatten(2)
        box_bound = (flat.clamp(min=0) * lo.flatten(1).unsqueeze(1)).sum(-1) + (
            flat.clamp(max=0) * up.flatten(1).unsqueeze(1)
        ).sum(-1)
        if self.norm == "linf":
            return box_bound + bias
        ball_bound = (flat * self.x0.flatten(1).unsqueeze(1)).sum(-1) - self._eps(2) * flat.norm(dim=-1)
        return torch.maximum(box_bound, ball_bound) + bias


def margin_spec(y: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """C (B, K−1, K) with row s = e_y − e_{k_s}, k_s running over the classes other than y."""
    b = y.shape[0]
    idx = torch.arange(num_classes - 1, device=y.device).expand(b, -1)
    others = idx + (idx >= y[:, None]).long()  # (B, K−1)
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye[others]


def ibp_spec_bounds(graph: Graph, points: list[Tensor], boxes: list[Box], C: Tensor) -> Tensor:
    """Lower bounds (B, S) of C·logits from the IBP boxes (final linear layer elided)."""
    out = graph.nodes[graph.output]
    if isinstance(out.op, Linear):
        lo, up = boxes[out.inputs[0]]
        c, r = (up + lo) / 2, (up - lo) / 2  # (B, F)
        m = out.op.m
        w = C @ cast(m.weight, C)  # (B, S, F)
        bound = (w @ c.unsqueeze(-1)).squeeze(-1) - (w.abs() @ r.unsqueeze(-1)).squeeze(-1)
        if m.bias is not None:
            bound = bound + C @ cast(m.bias, C)
        return bound
    lo, up = boxes[graph.output]
    return (C.clamp(min=0) @ lo.unsqueeze(-1) + C.clamp(max=0) @ up.unsqueeze(-1)).squeeze(-1)
