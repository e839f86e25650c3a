"""``rnas init-store``: create the MLflow store and experiment once, before parallel jobs."""

from __future__ import annotations

import argparse

from rnas.config import load_params
from rnas.stages import add_params_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_params_argument(p)


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if not params.tracking.enabled:
        print("tracking disabled (tracking.enabled: false)")
        return 0
    from rnas.tracking import init_store, runs_url

    print(f"MLflow store ready: {init_store(params)}")
    print(f"runs table in the UI (make mlflow): {runs_url(params)}")
    return 0
