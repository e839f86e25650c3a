"""``rnas search --run RUN --seed K``: run the run's search method, write the architecture."""

from __future__ import annotations

import argparse

from rnas import paths
from rnas.config import search_for
from rnas.models.external import load_teacher
from rnas.runs import resolve_run
from rnas.runtime import show_progress
from rnas.search.loop import run_search
from rnas.search.methods import make_method
from rnas.search.stability import late_changes, stability_summary
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
        arch_path = paths.arch_file(params, args.run, args.seed)
        run_dir = arch_path.parent
        extra = dict(result.extra_outputs)
        if "alphas.json" in extra and len(result.snapshots) == len(result.history):  # (not after an old checkpoint)
            extra["alphas.json"] = {**extra["alphas.json"], "per_epoch": result.snapshots}
        for name, data in extra.items():
            write_json(run_dir / name, data)
        write_json(arch_path, result.architecture)
        for extra_file in method.write_files(run_dir):
            tracker.log_artifact(extra_file)
        epochs = search_for(params, spec.method).epochs  # the method's own (search.methods.<m>.overrides)
        stability = stability_summary(result.decisions, epochs) if method.uses_search_loop else {}
        if stability and len(result.decision_values) == len(result.decisions):  # (not after an old checkpoint)
            stability.update(late_changes(result.decision_values, epochs))
        late = {"late_changed_entries": float(len(stability["late_changed"]))} if "late_changed" in stability else {}
        if result.side_decisions:  # e.g. RNAS-CL's tutors: their own stable-from, not part of `decided`
            stability["side_stability"] = {
                name: stability_summary(digests, epochs) for name, digests in result.side_decisions.items()
            }
        # CPU seconds of the search's threads: steadier than wall clock on a shared machine (the cost claim)
        cpu = {"search_cpu_seconds": result.cpu_seconds} if result.cpu_seconds is not None else {}
        write_json(
            paths.search_log(params, args.run, args.seed),
            {
                "run": args.run,
                "method": spec.method,
                "variant": spec.variant,
                "seed": args.seed,
                "search_seconds": result.seconds,
                **cpu,
                **stability,
                "decisions": result.decisions,
                **({"side_decisions": result.side_decisions} if result.side_decisions else {}),
                "history": result.history,
            },
        )
        tracker.log_metrics(
            {
                "search_seconds": result.seconds,
                **cpu,
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
        log.info("search %s seed %d: %.1f s -> %s", args.run, args.seed, result.seconds, arch_path)
    resume.clear()
    return 0
