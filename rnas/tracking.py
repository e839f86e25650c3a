"""MLflow tracking: one experiment per dataset, one run per stage invocation (docs/design.md §8).

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
import json
import os
import socket
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
    """What a stage logs through; a disabled logger accepts the same calls and does nothing.

    Metrics are logged with explicit steps. A logger that continues a run (resume after a
    kill) first reads which (metric, step) pairs the run already has and never logs them
    again, so a resumed stage can re-log its whole history without duplicates.
    """

    def __init__(self, client=None, run_id: str | None = None, continued: bool = False):
        self.client = client
        self.run_id = run_id
        self._seen: set[tuple[str, int]] = set()
        if client is not None and continued:
            for key in client.get_run(run_id).data.metrics:
                self._seen.update((key, m.step) for m in client.get_metric_history(run_id, key))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric
        import time

        ts = int(time.time() * 1000)
        step = step or 0
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
                 and (k, step) not in self._seen]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)
            self._seen.update((m.key, step) for m in batch)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        if self.client is not None and Path(path).exists():
            self.client.log_artifact(self.run_id, str(path), subdir)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.client is None:
            return
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))


CLAIM_FILE = "mlflow_run.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(client, exp_id: str, keep: str | None = None) -> list[str]:
    """Mark FAILED the runs left RUNNING on this host whose process is gone (a SIGKILL), except
    ``keep`` (the run a resume is continuing). Returns the ids marked."""
    host = socket.gethostname()
    reaped = []
    for r in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = r.data.tags
        if r.info.run_id == keep or tags.get("rnas.host") != host or "rnas.pid" not in tags:
            continue
        if not _pid_alive(int(tags["rnas.pid"])):
            client.set_tag(r.info.run_id, "rnas.end_reason", "process gone (killed); not resumed")
            client.set_terminated(r.info.run_id, "FAILED")
            reaped.append(r.info.run_id)
    return reaped


def _claimed_run(client, claim_dir: Path | None) -> str | None:
    """The unfinished run a previous, interrupted attempt of this stage left in ``claim_dir``."""
    if claim_dir is None or not (claim_dir / CLAIM_FILE).is_file():
        return None
    from mlflow.exceptions import MlflowException

    try:
        run_id = json.loads((claim_dir / CLAIM_FILE).read_text())["run_id"]
        info = client.get_run(run_id).info
    except (MlflowException, ValueError, KeyError, OSError):
        return None
    return run_id if info.status != "FINISHED" else None


def parent_run_id(params: Params) -> str | None:
    """The pipeline invocation's parent run: env ``RNAS_PARENT_RUN_ID``, else the id that
    ``rnas pipeline-run start`` wrote to ``<results>/.pipeline_run_id``, else None."""
    from rnas.paths import pipeline_run_file

    if os.environ.get("RNAS_PARENT_RUN_ID"):
        return os.environ["RNAS_PARENT_RUN_ID"]
    path = pipeline_run_file(params)
    return (path.read_text().strip() or None) if path.is_file() else None


def start_pipeline_run(params: Params) -> str:
    """Create the parent run of one pipeline invocation and record its id for the stages.

    A parent left RUNNING by an invocation that never called :func:`end_pipeline_run` (killed)
    is marked FAILED first. The parent carries no ``rnas.pid`` tag: its creating process exits
    at once, and :func:`reap_orphans` must not take it for a killed stage.
    """
    import mlflow

    from rnas.paths import pipeline_run_file

    client = mlflow.MlflowClient(tracking_uri(params.tracking))
    exp_id = _ensure_experiment(client, experiment_name(params), params.tracking)
    path = pipeline_run_file(params)
    if path.is_file():
        end_pipeline_run(params, "FAILED", reason="superseded by a new pipeline invocation")
    tags = {"stage": "pipeline", "dataset": params.data.dataset, "git_commit": git_commit(),
            "params_hash": params_hash(params, ("pipeline", "data", "teacher", "search", "retrain", "evaluate")),
            "mlflow.runName": f"pipeline/{params.data.dataset}"}
    run_id = client.create_run(exp_id, tags=tags, run_name=tags["mlflow.runName"]).info.run_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def end_pipeline_run(params: Params, status: str, reason: str | None = None) -> str | None:
    """End the recorded parent run with ``status`` (FINISHED, FAILED or KILLED) if it is still
    RUNNING, and forget it; returns its id (None when no pipeline run is recorded)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from rnas.paths import pipeline_run_file

    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
    path = pipeline_run_file(params)
    if not path.is_file():
        return None
    run_id = path.read_text().strip()
    client = mlflow.MlflowClient(tracking_uri(params.tracking))
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            if reason:
                client.set_tag(run_id, "rnas.end_reason", reason)
            client.set_terminated(run_id, status)
    except MlflowException:
        pass  # the store was reset since: nothing to end
    path.unlink(missing_ok=True)
    return run_id


@contextlib.contextmanager
def stage_run(params: Params, stage: str, *, run: str, method: str, variant: str, seed: int,
              keys: tuple[str, ...], claim_dir: Path | None = None) -> Iterator[StageLogger]:
    """An MLflow run around one stage invocation (see module docstring).

    ``claim_dir`` (the stage's resumable-state folder) records the run id, so a stage resumed
    after a kill continues its own run instead of starting a second one.
    """
    if not params.tracking.enabled:
        yield StageLogger()
        return
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(params.tracking))
    exp_id = _ensure_experiment(client, experiment_name(params), params.tracking)
    run_id = _claimed_run(client, claim_dir)
    process_tags = {"rnas.pid": str(os.getpid()), "rnas.host": socket.gethostname()}
    reap_orphans(client, exp_id, keep=run_id)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        for k, v in {**process_tags, "rnas.resumed": "true"}.items():
            client.set_tag(run_id, k, v)
        logger = StageLogger(client, run_id, continued=True)
    else:
        tags = {"stage": stage, "run": run, "method": method, "variant": variant, "dataset": params.data.dataset,
                "seed": str(seed), "git_commit": git_commit(), "params_hash": params_hash(params, keys),
                "mlflow.runName": f"{stage}/{run}/seed{seed}", **process_tags}
        parent = parent_run_id(params)
        if parent:
            tags["mlflow.parentRunId"] = parent
        mlrun = client.create_run(exp_id, tags=tags, run_name=tags["mlflow.runName"])
        run_id = mlrun.info.run_id
        flat: dict[str, Any] = {}
        for key in keys:
            _flatten(key, to_dict(section(params, key)), flat)
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i:i + 100])
        if claim_dir is not None:
            claim_dir.mkdir(parents=True, exist_ok=True)
            (claim_dir / CLAIM_FILE).write_text(json.dumps({"run_id": run_id}))
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
        if claim_dir is not None:
            (claim_dir / CLAIM_FILE).unlink(missing_ok=True)
