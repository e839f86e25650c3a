"""Report section "Did the searches decide?": per search, the epoch from which its derived
architecture stopped changing (``stable_from_epoch`` in ``search.json``, see
:mod:`rnas.search.stability`), whether that happened before the last quarter of the search
(*decided*), how often the decision changed, and the final entropy of softmax(α) as a share of
the uniform distribution's (``alphas.json``; 100% = the search did not move α at all).

An undecided search returns an architecture that the next epoch could have changed: its
comparison with other methods says little about the method. The table flags it.
"""

from __future__ import annotations

import json
import math

from rnas import paths
from rnas.config import Params
from rnas.report.cells import entropy
from rnas.runs import resolve_run


def _json(path):
    return json.loads(path.read_text()) if path.is_file() else None


def _entropy_share(alphas: dict | None, kind: str) -> str:
    rows = (alphas or {}).get(kind)
    if not rows:
        return "–"
    h = sum(entropy(r) for r in rows) / len(rows)
    return f"{100 * h / math.log(len(rows[0])):.0f}%"


def _side_choices(search: dict, epochs: int) -> str:
    """The other choices' stability, e.g. "tutors: 7/8, 6 changes" (RNAS-CL), or "–"."""
    side = search.get("side_stability") or {}
    return (
        "; ".join(
            f"{name}: {s['stable_from_epoch']}/{epochs}{'' if s.get('decided') else ' (unsettled)'}, "
            f"{s.get('decision_changes', '–')} changes"
            for name, s in side.items()
        )
        or "–"
    )


def decisions_markdown(params: Params) -> str:
    """The section as Markdown, or "" when no search has written its stability yet."""
    lines, undecided = [], []
    for run in params.pipeline.runs:
        if resolve_run(run).arch_from:
            continue
        for seed in params.pipeline.seeds:
            search = _json(paths.search_log(params, run, seed))
            if not search or "stable_from_epoch" not in search:
                continue
            epochs = len(search.get("history", [])) or params.search.epochs
            alphas = _json(paths.arch_file(params, run, seed).parent / "alphas.json")
            decided = bool(search.get("decided"))
            if not decided:
                undecided.append(f"{run} (seed {seed})")
            lines.append(
                f"| {run} | {seed} | {search['stable_from_epoch']}/{epochs} | "
                f"{'yes' if decided else '**no**'} | {search.get('decision_changes', '–')} | "
                f"{_entropy_share(alphas, 'normal')} | {_entropy_share(alphas, 'reduce')} | "
                f"{_side_choices(search, epochs)} |"
            )
    if not lines:
        return ""
    head = [
        "### Did the searches decide?",
        "",
        "Stable from: the first epoch from which the derived architecture (argmax genotype; the widths "
        "of RNAS-CL's width space; LRNAS's greedy selection) no longer changed. Decided: stable over the "
        "whole last quarter of the search. H(α): final mean entropy of softmax(α) per edge as a share of "
        "the uniform one (100% = α did not move). Other choices: what a search decides beside the network "
        "(RNAS-CL's tutor of each student layer, used in retraining), with its own stable-from epoch; it does "
        "not count towards decided.",
        "",
        f"**{len(lines) - len(undecided)} of {len(lines)} searches decided.**"
        + (f" Undecided: {', '.join(undecided)}." if undecided else ""),
        "",
        "| run | seed | stable from epoch | decided | changes | H(α) normal | H(α) reduce | other choices |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + lines + [""])
