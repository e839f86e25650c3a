"""Report section "The cell an undecided search left open" (``pipeline.alternative_cells``).

For each undecided search whose alternative cell ``rnas alternative`` retrained and evaluated
(``<run>/seed<K>/alternative/``), its accuracies beside the final cell's, paired on the same test
examples: Δ = alternative − final in points and the exact McNemar p-value on the per-example
worst-case robust flags. The summary sets the differences beside the seed-to-seed spread of the
same runs' robust accuracy, which the Claims section's intervals already carry: differences of
that size and of no consistent sign are variance of the kind the intervals hold; differences
larger than the seeds', or of one sign over many searches, would bias a comparison
(docs/methods/darts.md). Whether they have one sign is tested over the searches, each search a
replicate as a seed is in the Claims (:func:`rnas.report.stats.compare_paired`: the mean Δ with
its 95% t interval, the paired t-test's p and the smallest mean difference the searches could
have detected), beside the count of positive and negative differences.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from rnas import paths
from rnas.config import Params
from rnas.evaluation.flags import read_flags
from rnas.report.stats import ALPHA, compare_paired, mcnemar_exact
from rnas.runs import has_alternative


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def alternative_rows(params: Params) -> tuple[list[dict], int]:
    """(one row per retrained alternative cell, the number of searches with a summary)."""
    if not params.pipeline.alternative_cells:
        return [], 0
    rows, summaries = [], 0
    for run in params.pipeline.runs:
        if not has_alternative(run):
            continue
        for seed in params.pipeline.seeds:
            folder = paths.alternative_dir(params, run, seed)
            summary = _json(folder / "summary.json")
            if summary is None:
                continue
            summaries += 1
            final = _json(paths.eval_file(params, run, seed))
            if not summary.get("retrained") or final is None or not (folder / "flags.json").is_file():
                continue
            alt_flags, _ = read_flags(folder / "flags.json")
            final_flags, _ = read_flags(paths.flags_file(params, run, seed))
            p, pair = None, None
            if "robust" in alt_flags and "robust" in final_flags:
                pair = (alt_flags["robust"], final_flags["robust"])
                p = mcnemar_exact(*pair)[2]
            rows.append(
                {
                    "run": run,
                    "seed": seed,
                    "epoch": summary["epoch"],
                    "moved": summary.get("moved", []),
                    "final_robust": final["robust_acc"],
                    "alt_robust": summary["robust_acc"],
                    "d_robust": summary["robust_acc"] - final["robust_acc"],
                    "d_clean": summary["clean_acc"] - final["clean_acc"],
                    "p": p,
                    "robust_flags": pair,  # (alternative, final) per example, or None
                }
            )
    return rows, summaries


def _seed_sd(params: Params, run: str) -> float | None:
    values = [
        ev["robust_acc"]
        for seed in params.pipeline.seeds
        if (ev := _json(paths.eval_file(params, run, seed))) and isinstance(ev.get("robust_acc"), int | float)
    ]
    return statistics.stdev(values) if len(values) >= 2 else None


def alternatives_markdown(params: Params) -> str:
    """The section as Markdown, or "" when ``pipeline.alternative_cells`` is off or no
    ``summary.json`` exists yet."""
    rows, summaries = alternative_rows(params)
    if not summaries:
        return ""
    lines = [
        "### The cell an undecided search left open",
        "",
        f"Of {summaries} gradient cell-space searches, {len(rows)} did not decide. For each, the cell it chose "
        "last before its final one (epoch e, derived from its per-epoch α) was retrained with the same recipe "
        "and seed and evaluated with the same protocol on the same examples (`rnas alternative`). Δ = "
        "alternative − final in points; p: exact McNemar test on the per-example worst-case robust flags.",
        "",
    ]
    if not rows:
        return "\n".join([*lines, "Every search decided: no cell was left open.", ""])
    lines += [
        "| run | seed | epoch e | entries that differ | final robust | alternative robust | Δ robust | Δ clean | p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        moved = ", ".join(f"`{m}`" for m in r["moved"][:4]) + (
            f" and {len(r['moved']) - 4} more" if len(r["moved"]) > 4 else ""
        )
        p = "–" if r["p"] is None else f"{r['p']:.2g}"
        lines.append(
            f"| {r['run']} | {r['seed']} | {r['epoch']} | {moved} | {100 * r['final_robust']:.1f} | "
            f"{100 * r['alt_robust']:.1f} | {100 * r['d_robust']:+.1f} | {100 * r['d_clean']:+.1f} | {p} |"
        )
    d = [100 * r["d_robust"] for r in rows]
    sds = [sd for run in dict.fromkeys(r["run"] for r in rows) if (sd := _seed_sd(params, run)) is not None]
    text = (
        f"Δ robust over the {len(d)} searches: mean {statistics.mean(d):+.1f}, mean absolute "
        f"{statistics.mean(abs(x) for x in d):.1f}, from {min(d):+.1f} to {max(d):+.1f} points"
    )
    if sds:
        text += (
            f"; the seed-to-seed sd of the same runs' robust accuracy is {100 * min(sds):.1f}–{100 * max(sds):.1f} "
            f"points (median {100 * statistics.median(sds):.1f})"
        )
    significant = sum(1 for r in rows if r["p"] is not None and r["p"] < ALPHA)
    text += f". {significant} of {len(rows)} differences significant at 0.05 (McNemar, uncorrected)."
    return "\n".join([*lines, "", text, "", *_direction(rows), ""])


def _direction(rows: list[dict]) -> list[str]:
    """Whether the alternatives are more (or less) robust than the final cells over the searches:
    the paired comparison with each search a replicate; [] for fewer than two searches with flags."""
    pairs = [r["robust_flags"] for r in rows if r["robust_flags"] is not None]
    sizes = {len(a) for a, _ in pairs} | {len(b) for _, b in pairs}
    if len(pairs) < 2 or len(sizes) != 1:
        return []
    c = compare_paired("robust", [a for a, _ in pairs], [b for _, b in pairs])
    up = sum(1 for a, b in pairs if a.mean() > b.mean())
    down = sum(1 for a, b in pairs if a.mean() < b.mean())
    lo, hi = c.ci
    head = (
        f"Over the {c.n_seeds} searches (each a replicate, paired t): mean Δ robust {100 * c.diff:+.1f} points, "
        f"95% interval [{100 * lo:+.1f}, {100 * hi:+.1f}], p {c.p:.2g}; {up} alternatives more robust, "
        f"{down} less, {len(pairs) - up - down} equal. "
    )
    if c.p < ALPHA:
        side = "more" if c.diff > 0 else "less"
        return [
            head + f"**The alternative cells are {side} robust than the final ones**: an undecided search's "
            "last-epoch choice is biased in this direction, beyond the seed-to-seed variance of the comparison."
        ]
    mde = f" (the smallest mean difference these searches could detect: {100 * c.mde:.1f} points)" if c.mde else ""
    return [head + "No consistent direction: the choice left open adds variance, not a detected bias" + mde + "."]
