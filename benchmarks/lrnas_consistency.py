"""How much signal do LRNAS' contribution estimates carry? (docs/methods/lrnas.md, "The value of
a coalition").

Trains the digits supernet through the LRNAS warm-up (the params file's settings), then at the
first estimate draws ``--estimates`` independent estimates V̂ per setting (coalition value ×
examples per permutation), each one permutation on another validation batch, and prints per
setting the mean Pearson correlation of V̂ between two independent estimates, the split-half
correlation (the mean of the first half against the mean of the second) and the seconds per
estimate. Estimates that carry signal agree with each other; r near 0 means the ranking that α
accumulates is noise. A statistical diagnostic, not a timing: run it on an idle machine for the
seconds to mean anything.

    python -m benchmarks.lrnas_consistency --seed 0 --estimates 6
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from rnas.config import load_params, replace
from rnas.runs import resolve_run
from rnas.runtime import seed_everything, setup_runtime
from rnas.search.loop import run_search
from rnas.search.methods.lrnas import LrnasMethod, scoring
from rnas.search.shapley import lrnas_values
from rnas.stages.common import load_data

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = (("accuracy", 16), ("probability", 16), ("accuracy", 64), ("probability", 64))


def pairwise_agreement(estimates: list[np.ndarray]) -> tuple[float, float, float, float]:
    """(mean, min, max) Pearson r over all pairs of estimates, and the split-half r (the mean
    of the first ⌊n/2⌋ estimates against the mean of the next ⌊n/2⌋)."""
    r = [float(np.corrcoef(a, b)[0, 1]) for a, b in itertools.combinations(estimates, 2)]
    h = len(estimates) // 2
    split = float(np.corrcoef(np.mean(estimates[:h], 0), np.mean(estimates[h : 2 * h], 0))[0, 1])
    return float(np.mean(r)), float(np.min(r)), float(np.max(r)), split


def estimates_of(
    method: LrnasMethod, batches: list, value: str, examples: int, n: int, generator: torch.Generator
) -> list[np.ndarray]:
    """``n`` independent estimates V̂ of the method's supernet as it is now: one permutation each
    (:meth:`LrnasMethod.permutation_drops`: the method's FGSM, truncation and coalition stacks),
    on batch j mod len(batches) cut to ``examples``, scored as the method scores
    (:func:`~rnas.search.methods.lrnas.scoring`: modes and BN statistics restored after)."""
    out = []
    with scoring(method.supernet, method.cfg.batch_stats):
        for j in range(n):
            x, y = batches[j % len(batches)]
            drops, _, _ = method.permutation_drops(x[:examples], y[:examples], generator, value)
            out.append(lrnas_values(drops[None]).numpy())
    return out


class _Done(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--estimates", type=int, default=6, help="independent estimates per setting (>= 2)")
    args = ap.parse_args(argv)
    if args.estimates < 2:
        ap.error("--estimates must be at least 2")
    params = load_params(args.params)
    s = params.search
    lr = replace(s.methods.lrnas, permutations=10, batch_size=64)  # 10 validation batches of 64 collected
    params = replace(
        params,
        search=replace(
            s, epochs=lr.warmup_epochs + 1, batch_size=max(s.batch_size, 64), methods=replace(s.methods, lrnas=lr)
        ),
        tracking=replace(params.tracking, enabled=False),
    )
    setup_runtime(1, True, "cpu")
    seed_everything(args.seed)
    splits = load_data(params, args.seed)
    rows = []

    class Probe(LrnasMethod):
        def estimate_contributions(self, epoch: int) -> dict[str, float]:
            gen = torch.Generator().manual_seed(1234 + args.seed)
            for value, examples in SETTINGS:
                t0 = time.perf_counter()
                est = estimates_of(self, self._batches, value, examples, args.estimates, gen)
                rows.append((value, examples, *pairwise_agreement(est), (time.perf_counter() - t0) / args.estimates))
                print(f"{value} {examples}: r {rows[-1][2]:+.3f}", flush=True)
            raise _Done

    ctx = {"params": params, "run": resolve_run("lrnas"), "info": splits.info, "device": torch.device("cpu")}
    try:
        run_search(Probe(), {**ctx, "seed": args.seed, "teacher": None}, splits, progress=False)
    except _Done:
        pass
    print(f"\nseed {args.seed}, {args.estimates} estimates per setting, after {lr.warmup_epochs} warm-up epochs")
    print("| coalition value | examples | pairwise r (min, max) | split-half r | s per estimate |")
    print("|---|---|---|---|---|")
    for value, examples, mean, lo, hi, split, sec in rows:
        print(f"| {value} | {examples} | {mean:+.3f} ({lo:+.2f}, {hi:+.2f}) | {split:+.2f} | {sec:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
