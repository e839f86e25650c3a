"""``rnas report``: every run side by side in ``results/report.md`` and the self-contained
``results/report.html``, with the plots under ``results/plots/`` (see :mod:`rnas.report.build`).

The report stage is an MLflow run of its own (stage ``report``) carrying the report and the
plots as artifacts, a child of the pipeline invocation's parent run like every stage."""

from __future__ import annotations

import argparse

from rnas.config import load_params
from rnas.pipeline import stage_keys
from rnas.report.build import build_report
from rnas.stages import add_params_argument
from rnas.stages.common import log
from rnas.tracking import stage_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_params_argument(p)


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    with stage_run(
        params, "report", run="report", method="report", variant="all", seed=0, keys=stage_keys("report")
    ) as tracker:
        out = build_report(params)
        tracker.log_metrics({"sanity_failures": len(out.failures)})
        tracker.set_tags({"sanity": "FAIL" if out.failures else "pass"})
        tracker.log_artifact(out.markdown)
        tracker.log_artifact(out.html)
        for png in out.plots:
            tracker.log_artifact(png, "plots")
    for line in out.failures:
        log.warning("sanity check failed: %s", line.replace("**", "").replace("`", ""))
    log.info("report -> %s and %s", out.markdown, out.html)
    return 0
