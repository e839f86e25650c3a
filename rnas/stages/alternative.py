"""``rnas alternative --run RUN --seed K``: retrain and evaluate the cell an undecided search left open.

For a search that did not decide (its derived cell changed in the last quarter of its epochs),
the cell it had chosen last before its final one (:func:`rnas.search.alternative.alternative_cell`)
is retrained with the same recipe and seed (:func:`rnas.stages.retrain.train_architecture`) and
evaluated with the same protocol (:func:`rnas.stages.evaluate.evaluate_model`) into
``<run>/seed<K>/alternative/``. The report sets its accuracies beside the final cell's, paired
per example: how much the entry the search left open moves the result. ``summary.json`` is
written for every search (a decided one retrains nothing), so the stage is one fixed DAG node
per run and seed. On when ``pipeline.alternative_cells`` is true, for the runs
:func:`rnas.runs.has_alternative` names.
"""

from __future__ import annotations

import argparse
import shutil

from rnas import paths
from rnas.checkpoint import load_model, save_model
from rnas.io import read_json
from rnas.runs import has_alternative, resolve_run
from rnas.runtime import place_model
from rnas.search.alternative import alternative_cell
from rnas.space.genotype import save_genotype
from rnas.stages.common import add_run_arguments, load_data, log, prepare, run_stage, write_json
from rnas.stages.evaluate import EVAL_DATA_SEED, eval_state, evaluate_model, write_evaluation
from rnas.stages.retrain import train_architecture


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)


def _summary(params, run: str, seed: int) -> tuple[dict, tuple | None]:
    """The summary's head and, for an undecided search, (epoch, cell, moved entries)."""
    search = read_json(paths.search_log(params, run, seed))
    head = {
        "run": run,
        "seed": seed,
        "decided": bool(search.get("decided")),
        "stable_from_epoch": search.get("stable_from_epoch"),
        "retrained": False,
    }
    if head["decided"]:
        return {**head, "reason": "the search decided: its cell held over the last quarter"}, None
    folder = paths.run_dir(params, run, seed)
    try:
        alt = alternative_cell(read_json(folder / "genotype.json"), read_json(folder / "alphas.json"))
    except ValueError as err:
        return {**head, "reason": f"no alternative cell: {err}"}, None
    if alt is None:
        return {**head, "reason": "no epoch derived another cell"}, None
    return head, alt


def run(args: argparse.Namespace) -> int:
    params, device = prepare(args, args.seed)
    spec = resolve_run(args.run)
    if not has_alternative(args.run):
        raise SystemExit(f"rnas alternative: run {args.run!r} has no alternative cell (a gradient cell-space search)")
    out = paths.alternative_dir(params, args.run, args.seed)
    summary, alt = _summary(params, args.run, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    if alt is None:
        write_json(out / "summary.json", summary)
        log.info("alternative %s seed %d: nothing to retrain (%s)", args.run, args.seed, summary["reason"])
        return 0
    epoch, cell, moved = alt
    arch_path = out / "genotype.json"
    save_genotype(cell, arch_path)
    if spec.distill:  # RNAS-CL's cell: the same tutors as the final cell's retraining
        shutil.copyfile(paths.tutors_file(params, args.run, args.seed), out / "tutors.json")
    resume, tracking = run_stage(params, "alternative", spec, args.seed)
    with tracking as tracker:
        splits = load_data(params, args.seed)
        model, result, train_seconds = train_architecture(
            params, spec, arch_path, splits, device, args.seed, resume, desc=f"alternative {args.run}"
        )
        model_path = out / "model.pt"
        save_model(model_path, model, model.model_args, {"best_epoch": result.best_epoch})
        write_json(
            out / "train.json", {"history": result.history, "best_epoch": result.best_epoch, "seconds": train_seconds}
        )
        # Evaluated as `rnas evaluate` evaluates a run: the model as loaded from its file, the same examples.
        model, _ = load_model(model_path, device)
        model = place_model(model, device, params.pipeline.channels_last)
        test = load_data(params, EVAL_DATA_SEED).test
        n = min(params.evaluate.n_examples, len(test))
        x, y = test.x[:n].to(device), test.y[:n].to(device)
        state = eval_state(params, model_path, x, y, paths.state_dir(params, args.run, args.seed, "alternative_eval"))
        metrics, flags, per_example = evaluate_model(params, model, x, y, state)
        write_evaluation(metrics, flags, per_example, out / "eval.json", out / "flags.json")
        summary.update(
            retrained=True,
            epoch=epoch,
            moved=moved,
            genotype=cell.to_dict(),
            clean_acc=metrics["clean_acc"],
            robust_acc=metrics.get("robust_acc"),
            train_seconds=train_seconds,
            eval_seconds=metrics["eval_seconds"],
        )
        write_json(out / "summary.json", summary)
        tracker.log_metrics(
            {k: float(summary[k]) for k in ("epoch", "clean_acc", "robust_acc") if summary[k] is not None}
        )
        tracker.log_artifact(out / "summary.json")
        state.clear()
        log.info(
            "alternative %s seed %d: the cell of epoch %d (%s) clean %.3f, robust %s",
            args.run,
            args.seed,
            epoch,
            ", ".join(moved),
            metrics["clean_acc"],
            metrics.get("robust_acc"),
        )
    resume.clear()
    return 0
