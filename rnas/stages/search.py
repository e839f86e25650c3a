"""``rnas search --run RUN --seed K``: run the run's search method, write the architecture.

A run that shares another run's search (``RunSpec.select_from``: an LRNAS budget run) does not
search: its architecture, and the decision after every epoch, come from that search's files
(``SearchMethod.select_from``), and its ``search.json`` carries that search's time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnas import paths
from rnas.config import Params, search_for
from rnas.data import get_info
from rnas.models.external import load_teacher
from rnas.runs import RunSpec, resolve_run
from rnas.runtime import show_progress
from rnas.search.loop import run_search
from rnas.search.methods import make_method
from rnas.search.stability import decision_digest, late_changes, stability_summary
from rnas.stages.common import add_run_arguments, load_data, log, log_training_data, prepare, run_stage, write_json
from rnas.tracking import file_digest


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    params, device = prepare(args, args.seed)
    spec = resolve_run(args.run)
    if spec.arch_from:
        log.error("run %s reuses the architecture of run %s and has no search of its own", args.run, spec.arch_from)
        return 2
    if spec.select_from:
        return select(params, spec, args.seed)
    splits = load_data(params, args.seed)
    teacher = None
    if spec.needs_teacher:
        teacher = load_teacher(params, splits.info, device)
        for p in teacher.parameters():
            p.requires_grad_(False)
    resume, tracking = run_stage(params, "search", spec, args.seed)
    with tracking as tracker:
        log_training_data(tracker, params, splits, args.seed)
        method = make_method(spec.method)
        result = run_search(
            method,
            {
                "params": params,
                "run": spec,
                "info": splits.info,
                "device": device,
                "seed": args.seed,
                "teacher": teacher,
            },
            splits,
            log_metrics=tracker.log_metrics,
            resume=resume,
            progress=show_progress(params.pipeline.progress),
            desc=f"search {args.run}",
        )
        extra = dict(result.extra_outputs)
        if "alphas.json" in extra and len(result.snapshots) == len(result.history):  # (not after an old checkpoint)
            extra["alphas.json"] = {**extra["alphas.json"], "per_epoch": result.snapshots}
        epochs = search_for(params, spec.method).epochs  # the method's own (search.methods.<m>.overrides)
        stability = stability_summary(result.decisions, epochs) if method.uses_search_loop else {}
        if stability and len(result.decision_values) == len(result.decisions):  # (not after an old checkpoint)
            stability.update(late_changes(result.decision_values, epochs))
        if result.side_decisions:  # e.g. RNAS-CL's tutors: their own stable-from, not part of `decided`
            stability["side_stability"] = {
                name: stability_summary(digests, epochs) for name, digests in result.side_decisions.items()
            }
        # CPU seconds of the search's threads: steadier than wall clock on a shared machine (the cost claim)
        cpu = {"search_cpu_seconds": result.cpu_seconds} if result.cpu_seconds is not None else {}
        arch_path = write_outputs(
            tracker,
            params,
            spec,
            args.seed,
            architecture=result.architecture,
            extra=extra,
            draw=method.write_files,
            seconds={"search_seconds": result.seconds, **cpu},
            stability=stability,
            log_data={
                "decisions": result.decisions,
                **({"side_decisions": result.side_decisions} if result.side_decisions else {}),
                "history": result.history,
            },
        )
        log.info("search %s seed %d: %.1f s -> %s", args.run, args.seed, result.seconds, arch_path)
    resume.clear()
    return 0


def select(params: Params, spec: RunSpec, seed: int) -> int:
    """The architecture of a run that shares the search of ``spec.select_from`` (same seed)."""
    source = paths.run_dir(params, spec.select_from, seed)
    resume, tracking = run_stage(params, "search", spec, seed)
    with tracking as tracker:
        t0 = time.perf_counter()
        selected = make_method(spec.method).select_from(source, params, spec, get_info(params.data.dataset))
        epochs = search_for(params, spec.method).epochs
        decisions = [decision_digest(value) for value in selected.decision_values]
        stability = {**stability_summary(decisions, epochs), **late_changes(selected.decision_values, epochs)}
        # the shared search's time: what this architecture cost, counted again in each run that shares it
        shared = {k: selected.source[k] for k in ("search_seconds", "search_cpu_seconds") if k in selected.source}
        arch_path = write_outputs(
            tracker,
            params,
            spec,
            seed,
            architecture=selected.architecture,
            extra=selected.extra_outputs,
            draw=selected.draw,
            seconds={**shared, "selection_seconds": time.perf_counter() - t0},
            stability=stability,
            log_data={
                "search_shared_with": spec.select_from,
                "decisions": decisions,
                "history": selected.source.get("history", []),
            },
        )
        producer = tracker.find_run(
            arch_sha256=file_digest(paths.arch_file(params, spec.select_from, seed)),
            run=spec.select_from,
            seed=str(seed),
        )
        tracker.set_tags(
            {"search_shared_with": spec.select_from}
            | ({"shared_search_run_id": producer.info.run_id} if producer is not None else {})
        )
        log.info("search %s seed %d: selected from %s's search -> %s", spec.name, seed, spec.select_from, arch_path)
    resume.clear()
    return 0


def write_outputs(
    tracker: Any,
    params: Params,
    spec: RunSpec,
    seed: int,
    *,
    architecture: dict[str, Any],
    extra: dict[str, Any],
    draw: Callable[[Path], list[Path]],
    seconds: dict[str, float],
    stability: dict[str, Any],
    log_data: dict[str, Any],
) -> Path:
    """Write a search's files (architecture, JSON files, plots, ``search.json``) into the run
    folder and log them to its MLflow run; returns the architecture file."""
    arch_path = paths.arch_file(params, spec.name, seed)
    run_dir = arch_path.parent
    for name, data in extra.items():
        write_json(run_dir / name, data)
    write_json(arch_path, architecture)
    for extra_file in draw(run_dir):
        tracker.log_artifact(extra_file)
    head = {"run": spec.name, "method": spec.method, "variant": spec.variant, "seed": seed}
    write_json(paths.search_log(params, spec.name, seed), {**head, **seconds, **stability, **log_data})
    late = {"late_changed_entries": float(len(stability["late_changed"]))} if "late_changed" in stability else {}
    tracker.log_metrics(
        {
            **seconds,
            **{k: float(v) for k, v in stability.items() if isinstance(v, int | float)},
            **late,
            **{
                f"{name}_{k}": float(v)
                for name, summary in stability.get("side_stability", {}).items()
                for k, v in summary.items()
                if isinstance(v, int | float)
            },
        }
    )
    tracker.set_tags({"arch_sha256": file_digest(arch_path)})  # the retrain run finds this run by it
    tracker.log_artifact(arch_path)
    return arch_path
