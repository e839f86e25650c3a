"""What every stage does first: load and validate params, fix the runtime, load data."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch

from rnas import paths
from rnas.checkpoint import ResumeState
from rnas.config import Params, load_params, params_hash
from rnas.data import Splits, load_splits
from rnas.io import read_json, write_json  # noqa: F401  (a stage writes its JSON outputs with these)
from rnas.pipeline import stage_keys
from rnas.runs import RunSpec
from rnas.runtime import seed_everything, setup_runtime
from rnas.stages import add_params_argument
from rnas.tracking import stage_run

log = logging.getLogger("rnas")


def add_run_arguments(p: argparse.ArgumentParser, allow_teacher: bool = False) -> None:
    add_params_argument(p)
    p.add_argument("--run", required=True, help="run name (see rnas.runs)" + (" or 'teacher'" if allow_teacher else ""))
    p.add_argument("--seed", type=int, default=0, help="seed (a value from pipeline.seeds)")


def prepare(args: argparse.Namespace, seed: int) -> tuple[Params, torch.device]:
    params = load_params(args.params)
    pipe = params.pipeline
    device = setup_runtime(pipe.threads, pipe.deterministic, pipe.device, amp=pipe.amp, compile=pipe.compile)
    seed_everything(seed)
    return params, device


def run_stage(params: Params, stage: str, spec: RunSpec, seed: int) -> tuple[ResumeState, Any]:
    """A run's resumable stage: its resume state (under ``.state/``, keyed by the hash of the
    params keys the stage reads) and the MLflow run around it (a context manager), which a
    resumed process continues."""
    keys = stage_keys(stage, spec.name)
    resume = ResumeState(paths.state_dir(params, spec.name, seed, stage), params_hash(params, keys))
    tracker = stage_run(
        params,
        stage,
        run=spec.name,
        method=spec.method,
        variant=spec.variant,
        seed=seed,
        keys=keys,
        claim_dir=resume.folder,
    )
    return resume, tracker


def load_data(params: Params, seed: int) -> Splits:
    d = params.data
    return load_splits(
        d.dataset,
        root=d.root,
        download=d.download,
        seed=seed,
        val_fraction=d.val_fraction,
        image_size=d.image_size,
        test_fraction=d.test_fraction,
        train_subset=d.train_subset,
    )


def log_training_data(tracker, params: Params, splits: Splits, seed: int) -> None:
    """The splits a training stage reads, as inputs of its MLflow run: ``<dataset>/train``
    (context ``training``) and ``<dataset>/val`` (``validation``: checkpoint selection)."""
    for split, context in (("train", "training"), ("val", "validation")):
        tracker.log_dataset(
            getattr(splits, split),
            f"{params.data.dataset}/{split}",
            context,
            loader="rnas.data.load_splits",
            dataset=params.data.dataset,
            split=split,
            seed=seed,
        )
