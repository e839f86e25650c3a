"""Which params keys each stage reads (:func:`stage_keys`): the stages hash them for their resume
state and MLflow tags, Snakemake re-runs a job when their hash changes, and dvc.yaml lists them.
The rest of the DAG (files read and written, code inputs, dvc.yaml) is in :mod:`rnas.dag`,
which no stage imports."""

from __future__ import annotations

from rnas.config import SearchConfig
from rnas.runs import resolve_run

RUNTIME_KEYS = (
    "pipeline.device",
    "pipeline.threads",
    "pipeline.deterministic",
    "pipeline.channels_last",
    "pipeline.amp",
    "pipeline.compile",
)
TEACHER_KEYS = ("pipeline.teacher_checkpoint", "pipeline.teacher_normalization")  # stages that load the teacher
SEARCH_COMMON = tuple(f"search.{name}" for name in SearchConfig.model_fields if name != "methods")


def stage_keys(stage: str, run: str | None = None) -> tuple[str, ...]:
    """The params sections a stage reads (dotted paths)."""
    if stage == "teacher":
        return ("data", "teacher", *RUNTIME_KEYS)
    if stage == "search":
        spec = resolve_run(run)
        method = tuple(k for k in spec.method_keys if not k.startswith("retrain."))
        teacher = TEACHER_KEYS if spec.needs_teacher else ()
        return ("data", *SEARCH_COMMON, *method, *spec.search_keys, *teacher, *RUNTIME_KEYS)
    if stage == "retrain":
        spec = resolve_run(run)
        extra = tuple(k for k in spec.method_keys if k.startswith("retrain."))
        extra += TEACHER_KEYS if spec.distill else ()
        return (
            "data",
            "retrain.init_channels",
            "retrain.layers",
            "retrain.drop_path",
            "retrain.train",
            *extra,
            *RUNTIME_KEYS,
        )
    if stage == "evaluate":
        return ("data", "evaluate", *RUNTIME_KEYS)
    if stage == "alternative":  # retrains and evaluates one more cell of the run's search
        return tuple(dict.fromkeys((*stage_keys("retrain", run), "evaluate")))
    if stage == "report":
        return (
            "pipeline.runs",
            "pipeline.seeds",
            "pipeline.alternative_cells",
            "data.dataset",
            "teacher.family",
            "evaluate",
        )
    raise ValueError(f"unknown stage {stage!r}")
