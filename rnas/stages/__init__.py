"""Stage entry points: each module has ``add_arguments(parser)`` and ``run(args) -> int``.

They parse, call the library, and write their outputs; Snakemake rules and dvc stages call
them through the ``rnas`` command (``rnas <stage> --params params.yaml ...``)."""

from __future__ import annotations

import argparse


def add_params_argument(p: argparse.ArgumentParser) -> None:
    """``--params`` (default params.yaml); here, not in :mod:`rnas.stages.common`, so the light
    commands (``rnas init-store``, which runs beside the fork server's start) need not import torch."""
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
