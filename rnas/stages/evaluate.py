"""``rnas evaluate --run RUN --seed K`` (or ``--run teacher``): attack the final model.

Every model is measured on the same first ``evaluate.n_examples`` test examples, each
attack on all of them (docs/design.md §6). Writes ``eval.json``."""

from __future__ import annotations

import argparse
import platform
import re
import time

import torch

from rnas import paths
from rnas.checkpoint import load_model
from rnas.data import TensorPair
from rnas.evaluation.certify import certify_evaluation
from rnas.evaluation.flags import write_flags
from rnas.evaluation.protocol import EvalSettings, EvalState, evaluate_with_sanity, state_key
from rnas.evaluation.sanity import SanitySettings
from rnas.pipeline import stage_keys
from rnas.runs import resolve_run
from rnas.runtime import place_model, show_progress
from rnas.stages.common import add_run_arguments, load_data, log, prepare, write_json
from rnas.tracking import file_digest, stage_run

EVAL_DATA_SEED = 0  # the test split does not depend on the seed; fixed for clarity


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, allow_teacher=True)


def settings_from(params) -> EvalSettings:
    e = params.evaluate
    if e.autoattack_iterations:
        log.warning(
            "evaluate.autoattack_iterations = %d: AutoAttack runs %d APGD/FAB iterations, not the standard 100 "
            "(a quick-test setting; its numbers are not AutoAttack's)",
            e.autoattack_iterations,
            e.autoattack_iterations,
        )
    return EvalSettings.from_params(e)


def sanity_from(params) -> SanitySettings:
    e = params.evaluate
    return SanitySettings(
        large_epsilon=e.sanity_large_epsilon,
        large_epsilon_l2=e.sanity_large_epsilon_l2,
        square_queries=e.sanity_square_queries,
        tolerance=e.sanity_tolerance,
        max_zero_grad_fraction=e.sanity_max_zero_grad_fraction,
    )


def device_name(device) -> str:
    """What ran the evaluation, for the report's GPU/CPU column."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def log_evaluation(tracker, metrics: dict) -> None:
    """eval.json into MLflow, with the same names for every method: its numbers as metrics
    (``eps_sweep/<ε>`` for the sweep), the tag ``sanity`` (pass / FAIL: names), a tag
    ``sanity.<check>`` per check, the metric ``sanity_failures``, and a tag
    ``autoattack_check.<AutoAttack run>.<check>`` per AutoAttack check (characters MLflow does
    not allow in a key, e.g. the ``@`` of a probe's name, become ``_``)."""
    verdicts = metrics.get("sanity", {})
    failed = sorted(n for n, ok in verdicts.items() if not ok)
    aa_checks = {
        re.sub(r"[^\w./ -]", "_", f"autoattack_check.{run}.{c}"): "pass" if ok else "FAIL"
        for run, checks in (metrics.get("autoattack_checks") or {}).items()
        for c, ok in checks.items()
    }
    tracker.set_tags(
        {
            "sanity": "FAIL: " + ", ".join(failed) if failed else "pass",
            **{f"sanity.{n}": "pass" if ok else "FAIL" for n, ok in verdicts.items()},
            **aa_checks,
            **{k: metrics[k] for k in ("device", "device_name") if k in metrics},
        }
    )
    tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    tracker.log_metrics({f"eps_sweep/{eps}": acc for eps, acc in metrics.get("eps_sweep", {}).items()})
    tracker.log_metrics(
        {f"certified_eps_sweep/{eps}": acc for eps, acc in (metrics.get("certified_eps_sweep") or {}).items()}
    )
    tracker.log_metrics({"sanity_failures": len(failed)})


def lineage_keys(run: str) -> tuple[str, ...]:
    """The params sections that made the evaluated model: the teacher's, or the run's search
    (of the run whose architecture it retrains) and retrain sections. An evaluation run logs them
    besides its own, so MLflow's Compare view shows what differs between evaluation runs."""
    if run == paths.TEACHER:
        return stage_keys("teacher")
    spec = resolve_run(run)
    return (*stage_keys("search", spec.arch_from or run), *stage_keys("retrain", run))


def log_lineage(tracker, params, run: str, seed: int, test: TensorPair) -> None:
    """Tag the evaluation run with the runs behind its ``model.pt`` (retrain or teacher, and
    search: found by the file's digest), log their params besides its own and the evaluated
    examples as its input; the metrics logged after are linked to that model and those examples."""
    match = {"run": run} if run == paths.TEACHER else {"run": run, "seed": str(seed)}
    tracker.link_producer("model_sha256", paths.model_file(params, run, seed), **match)
    tracker.log_params(params, lineage_keys(run))
    tracker.log_dataset(
        test,
        f"{params.data.dataset}/test",
        "test",
        link=True,
        loader="rnas.data.load_splits",
        dataset=params.data.dataset,
        split="test",
        n_examples=len(test),
    )


def eval_state(params, model_path, x, y, state_folder) -> EvalState:
    """The per-attack resume state of one evaluation, keyed by the settings, the model file's
    digest and the examples (cleared by the caller once its files are written)."""
    key = state_key(settings_from(params), file_digest(model_path), x, y, sanity_from(params))
    return EvalState(state_folder / "flags.pt", key)


def evaluate_model(params, model, x, y, state: EvalState) -> tuple[dict, dict, dict]:
    """The evaluation protocol on one model (``evaluate.*``): every attack on every example with
    the sanity checks, then the certified bounds, resumable per attack in ``state``. Returns
    (metrics with ``eval_seconds``, per-example flags, per-example certified values)."""
    t0 = time.perf_counter()
    settings, sanity = settings_from(params), sanity_from(params)
    metrics, flags = evaluate_with_sanity(
        model, x, y, settings, sanity, progress=show_progress(params.pipeline.progress), state=state
    )
    e = params.evaluate  # per_example: {"certified", "certified_radius"} per example, for flags.json
    per_example = certify_evaluation(
        metrics,
        flags,
        model,
        x,
        y,
        settings,
        e.certify_method,
        e.certify_batch_size,
        sanity,
        e.certify_intermediate,
        e.certify_eps_sweep,
        e.certify_radius_steps,
        e.certify_radius_min,
        e.certify_float64_below,
    )
    metrics["eval_seconds"] = time.perf_counter() - t0
    return metrics, flags, per_example


def write_evaluation(metrics: dict, flags: dict, per_example: dict, eval_path, flags_path):
    """eval.json and flags.json (with the certified flags and radii per example); returns the
    flags file's path."""
    flags_out = write_flags(
        flags_path,
        {**flags, **{k: v for k, v in per_example.items() if k == "certified"}},
        {k: v.tolist() for k, v in per_example.items() if k == "certified_radius"},
    )
    write_json(eval_path, metrics)
    return flags_out


def run(args: argparse.Namespace) -> int:
    params, device = prepare(args, args.seed)
    if args.run == paths.TEACHER:
        method, variant = "teacher", params.teacher.family
    else:
        spec = resolve_run(args.run)
        method, variant = spec.method, spec.variant
    splits = load_data(params, EVAL_DATA_SEED)
    model, ckpt = load_model(paths.model_file(params, args.run, args.seed), device)
    model = place_model(model, device, params.pipeline.channels_last)
    n = min(params.evaluate.n_examples, len(splits.test))
    x, y = splits.test.x[:n].to(device), splits.test.y[:n].to(device)
    keys = stage_keys("evaluate")
    state_folder = paths.state_dir(params, args.run, args.seed, "evaluate")
    with stage_run(
        params,
        "evaluate",
        run=args.run,
        method=method,
        variant=variant,
        seed=args.seed,
        keys=keys,
        claim_dir=state_folder,
    ) as tracker:
        log_lineage(tracker, params, args.run, args.seed, TensorPair(splits.test.x[:n], splits.test.y[:n]))
        state = eval_state(params, paths.model_file(params, args.run, args.seed), x, y, state_folder)
        metrics, flags, per_example = evaluate_model(params, model, x, y, state)
        metrics["device"] = str(device)
        metrics["device_name"] = device_name(device)
        out = paths.eval_file(params, args.run, args.seed)
        flags_out = write_evaluation(metrics, flags, per_example, out, paths.flags_file(params, args.run, args.seed))
        log_evaluation(tracker, metrics)
        tracker.log_artifact(out)
        tracker.log_artifact(flags_out)
        state.clear()
        log.info(
            "evaluate %s seed %d: clean %.3f, robust %s -> %s",
            args.run,
            args.seed,
            metrics["clean_acc"],
            metrics.get("robust_acc"),
            out,
        )
    return 0
