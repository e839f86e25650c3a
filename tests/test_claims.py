"""The report's Claims section (rnas.report.claims) and the per-example flags file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_params

from rnas import paths
from rnas.config import params_from_dict
from rnas.evaluation.flags import encode_flags, read_flags, write_flags
from rnas.report.claims import claims_markdown, evaluate_claims

N = 200


def test_flags_round_trip(tmp_path):
    flags = {"clean": torch.tensor([True, False, True]), "robust": np.array([False, False, True])}
    f = write_flags(tmp_path / "flags.json", flags, {"certified_radius": [0.0, 0.01, 0.2]})
    got, values = read_flags(f)
    assert got["clean"].tolist() == [True, False, True]
    assert got["robust"].tolist() == [False, False, True]
    assert values["certified_radius"].tolist() == [0.0, 0.01, 0.2]
    with pytest.raises(ValueError, match="different numbers"):
        encode_flags({"a": [True], "b": [True, False]})
    with pytest.raises(ValueError, match="entries for 3 examples"):
        encode_flags(flags, {"certified_radius": [0.0]})
    doc = json.loads(f.read_text())
    doc["flags"]["clean"] = "01"
    f.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not 3 characters"):
        read_flags(f)


def _params(tmp_path, runs, seeds):
    p = tiny_params(runs=runs)
    p["pipeline"]["seeds"] = list(seeds)
    p["pipeline"]["results"] = str(tmp_path / "results")
    p["search"]["epochs"] = 8  # LRNAS needs epochs after its warm-up
    return params_from_dict(p)


def _write_run(
    params, run, seed, clean, robust, certified=None, n_params=1000, search_seconds=None, radius=None, cpu_seconds=None
):
    d = paths.run_dir(params, run, seed)
    d.mkdir(parents=True, exist_ok=True)
    flags = {"clean": clean, "robust": robust}
    if certified is not None:
        flags["certified"] = certified
    values = {"certified_radius": list(radius)} if radius is not None else None
    write_flags(paths.flags_file(params, run, seed), flags, values)
    (d / "eval.json").write_text(
        json.dumps({"params": n_params, "clean_acc": float(np.mean(clean)), "robust_acc": float(np.mean(robust))})
    )
    if search_seconds is not None:
        cpu = {"search_cpu_seconds": cpu_seconds} if cpu_seconds is not None else {}
        (d / "search.json").write_text(json.dumps({"search_seconds": search_seconds, **cpu}))


def _flags(rng, p):
    return rng.random(N) < p


def test_clear_difference_is_supported_and_noise_is_inconclusive(tmp_path):
    params = _params(tmp_path, ("darts", "random", "dsrna_cb"), seeds=(0, 1, 2))
    rng = np.random.default_rng(0)
    for seed in (0, 1, 2):
        base = _flags(rng, 0.4)
        clean = _flags(rng, 0.9)
        # dsrna_cb: darts' robust flags plus 60 more examples robust; random equals darts up to noise.
        better = base.copy()
        better[np.flatnonzero(~base)[:60]] = True
        noisy = base.copy()
        flip = rng.choice(N, 6, replace=False)
        noisy[flip] = ~noisy[flip]
        # radii: dsrna_cb's 10x darts' on every example (one decade), a quarter of darts' 0 (uncertified)
        r_darts = 10.0 ** rng.uniform(-7, -3, N)
        r_darts[: N // 4] = 0.0
        r_dsrna = np.where(r_darts > 0, 10 * r_darts, 10 * params.evaluate.certify_radius_min)
        _write_run(params, "darts", seed, clean, base, certified=np.zeros(N, bool), radius=r_darts)
        _write_run(params, "dsrna_cb", seed, clean, better, certified=np.zeros(N, bool), radius=r_dsrna)
        _write_run(params, "random", seed, clean, noisy)
    results = {r.statement: r for r in evaluate_claims(params)}
    robust = results["`dsrna_cb` is more robust than DARTS under attack"]
    assert robust.comparison.diff == pytest.approx(60 / N)
    assert robust.verdict == "supported"
    # Same clean flags: non-inferior with a zero-width interval at 0.
    assert results["`dsrna_cb`'s clean accuracy is not lower than DARTS's"].verdict == "supported"
    # Radii 10x darts' on every example (an uncertified one counts as certify_radius_min): +1 decade.
    radius = results["`dsrna_cb` has larger certified radii than DARTS (per example)"]
    assert radius.comparison.diff == pytest.approx(1.0)
    assert radius.verdict == "supported"
    assert radius.comparison.per_seed[0][1:3] == (N, 0)  # every example larger under dsrna_cb
    darts_vs_random = results["`darts` is more robust than a random architecture"]
    assert darts_vs_random.verdict == "inconclusive"
    assert darts_vs_random.p_adjusted >= darts_vs_random.p
    md = claims_markdown(params)
    assert "### Claims" in md and "**supported**" in md and "could detect" in md
    assert "+1.00 decades" in md and "sign test (A larger/B larger)" in md


def test_equal_radii_are_inconclusive_in_decades(tmp_path):
    params = _params(tmp_path, ("darts", "dsrna_cb"), seeds=(0, 1, 2))
    rng = np.random.default_rng(3)
    for seed in (0, 1, 2):
        clean, robust = _flags(rng, 0.9), _flags(rng, 0.4)
        r = 10.0 ** rng.uniform(-7, -3, N)
        noisy = r * 10.0 ** rng.normal(0, 0.1, N)  # the same radii up to a tenth of a decade
        _write_run(params, "darts", seed, clean, robust, radius=r)
        _write_run(params, "dsrna_cb", seed, clean, robust, radius=noisy)
    res = {r.statement: r for r in evaluate_claims(params)}[
        "`dsrna_cb` has larger certified radii than DARTS (per example)"
    ]
    assert res.verdict == "inconclusive"
    assert abs(res.comparison.diff) < 0.05
    row = next(line for line in claims_markdown(params).splitlines() if "larger certified radii" in line)
    assert "decades" in row and "could detect ±" in row


def test_a_worse_method_is_contradicted(tmp_path):
    params = _params(tmp_path, ("darts", "random", "lrnas"), seeds=(0, 1, 2))
    rng = np.random.default_rng(1)
    for seed in (0, 1, 2):
        base = _flags(rng, 0.6)
        worse = base.copy()
        worse[np.flatnonzero(base)[: 40 + 5 * seed]] = False
        clean = _flags(rng, 0.9)
        _write_run(params, "darts", seed, clean, base)
        _write_run(params, "random", seed, clean, base)
        _write_run(params, "lrnas", seed, clean, worse)
    results = {r.statement: r for r in evaluate_claims(params)}
    assert results["`lrnas` is more robust than DARTS's architecture"].verdict == "contradicted"
    assert results["`lrnas` is more robust than a random architecture"].verdict == "contradicted"


def test_budget_and_cost_claims(tmp_path):
    params = _params(tmp_path, ("darts", "lrnas", "lrnas_10k", "lrnas_15k", "rnas", "rnas_adv"), seeds=(0, 1))
    ok = np.ones(N, bool)
    for seed in (0, 1):
        _write_run(params, "darts", seed, ok, ok)
        _write_run(params, "lrnas", seed, ok, ok, n_params=19000)
        _write_run(params, "lrnas_10k", seed, ok, ok, n_params=9000)
        _write_run(params, "lrnas_15k", seed, ok, ok, n_params=14000 if seed == 0 else 8000)
        _write_run(params, "rnas", seed, ok, ok, search_seconds=10.0 + seed)
        _write_run(params, "rnas_adv", seed, ok, ok, search_seconds=40.0 + 3 * seed)
    results = {r.statement: r for r in evaluate_claims(params)}
    budget = results["the parameter count follows λ (non-decreasing in the budget)"]
    assert budget.verdict == "contradicted" and "1/2 seeds" in budget.detail
    cost = results["the noise search `rnas` costs a fraction of the adversarial one `rnas_adv`"]
    assert cost.effect == pytest.approx(np.exp(np.mean(np.log([10 / 40, 11 / 43]))))
    assert cost.verdict == "supported" and cost.detail.startswith("wall-clock time ratio")


def test_cost_claim_on_cpu_seconds_where_every_seed_has_them(tmp_path):
    """The ratio is taken on the searches' CPU seconds when every timed seed of both runs has them
    (wall clock carries the load of whatever else ran); with one seed lacking them (a file written
    before the key existed), on wall-clock seconds for all seeds, never a mix."""
    params = _params(tmp_path, ("darts", "rnas", "rnas_adv"), seeds=(0, 1, 2))
    ok = np.ones(N, bool)
    cpu = {"rnas": (10.0, 11.0, 12.0), "rnas_adv": (40.0, 40.0, 41.0)}
    wall = {"rnas": (30.0, 11.0, 12.0), "rnas_adv": (40.0, 90.0, 41.0)}  # seed 0 and 1 under load
    for seed in (0, 1, 2):
        _write_run(params, "darts", seed, ok, ok)
        for run in ("rnas", "rnas_adv"):
            _write_run(params, run, seed, ok, ok, search_seconds=wall[run][seed], cpu_seconds=cpu[run][seed])
    statement = "the noise search `rnas` costs a fraction of the adversarial one `rnas_adv`"
    cost = {r.statement: r for r in evaluate_claims(params)}[statement]
    ratios = [a / b for a, b in zip(cpu["rnas"], cpu["rnas_adv"], strict=True)]
    assert cost.effect == pytest.approx(np.exp(np.mean(np.log(ratios))))
    assert cost.detail == "CPU time ratio noise/adversarial per seed: 0.25, 0.28, 0.29"
    lo, hi = cost.ci
    assert lo < cost.effect < hi < 0.35
    _write_run(params, "rnas_adv", 1, ok, ok, search_seconds=90.0)  # seed 1 without CPU seconds
    cost = {r.statement: r for r in evaluate_claims(params)}[statement]
    ratios = [a / b for a, b in zip(wall["rnas"], wall["rnas_adv"], strict=True)]
    assert cost.effect == pytest.approx(np.exp(np.mean(np.log(ratios))))
    assert cost.detail.startswith("wall-clock time ratio")


def test_no_results_no_section(tmp_path):
    params = _params(tmp_path, ("darts", "random"), seeds=(0,))
    assert claims_markdown(params) == ""


def test_teacher_premise_needs_five_points_over_every_student(tmp_path):
    params = _params(tmp_path, ("darts", "rnas_cl"), seeds=(0, 1))
    ok = np.ones(N, bool)

    def robust(share):
        f = np.zeros(N, bool)
        f[: int(share * N)] = True
        return f

    for seed in (0, 1):
        _write_run(params, "darts", seed, ok, robust(0.40))
        _write_run(params, "rnas_cl", seed, ok, robust(0.56 + 0.02 * seed))  # mean 57%
    premise = "premise: the robust teacher is at least 5 points more robust than every student"
    assert premise not in {r.statement for r in evaluate_claims(params)}  # no teacher evaluated yet
    _write_run(params, "teacher", 0, ok, robust(0.61))
    r = {r.statement: r for r in evaluate_claims(params)}[premise]
    assert r.verdict == "contradicted" and r.effect == pytest.approx(0.04) and "`rnas_cl` 57.0%" in r.detail
    assert r.p_adjusted is None  # a check on the means, not part of the Holm family
    _write_run(params, "teacher", 0, ok, robust(0.63))
    r = {r.statement: r for r in evaluate_claims(params)}[premise]
    assert r.verdict == "supported" and r.effect == pytest.approx(0.06)
    assert "+6.0 pts" in claims_markdown(params)


def test_a_detectable_difference_beyond_the_scale_says_so():
    from rnas.report.claims import ClaimResult, _row
    from rnas.report.stats import Comparison

    def row(mde: float) -> str:
        c = Comparison(
            metric="robust", n_seeds=3, n_examples=359, diff=0.2, ci=(-0.1, 0.5), p=0.07, mde=mde,
            test="paired t over seeds", per_seed=((0, 50, 10, 0.001),), se=0.07, df=2,
        )  # fmt: skip
        return _row(ClaimResult("RNAS-CL", "A beats B", "paired", comparison=c, p_adjusted=1.0, mde=mde))

    # 1.58 in accuracy units: 158 points, more than an accuracy can differ by.
    assert "could detect ±158.0 pts (more than 100: no accuracy difference is detectable" in row(1.58)
    assert "could detect ±40.0 pts;" in row(0.40) and "more than 100" not in row(0.40)
