"""Does bf16 autocast change what a search finds and how robust it is? (issue 17's accuracy check
of ``pipeline.amp``; benchmarks/README.md, "bf16 autocast on the CPU").

For each seed, one run (default ``darts``) goes through the pipeline's own stages twice, as
``rnas search``, ``rnas retrain`` and ``rnas evaluate`` in their own processes: once with the
params file as it is (``pipeline.amp: false``, float32) and once with ``pipeline.amp: true``
(bf16 autocast of the search and training steps; the evaluation's attacks stay float32). Each
precision gets its own results folder and MLflow store under ``--out``. Printed per seed: whether
the derived cells are the same (the genotype entries that differ, counted as the report counts
them: :func:`rnas.search.stability.changed_entries`), the search's stable-from epoch, the stage seconds, clean and
robust accuracy; then bf16 − float32 over the seeds (paired per example, the report's
:func:`rnas.report.stats.compare_paired`: a McNemar test per seed, a t interval over seeds)
beside the float32 seeds' own spread, and a verdict: bf16 changes results *within seed noise*
when the interval holds 0 and the mean difference is no larger than the float32 seeds' standard
deviation, else *beyond seed noise*.

Needs what the stages need to autocast (:func:`rnas.runtime.amp_supported`: CUDA, or a CPU
whose /proc/cpuinfo names ``avx512_bf16`` or ``amx_bf16``); elsewhere ``pipeline.amp`` is ignored
(float32) and the comparison would be empty, so it stops with the reason. A statistical check
that takes minutes (11 on a 2-core Intel Xeon with AMX for three seeds of ``darts`` at the digits
default), not a timing; the stage seconds are
a by-product, comparable only on an idle machine.

    python -m benchmarks.amp_accuracy --seeds 0,1,2 --jobs 2 --out /tmp/rnas-amp
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rnas.search.stability import changed_entries

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {"float32": False, "bf16": True}  # name -> pipeline.amp
STAGES = ("search", "retrain", "evaluate")


def native_bf16(device: str) -> tuple[bool, str]:
    """Whether the stages would autocast on ``device`` (the params file's ``pipeline.device``, chosen
    as they choose it), and why not."""
    from rnas.runtime import amp_supported, choose_device

    chosen = choose_device(device)
    return amp_supported(chosen), f"pipeline.amp is ignored on this {chosen.type} (no avx512_bf16 or amx_bf16 flag)"


def write_variant(params_file: Path, out: Path, precision: str) -> Path:
    """``params_file`` with ``pipeline.amp`` set for ``precision`` and its own results folder."""
    raw = yaml.safe_load(params_file.read_text())
    raw.setdefault("pipeline", {})
    raw["pipeline"]["amp"] = PRECISIONS[precision]
    raw["pipeline"]["results"] = str(out / precision / "results")
    path = out / precision / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def rnas_command(args: list[str], store: Path, log: Path) -> float:
    """``rnas ARGS`` in its own process (no fork server) with its MLflow store; its wall seconds.
    Raises with the log's tail when the command fails."""
    env = {k: v for k, v in os.environ.items() if k != "RNAS_FORKSERVER"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ rnas {' '.join(args)}\n")
        f.flush()
        code = subprocess.call([sys.executable, "-m", "rnas.cli", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"rnas {' '.join(args)} exited {code}; the end of {log}:\n{tail}")
    return time.perf_counter() - t0


def chain(params_file: Path, run: str, seed: int) -> dict[str, float]:
    """search -> retrain -> evaluate of one run and seed; seconds per stage."""
    store = params_file.parent / "mlflow.db"
    log = params_file.parent / f"{run}_{seed}.log"
    common = ["--params", str(params_file), "--run", run, "--seed", str(seed)]
    return {stage: rnas_command([stage, *common], store, log) for stage in STAGES}


def outcome(params_file: Path, run: str, seed: int) -> dict[str, Any]:
    """What one chain produced: the architecture, the search's stability, the per-example flags."""
    from rnas import paths
    from rnas.config import load_params
    from rnas.evaluation.flags import read_flags

    params = load_params(params_file)
    search = json.loads(paths.search_log(params, run, seed).read_text())
    flags, _ = read_flags(paths.flags_file(params, run, seed))
    return {
        "architecture": json.loads(paths.arch_file(params, run, seed).read_text()),
        "stable_from_epoch": search.get("stable_from_epoch"),
        "flags": {k: v.astype(float) for k, v in flags.items()},
    }


def cell_differences(a: dict[str, Any], b: dict[str, Any]) -> int:
    """The genotype entries (each kept edge's op and input, the concat lists) that differ, as the
    report counts them; 0 for the same architecture."""
    return len(changed_entries(a, b))


def _mean_differences(results, seeds: list[int], against: str | None = None) -> str:
    """The mean count of differing cell entries: per seed float32 against ``against``, or (None)
    over every pair of float32 seeds, which is how far another seed moves the cell."""
    arch = {name: {s: r["architecture"] for s, r in per_seed.items()} for name, per_seed in results.items()}
    if against is None:
        pairs = [(arch["float32"][a], arch["float32"][b]) for a, b in itertools.combinations(seeds, 2)]
    else:
        pairs = [(arch["float32"][s], arch[against][s]) for s in seeds]
    return f"{np.mean([cell_differences(a, b) for a, b in pairs]):.1f}"


def compare(results: dict[str, dict[int, dict[str, Any]]], seeds: list[int], scores=("clean", "robust")):
    """bf16 − float32 per score over the seeds, and the float32 seeds' standard deviation."""
    from rnas.report.stats import compare_paired

    out = {}
    for score in scores:
        f32 = [results["float32"][s]["flags"][score] for s in seeds]
        b16 = [results["bf16"][s]["flags"][score] for s in seeds]
        c = compare_paired(score, b16, f32, seeds)
        spread = float(np.std([f.mean() for f in f32], ddof=1)) if len(seeds) > 1 else math.nan
        within = c.ci[0] <= 0.0 <= c.ci[1] and (math.isnan(spread) or abs(c.diff) <= spread)
        out[score] = {"comparison": c, "float32_seed_sd": spread, "within_seed_noise": within}
    return out


def markdown(run: str, seeds: list[int], results, seconds, summary) -> str:
    lines = [
        "| seed | same cells (entries differing) | stable from float32 / bf16 | search s float32 / bf16 | "
        "retrain s float32 / bf16 | clean % float32 / bf16 | robust % float32 / bf16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in seeds:
        f, b = results["float32"][s], results["bf16"][s]
        d = cell_differences(f["architecture"], b["architecture"])
        lines.append(
            f"| {s} | {'yes' if d == 0 else 'no'} ({d}) | {f['stable_from_epoch']} / {b['stable_from_epoch']} | "
            f"{seconds['float32'][s]['search']:.0f} / {seconds['bf16'][s]['search']:.0f} | "
            f"{seconds['float32'][s]['retrain']:.0f} / {seconds['bf16'][s]['retrain']:.0f} | "
            f"{100 * f['flags']['clean'].mean():.1f} / {100 * b['flags']['clean'].mean():.1f} | "
            f"{100 * f['flags']['robust'].mean():.1f} / {100 * b['flags']['robust'].mean():.1f} |"
        )
    lines += ["", f"bf16 − float32 over seeds {', '.join(map(str, seeds))} (`{run}`):", ""]
    if len(seeds) > 1:
        lines.append(
            f"- cells: bf16 against float32 differ in {_mean_differences(results, seeds, 'bf16')} entries a seed; "
            f"float32 seeds against each other, {_mean_differences(results, seeds)}"
        )
    for score, r in summary.items():
        c = r["comparison"]
        lines.append(
            f"- {score}: {100 * c.diff:+.1f} points, 95% interval [{100 * c.ci[0]:+.1f}, {100 * c.ci[1]:+.1f}], "
            f"p {c.p:.2f} ({c.test}); the float32 seeds' sd {100 * r['float32_seed_sd']:.1f} points: "
            f"**{'within' if r['within_seed_noise'] else 'beyond'} seed noise**"
        )
    for stage in ("search", "retrain"):
        ratio = [seconds["bf16"][s][stage] / seconds["float32"][s][stage] for s in seeds]
        lines.append(f"- {stage} seconds bf16 / float32: {', '.join(f'{x:.2f}' for x in ratio)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.amp_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    p.add_argument("--run", default="darts", help="a run without a teacher (default darts)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    p.add_argument("--jobs", type=int, default=2, help="chains at once, one torch thread each (default 2)")
    p.add_argument("--out", type=Path, required=True, help="a new folder for the two results folders and stores")
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)

    from rnas.config import load_params
    from rnas.runs import resolve_run

    params = load_params(args.params)
    if resolve_run(args.run).needs_teacher:
        p.error(f"--run {args.run} needs the teacher; pick a run without one (darts, dsrna_*, rnas, lrnas)")
    ok, why = native_bf16(params.pipeline.device)
    if not ok:
        print(f"skipped: {why}: bf16 autocast would run in float32 here, so there is nothing to compare")
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"--out {args.out} is not empty: the stages would resume from what is there")
    files = {name: write_variant(args.params, args.out, name) for name in PRECISIONS}
    for f in files.values():
        rnas_command(["init-store", "--params", str(f)], f.parent / "mlflow.db", f.parent / "init-store.log")

    jobs = [(name, s) for s in seeds for name in PRECISIONS]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        done = dict(zip(jobs, pool.map(lambda j: chain(files[j[0]], args.run, j[1]), jobs), strict=True))
    seconds = {name: {s: done[(name, s)] for s in seeds} for name in PRECISIONS}
    results = {name: {s: outcome(files[name], args.run, s) for s in seeds} for name in PRECISIONS}
    table = markdown(args.run, seeds, results, seconds, compare(results, seeds))
    print(table)
    print(f"\n{len(jobs)} chains in {time.perf_counter() - t0:.0f} s; files under {args.out}")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
