"""The evaluation protocol: one model, one fixed set of test examples, the standard attack suite.

docs/design.md §6. Every attack's own accuracy is measured on *all* examples independently (never
only on the survivors of earlier attacks), so the per-attack numbers can be compared by the
sanity checks (PGD at least as strong as FGSM, more steps never help, ...). The worst cases
combine the per-example flags: an example counts in ``robust_acc`` only if it is classified
correctly on the clean input and every L∞ attack run at ``epsilon`` failed on it (with the
sanity checks, the stand-alone Square probe too), and in ``robust_acc_l2`` likewise for every
L2 attack at ``epsilon_l2`` (AutoAttack-L2, C&W, DeepFool).

Suite (names usable in :attr:`EvalSettings.attacks`):

=================  ==========================================================  =============
name               attack                                                      radius
=================  ==========================================================  =============
``fgsm``           FGSM, no random start                                       ``epsilon``
``pgd20``          PGD-20, CE, random start, absolute step ``pgd_step_size``;  ``epsilon``
                   broken if *any* iterate (of any restart) fools the model
``pgd100``         PGD-100, same                                               ``epsilon``
``autoattack``     AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), L∞    ``epsilon``
``apgd``           AutoAttack's two gradient attacks, APGD-CE then APGD-T      ``epsilon``
                   (9 targets) on what APGD-CE left, standard settings: on
                   7 digits models FAB-T and Square broke 2 of 2513
                   examples more (docs/evaluation.md), at 2.5-4x the cost
``autoattack_l2``  AutoAttack standard at ``norm="L2"``                        ``epsilon_l2``
``cw``             Carlini–Wagner L2: ``cw_binary_search_steps`` searches of   ``epsilon_l2``
                   ``cw_steps`` Adam steps from c = ``cw_initial_const``
``deepfool``       DeepFool L2, ``deepfool_steps`` steps                       ``epsilon_l2``
=================  ==========================================================  =============

Every AutoAttack run records AutoAttack's own checks (:data:`~rnas.evaluation.attacks.AUTOATTACK_CHECKS`)
in ``autoattack_checks`` / ``autoattack_checks_details`` ({run: {check: ...}}).

The ε sweep runs PGD-20 at ε = 0, ``epsilon`` and every ``eps_sweep`` value (at ε = 0 the ball is
the clean input, so its flags are the clean ones; at ``epsilon`` they are PGD-20's). Its step size keeps
the main setting's ratio step/ε (``pgd_step_size · ε' / epsilon``), so every point of the curve
is the same attack relative to its ball (a fixed absolute step could not even reach the
boundary of a large ball in 20 steps, which would fake robustness at large ε).

Every attack runs inside :func:`~rnas.evaluation.attacks.rng_scope` seeded with
``settings.seed``, so an evaluation is reproducible and leaves the caller's RNG untouched.

Resumable state (:class:`EvalState`): after each attack (and each ε of the sweep) the flags so
far are saved atomically to one file, keyed by :func:`state_key` (a hash of the settings, the
model checkpoint's bytes and the examples). A restarted evaluation skips the attacks already
done; since every attack runs in its own seeded RNG scope, the resumed numbers equal those of
an uninterrupted run. :func:`evaluate_with_sanity` adds the sanity checks
(:mod:`rnas.evaluation.sanity`) and their extra attacks, resumable the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnas.config import check_evaluate
from rnas.evaluation.attacks import ThreatModel, clean_flags, get_attack, pgd_prefix_flags, rng_scope
from rnas.evaluation.complexity import count_macs, count_parameters
from rnas.evaluation.fold import fold_batchnorm
from rnas.evaluation.sanity import (
    SanityInputs,
    SanitySettings,
    model_probe,
    probe_attacks,
    probe_examples,
    run_checks,
    sanity_summary,
)

__all__ = [
    "PROTOCOL_ATTACKS",
    "EvalSettings",
    "EvalState",
    "evaluate_model",
    "evaluate_with_sanity",
    "l2_attacks",
    "linf_attacks",
    "state_key",
    "worst_case_flags",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _ProtocolAttack:
    registry_name: str  # key of rnas.evaluation.attacks.ATTACKS
    metric: str  # eval.json key of its accuracy


# Protocol name -> registry attack and eval.json key. Options come from EvalSettings below.
PROTOCOL_ATTACKS: dict[str, _ProtocolAttack] = {
    "fgsm": _ProtocolAttack("fgsm", "fgsm_acc"),
    "pgd20": _ProtocolAttack("pgd", "pgd20_acc"),
    "pgd100": _ProtocolAttack("pgd", "pgd100_acc"),
    "autoattack": _ProtocolAttack("autoattack", "autoattack_acc"),
    "apgd": _ProtocolAttack("autoattack", "apgd_acc"),
    "autoattack_l2": _ProtocolAttack("autoattack_l2", "autoattack_l2_acc"),
    "cw": _ProtocolAttack("cw_l2", "cw_acc"),
    "deepfool": _ProtocolAttack("deepfool_l2", "deepfool_acc"),
}


def _threat(name: str) -> ThreatModel | None:
    return get_attack(PROTOCOL_ATTACKS[name].registry_name).threat


def linf_attacks(names: Iterable[str]) -> tuple[str, ...]:
    """The protocol attacks among ``names`` whose threat model is L∞ (they enter robust_acc)."""
    return tuple(n for n in names if _threat(n) is ThreatModel.LINF)


def l2_attacks(names: Iterable[str]) -> tuple[str, ...]:
    """The protocol attacks among ``names`` whose threat model is L2 (they enter robust_acc_l2)."""
    return tuple(n for n in names if _threat(n) is ThreatModel.L2)


# How the attacked model is computed (part of the resume key: saved flags from another
# computation of the same checkpoint are not mixed in).
INFERENCE = "batchnorm-folded"

AUTOATTACK_REGISTRY = ("autoattack", "autoattack_l2")  # registry attacks that report AutoAttack's checks


@dataclass(frozen=True)
class EvalSettings:
    """Settings of one evaluation; radii and steps in pixel units (inputs in [0, 1])."""

    epsilon: float  # L∞ radius
    epsilon_l2: float  # L2 radius for AutoAttack-L2, C&W and DeepFool
    pgd_step_size: float  # absolute PGD step at `epsilon`
    pgd_restarts: int = 1  # PGD random restarts (per-example AND of the flags)
    cw_steps: int = 1000  # Adam steps per C&W binary-search step (docs/evaluation.md: convergence)
    cw_binary_search_steps: int = 5  # C&W binary-search steps over the constant c
    cw_initial_const: float = 1e-3  # c of the first binary-search step
    deepfool_steps: int = 50
    eps_sweep: tuple[float, ...] = ()  # extra L∞ radii for the accuracy-vs-ε curve (PGD-20)
    attacks: tuple[str, ...] = ("fgsm", "pgd20", "pgd100", "autoattack", "autoattack_l2", "cw", "deepfool")
    batch_size: int = 256  # examples per attack chunk (bounds memory)
    autoattack_iterations: int = 0  # APGD/FAB iterations of the AutoAttack attacks; 0: the standard 100
    autoattack_stack_targets: bool = True  # APGD-T's targets side by side (attacks.stacked_targeted_perturb)
    seed: int = 0  # torch seed set before every attack

    def __post_init__(self) -> None:
        # Accept lists (e.g. from YAML) but store tuples, so the settings stay hashable.
        object.__setattr__(self, "eps_sweep", tuple(float(e) for e in self.eps_sweep))
        object.__setattr__(self, "attacks", tuple(self.attacks))
        # Each setting is the params key evaluate.<name>; its limits are checked in one place, the
        # params model (a ParamsError, a ValueError, naming evaluate.<name> and what is allowed).
        check_evaluate(**{name: getattr(self, name) for name in _PARAMS_KEYS})
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @classmethod
    def from_params(cls, evaluate: Any) -> EvalSettings:
        """The settings of a params file's ``evaluate`` section: every key of :data:`_PARAMS_KEYS`."""
        return cls(**{name: getattr(evaluate, name) for name in _PARAMS_KEYS})

    def attack_call(self, name: str) -> tuple[str, float, dict[str, Any]]:
        """(registry name, radius, options) with which protocol attack ``name`` runs."""
        pgd = dict(step_size=self.pgd_step_size, restarts=self.pgd_restarts, random_start=True)
        calls: dict[str, tuple[float, dict[str, Any]]] = {
            "fgsm": (self.epsilon, {}),
            "pgd20": (self.epsilon, dict(pgd, steps=20)),
            "pgd100": (self.epsilon, dict(pgd, steps=100)),
            "autoattack": (self.epsilon, dict(version="standard", seed=self.seed)),
            "apgd": (self.epsilon, dict(version="custom", attacks=("apgd-ce", "apgd-t"), seed=self.seed)),
            "autoattack_l2": (self.epsilon_l2, dict(version="standard", seed=self.seed)),
            "cw": (
                self.epsilon_l2,
                dict(
                    steps=self.cw_steps,
                    binary_search_steps=self.cw_binary_search_steps,
                    initial_const=float(self.cw_initial_const),
                ),
            ),
            "deepfool": (self.epsilon_l2, dict(steps=self.deepfool_steps)),
        }
        if name not in calls:
            raise ValueError(f"unknown attack {name!r}; known: {', '.join(PROTOCOL_ATTACKS)}")
        epsilon, options = calls[name]
        if name in ("autoattack", "apgd", "autoattack_l2"):
            options = dict(options, stack_targets=self.autoattack_stack_targets)
            if self.autoattack_iterations:
                options = dict(options, n_iter=self.autoattack_iterations)
        return PROTOCOL_ATTACKS[name].registry_name, epsilon, dict(options, batch_size=self.batch_size)

    def sweep_epsilons(self) -> tuple[float, ...]:
        """Sorted distinct radii of the ε sweep: 0, ``epsilon`` and ``eps_sweep``."""
        return tuple(sorted({0.0, float(self.epsilon), *self.eps_sweep}))

    def sweep_step_size(self, epsilon: float) -> float:
        """PGD step at radius ``epsilon``: the main setting's step/ε ratio (absolute if ε = 0)."""
        if self.epsilon == 0:
            return self.pgd_step_size
        return self.pgd_step_size * epsilon / self.epsilon if epsilon > 0 else self.pgd_step_size


#: The settings that are params keys (``evaluate.<name>``): all but the seed.
_PARAMS_KEYS = tuple(f.name for f in dataclasses.fields(EvalSettings) if f.name != "seed")


def worst_case_flags(flags: Mapping[str, Tensor], attacks: Iterable[str]) -> Tensor:
    """Per-example worst case: ``flags["clean"]`` AND ``flags[a]`` for every ``a`` in ``attacks``.

    Each flag tensor is boolean ``(B,)``, True = still classified correctly.
    """
    result = flags["clean"].clone().bool()
    for name in attacks:
        if flags[name].shape != result.shape:
            raise ValueError(f"flags[{name!r}] has shape {tuple(flags[name].shape)}, expected {tuple(result.shape)}")
        result &= flags[name].bool().to(result.device)
    return result


class EvalState:
    """Per-attack flags of one evaluation in one file, saved atomically after every attack.

    The file holds ``{"key", "flags": {name: bool tensor (N,)}, "seconds": {name: float},
    "info": {name: dict}}`` (``info``: what an attack reports beside its flags, e.g.
    AutoAttack's own checks) and is read back with ``torch.load(weights_only=True)``. A file
    written under another ``key`` (other settings, another model, other examples) is stale: it is
    ignored (with a warning) and overwritten by the first save. A file that cannot be read at all
    is an error (:class:`~rnas.checkpoint.CheckpointError` naming it; the file is left as it is),
    never a silent restart. A resume logs one line naming the attacks already done.
    ``path=None`` keeps the state in memory only.
    """

    def __init__(self, path: str | Path | None, key: str):
        self.path = Path(path) if path is not None else None
        self.key = key
        self.flags: dict[str, Tensor] = {}
        self.seconds: dict[str, float] = {}
        self.info: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            from rnas.checkpoint import CheckpointError, load_checked

            try:
                saved = load_checked(self.path, ("key", "flags", "seconds"))
            except CheckpointError as err:
                raise CheckpointError(
                    f"{err}; the evaluation state is unreadable and was left as it is: "
                    f"delete {self.path} to evaluate from scratch"
                ) from None
            if saved["key"] != key:
                log.warning("%s: written for other settings, model or examples; starting over", self.path)
                return
            self.flags = {k: v.bool() for k, v in saved["flags"].items()}
            self.seconds = {k: float(v) for k, v in saved["seconds"].items()}
            self.info = dict(saved.get("info") or {})
            if self.flags:
                log.info("evaluation: resuming from %s; done already: %s", self.path, ", ".join(sorted(self.flags)))

    def __contains__(self, name: str) -> bool:
        return name in self.flags

    def get(self, name: str) -> Tensor | None:
        return self.flags.get(name)

    def put(self, name: str, flags: Tensor, seconds: float, info: dict[str, Any] | None = None) -> None:
        """Record one attack's flags (and ``info``) and save the whole state atomically."""
        self.flags[name] = flags.detach().bool().cpu()
        self.seconds[name] = float(seconds)
        if info is not None:
            self.info[name] = info
        if self.path is not None:
            from rnas.checkpoint import save_atomic

            save_atomic({"key": self.key, "flags": self.flags, "seconds": self.seconds, "info": self.info}, self.path)

    def clear(self) -> None:
        """Delete the file (the evaluation's outputs are written)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def state_key(
    settings: EvalSettings, model_digest: str, x: Tensor, y: Tensor, sanity: SanitySettings | None = None
) -> str:
    """sha256 of everything an evaluation's flags depend on: the settings, the model (a digest
    of its checkpoint bytes), the examples, and the sanity settings when checks run."""
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str).encode())
    h.update(json.dumps(dataclasses.asdict(sanity) if sanity else None, sort_keys=True).encode())
    h.update(model_digest.encode())
    h.update(INFERENCE.encode())
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _cached(state: EvalState | None, name: str, run) -> tuple[Tensor, float, dict[str, Any] | None]:
    """(flags, seconds, info) of ``name``: from the state if it ran before, else ``run()`` (which
    returns flags or (flags, info)) and save. Logs one INFO line per attack."""
    if state is not None and name in state:
        flags, seconds = state.get(name), state.seconds.get(name, 0.0)
        log.info(
            "evaluate %s: accuracy %.4f on %d examples, %.1f s (from the saved state)",
            name,
            _accuracy(flags.bool()),
            flags.numel(),
            seconds,
        )
        return flags, seconds, state.info.get(name)
    start = time.perf_counter()
    result = run()
    flags, info = result if isinstance(result, tuple) else (result, None)
    seconds = time.perf_counter() - start
    _record(state, name, flags, seconds, info)
    return flags, seconds, info


def _record(
    state: EvalState | None, name: str, flags: Tensor, seconds: float, info: dict[str, Any] | None, note: str = ""
) -> None:
    """Save a finished attack's flags in the state (if any) and log its INFO line (``note`` ends it)."""
    if state is not None:
        state.put(name, flags, seconds, info)
    accuracy = _accuracy(flags.bool())
    log.info("evaluate %s: accuracy %.4f on %d examples, %.1f s%s", name, accuracy, flags.numel(), seconds, note)


def _attack_runner(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    seed: int,
    call: tuple[str, float, dict[str, Any]],
    subset: Tensor | None = None,
):
    """A thunk running one attack in its own seeded RNG scope; AutoAttack runs return
    ``(flags, {"autoattack_checks": {...}})``, the others their flags. ``subset`` (a boolean
    mask (N,)): the attack runs on those examples only and the flags of the others are False."""
    registry_name, epsilon, options = call
    if subset is not None:
        inner = _attack_runner(model, x[subset.to(x.device)], y[subset.to(y.device)], seed, call)

        def run_subset():
            flags = torch.zeros(len(x), dtype=torch.bool)
            if not bool(subset.any()):
                return flags
            result = inner()
            part, info = result if isinstance(result, tuple) else (result, None)
            flags[subset.cpu()] = part.detach().bool().cpu()
            return flags if info is None else (flags, info)

        return run_subset

    def run():
        with rng_scope(seed, x.device):
            if registry_name in AUTOATTACK_REGISTRY:
                checks: dict[str, Any] = {}
                flags = get_attack(registry_name).fn(model, x, y, epsilon, **options, checks=checks)
                return flags, {"autoattack_checks": checks}
            return get_attack(registry_name).fn(model, x, y, epsilon, **options)

    return run


def pgd_prefix_groups(settings: EvalSettings) -> dict[str, tuple[str, ...]]:
    """{PGD attack of ``settings.attacks``: every PGD attack its one run gives}. With one restart,
    the longest PGD run gives the shorter ones as its prefixes (same radius and step, same seeded
    start: :func:`rnas.evaluation.attacks.pgd_prefix_flags`), so ``pgd20`` and ``pgd100`` run
    once, as PGD-100 with a snapshot after 20 steps. Empty with restarts (a restart attacks the
    examples its own run left, which differ) or fewer than two PGD attacks."""
    pgd = [n for n in settings.attacks if PROTOCOL_ATTACKS[n].registry_name == "pgd"]
    if settings.pgd_restarts != 1 or len(pgd) < 2:
        return {}
    calls = {n: settings.attack_call(n) for n in pgd}
    base = {n: (eps, {k: v for k, v in o.items() if k != "steps"}) for n, (_, eps, o) in calls.items()}
    if any(base[n] != base[pgd[0]] for n in pgd):
        return {}
    group = tuple(sorted(pgd, key=lambda n: calls[n][2]["steps"]))
    return dict.fromkeys(group, group)


def _run_pgd_group(
    net: nn.Module, x: Tensor, y: Tensor, settings: EvalSettings, group: tuple[str, ...], state: EvalState | None
) -> dict[str, tuple[Tensor, float]]:
    """{name: (flags, seconds)} of a :func:`pgd_prefix_groups` group: from the state when every
    one ran before, else one run of the longest (in its seeded RNG scope, as every attack). Its
    seconds are recorded under the longest; the prefixes record 0."""
    if state is not None and all(n in state for n in group):
        return {n: _cached(state, n, None)[:2] for n in group}
    steps = {n: settings.attack_call(n)[2]["steps"] for n in group}
    longest = group[-1]
    _, epsilon, options = settings.attack_call(longest)
    options = {k: v for k, v in options.items() if k not in ("steps", "restarts")}
    start = time.perf_counter()
    with rng_scope(settings.seed, x.device):
        by_steps = pgd_prefix_flags(
            net, x, y, epsilon, steps=steps[longest], prefixes=tuple(steps[n] for n in group[:-1]), **options
        )
    took = time.perf_counter() - start
    out = {}
    for n in group:
        flags, seconds = by_steps[steps[n]], took if n == longest else 0.0
        note = "" if n == longest else f" (the first {steps[n]} steps of {longest}'s run)"
        _record(state, n, flags, seconds, None, note)
        out[n] = (flags, seconds)
    return out


def _record_checks(metrics: dict[str, Any], name: str, info: dict[str, Any] | None) -> None:
    """Add one AutoAttack run's own checks to ``autoattack_checks`` / ``..._details``."""
    checks = (info or {}).get("autoattack_checks")
    if checks is None:
        return
    metrics.setdefault("autoattack_checks", {})[name] = {c: bool(r["passed"]) for c, r in checks.items()}
    metrics.setdefault("autoattack_checks_details", {})[name] = {c: str(r["detail"]) for c, r in checks.items()}


def _set_worst_cases(metrics: dict[str, Any], flags: dict[str, Tensor], linf: Iterable[str], l2: Iterable[str]) -> None:
    """``flags["robust"]`` / ``["robust_l2"]`` and their accuracies over the given flag keys
    (None and no flag when no attack of that norm ran); ``worst_case_attacks`` names them."""
    metrics.setdefault("worst_case_attacks", {})
    for flag_key, metric, keys in (("robust", "robust_acc", tuple(linf)), ("robust_l2", "robust_acc_l2", tuple(l2))):
        if keys:
            flags[flag_key] = worst_case_flags(flags, keys)
            metrics[metric] = _accuracy(flags[flag_key])
            metrics["worst_case_attacks"][metric] = ", ".join(keys)
        else:
            flags.pop(flag_key, None)
            metrics[metric] = None
            metrics["worst_case_attacks"].pop(metric, None)


def _accuracy(flags: Tensor) -> float:
    """Exact fraction of True flags (count / n in float64, not a float32 mean)."""
    return int(flags.sum().item()) / flags.numel()


def _inference_copy(model: nn.Module) -> nn.Module:
    """What the attacks run against: the eval-mode model with its batch norms folded into the
    convolutions (:mod:`rnas.evaluation.fold`, the same function up to float rounding, fewer
    kernels per pass); a model left in training mode is attacked as it is."""
    return model if model.training else fold_batchnorm(model)


def evaluate_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    settings: EvalSettings,
    progress: bool = True,
    state: EvalState | None = None,
    attack_model: nn.Module | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Run the protocol on ``(x, y)``: inputs ``(N, C, H, W)`` in [0, 1] on the model's device,
    labels ``(N,)``. The caller puts the model in eval mode. With a ``state``, attacks found
    there are not run again and each new one is saved as soon as it finishes. The attacks and
    the clean pass run on ``attack_model`` (default: the model with its batch norms folded,
    :func:`_inference_copy`); parameters and MACs are counted on ``model``.

    Returns ``(metrics, flags)``:

    * ``metrics`` -- the JSON-serialisable ``eval.json`` dict (plain floats/ints; accuracies are
      fractions in [0, 1]; an attack not in ``settings.attacks`` gives None for its key,
      ``robust_acc`` / ``robust_acc_l2`` are None when no L∞ / L2 attack ran;
      ``worst_case_attacks`` names what each worst case is over; ``autoattack_checks`` and
      ``autoattack_checks_details`` hold AutoAttack's own checks per AutoAttack run);
    * ``flags`` -- per-example boolean flags ``(N,)`` on the CPU: ``"clean"``, one per attack
      that ran, ``"robust"`` and ``"robust_l2"`` (the worst cases) and ``"eps_sweep/<ε>"`` for
      each sweep radius.
    """
    from tqdm.auto import tqdm

    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError("evaluate_model needs at least one example")

    net = _inference_copy(model) if attack_model is None else attack_model
    flags: dict[str, Tensor] = {"clean": clean_flags(net, x, y, batch_size=settings.batch_size)}
    seconds: dict[str, float] = {}
    infos: dict[str, dict[str, Any] | None] = {}
    sweep_eps = settings.sweep_epsilons()
    steps = [*settings.attacks, "eps_sweep"]
    groups = pgd_prefix_groups(settings)  # pgd20 from the first 20 steps of pgd100's run

    def attack(registry_name: str, epsilon: float, options: dict[str, Any]):
        return _attack_runner(net, x, y, settings.seed, (registry_name, epsilon, options))

    bar = tqdm(steps, desc="evaluate", unit="attack", disable=not progress, leave=False)
    for name in bar:
        bar.set_postfix_str(name)
        if name == "eps_sweep":
            seconds[name] = 0.0
            for eps in sweep_eps:
                key = f"eps_sweep/{eps}"
                if eps == settings.epsilon and "pgd20" in flags:
                    flags[key] = flags["pgd20"]  # same attack, same seed: reuse
                    continue
                if eps == 0:  # the ball is {x}: every PGD iterate is x itself, so the clean flags
                    flags[key] = flags["clean"]
                    continue
                _, _, options = settings.attack_call("pgd20")
                options["step_size"] = settings.sweep_step_size(eps)
                flags[key], took, _ = _cached(state, key, attack("pgd", eps, options))
                seconds[name] += took
        elif name in groups:
            if name not in flags:
                for n, (f, took) in _run_pgd_group(net, x, y, settings, groups[name], state).items():
                    flags[n], seconds[n], infos[n] = f, took, None
        else:
            flags[name], seconds[name], infos[name] = _cached(state, name, attack(*settings.attack_call(name)))
    bar.close()

    flags = {k: v.detach().bool().cpu() for k, v in flags.items()}

    def acc(key: str) -> float | None:
        return _accuracy(flags[key]) if key in flags else None

    # Every protocol attack's key (None when it did not run), L∞ ones first, then the L2 ones.
    linf = linf_attacks(PROTOCOL_ATTACKS)
    metrics: dict[str, Any] = {
        "clean_acc": acc("clean"),
        **{PROTOCOL_ATTACKS[n].metric: acc(n) for n in linf},
        "robust_acc": None,
        **{PROTOCOL_ATTACKS[n].metric: acc(n) for n in PROTOCOL_ATTACKS if n not in linf},
        "robust_acc_l2": None,
    }
    _set_worst_cases(metrics, flags, linf_attacks(settings.attacks), l2_attacks(settings.attacks))
    metrics["autoattack_checks"], metrics["autoattack_checks_details"] = {}, {}
    for name in settings.attacks:
        _record_checks(metrics, name, infos.get(name))
    metrics["eps_sweep"] = {str(eps): _accuracy(flags[f"eps_sweep/{eps}"]) for eps in sweep_eps}
    metrics["pgd_best_iterate"] = True  # PGD counts an example broken if any iterate fooled the model
    metrics["epsilon"] = float(settings.epsilon)
    metrics["epsilon_l2"] = float(settings.epsilon_l2)
    metrics["params"] = int(count_parameters(model))
    metrics["macs"] = int(count_macs(model, tuple(x.shape[1:])))
    metrics["n_examples"] = int(len(x))
    metrics["attack_seconds"] = {k: float(v) for k, v in seconds.items()}
    return metrics, flags


def evaluate_with_sanity(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    settings: EvalSettings,
    sanity: SanitySettings,
    progress: bool = True,
    state: EvalState | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """:func:`evaluate_model`, then the sanity checks (:mod:`rnas.evaluation.sanity`).

    The checks reuse the protocol's flags; only the probe attacks they need on top (Square
    alone on the examples the white-box attacks left, PGD-20 at the large L∞ radius when the
    sweep lacks it, APGD-CE at the large L2 radius) run here, resumable through the same
    ``state``. A probe at the evaluation's own radius (Square alone at ``epsilon``) is an attack
    like the others: it joins the worst case ``robust_acc``. Adds to the metrics ``sanity``
    ({check: passed} for the checks that apply) and ``sanity_details`` ({check: one line with
    the numbers}); the probe flags are returned with the others (keys ``sanity/...``), and their
    seconds under ``attack_seconds["sanity"]``.
    """
    net = _inference_copy(model)
    metrics, flags = evaluate_model(model, x, y, settings, progress=progress, state=state, attack_model=net)
    probe_seconds = 0.0
    linf, l2 = list(linf_attacks(settings.attacks)), list(l2_attacks(settings.attacks))
    for key, call in probe_attacks(settings, sanity).items():
        subset = probe_examples(key, flags)
        result, took, info = _cached(state, key, _attack_runner(net, x, y, settings.seed, call, subset))
        flags[key] = result.detach().bool().cpu()
        probe_seconds += took
        _record_checks(metrics, key, info)
        threat, radius = get_attack(call[0]).threat, float(call[1])
        if threat is ThreatModel.LINF and radius == float(settings.epsilon):
            linf.append(key)
        elif threat is ThreatModel.L2 and radius == float(settings.epsilon_l2):
            l2.append(key)
    _set_worst_cases(metrics, flags, linf, l2)
    start = time.perf_counter()
    probe = model_probe(net, x, y, settings.batch_size)
    results = run_checks(SanityInputs(metrics, flags, settings, sanity, probe))
    metrics["sanity"], metrics["sanity_details"] = sanity_summary(results)
    metrics["attack_seconds"]["sanity"] = probe_seconds + time.perf_counter() - start
    failed = [n for n, ok in metrics["sanity"].items() if not ok]
    if failed:
        log.warning("sanity checks FAILED: %s", "; ".join(f"{n} ({metrics['sanity_details'][n]})" for n in failed))
    return metrics, flags
