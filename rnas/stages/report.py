"""``rnas report``: every run side by side in ``results/report.md``."""

from __future__ import annotations

import argparse

from rnas import paths
from rnas.config import load_params
from rnas.report.rnas_noise import noise_vs_adversarial_markdown
from rnas.report.table import collect, markdown_table
from rnas.stages.common import add_params_argument, log


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_params_argument(p)


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    rows = collect(params)
    e = params.evaluate
    n = rows[0].evals[0].get("n_examples") if rows else 0
    text = [
        f"# rnas report: {params.data.dataset}",
        "",
        f"Accuracies in % on the same {n} test examples; L∞ ε = {e.epsilon:.4g}, L2 radius = {e.epsilon_l2:.4g} "
        "(pixel units, inputs in [0, 1]). One seed: value [95% Wilson interval]; several: mean ± std. "
        "'worst case' counts an example robust only if every L∞ attack failed on it.",
        "",
        markdown_table(rows),
        "",
    ]
    text.append(noise_vs_adversarial_markdown(params))
    out = paths.report_md(params)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    log.info("report -> %s", out)
    return 0
