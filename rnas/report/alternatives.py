"""Report section "The cell an undecided search left open" (``pipeline.alternative_cells``).

For each undecided search whose alternative cell ``rnas alternative`` retrained and evaluated
(``<run>/seed<K>/alternative/``), its accuracies beside the final cell's, paired on the same test
examples: Δ = alternative − final in points and the exact McNemar p-value on the per-example
worst-case robust flags. The summary sets the differences beside the seed-to-seed spread of the
same runs' robust accuracy, which the Claims section's intervals already carry: differences of
that size and of no consistent sign are variance of the kind the intervals hold; differences
larger than the seeds', or of one sign over many searches, would bias a comparison
(docs/methods/darts.md).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from rnas import paths
from rnas.config import Params
from rnas.evaluation.flags import read_flags
from rnas.report.stats import mcnemar_exact
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
            p = None
            if "robust" in alt_flags and "robust" in final_flags:
                p = mcnemar_exact(alt_flags["robust"], final_flags["robust"])[2]
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
    significant = sum(1 for r in rows if r["p"] is not None and r["p"] < 0.05)
    text += f". {significant} of {len(rows)} differences significant at 0.05 (McNemar, uncorrected)."
    return "\n".join([*lines, "", text, ""])
