"""Report section "RNAS: noise vs adversarial search": the cost and the result of the RNAS
search with noise examples (run ``rnas``) next to the same search with PGD examples (run
``rnas_adv``), the saving the RNAS abstract claims (docs/methods/rnas.md).

Search time is ``search_seconds`` of each seed's ``search.json`` (wall-clock seconds of the
search loop, resumed runs included) and, where every seed of both runs has it,
``search_cpu_seconds`` (the CPU time of the search's threads, which another job on the machine
moves less than wall clock; the time ratio is then stated on it); accuracies are ``clean_acc`` and ``robust_acc`` (worst
case over the L∞ attacks) of each seed's ``eval.json``, fractions shown in percent. Several
seeds: mean over the seeds that have both files.
"""

from __future__ import annotations

import json
import statistics

from rnas import paths
from rnas.config import Params

NOISE_RUN = "rnas"
ADV_RUN = "rnas_adv"


def _run_values(params: Params, run: str) -> dict[str, list[float]] | None:
    """Per-seed search seconds and accuracies of ``run``, or None when it has no results."""
    out: dict[str, list[float]] = {"search_seconds": [], "search_cpu_seconds": [], "clean_acc": [], "robust_acc": []}
    for seed in params.pipeline.seeds:
        search_f, eval_f = paths.search_log(params, run, seed), paths.eval_file(params, run, seed)
        if not (search_f.exists() and eval_f.exists()):
            continue
        search, ev = json.loads(search_f.read_text()), json.loads(eval_f.read_text())
        out["search_seconds"].append(float(search["search_seconds"]))
        if "search_cpu_seconds" in search:
            out["search_cpu_seconds"].append(float(search["search_cpu_seconds"]))
        for key in ("clean_acc", "robust_acc"):
            out[key].append(float(ev[key]))
    return out if out["search_seconds"] else None


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def noise_vs_adversarial_markdown(params: Params) -> str:
    """The section as Markdown, or "" when either run is not in ``pipeline.runs`` or has no
    results yet."""
    if NOISE_RUN not in params.pipeline.runs or ADV_RUN not in params.pipeline.runs:
        return ""
    noise, adv = _run_values(params, NOISE_RUN), _run_values(params, ADV_RUN)
    if noise is None or adv is None:
        return ""
    # CPU seconds only where every seed of both runs has them (files of older runs lack the key)
    cpu = all(len(v["search_cpu_seconds"]) == len(v["search_seconds"]) for v in (noise, adv))
    lines = [
        "### RNAS: noise vs adversarial search",
        "",
        "The same RNAS search (α: CE(clean) + λ·R) fed noise examples (`rnas`) or PGD examples "
        "(`rnas_adv`); both architectures retrained and evaluated alike. Search time in seconds of wall "
        "clock" + (" and of CPU (the search's threads)" if cpu else "") + "; accuracies in % (worst case "
        "over the L∞ attacks for 'robust').",
        "",
        "| run | examples | seeds | search s |" + (" search CPU s |" if cpu else "") + " clean | robust |",
        "|---|---|---|---|" + ("---|" if cpu else "") + "---|---|",
    ]
    for run, label, v in ((NOISE_RUN, "noise", noise), (ADV_RUN, "adversarial (PGD)", adv)):
        lines.append(
            f"| {run} | {label} | {len(v['search_seconds'])} | {_mean(v['search_seconds']):.0f} | "
            + (f"{_mean(v['search_cpu_seconds']):.0f} | " if cpu else "")
            + f"{100 * _mean(v['clean_acc']):.1f} | {100 * _mean(v['robust_acc']):.1f} |"
        )
    key = "search_cpu_seconds" if cpu else "search_seconds"
    t_noise, t_adv = _mean(noise[key]), _mean(adv[key])
    if t_noise > 0 and t_adv > 0:
        lines += [
            "",
            f"The noise search took {t_noise / t_adv:.2f}× the {'CPU ' if cpu else ''}time of the adversarial one "
            f"({t_adv / t_noise:.1f}× faster); robust accuracy "
            f"{100 * (_mean(noise['robust_acc']) - _mean(adv['robust_acc'])):+.1f} points, clean accuracy "
            f"{100 * (_mean(noise['clean_acc']) - _mean(adv['clean_acc'])):+.1f} points (noise − adversarial).",
        ]
    lines.append("")
    return "\n".join(lines)
