"""Paired statistics of the report (rnas.report.stats) against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rnas.report.stats import (
    compare_paired,
    holm,
    mcnemar_exact,
    paired_bootstrap_ci,
    t_quantile,
    t_sf,
    verdict,
)


def test_mcnemar_hand_computed():
    # 10 discordant pairs, 8 favour A and 2 favour B: p = 2 * P(X <= 2), X ~ Bin(10, 1/2)
    # = 2 * (1 + 10 + 45) / 1024 = 112 / 1024.
    a = [True] * 8 + [False] * 2 + [True] * 5 + [False] * 3
    b = [False] * 8 + [True] * 2 + [True] * 5 + [False] * 3
    n_ab, n_ba, p = mcnemar_exact(a, b)
    assert (n_ab, n_ba) == (8, 2)
    assert p == pytest.approx(112 / 1024, abs=1e-15)


def test_mcnemar_symmetric_and_degenerate_cases():
    a = [True, False, True, True]
    b = [False, True, True, False]
    assert mcnemar_exact(a, b)[2] == mcnemar_exact(b, a)[2]
    # Balanced discordance is no evidence at all; no discordance either.
    assert mcnemar_exact([True, False], [False, True])[2] == 1.0
    assert mcnemar_exact([True, True], [True, True]) == (0, 0, 1.0)
    # 6 to 0: p = 2 / 64.
    assert mcnemar_exact([True] * 6, [False] * 6)[2] == pytest.approx(2 / 64)
    with pytest.raises(ValueError, match="same shape"):
        mcnemar_exact([True], [True, False])


def test_t_distribution_matches_known_values():
    # Table values of Student's t.
    assert t_quantile(0.975, 2) == pytest.approx(4.302652729, rel=1e-7)
    assert t_quantile(0.975, 10) == pytest.approx(2.228138852, rel=1e-7)
    assert t_quantile(0.8, 2) == pytest.approx(1.060660172, rel=1e-7)
    assert t_quantile(0.025, 4) == pytest.approx(-2.776445105, rel=1e-7)
    # df = 1 is Cauchy: P(T > 1) = 1/4.
    assert t_sf(1.0, 1) == pytest.approx(0.25, abs=1e-12)
    assert t_sf(0.0, 7) == pytest.approx(0.5, abs=1e-12)


def test_bootstrap_interval_on_a_fixed_sample():
    # 20 pairs, A right on 15, B right on 10, 5 discordant each way... diff = 0.25 exactly.
    a = np.array([1] * 15 + [0] * 5, dtype=float)
    b = np.array([1] * 10 + [0] * 10, dtype=float)
    lo, hi = paired_bootstrap_ci(a, b, n_boot=20_000, seed=1)
    assert lo < 0.25 < hi
    # The paired differences are 5 ones and 15 zeros, so a resampled mean is Bin(20, 1/4) / 20.
    # Its exact 2.5% quantile is 2/20 (P(X <= 1) = 0.024, P(X <= 2) = 0.091) and its 97.5%
    # quantile 9/20 (P(X <= 8) = 0.959, P(X <= 9) = 0.986).
    assert lo == pytest.approx(0.10, abs=1e-9)
    assert hi == pytest.approx(0.45, abs=1e-9)
    # Deterministic under its seed.
    assert paired_bootstrap_ci(a, b, n_boot=2000, seed=3) == paired_bootstrap_ci(a, b, n_boot=2000, seed=3)


def test_holm_hand_computed():
    # Sorted p: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04); back in input order.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # Monotone step-down: a smaller raw p never gets a larger adjusted p than a larger one.
    assert holm([0.03, 0.01]) == pytest.approx([0.03, 0.02])
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_compare_paired_over_seeds_is_a_paired_t():
    rng = np.random.default_rng(0)
    a = (rng.random((3, 50)) < 0.6).astype(float)
    b = (rng.random((3, 50)) < 0.4).astype(float)
    c = compare_paired("robust_acc", a, b, seeds=[0, 1, 2])
    d = a.mean(axis=1) - b.mean(axis=1)
    per_example = (a - b).reshape(-1)
    se = max(d.std(ddof=1) / math.sqrt(3), per_example.std(ddof=1) / math.sqrt(per_example.size))
    assert c.diff == pytest.approx(d.mean())
    assert c.ci[0] == pytest.approx(d.mean() - 4.302652729 * se, rel=1e-6)
    assert c.ci[1] == pytest.approx(d.mean() + 4.302652729 * se, rel=1e-6)
    assert c.p == pytest.approx(2 * t_sf(abs(d.mean()) / se, 2))
    assert c.mde == pytest.approx((4.302652729 + 1.060660172) * se, rel=1e-6)
    assert [s[0] for s in c.per_seed] == [0, 1, 2]
    assert c.per_seed[1][1:3] == mcnemar_exact(a[1] > b[1], b[1] > a[1])[:2]


def test_compare_paired_one_seed_uses_mcnemar_and_bootstrap():
    a = np.array([[1] * 15 + [0] * 5], dtype=float)
    b = np.array([[1] * 10 + [0] * 10], dtype=float)
    c = compare_paired("clean_acc", a, b)
    assert c.test.startswith("McNemar")
    assert c.p == pytest.approx(2 / 32)  # 5 to 0 discordant
    assert c.ci == paired_bootstrap_ci(a[0], b[0])
    se = np.std(a[0] - b[0], ddof=1) / math.sqrt(20)
    assert c.mde == pytest.approx((1.959963984540054 + 0.8416212335729143) * se, rel=1e-6)
    with pytest.raises(ValueError, match="disagree"):
        compare_paired("clean_acc", a, b[:, :10])


def test_seed_agreement_does_not_claim_infinite_precision():
    # Three seeds with exactly the same +5-point difference: the seed-level sd is 0, so the
    # standard error falls back to the example-level one and the interval has a width.
    a = np.tile(np.array([1] * 15 + [0] * 5, dtype=float), (3, 1))
    b = np.tile(np.array([1] * 14 + [0] * 6, dtype=float), (3, 1))
    c = compare_paired("robust_acc", a, b)
    assert c.diff == pytest.approx(0.05)
    assert c.ci[0] < 0.0 < c.ci[1] and c.p > 0.05
    # No example differs at all: nothing to detect with, said as None.
    same = compare_paired("certified_acc", np.zeros((3, 10)), np.zeros((3, 10)))
    assert same.mde is None and same.p == 1.0
    # A stricter (multiplicity-adjusted) level needs a larger difference.
    assert c.mde_at(0.05 / 10) > c.mde_at(0.05) == pytest.approx(c.mde)


def test_verdicts():
    assert verdict(+1, 0.1, (0.05, 0.15), 0.01) == "supported"
    assert verdict(+1, -0.1, (-0.15, -0.05), 0.01) == "contradicted"
    assert verdict(-1, -0.1, (-0.15, -0.05), 0.01) == "supported"
    assert verdict(+1, 0.1, (-0.05, 0.25), 0.2) == "inconclusive"
    # A significant raw p that Holm lifts above alpha stays inconclusive: the caller passes the
    # adjusted p.
    assert verdict(+1, 0.1, (0.01, 0.19), 0.06) == "inconclusive"
    # Non-inferiority with a 2-point margin.
    assert verdict(0, -0.005, (-0.015, 0.005), 1.0, margin=0.02) == "supported"
    assert verdict(0, -0.1, (-0.15, -0.05), 1.0, margin=0.02) == "contradicted"
    assert verdict(0, -0.02, (-0.06, 0.02), 1.0, margin=0.02) == "inconclusive"
