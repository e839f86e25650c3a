"""Collect eval.json files into rows and format the comparison table.

Accuracies are fractions in [0, 1] and shown in percent. Over several seeds a cell shows
mean ± std; with one seed it shows the value and its 95% Wilson binomial interval over the
``n_examples`` test examples."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnas import paths
from rnas.config import Params
from rnas.runs import resolve_run

ACCURACY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("clean_acc", "clean"),
    ("fgsm_acc", "FGSM"),
    ("pgd20_acc", "PGD-20"),
    ("pgd100_acc", "PGD-100"),
    ("autoattack_acc", "AutoAttack"),
    ("robust_acc", "worst case"),
    ("cw_acc", "C&W-L2"),
    ("deepfool_acc", "DeepFool-L2"),
    ("certified_acc", "certified"),
)


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion p over n trials."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class RunRow:
    run: str
    method: str
    variant: str
    evals: list[dict[str, Any]] = field(default_factory=list)  # one per seed
    seeds: list[int] = field(default_factory=list)
    search_seconds: list[float] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [e[key] for e in self.evals if isinstance(e.get(key), (int, float))]


def collect(params: Params) -> list[RunRow]:
    rows = []
    teacher_eval = paths.eval_file(params, paths.TEACHER, 0)
    if teacher_eval.exists():
        rows.append(RunRow("teacher", "teacher", params.teacher.family, [json.loads(teacher_eval.read_text())], [0]))
    for run in params.pipeline.runs:
        spec = resolve_run(run)
        row = RunRow(run, spec.method, spec.variant)
        for seed in params.pipeline.seeds:
            f = paths.eval_file(params, run, seed)
            if not f.exists():
                continue
            row.evals.append(json.loads(f.read_text()))
            row.seeds.append(seed)
            s = paths.search_log(params, run, seed)
            if s.exists():
                row.search_seconds.append(float(json.loads(s.read_text()).get("search_seconds", float("nan"))))
        if row.evals:
            rows.append(row)
    return rows


def fmt_acc(values: list[float], n: int) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        lo, hi = wilson_interval(values[0], n)
        return f"{100 * values[0]:.1f} [{100 * lo:.0f}–{100 * hi:.0f}]"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def fmt_number(values: list[float], unit: str = "") -> str:
    if not values:
        return "–"
    m = statistics.mean(values)
    if unit == "s":
        return f"{m:.0f}"
    if m >= 1e6:
        return f"{m / 1e6:.2f}M"
    if m >= 1e3:
        return f"{m / 1e3:.1f}k"
    return f"{m:.0f}"


def markdown_table(rows: list[RunRow]) -> str:
    header = ["run", "method", "seeds", *(label for _, label in ACCURACY_COLUMNS), "params", "MACs", "search s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        n = int(row.evals[0].get("n_examples", 0))
        cells = [row.run, f"{row.method}/{row.variant}", str(len(row.evals))]
        cells += [fmt_acc(row.values(key), n) for key, _ in ACCURACY_COLUMNS]
        cells += [fmt_number(row.values("params")), fmt_number(row.values("macs")),
                  fmt_number(row.search_seconds, "s")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
