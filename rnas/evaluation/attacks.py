"""Adversarial attacks behind one registry, with per-example robust flags.

Input contract (docs/design.md §3, §6):

* ``x`` is a float tensor ``(B, C, H, W)`` with values in ``[0, 1]``; normalization is a layer
  inside the model, so every ε is in pixel units (``8/255`` is 8/255 of the pixel range).
* ``y`` holds integer class labels ``(B,)``; they are cast to int64.
* The model maps ``x`` to logits ``(B, K)`` and lives on ``x.device`` (the device is never chosen
  here). The caller puts it in eval mode; attacks leave its parameters, their ``.grad``, their
  ``requires_grad`` flags and every module's train/eval mode as they found them.

Two layers:

* ``*_adv(model, x, y, epsilon, **options) -> x_adv`` return the adversarial points, projected
  onto the ε-ball (L∞ or L2, by the attack's threat model) intersected with ``[0, 1]``. For an
  example the attack could not break, ``x_adv`` is some point of the ball (often ``x`` itself).
* ``*_flags(model, x, y, epsilon, **options) -> Tensor[bool]`` (``B``,) are the per-example
  robust flags: True when the model predicts the true label on the clean input *and* on
  ``x_adv``. They are always recomputed here from ``x_adv`` with our own forward pass, never
  taken from the attack library's bookkeeping.

``ATTACKS`` maps a name to an :class:`AttackSpec` (name, threat model, flag function, x_adv
function); :func:`get_attack` resolves a name or raises ``ValueError`` listing the known ones.

The foolbox- and AutoAttack-based attacks are imported lazily, so ``import rnas.evaluation``
stays light. :func:`pgd_loop` is the project's one L∞ PGD iteration (Madry et al., 2018),
dependency-free: adversarial training and the ``rnas_adv`` search run it through
:func:`rnas.training.perturbations.pgd_inner` (last iterate), evaluation through
:func:`pgd_attack` and the protocol's ``pgd`` (``track_best``: an example counts as broken if
any iterate fooled the model); without random start it is the same iteration as foolbox's
``LinfPGD``.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ATTACKS",
    "AttackSpec",
    "ThreatModel",
    "AUTOATTACK_CHECKS",
    "autoattack_adv",
    "autoattack_flags",
    "autoattack_l2_adv",
    "autoattack_l2_flags",
    "clean_flags",
    "frozen_parameters",
    "cw_l2_adv",
    "cw_l2_flags",
    "deepfool_l2_adv",
    "deepfool_l2_flags",
    "fgsm_adv",
    "fgsm_flags",
    "get_attack",
    "logit_margin",
    "pgd_adv",
    "pgd_attack",
    "pgd_flags",
    "pgd_prefix_adv",
    "pgd_prefix_flags",
    "pgd_loop",
    "pgd_start",
    "predict",
    "project",
    "rng_scope",
    "robust_flags",
    "run_attack",
    "stacked_targeted_perturb",
]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
# Tolerance (pixel units) for a library's x_adv lying outside the ε-ball or [0, 1] before we
# project it back. Float round-off stays far below it; anything above is a bug, not noise.
_BOUND_TOLERANCE = 1e-4


class ThreatModel(enum.Enum):
    """The norm ball an attack's perturbation lives in."""

    LINF = "linf"
    L2 = "l2"


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    ``fn(model, x, y, epsilon, **options) -> Tensor[bool]`` gives per-example robust flags;
    ``adv_fn`` (same arguments) gives the adversarial points the flags were computed on.
    ``threat`` is None only for ``clean`` (no perturbation). ``randomized`` says whether the
    attack draws random numbers (random start, restarts, AutoAttack's internal seeding), i.e.
    whether a caller should fix the seed (:func:`rng_scope`) to make it reproducible.
    """

    name: str
    threat: ThreatModel | None
    fn: Callable[..., Tensor]
    adv_fn: Callable[..., Tensor] | None = None
    randomized: bool = False


# --------------------------------------------------------------------------------------------
# Small helpers shared by all attacks.


def _check_inputs(model: nn.Module, x: Tensor, y: Tensor, epsilon: float | None = None) -> Tensor:
    """Validate the input contract; return ``y`` as int64 on ``x.device``."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor (B, C, H, W) with values in [0, 1]")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if x.numel() and (x.min().item() < 0.0 or x.max().item() > 1.0):
        raise ValueError(
            "inputs must lie in [0, 1] (normalization belongs inside the model); "
            f"got min {x.min().item():.4g}, max {x.max().item():.4g}"
        )
    if epsilon is not None and not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0 (pixel units), got {epsilon}")
    param = next(model.parameters(), None)
    if param is not None and param.device != x.device:
        raise ValueError(
            f"model is on {param.device} but the inputs are on {x.device}; attacks run on the "
            "inputs' device and never move the model"
        )
    return y.to(device=x.device, dtype=torch.int64)


def _chunks(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> Tensor:
    """Top-1 predicted labels ``(B,)`` (int64) of ``x``, computed in chunks."""
    out = [model(x[s]).argmax(dim=1) for s in _chunks(x.shape[0], batch_size)]
    if not out:
        return torch.zeros(0, dtype=torch.int64, device=x.device)
    return torch.cat(out)


def robust_flags(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> Tensor:
    """Per-example flags ``(B,)``: correct on the clean ``x`` and on ``x_adv``."""
    y = y.to(device=x.device, dtype=torch.int64)
    return (predict(model, x, batch_size) == y) & (predict(model, x_adv, batch_size) == y)


def project(x_adv: Tensor, x: Tensor, epsilon: float, threat: ThreatModel) -> Tensor:
    """Project ``x_adv`` onto the ``threat``-ball of radius ``epsilon`` around ``x``, then [0, 1].

    Clipping to the box after the ball keeps the point in the ball: for L∞ because ``x`` is in
    the box, for L2 because clipping towards ``x``'s box only shrinks every coordinate's offset.
    """
    delta = x_adv - x
    if threat is ThreatModel.LINF:
        delta = delta.clamp(-epsilon, epsilon)
    elif threat is ThreatModel.L2:
        norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
        factor = (epsilon / norms).clamp(max=1.0)
        delta = delta * factor.view(-1, *([1] * (x.dim() - 1)))
    else:  # pragma: no cover - enum is closed
        raise ValueError(f"unknown threat model {threat!r}")
    return (x + delta).clamp(0.0, 1.0)


def _perturbation_size(x_adv: Tensor, x: Tensor, threat: ThreatModel) -> Tensor:
    delta = (x_adv - x).flatten(1)
    if threat is ThreatModel.LINF:
        return delta.abs().amax(dim=1)
    return delta.norm(p=2, dim=1)


def _checked_projection(x_adv: Tensor, x: Tensor, epsilon: float, threat: ThreatModel, source: str) -> Tensor:
    """Project a library's output; fail loudly if it was more than round-off outside."""
    x_adv = x_adv.detach().to(dtype=x.dtype)
    excess = (_perturbation_size(x_adv, x, threat) - epsilon).max().item() if len(x) else 0.0
    box = max(-x_adv.min().item(), x_adv.max().item() - 1.0, 0.0) if len(x) else 0.0
    if excess > _BOUND_TOLERANCE or box > _BOUND_TOLERANCE:
        raise RuntimeError(
            f"{source} returned points outside the {threat.value} ε-ball or [0, 1] "
            f"(norm excess {excess:.3g}, box excess {box:.3g})"
        )
    return project(x_adv, x, epsilon, threat)


@contextlib.contextmanager
def _preserve_modes(model: nn.Module, eval_mode: bool = False) -> Iterator[None]:
    """Restore every module's ``training`` flag on exit (optionally switch to eval inside)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Run an attack (or anything that only needs input gradients) without touching the model's
    parameters' state.

    foolbox and AutoAttack call ``loss.backward()``, which would accumulate ``.grad`` on every
    parameter. Inside this scope parameters do not require grad (which also skips computing
    those gradients); on exit ``requires_grad``, ``.grad`` and the train/eval modes are restored.
    """
    params = list(model.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        with _preserve_modes(model):
            yield
    finally:
        for p, requires_grad, grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad


@contextlib.contextmanager
def rng_scope(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seed torch's global RNG for the body and restore the caller's RNG state on exit.

    foolbox's random starts and AutoAttack's sub-attacks draw from (and AutoAttack re-seeds)
    the global generator; forking keeps an evaluation reproducible without disturbing the
    random stream of whoever called it.
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        fork = torch.random.fork_rng(devices=[index], device_type="cuda")
    else:
        fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        yield


def _foolbox():
    # GitPython (a foolbox dependency) refuses to import without a git binary unless told to.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import foolbox

    return foolbox


def _run_foolbox(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    attack,
    threat: ThreatModel,
    batch_size: int,
) -> Tensor:
    """Run a foolbox attack chunk by chunk; return its ε-clipped points (B, C, H, W)."""
    fb = _foolbox()
    out = torch.empty_like(x)
    with frozen_parameters(model), torch.enable_grad():
        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
        for s in _chunks(x.shape[0], batch_size):
            _raw, clipped, _success = attack(fmodel, x[s], y[s], epsilons=epsilon)
            out[s] = _checked_projection(clipped, x[s], epsilon, threat, type(attack).__name__)
    return out


def _restarted(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    restarts: int,
    run: Callable[[Tensor, Tensor], Tensor],
    batch_size: int,
) -> Tensor:
    """Run ``run(x, y) -> x_adv`` up to ``restarts`` times, keeping each example's worst point.

    Restart r only attacks the examples still classified correctly after restarts < r, and an
    example's returned point is the first one that fooled the model (or the last tried). So
    "model correct on the returned point" equals the AND of the per-restart robust flags.
    """
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    best = run(x, y)
    if restarts == 1:  # nothing to compare the points with
        return best
    alive = predict(model, best, batch_size) == y
    for _ in range(restarts - 1):
        idx = alive.nonzero().flatten()
        if idx.numel() == 0:
            break
        candidate = run(x[idx], y[idx])
        fooled = predict(model, candidate, batch_size) != y[idx]
        best[idx[fooled]] = candidate[fooled]
        alive[idx[fooled]] = False
    return best


# --------------------------------------------------------------------------------------------
# Pure-torch PGD: the one loop (pgd_loop) that training, the rnas_adv search and evaluation share.


def logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """Per example (B,): z_y − max_{k≠y} z_k, positive where the prediction is correct."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return true - other


def _margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini–Wagner margin max_{k≠y} z_k − z_y, summed over the batch (maximized by PGD)."""
    return (-logit_margin(logits, y)).sum()


_PGD_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "ce": lambda logits, y: F.cross_entropy(logits, y, reduction="sum"),
    "margin": _margin_loss,
}


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "ce",
    generator: torch.Generator | None = None,
    eval_mode: bool = True,
    track_best: bool = False,
    snapshots: dict[int, Tensor | None] | None = None,
) -> Tensor:
    """L∞ projected gradient ascent (Madry et al., 2018); returns ``x_adv`` (B, C, H, W).

    x⁰ = x + U(−ε, ε) (if ``random_start``), then ``steps`` times
    x^{t+1} = Π_{B∞(x, ε) ∩ [0,1]}( x^t + step_size · sign ∇ₓ L(f(x^t), y) ).

    Args:
        epsilon: L∞ radius in pixel units. ``step_size``: absolute step in pixel units.
        loss: ``"ce"`` (cross-entropy), ``"margin"`` (C&W logit margin), or a callable
            ``(logits, y) -> scalar`` to maximize (``y`` is passed through untouched, so e.g.
            TRADES can pass the clean probabilities and a KL divergence).
        generator: draws the random start (must live on ``x.device``); the global RNG if None.
        eval_mode: run the attack with the model in eval mode (BN running statistics, no
            dropout, no BN statistic updates). Every module's mode is restored on return.
        track_best: evaluation mode. ``y`` must then be the labels ``(B,)``. Per example, return
            the *first* iterate x⁰ … x^steps the model misclassifies (every iterate is
            projected, so it lies in the ball), or the last iterate when none does; an example
            is dropped from the iteration once misclassified (the loss is a sum over examples
            and the model is in eval mode, so the others' iterates do not change) and the loop
            ends when every example is. So "correct on the returned point" means correct on
            *every* iterate, as in AutoAttack's APGD. The logits of x^t are the ones its
            gradient step computes anyway; only x^steps costs one extra forward pass. Off
            (the default), the last iterate is returned, as adversarial training wants.
        snapshots: with ``track_best``, step counts k < ``steps`` as keys; each value is set to
            what this call with ``steps=k`` returns (see :func:`pgd_loop`).

    Made of :func:`pgd_start` and :func:`pgd_loop` (the iteration training runs too).
    Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, so no parameter
    ``.grad`` is created or changed; works when called under ``torch.no_grad()``.
    """
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0 (pixel units), got {epsilon}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if isinstance(loss, str):
        if loss not in _PGD_LOSSES:
            raise ValueError(f"unknown PGD loss {loss!r}; known: {', '.join(sorted(_PGD_LOSSES))}")
        loss_fn = _PGD_LOSSES[loss]
        y = y.to(device=x.device, dtype=torch.int64)
    else:
        loss_fn = loss
    if track_best and (y.dim() != 1 or y.shape[0] != x.shape[0] or y.dtype.is_floating_point):
        raise ValueError("track_best needs integer labels y of shape (B,)")
    x_start = pgd_start(x, epsilon, generator) if random_start and epsilon > 0 else x.detach().clone()
    return pgd_loop(
        model,
        x,
        y.long() if track_best else y,
        x_start,
        epsilon,
        step_size,
        steps,
        loss_fn,
        eval_mode=eval_mode,
        track_best=track_best,
        snapshots=snapshots,
    )


def pgd_start(
    x: Tensor,
    scale: float,
    generator: torch.Generator | None = None,
    *,
    noise: str = "uniform",
    device: torch.device | str | None = None,
) -> Tensor:
    """A random PGD start x⁰ = clip_[0,1](x + scale · δ), δ drawn per pixel.

    ``noise="uniform"``: δ ~ U(−1, 1), so x⁰ is uniform in the L∞ ball of radius ``scale`` (PGD's
    start, Madry et al. 2018, with ``scale`` = ε). ``noise="normal"``: δ ~ N(0, 1) (TRADES' start,
    ``scale`` = 0.001). δ is drawn from ``generator`` (the global RNG if None) on ``device``
    (default ``x.device``; the trainer draws on the CPU so that its random stream is the same on
    every device) in ``x.dtype``, then moved to ``x.device``.
    """
    x = x.detach()
    device = x.device if device is None else torch.device(device)
    if noise == "uniform":
        delta = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device) * 2 - 1
    elif noise == "normal":
        delta = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    else:
        raise ValueError(f"unknown PGD start noise {noise!r}; known: normal, uniform")
    return (x + scale * delta).clamp(0.0, 1.0)


def pgd_loop(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_start: Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    eval_mode: bool = False,
    track_best: bool = False,
    snapshots: dict[int, Tensor | None] | None = None,
) -> Tensor:
    """The L∞ PGD iteration, the one every PGD of the project runs (training's
    :func:`rnas.training.perturbations.pgd_inner`, the ``rnas_adv`` search through it,
    :func:`pgd_attack` and the protocol's :func:`pgd_adv`): from x⁰ = ``x_start``, ``steps`` times

        x^{t+1} = Π_{B∞(x, ε) ∩ [0,1]}( x^t + step_size · sign ∇ₓ loss_fn(model(x^t), y) ).

    ``loss_fn(logits, y)`` is maximized; ``y`` is passed through untouched (labels, or e.g.
    TRADES' clean probabilities). Gradients are taken with ``torch.autograd.grad`` w.r.t. the
    input only, so no parameter ``.grad`` is created or changed; works under ``torch.no_grad()``.
    ``eval_mode``: run with the model in eval mode; every module's mode is restored on return
    (off, the modes are left as they are: BN batch statistics, as adversarial training does).

    Returns the last iterate, or with ``track_best`` (``y`` the labels ``(B,)``), per example the
    first iterate x⁰ … x^steps the model misclassifies, else the last one (see
    :func:`pgd_attack`); a misclassified example leaves the batch, the loop ends when none is left.

    ``snapshots`` (with ``track_best``): a dict whose keys are step counts k < ``steps``. The run
    is the same as one of k steps up to step k (same start, same iterates, same examples left),
    so each value is set to exactly what ``steps=k`` returns: PGD-k is a prefix of PGD-``steps``.
    """
    x = x.detach()
    current = x_start.detach()
    snapshots = {} if snapshots is None else snapshots
    if snapshots and not (track_best and all(0 <= k < steps for k in snapshots)):
        raise ValueError(f"snapshots need track_best and step counts in [0, {steps}), got {sorted(snapshots)}")
    if track_best:
        out = current.clone()  # per example: its first misclassified iterate, else the last one
        active = torch.arange(len(x), device=x.device)  # examples not yet misclassified
    x_a, y_a = x, y  # the active examples' clean points and targets
    with _preserve_modes(model, eval_mode=eval_mode), torch.enable_grad():
        for t in range(steps):
            if t in snapshots:  # what a run of t steps returns: its loop would end here
                snapshots[t] = out.clone()
                snapshots[t][active] = current
            if track_best and active.numel() == 0:
                break
            current.requires_grad_(True)
            logits = model(current)
            (grad,) = torch.autograd.grad(loss_fn(logits, y_a), current)
            with torch.no_grad():
                current = current.detach()
                if track_best:
                    fooled = logits.argmax(dim=1) != y_a
                    out[active[fooled]] = current[fooled]
                    keep = ~fooled
                    active, current, grad, x_a, y_a = active[keep], current[keep], grad[keep], x_a[keep], y_a[keep]
                current = current + step_size * grad.sign()
                current = torch.min(torch.max(current, x_a - epsilon), x_a + epsilon).clamp(0.0, 1.0)
    if not track_best:
        return current
    out[active] = current  # the last iterate (fooling or not)
    for k, snap in snapshots.items():  # every example was fooled before step k
        if snap is None:
            snapshots[k] = out.clone()
    return out


# --------------------------------------------------------------------------------------------
# x_adv functions (one per registered attack).


def fgsm_adv(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, *, batch_size: int = DEFAULT_BATCH_SIZE) -> Tensor:
    """FGSM (Goodfellow et al., 2015) via foolbox's ``LinfFastGradientAttack``, no random start:
    x_adv = clip₀¹(x + ε · sign ∇ₓ CE(f(x), y))."""
    y = _check_inputs(model, x, y, epsilon)
    attack = _foolbox().attacks.LinfFastGradientAttack(random_start=False)
    return _run_foolbox(model, x, y, epsilon, attack, ThreatModel.LINF, batch_size)


def pgd_adv(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    *,
    step_size: float,
    steps: int = 20,
    restarts: int = 1,
    random_start: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """L∞ PGD on the summed cross-entropy with an *absolute* ``step_size``, counting every iterate.

    :func:`pgd_attack` with ``track_best=True``: an example's returned point is the first
    iterate (random start included) that fools the model, so the example counts as broken if
    *any* iterate did -- not only the last one, which can oscillate back across the boundary.
    ``restarts`` > 1 reruns from a new random start (global RNG; the protocol seeds it with
    :func:`rng_scope`) on the examples still robust and keeps, per example, the first point
    that fools the model. Without ``track_best`` and random start the iteration is exactly
    foolbox's ``LinfPGD`` (tests/test_attacks.py compares them).
    """

    def run(xs: Tensor, ys: Tensor) -> Tensor:
        options = dict(step_size=step_size, steps=steps, random_start=random_start, batch_size=batch_size)
        return pgd_prefix_adv(model, xs, ys, epsilon, prefixes=(), **options)[steps]

    with _preserve_modes(model):
        return _restarted(model, x, y, restarts, run, batch_size)


def pgd_prefix_adv(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    *,
    prefixes: tuple[int, ...],
    step_size: float,
    steps: int = 20,
    random_start: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[int, Tensor]:
    """One run of :func:`pgd_adv` (one restart) over ``batch_size`` chunks: {k: x_adv of PGD-k}
    for k = ``steps`` and every k < ``steps`` in ``prefixes``, the snapshots of that run (see
    :func:`pgd_loop`). Drawn in the same RNG state, a run of k steps and the first k steps of a
    longer run are the same computation (same random start, same iterates, the same examples
    leaving the batch), so each x_adv equals that of its own run: PGD-20 costs nothing beside
    PGD-100."""
    y = _check_inputs(model, x, y, epsilon)
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0 (absolute, pixel units), got {step_size}")
    prefixes = tuple(sorted({int(k) for k in prefixes} - {steps}))
    out = {k: torch.empty_like(x) for k in (*prefixes, steps)}
    with _preserve_modes(model):
        for s in _chunks(x.shape[0], batch_size):
            snaps: dict[int, Tensor | None] = dict.fromkeys(prefixes)
            out[steps][s] = pgd_attack(
                model,
                x[s],
                y[s],
                epsilon,
                step_size,
                steps,
                random_start=random_start,
                loss="ce",
                eval_mode=False,
                track_best=True,
                snapshots=snaps,
            )
            for k in prefixes:
                out[k][s] = snaps[k]
    return {k: project(v, x, epsilon, ThreatModel.LINF) for k, v in out.items()}


def pgd_prefix_flags(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, **options) -> dict[int, Tensor]:
    """{k: the robust flags of PGD-k} for the x_adv of :func:`pgd_prefix_adv` (same options);
    each equals :func:`pgd_flags` of its own run."""
    runs = pgd_prefix_adv(model, x, y, epsilon, **options)
    batch_size = options.get("batch_size", DEFAULT_BATCH_SIZE)
    return {k: robust_flags(model, x, x_adv, y, batch_size) for k, x_adv in runs.items()}


def cw_l2_adv(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    *,
    steps: int = 1000,
    binary_search_steps: int = 5,
    stepsize: float = 1e-2,
    confidence: float = 0.0,
    initial_const: float = 1e-3,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """Carlini–Wagner L2 (2017) via foolbox's ``L2CarliniWagnerAttack``.

    C&W minimizes the perturbation; foolbox's ``epsilons=ε`` projects its result onto the L2
    ball of radius ε, so an example is robust iff no adversarial point within ε was found.
    ``stepsize`` is Adam's learning rate (in tanh space), as in foolbox. The binary search
    starts at c = ``initial_const`` and multiplies c by 10 until an adversarial is found, then
    bisects; foolbox's early abort stops a search step after a tenth of ``steps`` without
    progress. The defaults are the budget measured to converge on the digits models
    (docs/evaluation.md); foolbox's own defaults are 9 × 10,000 steps.
    """
    y = _check_inputs(model, x, y, epsilon)
    attack = _foolbox().attacks.L2CarliniWagnerAttack(
        binary_search_steps=binary_search_steps,
        steps=steps,
        stepsize=stepsize,
        confidence=confidence,
        initial_const=initial_const,
    )
    return _run_foolbox(model, x, y, epsilon, attack, ThreatModel.L2, batch_size)


def deepfool_l2_adv(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    *,
    steps: int = 50,
    candidates: int = 10,
    overshoot: float = 0.02,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """DeepFool L2 (Moosavi-Dezfooli et al., 2016) via foolbox's ``L2DeepFoolAttack``.

    Only the ``candidates`` most likely classes are linearized (foolbox caps it at the number
    of classes). The minimal perturbation found is projected onto the L2 ball of radius ε.
    """
    y = _check_inputs(model, x, y, epsilon)
    attack = _foolbox().attacks.L2DeepFoolAttack(steps=steps, candidates=candidates, overshoot=overshoot)
    return _run_foolbox(model, x, y, epsilon, attack, ThreatModel.L2, batch_size)


# AutoAttack's own checks (pyautoattack's ``checks`` module, called by
# ``AutoAttack.run_standard_evaluation``; Croce & Hein's "flags"): name -> (function, what a
# warning from it means). They only log; :func:`_recorded_autoattack_checks` records them.
AUTOATTACK_CHECKS: dict[str, tuple[str, str]] = {
    "randomized": ("check_randomized", "the outputs are not deterministic (a randomized defense)"),
    "range_output": ("check_range_output", "the outputs look like probabilities, not logits"),
    "dynamic": ("check_dynamic", "the forward pass calls autograd (a dynamic defense)"),
    "n_classes": ("check_n_classes", "more target classes than the model has"),
    "zero_gradients": ("check_zero_gradients", "APGD-T saw examples with a zero input gradient"),
    "square_sr": ("check_square_sr", "Square lowered the accuracy the gradient attacks left (unreliable)"),
}


class _CheckLogger:
    """Stands in for AutoAttack's logger inside one check: keeps its warnings, forwards them."""

    def __init__(self, messages: list[str], logger: logging.Logger | None):
        self.messages, self.logger = messages, logger

    def warning(self, msg, *args, **kwargs) -> None:
        self.messages.append(str(msg) % args if args else str(msg))
        if self.logger is not None:
            self.logger.warning(msg, *args, **kwargs)

    def __getattr__(self, name):  # info/debug/... go to the real logger
        return getattr(self.logger or log, name)


@contextlib.contextmanager
def _recorded_autoattack_checks(record: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Wrap pyautoattack's check functions for the body; fill ``record`` with
    ``{check: {"passed": bool, "detail": str}}`` for every check that ran and applied.

    ``check_square_sr`` is called every time but only applies when Square and another attack
    ran (its own condition); its detail is AutoAttack's accuracy after each sub-attack.
    ``check_dynamic`` counts autograd calls in a module-level dict that pyautoattack never
    resets, so one dynamic model would flag every later one in the process: it is reset
    before each call.
    """
    from pyautoattack import autopgd_base, checks

    messages: dict[str, list[str]] = {}
    notes: dict[str, str] = {}
    patched: list[tuple[Any, str, Any]] = []

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args, logger=None, **kwargs):
            if name == "square_sr":
                acc = args[0] if args else kwargs.get("acc_dict", {})
                if not ("square" in acc and len(acc) > 2):
                    return fn(*args, logger=logger, **kwargs)  # does not apply (its own rule)
                notes[name] = "accuracy after " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items())
            if name == "dynamic":
                for key in checks.funcs:
                    checks.funcs[key] = 0
            return fn(*args, logger=_CheckLogger(messages.setdefault(name, []), logger), **kwargs)

        return wrapped

    for name, (function, _meaning) in AUTOATTACK_CHECKS.items():
        for module in (checks, autopgd_base):
            original = getattr(module, function, None)
            if original is not None:
                patched.append((module, function, original))
                setattr(module, function, wrap(name, original))
    try:
        yield
    finally:
        for module, function, original in reversed(patched):
            setattr(module, function, original)
        for name in AUTOATTACK_CHECKS:
            if name not in messages:
                continue
            found = list(dict.fromkeys(messages[name]))  # one line per distinct warning
            detail = "; ".join(found) if found else "no warning"
            if name in notes:
                detail = f"{detail} ({notes[name]})"
            record[name] = {"passed": not found, "detail": detail}


def stacked_targeted_perturb(attack: Any, x: Tensor, y: Tensor, max_batch: int) -> Tensor:
    """pyautoattack's ``APGDAttack_targeted.perturb`` with its target classes side by side.

    The library runs APGD-T's targets one after the other (the 2nd, 3rd, ... most likely class of
    the clean output), each as one ``attack_single_run`` on the examples no earlier target fooled.
    Here as many targets as fit in ``max_batch`` rows (at least one) go into one
    ``attack_single_run`` call: the examples still robust, repeated once per target, each copy with
    its own target. APGD's iteration is per example (its step size, checkpoints and best point are
    kept per row; the model is in eval mode), so every example still gets, target by target in
    the library's order, the same 100-iteration run from a random start, and keeps the adversarial
    point of the first target that fooled it. What differs: the random starts are drawn for the
    whole stack (another draw of the same distribution), and within one stack a target also runs
    on examples an earlier target of that stack already fooled (wasted rows; the result is the
    same). The digits networks run APGD-T 1.2-1.35x faster so (a batch of ~150 survivors is
    overhead-bound; docs/evaluation.md). ``x``, ``y``: one chunk of AutoAttack's survivors.
    Anything but the standard setting (the DLR-targeted loss, no schedule of larger ε, a torch
    model) runs the library's own loop."""
    if attack.use_largereps or attack.is_tf_model or attack.loss != "dlr-targeted":
        return type(attack).perturb(attack, x, y)
    attack.init_hyperparam(x)
    x = x.detach().clone().float().to(attack.device)
    y = y.detach().clone().long().to(attack.device)
    adv = x.clone()
    acc = attack.model(x).max(1)[1] == y
    torch.random.manual_seed(attack.seed)  # as the library's loop, once before its targets
    torch.cuda.random.manual_seed(attack.seed)
    targets = list(range(2, attack.n_target_classes + 2))
    while targets:
        n = int(acc.sum())
        if n == 0:
            break
        size = max(1, max_batch // n)  # targets in this stack
        group, targets = targets[:size], targets[size:]
        for _restart in range(attack.n_restarts):
            ind = acc.nonzero().flatten()
            if ind.numel() == 0:
                break
            x_run, y_run = x[ind], y[ind]
            order = attack.model(x_run).sort(dim=1)[1]  # the library's target rule, per example
            attack.y_target = torch.cat([order[:, -t] for t in group])
            stack = torch.cat([x_run] * len(group))
            _, acc_stack, _, adv_stack = attack.attack_single_run(stack, y_run.repeat(len(group)))
            fooled = (acc_stack == 0).view(len(group), -1)
            adv_stack = adv_stack.reshape(len(group), *x_run.shape)
            for k in range(len(group)):  # the first target (in the library's order) that fooled an example
                new = fooled[k] & acc[ind]
                adv[ind[new]] = adv_stack[k][new]
                acc[ind[new]] = False
    return adv


def autoattack_adv(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    *,
    norm: str = "Linf",
    version: str = "standard",
    attacks: tuple[str, ...] | None = None,
    n_queries: int | None = None,
    n_iter: int | None = None,
    seed: int = 0,
    checks: dict[str, Any] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stack_targets: bool = True,
) -> Tensor:
    """AutoAttack (Croce & Hein, 2020) at ``norm`` ``"Linf"`` or ``"L2"``, from ``pyautoattack``.

    ``version="standard"``: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000
    queries), each run only on the examples the previous ones left robust (AutoAttack's own
    worst case). With K < 10 classes the targeted attacks use K − 1 targets, and APGD-T (its
    targeted DLR loss needs 4 classes) is dropped for K < 4. ``version="custom"`` runs the
    sub-attacks in ``attacks`` with the standard version's settings (one restart of APGD and FAB,
    9 targets, 5000 Square queries), so a subset is exactly the standard version without the
    sub-attacks left out (pyautoattack's own custom default is 5 APGD and FAB restarts).
    ``n_queries`` overrides Square's query budget and ``n_iter`` APGD's and FAB's iterations --
    departures from the standard version meant for quick tests only. ``stack_targets``: APGD-T
    runs its target classes side by side, up to ``batch_size`` rows a call
    (:func:`stacked_targeted_perturb`); False: pyautoattack's loop, one target after the other.

    ``checks``: when a dict is given, it is filled with AutoAttack's own checks (randomized or
    dynamic defense, probability outputs, target classes, zero gradients, Square success;
    :data:`AUTOATTACK_CHECKS`) that ran: ``{name: {"passed": bool, "detail": str}}``.

    AutoAttack seeds torch's global RNG itself; that happens inside :func:`rng_scope`, so the
    caller's random stream is left alone. Its ``check_dynamic`` calls ``sys.settrace(None)``,
    which would switch off a debugger or coverage tracer; the previous tracer is restored.
    """
    y = _check_inputs(model, x, y, epsilon)
    from pyautoattack import AutoAttack

    threats = {"Linf": ThreatModel.LINF, "L2": ThreatModel.L2}
    if norm not in threats:
        raise ValueError(f"AutoAttack norm must be one of {', '.join(threats)}, got {norm!r}")
    if len(x) == 0:
        return x.clone()
    if version == "custom":
        if not attacks:
            raise ValueError("AutoAttack version='custom' needs a non-empty 'attacks' tuple")
        attack_list = list(attacks)
    elif attacks is not None:
        raise ValueError(f"'attacks' is only allowed with version='custom', not {version!r}")
    else:
        attack_list = None
    record: dict[str, Any] = {}
    with frozen_parameters(model), rng_scope(seed, x.device):
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        adversary = AutoAttack(
            model,
            attacks=attack_list,
            device=x.device,
            eps=epsilon,
            norm=norm,
            seed=seed,
            version=version,
        )
        adversary.verbose = False  # only gates logger.debug calls and a final summary
        if version == "custom":  # the standard version's settings (pyautoattack's _set_version)
            adversary.apgd.n_restarts = adversary.fab.n_restarts = adversary.apgd_targeted.n_restarts = 1
        targets = max(1, min(adversary.apgd_targeted.n_target_classes, n_classes - 1))
        adversary.apgd_targeted.n_target_classes = targets
        adversary.fab.n_target_classes = targets
        if n_classes < 4 and "apgd-t" in adversary.attacks_to_run:
            log.warning("AutoAttack: %d classes, dropping APGD-T (needs >= 4)", n_classes)
            adversary.attacks_to_run = [a for a in adversary.attacks_to_run if a != "apgd-t"]
        if stack_targets:
            adversary.apgd_targeted.perturb = functools.partial(
                stacked_targeted_perturb, adversary.apgd_targeted, max_batch=batch_size
            )
        if n_queries is not None:
            adversary.square.n_queries = n_queries
        if n_iter is not None:
            for sub in (adversary.apgd, adversary.apgd_targeted, adversary.fab):
                sub.n_iter = n_iter
        tracer = sys.gettrace()
        try:
            with _recorded_autoattack_checks(record):
                x_adv, _y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        finally:
            sys.settrace(tracer)
    if checks is not None:
        checks.update(record)
    return _checked_projection(x_adv, x, epsilon, threats[norm], f"AutoAttack ({norm})")


def autoattack_l2_adv(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, **options) -> Tensor:
    """:func:`autoattack_adv` at ``norm="L2"`` (``epsilon`` is the L2 radius); same options."""
    if "norm" in options:
        raise ValueError("autoattack_l2 is AutoAttack at norm='L2'; use 'autoattack' to choose the norm")
    return autoattack_adv(model, x, y, epsilon, norm="L2", **options)


# --------------------------------------------------------------------------------------------
# Flag functions (what the registry exposes).


def clean_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float = 0.0,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """No attack: True where the model classifies the clean input correctly. ``epsilon`` is
    accepted (and ignored) so that every registry function has the same signature."""
    y = _check_inputs(model, x, y)
    return predict(model, x, batch_size) == y


def _flags_from(adv_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def flags(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, **options) -> Tensor:
        x_adv = adv_fn(model, x, y, epsilon, **options)
        batch_size = options.get("batch_size", DEFAULT_BATCH_SIZE)
        return robust_flags(model, x, x_adv, y, batch_size)

    flags.__signature__ = inspect.signature(adv_fn)  # show the attack's own options
    flags.__name__ = adv_fn.__name__.removesuffix("_adv") + "_flags"
    flags.__qualname__ = flags.__name__
    flags.__doc__ = (
        f"Per-example robust flags (B,) of :func:`{adv_fn.__name__}`: True where the model is "
        "correct on the clean input and on the adversarial point. Same options."
    )
    return flags


fgsm_flags = _flags_from(fgsm_adv)
pgd_flags = _flags_from(pgd_adv)
cw_l2_flags = _flags_from(cw_l2_adv)
deepfool_l2_flags = _flags_from(deepfool_l2_adv)
autoattack_flags = _flags_from(autoattack_adv)
autoattack_l2_flags = _flags_from(autoattack_l2_adv)


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec("clean", None, clean_flags, None, randomized=False),
        AttackSpec("fgsm", ThreatModel.LINF, fgsm_flags, fgsm_adv, randomized=False),
        AttackSpec("pgd", ThreatModel.LINF, pgd_flags, pgd_adv, randomized=True),
        AttackSpec("autoattack", ThreatModel.LINF, autoattack_flags, autoattack_adv, randomized=True),
        AttackSpec("autoattack_l2", ThreatModel.L2, autoattack_l2_flags, autoattack_l2_adv, randomized=True),
        AttackSpec("cw_l2", ThreatModel.L2, cw_l2_flags, cw_l2_adv, randomized=False),
        AttackSpec("deepfool_l2", ThreatModel.L2, deepfool_l2_flags, deepfool_l2_adv, randomized=False),
    )
}


def get_attack(name: str) -> AttackSpec:
    """Look up a registered attack; unknown names raise ``ValueError`` listing the known ones."""
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(sorted(ATTACKS))}") from None


def run_attack(name: str, model: nn.Module, x: Tensor, y: Tensor, epsilon: float, **options) -> Tensor:
    """Per-example robust flags (B,) of the registered attack ``name``."""
    return get_attack(name).fn(model, x, y, epsilon, **options)
