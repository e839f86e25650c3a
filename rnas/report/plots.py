"""The report's figures (matplotlib, Agg backend; PNGs under ``results/plots/``).

* :func:`plot_eps_sweep` -- robust accuracy vs L∞ ε per run (PGD-20, step/ε fixed), mean over
  seeds with the min–max band; the evaluation ε marked.
* :func:`plot_certified_sweep` -- certified accuracy vs L∞ ε per run (log ε), the median
  certified radius in the legend.
* :func:`plot_pareto` -- parameters vs AutoAttack accuracy (worst case if AutoAttack did not
  run), one point per run (mean over seeds, ± std bars), the Pareto front (no other run has
  fewer parameters *and* higher accuracy) joined.
* :func:`plot_cost` -- worst-case robust accuracy against search seconds, one small point per
  seed and the mean over seeds per run (± std bars): what each method's search cost buys.
* :func:`plot_search_curves` -- per-epoch search history (``search.json``): supernet validation
  accuracy and the entropy of softmax(α) per cell type, one line per run and seed, each search's
  stable-from epoch marked (filled: decided) and the last quarter shaded.
* :func:`plot_late_entries` -- for each undecided cell-space search, softmax(α) per epoch of what
  decides the entries that still moved in its last quarter (the ops of an edge, the inputs of a
  node): the near-ties the search did not break.

Every function writes its file even without data (a figure saying so), so a workflow that
declares the paths as outputs always gets them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
import matplotlib.text  # noqa: E402
import matplotlib.transforms  # noqa: E402

from rnas.report.collect import RunRow  # noqa: E402
from rnas.search.stability import last_quarter_start  # noqa: E402
from rnas.space.ops import PRIMITIVES  # noqa: E402

DPI = 110
# search.json history keys shown as search curves (when present), with their axis labels
SEARCH_CURVES: tuple[tuple[str, str], ...] = (
    ("val_acc", "supernet validation accuracy (%)"),
    ("alpha_entropy_normal", "H(softmax α), normal cell (nats)"),
    ("alpha_entropy_reduce", "H(softmax α), reduction cell (nats)"),
)


MARKERS = ("o", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":")


def _styles(rows: list[RunRow]) -> dict[str, dict]:
    """One colour per method and, within a method, one marker and line style per run, so the
    14 runs of the full profile stay apart (tab10 alone repeats after ten) and a method's
    variants and ablations read as one family. The teacher reference is dark grey and dashed."""
    cmap = plt.get_cmap("tab10")
    methods: dict[str, int] = {}
    per_method: dict[str, int] = {}
    styles = {}
    for row in rows:
        if row.reference:
            styles[row.run] = dict(color="#444444", marker="s", linestyle="--")
            continue
        colour = methods.setdefault(row.method, len(methods))
        k = per_method[row.method] = per_method.get(row.method, -1) + 1
        styles[row.run] = dict(
            color=cmap(colour % 10), marker=MARKERS[k % len(MARKERS)], linestyle=LINESTYLES[k % len(LINESTYLES)]
        )
    return styles


def _empty(path: Path, title: str, message: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#666666")
    ax.set_title(title)
    ax.axis("off")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _sweep_curves(rows: list[RunRow], key: str, positive_only: bool = False) -> list[tuple[RunRow, list]]:
    """Per run with any value: ``(row, [(ε, [accuracy per seed]), ...])`` from eval.json's ``key``
    ({ε: accuracy}), sorted by ε (``positive_only``: ε > 0, for a log axis)."""
    curves = []
    for row in rows:
        by_eps: dict[float, list[float]] = {}
        for res in row.results:
            for eps, acc in (res.eval.get(key) or {}).items():
                if not positive_only or float(eps) > 0:
                    by_eps.setdefault(float(eps), []).append(float(acc))
        if by_eps:
            curves.append((row, sorted(by_eps.items())))
    return curves


def _plot_mean_and_band(ax, row: RunRow, points: list, style: dict[str, Any], label: str) -> None:
    """The mean over seeds (in %) as a line, and the min–max band when there are several seeds."""
    xs = [e for e, _ in points]
    ax.plot(
        xs,
        [100 * statistics.mean(v) for _, v in points],
        label=label,
        **dict(style, lw=1.5 if row.reference else 1.8, ms=4),
    )
    if any(len(v) > 1 for _, v in points):
        ax.fill_between(
            xs,
            [100 * min(v) for _, v in points],
            [100 * max(v) for _, v in points],
            color=style["color"],
            alpha=0.15,
            lw=0,
        )


def plot_eps_sweep(rows: list[RunRow], path: str | Path, epsilon: float | None = None) -> Path:
    path = _prepare(path)
    title = "Robust accuracy vs ε (PGD-20, L∞)"
    curves = _sweep_curves(rows, "eps_sweep")
    if not curves:
        return _empty(path, title, "no ε sweep in any eval.json")
    styles = _styles(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row, points in curves:
        _plot_mean_and_band(ax, row, points, styles[row.run], row.run + (" (reference)" if row.reference else ""))
    if epsilon is not None:
        ax.axvline(epsilon, color="#999999", lw=1, linestyle=":")
        ax.text(epsilon, 2, f" evaluation ε = {epsilon:g}", fontsize=8, color="#666666", va="bottom")
    ax.set_xlabel("L∞ radius ε (pixel units, inputs in [0, 1])")
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(-2, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_certified_sweep(rows: list[RunRow], path: str | Path) -> Path:
    """Certified accuracy vs L∞ ε per run (``certified_eps_sweep`` of eval.json), log-scaled ε,
    mean over seeds with the min–max band; the median certified radius in the legend."""
    path = _prepare(path)
    title = "Certified accuracy vs ε (bound propagation, L∞)"
    curves = _sweep_curves(rows, "certified_eps_sweep", positive_only=True)
    if not curves:
        return _empty(path, title, "no certified ε sweep in any eval.json")
    styles = _styles(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row, points in curves:
        medians = row.values("certified_radius_median")
        label = row.run + (" (reference)" if row.reference else "")
        if medians:
            label += f", median radius {statistics.mean(medians):.2g}"
        _plot_mean_and_band(ax, row, points, styles[row.run], label)
    ax.set_xscale("log")
    ax.set_xlabel("L∞ radius ε (pixel units, inputs in [0, 1]; log scale)")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(-2, 100)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def text_box(note, renderer):
    """The display box of an annotation's text alone (``Annotation.get_window_extent`` includes
    its leader line)."""
    note.update_positions(renderer)  # an annotation places its text at draw time
    return matplotlib.text.Text.get_window_extent(note, renderer)


# Label offsets tried in turn, in points from the marker: right, left (text ending there), above
# and below, then further out.
_LABEL_OFFSETS = tuple((dx, dy) for dy in (5, -13, 17, -25, 29, -37, 41, -49) for dx in (7, -7))


Polyline = tuple[Sequence[float], Sequence[float]]  # x values, y values (data coordinates)


def _leader(dx: float, dy: float) -> dict:
    """A leader line's style, drawn from the corner of the label's text nearest the point (the
    left edge of a label right of the point, the bottom of one above it), not from the text's
    centre, through the text."""
    corner = (0.0 if dx > 0 else 1.0, 0.0 if dy > 0 else 1.0)
    return {"arrowstyle": "-", "lw": 0.5, "color": "#888888", "relpos": corner}


def errorbar_lines(x: float, y: float, xerr: float | None = None, yerr: float | None = None) -> list[Polyline]:
    """The bars of ``ax.errorbar(x, y, xerr=..., yerr=...)`` as polylines, for ``label_points``'
    ``avoid_lines`` (a label on a neighbour's error bar hides how far that run's seeds spread)."""
    lines: list[Polyline] = []
    if yerr:
        lines.append(([x, x], [y - yerr, y + yerr]))
    if xerr:
        lines.append(([x - xerr, x + xerr], [y, y]))
    return lines


def _line_samples(ax, lines: Sequence[Polyline], step: float = 3.0) -> list[tuple[float, float]]:
    """Points every ``step`` pixels along each polyline (x values, y values in data coordinates),
    in display coordinates: what a label must not cover to leave the line readable."""
    out: list[tuple[float, float]] = []
    x_min = ax.get_xlim()[0] if ax.get_xscale() == "log" else -math.inf  # a bar reaching 0 or below on a log
    y_min = ax.get_ylim()[0] if ax.get_yscale() == "log" else -math.inf  # axis is drawn to the axis' edge
    for xs, ys in lines:
        pts = [ax.transData.transform((max(x, x_min), max(y, y_min))) for x, y in zip(xs, ys)]
        for (u0, v0), (u1, v1) in zip(pts, pts[1:]):
            n = max(1, int(math.hypot(u1 - u0, v1 - v0) / step))
            out.extend((u0 + (u1 - u0) * k / n, v0 + (v1 - v0) * k / n) for k in range(n + 1))
        out.extend(pts[-1:])
    return out


def label_points(
    ax,
    labels: list[tuple[str, float, float]],
    fontsize: int = 8,
    avoid_lines: Sequence[Polyline] = (),
) -> list:
    """Annotate each (text, x, y) beside its point so that no two labels overlap, no label covers
    a point's marker or crosses a line of ``avoid_lines`` (polylines in data coordinates, e.g. a
    Pareto front or error bars: :func:`errorbar_lines`) and every label stays inside the axes:
    the labels go in order of decreasing y, each at the first offset of ``_LABEL_OFFSETS`` that
    satisfies all of these against what is placed (else the first that satisfies all but the
    lines, else the first inside the axes, else the first); a label moved off its first row
    (beside the point, right or left) gets a thin leader line to it, from the text's corner
    nearest the point. Call it after the axes' scales, limits and layout are final (boxes are
    measured in display coordinates). Returns the annotations."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pad = 6.0  # half a marker, pixels
    markers = [ax.transData.transform((x, y)) for _, x, y in labels]
    markers = [matplotlib.transforms.Bbox([[u - pad, v - pad], [u + pad, v + pad]]) for u, v in markers]
    line_points = _line_samples(ax, avoid_lines)

    def within(box) -> bool:
        return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1

    def fits(box, placed, lines: bool = True) -> bool:
        if not within(box) or any(box.overlaps(other) for other in placed + markers):
            return False
        return not lines or not any(box.contains(u, v) for u, v in line_points)

    def annotate(text: str, x: float, y: float, i: int):
        dx, dy = _LABEL_OFFSETS[i]
        note = ax.annotate(
            text,
            (x, y),
            textcoords="offset points",
            xytext=(dx, dy),
            ha="left" if dx > 0 else "right",
            fontsize=fontsize,
            arrowprops=_leader(dx, dy) if i >= 2 else None,
        )
        return note, text_box(note, renderer)

    placed, out = [], []
    for text, x, y in sorted(labels, key=lambda t: -t[2]):
        crossing = fallback = chosen = None
        for i in range(len(_LABEL_OFFSETS)):
            note, box = annotate(text, x, y, i)
            if fits(box, placed):
                chosen = (note, box)
                break
            if crossing is None and fits(box, placed, lines=False):
                crossing = i
            if fallback is None and within(box):
                fallback = i
            note.remove()
        if chosen is None:
            best = next((i for i in (crossing, fallback) if i is not None), 0)
            chosen = annotate(text, x, y, best)
        placed.append(chosen[1])
        out.append(chosen[0])
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (size, accuracy) no other point beats on both (fewer or equal
    parameters and higher accuracy, or fewer parameters and equal accuracy), by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(rows: list[RunRow], path: str | Path) -> Path:
    path = _prepare(path)
    key = "autoattack_acc" if any(row.values("autoattack_acc") for row in rows) else "robust_acc"
    label = "AutoAttack accuracy (%)" if key == "autoattack_acc" else "worst-case robust accuracy (%)"
    title = "Accuracy–size trade-off"
    pts = [(row, row.values("params"), row.values(key)) for row in rows]
    pts = [(row, p, a) for row, p, a in pts if p and a]
    if not pts:
        return _empty(path, title, f"no run has both params and {key}")
    styles = _styles(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xy = [(statistics.mean(p), 100 * statistics.mean(a)) for _, p, a in pts]
    bars: list[Polyline] = []
    for (row, _, a), (x, y) in zip(pts, xy):
        err = 100 * statistics.stdev(a) if len(a) > 1 else 0.0
        bars += errorbar_lines(x, y, yerr=err)
        ax.errorbar(
            x,
            y,
            yerr=err or None,
            fmt=styles[row.run]["marker"],
            ms=8,
            color=styles[row.run]["color"],
            capsize=3,
            zorder=3,
        )
    front = pareto_front(xy)
    front_line = ([xy[i][0] for i in front], [xy[i][1] for i in front])
    ax.plot(
        *front_line,
        color="#2ca02c",
        lw=1.5,
        linestyle="--",
        zorder=2,
        label="Pareto front",
    )
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.set_title(title + " (upper left is better)", fontsize=11)
    fig.tight_layout()
    label_points(ax, [(row.run, x, y) for (row, _, _), (x, y) in zip(pts, xy)], avoid_lines=[front_line, *bars])
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_cost(rows: list[RunRow], path: str | Path) -> Path:
    """Robust accuracy (worst case over the L∞ attacks) against search seconds, per run.

    Searches shorter than a second (random sampling, a fixed architecture) sit at 1 s on the log
    axis, labelled so; the teacher (no search) is a horizontal reference line."""
    path = _prepare(path)
    title = "Robust accuracy vs search cost"
    pts = []
    for row in rows:
        seeds = [(r.number("search_seconds"), r.number("robust_acc")) for r in row.results]
        seeds = [(max(1.0, t), 100 * a) for t, a in seeds if t is not None and a is not None]
        if seeds and not row.reference:
            pts.append((row, seeds))
    if not pts:
        return _empty(path, title, "no run has both search_seconds and robust_acc")
    styles = _styles(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels: list[tuple[str, float, float]] = []
    bars: list[Polyline] = []
    for row, seeds in pts:
        st = styles[row.run]
        ax.scatter(
            [t for t, _ in seeds], [a for _, a in seeds], s=14, color=st["color"], marker=st["marker"], alpha=0.45, lw=0
        )
        x, y = statistics.mean(t for t, _ in seeds), statistics.mean(a for _, a in seeds)
        yerr = statistics.stdev(a for _, a in seeds) if len(seeds) > 1 else None
        xerr = statistics.stdev(t for t, _ in seeds) if len(seeds) > 1 else None
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=st["marker"], ms=8, color=st["color"], capsize=3, zorder=3)
        bars += errorbar_lines(x, y, xerr, yerr)
        labels.append((row.run, x, y))
    ax.set_xscale("log")
    for row in rows:
        if row.reference and row.values("robust_acc"):
            reference_line(ax, 100 * statistics.mean(row.values("robust_acc")), f" {row.run} (reference)")
    ax.set_xlabel("search seconds (log scale; < 1 s shown at 1 s)")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title + " (upper left is better)", fontsize=11)
    fig.tight_layout()
    label_points(ax, labels, avoid_lines=bars)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def reference_line(ax, y: float, label: str) -> matplotlib.text.Text:
    """A dashed horizontal line at ``y`` with ``label`` above it at the left edge, the y axis raised
    when the line is near its top so the label stays inside the axes (a teacher above every run)."""
    ax.axhline(y, color="#444444", lw=1, linestyle="--")
    lo, hi = ax.get_ylim()
    room = 0.08 * (max(hi, y) - lo)
    if y + room > hi:
        ax.set_ylim(lo, y + room)
    return ax.text(ax.get_xlim()[0], y, label, fontsize=8, color="#444444", va="bottom")


def stable_mark(search: dict, pts: Sequence[tuple[int, float]]) -> tuple[int, float, bool] | None:
    """Where a search's curve gets its stable-from mark: (epoch, the curve's value there, decided),
    or None when ``search.json`` has no stable-from epoch or the curve has no point at it."""
    stable = search.get("stable_from_epoch")
    at = dict(pts).get(stable) if isinstance(stable, int) else None
    return None if at is None else (stable, at, bool(search.get("decided")))


def plot_search_curves(rows: list[RunRow], path: str | Path) -> Path:
    """Per panel one line per run and seed; a triangle marks the epoch from which the search's
    derived architecture no longer changed (``stable_from_epoch``), filled when the search decided
    (stable before the shaded last quarter), hollow when not."""
    path = _prepare(path)
    title = "Search curves"
    series = []  # (row, history, search.json), one per seed
    for row in rows:
        for res in row.results:
            history = (res.search or {}).get("history") or []
            if history:
                series.append((row, history, res.search))
    keys = [(k, lab) for k, lab in SEARCH_CURVES if any(k in h for _, hist, _ in series for h in hist)]
    if not keys:
        return _empty(path, title, "no search history (no run searched with the search loop)")
    styles = _styles(rows)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    epochs = max(len(history) for _, history, _ in series)
    handles: dict[str, Any] = {}  # one legend entry per run: its seeds share the style
    for ax, (key, lab) in zip(axes[0], keys):
        if epochs >= 2:
            ax.axvspan(last_quarter_start(epochs) + 0.5, epochs + 0.5, color="#000000", alpha=0.06, lw=0)
        for row, history, search in series:
            pts = [(e + 1, h[key]) for e, h in enumerate(history) if isinstance(h.get(key), (int, float))]
            if not pts:
                continue
            scale = 100 if key.endswith("_acc") else 1
            (line,) = ax.plot([e for e, _ in pts], [scale * v for _, v in pts], ms=3, lw=1.6, **styles[row.run])
            handles.setdefault(row.run, line)
            mark = stable_mark(search, pts)
            if mark is not None:
                colour = styles[row.run]["color"]
                ax.plot(
                    [mark[0]],
                    [scale * mark[1]],
                    marker="v",
                    ms=8,
                    ls="none",
                    mec=colour,
                    mfc=colour if mark[2] else "white",
                    mew=1.4,
                    zorder=3,
                )
        if key.startswith("alpha_entropy"):  # absolute scale: 0 = one op per edge, ln K = uniform α
            h_max = math.log(len(PRIMITIVES))
            ax.axhline(h_max, color="#999999", lw=1, linestyle=":")
            ax.text(1, h_max, "uniform α", fontsize=8, color="#666666", va="bottom")
            ax.set_ylim(0, 1.12 * h_max)
        elif key.endswith("_acc"):
            ax.set_ylim(0, 100)
        ax.set_xlabel("search epoch")
        ax.set_ylabel(lab, fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    marks = [
        plt.Line2D([], [], marker="v", ms=8, ls="none", mec="#444444", mfc="#444444", label="stable from (decided)"),
        plt.Line2D([], [], marker="v", ms=8, ls="none", mec="#444444", mfc="white", label="stable from (undecided)"),
        matplotlib.patches.Patch(color="#000000", alpha=0.06, label="last quarter"),
    ]
    fig.legend(
        [*handles.values(), *marks],
        [*handles, *(m.get_label() for m in marks)],
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(title + " (per epoch, from search.json; one line per seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


LATE_PANELS = 9  # undecided searches drawn (the report's list names every one)
LATE_ENTRIES = 3  # moved-late entries drawn per search


def plot_late_entries(rows: list[RunRow], path: str | Path) -> Path:
    """One panel per undecided cell-space search (LRNAS excluded: it selects by α itself, see its
    contributions figure): for each entry of its genotype that moved in the last quarter (at most
    ``LATE_ENTRIES``), the weights that decide it over the epochs (``alphas.json``'s
    ``per_epoch``; :func:`rnas.report.decisions.entry_series`): the top three ops of the edge, or
    inputs of the node, one colour per entry, the final choice solid. Both inputs of one node that
    moved are one entry (the same strengths decide them, :func:`~rnas.report.decisions.decided_by`)."""
    from rnas.report.decisions import decided_by, entry_series

    path = _prepare(path)
    title = "What undecided searches still moved"
    panels = []  # (title, {label: series}, epochs)
    for row in rows:
        if row.method == "lrnas":
            continue
        for res in row.results:
            search = res.search or {}
            if search.get("decided", True) or not search.get("late_changed"):
                continue
            entries, labels = {}, {}  # what decides -> series; -> the moved paths it decides
            for entry in search["late_changed"]:
                key = decided_by(entry)
                if key in labels:  # the node's other input: its lines are drawn already
                    labels[key].append(entry)
                    continue
                series = entry_series(entry, res.architecture, res.alphas)
                if series and len(entries) < LATE_ENTRIES:
                    entries[key], labels[key] = series, [entry]
            entries = {", ".join(labels[key]): series for key, series in entries.items()}
            if entries:  # a series exists only where alphas.json has per_epoch
                panels.append((f"{row.run}, seed {res.seed}", entries, len(res.alphas["per_epoch"])))
    if not panels:
        return _empty(path, title, "no undecided cell-space search with per-epoch α (alphas.json)")
    panels = panels[:LATE_PANELS]
    cols = min(3, len(panels))
    n_rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(5.2 * cols, 4.6 * n_rows), squeeze=False)  # legends below
    cmap = plt.get_cmap("tab10")
    for ax, (name, entries, epochs) in zip(axes.flat, panels):
        if epochs >= 2:
            ax.axvspan(last_quarter_start(epochs) + 0.5, epochs + 0.5, color="#000000", alpha=0.06, lw=0)
        x = list(range(1, epochs + 1))
        for i, (entry, series) in enumerate(entries.items()):
            for j, (label, values) in enumerate(series.items()):
                ax.plot(
                    x,
                    values,
                    color=cmap(i % 10),
                    linestyle=LINESTYLES[j % len(LINESTYLES)],
                    lw=1.8 if j == 0 else 1.2,
                    label=f"{entry}: {label}",
                )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("search epoch")
        ax.set_ylabel("softmax(α) weight", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        title + " (per epoch; solid: the final choice; shaded: the last quarter)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
