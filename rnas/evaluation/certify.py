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

**Certified radius** (:func:`certified_radius`): per example, the largest ε at which it is
certified, found by a root search over ε on the same bound. The certified-accuracy-vs-ε curve
(``certify_eps_sweep``) brackets every example first; the bracket is then narrowed to the
precision of ``steps`` geometric bisection steps in at most ``steps`` + 3 bound passes, each on
all examples still open at once (one ε per example): secant steps on the margin bound's values
(exact where the bound is affine in ε, as it is while no ReLU of the relaxation changes state),
and bisection steps for an example whose secant steps stopped halving its bracket
(:class:`RootSearch`). Invariant, for every example: certified at ``radius``,
not certified at ``upper`` (both computed, never inferred; a misclassified example is not
certified anywhere and gets radius 0 without a pass). The sweep runs from the largest ε down and
bounds a smaller ε only for the examples no larger one certified, since a certificate at ε covers
every smaller ball; so the curve counts an example as certified at ε when its radius is ≥ ε
(sound, non-increasing by construction). The search assumes the bound monotone in ε (IBP is;
CROWN's adaptive ReLU slopes need not be): where it is not, the radius found is still certified,
only perhaps not the largest. The radius and the sweep run in
float64: radii of PGD-trained networks under IBP / CROWN-IBP are ~1e-7 in pixel units, below the
float32 spacing of pixel values near 1 (6e-8), where a float32 box would not even contain the ball.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rnas.bounds import CERTIFY_METHODS, UnsupportedModelError, spec_bounds
from rnas.evaluation.attacks import logit_margin

__all__ = [
    "CertifyResult",
    "RadiusResult",
    "attack_radii",
    "certified_flags",
    "certified_not_broken",
    "certified_radius",
    "certify",
    "certify_evaluation",
    "radius_not_broken",
]

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
        out: dict[str, Any] = {
            "certified_acc": self.accuracy,
            "certify_method": self.method,
            "certify_intermediate": self.intermediate,
            "certify_epsilon": self.epsilon,
            "certify_norm": self.norm,
            "certify_seconds": self.seconds,
        }
        for name, flags in self.per_method.items():
            out[f"certified_acc_{name}"] = int(flags.sum()) / flags.numel()
        return out


def certify(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    norm: str = "linf",
    method: str = "both",
    batch_size: int = 256,
    intermediate: str = "ibp",
) -> CertifyResult:
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
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            res = spec_bounds(model, xb, yb, epsilon, norm, names, intermediate=intermediate)
            correct = res.logits.argmax(1) == yb
            margin = res.margin()
            margins.append(margin.cpu())
            certified.append((correct & (margin > 0)).cpu())
            for n in names:
                per_method[n].append((correct & (res.margin(n) > 0)).cpu())
    per = {n: torch.cat(v) for n, v in per_method.items()} if len(names) > 1 else {}
    return CertifyResult(
        method,
        intermediate,
        float(epsilon),
        norm,
        torch.cat(margins),
        torch.cat(certified),
        per,
        time.perf_counter() - start,
    )


def certified_margins(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float | Tensor,
    norm: str = "linf",
    method: str = "both",
    batch_size: int = 256,
    intermediate: str = "ibp",
    dtype: torch.dtype | None = torch.float64,
) -> Tensor:
    """(N,) float64 on the CPU: the margin lower bound at ``epsilon`` (one radius, or a tensor (N,)
    with one per example), bounds propagated in ``dtype``; −inf where the model misclassifies x
    itself (not certified at any ε). Certified ⟺ > 0."""
    if method not in CERTIFY_METHODS:
        raise ValueError(f"unknown certification method {method!r}; known: {', '.join(CERTIFY_METHODS)}")
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            eps = epsilon[i : i + batch_size] if isinstance(epsilon, Tensor) else epsilon
            res = spec_bounds(model, xb, yb, eps, norm, CERTIFY_METHODS[method], intermediate=intermediate, dtype=dtype)
            margin = res.margin().double()
            out.append(torch.where(res.logits.argmax(1) == yb, margin, -math.inf).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def certified_flags(
    model: nn.Module, x: Tensor, y: Tensor, epsilon: float | Tensor, *args: Any, **kwargs: Any
) -> Tensor:
    """(N,) bool on the CPU: classified correctly with a positive margin lower bound at ``epsilon``
    (one radius, or a tensor (N,) with one per example); the other arguments (norm, method,
    batch_size, intermediate, dtype) as :func:`certified_margins`."""
    return certified_margins(model, x, y, epsilon, *args, **kwargs) > 0


def radius_cap(x: Tensor, norm: str) -> float:
    """The largest radius worth trying: the ball then holds the whole input cube [0, 1]^d
    (1 for L∞, √d for L2)."""
    return 1.0 if norm == "linf" else math.sqrt(x[0].numel())


@dataclass
class RadiusResult:
    """Certified radii (N examples) and the certified-accuracy-vs-ε curve of one certification."""

    radius: Tensor  # (N,) float64: certified at this radius; 0 = not certified at radius_min
    upper: Tensor  # (N,) float64: not certified at this radius (inf: certified at the cap)
    sweep: dict[float, Tensor]  # ε -> (N,) bool: radius ≥ ε (certified at ε or at a larger sweep ε)
    raw: dict[float, Tensor]  # ε -> (N,) bool: certified by the bound at ε or at a larger sweep ε
    method: str
    intermediate: str
    norm: str
    steps: int
    radius_min: float
    passes: int = 0  # bound passes (sweep, bracket ends, root search)
    seconds: float = 0.0

    @property
    def median(self) -> float:
        """Median radius over all examples (misclassified and uncertified ones count 0)."""
        return float(torch.quantile(self.radius, 0.5)) if self.radius.numel() else 0.0

    def curve(self) -> dict[str, float]:
        """{str(ε): certified accuracy} over the sweep (non-increasing in ε)."""
        return {str(eps): int(f.sum()) / f.numel() for eps, f in sorted(self.sweep.items())}

    def rel_gap(self) -> float:
        """Largest upper / radius − 1 of the examples searched (0 < radius, upper finite)."""
        open_ = (self.radius > 0) & torch.isfinite(self.upper)
        return float((self.upper[open_] / self.radius[open_] - 1).max()) if bool(open_.any()) else 0.0

    def metrics(self) -> dict[str, Any]:
        """eval.json entries (the per-example radii as the list ``certified_radius``)."""
        return {
            "certified_eps_sweep": self.curve(),
            "certified_radius_median": self.median,
            "certified_radius": [float(r) for r in self.radius],
            "certified_radius_steps": self.steps,
            "certified_radius_min": self.radius_min,
            "certified_radius_rel_gap": self.rel_gap(),
            "certified_radius_passes": self.passes,
            "certified_radius_seconds": self.seconds,
        }


def certified_radius(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps_sweep: tuple[float, ...] = (),
    steps: int = 8,
    radius_min: float = 1e-9,
    norm: str = "linf",
    method: str = "both",
    batch_size: int = 256,
    intermediate: str = "ibp",
    dtype: torch.dtype | None = torch.float64,
    float64_below: float | None = None,
) -> RadiusResult:
    """Certified accuracy at every ε of ``eps_sweep`` and every example's certified radius.

    Bound passes run in ``dtype``; with ``float64_below`` set, a pass at an ε below it runs in
    float64 and one at or above it in float32 (about 5x faster for CROWN-IBP on the CPU; the
    float32 input box is rounded outward, :meth:`rnas.bounds.interval.InputSet.box`).

    1. The sweep, from the largest ε down: the margin bound at each ε (> ``radius_min``). A
       smaller ε is bound only for the examples that no larger sweep ε certified and that the
       model classifies correctly: a certificate on a ball holds on every ball inside it, and a
       misclassified example has a negative margin at x itself, so neither needs a pass (most
       of the float64 passes at tiny ε are saved so). Per example, the bracket is [the largest
       sweep ε it is certified at, the next sweep ε] — or [``radius_min``, the smallest sweep ε]
       when certified at none but at ``radius_min`` (radius 0 when not even there), or [the
       largest sweep ε, the cap] (1 for L∞) when certified at all (radius = cap when certified
       at the cap).
    2. The bracket narrowed to the precision of ``steps`` geometric bisection steps (upper /
       radius ≤ (initial upper / radius)^(2^−steps)) by a root search on the margin bound
       (:class:`RootSearch`: secant steps on the bound's values at the two ends, bisection where
       they stop paying), one ε per example per pass, in at most ``steps`` + 3 passes. Certified
       at the probe → lo, else → hi.
    Returns lo as the radius and hi as ``upper``; see :class:`RadiusResult`."""
    if method not in CERTIFY_METHODS:
        raise ValueError(f"unknown certification method {method!r}; known: {', '.join(CERTIFY_METHODS)}")
    grid = sorted({float(e) for e in eps_sweep})
    if not radius_min > 0 or any(not e > radius_min for e in grid) or steps < 0:
        raise ValueError(
            f"need steps >= 0 and 0 < radius_min < every sweep ε; got steps {steps}, radius_min "
            f"{radius_min}, sweep {grid}"
        )
    start = time.perf_counter()
    n, cap = len(x), radius_cap(x, norm)
    passes = 0

    def margins(eps: float | Tensor, idx: Tensor) -> Tensor:
        nonlocal passes
        passes += 1
        if float64_below is None:
            return certified_margins(
                model, x[idx.to(x.device)], y[idx.to(y.device)], eps, norm, method, batch_size, intermediate, dtype
            )
        e = eps.cpu() if isinstance(eps, Tensor) else torch.full((len(idx),), float(eps), dtype=torch.float64)
        out = torch.zeros(len(idx), dtype=torch.float64)
        low = e < float64_below
        for part, dt in ((low, torch.float64), (~low, torch.float32)):
            if bool(part.any()):
                sub = idx[part]
                out[part] = certified_margins(
                    model,
                    x[sub.to(x.device)],
                    y[sub.to(y.device)],
                    e[part].to(x.device),
                    norm,
                    method,
                    batch_size,
                    intermediate,
                    dt,
                )
        return out

    correct = torch.ones(n, dtype=torch.bool)  # a train-mode model is bound at batch statistics: no shortcut
    m0 = torch.full((n,), math.nan, dtype=torch.float64)  # the exact margin at x (ε = 0), where known
    if isinstance(model, nn.Module) and not model.training:
        m0 = clean_margins(model, x, y, batch_size)
        correct = m0 > 0
    open_ = correct.clone()  # not yet certified at a larger sweep ε, and classified correctly
    raw: dict[float, Tensor] = {}
    bound: dict[float, Tensor] = {}  # ε -> (N,) margin bound at ε (NaN: not bound there)
    for eps in reversed(grid):
        raw[eps] = ~open_ & correct
        bound[eps] = torch.full((n,), math.nan, dtype=torch.float64)
        todo = open_.nonzero().flatten()
        if len(todo):
            bound[eps][todo] = margins(eps, todo)
            ok = bound[eps] > 0
            raw[eps] |= ok
            open_ &= ~ok
    lo = torch.zeros(n, dtype=torch.float64)
    hi = torch.full((n,), grid[0] if grid else cap, dtype=torch.float64)
    m_lo = torch.full((n,), math.nan, dtype=torch.float64)  # the margin bound at lo and at hi
    m_hi = torch.full((n,), math.nan, dtype=torch.float64)
    if grid:
        table = torch.stack([raw[e] for e in grid], 1)  # (N, G), non-increasing along ε
        values = torch.stack([bound[e] for e in grid] + [torch.full((n,), math.nan, dtype=torch.float64)], 1)
        idx = torch.arange(len(grid)).expand(n, -1)
        last = torch.where(table, idx, -1).max(1).values  # largest certified sweep index, -1: none
        points = torch.tensor([*grid, cap], dtype=torch.float64)
        has = last >= 0
        lo[has] = points[last[has]]
        hi[has] = points[last[has] + 1]
        rows = has.nonzero().flatten()
        m_lo[rows] = values[rows, last[rows]]
        m_hi[rows] = values[rows, last[rows] + 1]
        m_hi[~has] = values[~has, 0]
    # the lower end: certified at radius_min? (radius 0 if not)
    none = ((lo == 0) & correct).nonzero().flatten()
    hi[~correct] = radius_min
    if len(none):
        m = margins(radius_min, none)
        ok = m > 0
        lo[none[ok]] = radius_min
        m_lo[none[ok]] = m[ok]
        hi[none[~ok]] = radius_min
    # the upper end: certified at the cap?
    top = ((lo > 0) & (hi == cap)).nonzero().flatten()
    if len(top):
        m = margins(cap, top)
        ok = m > 0
        lo[top[ok]] = cap
        hi[top[ok]] = math.inf
        m_hi[top[~ok]] = m[~ok]
    # narrow every open bracket to the precision of `steps` bisection steps
    bracketed = (lo > 0) & torch.isfinite(hi)
    tol = torch.zeros(n, dtype=torch.float64)
    tol[bracketed] = torch.log(hi[bracketed] / lo[bracketed]) / 2.0**steps
    search = RootSearch(m0, m_lo, m_hi, tol)
    for _ in range(steps + RootSearch.max_idle if steps else 0):
        active = (bracketed & (torch.log(hi / lo) > tol * (1 + 1e-9))).nonzero().flatten()
        if not len(active):
            break
        probe = search.probe(active, lo[active], hi[active])
        m = margins(probe.to(x.device), active)
        ok = m > 0
        search.update(active, ok, m, lo[active], hi[active], probe)
        lo[active[ok]] = probe[ok]
        hi[active[~ok]] = probe[~ok]
    sweep = {eps: lo >= eps for eps in grid}
    return RadiusResult(
        lo,
        hi,
        sweep,
        raw,
        method,
        intermediate,
        norm,
        steps,
        float(radius_min),
        passes,
        time.perf_counter() - start,
    )


def clean_margins(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> Tensor:
    """(N,) float64 on the CPU: f_y(x) − max_{k≠y} f_k(x), the margin every bound meets at ε = 0
    (positive ⟺ classified correctly)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(x[i : i + batch_size]).double()
            out.append(logit_margin(logits, y[i : i + batch_size].to(logits.device)).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


class RootSearch:
    """Where to bound next in each open bracket [lo, hi] of :func:`certified_radius` (margin
    bound m_lo > 0 at lo, m_hi ≤ 0 at hi).

    The bound's distance from the exact margin m0, d(ε) = m0 − m(ε), grows with ε about as a power
    of it (d ∝ ε at tiny ε, where the relaxation is exact and the bound affine; faster once ReLUs
    turn unstable), so the root m(ε) = 0, d = m0, is sought by the secant in (log ε, log(d / m0))
    (regula falsi, which keeps the bracket), with the Illinois modification (Dowell & Jarratt
    1971): where the same end was replaced twice in a row, the other end's value is halved, so a
    one-sided approach on a curved d turns. Without m0 (a model in training mode) or without a
    positive d at lo, the secant is on m itself, in ε. A probe is kept at least min(tol, half the
    bracket) (in log ε) from either end, so that a probe next to the root on its near side closes
    the bracket. An example after ``max_idle`` secant steps that did not halve its bracket takes
    geometric bisection steps (√(lo·hi)) from then on (a step that halves it does at least what
    bisection does), so every bracket closes to ``tol`` within
    ``steps`` + ``max_idle`` passes."""

    max_idle = 3

    def __init__(self, m0: Tensor, m_lo: Tensor, m_hi: Tensor, tol: Tensor):
        self.m0 = m0
        self.tol = tol
        every = torch.arange(len(m0))
        self.loglog = torch.isfinite(m0) & (m0 > 0) & (m0 - m_lo > 0) & torch.isfinite(m_lo) & torch.isfinite(m_hi)
        self.f_lo = self._f(every, m_lo)  # < 0 at lo
        self.f_hi = self._f(every, m_hi)  # >= 0 at hi
        self.side = torch.zeros(len(m0), dtype=torch.int8)  # end replaced last: 1 lo, -1 hi, 0 none
        self.idle = torch.zeros(len(m0), dtype=torch.long)  # secant steps that did not halve the bracket

    def _f(self, idx: Tensor, m: Tensor) -> Tensor:
        """The function whose root is sought (negative where certified), for the examples ``idx``."""
        m0 = self.m0[idx]
        ratio = torch.where(self.loglog[idx], (m0 - m) / torch.where(self.loglog[idx], m0, 1.0), 1.0)
        return torch.where(self.loglog[idx], torch.log(ratio.clamp(min=torch.finfo(m.dtype).tiny)), -m)

    def probe(self, idx: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """The next ε of each example ``idx`` (brackets [lo, hi], wider than tol)."""
        g = torch.log(hi / lo)
        f_lo, f_hi = self.f_lo[idx], self.f_hi[idx]
        secant = (self.idle[idx] < self.max_idle) & torch.isfinite(f_lo) & torch.isfinite(f_hi) & (f_hi > f_lo)
        w = torch.where(secant, -f_lo / torch.where(secant, f_hi - f_lo, 1.0), 0.5)  # share of the way to hi
        loglog = self.loglog[idx]
        t_log = w * g  # in log ε
        t_lin = torch.log1p(w * torch.expm1(g))  # in ε: lo + w·(hi − lo), as a log offset
        t = torch.where(loglog, t_log, t_lin)
        near = torch.minimum(self.tol[idx], g / 2)
        t = torch.where(secant, torch.minimum(torch.maximum(t, near), g - near), g / 2)
        return lo * torch.exp(t)

    def update(self, idx: Tensor, certified: Tensor, m: Tensor, lo: Tensor, hi: Tensor, probe: Tensor) -> None:
        """After bounding ``probe`` (margins ``m``) for the examples ``idx`` with brackets [lo, hi]:
        the certified ones' lo moves to it, the others' hi."""
        f = self._f(idx, m)
        s = torch.where(certified, 1, -1).to(self.side.dtype)
        again = self.side[idx] == s
        self.f_hi[idx[again & certified]] /= 2  # lo replaced twice in a row: lean towards hi
        self.f_lo[idx[again & ~certified]] /= 2
        self.f_lo[idx[certified]] = f[certified]
        self.f_hi[idx[~certified]] = f[~certified]
        self.side[idx] = s
        g_old = torch.log(hi / lo)
        g_new = torch.where(certified, torch.log(hi / probe), torch.log(probe / lo))
        self.idle[idx] += (g_new > g_old / 2).long()


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


def certified_not_broken(
    certified: Tensor, flags: Mapping[str, Tensor], radii: Mapping[str, float], epsilon: float
) -> tuple[bool, str]:
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


def radius_not_broken(radius: Tensor, flags: Mapping[str, Tensor], radii: Mapping[str, float]) -> tuple[bool, str]:
    """True when no attack broke an example at a radius ≤ its certified radius; with a one-line detail."""
    broken: dict[str, list[int]] = {}
    for key, r in sorted(radii.items()):
        both = (radius.cpu() >= r) & (radius.cpu() > 0) & ~flags[key].bool().cpu()
        if bool(both.any()):
            broken[key] = both.nonzero().flatten().tolist()[:10]
    if broken:
        return False, "certified radius above an attack's radius: " + "; ".join(
            f"{k} broke examples {v}" for k, v in broken.items()
        )
    median = float(torch.quantile(radius.double().cpu(), 0.5)) if radius.numel() else 0.0
    return True, f"no attack broke an example within its certified radius (median {median:.3g})"


def certify_evaluation(
    metrics: dict[str, Any],
    flags: Mapping[str, Tensor],
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    settings: Any,
    method: str,
    batch_size: int,
    sanity: Any = None,
    intermediate: str = "ibp",
    eps_sweep: tuple[float, ...] = (),
    radius_steps: int = 0,
    radius_min: float = 1e-9,
    float64_below: float | None = None,
) -> dict[str, Tensor]:
    """Certify at the evaluation's L∞ ε and add to ``metrics`` (eval.json) ``certified_acc``,
    ``certify_method`` (and per-method accuracies) and the sanity flag ``certified_not_broken``
    (``sanity`` / ``sanity_details`` dicts, created if absent). With an ``eps_sweep`` or
    ``radius_steps`` > 0 also the certified-accuracy-vs-ε curve and every example's certified
    radius (:func:`certified_radius`; :meth:`RadiusResult.metrics`), and the sanity flag then also
    requires that no attack broke an example within its radius. Returns the per-example values
    (``{"certified": flags at ε, "certified_radius": radii}``, whatever was computed) for a
    per-example results file. ``method == "none"`` or a model the bounds do not support records
    ``certified_acc: None`` and why."""
    if method == "none":
        metrics.update(certified_acc=None, certify_method=None)
        return {}
    try:
        result = certify(model, x, y, settings.epsilon, "linf", method, batch_size, intermediate)
        radius = None
        if eps_sweep or radius_steps > 0:
            radius = certified_radius(
                model,
                x,
                y,
                tuple(eps_sweep),
                radius_steps,
                radius_min,
                "linf",
                method,
                batch_size,
                intermediate,
                float64_below=float64_below,
            )
    except UnsupportedModelError as err:
        log.warning("certification skipped: %s", err)
        metrics.update(certified_acc=None, certify_method=None, certify_skipped=str(err))
        return {}
    metrics.update(result.metrics())
    values: dict[str, Tensor] = {"certified": result.certified}
    radii = attack_radii(settings, flags, sanity)
    ok, detail = certified_not_broken(result.certified, flags, radii, settings.epsilon)
    if radius is not None:
        metrics.update(radius.metrics())
        values["certified_radius"] = radius.radius
        ok_r, detail_r = radius_not_broken(radius.radius, flags, radii)
        ok, detail = ok and ok_r, f"{detail}; {detail_r}"
        log.info(
            "certified radius: median %.3g, sweep %s (%d bound passes, %.1f s)",
            radius.median,
            radius.curve(),
            radius.passes,
            radius.seconds,
        )
    metrics.setdefault("sanity", {})[SANITY_KEY] = ok
    metrics.setdefault("sanity_details", {})[SANITY_KEY] = detail
    if not ok:
        log.error("sanity check %s FAILED: %s", SANITY_KEY, detail)
    return values
