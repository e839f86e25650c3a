"""``rnas retrain --run RUN --seed K``: train the found architecture from scratch, adversarially.

Every run's architecture is retrained with the same recipe (``retrain.train``), so methods
are compared on their architectures, not on their training."""

from __future__ import annotations

import argparse
import time

from rnas import paths
from rnas.checkpoint import save_model
from rnas.runs import resolve_run
from rnas.runtime import place_model, show_progress
from rnas.space.genotype import load_genotype
from rnas.space.network import CellNetwork
from rnas.space.width import WidthArchitectureError, build_width_network, is_width_file, load_width_architecture
from rnas.stages.common import add_run_arguments, load_data, log, log_training_data, prepare, run_stage, write_json
from rnas.training.trainer import Trainer


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)


def build_final_network(params, spec, arch_path, info):
    """The final network of a run from its architecture file: a width-space ``architecture.json``
    rebuilds itself; a cell-space genotype gets ``retrain.init_channels`` and ``retrain.layers``."""
    if is_width_file(arch_path):
        arch = load_width_architecture(arch_path)
        if arch["network"].get("num_classes") != info.num_classes:
            raise WidthArchitectureError(
                f"{arch_path}: built for {arch['network'].get('num_classes')} classes, "
                f"the dataset has {info.num_classes}"
            )
        return build_width_network(arch)
    genotype = load_genotype(arch_path)
    r = params.retrain
    return CellNetwork(
        genotype, r.init_channels, r.layers, info.num_classes, info.input_channels, info.name, drop_path=r.drop_path
    )


def make_distillation(params, model, arch_path, device, info):
    """RNAS-CL's retraining terms (runs with ``distill``): KL(teacher ‖ student) + γ·L_attn with the
    searched tutors, the teacher frozen. The fixed tutors have no parameters, so the Trainer
    needs no ``extra_modules``."""
    from rnas.distill import FixedTutorDistillation, load_tutors
    from rnas.models.external import load_teacher

    teacher = load_teacher(params, info, device)
    teacher = place_model(teacher, device, params.pipeline.channels_last)
    d = params.retrain.distill
    return FixedTutorDistillation(
        model,
        teacher,
        load_tutors(arch_path),
        map_size=d.map_size,
        gamma=d.gamma,
        kl_weight=d.kl_weight,
        temperature=d.temperature,
        loss_form=d.loss_form,
    )


def train_architecture(params, spec, arch_path, splits, device, seed: int, resume, log_metrics=None, desc="retrain"):
    """Build the final network of ``arch_path`` and train it with ``retrain.train`` (and the run's
    distillation terms): the one recipe of every retraining. Returns (model, fit result, seconds)."""
    model = build_final_network(params, spec, arch_path, splits.info)
    model = place_model(model, device, params.pipeline.channels_last)
    distill = make_distillation(params, model, arch_path, device, splits.info) if spec.distill else None
    t0 = time.perf_counter()
    trainer = Trainer(
        model,
        params.retrain.train,
        device,
        seed=seed,
        log_metrics=log_metrics,
        resume=resume,
        progress=show_progress(params.pipeline.progress),
        desc=desc,
        extra_loss=distill,
    )
    result = trainer.fit(splits.train, splits.val)
    if distill is not None:
        distill.remove()
    return model, result, time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    params, device = prepare(args, args.seed)
    spec = resolve_run(args.run)
    splits = load_data(params, args.seed)
    arch_path = paths.arch_file(params, spec.arch_from or args.run, args.seed)  # ablations reuse another run's
    resume, tracking = run_stage(params, "retrain", spec, args.seed)
    with tracking as tracker:
        # tags search_run_id: the search that wrote the architecture
        tracker.link_producer("arch_sha256", arch_path, run=spec.arch_from or args.run, seed=str(args.seed))
        log_training_data(tracker, params, splits, args.seed)
        model, result, seconds = train_architecture(
            params, spec, arch_path, splits, device, args.seed, resume, tracker.log_metrics, f"retrain {args.run}"
        )
        out = paths.model_file(params, args.run, args.seed)
        save_model(out, model, model.model_args, {"best_epoch": result.best_epoch})
        write_json(
            paths.train_log(params, args.run, args.seed),
            {"history": result.history, "best_epoch": result.best_epoch, "seconds": seconds},
        )
        tracker.log_checkpoint(out, splits.val.x[:4])  # an MLflow model; the metrics below are linked to it
        tracker.log_metrics({"train_seconds": seconds, "best_epoch": result.best_epoch})
        tracker.log_artifact(out)
        tracker.log_artifact(arch_path)
        log.info("retrain %s seed %d: best epoch %d -> %s", args.run, args.seed, result.best_epoch + 1, out)
    resume.clear()
    return 0
