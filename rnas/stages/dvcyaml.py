"""``rnas dvc-yaml``: write dvc.yaml for a params file, or ``--check`` that it is up to date.

dvc.yaml takes seeds, dataset and results folder from params.yaml through dvc's templating; the
runs, each stage's params keys and its code inputs are written out (:func:`rnas.dag.dvc_yaml`).
dvc's report stage runs ``--check`` first, so a ``dvc exp run -S pipeline.runs=[...]`` or an
edited import stops with what to do instead of running an old DAG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnas.config import load_params
from rnas.dag import dvc_yaml_problems, render_dvc_yaml
from rnas.stages import add_params_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_params_argument(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default="-", help="output file (default: stdout)")
    out.add_argument(
        "--check",
        metavar="DVC_YAML",
        help="exit 1 if this dvc.yaml's stages differ from what the params and the code make now",
    )


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if args.check:
        problems = dvc_yaml_problems(args.check, params, args.params)
        for line in problems:
            print(f"rnas dvc-yaml: {args.check}: {line}", file=sys.stderr)
        if problems:
            print(
                f"rnas dvc-yaml: {args.check} is out of date (pipeline.runs or a module's imports changed): "
                f"rnas dvc-yaml --params {args.params} --out {args.check}",
                file=sys.stderr,
            )
        return 1 if problems else 0
    root = Path.cwd() if args.out == "-" else Path(args.out).resolve().parent
    text = render_dvc_yaml(params, args.params, root)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    return 0
