"""Report section "Did the searches decide?": per search, the epoch from which its derived
architecture stopped changing (``stable_from_epoch`` in ``search.json``, see
:mod:`rnas.search.stability`), whether that happened before the last quarter of the search
(*decided*), how often the decision changed, which of its entries (an op, an input, a width)
still moved in the last quarter (none exactly when decided: one near-tie or the whole cell?),
and the final entropy of softmax(α) as a share of
the uniform distribution's (``alphas.json``; 100%: softmax(α) uniform, as when a search did not move α).

An undecided search returns an architecture that the next epoch could have changed: its
comparison with other methods says little about the method. The table flags it.

LRNAS moves α by small steps of its contribution estimates (no gradient) and its greedy selection
ranks the per-edge maxima of α itself, not softmax(α): H(α) stays near 100% whether or not the
selection settles. A second table says why it does or does not (:func:`lrnas_diagnostics`): how
far consecutive estimates agree, how far apart the edges sit in the selection's order, and how
large α's step still is where the last quarter begins.
"""

from __future__ import annotations

import json
import math
import re
import statistics

from rnas import paths
from rnas.config import Params
from rnas.report.cells import entropy
from rnas.runs import resolve_run
from rnas.search.stability import last_quarter_start
from rnas.space.genotype import num_edges


def _json(path):
    return json.loads(path.read_text()) if path.is_file() else None


def _entropy_share(alphas: dict | None, kind: str) -> str:
    rows = (alphas or {}).get(kind)
    if not rows:
        return "–"
    h = sum(entropy(r) for r in rows) / len(rows)
    return f"{100 * h / math.log(len(rows[0])):.0f}%"


def _side_choices(search: dict, epochs: int) -> str:
    """The other choices' stability, e.g. "tutors: 7/8, 6 changes" (RNAS-CL), or "–"."""
    side = search.get("side_stability") or {}
    return (
        "; ".join(
            f"{name}: {s['stable_from_epoch']}/{epochs}{'' if s.get('decided') else ' (unsettled)'}, "
            f"{s.get('decision_changes', '–')} changes"
            for name, s in side.items()
        )
        or "–"
    )


def _late_moved(search: dict) -> str:
    """ "k of n" entries of the decision that moved in the last quarter, or "–" (not recorded)."""
    if "late_changed" not in search:
        return "–"
    return f"{len(search['late_changed'])} of {search.get('decision_entries', '?')}"


LATE_PATHS_SHOWN = 6


_GENOTYPE_ENTRY = re.compile(r"^(normal|reduce)\[(\d+)\]\[([01])\]$")


def _node_weights(snapshot: dict, kind: str, node: int) -> list[list[float]]:
    """softmax(α) of the edges into ``node`` (one row per input), scaled by PC-DARTS's edge weights
    where the snapshot has them, as :func:`rnas.space.genotype.derive_genotype` sees them."""
    rows, edges = snapshot.get(kind) or [], snapshot.get(f"{kind}_edges")
    start = num_edges(node)  # node's first row
    return [
        [w * (edges[start + src] if edges else 1.0) for w in rows[start + src]]
        for src in range(node + 2)
        if start + src < len(rows)
    ]


def _parse_entry(path: str, genotype: dict | None, alphas: dict | None) -> tuple[str, int, int, int, list[int]] | None:
    """(cell type, k, 0 for the op / 1 for the input, the final input, the non-``none`` op indices)."""
    match = _GENOTYPE_ENTRY.match(path)
    if not match or not genotype or not alphas or not alphas.get("primitives"):
        return None
    kind, k, part = match.group(1), int(match.group(2)), int(match.group(3))
    cell = genotype.get(kind)
    if not cell or k >= len(cell):
        return None
    ops = [i for i, name in enumerate(alphas["primitives"]) if name != "none"]
    return kind, k, part, int(cell[k][1]), ops


def _entry_values(parsed: tuple[str, int, int, int, list[int]], primitives: list[str], snapshot: dict) -> dict | None:
    """What decides one genotype entry (:func:`_parse_entry`) in ``snapshot``: for an op, each
    non-``none`` op's weight on the edge (by op name); for an input, each input's strength, its best
    non-``none`` weight."""
    kind, k, part, src, ops = parsed
    weights = _node_weights(snapshot, kind, k // 2)
    if src >= len(weights):
        return None
    if part == 0:
        return {primitives[i]: weights[src][i] for i in ops}
    return {f"input {s}": max(row[i] for i in ops) for s, row in enumerate(weights)}


def entry_margin(path: str, genotype: dict | None, alphas: dict | None) -> str | None:
    """How close the final decision of one genotype entry was, from the final softmax(α)
    (``alphas.json``, scaled by PC-DARTS's edge weights where it has them, as the derivation is):
    for ``cell[k][0]``, the op of the cell's k-th kept edge, the chosen op's weight against the
    strongest other non-``none`` op on that edge ("skip_connect 0.391 vs sep_conv_3x3 0.352"); for
    ``cell[k][1]``, its input, that edge's strength (its best non-``none`` weight) against the
    strongest input of node k // 2 left out ("input 1 0.412 vs input 2 0.405"). None where the
    entry is not such a path (a width, a fixed output list) or the files do not hold it."""
    parsed = _parse_entry(path, genotype, alphas)
    values = _entry_values(parsed, alphas["primitives"], alphas) if parsed else None
    if not values:
        return None
    kind, k, part, src, _ = parsed
    if part == 0:
        chosen = genotype[kind][k][0]
        other = max((name for name in values if name != chosen), key=values.__getitem__)
        return f"{chosen} {values[chosen]:.3f} vs {other} {values[other]:.3f}"
    kept = {f"input {int(edge[1])}" for edge in genotype[kind][2 * (k // 2) : 2 * (k // 2) + 2]}
    dropped = [name for name in values if name not in kept]
    if not dropped:
        return None
    best = max(dropped, key=values.__getitem__)
    return f"input {src} {values[f'input {src}']:.3f} vs {best} {values[best]:.3f}"


def decided_by(path: str) -> str:
    """What decides a genotype entry: its edge's ops for an op (``cell[k][0]``: the path itself),
    node k // 2's input strengths for an input (``cell[k][1]``), which both inputs of one node
    share ("normal node 1 inputs"). Other paths (widths, output lists) decide themselves."""
    match = _GENOTYPE_ENTRY.match(path)
    if not match or match.group(3) == "0":
        return path
    return f"{match.group(1)} node {int(match.group(2)) // 2} inputs"


def entry_series(path: str, genotype: dict | None, alphas: dict | None, top: int = 3) -> dict[str, list[float]]:
    """Per epoch (``alphas.json``'s ``per_epoch``), the values that decide one genotype entry
    (:func:`entry_margin`), each as a list over epochs: the final choice first (the entry's op,
    or its input), then the edge's other ops, or the node's other inputs, by their final value,
    ``top`` in all. Empty where the files do not hold it."""
    parsed = _parse_entry(path, genotype, alphas)
    per_epoch = (alphas or {}).get("per_epoch") or []
    if parsed is None or not per_epoch:
        return {}
    series = [_entry_values(parsed, alphas["primitives"], snapshot) for snapshot in per_epoch]
    if any(s is None for s in series):
        return {}
    kind, k, part, src, _ = parsed
    chosen = genotype[kind][k][0] if part == 0 else f"input {src}"
    others = sorted((name for name in series[-1] if name != chosen), key=lambda name: -series[-1][name])
    return {name: [s[name] for s in series] for name in [chosen, *others][:top]}


def _late_paths(search: dict, genotype: dict | None = None, alphas: dict | None = None) -> str:
    paths_ = search.get("late_changed") or []

    def shown_entry(path: str) -> str:
        margin = entry_margin(path, genotype, alphas)
        return f"`{path}` ({margin})" if margin else f"`{path}`"

    shown = ", ".join(shown_entry(p) for p in paths_[:LATE_PATHS_SHOWN])
    return shown + (f" and {len(paths_) - LATE_PATHS_SHOWN} more" if len(paths_) > LATE_PATHS_SHOWN else "")


def lrnas_diagnostics(contributions: dict, history: list[dict], step_size: float, epochs: int) -> dict[str, float]:
    """Why an LRNAS selection settles or not, from its ``contributions.json`` and the search's
    per-epoch ``history`` (``shapley_step_factor``: the schedule's factor of the step ``step_size``).

    ``agreement``: mean Pearson r of consecutive estimates V̂ over the primitives (0: each estimate
    is noise to the next). ``order_gap``: median difference between neighbours in the sorted
    per-edge maxima of α of both cell types, the order in which the greedy selection takes edges
    (and with it, under the budget, which edges get parametric ops). ``late_step``: median over
    the primitives of α's step η·f·|V| at the first estimate inside the last quarter of the search
    (:func:`~rnas.search.stability.last_quarter_start`). Where ``late_step`` is not small against
    ``order_gap``, the last quarter's estimates can still reorder the selection. A figure that
    cannot be computed (fewer than two estimates, no estimate in the last quarter) is NaN."""
    values = contributions.get("value") or []
    pairs = []
    for a, b in zip(values, values[1:]):
        try:
            pairs.append(statistics.correlation(a, b))
        except statistics.StatisticsError:  # a constant estimate has no correlation
            continue
    maxima = sorted(max(row) for kind in ("normal", "reduce") for row in contributions.get("alpha", {}).get(kind, []))
    gaps = [hi - lo for lo, hi in zip(maxima, maxima[1:])]
    start = last_quarter_start(epochs)
    late = next(
        (
            (epoch, momentum)
            for epoch, momentum in zip(contributions.get("epochs", []), contributions.get("momentum", []))
            if start <= epoch < len(history)
        ),
        None,
    )
    late_step = math.nan
    if late:
        epoch, momentum = late
        factor = history[epoch].get("shapley_step_factor", math.nan)
        late_step = step_size * factor * statistics.median(abs(v) for v in momentum)
    return {
        "agreement": statistics.fmean(pairs) if pairs else math.nan,
        "order_gap": statistics.median(gaps) if gaps else math.nan,
        "late_step": late_step,
    }


def _lrnas_markdown(rows: list[tuple[str, int, dict[str, float]]]) -> list[str]:
    if not rows:
        return []

    def fmt(v: float, digits: int) -> str:
        return "–" if math.isnan(v) else f"{round(v, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.00"

    return [
        "",
        "LRNAS moves α by small steps of its contribution estimates and selects by α itself, not "
        "softmax(α), so its H(α) stays near 100%. Whether its selection can settle: *agreement*, the "
        "mean correlation of consecutive contribution estimates over the primitives (0: noise); "
        "*order gap*, the median α difference between neighbouring edges in the order in which the "
        "greedy selection takes them (under the budget, that order decides which edges get "
        "parametric ops); *late step*, α's median step at the first estimate in the last quarter of "
        "the search. A late step that is not small against the order gap can still reorder the selection.",
        "",
        "| run | seed | agreement (r) | order gap (α) | late step (α) |",
        "|---|---|---|---|---|",
        *(
            f"| {run} | {seed} | {fmt(d['agreement'], 2)} | {fmt(d['order_gap'], 4)} | {fmt(d['late_step'], 4)} |"
            for run, seed, d in rows
        ),
    ]


def _decided_count(rows: int, decided: int, selections: int, selections_decided: int) -> str:
    """The headline count: searches proper, and apart from them the budget selections made
    from one of those searches (each its own decision under its own λ, yet not a search)."""
    searches, searched_decided = rows - selections, decided - selections_decided
    if not selections:
        return f"**{searched_decided} of {searches} searches decided.**"
    return (
        f"**{searched_decided} of {searches} searches decided**, and {selections_decided} of {selections} "
        "budget selections made from them."
    )


def decisions_markdown(params: Params) -> str:
    """The section as Markdown, or "" when no search has written its stability yet."""
    lines, undecided, lrnas_rows, moved = [], [], [], []
    selections = [0, 0]  # budget selections made from another run's search: [made, decided]
    for run in params.pipeline.runs:
        spec = resolve_run(run)
        if spec.arch_from:
            continue
        for seed in params.pipeline.seeds:
            search = _json(paths.search_log(params, run, seed))
            if not search or "stable_from_epoch" not in search:
                continue
            history = search.get("history", [])
            epochs = len(history) or params.search.epochs
            folder = paths.arch_file(params, run, seed).parent
            alphas = _json(folder / "alphas.json")
            contributions = _json(folder / "contributions.json") if spec.method == "lrnas" else None
            if contributions and not spec.select_from:  # a budget run's figures are its search's
                eta = params.search.methods.lrnas.step_size
                lrnas_rows.append((run, seed, lrnas_diagnostics(contributions, history, eta, epochs)))
            decided = bool(search.get("decided"))
            if spec.select_from:
                selections[0] += 1
                selections[1] += decided
            if not decided:
                undecided.append(f"{run} (seed {seed})")
                if search.get("late_changed"):
                    genotype = _json(paths.arch_file(params, run, seed)) if alphas and spec.method != "lrnas" else None
                    moved.append(f"- {run} (seed {seed}): {_late_paths(search, genotype, alphas)}")
            lines.append(
                f"| {run} | {seed} | {search['stable_from_epoch']}/{epochs} | "
                f"{'yes' if decided else '**no**'} | {search.get('decision_changes', '–')} | {_late_moved(search)} | "
                f"{_entropy_share(alphas, 'normal')} | {_entropy_share(alphas, 'reduce')} | "
                f"{_side_choices(search, epochs)} |"
            )
    if not lines:
        return ""
    sources = {run: resolve_run(run).select_from for run in params.pipeline.runs}
    shared = {run: source for run, source in sources.items() if source}
    shared_note = (
        [
            "",
            ", ".join(shared)
            + ": no search of their own; each selects under its own budget from the search of "
            + ", ".join(dict.fromkeys(shared.values()))
            + " with the same seed, after every epoch as at the end, so its stability is that of its "
            "selection on that search's α (LRNAS's budget acts in the selection only).",
        ]
        if shared
        else []
    )
    head = [
        "### Did the searches decide?",
        "",
        "Stable from: the first epoch from which the derived architecture (argmax genotype; the widths of "
        "RNAS-CL's width space; LRNAS's greedy selection) no longer changed. Decided: stable over the whole"
        " last quarter of the search. Moved late: how many entries of the decision (a cell's kept edges' "
        "ops and inputs, `normal[k][0]` and `normal[k][1]` for its k-th edge, i.e. node k // 2; a width) "
        "differed from the final one in the last quarter or the epoch before it, of all its entries (a "
        "genotype's 40 include the cells' fixed output lists): 0 exactly when decided, a "
        "few for a near-tie between two ops or inputs. H(α): final mean entropy of softmax(α) per edge as a"
        " share of the uniform one (100%: softmax(α) is uniform). Other choices: what a search decides "
        "beside the network (RNAS-CL's tutor of each student layer, used in retraining), with its own "
        "stable-from epoch; it does not count towards decided.",
        "",
        _decided_count(len(lines), len(lines) - len(undecided), *selections)
        + (f" Undecided: {', '.join(undecided)}." if undecided else ""),
        *shared_note,
        "",
        "| run | seed | stable from epoch | decided | changes | moved late | H(α) normal | H(α) reduce "
        "| other choices |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    late = (
        [
            "",
            "What still moved in the last quarter of each undecided search, with how close the final "
            "choice was in softmax(α) (an op against the edge's next-best op, an input against the "
            "node's strongest input left out):",
            "",
            *moved,
            "",
            "Whether the entry left open matters: "
            + (
                "the section *The cell an undecided search left open* retrains and evaluates the cell each "
                "undecided gradient search chose before its final one."
                if params.pipeline.alternative_cells
                else "`pipeline.alternative_cells: true` (on in `configs/digits_full.yaml`) retrains and "
                "evaluates the cell each undecided gradient search chose before its final one."
            ),
        ]
        if moved
        else []
    )
    return "\n".join(head + lines + late + _lrnas_markdown(lrnas_rows) + [""])
