"""Sanity checks recorded with every evaluation: is the robustness number trustworthy?

docs/design.md §6. The checks follow Carlini et al., "On Evaluating Adversarial Robustness" (2019,
§5 "basic sanity tests") and AutoAttack's flags (Croce & Hein, ICML 2020, ``checks.py``): a
model that *masks* gradients (non-differentiable or saturated forward passes, probability
outputs) fools gradient attacks into reporting robustness that a black-box attack or a
huge radius reveals as fake.

======================================  =========================================================
check                                   passes when
======================================  =========================================================
``eps0_equals_clean``                   PGD (one step) at ε = 0 leaves exactly the clean flags
``monotone_in_eps``                     acc(ε_{i+1}) ≤ acc(ε_i) + tol along the ε sweep
``large_eps_reaches_chance``            PGD-20 at ``large_epsilon`` gives acc ≤ 1/K (K classes)
``large_eps_l2_reaches_chance``         APGD-CE (L2) at ``large_epsilon_l2`` gives acc ≤ 1/K
``pgd_not_weaker_than_fgsm``            acc(PGD-k) ≤ acc(FGSM) + tol for every PGD that ran
``more_pgd_steps_not_weaker``           acc(PGD-100) ≤ acc(PGD-20) + tol
``square_not_stronger_than_whitebox``   share of examples Square alone breaks that every
                                        white-box L∞ attack (FGSM, PGD-20, PGD-100, APGD) missed
                                        ≤ tol (Square runs on those examples only)
``nonzero_input_gradients``             share of examples with ∇ₓ CE(f(x), y) ≡ 0 ≤ max share
``outputs_are_logits``                  the outputs are not a probability vector per row
``autoattack_own_checks``               no AutoAttack run's own check warned (``autoattack_checks``)
======================================  =========================================================

``tol`` (:attr:`SanitySettings.tolerance`) is an accuracy slack in [0, 1]: PGD starts at random,
so two honest runs can differ by an example or two.

Checks are named functions in the :data:`SANITY_CHECKS` registry. Each reads a
:class:`SanityInputs` (the metrics and per-example flags of the protocol plus cheap model
probes) and returns a :class:`CheckResult` (``passed`` is None when the check does not apply,
e.g. no FGSM ran). The attacks the checks need beyond the protocol's own -- PGD at ε = 0 (the
sweep's ε = 0 point is the clean pass itself), Square alone on the examples the white-box attacks
left, PGD-20 at the large radius unless the sweep already holds it, APGD-CE at the large L2
radius when an L2 attack is in the protocol -- are declared by
:func:`probe_attacks` and run by :func:`rnas.evaluation.protocol.evaluate_with_sanity`, which
stores their flags in the resumable evaluation state like every other attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnas.config import check_evaluate

if TYPE_CHECKING:  # protocol imports this module; only the type is needed here
    from rnas.evaluation.protocol import EvalSettings

__all__ = [
    "SANITY_CHECKS",
    "CheckResult",
    "ModelProbe",
    "SanityCheck",
    "SanityInputs",
    "SanitySettings",
    "large_eps_key",
    "large_eps_l2_key",
    "model_probe",
    "probe_attacks",
    "probe_examples",
    "run_checks",
    "sanity_summary",
    "whitebox_survivors",
]

SQUARE_KEY = "sanity/square"
EPS0_KEY = "sanity/pgd@0"  # PGD, one step, at ε = 0
WHITEBOX_LINF = ("fgsm", "pgd20", "pgd100", "apgd")  # the white-box L∞ attacks Square is compared with
L2_PROTOCOL = ("autoattack_l2", "cw", "deepfool")  # protocol L2 attacks (any of them -> the L2 probe)
PGD_ATTACKS = ("pgd20", "pgd100")


@dataclass(frozen=True)
class SanitySettings:
    """Knobs of the checks (``evaluate.sanity_*`` in params.yaml); radii in pixel units."""

    large_epsilon: float = 0.5  # L∞ radius at which a working white-box attack reaches chance
    square_queries: int = 1000  # query budget of the stand-alone Square attack
    large_epsilon_l2: float = 4.0  # L2 radius at which APGD-CE (L2) reaches chance
    tolerance: float = 0.01  # accuracy slack (fraction) of the comparison checks
    max_zero_grad_fraction: float = 0.0  # largest share of examples allowed an all-zero ∇ₓ

    def __post_init__(self) -> None:
        # Each knob is the params key evaluate.sanity_<name>; its limits are checked in one place, the
        # params model (a ParamsError, a ValueError, naming evaluate.sanity_<name> and what is allowed).
        check_evaluate(**{f"sanity_{f.name}": getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class CheckResult:
    passed: bool | None  # None: the check does not apply to this evaluation
    detail: str  # the numbers behind the verdict, one line


@dataclass(frozen=True)
class ModelProbe:
    """Cheap facts about the model on the evaluation examples (no attack)."""

    num_classes: int
    zero_grad_fraction: float  # share of examples whose input gradient of CE is exactly 0
    output_min: float
    output_max: float
    max_row_sum_deviation: float  # max over rows of |Σ_k f_k(x) − 1|


@dataclass
class SanityInputs:
    metrics: Mapping[str, Any]  # eval.json as computed by evaluate_model
    flags: Mapping[str, Tensor]  # per-example flags, including the probe attacks' ones
    settings: EvalSettings
    sanity: SanitySettings
    probe: ModelProbe


@dataclass(frozen=True)
class SanityCheck:
    name: str
    doc: str  # what passing means, shown in the report
    fn: Callable[[SanityInputs], CheckResult]
    label: str = ""  # short column header in the report


# --------------------------------------------------------------------------------------------
# Probes


def model_probe(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> ModelProbe:
    """Input gradients of the summed CE and the output range, chunk by chunk.

    A zero-gradient example is one with Σ|∂CE/∂x| = 0 exactly, as in AutoAttack's
    ``check_zero_gradients``. Parameters get no ``.grad``; the model's mode is left alone.
    """
    y = y.to(device=x.device, dtype=torch.int64)
    zero = 0
    lo, hi, dev = math.inf, -math.inf, 0.0
    num_classes = 0
    for start in range(0, len(x), batch_size):
        xs = x[start : start + batch_size].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(xs)  # (B, K)
            loss = F.cross_entropy(out, y[start : start + batch_size], reduction="sum")
            # A forward that detaches its input has no graph back to xs: its gradient is 0.
            grad = torch.autograd.grad(loss, xs, allow_unused=True)[0] if loss.requires_grad else None
        if grad is None:
            grad = torch.zeros_like(xs)
        zero += int((grad.flatten(1).abs().sum(1) == 0).sum())
        out = out.detach().float()
        num_classes = out.shape[1]
        lo, hi = min(lo, float(out.min())), max(hi, float(out.max()))
        dev = max(dev, float((out.sum(1) - 1).abs().max()))
    return ModelProbe(num_classes, zero / len(x), lo, hi, dev)


def large_eps_key(settings: EvalSettings, sanity: SanitySettings) -> str:
    """Flag key holding PGD-20 at the large radius (reused from the ε sweep when it is there)."""
    if float(sanity.large_epsilon) in settings.sweep_epsilons():
        return f"eps_sweep/{float(sanity.large_epsilon)}"
    return f"sanity/pgd20@{float(sanity.large_epsilon)}"


def large_eps_l2_key(sanity: SanitySettings) -> str:
    """Flag key holding APGD-CE (L2) at the large L2 radius."""
    return f"sanity/apgd_ce_l2@{float(sanity.large_epsilon_l2)}"


def probe_attacks(settings: EvalSettings, sanity: SanitySettings) -> dict[str, tuple[str, float, dict[str, Any]]]:
    """Attacks the checks need beyond the protocol: flag key -> (registry name, ε, options).

    * PGD, one step, at ε = 0 (random start, gradient step, projection): it cannot move, so its
      flags must be the clean ones (a model whose outputs change from pass to pass, or an attack
      that leaves its ball, fails ``eps0_equals_clean``). The ε sweep takes the clean flags at
      ε = 0 instead of running PGD-20 there (~0.6 s a digits model).
    * Square alone (AutoAttack ``version="custom"``, ``square_queries`` queries) at ``epsilon``
      on the examples every white-box L∞ attack left robust (:func:`probe_examples`): inside
      AutoAttack standard it only sees the survivors of *all* earlier sub-attacks, so which
      examples it alone breaks is not separable there. It is an attack at ε, so it also joins
      the worst case ``robust_acc``.
    * PGD-20 at ``large_epsilon`` with the sweep's step/ε ratio, unless the sweep holds it.
    * APGD-CE at ``norm="L2"`` (AutoAttack ``version="custom"``, 100 iterations) at
      ``large_epsilon_l2``, when an L2 attack is in the protocol.
    """
    probes: dict[str, tuple[str, float, dict[str, Any]]] = {}
    _, _, options = settings.attack_call("pgd20")
    probes[EPS0_KEY] = ("pgd", 0.0, dict(options, steps=1))
    if any(a in settings.attacks for a in WHITEBOX_LINF):
        probes[SQUARE_KEY] = (
            "autoattack",
            float(settings.epsilon),
            dict(
                version="custom",
                attacks=("square",),
                n_queries=sanity.square_queries,
                seed=settings.seed,
                batch_size=settings.batch_size,
            ),
        )
    key = large_eps_key(settings, sanity)
    if not key.startswith("eps_sweep/"):
        _, _, options = settings.attack_call("pgd20")
        options["step_size"] = settings.sweep_step_size(sanity.large_epsilon)
        probes[key] = ("pgd", float(sanity.large_epsilon), options)
    if any(a in settings.attacks for a in L2_PROTOCOL):
        probes[large_eps_l2_key(sanity)] = (
            "autoattack_l2",
            float(sanity.large_epsilon_l2),
            dict(version="custom", attacks=("apgd-ce",), seed=settings.seed, batch_size=settings.batch_size),
        )
    return probes


def probe_examples(key: str, flags: Mapping[str, Tensor]) -> Tensor | None:
    """The examples the probe ``key`` runs on, a boolean mask (N,) on the CPU, or None for all.

    Square (:data:`SQUARE_KEY`) runs on the examples classified correctly that every white-box
    L∞ attack of the protocol (:data:`WHITEBOX_LINF`) left robust: the only examples on which its
    result can change ``square_not_stronger_than_whitebox`` (per example, on exactly those) or
    the worst case ``robust_acc`` (an AND over the attacks). Its flag is False on the others,
    which are broken (or misclassified) already, so its flags read "robust to the white-box
    attacks and to Square". Square's iterations run on the examples it has not broken yet, so
    the examples the white-box attacks break are most of its cost: on the digits models it ran
    2.3 and 2.0x faster on these (137 and 145 of 359 examples) than on all, breaking none of them
    either way (docs/evaluation.md)."""
    return whitebox_survivors(flags) if key == SQUARE_KEY else None


def whitebox_survivors(flags: Mapping[str, Tensor]) -> Tensor:
    """(N,) on the CPU: classified correctly and left robust by every white-box L∞ attack of
    :data:`WHITEBOX_LINF` that ran."""
    mask = flags["clean"].bool().cpu().clone()
    for name in WHITEBOX_LINF:
        if name in flags:
            mask &= flags[name].bool().cpu()
    return mask


# --------------------------------------------------------------------------------------------
# Checks


def _acc(flags: Tensor) -> float:
    return int(flags.sum()) / flags.numel()


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def check_eps0_equals_clean(s: SanityInputs) -> CheckResult:
    """At ε = 0 the attack cannot move: its flags must equal the clean flags, example by example."""
    zero, clean = s.flags.get(EPS0_KEY), s.flags["clean"]
    if zero is None:
        return CheckResult(None, "PGD at ε = 0 did not run")
    differ = int((zero.bool() != clean.bool()).sum())
    return CheckResult(
        differ == 0, f"acc(ε=0) {_pct(_acc(zero))} vs clean {_pct(_acc(clean))}; {differ} examples differ"
    )


def _sweep_points(s: SanityInputs) -> list[tuple[float, float]]:
    points = {float(k.split("/", 1)[1]): _acc(v) for k, v in s.flags.items() if k.startswith("eps_sweep/")}
    key = large_eps_key(s.settings, s.sanity)
    if key in s.flags:
        points[float(s.sanity.large_epsilon)] = _acc(s.flags[key])
    return sorted(points.items())


def check_monotone_in_eps(s: SanityInputs) -> CheckResult:
    """Robust accuracy never rises with ε (a larger ball contains the smaller one)."""
    points = _sweep_points(s)
    if len(points) < 2:
        return CheckResult(None, "fewer than two ε values")
    rises = [(e0, a0, e1, a1) for (e0, a0), (e1, a1) in zip(points, points[1:]) if a1 > a0 + s.sanity.tolerance]
    curve = ", ".join(f"{e:g}: {_pct(a)}" for e, a in points)
    if rises:
        e0, a0, e1, a1 = rises[0]
        return CheckResult(False, f"rises from {_pct(a0)} at ε={e0:g} to {_pct(a1)} at ε={e1:g} ({curve})")
    return CheckResult(True, curve)


def check_large_eps_reaches_chance(s: SanityInputs) -> CheckResult:
    """At a huge radius a working white-box attack leaves at most chance accuracy (1/K)."""
    key = large_eps_key(s.settings, s.sanity)
    if key not in s.flags:
        return CheckResult(None, f"PGD-20 at ε={s.sanity.large_epsilon:g} did not run")
    acc, chance = _acc(s.flags[key]), 1.0 / s.probe.num_classes
    return CheckResult(acc <= chance, f"PGD-20 at ε={s.sanity.large_epsilon:g}: {_pct(acc)} (chance {_pct(chance)})")


def check_large_eps_l2_reaches_chance(s: SanityInputs) -> CheckResult:
    """The L2 analogue: at a huge L2 radius a working white-box attack leaves at most 1/K."""
    key = large_eps_l2_key(s.sanity)
    if key not in s.flags:
        return CheckResult(None, f"APGD-CE (L2) at ε₂={s.sanity.large_epsilon_l2:g} did not run")
    acc, chance = _acc(s.flags[key]), 1.0 / s.probe.num_classes
    return CheckResult(
        acc <= chance, f"APGD-CE (L2) at ε₂={s.sanity.large_epsilon_l2:g}: {_pct(acc)} (chance {_pct(chance)})"
    )


def check_pgd_not_weaker_than_fgsm(s: SanityInputs) -> CheckResult:
    """An iterative attack is at least as strong as its single step."""
    fgsm = s.metrics.get("fgsm_acc")
    pgds = {a: s.metrics.get(f"{a}_acc") for a in PGD_ATTACKS if s.metrics.get(f"{a}_acc") is not None}
    if fgsm is None or not pgds:
        return CheckResult(None, "needs FGSM and a PGD")
    bad = {a: v for a, v in pgds.items() if v > fgsm + s.sanity.tolerance}
    text = f"FGSM {_pct(fgsm)}; " + ", ".join(f"{a.upper()} {_pct(v)}" for a, v in pgds.items())
    return CheckResult(not bad, text)


def check_more_pgd_steps_not_weaker(s: SanityInputs) -> CheckResult:
    """PGD-100 never leaves more accuracy than PGD-20 (same start, five times the steps)."""
    p20, p100 = s.metrics.get("pgd20_acc"), s.metrics.get("pgd100_acc")
    if p20 is None or p100 is None:
        return CheckResult(None, "needs PGD-20 and PGD-100")
    return CheckResult(p100 <= p20 + s.sanity.tolerance, f"PGD-20 {_pct(p20)}, PGD-100 {_pct(p100)}")


def check_square_not_stronger_than_whitebox(s: SanityInputs) -> CheckResult:
    """Black-box Square must not break what the gradient attacks could not; if it does,
    gradients are masked. Per example: the examples every white-box L∞ attack left robust but
    Square broke may be at most a ``tolerance`` share (comparing totals would let Square's
    extra breaks hide behind examples only the white-box attacks broke). Square runs on exactly
    those examples (:func:`probe_examples`); its flags are False elsewhere."""
    square = s.flags.get(SQUARE_KEY)
    white = {a: _acc(s.flags[a]) for a in WHITEBOX_LINF if a in s.flags}
    if square is None or not white:
        return CheckResult(None, "needs Square and a white-box L∞ attack")
    best_name = min(white, key=white.get)
    extra = whitebox_survivors(s.flags)
    n_left = int(extra.sum())
    extra &= ~square.bool().cpu()  # broken by Square only
    n_extra = int(extra.sum())
    share = n_extra / extra.numel()
    shown = ", ".join(str(i) for i in extra.nonzero().flatten().tolist()[:10])
    return CheckResult(
        share <= s.sanity.tolerance,
        f"{n_extra} examples ({_pct(share)}, allowed {_pct(s.sanity.tolerance)}) broken by Square "
        f"({s.sanity.square_queries} queries) of the {n_left} that {', '.join(a.upper() for a in white)} all missed"
        + (f" (examples {shown})" if n_extra else "")
        + f"; best white-box {best_name.upper()} {_pct(white[best_name])}",
    )


def check_nonzero_input_gradients(s: SanityInputs) -> CheckResult:
    """Gradient attacks need gradients: an all-zero ∇ₓ means a non-differentiable forward."""
    frac = s.probe.zero_grad_fraction
    return CheckResult(
        frac <= s.sanity.max_zero_grad_fraction,
        f"{_pct(frac)} of examples have a zero input gradient (allowed {_pct(s.sanity.max_zero_grad_fraction)})",
    )


# AutoAttack's check_range_output tolerance: outputs in [−α, 1 + α] with rows summing to 1 ± α.
PROBABILITY_TOLERANCE = 1e-5


def check_outputs_are_logits(s: SanityInputs) -> CheckResult:
    """Attacks' losses expect logits; a softmax output saturates and hides the gradient."""
    p, a = s.probe, PROBABILITY_TOLERANCE
    probabilities = p.output_min > -a and p.output_max < 1 + a and p.max_row_sum_deviation < a
    return CheckResult(
        not probabilities,
        f"outputs in [{p.output_min:.3g}, {p.output_max:.3g}], max |row sum − 1| {p.max_row_sum_deviation:.3g}",
    )


def check_autoattack_own_checks(s: SanityInputs) -> CheckResult:
    """AutoAttack's own flags (randomized/dynamic defense, probability outputs, target classes,
    zero gradients, Square success) raised no warning in any AutoAttack run."""
    runs = s.metrics.get("autoattack_checks") or {}
    details = s.metrics.get("autoattack_checks_details") or {}
    if not runs:
        return CheckResult(None, "no AutoAttack run")
    failed = [(run, c) for run, checks in runs.items() for c, ok in checks.items() if not ok]
    total = sum(len(checks) for checks in runs.values())
    if failed:
        return CheckResult(False, "; ".join(f"{run}: {c} — {details.get(run, {}).get(c, '')}" for run, c in failed))
    return CheckResult(True, f"{total} checks over {len(runs)} AutoAttack runs ({', '.join(runs)}), no warning")


SANITY_CHECKS: dict[str, SanityCheck] = {
    c.name: c
    for c in (
        SanityCheck(
            "eps0_equals_clean", "accuracy at ε = 0 equals clean accuracy", check_eps0_equals_clean, "ε=0 is clean"
        ),
        SanityCheck("monotone_in_eps", "robust accuracy never rises with ε", check_monotone_in_eps, "monotone in ε"),
        SanityCheck(
            "large_eps_reaches_chance",
            "at a large ε a white-box attack reaches chance",
            check_large_eps_reaches_chance,
            "large ε → chance",
        ),
        SanityCheck(
            "large_eps_l2_reaches_chance",
            "at a large L2 radius a white-box attack reaches chance",
            check_large_eps_l2_reaches_chance,
            "large ε₂ → chance",
        ),
        SanityCheck(
            "pgd_not_weaker_than_fgsm", "PGD at least as strong as FGSM", check_pgd_not_weaker_than_fgsm, "PGD ≥ FGSM"
        ),
        SanityCheck(
            "more_pgd_steps_not_weaker",
            "more PGD steps do not raise accuracy",
            check_more_pgd_steps_not_weaker,
            "PGD-100 ≥ PGD-20",
        ),
        SanityCheck(
            "square_not_stronger_than_whitebox",
            "black-box Square breaks no more than the tolerance of examples every white-box attack missed",
            check_square_not_stronger_than_whitebox,
            "Square ≤ white-box",
        ),
        SanityCheck("nonzero_input_gradients", "input gradients are non-zero", check_nonzero_input_gradients, "∇ₓ ≠ 0"),
        SanityCheck(
            "outputs_are_logits", "the model outputs logits, not probabilities", check_outputs_are_logits, "logits out"
        ),
        SanityCheck(
            "autoattack_own_checks",
            "AutoAttack's own checks raised no warning",
            check_autoattack_own_checks,
            "AutoAttack checks",
        ),
    )
}


def run_checks(inputs: SanityInputs, names: tuple[str, ...] | None = None) -> dict[str, CheckResult]:
    """Run the named checks (all by default), in registry order."""
    names = tuple(SANITY_CHECKS) if names is None else names
    unknown = [n for n in names if n not in SANITY_CHECKS]
    if unknown:
        raise ValueError(f"unknown sanity check(s) {unknown}; known: {', '.join(SANITY_CHECKS)}")
    return {n: SANITY_CHECKS[n].fn(inputs) for n in names}


def sanity_summary(results: Mapping[str, CheckResult]) -> tuple[dict[str, bool], dict[str, str]]:
    """``(sanity, sanity_details)`` for eval.json: verdicts of the checks that applied, and
    every check's one-line detail (``"n/a: ..."`` for those that did not apply)."""
    verdicts = {n: bool(r.passed) for n, r in results.items() if r.passed is not None}
    details = {n: (r.detail if r.passed is not None else f"n/a: {r.detail}") for n, r in results.items()}
    return verdicts, details
