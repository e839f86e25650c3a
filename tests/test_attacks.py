"""Invariants of the attacks and of the evaluation protocol, on a tiny conv net (1x8x8 inputs).

The model is trained for a fraction of a second on synthetic prototype data so that clean
accuracy is high and the chosen radii leave some examples robust and break others.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
from conftest import train_tiny
from torch import nn

from rnas.evaluation import attacks as A
from rnas.evaluation.protocol import (
    PROTOCOL_ATTACKS,
    EvalSettings,
    evaluate_model,
    worst_case_flags,
)

EPS = 0.1  # L∞ radius used by most tests (pixel units)
EPS_L2 = 0.8  # L2 radius: 0.1 · sqrt(64)
N_CLASSES = 10

# Fast options per registry attack (few steps; real settings come from EvalSettings).
FAST = {
    "clean": {},
    "fgsm": {},
    "pgd": dict(step_size=0.025, steps=10),
    "cw_l2": dict(steps=20, binary_search_steps=5),
    "deepfool_l2": dict(steps=10),
    "autoattack_l2": dict(version="custom", attacks=("apgd-ce",), n_iter=10),  # standard version: own test
}
LINF_ADV = {"fgsm": A.fgsm_adv, "pgd": A.pgd_adv}
L2_ADV = {"cw_l2": A.cw_l2_adv, "deepfool_l2": A.deepfool_l2_adv, "autoattack_l2": A.autoattack_l2_adv}
ADV = {**LINF_ADV, **L2_ADV}


def _data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    prototypes = torch.rand(N_CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, N_CLASSES, (n,), generator=generator)
    x = 0.6 * prototypes[y] + 0.4 * torch.rand(n, 1, 8, 8, generator=generator)
    return x.clamp(0, 1), y


def _tiny_net(batch_norm: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8) if batch_norm else nn.Identity(),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, N_CLASSES),
    )


@pytest.fixture(scope="module")
def setup(_one_thread) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x_train, y_train = _data(512, generator)
    x_test, y_test = _data(24, generator)
    model = train_tiny(_tiny_net(), x_train, y_train)
    return model, x_test, y_test


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed"
    for name, p in model.named_parameters():
        assert p.grad is None, f"{name} has a .grad"
        assert p.requires_grad, f"{name} lost requires_grad"


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(dim=1)


def _l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1)


# ---------------------------------------------------------------------------------------------
# pgd_attack (pure torch)


@pytest.mark.parametrize("epsilon", [0.03, EPS, 0.3])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_attack_stays_in_ball_and_box(setup, epsilon, random_start):
    model, x, y = setup
    x_adv = A.pgd_attack(model, x, y, epsilon, step_size=epsilon / 4, steps=10, random_start=random_start)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (_linf(x_adv, x) <= epsilon + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any()


def test_pgd_attack_breaks_the_model_at_large_epsilon(setup):
    model, x, y = setup
    x_adv = A.pgd_attack(model, x, y, 0.3, step_size=0.05, steps=20)
    clean = (model(x).argmax(1) == y).float().mean()
    robust = (model(x_adv).argmax(1) == y).float().mean()
    assert clean > 0.9 and robust <= 1.0 / N_CLASSES


def test_pgd_attack_restores_mode_and_leaves_no_trace():
    generator = torch.Generator().manual_seed(1)
    x, y = _data(16, generator)
    model = train_tiny(_tiny_net(batch_norm=True), x, y, steps=5).train()
    model[1].eval()  # mixed modes must come back exactly as they were
    before = _snapshot(model)
    with torch.no_grad():  # the trainer or the evaluator may call it under no_grad
        x_adv = A.pgd_attack(model, x, y, EPS, step_size=0.03, steps=3)
    _assert_untouched(model, before)  # BN running statistics included (eval_mode=True)
    assert model.training and not model[1].training and model[0].training
    assert (_linf(x_adv, x) <= EPS + 1e-6).all()


def test_pgd_attack_keeps_existing_grads(setup):
    model, x, y = setup
    grads = [torch.full_like(p, 0.5) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g
    try:
        A.pgd_attack(model, x, y, EPS, step_size=0.03, steps=2)
        assert all(p.grad is g for p, g in zip(model.parameters(), grads))
        assert all((p.grad == 0.5).all() for p in model.parameters())
    finally:
        model.zero_grad(set_to_none=True)


def test_pgd_attack_generator_makes_it_reproducible(setup):
    model, x, y = setup

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return A.pgd_attack(model, x, y, EPS, step_size=0.03, steps=3, generator=gen)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_pgd_attack_losses(setup):
    model, x, y = setup
    for loss in ("margin", lambda logits, t: nn.functional.cross_entropy(logits, t)):
        x_adv = A.pgd_attack(model, x, y, EPS, step_size=0.03, steps=5, loss=loss)
        assert (_linf(x_adv, x) <= EPS + 1e-6).all()
    with pytest.raises(ValueError, match="ce"):
        A.pgd_attack(model, x, y, EPS, step_size=0.03, steps=1, loss="hinge")


def test_foolbox_pgd_matches_pure_torch_pgd(setup):
    """Without random start both are the same deterministic iteration (sum CE, sign step)."""
    model, x, y = setup
    ours = A.pgd_attack(model, x, y, EPS, step_size=0.02, steps=10, random_start=False)
    linf_pgd = A._foolbox().attacks.LinfPGD(abs_stepsize=0.02, steps=10, random_start=False)
    theirs = A._run_foolbox(model, x, y, EPS, linf_pgd, A.ThreatModel.LINF, 256)
    assert torch.allclose(ours, theirs, atol=1e-6)
    # tracking the best iterate changes only the examples some iterate fooled
    best = A.pgd_attack(model, x, y, EPS, step_size=0.02, steps=10, random_start=False, track_best=True)
    fooled_last = model(ours).argmax(1) != y
    assert not ((model(best).argmax(1) == y) & fooled_last).any()  # never robust where the last iterate is not


@pytest.mark.slow
def test_cw_budget_of_params_yaml_is_converged(setup):
    """params.yaml's C&W-L2 budget breaks exactly what a much larger one (9 searches × 2000 steps)
    breaks on the tiny model (the digits measurement: docs/evaluation.md); the old 5 × 50 left an
    example robust here."""
    import dataclasses
    from pathlib import Path

    from rnas.config import load_params
    from rnas.stages.evaluate import settings_from

    model, x, y = setup
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    name, eps, options = dataclasses.replace(settings_from(params), epsilon_l2=EPS_L2).attack_call("cw")
    ours = A.run_attack(name, model, x, y, eps, **options)
    reference = A.run_attack(name, model, x, y, eps, **dict(options, steps=2000, binary_search_steps=9))
    assert torch.equal(ours, reference)


class Bump(nn.Module):
    """A 1x1x1-pixel input v, logits (0, g(v)) with g(v) = 1 − 400·(v − 0.45)²: class 1 (wrong for
    label 0) only on the narrow band |v − 0.45| < 0.05. Sign-gradient ascent with step 0.15 from
    v = 0.31 jumps into the band (v = 0.46) and, the gradient there pointing back, out again
    (v = 0.31): PGD-2's last iterate is classified correctly, its first is not."""

    def forward(self, x):
        v = x.flatten(1)[:, 0]
        return torch.stack([torch.zeros_like(v), 1 - 400 * (v - 0.45) ** 2], dim=1)


def test_pgd_counts_any_iterate_not_only_the_last():
    model = Bump()
    x, y = torch.full((1, 1, 1, 1), 0.31), torch.zeros(1, dtype=torch.long)
    options = dict(step_size=0.15, steps=2, random_start=False)
    assert model(x).argmax(1).item() == 0  # clean: correct
    last = A.pgd_attack(model, x, y, 0.2, **options)
    assert last.item() == pytest.approx(0.31) and model(last).argmax(1).item() == 0  # the last iterate misses
    # the protocol's PGD counts the example as broken: an intermediate iterate fooled the model
    assert A.run_attack("pgd", model, x, y, 0.2, **options).tolist() == [False]
    best = A.pgd_attack(model, x, y, 0.2, **options, track_best=True)
    assert best.item() == pytest.approx(0.46) and model(best).argmax(1).item() == 1
    assert (_linf(best, x) <= 0.2 + 1e-6).all()
    # with restarts too (the second restart never runs: nothing is left robust)
    assert A.run_attack("pgd", model, x, y, 0.2, **options, restarts=3).tolist() == [False]
    # an example the iterates never fool keeps the last one; the loop stops once all are fooled
    both = torch.cat([x, torch.full((1, 1, 1, 1), 0.9)])
    out = A.pgd_attack(model, both, torch.zeros(2, dtype=torch.long), 0.2, **options, track_best=True)
    assert out[0].item() == pytest.approx(0.46) and out[1].item() == pytest.approx(0.9 - 0.2)
    with pytest.raises(ValueError, match="labels"):
        A.pgd_attack(model, x, torch.zeros(1, 2), 0.2, loss=lambda o, t: o.sum(), **options, track_best=True)


# ---------------------------------------------------------------------------------------------
# Registry attacks


@pytest.mark.parametrize("name", sorted(LINF_ADV))
def test_linf_attacks_stay_in_ball_and_box(setup, name):
    model, x, y = setup
    x_adv = LINF_ADV[name](model, x, y, EPS, **FAST[name])
    assert x_adv.shape == x.shape
    assert (_linf(x_adv, x) <= EPS + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("name", sorted(L2_ADV))
def test_l2_attacks_stay_in_ball_and_box(setup, name):
    model, x, y = setup
    x_adv = L2_ADV[name](model, x, y, EPS_L2, **FAST[name])
    assert x_adv.shape == x.shape
    assert (_l2(x_adv, x) <= EPS_L2 + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("name", sorted(FAST))
def test_robust_flags_imply_clean_correctness(setup, name):
    model, x, y = setup
    spec = A.get_attack(name)
    eps = EPS_L2 if spec.threat is A.ThreatModel.L2 else EPS
    clean = A.clean_flags(model, x, y)
    with A.rng_scope(0):  # PGD's random start: the same draw in both calls, whatever ran before
        flags = A.run_attack(name, model, x, y, eps, **FAST[name])
    assert flags.dtype == torch.bool and flags.shape == (len(x),)
    assert not (flags & ~clean).any()
    assert flags.float().mean() <= clean.float().mean()
    if spec.adv_fn is not None:  # the flags are those of the returned points
        with A.rng_scope(0):
            x_adv = spec.adv_fn(model, x, y, eps, **FAST[name])
        assert torch.equal(flags, clean & (model(x_adv).argmax(1) == y))


def test_attacks_actually_attack(setup):
    model, x, y = setup
    clean = A.clean_flags(model, x, y).float().mean()
    for name in ("fgsm", "pgd"):
        assert A.run_attack(name, model, x, y, EPS, **FAST[name]).float().mean() < clean
    for name in ("cw_l2", "deepfool_l2"):
        assert A.run_attack(name, model, x, y, 2 * EPS_L2, **FAST[name]).float().mean() < clean


@pytest.mark.parametrize("name", sorted(FAST))
def test_zero_epsilon_equals_clean(setup, name):
    model, x, y = setup
    flags = A.run_attack(name, model, x, y, 0.0, **FAST[name])
    assert torch.equal(flags, A.clean_flags(model, x, y))


@pytest.mark.parametrize("name", sorted(ADV))
def test_attacks_leave_model_untouched(setup, name):
    model, x, y = setup
    frozen = next(model.parameters())
    frozen.requires_grad_(False)  # a caller's requires_grad choices survive too
    model[0].train()  # and so do modes
    before = _snapshot(model)
    try:
        A.run_attack(name, model, x, y, EPS, **FAST[name])
        assert not frozen.requires_grad and model[0].training and not model.training
        frozen.requires_grad_(True)
        _assert_untouched(model, before)
    finally:
        frozen.requires_grad_(True)
        model.eval()


@pytest.mark.parametrize("name", ["fgsm", "deepfool_l2"])
def test_batching_does_not_change_deterministic_attacks(setup, name):
    model, x, y = setup
    whole = ADV[name](model, x, y, EPS, **FAST[name])
    chunked = ADV[name](model, x, y, EPS, **FAST[name], batch_size=5)
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_pgd_restarts_only_remove_robust_examples(setup):
    model, x, y = setup
    options = dict(step_size=0.01, steps=3)  # weak, so that restarts have work to do
    with A.rng_scope(0):
        one = A.run_attack("pgd", model, x, y, EPS, **options)
    with A.rng_scope(0):
        three = A.run_attack("pgd", model, x, y, EPS, **options, restarts=3)
    assert not (three & ~one).any()
    with pytest.raises(ValueError, match="restarts"):
        A.run_attack("pgd", model, x, y, EPS, **options, restarts=0)


def test_rng_scope_is_reproducible_and_restores_the_callers_rng(setup):
    model, x, y = setup
    state = torch.get_rng_state()
    with A.rng_scope(3):
        a = A.pgd_adv(model, x, y, EPS, step_size=0.03, steps=2)
    with A.rng_scope(3):
        b = A.pgd_adv(model, x, y, EPS, step_size=0.03, steps=2)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


def test_unknown_attack_lists_known_names():
    with pytest.raises(ValueError, match="unknown attack 'pgd7'.*autoattack.*fgsm.*pgd"):
        A.get_attack("pgd7")


def test_registry_threat_models():
    assert A.get_attack("pgd").threat is A.ThreatModel.LINF
    assert A.get_attack("autoattack").threat is A.ThreatModel.LINF
    assert A.get_attack("cw_l2").threat is A.ThreatModel.L2
    assert A.get_attack("clean").threat is None
    assert all(spec.name == name for name, spec in A.ATTACKS.items())


def test_input_contract_is_enforced(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        A.run_attack("fgsm", model, x * 2, y, EPS)
    with pytest.raises(TypeError, match="integer"):
        A.run_attack("fgsm", model, x, y.float(), EPS)
    with pytest.raises(ValueError, match="epsilon"):
        A.run_attack("fgsm", model, x, y, -0.1)
    # int32 labels are fine (cast to int64)
    assert torch.equal(A.run_attack("fgsm", model, x, y.int(), EPS), A.run_attack("fgsm", model, x, y, EPS))


def test_autoattack_small(setup):
    """Standard AutoAttack on 8 examples, Square cut to 100 queries to keep it quick."""
    model, x, y = setup
    x, y = x[:8], y[:8]
    before = _snapshot(model)
    rng = torch.get_rng_state()
    tracer_calls = []

    def tracer(frame, event, arg):  # AutoAttack's check_dynamic calls sys.settrace(None)
        tracer_calls.append(event)

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        x_adv = A.autoattack_adv(model, x, y, EPS, n_queries=100)
        restored = sys.gettrace() is tracer
    finally:
        sys.settrace(previous)
    assert restored
    assert (_linf(x_adv, x) <= EPS + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    _assert_untouched(model, before)
    assert torch.equal(torch.get_rng_state(), rng)

    clean = A.clean_flags(model, x, y)
    flags = A.robust_flags(model, x, x_adv, y)
    assert not (flags & ~clean).any()
    assert flags.float().mean() < clean.float().mean()  # it does break something at ε = 0.1
    # reproducible with the same seed
    again = A.autoattack_flags(model, x, y, EPS, n_queries=100)
    assert torch.equal(again, flags)


def test_autoattack_custom_runs_the_subset_at_standard_settings(setup, monkeypatch):
    """version='custom' is the standard version minus the sub-attacks left out: one APGD/FAB
    restart and 9 targets (pyautoattack's own custom default is 5 restarts), and the protocol's
    ``apgd`` attack is APGD-CE then APGD-T at those settings, at least as strong as APGD-CE alone."""
    from pyautoattack import AutoAttack

    from rnas.evaluation.protocol import EvalSettings

    model, x, y = setup
    seen = {}
    real = AutoAttack.run_standard_evaluation

    def spy(self, *args, **kwargs):
        seen.update(
            attacks=list(self.attacks_to_run),
            apgd=self.apgd.n_restarts,
            fab=self.fab.n_restarts,
            apgd_t=self.apgd_targeted.n_restarts,
            targets=self.apgd_targeted.n_target_classes,
        )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", spy)
    name, eps, options = EvalSettings(epsilon=EPS, epsilon_l2=0.5, pgd_step_size=0.03).attack_call("apgd")
    both = A.run_attack(name, model, x, y, eps, **options)
    assert seen == {"attacks": ["apgd-ce", "apgd-t"], "apgd": 1, "fab": 1, "apgd_t": 1, "targets": N_CLASSES - 1}
    ce = A.autoattack_flags(model, x, y, EPS, version="custom", attacks=("apgd-ce",))
    assert not (both & ~ce).any()  # APGD-T only adds breaks


def _constant_rand(*size, **kwargs):
    """torch.rand with every value 0.75: APGD's random start becomes x + ε (clamped), the same
    for an example wherever it sits in a batch."""
    shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
    return torch.full(shape, 0.75, dtype=kwargs.get("dtype") or torch.float32, device=kwargs.get("device"))


@pytest.mark.parametrize("max_batch", [1, 250, 10_000])
def test_stacked_apgd_t_is_the_librarys_target_loop_side_by_side(setup, monkeypatch, max_batch):
    """APGD-T with its target classes stacked in one batch (one target a call when ``max_batch``
    is below the survivors, two, or all nine) is pyautoattack's loop over the targets: with the
    random starts fixed, the same examples are broken, at the same adversarial points."""
    from pyautoattack.autopgd_base import APGDAttack_targeted

    model, _, _ = setup
    x, y = _data(120, torch.Generator().manual_seed(5))  # at ε 0.08 later targets break 7 more than the first
    eps = 0.08
    monkeypatch.setattr(torch, "rand", _constant_rand)

    def apgd_t(stacked: bool, targets: int = N_CLASSES - 1) -> torch.Tensor:
        attack = APGDAttack_targeted(model, n_iter=10, eps=eps, seed=0, device=x.device, n_target_classes=targets)
        with torch.no_grad():  # as AutoAttack.run_standard_evaluation calls it
            return A.stacked_targeted_perturb(attack, x, y, max_batch) if stacked else attack.perturb(x, y)

    library, stacked = apgd_t(False), apgd_t(True)
    assert torch.allclose(stacked, library, atol=1e-6)
    robust = A.robust_flags(model, x, stacked, y)
    assert torch.equal(robust, A.robust_flags(model, x, library, y))
    assert (_linf(stacked, x) <= eps + 1e-6).all() and stacked.min() >= 0 and stacked.max() <= 1
    # The case is not trivial: some examples stay robust, and the later targets break some the
    # most likely other class alone did not.
    clean = A.clean_flags(model, x, y)
    first_target_only = A.robust_flags(model, x, apgd_t(False, targets=1), y)
    assert robust.any() and (first_target_only & ~robust).any() and not (robust & ~clean).any()


def test_autoattack_stacks_apgd_t_targets_only_when_asked(setup, monkeypatch):
    """``stack_targets`` (the protocol's ``evaluate.autoattack_stack_targets``) decides which
    APGD-T loop AutoAttack runs; both break the same examples with the random starts fixed."""
    model, x, y = setup
    monkeypatch.setattr(torch, "rand", _constant_rand)
    calls = []
    real = A.stacked_targeted_perturb
    monkeypatch.setattr(A, "stacked_targeted_perturb", lambda *a, **k: calls.append(1) or real(*a, **k))
    options = dict(version="custom", attacks=("apgd-ce", "apgd-t"), n_iter=20)
    stacked = A.autoattack_flags(model, x, y, EPS, stack_targets=True, **options)
    assert calls
    calls.clear()
    library = A.autoattack_flags(model, x, y, EPS, stack_targets=False, **options)
    assert not calls and torch.equal(stacked, library)
    settings = EvalSettings(epsilon=EPS, epsilon_l2=0.5, pgd_step_size=0.03)
    assert settings.autoattack_stack_targets and settings.attack_call("apgd")[2]["stack_targets"]
    off = EvalSettings(epsilon=EPS, epsilon_l2=0.5, pgd_step_size=0.03, autoattack_stack_targets=False)
    assert not off.attack_call("autoattack")[2]["stack_targets"]


def test_autoattack_rejects_attacks_outside_custom(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="custom"):
        A.autoattack_adv(model, x, y, EPS, attacks=("apgd-ce",))


def test_autoattack_l2_standard_small(setup):
    """Standard AutoAttack at norm='L2' on 8 examples (Square cut to 100 queries): in the L2 ball,
    breaks something, reproducible, and reports AutoAttack's own checks (all passing here)."""
    model, x, y = setup
    x, y = x[:8], y[:8]
    checks: dict = {}
    x_adv = A.autoattack_l2_adv(model, x, y, EPS_L2, n_queries=100, checks=checks)
    assert (_l2(x_adv, x) <= EPS_L2 + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    flags = A.robust_flags(model, x, x_adv, y)
    assert flags.float().mean() < A.clean_flags(model, x, y).float().mean()
    # (zero_gradients and square_sr only apply once APGD-T / Square see a robust example)
    assert {"randomized", "range_output", "dynamic", "n_classes"} <= set(checks)
    assert all(c["passed"] for c in checks.values()), checks
    assert torch.equal(A.autoattack_l2_flags(model, x, y, EPS_L2, n_queries=100), flags)
    with pytest.raises(ValueError, match="norm"):
        A.autoattack_adv(model, x, y, EPS, norm="L3")


class _Wrapped(nn.Module):
    def __init__(self, net: nn.Module, kind: str):
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):
        if self.kind == "softmax":  # probabilities out
            return torch.softmax(self.net(x), dim=1)
        if self.kind == "noisy":  # a randomized defense
            return self.net(x) + 0.1 * torch.randn(len(x), N_CLASSES)
        if self.kind == "dynamic":  # calls autograd in its forward pass
            with torch.enable_grad():
                z = x.detach().requires_grad_(True)
                torch.autograd.grad((z**2).sum(), z)
            return self.net(x)
        if self.kind == "quantized":  # zero input gradients
            return self.net(torch.round(x * 4) / 4)
        raise ValueError(self.kind)


def test_autoattack_own_checks_are_recorded(setup):
    """AutoAttack only logs its checks; autoattack_adv(checks=...) records each one that ran."""
    model, x, y = setup
    x, y = x[:8], y[:8]

    def checks_of(m, attacks=("square",), eps=EPS, n_queries=1, **kw):  # the checks run before any attack
        out: dict = {}
        A.autoattack_adv(m.eval(), x, y, eps, version="custom", attacks=attacks, checks=out, n_queries=n_queries, **kw)
        return out

    honest = checks_of(model)
    assert set(honest) == {"randomized", "range_output", "dynamic", "n_classes"}
    assert all(c == {"passed": True, "detail": "no warning"} for c in honest.values()), honest
    softmax = checks_of(_Wrapped(model, "softmax"))
    assert not softmax["range_output"]["passed"] and "probability" in softmax["range_output"]["detail"]
    assert not checks_of(_Wrapped(model, "noisy"))["randomized"]["passed"]
    assert not checks_of(_Wrapped(model, "dynamic"))["dynamic"]["passed"]
    # pyautoattack's check_dynamic counts in a dict it never resets; an honest model after a
    # dynamic one is not flagged
    assert checks_of(model)["dynamic"]["passed"]
    quantized = _Wrapped(model, "quantized")
    zero = checks_of(quantized, attacks=("apgd-t",), n_iter=2)["zero_gradients"]
    assert not zero["passed"] and "zero gradient" in zero["detail"]
    square = checks_of(quantized, attacks=("apgd-ce", "square"), eps=0.25, n_queries=100, n_iter=5)["square_sr"]
    assert not square["passed"] and "accuracy after clean" in square["detail"], square


# ---------------------------------------------------------------------------------------------
# Protocol


def test_worst_case_flags_hand_made():
    t, f = True, False
    flags = {
        "clean": torch.tensor([t, t, t, t, f, t]),
        "fgsm": torch.tensor([t, f, t, t, t, t]),
        "pgd20": torch.tensor([t, t, f, t, f, t]),
        "cw": torch.tensor([f, f, f, f, f, f]),  # L2: not part of the L∞ worst case
    }
    robust = worst_case_flags(flags, ["fgsm", "pgd20"])
    assert robust.tolist() == [t, f, f, t, f, t]
    assert worst_case_flags(flags, []).tolist() == flags["clean"].tolist()
    with pytest.raises(ValueError, match="shape"):
        worst_case_flags({**flags, "fgsm": torch.tensor([t])}, ["fgsm"])


def _settings(**overrides) -> EvalSettings:
    base = dict(
        epsilon=EPS,
        epsilon_l2=EPS_L2,
        pgd_step_size=0.025,
        cw_steps=10,
        deepfool_steps=10,
        eps_sweep=(0.05, 0.3),
        attacks=("fgsm", "pgd20", "pgd100", "cw", "deepfool"),
    )
    return EvalSettings(**{**base, **overrides})


EXPECTED_KEYS = {
    "clean_acc",
    "fgsm_acc",
    "pgd20_acc",
    "pgd100_acc",
    "autoattack_acc",
    "apgd_acc",
    "robust_acc",
    "autoattack_l2_acc",
    "cw_acc",
    "deepfool_acc",
    "robust_acc_l2",
    "worst_case_attacks",
    "autoattack_checks",
    "autoattack_checks_details",
    "eps_sweep",
    "pgd_best_iterate",
    "epsilon",
    "epsilon_l2",
    "params",
    "macs",
    "n_examples",
    "attack_seconds",
}


def _check_metrics(metrics, flags, settings, n):
    assert set(metrics) == EXPECTED_KEYS
    json.dumps(metrics, allow_nan=False)  # plain, serialisable values
    clean = metrics["clean_acc"]
    ran = {name: metrics[PROTOCOL_ATTACKS[name].metric] for name in settings.attacks}
    for name, spec in PROTOCOL_ATTACKS.items():
        if name not in settings.attacks:
            assert metrics[spec.metric] is None
    for name, acc in ran.items():
        assert isinstance(acc, float) and 0.0 <= acc <= clean
        assert acc == flags[name].sum().item() / n
        assert not (flags[name] & ~flags["clean"]).any()
    for worst, metric, attacks in (
        ("robust", "robust_acc", ("fgsm", "pgd20", "pgd100", "autoattack", "apgd")),
        ("robust_l2", "robust_acc_l2", ("autoattack_l2", "cw", "deepfool")),
    ):
        names = [a for a in settings.attacks if a in attacks]
        if not names:
            assert metrics[metric] is None and worst not in flags and metric not in metrics["worst_case_attacks"]
            continue
        for name in names:
            assert metrics[metric] <= ran[name]
        expected = flags["clean"].clone()
        for name in names:
            expected &= flags[name]
        assert torch.equal(flags[worst], expected) and metrics[metric] == expected.sum().item() / n
        assert metrics["worst_case_attacks"][metric] == ", ".join(names)
    autoattacks = [a for a in settings.attacks if PROTOCOL_ATTACKS[a].registry_name in ("autoattack", "autoattack_l2")]
    assert set(metrics["autoattack_checks"]) == set(autoattacks) == set(metrics["autoattack_checks_details"])
    for name in autoattacks:
        assert all(metrics["autoattack_checks"][name].values()), metrics["autoattack_checks_details"]
    sweep = metrics["eps_sweep"]
    assert sweep["0.0"] == clean
    assert list(sweep) == [str(e) for e in sorted({0.0, settings.epsilon, *settings.eps_sweep})]
    assert list(sweep.values()) == sorted(sweep.values(), reverse=True)
    if "pgd20" in settings.attacks:
        assert sweep[str(settings.epsilon)] == metrics["pgd20_acc"]
    assert metrics["n_examples"] == n and metrics["params"] > 0 and metrics["macs"] > 0
    assert set(metrics["attack_seconds"]) == {*settings.attacks, "eps_sweep"}


def test_evaluate_model_reports_the_apgd_attack(setup):
    """The default digits protocol's AutoAttack part (APGD-CE + APGD-T) has its own eval.json key
    and enters the L∞ worst case."""
    model, x, y = setup
    settings = _settings(attacks=("pgd20", "apgd"))
    metrics, flags = evaluate_model(model, x[:8], y[:8], settings, progress=False)
    _check_metrics(metrics, flags, settings, 8)
    assert metrics["apgd_acc"] == flags["apgd"].float().mean().item()
    assert metrics["robust_acc"] <= metrics["apgd_acc"]
    assert "apgd" in metrics["worst_case_attacks"]["robust_acc"]


def test_evaluate_model_metrics_and_flags(setup):
    model, x, y = setup
    settings = _settings()
    before = _snapshot(model)
    rng = torch.get_rng_state()
    metrics, flags = evaluate_model(model, x, y, settings, progress=False)
    _check_metrics(metrics, flags, settings, len(x))
    assert metrics["clean_acc"] > 0.9 and metrics["robust_acc"] < metrics["clean_acc"]
    assert metrics["eps_sweep"]["0.3"] <= 1.0 / N_CLASSES  # a working attack at a large ε
    assert metrics["pgd100_acc"] <= metrics["fgsm_acc"]
    assert all(f.dtype == torch.bool and f.device.type == "cpu" for f in flags.values())
    _assert_untouched(model, before)
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)

    again, again_flags = evaluate_model(model, x, y, settings, progress=False)
    strip = lambda m: {k: v for k, v in m.items() if k != "attack_seconds"}  # noqa: E731
    assert strip(again) == strip(metrics)
    assert all(torch.equal(again_flags[k], flags[k]) for k in flags)


def test_sweep_at_zero_epsilon_is_the_clean_pass_and_runs_no_attack(setup, monkeypatch):
    """PGD in the ε = 0 ball can only visit x itself, so its flags are the clean ones; the
    protocol takes them without running it (and PGD-20's at ``epsilon``)."""
    model, x, y = setup
    model.eval()
    clean = A.run_attack("clean", model, x, y, 0.0)
    assert torch.equal(A.run_attack("pgd", model, x, y, 0.0, step_size=0.025, steps=20), clean)
    settings = _settings(attacks=("pgd20",), eps_sweep=(0.0, 0.3))
    ran = []
    real = A.ATTACKS["pgd"]
    spy = lambda m, xs, ys, eps, **o: ran.append(eps) or real.fn(m, xs, ys, eps, **o)  # noqa: E731
    monkeypatch.setitem(A.ATTACKS, "pgd", dataclasses.replace(real, fn=spy))
    metrics, flags = evaluate_model(model, x, y, settings, progress=False)
    assert ran == [EPS, 0.3]  # PGD-20, then the sweep's one new radius
    assert torch.equal(flags["eps_sweep/0.0"], flags["clean"]) and torch.equal(flags["eps_sweep/0.0"], clean)
    assert metrics["eps_sweep"]["0.0"] == metrics["clean_acc"]


def test_pgd20_comes_from_the_first_20_steps_of_pgd100s_run(setup, monkeypatch):
    """One PGD run gives both protocol PGDs, with the flags each would get from its own run; with
    restarts they run separately (a restart attacks what its own run left)."""
    import rnas.evaluation.protocol as protocol

    model, x, y = setup
    model.eval()
    settings = _settings(attacks=("pgd20", "pgd100"), eps_sweep=())
    assert protocol.pgd_prefix_groups(settings) == dict.fromkeys(("pgd20", "pgd100"), ("pgd20", "pgd100"))
    assert protocol.pgd_prefix_groups(_settings(attacks=("pgd20", "pgd100"), pgd_restarts=2)) == {}
    assert protocol.pgd_prefix_groups(_settings(attacks=("fgsm", "pgd100"))) == {}
    calls = []
    real = protocol.pgd_prefix_flags
    monkeypatch.setattr(protocol, "pgd_prefix_flags", lambda *a, **k: calls.append(k) or real(*a, **k))
    metrics, flags = evaluate_model(model, x, y, settings, progress=False, attack_model=model)
    assert [(c["steps"], c["prefixes"]) for c in calls] == [(100, (20,))]
    for name in ("pgd20", "pgd100"):
        registry, eps, options = settings.attack_call(name)
        with A.rng_scope(settings.seed):
            own = A.run_attack(registry, model, x, y, eps, **options)
        assert torch.equal(flags[name], own), name
    assert metrics["pgd20_acc"] >= metrics["pgd100_acc"]
    assert metrics["attack_seconds"]["pgd20"] == 0.0 < metrics["attack_seconds"]["pgd100"]


def test_evaluate_model_without_linf_attacks(setup):
    model, x, y = setup
    settings = _settings(attacks=("deepfool",))
    metrics, flags = evaluate_model(model, x, y, settings, progress=False)
    _check_metrics(metrics, flags, settings, len(x))
    assert metrics["robust_acc"] is None and "robust" not in flags
    assert metrics["pgd20_acc"] is None and metrics["deepfool_acc"] is not None
    assert metrics["robust_acc_l2"] == metrics["deepfool_acc"]
    assert metrics["eps_sweep"]["0.0"] == metrics["clean_acc"]


def test_eval_settings_validation():
    with pytest.raises(ValueError, match="unknown attack.*pgd20"):
        _settings(attacks=("pgd7",))
    with pytest.raises(ValueError, match="epsilon"):
        _settings(epsilon=-1.0)
    with pytest.raises(ValueError, match="pgd_restarts"):
        _settings(pgd_restarts=0)
    with pytest.raises(ValueError, match="repeat"):
        _settings(attacks=("fgsm", "fgsm"))
    with pytest.raises(ValueError, match="cw_binary_search_steps"):
        _settings(cw_binary_search_steps=0)
    with pytest.raises(ValueError, match="cw_initial_const"):
        _settings(cw_initial_const=0.0)
    registry, eps, options = _settings(cw_binary_search_steps=7, cw_initial_const=0.1).attack_call("cw")
    assert (registry, eps, options["binary_search_steps"], options["initial_const"]) == ("cw_l2", EPS_L2, 7, 0.1)
    assert _settings().attack_call("autoattack_l2")[:2] == ("autoattack_l2", EPS_L2)
    # AutoAttack's iterations: the standard ones unless set (a quick-test departure), only for its attacks
    assert "n_iter" not in _settings().attack_call("apgd")[2]
    quick = _settings(autoattack_iterations=10)
    assert [quick.attack_call(a)[2].get("n_iter") for a in ("apgd", "autoattack", "autoattack_l2", "pgd20")] == [
        10,
        10,
        10,
        None,
    ]
    with pytest.raises(ValueError, match="autoattack_iterations"):
        _settings(autoattack_iterations=-1)
    # params.yaml: the same knobs, range-checked before any work starts
    from rnas.config import ParamsError, params_from_dict

    for key, value, allowed in (
        ("cw_binary_search_steps", 0, r"\[1, 50\]"),
        ("cw_initial_const", 0.0, r"\(0"),
        ("sanity_large_epsilon_l2", 0.0, r"\(0"),
    ):
        with pytest.raises(ParamsError, match=rf"evaluate\.{key}.*{allowed}"):
            params_from_dict({"evaluate": {key: value}})
    settings = _settings(attacks=["fgsm"], eps_sweep=[0.2])  # lists (YAML) become tuples
    assert settings.attacks == ("fgsm",) and settings.eps_sweep == (0.2,)
    hash(settings)
    assert settings.sweep_step_size(0.2) == pytest.approx(0.05)


@pytest.mark.slow
def test_evaluate_model_full_default_suite(setup):
    model, x, y = setup
    settings = EvalSettings(epsilon=EPS, epsilon_l2=EPS_L2, pgd_step_size=0.025, cw_steps=50)  # C&W: fast
    metrics, flags = evaluate_model(model, x[:12], y[:12], settings, progress=False)
    _check_metrics(metrics, flags, settings, 12)
    assert metrics["robust_acc"] <= metrics["autoattack_acc"]
    assert metrics["robust_acc_l2"] <= metrics["autoattack_l2_acc"]
    assert set(metrics["autoattack_checks"]) == {"autoattack", "autoattack_l2"}
