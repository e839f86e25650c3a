"""MLflow tracking: one experiment per dataset, one run per stage invocation (docs/design.md §8).

The store is an SQLite file at an *absolute* path in the project (``tracking.store``);
``MLFLOW_TRACKING_URI`` overrides it (e.g. a team server). :func:`init_store` creates the
database and the dataset's experiment once, before parallel jobs start (Snakemake's
``onstart``), because parallel jobs racing to create a fresh database crash. The experiment
is tagged ``mlflow.experimentKind = custom_model_development`` (a model-training experiment,
not a GenAI one); :func:`runs_url` is the link that opens its runs table in the UI.

Every stage run carries the tags ``stage, run, method, variant, dataset, seed, params_hash``,
MLflow's own source and git tags (:func:`source_tags`: ``mlflow.source.name`` is the command,
``mlflow.source.git.commit`` / ``.branch`` / ``.repoURL`` / ``.dirty`` describe the checkout the
``rnas`` code ran from) and logs the same metric names for every method, so the MLflow UI
compares methods directly. The splits a stage reads are run inputs (:meth:`StageLogger.log_dataset`,
named ``<dataset>/<split>`` with a digest of their full contents). Lineage goes through content
digests, never through the outputs' paths: the search run tags ``arch_sha256``, the teacher and
retrain runs tag ``model_sha256`` and log ``model.pt`` as an MLflow model
(:meth:`StageLogger.log_checkpoint`), and a stage reading one of those files finds the run that
wrote it (:meth:`StageLogger.link_producer`): a retrain run names its ``search_run_id``, an
evaluation run its ``search_run_id``, ``retrain_run_id`` (or ``teacher_run_id``) and the
LoggedModel ``model_id`` its metrics are linked to. A stage that raises ends its run FAILED;
SIGTERM ends it KILLED.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnas.config import Params, TrackingConfig, params_hash, section, to_dict
from rnas.forkserver import pid_alive
from rnas.signals import Terminated, deferred_termination

if TYPE_CHECKING:
    import torch

    from rnas.data import TensorPair

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

log = logging.getLogger(__name__)

# The experiment's kind, which MLflow 3 UIs without the GenAI / model-training switch read to pick
# its landing tab; 3.17's UI goes by that switch (the browser's, GenAI unless chosen), which the
# link from runs_url sets instead.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# The packages the logged models' code (the rnas/ copy in the model's code_paths) imports.
MODEL_REQUIREMENTS = ("torch", "numpy", "tqdm")


class DeferringClient:
    """An MLflow client whose every call runs inside :func:`deferred_termination`."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            with deferred_termination():
                return attr(*args, **kwargs)

        return call


def tracking_uri(cfg: TrackingConfig) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(cfg.store).resolve()}"


def artifact_root(cfg: TrackingConfig) -> str:
    return (Path(cfg.store).resolve().parent / "mlartifacts").as_uri()


def experiment_name(params: Params) -> str:
    return f"{params.tracking.experiment_prefix}-{params.data.dataset}"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes: the lineage key of an architecture or a model file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_git_tags() -> dict[str, str]:
    """MLflow's git tags (``mlflow.source.git.commit``, ``.branch``, ``.repoURL`` of the remote
    ``origin``, ``.dirty``) of the checkout the ``rnas`` package runs from, wherever the command
    was started; empty when that is not a git checkout (an installed wheel) or git is missing."""
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_BRANCH,
        MLFLOW_GIT_COMMIT,
        MLFLOW_GIT_DIRTY,
        MLFLOW_GIT_REPO_URL,
    )

    try:
        import git
    except ImportError as err:  # GitPython finds no git binary
        log.debug("no git tags: %s", err)
        return {}
    try:
        repo = git.Repo(Path(__file__).resolve().parent, search_parent_directories=True)
        tags = {
            MLFLOW_GIT_COMMIT: repo.head.commit.hexsha,
            MLFLOW_GIT_DIRTY: str(repo.is_dirty(untracked_files=False)).lower(),
        }
        if not repo.head.is_detached:
            tags[MLFLOW_GIT_BRANCH] = repo.active_branch.name
        url = next((r.url for r in repo.remotes if r.name == "origin"), None)
    except (git.exc.GitError, ValueError) as err:  # not a checkout (an installed wheel); no commit yet
        log.debug("no git tags: %s", err)
        return {}
    if url:
        tags[MLFLOW_GIT_REPO_URL] = url
    return tags


def source_tags(command: str) -> dict[str, str]:
    """MLflow's context tags for a run (``mlflow.user`` and what MLflow's own context providers
    find), with ``mlflow.source.name`` set to the command that reproduces the run,
    ``mlflow.source.type`` LOCAL and the git tags of the code (:func:`code_git_tags`)."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

    code = code_git_tags()
    tags = resolve_tags({MLFLOW_SOURCE_NAME: command, MLFLOW_SOURCE_TYPE: "LOCAL", **code})
    if code:  # the code's checkout, not a mix with the one MLflow finds from the main script
        tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.source.git.") or k in code}
    return tags


def stage_command(stage: str, run: str, seed: int) -> str:
    """The ``rnas`` command line of a stage invocation (its ``mlflow.source.name``)."""
    if stage in ("teacher", "report"):
        return f"rnas {stage}"
    return f"rnas {stage} --run {run} --seed {seed}"


def _ensure_experiment(client, name: str, cfg: TrackingConfig) -> str:
    """The experiment's id, created (with :data:`EXPERIMENT_TAGS`) when missing; an existing
    experiment lacking one of those tags gets it."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            location = artifact_root(cfg) if not os.environ.get("MLFLOW_TRACKING_URI") else None
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except MlflowException:  # created concurrently by another job
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    for key, value in EXPERIMENT_TAGS.items():
        if key not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def init_store(params: Params) -> str:
    """Create the store and the dataset's experiment; returns the tracking URI."""
    import mlflow

    uri = tracking_uri(params.tracking)
    client = mlflow.MlflowClient(uri)
    _ensure_experiment(client, experiment_name(params), params.tracking)
    return uri


def runs_url(params: Params, base: str = "http://127.0.0.1:5000") -> str:
    """The link that opens the dataset's experiment on its runs table in ``mlflow ui`` at
    ``base`` (creates the experiment if needed). MLflow 3.17's UI opens every experiment on the
    GenAI overview unless the link (or the browser, once switched) says ``workflowType``
    ``machine_learning``; UIs without that switch read the ``mlflow.experimentKind`` tag instead."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(params.tracking))
    exp_id = _ensure_experiment(client, experiment_name(params), params.tracking)
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs?workflowType=machine_learning"


def flat_params(params: Params, keys: Iterable[str]) -> dict[str, str]:
    """The listed dotted sections of ``params`` as MLflow params (``retrain.train.lr`` -> value)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = obj

    for key in keys:
        walk(key, to_dict(section(params, key)))
    return {k: str(v)[:6000] for k, v in sorted(flat.items())}


def _split_digest(pair: TensorPair) -> str:
    """sha256 (16 hex digits) of a split's full inputs and labels. MLflow's own numpy digest
    hashes only the first 10,000 values, which two seeds' splits of a dataset can share."""
    h = hashlib.sha256()
    for t in (pair.x, pair.y):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class _DropPickleWarning(logging.Filter):
    """Drops mlflow.pytorch's warning that pickled models run code when loaded: chosen here
    (see :meth:`StageLogger.log_checkpoint`), and the models come from the project's own store."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")


logging.getLogger("mlflow.pytorch").addFilter(_DropPickleWarning())


@contextlib.contextmanager
def _fluent_store(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API, which ``mlflow.pytorch.log_model`` uses, at ``uri`` for the
    block. ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``, which
    :func:`tracking_uri` reads, so the previous value is put back after."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def _installed_requirements_unchecked() -> Iterator[None]:
    """MLflow checks a logged model's pip requirements against the installed packages, twice
    (when it writes the environment, and when it reloads the model to validate the input
    example), each time first mapping every installed distribution to its modules: 2 x 2.4 s per
    logged model here, with this project's ~300 distributions. :func:`_model_requirements` reads
    each pin from the installed distribution itself, so that check cannot find a mismatch: it is
    skipped in both modules for the block, and put back after."""
    import mlflow.pyfunc
    from mlflow.utils import environment

    modules = (environment, mlflow.pyfunc)
    checks = [m.warn_dependency_requirement_mismatches for m in modules]
    for m in modules:
        m.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        for m, check in zip(modules, checks):
            m.warn_dependency_requirement_mismatches = check


def _model_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in MODEL_REQUIREMENTS:
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{dist}=={version(dist)}")
    return out


class StageLogger:
    """What a stage logs through; a disabled logger accepts the same calls and does nothing.

    Metrics are logged with explicit steps. A logger that continues a run (resume after a
    kill) first reads which (metric, step) pairs the run already has and never logs them
    again, so a resumed stage can re-log its whole history without duplicates. Once
    :attr:`model_id` / :attr:`dataset` are set (by :meth:`log_checkpoint`, :meth:`link_producer`
    and :meth:`log_dataset` with ``link=True``), every metric logged is linked to that MLflow
    LoggedModel and dataset.
    """

    def __init__(
        self, client=None, run_id: str | None = None, continued: bool = False, experiment_id: str | None = None
    ):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.model_id: str | None = None
        self.dataset = None  # an mlflow Dataset entity (name, digest)
        self._seen: set[tuple[str, int]] = set()
        if client is not None and continued:
            for key in client.get_run(run_id).data.metrics:
                self._seen.update((key, m.step) for m in client.get_metric_history(run_id, key))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.client is None:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        step = step or 0
        link = {
            "model_id": self.model_id,
            "dataset_name": self.dataset.name if self.dataset is not None else None,
            "dataset_digest": self.dataset.digest if self.dataset is not None else None,
        }
        batch = [
            Metric(k, float(v), ts, step, **link)
            for k, v in metrics.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and not math.isnan(v)
            and (k, step) not in self._seen
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)
            self._seen.update((m.key, step) for m in batch)

    def log_params(self, params: Params, keys: Iterable[str]) -> None:
        """Log the listed params sections; those the run already has are left as they are."""
        if self.client is None:
            return
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        items = [Param(k, v) for k, v in flat_params(params, keys).items() if k not in have]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        if self.client is not None and Path(path).exists():
            self.client.log_artifact(self.run_id, str(path), subdir)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.client is None:
            return
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_dataset(self, pair: TensorPair, name: str, context: str, link: bool = False, **source: Any):
        """Log a split as an input of the run: an MLflow dataset named ``name`` with the digest of
        its full contents, its shapes as profile and schema, ``context`` (training, validation,
        test) and ``source`` (how rnas builds it) as its code source. With ``link``, later metrics
        are linked to it. Returns the dataset entity (None when tracking is off)."""
        if self.client is None:
            return None
        import mlflow.data
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        ds = mlflow.data.from_numpy(
            pair.x.detach().cpu().numpy(),
            targets=pair.y.detach().cpu().numpy(),
            name=name,
            digest=_split_digest(pair),
            source=CodeDatasetSource({k: str(v) for k, v in source.items()}),
        )
        entity = ds._to_mlflow_entity()
        have = self.client.get_run(self.run_id).inputs.dataset_inputs
        if not any(d.dataset.name == entity.name and d.dataset.digest == entity.digest for d in have):
            tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
            self.client.log_inputs(self.run_id, datasets=[DatasetInput(entity, tags)])
        if link:
            self.dataset = entity
        return entity

    def log_checkpoint(self, path: str | Path, example: torch.Tensor, name: str = "model") -> str | None:
        """Log a checkpoint written by :func:`rnas.checkpoint.save_model` as an MLflow model:
        tag the run ``model_sha256`` (the file's digest), rebuild the module from the file on the
        CPU and log it with ``mlflow.pytorch.log_model`` -- a signature and an input example from
        ``example`` (a few input images), the ``rnas`` package as ``code_paths`` (so that
        ``mlflow.pytorch.load_model`` returns the same module in any process) and pinned
        requirements (no slow inference of them). Returns the LoggedModel id, which later metrics
        of this run are linked to. A continued run that already logged this file reuses that model."""
        if self.client is None:
            return None
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        import rnas
        from rnas.checkpoint import load_model

        digest = file_digest(path)
        self.set_tags({"model_sha256": digest})
        run = self.client.get_run(self.run_id)
        outputs = run.outputs.model_outputs if run.outputs else []
        logged_before = [self.client.get_logged_model(o.model_id) for o in outputs]
        same = [m.model_id for m in logged_before if str(m.status) == "READY" and m.tags.get("model_sha256") == digest]
        if same:
            self.model_id = same[-1]
        else:
            model, ckpt = load_model(path, "cpu")
            x = example.detach().cpu().float().numpy()
            with torch.no_grad():
                y = model(torch.from_numpy(x)).numpy()
            # step: one past the run's epochs, where it has no metric; MLflow would otherwise
            # copy that step's metrics onto the model, duplicating them in the run's history
            step = max((s for _, s in self._seen), default=-1) + 1
            # created here, in the run's experiment (the fluent API would use its active one),
            # with the run's params and source tags
            source = {k: v for k, v in run.data.tags.items() if k.startswith("mlflow.source.")}
            logged = self.client.create_logged_model(
                self.experiment_id,
                name=name,
                source_run_id=self.run_id,
                params=run.data.params,
                tags={"model_sha256": digest, **source},
            )
            with deferred_termination(), _fluent_store(self.client.tracking_uri), _installed_requirements_unchecked():
                # pickle: the module itself, any batch size (MLflow's default, torch.export, fixes
                # the example's batch size and costs seconds); code_paths: the classes it needs
                mlflow.pytorch.log_model(
                    model,
                    name=name,
                    signature=infer_signature(x, y),
                    input_example=x,
                    serialization_format="pickle",
                    code_paths=[str(Path(rnas.__file__).parent)],
                    pip_requirements=_model_requirements(),
                    run_id=self.run_id,
                    step=step,
                    model_id=logged.model_id,
                    metadata={"model_args": json.dumps(ckpt["model_args"], default=str)},
                )
            self.model_id = logged.model_id
        self.set_tags({"model_id": self.model_id})
        return self.model_id

    def find_run(self, **tags: str):
        """The latest FINISHED run of this experiment carrying all of ``tags`` (None if none)."""
        if self.client is None:
            return None
        where = " and ".join(["attributes.status = 'FINISHED'", *(f"tags.{k} = '{v}'" for k, v in tags.items())])
        found = self.client.search_runs(
            [self.experiment_id], where, order_by=["attributes.start_time DESC"], max_results=1
        )
        return found[0] if found else None

    def link_producer(self, digest_tag: str, path: str | Path, **match: str) -> dict[str, str]:
        """Find the run that wrote ``path`` (the latest FINISHED run tagged ``digest_tag`` = the
        file's sha256 and the ``match`` tags: two runs' searches may write the same architecture
        file) and tag this run with its id (``<its stage>_run_id``), the
        ``search_run_id`` it names and its LoggedModel ``model_id``, which this run then takes as
        a model input and links its metrics to. Returns the tags set ({} when no run is found:
        written with tracking off, or the store is newer than the file)."""
        if self.client is None:
            return {}
        from mlflow.entities import LoggedModelInput

        producer = self.find_run(**{digest_tag: file_digest(path)}, **match)
        if producer is None:
            log.warning(
                "no finished MLflow run in the store wrote %s (tag %s): this run names no producer", path, digest_tag
            )
            return {}
        ptags = producer.data.tags
        tags = {f"{ptags.get('stage', 'producer')}_run_id": producer.info.run_id}
        tags.update({k: ptags[k] for k in ("search_run_id", "model_id") if k in ptags})
        self.set_tags(tags)
        if "model_id" in tags:
            self.model_id = tags["model_id"]
            have = self.client.get_run(self.run_id).inputs.model_inputs or []
            if not any(m.model_id == self.model_id for m in have):
                self.client.log_inputs(self.run_id, models=[LoggedModelInput(self.model_id)])
        return tags


CLAIM_FILE = "mlflow_run.json"


def reap_orphans(client, exp_id: str, keep: str | None = None) -> list[str]:
    """Mark FAILED the runs left RUNNING on this host whose process is gone (a SIGKILL), except
    ``keep`` (the run a resume is continuing). Returns the ids marked."""
    host = socket.gethostname()
    reaped = []
    for r in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = r.data.tags
        if r.info.run_id == keep or tags.get("rnas.host") != host or "rnas.pid" not in tags:
            continue
        if not pid_alive(int(tags["rnas.pid"])):
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
    tags = {
        "stage": "pipeline",
        "dataset": params.data.dataset,
        "params_hash": params_hash(params, ("pipeline", "data", "teacher", "search", "retrain", "evaluate")),
        "mlflow.runName": f"pipeline/{params.data.dataset}",
        **source_tags("rnas pipeline-run start"),
    }
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
def stage_run(
    params: Params,
    stage: str,
    *,
    run: str,
    method: str,
    variant: str,
    seed: int,
    keys: tuple[str, ...],
    claim_dir: Path | None = None,
) -> Iterator[StageLogger]:
    """An MLflow run around one stage invocation (see module docstring).

    ``claim_dir`` (the stage's resumable-state folder) records the run id, so a stage resumed
    after a kill continues its own run instead of starting a second one.
    """
    if not params.tracking.enabled:
        yield StageLogger()
        return
    import mlflow

    client = DeferringClient(mlflow.MlflowClient(tracking_uri(params.tracking)))
    exp_id = _ensure_experiment(client, experiment_name(params), params.tracking)
    run_id = _claimed_run(client, claim_dir)
    process_tags = {"rnas.pid": str(os.getpid()), "rnas.host": socket.gethostname()}
    reap_orphans(client, exp_id, keep=run_id)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        for k, v in {**process_tags, "rnas.resumed": "true"}.items():
            client.set_tag(run_id, k, v)
        logger = StageLogger(client, run_id, continued=True, experiment_id=exp_id)
    else:
        tags = {
            "stage": stage,
            "run": run,
            "method": method,
            "variant": variant,
            "dataset": params.data.dataset,
            "seed": str(seed),
            "params_hash": params_hash(params, keys),
            "mlflow.runName": f"{stage}/{run}/seed{seed}",
            **process_tags,
            **source_tags(stage_command(stage, run, seed)),
        }
        parent = parent_run_id(params)
        if parent:
            tags["mlflow.parentRunId"] = parent
        mlrun = client.create_run(exp_id, tags=tags, run_name=tags["mlflow.runName"])
        run_id = mlrun.info.run_id
        logger = StageLogger(client, run_id, experiment_id=exp_id)
        logger.log_params(params, keys)
        if claim_dir is not None:
            claim_dir.mkdir(parents=True, exist_ok=True)
            (claim_dir / CLAIM_FILE).write_text(json.dumps({"run_id": run_id}))
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
