"""``rnas pipeline-run start|end``: the MLflow parent run of one pipeline invocation.

``start`` creates the parent run in the dataset's experiment, writes its id to
``<results>/.pipeline_run_id`` and prints it; every stage run started while that file exists
(or while ``RNAS_PARENT_RUN_ID`` is set) becomes its child. ``end --status FINISHED|FAILED``
ends it and removes the file. Snakemake calls them from ``onstart`` / ``onsuccess`` /
``onerror``, so one ``snakemake`` call shows up in the MLflow UI as one parent with a child
per stage job.
"""

from __future__ import annotations

import argparse
import sys

from rnas.config import load_params
from rnas.stages import add_params_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="create the parent run, write results/.pipeline_run_id, print its id")
    add_params_argument(start)
    end = sub.add_parser("end", help="end the parent run and forget it")
    add_params_argument(end)
    end.add_argument("--status", choices=("FINISHED", "FAILED", "KILLED"), default="FINISHED")


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if not params.tracking.enabled:
        print("tracking disabled (tracking.enabled: false)", file=sys.stderr)
        return 0
    from rnas.tracking import end_pipeline_run, start_pipeline_run

    if args.action == "start":
        print(start_pipeline_run(params))
        return 0
    run_id = end_pipeline_run(params, args.status)
    if run_id is None:
        print("rnas pipeline-run end: no pipeline run recorded (nothing to end)", file=sys.stderr)
    else:
        print(f"{run_id} {args.status}")
    return 0
