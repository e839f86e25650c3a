"""Does an LRNAS selection settle under some budget? (docs/methods/lrnas.md, "The budget is not
what moves late").

For each seed's ``lrnas`` search in the results folder of a params file and each budget λ of a
list, the greedy selection after every epoch, replayed from the α the search kept
(:func:`rnas.search.methods.lrnas.select_from_search`, as a budget run ``lrnas_<λ>`` makes it):
the stable-from epoch, whether the selection decided, and the final network's parameters.
Nothing is trained (milliseconds per λ and seed); the ``lrnas`` searches must have run.

    python -m benchmarks.lrnas_budgets --params configs/digits_full.yaml --budgets 7k,10k,15k,20k,60k,1000M
"""

from __future__ import annotations

import argparse
from typing import Any

from rnas import paths
from rnas.config import Params, load_params, search_for
from rnas.data import get_info
from rnas.runs import parse_budget
from rnas.search.methods.lrnas import final_network_cost, select_from_search
from rnas.search.stability import decision_digest, stability_summary


def budget_table(params: Params, budgets: list[int], seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """One row per λ: per seed the stable-from epoch, decided, and the final network's parameters."""
    cost = final_network_cost(params, get_info(params.data.dataset))
    epochs = search_for(params, "lrnas").epochs
    rows = []
    for budget in budgets:
        row: dict[str, Any] = {"budget": budget, "seeds": []}
        for seed in seeds if seeds is not None else params.pipeline.seeds:
            shared = select_from_search(paths.run_dir(params, "lrnas", seed), f"λ = {budget}", budget, cost)
            summary = stability_summary([decision_digest(v) for v in shared.decision_values], epochs)
            row["seeds"].append(
                {
                    "seed": seed,
                    "stable_from_epoch": summary["stable_from_epoch"],
                    "decided": summary["decided"],
                    "params": shared.selection.params,
                }
            )
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], epochs: int) -> str:
    seeds = [s["seed"] for s in rows[0]["seeds"]] if rows else []
    lines = [
        f"Stable from epoch (of {epochs}; * decided) and the final network's parameters, per seed.",
        "",
        "| λ | " + " | ".join(f"seed {s}" for s in seeds) + " | parameters |",
        "|---|" + "---|" * len(seeds) + "---|",
    ]
    for row in rows:
        cells = [f"{s['stable_from_epoch']}{' *' if s['decided'] else ''}" for s in row["seeds"]]
        params = " / ".join(f"{s['params']:,}" for s in row["seeds"])
        lines.append(f"| {row['budget']:,} | " + " | ".join(cells) + f" | {params} |")
    decided = sum(s["decided"] for row in rows for s in row["seeds"])
    lines += ["", f"{decided} of {sum(len(row['seeds']) for row in rows)} (λ, seed) pairs decided."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml", help="the params file whose results folder holds the searches")
    p.add_argument("--budgets", default="7k,10k,15k,20k,30k,60k,1000M", help="comma-separated λ (e.g. 10k, 2M)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: pipeline.seeds)")
    args = p.parse_args(argv)
    params = load_params(args.params)
    budgets = [parse_budget(b.strip()) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    print(markdown(budget_table(params, budgets, seeds), search_for(params, "lrnas").epochs), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
