"""The pipeline's DAG as data: which params keys each stage reads, and the dvc.yaml built
from it. Snakemake's rules (workflow/rules/*.smk) and ``dvc.yaml`` call the same ``rnas``
commands; ``rnas dvc-yaml`` regenerates ``dvc.yaml`` so its stages list exactly the params
keys each stage reads (a test keeps the committed file in sync)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rnas import paths
from rnas.config import Params, SearchConfig
from rnas.runs import resolve_run

RUNTIME_KEYS = ("pipeline.device", "pipeline.threads", "pipeline.deterministic", "pipeline.channels_last",
                "pipeline.amp", "pipeline.compile")
TEACHER_KEYS = ("pipeline.teacher_checkpoint",)  # read by stages that load the teacher (paths.distill_teacher)
SEARCH_COMMON = tuple(f"search.{f.name}" for f in dataclasses.fields(SearchConfig) if f.name != "methods")


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
        return ("data", "retrain.init_channels", "retrain.layers", "retrain.drop_path", "retrain.train",
                *extra, *RUNTIME_KEYS)
    if stage == "evaluate":
        return ("data", "evaluate", *RUNTIME_KEYS)
    if stage == "report":
        return ("pipeline.runs", "pipeline.seeds", "data.dataset", "teacher.family", "evaluate")
    raise ValueError(f"unknown stage {stage!r}")


def eval_targets(params: Params) -> list[str]:
    out = [str(paths.eval_file(params, paths.TEACHER, 0))]
    for run in params.pipeline.runs:
        for seed in params.pipeline.seeds:
            out.append(str(paths.eval_file(params, run, seed)))
    return out


def report_inputs(params: Params) -> list[str]:
    """What the report reads from the evaluations: every ``eval.json`` and its ``flags.json``
    (per-example results for the paired tests of the Claims section)."""
    out = []
    for ev in eval_targets(params):
        out += [ev, str(Path(ev).with_name("flags.json"))]
    return out


def searches(params: Params) -> list[str]:
    """Runs with a search of their own (ablations reuse another run's architecture)."""
    return [run for run in params.pipeline.runs if resolve_run(run).arch_from is None]


def search_outputs(params: Params, run: str, seed: int) -> list[str]:
    """Files a search writes that later stages read (both runners declare exactly these)."""
    spec = resolve_run(run)
    outs = [str(paths.arch_file(params, run, seed)), str(paths.search_log(params, run, seed))]
    if spec.distill and spec.space == "cell":  # RNAS-CL cell space: tutors beside the genotype
        outs.append(str(paths.tutors_file(params, run, seed)))
    return outs


def retrain_inputs(params: Params, run: str, seed: int) -> list[str]:
    spec = resolve_run(run)
    deps = [str(paths.arch_file(params, run, seed))]
    if spec.distill:
        deps.append(str(paths.distill_teacher(params)))
        if spec.space == "cell":
            deps.append(str(paths.tutors_file(params, run, seed)))
    return deps


def search_inputs(params: Params, run: str) -> list[str]:
    return [str(paths.distill_teacher(params))] if resolve_run(run).needs_teacher else []


def dvc_yaml(params: Params, params_file: str = "params.yaml") -> dict[str, Any]:
    """dvc.yaml for the given params (one stage per stage × run × seed)."""
    def keys(stage: str, run: str | None = None) -> list[Any]:
        ks = list(stage_keys(stage, run))
        return ks if params_file == "params.yaml" else [{params_file: ks}]

    p = f" --params {params_file}"
    stages: dict[str, Any] = {
        "teacher": {
            "cmd": f"rnas teacher{p}",
            "params": keys("teacher"),
            "outs": [str(paths.teacher_model(params)), str(paths.train_log(params, paths.TEACHER, 0))],
        },
        "evaluate_teacher": {
            "cmd": f"rnas evaluate{p} --run teacher",
            "deps": [str(paths.teacher_model(params))],
            "params": keys("evaluate"),
            "outs": [{str(paths.flags_file(params, paths.TEACHER, 0)): {"cache": False}}],
            "metrics": [{str(paths.eval_file(params, paths.TEACHER, 0)): {"cache": False}}],
        },
    }
    for run in params.pipeline.runs:
        spec = resolve_run(run)
        for seed in params.pipeline.seeds:
            tag = f"{run}_seed{seed}"
            if spec.arch_from is None:
                stages[f"search_{tag}"] = {
                    "cmd": f"rnas search{p} --run {run} --seed {seed}",
                    "deps": search_inputs(params, run) or None,
                    "params": keys("search", run),
                    "outs": search_outputs(params, run, seed),
                }
            stages[f"retrain_{tag}"] = {
                "cmd": f"rnas retrain{p} --run {run} --seed {seed}",
                "deps": retrain_inputs(params, run, seed),
                "params": keys("retrain", run),
                "outs": [str(paths.model_file(params, run, seed)), str(paths.train_log(params, run, seed))],
            }
            stages[f"evaluate_{tag}"] = {
                "cmd": f"rnas evaluate{p} --run {run} --seed {seed}",
                "deps": [str(paths.model_file(params, run, seed))],
                "params": keys("evaluate"),
                "outs": [{str(paths.flags_file(params, run, seed)): {"cache": False}}],
                "metrics": [{str(paths.eval_file(params, run, seed)): {"cache": False}}],
            }
    from rnas.report.curves import curve_files, dvc_plots

    report_outs = [paths.report_md(params), paths.report_html(params), *paths.report_plots(params),
                   *curve_files(params)]
    stages["report"] = {
        "cmd": f"rnas report{p}",
        "deps": report_inputs(params),
        "params": keys("report"),
        "outs": [{str(f): {"cache": False}} for f in report_outs],
    }
    for st in stages.values():
        if st.get("deps") is None:
            st.pop("deps", None)
    return {"stages": stages, "plots": dvc_plots(params)}
