"""The report's tables, built from :class:`~rnas.report.collect.RunRow` rows.

Accuracies are fractions in [0, 1] shown in percent. One seed: the value and its 95% Wilson
score interval over the ``n_examples`` test examples (Wilson, 1927). Several seeds: mean ± std
over seeds and the 95% Student-t interval of the mean, mean ± t_{0.975, k−1} · std / √k.
A column appears when at least one run has its key (e.g. ``certified_acc`` only once some
evaluation certified), so the tables show whatever the evaluations recorded.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from rnas.report.collect import RunRow, SeedResult, collect  # noqa: F401  (collect re-exported)
from rnas.report.document import Cell, Table, to_markdown

__all__ = [
    "ACCURACY_COLUMNS",
    "AUTOATTACK_CHECK_LABELS",
    "Column",
    "autoattack_checks_table",
    "collect",
    "main_table",
    "markdown_table",
    "sanity_failures",
    "sanity_table",
    "seed_interval",
    "seed_table",
    "wilson_interval",
]


@dataclass(frozen=True)
class Column:
    key: str  # eval.json key
    label: str
    tooltip: str = ""


ACCURACY_COLUMNS: tuple[Column, ...] = (
    Column("clean_acc", "clean", "no attack"),
    Column("fgsm_acc", "FGSM", "FGSM at the L∞ ε, no random start"),
    Column("pgd20_acc", "PGD-20", "PGD-20 at the L∞ ε, random start; broken if any iterate fooled the model"),
    Column("pgd100_acc", "PGD-100", "PGD-100 at the L∞ ε, random start; broken if any iterate fooled the model"),
    Column("autoattack_acc", "AutoAttack", "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) at the L∞ ε"),
    Column(
        "apgd_acc",
        "APGD-CE+T",
        "AutoAttack's gradient attacks (APGD-CE, then APGD-T with 9 targets), standard settings, at the L∞ ε",
    ),
    Column(
        "robust_acc",
        "worst case",
        "per example: robust only if every attack at the L∞ ε failed on it (stand-alone Square included)",
    ),
    Column("autoattack_l2_acc", "AutoAttack-L2", "AutoAttack standard at the L2 radius"),
    Column("cw_acc", "C&W-L2", "Carlini–Wagner at the L2 radius"),
    Column("deepfool_acc", "DeepFool-L2", "DeepFool at the L2 radius"),
    Column("robust_acc_l2", "worst case L2", "per example: robust only if every attack at the L2 radius failed on it"),
    Column("certified_acc", "certified", "certified accuracy at the L∞ ε (bound propagation)"),
)


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion p over n trials."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# Two-sided 95% quantiles t_{0.975, df} of Student's t for df = 1..30 (any statistics table);
# beyond 30 degrees of freedom the normal quantile 1.96 is within 2%.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def seed_interval(values: Sequence[float]) -> tuple[float, float]:
    """95% Student-t interval of the mean over seeds, clipped to [0, 1] (needs ≥ 2 values)."""
    k = len(values)
    mean, std = statistics.mean(values), statistics.stdev(values)
    t = _T975[k - 2] if k - 1 <= len(_T975) else 1.96
    half = t * std / math.sqrt(k)
    return (max(0.0, mean - half), min(1.0, mean + half))


def acc_cell(values: Sequence[float], n: int) -> Cell:
    if not values:
        return Cell("–", css="na")
    if len(values) == 1:
        lo, hi = wilson_interval(values[0], n)
        return Cell(
            f"{100 * values[0]:.1f}", f"[{100 * lo:.1f}–{100 * hi:.1f}]", title=f"95% Wilson interval over {n} examples"
        )
    lo, hi = seed_interval(values)
    return Cell(
        f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}",
        f"[{100 * lo:.1f}–{100 * hi:.1f}]",
        title=f"mean ± std over {len(values)} seeds; 95% t-interval",
    )


RADIUS_KEY = "certified_radius_median"
RADIUS_TIP = (
    "median over the examples of the certified radius: the largest L∞ ε at which the bound certifies "
    "the example (root search over ε; 0 when not certified at certify_radius_min), pixel units"
)


def radius_cell(values: Sequence[float]) -> Cell:
    """A median certified radius (one seed), or the mean ± std of the seeds' medians."""
    if not values:
        return Cell("–", css="na")
    if len(values) == 1:
        return Cell(f"{values[0]:.2g}", title=RADIUS_TIP)
    return Cell(
        f"{statistics.mean(values):.2g} ± {statistics.stdev(values):.1g}",
        title=f"mean ± std over {len(values)} seeds of the {RADIUS_TIP}",
    )


def fmt_count(values: Sequence[float]) -> str:
    if not values:
        return "–"
    m = statistics.mean(values)
    if m >= 1e9:
        return f"{m / 1e9:.2f}G"
    if m >= 1e6:
        return f"{m / 1e6:.2f}M"
    if m >= 1e3:
        return f"{m / 1e3:.1f}k"
    return f"{m:.0f}"


def fmt_seconds(values: Sequence[float]) -> str:
    if not values:
        return "–"
    s = statistics.mean(values)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def device_label(results: Sequence[SeedResult]) -> Cell:
    """``CPU`` or ``GPU`` (what ran the evaluation), the full names as tooltip."""
    kinds, names = [], []
    for r in results:
        device, name = r.eval.get("device"), r.eval.get("device_name") or r.eval.get("device")
        if device is None:
            continue
        kind = "GPU" if str(device).startswith("cuda") else "CPU"
        if kind not in kinds:
            kinds.append(kind)
        if name not in names:
            names.append(str(name))
    return Cell("/".join(kinds) or "–", css="txt", title="; ".join(names) or None)


def method_label(row: RunRow) -> str:
    return row.method if row.variant in ("default", row.method) else f"{row.method} ({row.variant})"


def present_columns(rows: Sequence[RunRow]) -> list[Column]:
    return [c for c in ACCURACY_COLUMNS if any(row.values(c.key) for row in rows)]


def sanity_counts(results: Sequence[SeedResult]) -> tuple[int, int, list[str], int]:
    """(passed, total, failed 'check (seed k)' names, evaluations without sanity results)."""
    passed = total = missing = 0
    failed = []
    for r in results:
        verdicts = r.eval.get("sanity")
        if not isinstance(verdicts, dict) or not verdicts:
            missing += 1
            continue
        for name, ok in verdicts.items():
            total += 1
            passed += bool(ok)
            if not ok:
                failed.append(f"{name} (seed {r.seed})")
    return passed, total, failed, missing


def sanity_cell(results: Sequence[SeedResult]) -> Cell:
    passed, total, failed, missing = sanity_counts(results)
    if failed:
        return Cell(f"✗ {len(failed)} failed", css="fail", title="; ".join(failed))
    if missing:
        return Cell("✗ not checked", css="fail", title="an eval.json without sanity results (re-evaluate)")
    return Cell(f"✓ {passed}/{total}", css="pass", title="every sanity check passed")


def _best(rows: Sequence[RunRow], key: str) -> float | None:
    """Highest mean among searched runs whose sanity checks all passed (a masked model's fake
    robustness is never crowned); None when every such run has the same value (a column of
    zeros, e.g. certified accuracy of networks not trained to be certified, has no best)."""
    searched = [row for row in rows if not row.reference and row.values(key)]
    means = [statistics.mean(row.values(key)) for row in searched if not sanity_counts(row.results)[2]]
    if len(searched) < 2 or not means or (len(means) > 1 and all(math.isclose(m, means[0]) for m in means)):
        return None
    return max(means)


def main_table(rows: Sequence[RunRow]) -> Table:
    """One row per run: accuracies (mean over seeds, 95% intervals), size, cost, sanity."""
    cols = present_columns(rows)
    header: list[str | Cell] = [Cell("run", title="run name; the search method (variant) below"), "seeds"]
    header += [Cell(c.label, title=c.tooltip) for c in cols]
    radius = any(row.values(RADIUS_KEY) for row in rows)
    header += [Cell("median cert. radius", title=RADIUS_TIP)] if radius else []
    header += [
        Cell("params"),
        Cell("MACs", title="multiply-adds of one forward pass"),
        Cell("search", title="search wall time (search.json)"),
        Cell("wall", title="search + retrain + evaluation wall time"),
        Cell("device", title="what ran the evaluation"),
        Cell("sanity"),
    ]
    best = {c.key: _best(rows, c.key) for c in cols}
    body = []
    for row in rows:
        name_css = "ref" if row.reference else None
        failed = sanity_counts(row.results)[2]
        method = method_label(row)
        cells: list[str | Cell] = [
            Cell(
                row.run + (" (reference)" if row.reference else ""), None if method == row.run else method, css=name_css
            ),
            str(len(row.results)),
        ]
        for c in cols:
            cell = acc_cell(row.values(c.key), row.n_examples)
            values = row.values(c.key)
            if (
                best[c.key] is not None
                and values
                and not row.reference
                and not failed
                and math.isclose(statistics.mean(values), best[c.key])
            ):
                cell.css = "best"
            cells.append(cell)
        cells += [radius_cell(row.values(RADIUS_KEY))] if radius else []
        cells += [
            fmt_count(row.values("params")),
            fmt_count(row.values("macs")),
            fmt_seconds(row.values("search_seconds")),
            fmt_seconds(row.values("wall_seconds")),
            device_label(row.results),
            sanity_cell(row.results),
        ]
        body.append(cells)
    return Table(header, body, css="main")


def seed_table(rows: Sequence[RunRow]) -> Table:
    """One row per run and seed, every accuracy with its Wilson interval."""
    cols = present_columns(rows)
    radius = any(row.values(RADIUS_KEY) for row in rows)
    header: list[str | Cell] = [
        "run",
        "seed",
        *(Cell(c.label, title=c.tooltip) for c in cols),
        *([Cell("median cert. radius", title=RADIUS_TIP)] if radius else []),
        "params",
        "MACs",
        "search",
        "retrain",
        "evaluation",
        "device",
        "sanity",
    ]
    body = []
    for row in rows:
        for r in row.results:
            n = int(r.eval.get("n_examples", 0))
            cells: list[str | Cell] = [row.run, str(r.seed)]
            cells += [acc_cell([v] if (v := r.number(c.key)) is not None else [], n) for c in cols]
            cells += [radius_cell([v] if (v := r.number(RADIUS_KEY)) is not None else [])] if radius else []
            cells += [
                fmt_count([v] if (v := r.number("params")) is not None else []),
                fmt_count([v] if (v := r.number("macs")) is not None else []),
            ]
            cells += [
                fmt_seconds([v] if (v := r.number(k)) is not None else [])
                for k in ("search_seconds", "train_seconds", "eval_seconds")
            ]
            cells += [device_label([r]), sanity_cell([r])]
            body.append(cells)
    return Table(header, body)


def check_names(rows: Sequence[RunRow]) -> list[str]:
    names: list[str] = []
    for row in rows:
        for r in row.results:
            for name in r.eval.get("sanity") or {}:
                if name not in names:
                    names.append(name)
    return names


def sanity_table(rows: Sequence[RunRow]) -> Table:
    """run/seed × check: ✓, ✗ or n/a, the check's numbers as tooltip."""
    from rnas.evaluation.sanity import SANITY_CHECKS

    names = check_names(rows)
    labels = {n: (SANITY_CHECKS[n].label if n in SANITY_CHECKS else n.replace("_", " ")) for n in names}
    header: list[str | Cell] = ["run", "seed", *(Cell(labels[n], title=n) for n in names)]
    body = []
    for row in rows:
        for r in row.results:
            verdicts = r.eval.get("sanity") or {}
            details = r.eval.get("sanity_details") or {}
            cells: list[str | Cell] = [row.run, str(r.seed)]
            for n in names:
                if n not in verdicts:
                    cells.append(Cell("n/a", css="na", title=details.get(n, "not recorded")))
                elif verdicts[n]:
                    cells.append(Cell("✓", css="pass", title=details.get(n, "")))
                else:
                    cells.append(Cell("✗", css="fail", title=details.get(n, "")))
            body.append(cells)
    return Table(
        header,
        body,
        css="sanity",
        caption="✓ passed, ✗ failed, n/a: not applicable (in report.html, hover a cell for the numbers behind it)",
    )


AUTOATTACK_CHECK_LABELS = {
    "randomized": "deterministic",
    "range_output": "logits out",
    "dynamic": "not dynamic",
    "n_classes": "targets ≤ K−1",
    "zero_gradients": "∇ₓ ≠ 0 (APGD-T)",
    "square_sr": "Square ≤ rest",
}


def autoattack_checks_table(rows: Sequence[RunRow]) -> Table | None:
    """run/seed/AutoAttack run × AutoAttack's own check (``autoattack_checks`` of eval.json):
    ✓, ✗ or n/a (the check did not run, e.g. Square found no example left), AutoAttack's
    warning or numbers as tooltip. None when no eval.json recorded any."""
    from rnas.evaluation.attacks import AUTOATTACK_CHECKS

    body = []
    names = list(AUTOATTACK_CHECKS)
    for row in rows:
        for r in row.results:
            details = r.eval.get("autoattack_checks_details") or {}
            for run, checks in (r.eval.get("autoattack_checks") or {}).items():
                cells: list[str | Cell] = [row.run, str(r.seed), Cell(run, css="txt")]
                for n in names:
                    detail = (details.get(run) or {}).get(n, "")
                    if n not in checks:
                        cells.append(Cell("n/a", css="na", title="did not run"))
                    else:
                        cells.append(
                            Cell("✓", css="pass", title=detail) if checks[n] else Cell("✗", css="fail", title=detail)
                        )
                body.append(cells)
    if not body:
        return None
    header: list[str | Cell] = [
        "run",
        "seed",
        Cell("AutoAttack run", title="protocol attack or sanity probe"),
        *(
            Cell(AUTOATTACK_CHECK_LABELS.get(n, n), title=f"{n}: {AUTOATTACK_CHECKS[n][1]} when it fails")
            for n in names
        ),
    ]
    return Table(
        header,
        body,
        css="sanity",
        caption="AutoAttack's own checks (pyautoattack `checks`): ✓ no "
        "warning, ✗ warned, n/a: did not run (in report.html, hover "
        "a cell for AutoAttack's message)",
    )


def sanity_failures(rows: Sequence[RunRow]) -> list[str]:
    """One line per failed check (with its numbers) or evaluation without checks."""
    lines = []
    for row in rows:
        for r in row.results:
            verdicts = r.eval.get("sanity")
            if not isinstance(verdicts, dict) or not verdicts:
                lines.append(f"**{row.run}** seed {r.seed}: no sanity checks recorded in eval.json")
                continue
            details = r.eval.get("sanity_details") or {}
            for name, ok in verdicts.items():
                if not ok:
                    detail = details.get(name, "")
                    lines.append(f"**{row.run}** seed {r.seed}: `{name}` failed" + (f" — {detail}" if detail else ""))
    return lines


def markdown_table(rows: Sequence[RunRow]) -> str:
    """The main table as GitHub Markdown (``rnas compare`` prints this)."""
    from pathlib import Path

    return to_markdown([main_table(rows)], Path(".")).rstrip("\n")
