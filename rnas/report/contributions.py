"""LRNAS' contribution heat map: primitive x epoch.

One panel per cell type (normal, reduction); a row is one primitive (edge "node k ← input j"
and op), a column one epoch with a contribution estimate, the colour the value V̂ =
mean over permutations of z(ΔA) + z(ΔR) (a diverging map centred at 0: red helps clean and
FGSM accuracy more than the average primitive, blue less). Drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

from rnas.io import atomic_save  # noqa: E402


def plot_contributions(
    values: list[list[float]],
    epochs: list[int],
    row_labels: list[str],
    cells: list[str],
    path: str | Path,
    title: str = "LRNAS contributions",
) -> Path:
    """Write the heat map as a PNG. ``values`` is (n_epochs, n_players); ``row_labels`` and
    ``cells`` (the cell type of each player) have one entry per player."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = list(dict.fromkeys(cells))
    rows = [[i for i, c in enumerate(cells) if c == kind] for kind in kinds]
    n_rows = max(len(r) for r in rows)
    limit = max((abs(v) for row in values for v in row), default=1.0) or 1.0
    fig, axes = plt.subplots(
        1,
        len(kinds),
        squeeze=False,
        sharey=True,
        constrained_layout=True,
        figsize=(2.2 + (1.2 + 0.15 * len(epochs)) * len(kinds), 1.0 + 0.075 * n_rows),
    )
    im = None
    for col, (ax, kind, idx) in enumerate(zip(axes[0], kinds, rows)):
        grid = [[values[t][i] for t in range(len(epochs))] for i in idx]  # (rows, epochs)
        im = ax.imshow(grid, aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit, interpolation="nearest")
        if col == 0:  # both cell types have the same edges and ops: one set of row labels
            ax.set_yticks(range(len(idx)))
            ax.set_yticklabels([row_labels[i] for i in idx], fontsize=3.5)
            ax.set_ylabel("node ← input, op", fontsize=7)
        ax.set_xticks(range(len(epochs)))
        ax.set_xticklabels([str(e + 1) for e in epochs], fontsize=5)
        ax.set_xlabel("epoch", fontsize=7)
        ax.set_title(f"{kind} cell", fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), label="contribution z(ΔA)+z(ΔR)", shrink=0.5)
    try:
        png = {"dpi": 150, "format": "png", "metadata": {"Software": None}}
        return atomic_save(path, lambda fh: fig.savefig(fh, **png), fsync=False)
    finally:
        plt.close(fig)
