"""Paired statistics for comparing two runs evaluated on the same test examples.

Every model is evaluated on the same first ``n_examples`` test examples and ``eval.json``
stores a per-example flag for each metric, so two runs can be compared *paired*:

* per seed, the exact **McNemar** test on the discordant examples (A right / B wrong against
  A wrong / B right) -- a two-sided binomial test with p = 1/2 on ``b + c`` trials;
* over seeds (seed k of run A paired with seed k of run B: same data split, same init RNG), the
  **mean accuracy difference** with a 95% **t interval** over the per-seed differences and the
  paired t-test's p-value. The unit of replication is the search seed, so between-seed variance
  (a different architecture per seed) is in the interval. With a single seed the interval is a
  **paired bootstrap** over examples and the p-value McNemar's: an inference about that one
  architecture, not about the method;
* the **minimum detectable difference** (two-sided α, power 0.8) the same design could have
  detected, reported beside an inconclusive verdict. The seed-level standard error is floored
  at the example-level one, so seeds that happen to agree exactly do not claim infinite
  precision;
* **Holm**'s step-down correction over all comparisons in one report.

Everything here is plain arithmetic on flags; the tests check it against hand-computed cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
POWER = 0.8

__all__ = [
    "ALPHA",
    "Comparison",
    "compare_paired",
    "detectable_difference",
    "holm",
    "mcnemar_exact",
    "paired_bootstrap_ci",
    "t_quantile",
    "verdict",
]


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic)."""
    if k < 0:
        return 0.0
    k = min(k, n)
    return math.fsum(math.comb(n, i) for i in range(k + 1)) / 2.0**n


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """Exact two-sided McNemar test of paired correctness flags.

    Returns ``(n_ab, n_ba, p)``: examples only A got right, examples only B got right, and the
    two-sided p-value ``min(1, 2 · P(X <= min(n_ab, n_ba)))`` with X ~ Bin(n_ab + n_ba, 1/2).
    With no discordant example p = 1.
    """
    a_arr, b_arr = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired flags must have the same shape, got {a_arr.shape} and {b_arr.shape}")
    n_ab = int(np.sum(a_arr & ~b_arr))
    n_ba = int(np.sum(~a_arr & b_arr))
    n = n_ab + n_ba
    if n == 0:
        return n_ab, n_ba, 1.0
    return n_ab, n_ba, min(1.0, 2.0 * _binom_cdf(min(n_ab, n_ba), n))


def _betacf(a: float, b: float, x: float) -> float:
    # Continued fraction of the incomplete beta function (Lentz's method).
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`t_sf`)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > 1.0 - q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > 1.0 - q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of mean(a) − mean(b), resampling the *pairs* (examples) together."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1 or a_arr.size == 0:
        raise ValueError("paired samples must be non-empty 1-d arrays of the same length")
    diff = a_arr - b_arr
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(n_boot, diff.size))
    means = diff[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given), monotone and capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Comparison:
    """A − B on one metric, paired by example and by seed."""

    metric: str
    n_seeds: int
    n_examples: int
    diff: float  # mean over seeds of acc(A) − acc(B), in [−1, 1]
    ci: tuple[float, float]  # 95% interval of diff
    p: float  # two-sided p-value of diff = 0
    mde: float | None  # smallest |diff| detected with power 0.8 at α = 0.05 (None: no example differs)
    test: str  # "paired t over seeds" or "McNemar (one seed)"
    per_seed: tuple[tuple[int, int, int, float], ...]  # (seed, n_ab, n_ba, McNemar p)
    se: float = 0.0  # standard error of diff used by the interval and the detectable difference
    df: int | None = None  # degrees of freedom of the t interval; None: normal (one seed)

    def mde_at(self, alpha: float, power: float = POWER) -> float | None:
        """Smallest |diff| this design detects with ``power`` at two-sided level ``alpha``
        (e.g. a Holm/Bonferroni level α/m); None when no example differs between the runs."""
        return detectable_difference(self.se, self.df, alpha, power)


def _z(q: float) -> float:
    """Standard normal quantile (bisection on erfc; exact to float precision)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def detectable_difference(se: float, df: int | None, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """(q_{1−α/2} + q_{power}) · se with t quantiles (``df``) or normal ones (``df`` None)."""
    if se <= 0.0:
        return None
    q = (lambda p: t_quantile(p, df)) if df is not None else _z
    return (q(1.0 - alpha / 2.0) + q(power)) * se


def _as_matrix(flags: Sequence[Sequence[float]]) -> np.ndarray:
    arr = np.asarray(flags, dtype=float)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"flags must be a non-empty (seeds, examples) array, got shape {arr.shape}")
    return arr


def compare_paired(
    metric: str, a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], seeds: Sequence[int] | None = None
) -> Comparison:
    """Compare per-example scores ``a`` and ``b`` of shape (seeds, examples), paired row by row.

    Scores are usually 0/1 correctness flags; a score in [0, 1] (e.g. the mean of a clean and a
    robust flag) works too, the McNemar column then counting examples where A scored higher.
    """
    a_arr, b_arr = _as_matrix(a), _as_matrix(b)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"{metric}: runs disagree on (seeds, examples): {a_arr.shape} vs {b_arr.shape}")
    n_seeds, n_examples = a_arr.shape
    seeds = list(seeds) if seeds is not None else list(range(n_seeds))
    per_seed = []
    for k in range(n_seeds):
        n_ab, n_ba, p_k = mcnemar_exact(a_arr[k] > b_arr[k], b_arr[k] > a_arr[k])
        per_seed.append((int(seeds[k]), n_ab, n_ba, p_k))
    seed_diffs = a_arr.mean(axis=1) - b_arr.mean(axis=1)
    diff = float(seed_diffs.mean())
    # Standard error of the example-level mean difference: a floor for the seed-level one, so
    # that seeds which happen to agree exactly do not claim infinite precision.
    d_all = (a_arr - b_arr).reshape(-1)
    se_examples = float(d_all.std(ddof=1)) / math.sqrt(d_all.size) if d_all.size > 1 else 0.0
    if n_seeds >= 2:
        df = n_seeds - 1
        se = max(float(seed_diffs.std(ddof=1)) / math.sqrt(n_seeds), se_examples)
        t_crit = t_quantile(1.0 - ALPHA / 2.0, df)
        ci = (diff - t_crit * se, diff + t_crit * se)
        p = (1.0 if diff == 0.0 else 0.0) if se == 0.0 else min(1.0, 2.0 * t_sf(abs(diff) / se, df))
        test = "paired t over seeds"
    else:
        df = None
        ci = paired_bootstrap_ci(a_arr[0], b_arr[0])
        p = per_seed[0][3]
        se = se_examples
        test = "McNemar (one seed)"
    mde = detectable_difference(se, df)
    return Comparison(
        metric=metric,
        n_seeds=n_seeds,
        n_examples=n_examples,
        diff=diff,
        ci=ci,
        p=p,
        mde=mde,
        test=test,
        per_seed=tuple(per_seed),
        se=se,
        df=df,
    )


def verdict(
    direction: int, diff: float, ci: tuple[float, float], p_adjusted: float, margin: float = 0.0, alpha: float = ALPHA
) -> str:
    """``supported`` / ``contradicted`` / ``inconclusive`` for a claim about diff = A − B.

    ``direction`` +1 claims A > B, −1 claims A < B; ``direction`` 0 is a non-inferiority claim
    (A not worse than B by more than ``margin``): supported when the interval's lower end is
    above −margin, contradicted when its upper end is below −margin. A directional claim is
    supported when the Holm-adjusted p is below ``alpha`` with the effect in the claimed
    direction, contradicted when significant the other way.
    """
    lo, hi = ci
    if direction == 0:
        if lo > -margin:
            return "supported"
        if hi < -margin:
            return "contradicted"
        return "inconclusive"
    if p_adjusted < alpha and diff != 0.0:
        return "supported" if diff * direction > 0 else "contradicted"
    return "inconclusive"
