"""Verification-based evaluation: certified accuracy at ε, cross-checked against the attacks.

An example is *certified* at ε when the model classifies it correctly and a sound lower bound of
its margin f_y − max_{k≠y} f_k over the ε-ball ∩ [0, 1] is positive (:mod:`rnas.bounds`: IBP,
CROWN-IBP, or per specification the tighter of the two, ``both``). Certified accuracy is the
fraction of certified examples; it can never exceed the accuracy under any attack of the same
threat model at a radius ≤ ε, example by example: :func:`certified_not_broken` checks exactly
that against the evaluation's per-example attack flags (a violation means a bug in the bounds
or in an attack, and is flagged, never hidden).

The model is certified as it is evaluated: in eval mode (BN with running statistics), without
gradients, in batches of ``batch_size`` examples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rnas.bounds import CERTIFY_METHODS, UnsupportedModelError, spec_bounds

__all__ = ["CertifyResult", "attack_radii", "certified_not_broken", "certify", "certify_evaluation"]

log = logging.getLogger(__name__)

SANITY_KEY = "certified_not_broken"


@dataclass
class CertifyResult:
    """Per-example results (CPU tensors, N examples) of one certification."""

    method: str  # "ibp" | "crown" | "both"
    intermediate: str  # CROWN's intermediate bounds: "ibp" (CROWN-IBP) | "crown" (full CROWN)
    epsilon: float
    norm: str
    margin: Tensor  # (N,) reported lower bound of f_y − max_{k≠y} f_k (the tightest computed)
    certified: Tensor  # (N,) bool: clean-correct and margin > 0
    per_method: dict[str, Tensor] = field(default_factory=dict)  # name -> (N,) bool certified by it alone
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return int(self.certified.sum()) / self.certified.numel()

    def metrics(self) -> dict[str, Any]:
        """eval.json entries: ``certified_acc``, ``certify_method``, per-method accuracies."""
        out: dict[str, Any] = {"certified_acc": self.accuracy, "certify_method": self.method,
                               "certify_intermediate": self.intermediate, "certify_epsilon": self.epsilon,
                               "certify_norm": self.norm, "certify_seconds": self.seconds}
        for name, flags in self.per_method.items():
            out[f"certified_acc_{name}"] = int(flags.sum()) / flags.numel()
        return out


def certify(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, norm: str = "linf", method: str = "both",
            batch_size: int = 256, intermediate: str = "ibp") -> CertifyResult:
    """Certify ``model`` (in the mode it is in; eval mode for certification) on (x (N, C, H, W) in
    [0, 1], y (N,)) at radius ``epsilon`` (pixel units). ``intermediate``: CROWN's intermediate
    bounds, ``ibp`` (CROWN-IBP) or ``crown`` (full CROWN). Raises UnsupportedModelError when the
    bounds have no rule for one of the model's modules."""
    if method not in CERTIFY_METHODS:
        raise ValueError(f"unknown certification method {method!r}; known: {', '.join(CERTIFY_METHODS)}")
    names = CERTIFY_METHODS[method]
    start = time.perf_counter()
    margins, certified = [], []
    per_method: dict[str, list[Tensor]] = {n: [] for n in names}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            res = spec_bounds(model, xb, yb, epsilon, norm, names, intermediate=intermediate)
            correct = res.logits.argmax(1) == yb
            margin = res.margin()
            margins.append(margin.cpu())
            certified.append((correct & (margin > 0)).cpu())
            for n in names:
                per_method[n].append((correct & (res.margin(n) > 0)).cpu())
    per = {n: torch.cat(v) for n, v in per_method.items()} if len(names) > 1 else {}
    return CertifyResult(method, intermediate, float(epsilon), norm, torch.cat(margins), torch.cat(certified), per,
                         time.perf_counter() - start)


def attack_radii(settings: Any, flags: Mapping[str, Tensor], sanity: Any = None) -> dict[str, float]:
    """flag key -> L∞ radius (pixel units) of every L∞ attack whose flags an evaluation holds:
    ``clean`` (radius 0), the protocol's L∞ attacks, the ε sweep, and the sanity probes."""
    from rnas.evaluation.attacks import ThreatModel, get_attack
    from rnas.evaluation.protocol import linf_attacks

    radii = {"clean": 0.0}
    for name in linf_attacks(settings.attacks):
        radii[name] = float(settings.attack_call(name)[1])
    for key in flags:
        if key.startswith("eps_sweep/"):
            radii[key] = float(key.split("/", 1)[1])
    if sanity is not None:
        from rnas.evaluation.sanity import probe_attacks

        for key, (registry_name, eps, _options) in probe_attacks(settings, sanity).items():
            if get_attack(registry_name).threat is ThreatModel.LINF:
                radii[key] = float(eps)
    return {k: r for k, r in radii.items() if k in flags}


def certified_not_broken(certified: Tensor, flags: Mapping[str, Tensor], radii: Mapping[str, float],
                         epsilon: float) -> tuple[bool, str]:
    """True when no certified example is broken by an attack of radius ≤ ``epsilon``; with a
    one-line detail naming the attacks checked and any example that is both."""
    broken: dict[str, list[int]] = {}
    checked = []
    for key, radius in sorted(radii.items()):
        if radius > epsilon:
            continue
        checked.append(key)
        both = certified.bool() & ~flags[key].bool().cpu()
        if bool(both.any()):
            broken[key] = both.nonzero().flatten().tolist()[:10]
    n_cert = int(certified.sum())
    if broken:
        detail = "; ".join(f"{k} broke certified examples {v}" for k, v in broken.items())
        return False, f"{n_cert} certified at ε={epsilon:g}: {detail}"
    return True, f"{n_cert} certified at ε={epsilon:g}, none broken by {', '.join(checked)}"


def certify_evaluation(metrics: dict[str, Any], flags: Mapping[str, Tensor], model: nn.Module, x: Tensor,
                       y: Tensor, settings: Any, method: str, batch_size: int, sanity: Any = None,
                       intermediate: str = "ibp") -> None:
    """Certify at the evaluation's L∞ ε and add to ``metrics`` (eval.json) ``certified_acc``,
    ``certify_method`` (and per-method accuracies) and the sanity flag ``certified_not_broken``
    (``sanity`` / ``sanity_details`` dicts, created if absent). ``method == "none"`` or a model
    the bounds do not support records ``certified_acc: None`` and why."""
    if method == "none":
        metrics.update(certified_acc=None, certify_method=None)
        return
    try:
        result = certify(model, x, y, settings.epsilon, "linf", method, batch_size, intermediate)
    except UnsupportedModelError as err:
        log.warning("certification skipped: %s", err)
        metrics.update(certified_acc=None, certify_method=None, certify_skipped=str(err))
        return
    metrics.update(result.metrics())
    ok, detail = certified_not_broken(result.certified, flags, attack_radii(settings, flags, sanity),
                                      settings.epsilon)
    metrics.setdefault("sanity", {})[SANITY_KEY] = ok
    metrics.setdefault("sanity_details", {})[SANITY_KEY] = detail
    if not ok:
        log.error("sanity check %s FAILED: %s", SANITY_KEY, detail)
