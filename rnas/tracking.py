"""MLflow tracking: one experiment per dataset, one run per stage invocation (DESIGN.md §6).

The store is an SQLite file at an *absolute* path in the project (``tracking.store``);
``MLFLOW_TRACKING_URI`` overrides it (e.g. a team server). :func:`init_store` creates the
database and the dataset's experiment once, before parallel jobs start (Snakemake's
``onstart``), because parallel jobs racing to create a fresh database crash.

Every stage run carries the tags ``stage, run, method, variant, dataset, seed, git_commit,
params_hash`` and logs the same metric names for every method, so the MLflow UI compares
methods directly. A stage that raises ends its run FAILED; SIGTERM ends it KILLED.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

from rnas.config import Params, TrackingConfig, params_hash, section, to_dict

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM."""


def install_sigterm_handler() -> None:
    def _handler(signum, frame):  # noqa: ARG001
        raise Terminated(f"received signal {signum}")

    signal.signal(signal.SIGTERM, _handler)


def tracking_uri(cfg: TrackingConfig) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(cfg.store).resolve()}"


def artifact_root(cfg: TrackingConfig) -> str:
    return (Path(cfg.store).resolve().parent / "mlartifacts").as_uri()


def experiment_name(params: Params) -> str:
    return f"{params.tracking.experiment_prefix}-{params.data.dataset}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _ensure_experiment(client, name: str, cfg: TrackingConfig) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        location = artifact_root(cfg) if not os.environ.get("MLFLOW_TRACKING_URI") else None
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def init_store(params: Params) -> str:
    """Create the store and the dataset's experiment; returns the tracking URI."""
    import mlflow

    uri = tracking_uri(params.tracking)
    client = mlflow.MlflowClient(uri)
    _ensure_experiment(client, experiment_name(params), params.tracking)
    return uri


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = obj


class StageLogger:
    """What a stage logs through; a disabled logger accepts the same calls and does nothing."""

    def __init__(self, client=None, run_id: str | None = None):
        self.client = client
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric
        import time

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        if self.client is not None and Path(path).exists():
            self.client.log_artifact(self.run_id, str(path), subdir)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.client is None:
            return
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))


@contextlib.contextmanager
def stage_run(params: Params, stage: str, *, run: str, method: str, variant: str, seed: int,
              keys: tuple[str, ...]) -> Iterator[StageLogger]:
    """An MLflow run around one stage invocation (see module docstring)."""
    if not params.tracking.enabled:
        yield StageLogger()
        return
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(params.tracking))
    exp_id = _ensure_experiment(client, experiment_name(params), params.tracking)
    tags = {"stage": stage, "run": run, "method": method, "variant": variant, "dataset": params.data.dataset,
            "seed": str(seed), "git_commit": git_commit(), "params_hash": params_hash(params, keys),
            "mlflow.runName": f"{stage}/{run}/seed{seed}"}
    if os.environ.get("RNAS_PARENT_RUN_ID"):
        tags["mlflow.parentRunId"] = os.environ["RNAS_PARENT_RUN_ID"]
    mlrun = client.create_run(exp_id, tags=tags, run_name=tags["mlflow.runName"])
    run_id = mlrun.info.run_id
    flat: dict[str, Any] = {}
    for key in keys:
        _flatten(key, to_dict(section(params, key)), flat)
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])
    logger = StageLogger(client, run_id)
    try:
        yield logger
    except Terminated:
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    else:
        client.set_terminated(run_id, "FINISHED")
