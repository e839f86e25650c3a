"""``rnas teacher``: adversarially train the robust teacher (one per dataset)."""

from __future__ import annotations

import argparse
import time

from rnas import paths
from rnas.checkpoint import ResumeState, save_model
from rnas.config import params_hash
from rnas.models import build_model
from rnas.pipeline import stage_keys
from rnas.runtime import place_model, show_progress
from rnas.stages import add_params_argument
from rnas.stages.common import load_data, log, log_training_data, prepare, write_json
from rnas.tracking import stage_run
from rnas.training.trainer import Trainer

TEACHER_SEED = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_params_argument(p)


def teacher_model_args(params, info) -> dict:
    t = params.teacher
    kwargs = {
        "small_cnn": {"width": t.width, "depth": t.depth, "convs_per_stage": t.convs_per_stage},
        "preact_resnet18": {"width": t.width},
        "wide_resnet": {"depth": t.depth, "widen_factor": t.widen_factor},
    }[t.family]
    return {
        "kind": "family",
        "family": t.family,
        "num_classes": info.num_classes,
        "input_channels": info.input_channels,
        "dataset": info.name,
        **kwargs,
    }


def run(args: argparse.Namespace) -> int:
    params, device = prepare(args, TEACHER_SEED)
    splits = load_data(params, TEACHER_SEED)
    keys = stage_keys("teacher")
    model_args = teacher_model_args(params, splits.info)
    model = build_model(**{k: v for k, v in model_args.items() if k != "kind"})
    model = place_model(model, device, params.pipeline.channels_last)
    resume = ResumeState(paths.state_dir(params, paths.TEACHER, 0, "teacher"), params_hash(params, keys))
    with stage_run(
        params,
        "teacher",
        run="teacher",
        method="teacher",
        variant=params.teacher.family,
        seed=TEACHER_SEED,
        keys=keys,
        claim_dir=resume.folder,
    ) as tracker:
        log_training_data(tracker, params, splits, TEACHER_SEED)
        t0 = time.perf_counter()
        trainer = Trainer(
            model,
            params.teacher.train,
            device,
            seed=TEACHER_SEED,
            log_metrics=tracker.log_metrics,
            resume=resume,
            progress=show_progress(params.pipeline.progress),
            desc="teacher",
        )
        result = trainer.fit(splits.train, splits.val)
        seconds = time.perf_counter() - t0
        out = paths.teacher_model(params)
        save_model(out, model, model_args, {"best_epoch": result.best_epoch})
        write_json(
            paths.train_log(params, paths.TEACHER, 0),
            {"history": result.history, "best_epoch": result.best_epoch, "seconds": seconds},
        )
        tracker.log_checkpoint(out, splits.val.x[:4])  # an MLflow model; the metrics below are linked to it
        tracker.log_metrics({"train_seconds": seconds, "best_epoch": result.best_epoch})
        tracker.log_artifact(out)
        log.info(
            "teacher: best epoch %d (val %s %.4f) -> %s",
            result.best_epoch + 1,
            params.teacher.train.select_on,
            result.best_metric,
            out,
        )
    resume.clear()
    return 0
