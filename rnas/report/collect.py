"""What the report reads: for every run in ``pipeline.runs`` (and the teacher) and every seed,
the stage outputs that exist -- ``eval.json``, ``search.json``, ``train.json``, the architecture
file, ``alphas.json`` and any PNG another stage drew beside them (tutor maps, contribution
heat maps). Missing files are simply absent: the report shows the columns and rows the files
have. :func:`rows_from_mlflow` builds the same rows from the MLflow store (``rnas compare``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnas import paths
from rnas.config import Params
from rnas.io import read_json
from rnas.runs import resolve_run


@dataclass
class SeedResult:
    seed: int
    eval: dict[str, Any]
    search: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    arch_path: Path | None = None
    architecture: dict[str, Any] | None = None
    alphas: dict[str, Any] | None = None
    figures: list[Path] = field(default_factory=list)

    def number(self, key: str) -> float | None:
        """A numeric value: an eval.json key, or ``search_seconds``, ``train_seconds``,
        ``eval_seconds`` and ``wall_seconds`` (their sum)."""
        if key == "search_seconds":
            value = (self.search or {}).get("search_seconds")
        elif key == "train_seconds":
            value = (self.train or {}).get("seconds")
        elif key == "wall_seconds":
            parts = [self.number(k) for k in ("search_seconds", "train_seconds", "eval_seconds")]
            parts = [p for p in parts if p is not None]
            value = sum(parts) if parts else None
        else:
            value = self.eval.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)


@dataclass
class RunRow:
    run: str
    method: str
    variant: str
    space: str = "cell"
    reference: bool = False  # the teacher: shown, never "best"
    results: list[SeedResult] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.results]

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [r.eval for r in self.results]

    def values(self, key: str) -> list[float]:
        """The key's value for every seed that has it."""
        return [v for v in (r.number(key) for r in self.results) if v is not None]

    @property
    def n_examples(self) -> int:
        return int(self.results[0].eval.get("n_examples", 0)) if self.results else 0


def _read_json(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _seed_result(params: Params, run: str, seed: int) -> SeedResult | None:
    ev = _read_json(paths.eval_file(params, run, seed))
    if ev is None:
        return None
    res = SeedResult(seed, ev)
    if run == paths.TEACHER:
        res.train = _read_json(paths.train_log(params, run, seed))
        return res
    res.search = _read_json(paths.search_log(params, run, seed))
    res.train = _read_json(paths.train_log(params, run, seed))
    res.arch_path = paths.arch_file(params, run, seed)
    res.architecture = _read_json(res.arch_path)
    res.alphas = _read_json(res.arch_path.parent / "alphas.json")
    folders = dict.fromkeys([paths.run_dir(params, run, seed), res.arch_path.parent])
    res.figures = sorted({p for d in folders if d.is_dir() for p in d.glob("*.png")})
    return res


def collect(params: Params) -> list[RunRow]:
    """One row per run that has at least one ``eval.json``, in ``pipeline.runs`` order; the
    teacher (a reference, not a search result) last."""
    rows = []
    for run in params.pipeline.runs:
        spec = resolve_run(run)
        row = RunRow(run, spec.method, spec.variant, spec.space)
        row.results = [r for r in (_seed_result(params, run, s) for s in params.pipeline.seeds) if r is not None]
        if row.results:
            rows.append(row)
    teacher = _seed_result(params, paths.TEACHER, 0)
    if teacher is not None:
        rows.append(RunRow(paths.TEACHER, "teacher", params.teacher.family, "family", True, [teacher]))
    return rows


# --------------------------------------------------------------------------------------------
# From the MLflow store


def _latest(runs: list[Any]) -> dict[tuple[str, str], Any]:
    latest: dict[tuple[str, str], Any] = {}
    for r in runs:
        key = (r.data.tags.get("run", ""), r.data.tags.get("seed", ""))
        if key not in latest or r.info.start_time > latest[key].info.start_time:
            latest[key] = r
    return latest


def rows_from_mlflow(params: Params, tracking_uri: str | None = None) -> list[RunRow]:
    """The report's rows from the MLflow store: the latest FINISHED evaluate-stage run per
    (run, seed) of the dataset's experiment, with search and retrain times from the latest
    search and retrain runs. Metric names are the eval.json keys; ``sanity`` comes back from
    the ``sanity.<check>`` tags, ``eps_sweep`` and ``certified_eps_sweep`` from the ``eps_sweep/<ε>``
    and ``certified_eps_sweep/<ε>`` metrics."""
    import mlflow

    from rnas.tracking import experiment_name, tracking_uri as default_uri

    client = mlflow.MlflowClient(tracking_uri or default_uri(params.tracking))
    exp = client.get_experiment_by_name(experiment_name(params))
    if exp is None:
        return []

    def search(stage: str) -> dict[tuple[str, str], Any]:
        found = client.search_runs(
            [exp.experiment_id],
            max_results=5000,
            filter_string=f"tags.stage = '{stage}' and attributes.status = 'FINISHED'",
        )
        return _latest(found)

    evals, searches = search("evaluate"), search("search")
    trains = {**search("retrain"), **search("teacher")}  # the teacher stage trains the reference
    by_run: dict[str, RunRow] = {}
    for (run, seed), r in sorted(evals.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        tags, metrics = r.data.tags, dict(r.data.metrics)
        ev: dict[str, Any] = {k: v for k, v in metrics.items() if "/" not in k}
        ev["eps_sweep"] = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("eps_sweep/")}
        ev["certified_eps_sweep"] = {
            k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("certified_eps_sweep/")
        }
        ev["sanity"] = {k.split(".", 1)[1]: v == "pass" for k, v in tags.items() if k.startswith("sanity.")}
        ev.update({k: tags[k] for k in ("device", "device_name") if k in tags})
        if "n_examples" in ev:
            ev["n_examples"] = int(ev["n_examples"])
        res = SeedResult(int(seed) if seed.isdigit() else 0, ev)
        if (run, seed) in searches:
            res.search = {"search_seconds": searches[(run, seed)].data.metrics.get("search_seconds")}
        if (run, seed) in trains:
            res.train = {"seconds": trains[(run, seed)].data.metrics.get("train_seconds")}
        if run not in by_run:
            reference = tags.get("method") == "teacher"
            by_run[run] = RunRow(
                run, tags.get("method", "?"), tags.get("variant", "?"), "family" if reference else "cell", reference
            )
        by_run[run].results.append(res)
    order = {run: i for i, run in enumerate(params.pipeline.runs)}
    return sorted(by_run.values(), key=lambda row: (row.reference, order.get(row.run, len(order)), row.run))
