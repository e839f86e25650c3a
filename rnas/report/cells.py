"""Found cells: how much of them is parameter-free, how decided α was, and a drawing.

A collapsed differentiable search (Zela et al., ICLR 2020; Liang et al., "DARTS+", 2019)
ends with cells full of skip connections and pooling, and with α still close to uniform.
:func:`cell_stats` gives, per cell type, the share of parameter-free ops among the chosen
edges (``rnas.space.ops.is_parameter_free`` at each edge's stride), the number of skip
connections, and the mean entropy of softmax(α) over edges (nats; ``alphas.json``) next to
its maximum ln(#primitives). :data:`COLLAPSE_SKIPS` is DARTS+'s early-stopping criterion.

:func:`draw_genotype` draws the normal and the reduction cell as DAGs with matplotlib
(no graphviz): the two cell inputs on the left, the intermediate nodes left to right, their
concatenation on the right; each edge is labelled with its op, parameter-free ops dashed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
from matplotlib.patches import FancyArrowPatch  # noqa: E402

from rnas.space.ops import is_parameter_free  # noqa: E402

# DARTS+ (Liang et al., 2019, §3.2): a normal cell with 2 or more skip connections marks a
# collapsed search (they stop the search there).
COLLAPSE_SKIPS = 2

CELL_KINDS = ("normal", "reduce")


@dataclass(frozen=True)
class CellStats:
    kind: str  # "normal" | "reduce"
    edges: int
    parameter_free: int  # chosen edges whose op has no weights at its stride
    skips: int  # skip_connect edges
    alpha_entropy: float | None  # mean over edges of H(softmax α), nats (None: no alphas.json)
    alpha_entropy_max: float | None  # ln(#primitives)

    @property
    def parameter_free_share(self) -> float:
        return self.parameter_free / self.edges if self.edges else 0.0


def entropy(weights: list[float]) -> float:
    """H(p) = −Σ p log p in nats (p already normalized; zeros contribute 0)."""
    return -sum(p * math.log(p) for p in weights if p > 0)


def cell_stats(genotype: dict[str, Any], alphas: dict[str, Any] | None = None) -> list[CellStats]:
    """Stats of both cells of a DARTS genotype dict (see :mod:`rnas.space.genotype`)."""
    out = []
    for kind in CELL_KINDS:
        edges = genotype[kind]
        free = skips = 0
        for op, src in edges:
            stride = 2 if kind == "reduce" and src < 2 else 1
            free += is_parameter_free(op, stride)
            skips += op == "skip_connect"
        h = h_max = None
        if alphas and alphas.get(kind):
            rows = alphas[kind]
            h = sum(entropy(r) for r in rows) / len(rows)
            h_max = math.log(len(rows[0]))
        out.append(CellStats(kind, len(edges), free, skips, h, h_max))
    return out


def collapsed(stats: list[CellStats]) -> bool:
    """DARTS+'s criterion on the normal cell."""
    return any(s.kind == "normal" and s.skips >= COLLAPSE_SKIPS for s in stats)


# --------------------------------------------------------------------------------------------
# Drawing

_OP_COLORS = {
    "sep_conv_3x3": "#1f77b4",
    "sep_conv_5x5": "#17becf",
    "dil_conv_3x3": "#9467bd",
    "dil_conv_5x5": "#e377c2",
    "skip_connect": "#7f7f7f",
    "max_pool_3x3": "#ff7f0e",
    "avg_pool_3x3": "#bcbd22",
    "none": "#d62728",
}


_SPACING = 1.6  # x distance between neighbouring nodes (data units)
_RAD = 0.32  # arc3 curvature: an arc over a chord of length L peaks rad·L/2 off the line
# (arc3 works in display space: the axes keep an equal aspect so that this holds in data units)


def _x(node: int | str, nodes: int) -> float:
    """Arc-diagram layout: c_{k-2}, c_{k-1}, node 0 .. n-1, c_k on one horizontal line."""
    return _SPACING * (nodes + 2 if node == "out" else node)


def _draw_cell(ax, edges: list[list[Any]], concat: list[int], kind: str) -> None:
    nodes = len(edges) // 2
    top = 0.0
    for j, (op, src) in enumerate(edges):
        dst = j // 2 + 2
        x0, x1 = _x(src, nodes), _x(dst, nodes)
        above = j % 2 == 0  # a node's first input arcs above the line, its second below
        rad = -_RAD if above else _RAD  # arc3 bends to the right of the travel direction for rad > 0
        stride = 2 if kind == "reduce" and src < 2 else 1
        free = is_parameter_free(op, stride)
        color = _OP_COLORS.get(op, "#333333")
        ax.add_patch(
            FancyArrowPatch(
                (x0, 0),
                (x1, 0),
                connectionstyle=f"arc3,rad={rad}",
                arrowstyle="-|>",
                mutation_scale=11,
                lw=1.8,
                color=color,
                linestyle="--" if free else "-",
                shrinkA=11,
                shrinkB=11,
                zorder=1,
            )
        )
        height = _RAD * (x1 - x0) / 2  # apex of the quadratic Bézier
        y = height if above else -height
        top = max(top, height)
        ax.text(
            (x0 + x1) / 2,
            y,
            op,
            fontsize=7,
            ha="center",
            va="center",
            color=color,
            zorder=3,
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=color, lw=0.6),
        )
    x_out = _x("out", nodes)
    ax.text(
        x_out,
        -0.42,
        "concat(" + ", ".join(str(k - 2) for k in concat) + ")",
        ha="center",
        va="top",
        fontsize=7,
        color="#555555",
    )
    for key in [0, 1, *range(2, nodes + 2), "out"]:
        x = _x(key, nodes)
        if key in (0, 1):
            fc, label, box = "#d9f0d3", ("$c_{k-2}$", "$c_{k-1}$")[key], "round,pad=0.35"
        elif key == "out":
            fc, label, box = "#fee08b", "$c_{k}$", "round,pad=0.35"
        else:
            fc, label, box = "#deebf7", str(key - 2), "circle,pad=0.3"
        ax.text(
            x,
            0,
            label,
            ha="center",
            va="center",
            fontsize=10,
            zorder=4,
            bbox=dict(boxstyle=box, fc=fc, ec="#555555", lw=1),
        )
    ax.set_xlim(-0.8, x_out + 0.9)
    ax.set_ylim(-top - 0.45, top + 0.45)
    ax.set_aspect("equal")
    ax.axis("off")


def draw_genotype(
    genotype: dict[str, Any], path: str | Path, title: str = "", stats: list[CellStats] | None = None
) -> Path:
    """Write the normal and reduction cells side by side as one PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nodes = len(genotype["normal"]) // 2
    height = _RAD * _SPACING * (nodes + 1) / 2 + 0.45  # tallest arc + margin, data units
    width = _SPACING * (nodes + 2) + 1.7
    inches = 0.78  # per data unit
    fig, axes = plt.subplots(2, 1, figsize=(width * inches, 2 * (2 * height * inches + 0.3) + 0.5))
    by_kind = {s.kind: s for s in stats or []}
    for ax, kind in zip(axes, CELL_KINDS):
        _draw_cell(ax, genotype[kind], genotype[f"{kind}_concat"], kind)
        label = "normal cell" if kind == "normal" else "reduction cell"
        s = by_kind.get(kind)
        if s is not None:
            label += f" — {s.parameter_free}/{s.edges} parameter-free, {s.skips} skip"
            if s.alpha_entropy is not None:
                label += f", H(α) {s.alpha_entropy:.2f}/{s.alpha_entropy_max:.2f} nats"
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11, fontweight="bold")
    used = {op for kind in CELL_KINDS for op, _ in genotype[kind]}
    handles = [plt.Line2D([], [], color=c, lw=2, label=op) for op, c in _OP_COLORS.items() if op in used]
    handles.append(plt.Line2D([], [], color="#555555", lw=1.5, linestyle="--", label="dashed: parameter-free"))
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96 if title else 1), h_pad=0.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
