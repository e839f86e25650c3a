"""Where every stage reads and writes: paths built from params and wildcards, never timestamps.

Both runners (Snakefile, dvc.yaml) and the stage commands take their paths from here.
Resumable state lives under ``<results>/.state/``, outside every stage's declared outputs.
"""

from __future__ import annotations

from pathlib import Path

from rnas.config import Params
from rnas.runs import resolve_run

TEACHER = "teacher"


def dataset_dir(params: Params) -> Path:
    return Path(params.pipeline.results) / params.data.dataset


def teacher_dir(params: Params) -> Path:
    return dataset_dir(params) / TEACHER


def run_dir(params: Params, run: str, seed: int) -> Path:
    if run == TEACHER:
        return teacher_dir(params)
    return dataset_dir(params) / run / f"seed{seed}"


def teacher_model(params: Params) -> Path:
    return teacher_dir(params) / "model.pt"


def distill_teacher(params: Params) -> Path:
    """The teacher that distillation runs (RNAS-CL) read: ``pipeline.teacher_checkpoint`` when set,
    else the teacher stage's model."""
    if params.pipeline.teacher_checkpoint:
        return Path(params.pipeline.teacher_checkpoint)
    return teacher_model(params)


def arch_source(run: str) -> str:
    """The run whose search wrote this run's architecture (itself, or ``arch_from`` for ablations)."""
    return resolve_run(run).arch_from or run


def arch_file(params: Params, run: str, seed: int) -> Path:
    """The run's architecture file; an ablation (``arch_from``) reads the other run's file."""
    source = arch_source(run)
    return run_dir(params, source, seed) / resolve_run(source).arch_file


def tutors_file(params: Params, run: str, seed: int) -> Path:
    """RNAS-CL's tutor assignment beside the architecture file (cell space; the width space
    also keeps the tutors inside architecture.json)."""
    return arch_file(params, run, seed).parent / "tutors.json"


def tutor_map_png(params: Params, run: str, seed: int) -> Path:
    """RNAS-CL's tutor-map plot (student layer x teacher layer weights) beside the architecture file."""
    return arch_file(params, run, seed).parent / "tutor_map.png"


def search_log(params: Params, run: str, seed: int) -> Path:
    return run_dir(params, run, seed) / "search.json"


def model_file(params: Params, run: str, seed: int) -> Path:
    return run_dir(params, run, seed) / "model.pt"


def train_log(params: Params, run: str, seed: int) -> Path:
    return run_dir(params, run, seed) / "train.json"


def eval_file(params: Params, run: str, seed: int) -> Path:
    return run_dir(params, run, seed) / "eval.json"


def flags_file(params: Params, run: str, seed: int) -> Path:
    """Per-example results of the evaluation (:mod:`rnas.evaluation.flags`), for paired tests."""
    return run_dir(params, run, seed) / "flags.json"


def alternative_dir(params: Params, run: str, seed: int) -> Path:
    """``rnas alternative``'s folder: ``summary.json`` always; for an undecided search also the
    alternative cell's ``genotype.json``, ``model.pt``, ``train.json``, ``eval.json``, ``flags.json``."""
    return run_dir(params, run, seed) / "alternative"


def state_dir(params: Params, run: str, seed: int, stage: str) -> Path:
    rel = run_dir(params, run, seed).relative_to(Path(params.pipeline.results))
    return Path(params.pipeline.results) / ".state" / rel / stage


def report_md(params: Params) -> Path:
    return Path(params.pipeline.results) / "report.md"


def report_html(params: Params) -> Path:
    return Path(params.pipeline.results) / "report.html"


def plots_dir(params: Params) -> Path:
    return Path(params.pipeline.results) / "plots"


def pipeline_run_file(params: Params) -> Path:
    """Id of the MLflow parent run of the running pipeline invocation (``rnas pipeline-run``)."""
    return Path(params.pipeline.results) / ".pipeline_run_id"


def cell_plot(params: Params, run: str, seed: int) -> Path:
    """Drawing of a run's found normal and reduction cells."""
    return plots_dir(params) / f"cell_{run}_seed{seed}.png"


def report_plots(params: Params) -> list[Path]:
    """Every PNG ``rnas report`` writes under ``plots_dir`` (always all of them, so a workflow
    can declare them as outputs): the ε sweep, the certified ε sweep, the Pareto front, the search
    curves, what the undecided searches still moved, robust accuracy vs search cost, and one cell
    drawing per cell-space run with its own search (not ``arch_from`` ablations) and seed."""
    out = [
        plots_dir(params) / name
        for name in (
            "eps_sweep.png",
            "certified_sweep.png",
            "pareto.png",
            "search_curves.png",
            "late_entries.png",
            "cost.png",
        )
    ]
    for run in params.pipeline.runs:
        spec = resolve_run(run)
        if spec.space == "cell" and not spec.arch_from:
            out += [cell_plot(params, run, seed) for seed in params.pipeline.seeds]
    return out
