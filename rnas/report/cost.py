"""Report section "End-to-end cost": what each run costs from search to its evaluated model.

Per run, the mean over its seeds of the seconds each stage recorded itself: the search
(``search_seconds`` of ``search.json``), the adversarial retraining (``seconds`` of
``train.json``) and the evaluation (``eval_seconds`` of ``eval.json``), and their sum. Runs that
need the robust teacher (RNAS-CL and its ``*_nokd`` ablation's searches) also pay for training
it once; that shared cost is listed separately rather than added, since one teacher serves
every seed and run. A run that selects from another run's search (an LRNAS budget run) shows
that search's time, which it shares. Times are wall clock of the stage's own work (process start-up and the
workflow's scheduling are not included) on the machine that ran the pipeline.
"""

from __future__ import annotations

import statistics

from rnas.config import Params
from rnas.report.collect import RunRow, collect
from rnas.runs import resolve_run

STAGES: tuple[tuple[str, str], ...] = (
    ("search_seconds", "search"),
    ("train_seconds", "retrain"),
    ("eval_seconds", "evaluate"),
)


def _mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.0f}" if values else "–"


def cost_rows(rows: list[RunRow]) -> list[dict]:
    """Per run (teacher excluded): seeds, the mean seconds per stage and their sum (None when a
    stage has no value for any seed), and whether the run needs the teacher."""
    out = []
    for row in rows:
        if row.reference:
            continue
        means = {k: (statistics.mean(v) if (v := row.values(k)) else None) for k, _ in STAGES}
        known = [v for v in means.values() if v is not None]
        out.append(
            {
                "run": row.run,
                "seeds": len(row.results),
                **means,
                "total": sum(known) if len(known) == len(STAGES) else None,
                "needs_teacher": resolve_run(row.run).needs_teacher,
                "search_from": resolve_run(row.run).select_from,
            }
        )
    return out


def cost_markdown(params: Params) -> str:
    """The section as Markdown, or "" when no run has results yet."""
    rows = collect(params)
    table = cost_rows(rows)
    if not table:
        return ""
    lines = [
        "### End-to-end cost",
        "",
        "Seconds per stage, mean over seeds (each stage's own wall clock, start-up excluded); "
        "*total* = search + retrain + evaluate. † needs the robust teacher, trained once for all runs "
        "and seeds (below).",
        *(
            [
                "‡ no search of its own: selects its architecture under its own budget from the search "
                "of the run named, whose time it shows (one search serves them all)."
            ]
            if any(r["search_from"] for r in table)
            else []
        ),
        "",
        "| run | seeds | search s | retrain s | evaluate s | total s |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        cells = [_mean([r[k]] if r[k] is not None else []) for k, _ in STAGES]
        total = f"{r['total']:.0f}" if r["total"] is not None else "–"
        marks = (" †" if r["needs_teacher"] else "") + (f" ‡ {r['search_from']}" if r["search_from"] else "")
        lines.append(f"| {r['run']}{marks} | {r['seeds']} | {' | '.join(cells)} | {total} |")
    teacher = next((row for row in rows if row.reference), None)
    if teacher is not None:
        train, ev = teacher.values("train_seconds"), teacher.values("eval_seconds")
        lines += ["", f"Teacher: training {_mean(train)} s, evaluation {_mean(ev)} s (once)."]
    return "\n".join(lines) + "\n"
