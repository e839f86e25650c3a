"""Report section "Claims": each paper's claims as testable statements, with a verdict.

A claim compares two runs on a per-example score, paired by example (every model sees the same
test examples) and by seed (seed k of one run against seed k of the other). The statistics are
in :mod:`rnas.report.stats`: the effect is the mean over seeds of the accuracy difference, with
its 95% interval and p-value; Holm's correction runs over every directional claim of the
report. Verdicts:

* **supported** -- significant after Holm, in the claimed direction (non-inferiority: the
  interval's lower end above −margin);
* **contradicted** -- significant the other way (non-inferiority: the interval's upper end
  below −margin);
* **inconclusive** -- neither; the table then gives the smallest difference the data could have
  detected (two-sided α = 0.05, power 0.8), so "no difference found" is never read as "no
  difference".

Claims come from a registry (:data:`CLAIMS`); each expands to the runs of ``pipeline.runs``
it needs and is left out when one is missing. Scores (per-example flags in ``flags.json``):

* ``robust`` -- correct under every L∞ attack at ε (the worst case of the protocol);
* ``clean`` -- correct on the clean input;
* ``certified`` -- certified at ε by the bound method of the evaluation;
* ``log_radius`` -- log10 of the example's certified radius (``certified_radius`` in
  ``flags.json``: the largest L∞ ε its bound certifies, found by a root search), an uncertified or
  misclassified example counting as ``evaluate.certify_radius_min``; effects in decades. This is
  the DSRNA certified claim: certified accuracy at the attack ε is 0 for every digits model, the
  radii differ by orders of magnitude;
* ``tradeoff`` -- the mean of ``clean`` and ``robust`` per example (0, ½ or 1): better on one
  without losing as much on the other.

Three claims are not paired accuracy tests: RNAS-CL's premise (the teacher at least 5 points
more robust than every student, a check on the means), the LRNAS budget claim (parameter count non-decreasing
in λ in every seed) and the RNAS cost claim (search seconds, a paired t-test on the log ratio
over seeds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rnas import paths
from rnas.config import Params
from rnas.evaluation.flags import read_flags
from rnas.report.stats import ALPHA, Comparison, compare_paired, holm, t_quantile, t_sf, verdict
from rnas.runs import parse_budget, resolve_run

NONINFERIORITY_MARGIN = 0.02  # a non-inferiority claim allows at most 2 points of loss

# How a score's effect reads: (unit, scale); accuracy-like scores in points.
SCORE_UNITS: dict[str, tuple[str, float]] = {"log_radius": ("decades", 1.0)}

__all__ = ["CLAIMS", "ClaimResult", "claims_markdown", "evaluate_claims"]


@dataclass(frozen=True)
class PairedClaim:
    """``a`` beats (+1) / is below (−1) / is not worse than (0) ``b`` on ``score``."""

    paper: str
    statement: str  # with {a} and {b}
    a: str
    b: str
    score: str
    direction: int


@dataclass
class ClaimResult:
    paper: str
    statement: str
    kind: str  # "paired", "budget", "cost", "premise"
    direction: int = 1
    comparison: Comparison | None = None
    p_adjusted: float | None = None
    verdict: str = "inconclusive"
    detail: str = ""
    effect: float | None = None  # shown in the effect column (points, or a ratio for cost)
    ci: tuple[float, float] | None = None
    p: float | None = None
    mde: float | None = None  # detectable difference at the level the verdict used


# ---------------------------------------------------------------------------------------------
# Reading the runs


def _json(path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _unit(score: str) -> tuple[str, float]:
    return SCORE_UNITS.get(score, ("pts", 100.0))


def _scores(params: Params, run: str) -> dict[int, dict[str, np.ndarray]]:
    """Per seed: the per-example scores of ``run`` (only seeds with a flags file)."""
    out = {}
    floor = params.evaluate.certify_radius_min
    for seed in params.pipeline.seeds:
        f = paths.flags_file(params, run, seed)
        if not f.is_file():
            continue
        flags, values = read_flags(f)
        scores = {k: v.astype(float) for k, v in flags.items()}
        if "certified_radius" in values:
            scores["log_radius"] = np.log10(np.maximum(values["certified_radius"], floor))
        if "clean" in scores and "robust" in scores:
            scores["tradeoff"] = 0.5 * (scores["clean"] + scores["robust"])
        out[seed] = scores
    return out


def _eval_number(params: Params, run: str, seed: int, key: str) -> float | None:
    ev = _json(paths.eval_file(params, run, seed)) or {}
    v = ev.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _search_seconds(params: Params, run: str, seed: int, key: str = "search_seconds") -> float | None:
    s = _json(paths.search_log(params, run, seed)) or {}
    v = s.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None


def _cost_ratios(params: Params, noise: str, adv: str) -> tuple[str, list[float]]:
    """Per-seed search-time ratios ``noise / adv`` and what was timed: the searches' CPU seconds
    (``search_cpu_seconds``) when every seed of both runs has them -- the two runs may have shared
    the machine with different jobs, which moves wall clock more than CPU time -- else the
    wall-clock ``search_seconds`` (files written before the CPU time was recorded)."""
    wall = {s: (_search_seconds(params, noise, s), _search_seconds(params, adv, s)) for s in params.pipeline.seeds}
    timed = [s for s, (a, b) in wall.items() if a is not None and b is not None]
    cpu = {s: tuple(_search_seconds(params, r, s, "search_cpu_seconds") for r in (noise, adv)) for s in timed}
    if timed and all(a is not None and b is not None for a, b in cpu.values()):
        return "CPU", [cpu[s][0] / cpu[s][1] for s in timed]
    return "wall-clock", [wall[s][0] / wall[s][1] for s in timed]


# ---------------------------------------------------------------------------------------------
# The claims


def _rnas_cl_claims(runs: tuple[str, ...]) -> Iterator[PairedClaim]:
    for run in ("rnas_cl", "rnas_cl_cell"):
        yield PairedClaim(
            "RNAS-CL",
            "distillation helps: {a} (distilled) more robust than {b} (same architecture, no distillation)",
            run,
            f"{run}_nokd",
            "robust",
            +1,
        )
        yield PairedClaim("RNAS-CL", "the searched student {a} is more robust than DARTS's", run, "darts", "robust", +1)


def _lrnas_claims(runs: tuple[str, ...]) -> Iterator[PairedClaim]:
    for run in runs:
        if resolve_run(run).method == "lrnas":
            yield PairedClaim("LRNAS", "{a} is more robust than DARTS's architecture", run, "darts", "robust", +1)


def _dsrna_claims(runs: tuple[str, ...]) -> Iterator[PairedClaim]:
    for run in runs:
        if resolve_run(run).method == "dsrna":
            yield PairedClaim("DSRNA", "{a} is more robust than DARTS under attack", run, "darts", "robust", +1)
            yield PairedClaim(
                "DSRNA", "{a} has larger certified radii than DARTS (per example)", run, "darts", "log_radius", +1
            )
            yield PairedClaim("DSRNA", "{a}'s clean accuracy is not lower than DARTS's", run, "darts", "clean", 0)


def _rnas_claims(runs: tuple[str, ...]) -> Iterator[PairedClaim]:
    for run in ("rnas", "rnas_adv"):
        yield PairedClaim("RNAS", "{a} has a better clean–robust trade-off than DARTS", run, "darts", "tradeoff", +1)
    yield PairedClaim(
        "RNAS", "the noise search {a} is not less robust than the adversarial one {b}", "rnas", "rnas_adv", "robust", 0
    )


def _random_claims(runs: tuple[str, ...]) -> Iterator[PairedClaim]:
    for run in runs:
        spec = resolve_run(run)
        if spec.method != "random" and not spec.arch_from:  # ablations are not methods
            yield PairedClaim(
                "reality check", "{a} is more robust than a random architecture", run, "random", "robust", +1
            )


# Each entry yields the paired claims of one paper for the runs of the profile.
CLAIMS: dict[str, Callable[[tuple[str, ...]], Iterator[PairedClaim]]] = {
    "rnas_cl": _rnas_cl_claims,
    "lrnas": _lrnas_claims,
    "dsrna": _dsrna_claims,
    "rnas": _rnas_claims,
    "random": _random_claims,
}


def _paired(
    params: Params, claim: PairedClaim, cache: dict[str, dict[int, dict[str, np.ndarray]]]
) -> ClaimResult | None:
    runs = params.pipeline.runs
    if claim.a not in runs or claim.b not in runs:
        return None
    for run in (claim.a, claim.b):
        if run not in cache:
            cache[run] = _scores(params, run)
    sa, sb = cache[claim.a], cache[claim.b]
    seeds = [
        s
        for s in sorted(sa)
        if s in sb
        and claim.score in sa[s]
        and claim.score in sb[s]
        and sa[s][claim.score].shape == sb[s][claim.score].shape
    ]
    statement = claim.statement.format(a=f"`{claim.a}`", b=f"`{claim.b}`")
    if not seeds:
        return None
    a = np.stack([sa[s][claim.score] for s in seeds])
    b = np.stack([sb[s][claim.score] for s in seeds])
    comp = compare_paired(claim.score, a, b, seeds)
    detail = ""
    if claim.score == "log_radius":
        floor = params.evaluate.certify_radius_min
        med = [float(np.median(np.mean(10.0**x, axis=0))) for x in (a, b)]
        detail = f"median radius (mean over seeds) {med[0]:.2g} vs {med[1]:.2g}; uncertified = {floor:g}"
    elif claim.b == "darts" or claim.b == "random":
        pa = [_eval_number(params, claim.a, s, "params") for s in seeds]
        pb = [_eval_number(params, claim.b, s, "params") for s in seeds]
        if all(v is not None for v in pa + pb):
            detail = f"params {np.mean(pa):,.0f} vs {np.mean(pb):,.0f}"
    return ClaimResult(
        claim.paper, statement, "paired", claim.direction, comp, detail=detail, effect=comp.diff, ci=comp.ci, p=comp.p
    )


def _budget_claim(params: Params) -> ClaimResult | None:
    """LRNAS: the final network's parameter count does not decrease as the budget λ grows."""
    budgets = []
    for run in params.pipeline.runs:
        spec = resolve_run(run)
        if spec.method != "lrnas":
            continue
        lam = params.search.methods.lrnas.budget if spec.variant == "default" else parse_budget(spec.variant)
        budgets.append((lam, run))
    if len(budgets) < 2:
        return None
    budgets.sort()
    per_seed, broken = [], []
    for seed in params.pipeline.seeds:
        counts = [_eval_number(params, run, seed, "params") for _, run in budgets]
        if any(c is None for c in counts):
            continue
        per_seed.append(counts)
        if any(b < a for a, b in zip(counts, counts[1:])):
            broken.append(seed)
    if not per_seed:
        return None
    mean_counts = np.mean(per_seed, axis=0)
    detail = ", ".join(f"λ {lam:,} → {c:,.0f}" for (lam, _), c in zip(budgets, mean_counts))
    within = all(c <= lam for (lam, _), c in zip(budgets, mean_counts))
    v = "contradicted" if broken else "supported"
    detail += f"; non-decreasing in {len(per_seed) - len(broken)}/{len(per_seed)} seeds"
    detail += "; every mean within its budget" if within else "; some mean above its budget"
    return ClaimResult(
        "LRNAS", "the parameter count follows λ (non-decreasing in the budget)", "budget", verdict=v, detail=detail
    )


def _cost_claim(params: Params) -> ClaimResult | None:
    """RNAS: the noise search costs a fraction of the adversarial one (paired t on log seconds)."""
    if "rnas" not in params.pipeline.runs or "rnas_adv" not in params.pipeline.runs:
        return None
    what, ratios = _cost_ratios(params, "rnas", "rnas_adv")
    if not ratios:
        return None
    logs = np.log(ratios)
    mean = float(np.mean(logs))
    res = ClaimResult(
        "RNAS",
        "the noise search `rnas` costs a fraction of the adversarial one `rnas_adv`",
        "cost",
        direction=-1,
        effect=math.exp(mean),
    )
    if len(logs) >= 2 and float(np.std(logs, ddof=1)) > 0:
        se = float(np.std(logs, ddof=1)) / math.sqrt(len(logs))
        t_crit = t_quantile(0.975, len(logs) - 1)
        res.ci = (math.exp(mean - t_crit * se), math.exp(mean + t_crit * se))
        res.p = min(1.0, 2.0 * t_sf(abs(mean) / se, len(logs) - 1))
    res.detail = f"{what} time ratio noise/adversarial per seed: {', '.join(f'{r:.2f}' for r in ratios)}"
    return res


TEACHER_MARGIN = 0.05  # the RNAS-CL premise: the teacher at least 5 points more robust than every student


def _teacher_premise(params: Params) -> ClaimResult | None:
    """RNAS-CL's premise, a check rather than a test: the robust teacher's worst-case robust
    accuracy is at least :data:`TEACHER_MARGIN` above every student's (mean over its seeds)."""
    if not any(resolve_run(r).needs_teacher for r in params.pipeline.runs):
        return None
    teacher = _eval_number(params, paths.TEACHER, 0, "robust_acc")
    students = {}
    for run in params.pipeline.runs:
        values = [v for s in params.pipeline.seeds if (v := _eval_number(params, run, s, "robust_acc")) is not None]
        if values:
            students[run] = float(np.mean(values))
    if teacher is None or not students:
        return None
    best = max(students, key=students.get)
    gap = teacher - students[best]
    return ClaimResult(
        "RNAS-CL",
        f"premise: the robust teacher is at least {100 * TEACHER_MARGIN:.0f} points more robust than every student",
        "premise",
        verdict="supported" if gap >= TEACHER_MARGIN else "contradicted",
        effect=gap,
        detail=f"teacher {100 * teacher:.1f}% vs the best student `{best}` {100 * students[best]:.1f}% "
        f"(worst case, mean over seeds): {_pts(gap)} pts",
    )


def evaluate_claims(params: Params) -> list[ClaimResult]:
    """Every claim whose runs have results, with Holm-adjusted p-values and verdicts."""
    cache: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    results: list[ClaimResult] = []
    seen = set()
    premise = _teacher_premise(params)
    if premise is not None:
        results.append(premise)
    for expand in CLAIMS.values():
        for claim in expand(params.pipeline.runs):
            key = (claim.a, claim.b, claim.score, claim.direction)
            if key in seen:
                continue
            seen.add(key)
            r = _paired(params, claim, cache)
            if r is not None:
                results.append(r)
        if expand is _lrnas_claims:
            budget = _budget_claim(params)
            if budget is not None:
                results.append(budget)
        if expand is _rnas_claims:
            cost = _cost_claim(params)
            if cost is not None:
                results.append(cost)
    # Holm over every claim that has a p-value and a direction (the non-inferiority claims are
    # decided by their interval against the margin, the budget claim is a check in every seed).
    tested = [i for i, r in enumerate(results) if r.p is not None and r.direction != 0]
    adjusted = holm([results[i].p for i in tested])
    for i, p_adj in zip(tested, adjusted):
        results[i] = replace(results[i], p_adjusted=p_adj)
    # The detectable difference at Holm's strictest level (α/m): what an inconclusive
    # directional claim could have shown in this report; the margin claims use α itself.
    strictest = ALPHA / max(1, len(tested))
    for r in results:
        if r.kind == "paired":
            r.mde = r.comparison.mde_at(strictest if r.direction != 0 else ALPHA)
    for r in results:
        if r.kind == "paired":
            r.verdict = verdict(
                r.direction,
                r.comparison.diff,
                r.comparison.ci,
                r.p_adjusted if r.p_adjusted is not None else 1.0,
                margin=NONINFERIORITY_MARGIN,
            )
        elif r.kind == "cost":
            if r.p_adjusted is not None and r.p_adjusted < 0.05:
                r.verdict = "supported" if r.effect < 1 else "contradicted"
            else:
                r.verdict = "inconclusive"
    return results


# ---------------------------------------------------------------------------------------------
# Markdown


def _pts(x: float, score: str = "") -> str:
    unit, scale = _unit(score)
    return f"{scale * x:+.2f}" if unit == "decades" else f"{scale * x:+.1f}"


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _row(r: ClaimResult) -> str:
    if r.kind == "paired":
        c = r.comparison
        unit, scale = _unit(c.metric)
        effect = f"{_pts(c.diff, c.metric)} {unit}"
        ci = f"[{_pts(c.ci[0], c.metric)}, {_pts(c.ci[1], c.metric)}]"
        design = f"{c.n_seeds} seed{'s' if c.n_seeds != 1 else ''} × {c.n_examples}"
        extra = ""
        if r.verdict == "inconclusive":
            extra = "no example differs" if r.mde is None else f"could detect ±{_pts(r.mde, c.metric)[1:]} {unit}"
            if r.mde is not None and unit == "pts" and r.mde > 1.0:  # beyond what an accuracy can differ by
                extra += f" (more than 100: no accuracy difference is detectable at this level with {c.n_seeds} seeds)"
        if r.direction == 0:
            extra = (extra + "; " if extra else "") + f"margin {100 * NONINFERIORITY_MARGIN:.0f} pts"
        mcn = "; ".join(f"s{s}: {ab}/{ba}, p {_p(p)}" for s, ab, ba, p in c.per_seed)
        test = "sign test (A larger/B larger)" if c.metric == "log_radius" else "McNemar (A-only/B-only)"
        detail = "; ".join(x for x in (r.detail, extra, f"{test} {mcn}") if x)
        return (
            f"| {r.paper} | {r.statement} | {effect} | {ci} | {_p(c.p)} | {_p(r.p_adjusted)} | "
            f"**{r.verdict}** | {design} | {detail} |"
        )
    if r.kind == "cost":
        ci = f"[{r.ci[0]:.2f}, {r.ci[1]:.2f}]" if r.ci else "–"
        return (
            f"| {r.paper} | {r.statement} | ×{r.effect:.2f} | {ci} | {_p(r.p)} | {_p(r.p_adjusted)} | "
            f"**{r.verdict}** | – | {r.detail} |"
        )
    effect = f"{_pts(r.effect)} pts" if r.kind == "premise" and r.effect is not None else "–"
    return f"| {r.paper} | {r.statement} | {effect} | – | – | – | **{r.verdict}** | – | {r.detail} |"


def claims_markdown(params: Params) -> str:
    """The "Claims" section, or "" when no claim has its runs evaluated yet."""
    results = evaluate_claims(params)
    if not results:
        return ""
    counts = {v: sum(1 for r in results if r.verdict == v) for v in ("supported", "contradicted", "inconclusive")}
    lines = [
        "### Claims",
        "",
        "Each paper's claims as testable statements. Effect: mean over seeds of A − B in accuracy points "
        "(certified radii: in decades of the per-example log10 radius) "
        "(per-example scores, paired by example and seed); 95% interval: t over seeds (one seed: paired "
        "bootstrap over examples); p: paired t over seeds (one seed: exact McNemar); Holm: adjusted over "
        f"every directional claim in this table. Non-inferiority claims are decided by the interval against a "
        f"{100 * NONINFERIORITY_MARGIN:.0f}-point margin. An inconclusive verdict gives the smallest difference "
        "the design could have detected (power 0.8 at Holm's strictest level α/m, α = 0.05, m directional "
        "claims).",
        "",
        f"**{counts['supported']} supported, {counts['contradicted']} contradicted, "
        f"{counts['inconclusive']} inconclusive.**",
        "",
        "| paper | claim (A vs B) | effect | 95% CI | p | p (Holm) | verdict | design | detail |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(r) for r in results]
    lines.append("")
    return "\n".join(lines)
