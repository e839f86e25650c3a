"""Curve files for ``dvc plots``: small JSON tables with a fixed set of series, written by
``rnas report`` under ``results/plots/`` and declared in dvc.yaml (:func:`dvc_plots`).

dvc draws a JSON file that is a list of records with identical keys, one field per line. The
stages' own logs do not fit that directly (a random search has no history, LRNAS adds keys
after its warm-up epochs), so the report re-tabulates them: one record per x value, one field
per series named ``<run>/seed<k>`` (``teacher`` for the teacher), ``null`` where a series has
no value. The series are known from params alone, so dvc.yaml and the files always agree and
``dvc plots diff`` can compare two commits.

=====================================  =========  ===============================================
file                                   x          series (y)
=====================================  =========  ===============================================
``eps_sweep.json``                     epsilon    accuracy under PGD-20 at ε, per run and seed
``search_val_acc.json``                epoch      supernet validation accuracy during the search
``search_alpha_entropy.json``          epoch      H(softmax α) per cell type (cell-space runs)
``retrain_val_robust_acc.json``        epoch      validation robust accuracy while retraining
=====================================  =========  ===============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnas import paths
from rnas.config import Params
from rnas.io import read_json, write_json
from rnas.runs import SEARCH_LOOP_FREE_METHODS, resolve_run


@dataclass(frozen=True)
class CurveSpec:
    file: str  # name under paths.plots_dir
    x: str  # x field
    series: tuple[str, ...]  # y fields
    title: str
    y_label: str


def _series(run: str, seed: int) -> str:
    return paths.TEACHER if run == paths.TEACHER else f"{run}/seed{seed}"


def curve_specs(params: Params) -> list[CurveSpec]:
    """The curve files and their series, from params only."""
    runs = [(run, seed) for run in params.pipeline.runs for seed in params.pipeline.seeds]
    searched = [(r, s) for r, s in runs if not resolve_run(r).arch_from and _uses_search_loop(r)]
    cell = [(r, s) for r, s in searched if resolve_run(r).space == "cell"]
    all_runs = [*runs, (paths.TEACHER, 0)]
    return [
        CurveSpec(
            "eps_sweep.json",
            "epsilon",
            tuple(_series(r, s) for r, s in all_runs),
            "accuracy under PGD-20 vs L∞ ε",
            "accuracy",
        ),
        CurveSpec(
            "search_val_acc.json",
            "epoch",
            tuple(_series(r, s) for r, s in searched),
            "supernet validation accuracy during the search",
            "val_acc",
        ),
        CurveSpec(
            "search_alpha_entropy.json",
            "epoch",
            tuple(f"{_series(r, s)}/{kind}" for r, s in cell for kind in ("normal", "reduce")),
            "mean entropy of softmax(α) per edge (nats)",
            "H(α)",
        ),
        CurveSpec(
            "retrain_val_robust_acc.json",
            "epoch",
            tuple(_series(r, s) for r, s in all_runs),
            "validation robust accuracy while (re)training",
            "val_robust_acc",
        ),
    ]


def _uses_search_loop(run: str) -> bool:
    """Whether the run's search has epochs (a history to draw), without importing the methods
    (that imports torch, seconds in every Snakemake and dvc-yaml invocation that parses this)."""
    return resolve_run(run).method not in SEARCH_LOOP_FREE_METHODS


def curve_files(params: Params) -> list[Path]:
    return [paths.plots_dir(params) / c.file for c in curve_specs(params)]


def _read(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _values(params: Params, spec: CurveSpec, series: str) -> dict[float, float]:
    """x -> y of one series, read from the stage outputs (empty when they do not exist)."""
    name, _, rest = series.partition("/seed")
    seed_text, _, kind = rest.partition("/")
    run, seed = (paths.TEACHER, 0) if series == paths.TEACHER else (name, int(seed_text))
    if spec.file == "eps_sweep.json":
        ev = _read(paths.eval_file(params, run, seed)) or {}
        return {float(e): float(a) for e, a in (ev.get("eps_sweep") or {}).items()}
    if spec.file.startswith("search_"):
        history = (_read(paths.search_log(params, run, seed)) or {}).get("history") or []
        key = "val_acc" if spec.file == "search_val_acc.json" else f"alpha_entropy_{kind}"
    else:
        history = (_read(paths.train_log(params, run, seed)) or {}).get("history") or []
        key = "val_robust_acc"
    return {
        float(e + 1): float(h[key])
        for e, h in enumerate(history)
        if isinstance(h.get(key), (int, float)) and not isinstance(h.get(key), bool)
    }


def write_curves(params: Params) -> list[Path]:
    """Write every curve file (records sorted by x; null where a series lacks a value)."""
    out = []
    for spec in curve_specs(params):
        values = {s: _values(params, spec, s) for s in spec.series}
        xs = sorted({x for v in values.values() for x in v})
        records = [
            {spec.x: (int(x) if spec.x == "epoch" else x), **{s: values[s].get(x) for s in spec.series}} for x in xs
        ]
        path = paths.plots_dir(params) / spec.file
        write_json(path, records, fsync=False)
        out.append(path)
    return out


def dvc_plots(params: Params) -> list[Any]:
    """dvc.yaml's top-level ``plots:`` entries: the curve files and the report's PNGs."""
    entries: list[Any] = []
    for spec, path in zip(curve_specs(params), curve_files(params)):
        if not spec.series:
            continue
        entries.append(
            {
                spec.file.removesuffix(".json"): {
                    "template": "linear",
                    "x": spec.x,
                    "y": {str(path): list(spec.series)},
                    "title": spec.title,
                    "x_label": spec.x,
                    "y_label": spec.y_label,
                }
            }
        )
    entries += [str(png) for png in paths.report_plots(params)]
    return entries
