"""Certified radii and the certified-accuracy-vs-ε curve (rnas/evaluation/certify.py).

The radius is sound (never above a radius at which PGD broke the example), the bisection brackets
it (certified at the radius, not certified just above it, within the tolerance the step count
gives), the curve is non-increasing and equals the share of radii ≥ ε, the bound takes one ε per
example, and the evaluate stage's numbers, params keys and report column/plot exist."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_params, train_digits_cnn

from rnas.bounds import spec_bounds
from rnas.config import ParamsError, params_from_dict
from rnas.evaluation import certify as cert
from rnas.evaluation.attacks import pgd_attack
from rnas.evaluation.certify import SANITY_KEY, certified_flags, certified_radius, certify_evaluation
from rnas.evaluation.protocol import EvalSettings, evaluate_model

STEPS = 8


@pytest.fixture(scope="module")
def tiny_model():
    """A small CNN trained for a few seconds on digits (clean), in float64, and 48 test examples."""
    model, splits = train_digits_cnn()
    return model.double().eval(), splits.test.x[:48].double(), splits.test.y[:48]


@pytest.fixture(scope="module")
def radii(tiny_model):
    model, x, y = tiny_model
    return certified_radius(model, x, y, (1e-3, 3e-3, 1e-2, 3e-2), STEPS, 1e-6, "linf", "both", 32)


def test_per_example_eps_equals_one_call_per_radius(tiny_model):
    model, x, y = tiny_model
    x, y = x[:6], y[:6]
    eps = torch.tensor([0.0, 1e-3, 3e-3, 1e-2, 0.05, 0.3], dtype=torch.float64)
    joint = spec_bounds(model, x, y, eps, "linf", ("ibp", "crown"))
    for i, e in enumerate(eps.tolist()):
        alone = spec_bounds(model, x[i : i + 1], y[i : i + 1], e, "linf", ("ibp", "crown"))
        for m in ("ibp", "crown"):
            torch.testing.assert_close(joint.lower[m][i : i + 1], alone.lower[m], rtol=1e-9, atol=1e-9)
    # full CROWN refines the neurons unstable in any example of the batch, so compare whole batches
    same = spec_bounds(model, x, y, torch.full((6,), 0.01, dtype=torch.float64), "linf", ("crown",), "crown")
    torch.testing.assert_close(
        same.lower["crown"], spec_bounds(model, x, y, 0.01, "linf", ("crown",), "crown").lower["crown"]
    )
    l2 = spec_bounds(model, x, y, eps, "l2", ("crown",))
    for i, e in enumerate(eps.tolist()):
        torch.testing.assert_close(
            l2.lower["crown"][i : i + 1],
            spec_bounds(model, x[i : i + 1], y[i : i + 1], e, "l2", ("crown",)).lower["crown"],
        )
    with pytest.raises(ValueError, match="shape"):
        spec_bounds(model, x, y, eps[:3])
    with pytest.raises(ValueError, match=">= 0"):
        spec_bounds(model, x, y, -eps)


def test_radius_is_never_above_a_radius_where_pgd_broke_the_example(tiny_model, radii):
    model, x, y = tiny_model
    r = radii.radius
    assert (r > 0).sum() >= len(r) // 2  # most examples certified at some radius
    median = float(r[r > 0].median())
    probes = sorted({*(median * k for k in (1.5, 3.0, 10.0, 30.0)), 0.05, 0.1, 0.2})
    broken_near = 0
    g = torch.Generator().manual_seed(0)
    for eps in probes:
        broken = torch.zeros(len(x), dtype=torch.bool)
        for loss in ("ce", "margin"):
            adv = pgd_attack(model, x, y, eps, eps / 8, 40, loss=loss, generator=g)
            with torch.no_grad():
                broken |= model(adv).argmax(1) != y
        assert (r[broken] < eps).all(), (eps, r[broken].max())
        if eps < 30 * median:
            broken_near += int(broken.sum())
    assert broken_near > 0  # PGD breaks examples within 30× the median radius: the check is not vacuous
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    assert (r[wrong] == 0).all()


def test_the_radius_is_certified_and_not_just_above_within_the_bisection_precision(tiny_model, radii):
    model, x, y = tiny_model
    r, up = radii.radius, radii.upper
    grid = [1e-6, 1e-3, 3e-3, 1e-2, 3e-2, 1.0]
    inside = (r > 0) & torch.isfinite(up)
    assert inside.any()
    idx = inside.nonzero().flatten()
    assert certified_flags(model, x[idx], y[idx], r[idx], batch_size=32).all()
    assert not certified_flags(model, x[idx], y[idx], up[idx], batch_size=32).any()
    # tolerance: the bracket's ratio to the power 2^-steps, per example
    for i in idx.tolist():
        lo0 = max(e for e in grid if e <= r[i])
        hi0 = min(e for e in grid if e >= up[i])
        assert r[i] < up[i] <= r[i] * (hi0 / lo0) ** (2.0**-STEPS) * (1 + 1e-12)
    assert 0 < radii.rel_gap() <= 1e3 ** (2.0**-STEPS) - 1 + 1e-12  # the widest bracket: [1e-6, 1e-3]
    zero = (r == 0).nonzero().flatten()
    if len(zero):
        assert not certified_flags(model, x[zero], y[zero], 1e-6, batch_size=32).any()
        assert (up[zero] == 1e-6).all()


def test_sweep_is_non_increasing_and_counts_radii(radii):
    curve = radii.curve()
    values = [curve[k] for k in sorted(curve, key=float)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[0] > 0  # certified at the small end
    for eps, flags in radii.sweep.items():
        assert torch.equal(flags, radii.radius >= eps)
        assert (flags | ~radii.raw[eps]).all()  # every computed certificate is counted
    metrics = radii.metrics()
    assert metrics["certified_radius_median"] == pytest.approx(float(torch.quantile(radii.radius, 0.5)))
    assert len(metrics["certified_radius"]) == 48 and metrics["certified_radius_steps"] == STEPS


def _fake_bound(monkeypatch, true_radius: torch.Tensor, holes: dict[int, tuple[float, float]] | None = None):
    """Replace the bound by the margin true_radius − ε ('certified iff ε ≤ true_radius'), −1 in the
    optional uncertified intervals."""
    calls = []

    def fake(model, x, y, epsilon, *args, **kwargs):
        ids = x[:, 0, 0, 0].long()
        eps = epsilon if isinstance(epsilon, torch.Tensor) else torch.full((len(ids),), float(epsilon))
        eps = eps.double()
        m = torch.where(eps <= true_radius[ids], true_radius[ids] - eps + 1e-300, true_radius[ids] - eps)
        for i, (a, b) in (holes or {}).items():
            m = torch.where((ids == i) & (eps > a) & (eps < b), -1.0, m)
        calls.append(len(ids))
        return m

    monkeypatch.setattr(cert, "certified_margins", fake)
    return calls


def test_bisection_logic_on_a_known_radius(monkeypatch):
    true = torch.tensor([0.0, 5e-10, 2e-9, 4e-7, 1e-6, 7e-5, 0.5, 1.0], dtype=torch.float64)
    x = torch.arange(len(true), dtype=torch.float64).view(-1, 1, 1, 1)
    y = torch.zeros(len(true), dtype=torch.long)
    calls = _fake_bound(monkeypatch, true)
    res = certified_radius(None, x, y, (1e-7, 1e-6, 1e-5), steps=30, radius_min=1e-9)
    r = res.radius
    assert r[0] == 0 and r[1] == 0 and r[7] == 1.0 and math.isinf(res.upper[7])
    assert r[6] == pytest.approx(0.5, rel=1e-6) and r[2] == pytest.approx(2e-9, rel=1e-6)
    assert r[4] == 1e-6  # exactly a sweep point: certified there, the bisection only confirms below next
    assert (r <= true).all() and (r[2:7] >= true[2:7] * (1 - 1e-6)).all()
    assert res.curve() == {"1e-07": 5 / 8, "1e-06": 4 / 8, "1e-05": 3 / 8}
    assert res.passes == len(calls)
    # no sweep: one bracket [radius_min, 1] for everyone
    res2 = certified_radius(None, x, y, (), steps=40, radius_min=1e-9)
    assert res2.curve() == {} and (res2.radius <= true).all()
    assert res2.radius[3] == pytest.approx(4e-7, rel=1e-6)
    # steps = 0: the radius is the largest certified sweep ε
    res3 = certified_radius(None, x, y, (1e-7, 1e-6, 1e-5), steps=0, radius_min=1e-9)
    assert res3.radius.tolist() == [0.0, 0.0, 1e-9, 1e-7, 1e-6, 1e-5, 1e-5, 1.0]
    with pytest.raises(ValueError, match="radius_min"):
        certified_radius(None, x, y, (1e-9,), radius_min=1e-9)


def _curved_bound(monkeypatch, true_radius: torch.Tensor, power: torch.Tensor, m0: torch.Tensor):
    """A margin bound shaped as the digits networks' CROWN-IBP bounds are: its distance from the
    exact margin m0 grows with ε about as a power of it, steeper as ε grows (p 1: affine, 2-3:
    ReLUs turning unstable): m0·(1 − ((ε/r)^p + (ε/r)^(p+1)) / 2), zero at ε = r. An identity
    module stands for the model, and m0 is its clean margin. Returns the rows of every pass at
    one ε per example (the root search's; the sweep and the bracket ends bound one ε for all)."""
    calls = []

    def fake(model, x, y, epsilon, *args, **kwargs):
        ids = x[:, 0, 0, 0].long()
        if isinstance(epsilon, torch.Tensor):
            calls.append(len(ids))
        eps = epsilon.double() if isinstance(epsilon, torch.Tensor) else torch.full((len(ids),), float(epsilon))
        q = eps / true_radius[ids]
        return m0[ids] * (1 - (q ** power[ids] + q ** (power[ids] + 1)) / 2)

    monkeypatch.setattr(cert, "certified_margins", fake)
    monkeypatch.setattr(cert, "clean_margins", lambda model, x, y, batch_size=256: m0[x[:, 0, 0, 0].long()])
    return calls


def test_the_secant_search_needs_fewer_passes_than_bisection_at_the_same_precision(monkeypatch):
    """On curved bounds the root search reaches the bisection's precision (upper / radius ≤ the
    sweep bracket's ratio^(2^-steps)) with the radius certified and upper not, in about half the
    bound evaluations of bisection's `steps` per example."""
    g = torch.Generator().manual_seed(0)
    n, steps = 64, 7
    true = 10 ** (-7 + 3 * torch.rand(n, generator=g, dtype=torch.float64))  # 1e-7 .. 1e-4
    power = torch.tensor([1.0, 1.5, 2.0, 3.0], dtype=torch.float64).repeat(n // 4)
    m0 = 0.5 + 5 * torch.rand(n, generator=g, dtype=torch.float64)
    calls = _curved_bound(monkeypatch, true, power, m0)
    x = torch.arange(n, dtype=torch.float64).view(-1, 1, 1, 1)
    grid = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)
    res = certified_radius(torch.nn.Identity().eval(), x, torch.zeros(n, dtype=torch.long), grid, steps, 1e-10)
    ratio = (res.upper / res.radius).max()
    assert (res.radius <= true).all() and (res.upper > true).all()
    assert ratio <= 10 ** (2.0**-steps) * (1 + 1e-12)
    search_rows = sum(calls)
    assert search_rows <= 0.6 * steps * n, (search_rows, steps * n)
    assert res.passes <= len(grid) + steps + cert.RootSearch.max_idle


def test_a_bound_the_secant_cannot_use_falls_back_to_bisection(monkeypatch):
    """A margin that jumps (no information between the ends) or is flat still closes every
    bracket to the bisection's precision within steps + max_idle passes."""
    n, steps = 6, 10
    true = torch.tensor([2e-7, 3e-7, 5e-7, 7e-7, 9e-7, 9.9e-7], dtype=torch.float64)
    calls = []

    def jump(model, x, y, epsilon, *args, **kwargs):
        ids = x[:, 0, 0, 0].long()
        eps = epsilon.double() if isinstance(epsilon, torch.Tensor) else torch.full((len(ids),), float(epsilon))
        calls.append(len(ids))
        return torch.where(eps <= true[ids], 1.0, -1e9).double()  # certified with a constant margin, then a cliff

    monkeypatch.setattr(cert, "certified_margins", jump)
    monkeypatch.setattr(cert, "clean_margins", lambda model, x, y, batch_size=256: torch.full((len(x),), 1.0))
    x = torch.arange(n, dtype=torch.float64).view(-1, 1, 1, 1)
    res = certified_radius(torch.nn.Identity().eval(), x, torch.zeros(n, dtype=torch.long), (1e-7, 1e-6), steps, 1e-9)
    assert (res.radius <= true).all() and (res.upper > true).all()
    assert (res.upper / res.radius).max() <= 10 ** (2.0**-steps) * (1 + 1e-12)
    assert res.passes <= 2 + steps + cert.RootSearch.max_idle


def test_clean_margins_are_the_bounds_at_eps_zero(tiny_model):
    """At ε = 0 the box is the point x and every bound is the exact margin f_y − max_{k≠y} f_k,
    which the root search takes as its anchor."""
    model, x, y = tiny_model
    m0 = cert.clean_margins(model, x, y, 32)
    torch.testing.assert_close(m0, spec_bounds(model, x, y, 0.0, "linf", ("ibp", "crown")).margin().double())
    assert torch.equal(m0 > 0, model(x).argmax(1) == y)


def test_a_certificate_at_a_larger_sweep_eps_is_not_bound_again(monkeypatch):
    """The sweep runs from the largest ε down: an example certified at 3e-6 is not bound at 1e-6
    (a bound that would fail there, non-monotone, is never asked) and counts as certified there."""
    true = torch.tensor([1e-5, 1e-5, 2e-7], dtype=torch.float64)
    x = torch.arange(3, dtype=torch.float64).view(-1, 1, 1, 1)
    calls = _fake_bound(monkeypatch, true, holes={0: (5e-7, 2e-6)})  # example 0 fails at 1e-6 only
    res = certified_radius(None, x, torch.zeros(3, dtype=torch.long), (1e-7, 1e-6, 3e-6), steps=0, radius_min=1e-9)
    assert calls == [3, 1, 1, 2]  # 3e-6: everyone; 1e-6 and 1e-7: example 2 only; the cap: 0 and 1
    assert res.raw[1e-6][0] and res.sweep[1e-6][0]
    assert res.radius.tolist() == [3e-6, 3e-6, 1e-7] and res.upper.tolist() == [1.0, 1.0, 1e-6]


def test_only_open_correctly_classified_examples_are_bound(tiny_model, monkeypatch):
    """A misclassified example is never bound (radius 0, upper radius_min), and a smaller sweep ε
    bounds only the examples no larger one certified; the radii equal those of bounding every
    example at every sweep ε."""
    model, x, y = tiny_model
    seen: list[tuple[float, torch.Tensor]] = []
    real = cert.certified_margins

    def spy(m, xb, yb, eps, *args, **kwargs):
        ids = (xb.flatten(1)[:, None, :] == x.flatten(1)[None]).all(-1).float().argmax(1)
        seen.append((float(eps) if not isinstance(eps, torch.Tensor) else -1.0, ids))
        return real(m, xb, yb, eps, *args, **kwargs)

    monkeypatch.setattr(cert, "certified_margins", spy)
    grid = (1e-6, 1e-4, 1e-3)
    res = certified_radius(model, x, y, grid, steps=2, radius_min=1e-9, batch_size=32)
    wrong = (model(x).argmax(1) != y).nonzero().flatten()
    assert len(wrong) > 0, "the tiny model should misclassify some of the 48 examples"
    for _, ids in seen:
        assert not (ids[:, None] == wrong[None]).any()
    assert (res.radius[wrong] == 0).all() and (res.upper[wrong] == 1e-9).all()
    sweep_calls = {eps: ids for eps, ids in seen if eps in grid}
    for big, small in ((1e-3, 1e-4), (1e-4, 1e-6)):
        bound = sweep_calls.get(small, torch.zeros(0, dtype=torch.long))  # none: every open one certified
        assert not (bound[:, None] == (res.raw[big].nonzero().flatten())[None]).any()
    assert len(sweep_calls[1e-3]) == len(x) - len(wrong)  # the largest ε: every correct example
    for eps in grid:  # the same certified accuracy as bounding everyone at each ε
        everyone = real(model, x, y, eps, batch_size=32) > 0
        assert torch.equal(res.sweep[eps], everyone | torch.stack([res.raw[e] for e in grid if e >= eps]).any(0))


def test_certify_evaluation_records_curve_radius_and_sanity(tiny_model):
    model, x, y = tiny_model
    model, x = model.float(), x.float()
    try:
        settings = EvalSettings(
            epsilon=0.02, epsilon_l2=0.5, pgd_step_size=0.005, attacks=("pgd20",), eps_sweep=(0.01, 0.3)
        )
        metrics, flags = evaluate_model(model, x, y, settings, progress=False)
        values = certify_evaluation(
            metrics, flags, model, x, y, settings, "both", 32, eps_sweep=(1e-3, 1e-2), radius_steps=4, radius_min=1e-6
        )
        assert metrics["sanity"][SANITY_KEY], metrics["sanity_details"][SANITY_KEY]
        assert set(metrics["certified_eps_sweep"]) == {"0.001", "0.01"}
        assert len(metrics["certified_radius"]) == len(x) and metrics["certified_radius_median"] > 0
        assert torch.equal(values["certified_radius"], torch.tensor(metrics["certified_radius"], dtype=torch.float64))
        assert values["certified"].shape == (len(x),)
        # an attack that "broke" an example within its certified radius fails the check
        r = values["certified_radius"]
        doctored = dict(flags, clean=flags["clean"] & ~(r > 0))
        m2: dict = {}
        certify_evaluation(
            m2, doctored, model, x, y, settings, "both", 32, eps_sweep=(1e-3,), radius_steps=0, radius_min=1e-6
        )
        assert not m2["sanity"][SANITY_KEY] and "certified radius" in m2["sanity_details"][SANITY_KEY]
        # no sweep, no bisection: only certified_acc, as before
        m3: dict = {}
        certify_evaluation(m3, flags, model, x, y, settings, "both", 32)
        assert "certified_radius" not in m3 and "certified_acc" in m3
    finally:
        model.double()


def test_params_keys_are_validated():
    p = tiny_params()
    params = params_from_dict(p)
    assert params.evaluate.certify_eps_sweep and params.evaluate.certify_radius_steps > 0
    assert min(params.evaluate.certify_eps_sweep) > params.evaluate.certify_radius_min
    p["evaluate"]["certify_eps_sweep"] = [1.0e-6, 1.0e-12]
    with pytest.raises(ParamsError, match=r"certify_eps_sweep\[1\].*certify_radius_min"):
        params_from_dict(p)
    p["evaluate"]["certify_eps_sweep"] = [1.5]
    with pytest.raises(ParamsError, match="certify_eps_sweep"):
        params_from_dict(p)
    p["evaluate"]["certify_eps_sweep"] = []
    p["evaluate"]["certify_radius_steps"] = -1
    with pytest.raises(ParamsError, match="certify_radius_steps"):
        params_from_dict(p)


def test_report_plots_the_curve_and_shows_the_median_radius(tmp_path):
    from rnas.report.collect import RunRow, SeedResult
    from rnas.report.plots import plot_certified_sweep
    from rnas.report.table import main_table, seed_table

    def row(run, curve, median):
        ev = {
            "clean_acc": 0.9,
            "robust_acc": 0.4,
            "n_examples": 100,
            "certified_eps_sweep": curve,
            "certified_radius_median": median,
            "sanity": {"x": True},
        }
        return RunRow(run, run, "default", results=[SeedResult(0, ev)])

    rows = [row("darts", {"1e-07": 0.9, "1e-06": 0.2}, 6.1e-7), row("dsrna_cb", {"1e-07": 0.95, "1e-06": 0.5}, 1e-6)]
    png = plot_certified_sweep(rows, tmp_path / "certified_sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    table = main_table(rows)
    labels = [h.text if hasattr(h, "text") else h for h in table.header]
    col = labels.index("median cert. radius")
    assert [r[col].text for r in table.rows] == ["6.1e-07", "1e-06"]
    assert "median cert. radius" in [h.text if hasattr(h, "text") else h for h in seed_table(rows).header]
    empty = plot_certified_sweep(
        [RunRow("darts", "darts", "default", results=[SeedResult(0, {})])], tmp_path / "none.png"
    )
    assert empty.is_file()


def test_float32_box_holds_the_ball_below_float32_resolution():
    """x₀ ± ε rounded to nearest in float32 is x₀ itself for ε below half an ulp: the box must
    still hold the exact (float64) ball, by rounding its ends outward."""
    from rnas.bounds.interval import InputSet

    x32 = torch.tensor([0.0, 1e-9, 0.3, 0.5, 0.999, 1.0]).view(1, 1, 2, 3)
    x64 = x32.double()  # the same points: the ball is around x₀ as stored
    for eps in (1e-9, 3e-8, 1e-7, 1e-5, 0.2):
        lo, up = InputSet(x32, eps).box()
        assert lo.dtype == up.dtype == torch.float32
        lo64, up64 = (x64 - eps).clamp(0, 1), (x64 + eps).clamp(0, 1)
        assert (lo.double() <= lo64).all() and (up.double() >= up64).all(), eps
        assert (lo >= 0).all() and (up <= 1).all()
        # at most one ulp looser than the exact ends
        assert (lo64 - lo.double() <= 1.2e-7).all() and (up.double() - up64 <= 1.2e-7).all()
    per_example = InputSet(x32, torch.tensor([1e-9])).box()
    assert (per_example[1].double() > x64.clamp(max=1 - 1e-12)).all()


def test_mixed_precision_radius_agrees_with_float64_and_stays_sound(tiny_model, radii):
    """float32 passes from 1e-3 up (the rest in float64): the same radii within the bisection's
    precision, certified at the radius in float64, and no example certified that float64 does not."""
    model, x, y = tiny_model
    mixed = certified_radius(
        model.float(), x.float(), y, (1e-3, 3e-3, 1e-2, 3e-2), STEPS, 1e-6, "linf", "both", 32, float64_below=1e-3
    )
    model.double()
    assert ((mixed.radius > 0) == (radii.radius > 0)).all()
    both = radii.radius > 0
    ratio = mixed.radius[both] / radii.radius[both]
    tol = 1e3 ** (2.0**-STEPS)  # one bisection bracket
    assert (ratio <= tol * (1 + 1e-6)).all() and (ratio >= 1 / tol / (1 + 1e-6)).all()
    idx = (mixed.radius > 0).nonzero().flatten()
    assert certified_flags(model, x[idx], y[idx], mixed.radius[idx], batch_size=32).all()
