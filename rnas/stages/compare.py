"""``rnas compare``: the report's results table, read back from the MLflow store.

For the dataset's experiment it takes the latest FINISHED evaluate-stage run per (run, seed)
(``mlflow.search_runs`` filtered on the ``stage`` tag), with search and retrain times from
the latest search/retrain runs, and prints the same table as ``results/report.md`` -- the
check that the store alone holds every number the report shows."""

from __future__ import annotations

import argparse
import sys

from rnas.config import load_params
from rnas.stages import add_params_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_params_argument(p)
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow store to read (default: tracking.store or MLFLOW_TRACKING_URI)"
    )


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    from rnas.report.collect import rows_from_mlflow
    from rnas.report.table import markdown_table, sanity_failures

    rows = rows_from_mlflow(params, args.tracking_uri)
    if not rows:
        print("rnas compare: no finished evaluate runs in the MLflow store", file=sys.stderr)
        return 1
    print(markdown_table(rows))
    failures = sanity_failures(rows)
    if failures:
        print(f"\n{len(failures)} sanity check failure(s):")
        for line in failures:
            print("  ✗ " + line.replace("**", "").replace("`", ""))
    return 0
