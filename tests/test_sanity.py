"""The evaluation's sanity checks: each check on hand-made inputs (passing and failing), then
the whole protocol on an honest tiny model (every check passes) and on two deliberately
gradient-masked models (the checks flag them)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import train_tiny
from torch import nn

from rnas.evaluation import attacks
from rnas.evaluation.protocol import EvalSettings, evaluate_with_sanity, worst_case_flags
from rnas.evaluation.sanity import (
    EPS0_KEY,
    SANITY_CHECKS,
    SQUARE_KEY,
    ModelProbe,
    SanityInputs,
    SanitySettings,
    large_eps_key,
    large_eps_l2_key,
    model_probe,
    probe_attacks,
    probe_examples,
    run_checks,
    sanity_summary,
)

torch.set_num_threads(1)

N_CLASSES = 10
T, F_ = True, False


def _flags(*bits: int) -> torch.Tensor:
    return torch.tensor([bool(b) for b in bits])


def _settings(**kw) -> EvalSettings:
    base = dict(
        epsilon=0.1,
        epsilon_l2=0.8,
        pgd_step_size=0.025,
        eps_sweep=(0.05, 0.3),
        attacks=("fgsm", "pgd20", "pgd100"),
        cw_steps=10,
        deepfool_steps=10,
    )
    return EvalSettings(**{**base, **kw})


GOOD_PROBE = ModelProbe(
    num_classes=N_CLASSES, zero_grad_fraction=0.0, output_min=-7.0, output_max=9.0, max_row_sum_deviation=4.0
)


INPUTS_SANITY = SanitySettings(large_epsilon=0.3, tolerance=0.0)

AA_CHECKS = {SQUARE_KEY: {"randomized": True, "range_output": True, "dynamic": True, "n_classes": True}}


def _inputs(
    flags: dict,
    metrics: dict | None = None,
    probe: ModelProbe = GOOD_PROBE,
    sanity: SanitySettings = INPUTS_SANITY,
) -> SanityInputs:
    def acc(f):
        return int(f.sum()) / f.numel()

    metrics = metrics or {f"{k}_acc": acc(v) for k, v in flags.items() if k in ("fgsm", "pgd20", "pgd100")}
    metrics.setdefault("autoattack_checks", AA_CHECKS)
    return SanityInputs(metrics, flags, _settings(), sanity, probe)


# 10 examples; "clean" gets 8 right.
CLEAN = _flags(1, 1, 1, 1, 1, 1, 1, 1, 0, 0)
HONEST = {
    "clean": CLEAN,
    "fgsm": _flags(1, 1, 1, 1, 0, 0, 0, 0, 0, 0),
    "pgd20": _flags(1, 1, 1, 0, 0, 0, 0, 0, 0, 0),
    "pgd100": _flags(1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
    "eps_sweep/0.0": CLEAN,
    EPS0_KEY: CLEAN,
    "eps_sweep/0.05": _flags(1, 1, 1, 1, 1, 0, 0, 0, 0, 0),
    "eps_sweep/0.1": _flags(1, 1, 1, 0, 0, 0, 0, 0, 0, 0),
    "eps_sweep/0.3": _flags(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    SQUARE_KEY: _flags(1, 1, 1, 1, 1, 1, 0, 0, 0, 0),
    large_eps_l2_key(SanitySettings()): _flags(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
}


def test_registry_names_and_honest_inputs_pass():
    assert list(SANITY_CHECKS) == [
        "eps0_equals_clean",
        "monotone_in_eps",
        "large_eps_reaches_chance",
        "large_eps_l2_reaches_chance",
        "pgd_not_weaker_than_fgsm",
        "more_pgd_steps_not_weaker",
        "square_not_stronger_than_whitebox",
        "nonzero_input_gradients",
        "outputs_are_logits",
        "autoattack_own_checks",
    ]
    results = run_checks(_inputs(dict(HONEST)))
    assert {n: r.passed for n, r in results.items()} == {n: True for n in SANITY_CHECKS}
    verdicts, details = sanity_summary(results)
    assert all(verdicts.values()) and set(details) == set(SANITY_CHECKS)
    with pytest.raises(ValueError, match="unknown sanity check.*known: eps0"):
        run_checks(_inputs(dict(HONEST)), ("nope",))


def _one(name: str, inputs: SanityInputs):
    return run_checks(inputs, (name,))[name]


def test_eps0_equals_clean_compares_examples_not_counts():
    swapped = _flags(0, 1, 1, 1, 1, 1, 1, 1, 1, 0)  # same accuracy, other examples
    result = _one("eps0_equals_clean", _inputs({**HONEST, EPS0_KEY: swapped}))
    assert result.passed is False and "2 examples differ" in result.detail
    no_zero = {k: v for k, v in HONEST.items() if k != EPS0_KEY}
    assert _one("eps0_equals_clean", _inputs(no_zero)).passed is None


def test_monotone_in_eps_with_tolerance():
    rising = {**HONEST, "eps_sweep/0.3": _flags(1, 1, 1, 1, 0, 0, 0, 0, 0, 0)}  # 30% -> 40%
    assert _one("monotone_in_eps", _inputs(rising)).passed is False
    loose = SanitySettings(large_epsilon=0.3, tolerance=0.1)
    assert _one("monotone_in_eps", _inputs(rising, sanity=loose)).passed is True


def test_large_eps_reaches_chance_uses_sweep_or_probe():
    stuck = {**HONEST, "eps_sweep/0.3": _flags(1, 1, 0, 0, 0, 0, 0, 0, 0, 0)}  # 20% > 1/10
    assert _one("large_eps_reaches_chance", _inputs(stuck)).passed is False
    at_chance = {**HONEST, "eps_sweep/0.3": _flags(1, 0, 0, 0, 0, 0, 0, 0, 0, 0)}
    assert _one("large_eps_reaches_chance", _inputs(at_chance)).passed is True
    # a large ε outside the sweep is looked up under its probe key; missing -> not applicable
    other = SanitySettings(large_epsilon=0.5, tolerance=0.0)
    assert large_eps_key(_settings(), other) == "sanity/pgd20@0.5"
    assert _one("large_eps_reaches_chance", _inputs(dict(HONEST), sanity=other)).passed is None
    probed = {**HONEST, "sanity/pgd20@0.5": _flags(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)}
    assert _one("large_eps_reaches_chance", _inputs(probed, sanity=other)).passed is True


def test_large_eps_l2_reaches_chance():
    key = large_eps_l2_key(SanitySettings())
    assert key == "sanity/apgd_ce_l2@4.0"
    stuck = {**HONEST, key: _flags(1, 1, 0, 0, 0, 0, 0, 0, 0, 0)}  # 20% > 1/10
    result = _one("large_eps_l2_reaches_chance", _inputs(stuck))
    assert result.passed is False and "20.0%" in result.detail and "ε₂=4" in result.detail
    no_probe = {k: v for k, v in HONEST.items() if k != key}
    assert _one("large_eps_l2_reaches_chance", _inputs(no_probe)).passed is None


def test_autoattack_own_checks():
    warned = {**AA_CHECKS, "autoattack": {"range_output": False, "dynamic": True}}
    details = {"autoattack": {"range_output": "it seems that the output is a probability distribution"}}
    result = _one(
        "autoattack_own_checks",
        _inputs(dict(HONEST), metrics={"autoattack_checks": warned, "autoattack_checks_details": details}),
    )
    assert result.passed is False and "autoattack: range_output — it seems" in result.detail
    assert _one("autoattack_own_checks", _inputs(dict(HONEST))).passed is True
    assert _one("autoattack_own_checks", _inputs(dict(HONEST), metrics={"autoattack_checks": {}})).passed is None


def test_pgd_not_weaker_than_fgsm():
    weak = {**HONEST, "pgd20": _flags(1, 1, 1, 1, 1, 0, 0, 0, 0, 0)}  # 50% > FGSM 40%
    assert _one("pgd_not_weaker_than_fgsm", _inputs(weak)).passed is False
    no_fgsm = {k: v for k, v in HONEST.items() if k != "fgsm"}
    assert _one("pgd_not_weaker_than_fgsm", _inputs(no_fgsm)).passed is None


def test_more_pgd_steps_not_weaker():
    weak = {**HONEST, "pgd100": _flags(1, 1, 1, 1, 0, 0, 0, 0, 0, 0)}  # 40% > PGD-20 30%
    assert _one("more_pgd_steps_not_weaker", _inputs(weak)).passed is False
    assert _one("more_pgd_steps_not_weaker", _inputs(weak, sanity=SanitySettings(tolerance=0.1))).passed


def test_square_not_stronger_than_whitebox():
    strong = {**HONEST, SQUARE_KEY: _flags(1, 0, 0, 0, 0, 0, 0, 0, 0, 0)}  # 10% < PGD-100 20%
    result = _one("square_not_stronger_than_whitebox", _inputs(strong))
    assert result.passed is False and "PGD100 20.0%" in result.detail
    assert result.detail.startswith("1 examples (10.0%, allowed 0.0%) broken by Square")
    assert "(examples 1)" in result.detail
    no_square = {k: v for k, v in HONEST.items() if k != SQUARE_KEY}
    assert _one("square_not_stronger_than_whitebox", _inputs(no_square)).passed is None


def test_square_check_is_per_example_not_totals():
    """Square keeps more examples in total (40%) than the best white-box attack (PGD-100 20%), but
    breaks two (0 and 1) that every white-box attack missed: gradient masking, and the check fails."""
    flags = {**HONEST, SQUARE_KEY: _flags(0, 0, 1, 1, 1, 1, 0, 0, 0, 0)}
    result = _one("square_not_stronger_than_whitebox", _inputs(flags))
    assert result.passed is False and "2 examples (20.0%" in result.detail and "(examples 0, 1)" in result.detail
    loose = SanitySettings(large_epsilon=0.3, tolerance=0.2)  # 2 of 10 allowed
    assert _one("square_not_stronger_than_whitebox", _inputs(flags, sanity=loose)).passed is True


def test_nonzero_input_gradients_and_logits_checks():
    masked = ModelProbe(N_CLASSES, zero_grad_fraction=0.5, output_min=0.0, output_max=1.0, max_row_sum_deviation=1e-7)
    assert _one("nonzero_input_gradients", _inputs(dict(HONEST), probe=masked)).passed is False
    assert _one("outputs_are_logits", _inputs(dict(HONEST), probe=masked)).passed is False
    lenient = SanitySettings(large_epsilon=0.3, max_zero_grad_fraction=0.5)
    assert _one("nonzero_input_gradients", _inputs(dict(HONEST), probe=masked, sanity=lenient)).passed
    # log-probabilities are fine for the attacks' losses: not flagged
    log_probs = ModelProbe(N_CLASSES, 0.0, output_min=-20.0, output_max=-0.01, max_row_sum_deviation=30.0)
    assert _one("outputs_are_logits", _inputs(dict(HONEST), probe=log_probs)).passed is True


def test_sanity_settings_validation():
    with pytest.raises(ValueError, match="large_epsilon"):
        SanitySettings(large_epsilon=0.0)
    with pytest.raises(ValueError, match="square_queries"):
        SanitySettings(square_queries=0)
    with pytest.raises(ValueError, match="tolerance"):
        SanitySettings(tolerance=1.5)
    with pytest.raises(ValueError, match="large_epsilon_l2"):
        SanitySettings(large_epsilon_l2=0.0)


def test_probe_attacks_reuse_the_sweep():
    inside = probe_attacks(_settings(), SanitySettings(large_epsilon=0.3))
    assert set(inside) == {EPS0_KEY, SQUARE_KEY}  # PGD-20 at 0.3 is already in the sweep
    name, eps, options = inside[EPS0_KEY]  # the sweep's ε = 0 point is the clean pass: its own probe
    assert (name, eps, options["steps"]) == ("pgd", 0.0, 1)
    outside = probe_attacks(_settings(), SanitySettings(large_epsilon=0.5))
    assert set(outside) == {EPS0_KEY, SQUARE_KEY, "sanity/pgd20@0.5"}
    name, eps, options = outside["sanity/pgd20@0.5"]
    assert (name, eps, options["steps"]) == ("pgd", 0.5, 20)
    assert options["step_size"] == pytest.approx(0.025 * 0.5 / 0.1)  # the sweep's step/ε ratio
    l2 = probe_attacks(_settings(attacks=("cw",)), SanitySettings(large_epsilon_l2=3.0))
    assert l2 == {
        EPS0_KEY: inside[EPS0_KEY],
        "sanity/pgd20@0.5": outside["sanity/pgd20@0.5"],
        "sanity/apgd_ce_l2@3.0": (
            "autoattack_l2",
            3.0,
            dict(version="custom", attacks=("apgd-ce",), seed=0, batch_size=256),
        ),
    }


def test_worst_case_is_per_example_not_min_of_accuracies():
    flags = {"clean": _flags(1, 1, 1, 1), "fgsm": _flags(0, 1, 1, 1), "pgd20": _flags(1, 0, 1, 1)}
    robust = worst_case_flags(flags, ("fgsm", "pgd20"))
    assert robust.tolist() == [F_, F_, T, T]  # 50%, below both attacks' 75%


# ---------------------------------------------------------------------------------------------
# The protocol on real (tiny) models


def _data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    prototypes = torch.rand(N_CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, N_CLASSES, (n,), generator=generator)
    x = 0.6 * prototypes[y] + 0.4 * torch.rand(n, 1, 8, 8, generator=generator)
    return x.clamp(0, 1), y


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, N_CLASSES),
    )


class Quantized(nn.Module):
    """Gradient masking by input quantization: round() has a zero derivative everywhere."""

    def __init__(self, net: nn.Module, levels: int = 4):
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x):
        return self.net(torch.round(x * self.levels) / self.levels)


class SaturatedSoftmax(nn.Module):
    """Gradient masking by a saturated softmax output (probabilities, Jacobian ≡ 0 in float32)."""

    def __init__(self, net: nn.Module, temperature: float = 1e-3):
        super().__init__()
        self.net, self.temperature = net, temperature

    def forward(self, x):
        return torch.softmax(self.net(x) / self.temperature, dim=1)


@pytest.fixture(scope="module")
def trained():
    """One honest tiny net (trained once) and the 48 test examples every model is evaluated on."""
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = _data(256, gen)
    x_test, y_test = _data(48, gen)
    torch.manual_seed(0)  # the initial weights
    return train_tiny(_net(), x_train, y_train), x_test, y_test


SANITY = SanitySettings(large_epsilon=0.5, large_epsilon_l2=4.0, square_queries=300, tolerance=0.03)
WITH_L2 = ("fgsm", "pgd20", "pgd100", "deepfool")  # an L2 attack: the L2 large-radius probe runs


def _evaluate(model, x, y, **settings):
    return evaluate_with_sanity(model, x, y, _settings(**settings), SANITY, progress=False)


def test_honest_model_passes_every_check(trained):
    model, x, y = trained
    metrics, flags = _evaluate(model, x, y, attacks=WITH_L2)
    assert metrics["clean_acc"] > 0.9
    assert metrics["sanity"] == {n: True for n in SANITY_CHECKS}, metrics["sanity_details"]
    assert set(metrics["sanity_details"]) == set(SANITY_CHECKS)
    assert {SQUARE_KEY, "sanity/pgd20@0.5", "sanity/apgd_ce_l2@4.0"} <= set(flags)
    # the worst case is the per-example AND over every attack at ε, Square alone included, never
    # above any single one
    expected = flags["clean"] & flags["fgsm"] & flags["pgd20"] & flags["pgd100"] & flags[SQUARE_KEY]
    assert torch.equal(flags["robust"], expected)
    assert metrics["robust_acc"] == int(expected.sum()) / len(y)
    assert metrics["robust_acc"] <= min(metrics[k] for k in ("fgsm_acc", "pgd20_acc", "pgd100_acc"))
    assert metrics["worst_case_attacks"] == {
        "robust_acc": f"fgsm, pgd20, pgd100, {SQUARE_KEY}",
        "robust_acc_l2": "deepfool",
    }
    assert torch.equal(flags["robust_l2"], flags["clean"] & flags["deepfool"])
    # AutoAttack's own checks of the AutoAttack runs (Square alone, APGD-CE at the large L2 radius)
    assert set(metrics["autoattack_checks"]) == {SQUARE_KEY, "sanity/apgd_ce_l2@4.0"}
    assert all(all(c.values()) for c in metrics["autoattack_checks"].values())
    assert metrics["attack_seconds"]["sanity"] > 0


def test_square_probe_runs_on_the_white_box_survivors_only(trained, monkeypatch):
    """Square alone sees exactly the examples that every white-box L∞ attack left robust (the only
    ones where it can change the check or the worst case); its flags are False on the others."""
    model, x, y = trained
    spec = attacks.ATTACKS["autoattack"]
    seen: list[torch.Tensor] = []

    def spy(net, xs, ys, epsilon, **options):
        if options.get("attacks") == ("square",):
            seen.append(xs.detach().clone())
        return spec.fn(net, xs, ys, epsilon, **options)

    monkeypatch.setitem(attacks.ATTACKS, "autoattack", dataclasses.replace(spec, fn=spy))
    metrics, flags = _evaluate(model, x, y)
    left = flags["clean"] & flags["fgsm"] & flags["pgd20"] & flags["pgd100"]
    assert 0 < int(left.sum()) < len(x)  # a real subset
    assert len(seen) == 1 and torch.equal(seen[0], x[left])
    assert not bool((flags[SQUARE_KEY] & ~left).any())
    assert torch.equal(probe_examples(SQUARE_KEY, flags), left)
    assert probe_examples("sanity/pgd20@0.5", flags) is None
    assert metrics["sanity"]["square_not_stronger_than_whitebox"] is True, metrics["sanity_details"]


def test_quantized_input_model_is_flagged(trained):
    net, x, y = trained
    model = Quantized(net).eval()
    assert model_probe(model, x, y).zero_grad_fraction == 1.0
    # ε = 0.25: a radius at which the honest net has no robustness left (see the PGD numbers of
    # test_honest_model_passes_every_check), so fake robustness shows against Square
    metrics, flags = _evaluate(model, x, y, epsilon=0.25, pgd_step_size=0.06, attacks=WITH_L2)
    assert metrics["clean_acc"] > 0.8
    # gradient attacks see no gradient and report fake robustness; black-box Square does not
    assert metrics["pgd100_acc"] > 0.8 and metrics["sanity"]["nonzero_input_gradients"] is False
    assert metrics["sanity"]["square_not_stronger_than_whitebox"] is False, metrics["sanity_details"]
    assert metrics["sanity"]["large_eps_reaches_chance"] is False
    assert metrics["sanity"]["outputs_are_logits"] is True
    # what Square broke counts in the worst case: robust_acc is not the white-box attacks' fake number
    square_acc = int(flags[SQUARE_KEY].sum()) / len(y)
    assert metrics["robust_acc"] <= square_acc < metrics["pgd100_acc"]
    assert torch.equal(
        flags["robust"], flags["clean"] & flags["fgsm"] & flags["pgd20"] & flags["pgd100"] & flags[SQUARE_KEY]
    )


def test_saturated_softmax_model_is_flagged(trained):
    net, x, y = trained
    model = SaturatedSoftmax(net).eval()
    metrics, _ = _evaluate(model, x, y)
    assert metrics["clean_acc"] > 0.9
    assert metrics["sanity"]["outputs_are_logits"] is False
    assert metrics["sanity"]["nonzero_input_gradients"] is False
    # flat outputs also starve score-based Square; the huge radius still exposes the masking
    assert metrics["sanity"]["large_eps_reaches_chance"] is False, metrics["sanity_details"]
    # and AutoAttack's own range check (run with Square alone) sees the probabilities
    assert metrics["sanity"]["autoattack_own_checks"] is False
    assert metrics["autoattack_checks"][SQUARE_KEY]["range_output"] is False


def test_evaluation_tags_name_every_sanity_and_autoattack_check():
    """rnas evaluate logs each sanity verdict and each AutoAttack check as an MLflow tag (keys
    restricted to the characters MLflow allows: a probe's '@' becomes '_')."""
    from rnas.stages.evaluate import log_evaluation

    class Tracker:
        def __init__(self):
            self.tags, self.metrics = {}, {}

        def set_tags(self, tags):
            self.tags.update(tags)

        def log_metrics(self, metrics):
            self.metrics.update(metrics)

    metrics = {
        "clean_acc": 0.9,
        "robust_acc": 0.5,
        "robust_acc_l2": None,
        "eps_sweep": {"0.0": 0.9},
        "sanity": {"autoattack_own_checks": False, "eps0_equals_clean": True},
        "autoattack_checks": {
            "autoattack": {"randomized": True, "square_sr": False},
            "sanity/apgd_ce_l2@2.0": {"range_output": True},
        },
    }
    tracker = Tracker()
    log_evaluation(tracker, metrics)
    assert tracker.tags["sanity"] == "FAIL: autoattack_own_checks"
    assert tracker.tags["autoattack_check.autoattack.square_sr"] == "FAIL"
    assert tracker.tags["autoattack_check.autoattack.randomized"] == "pass"
    assert tracker.tags["autoattack_check.sanity/apgd_ce_l2_2.0.range_output"] == "pass"
    assert "robust_acc_l2" not in tracker.metrics and tracker.metrics["sanity_failures"] == 1
