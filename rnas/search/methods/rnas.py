"""RNAS: robust neural architecture search with noise examples (this project's interpretation).

Only the abstract of the RNAS paper (Robust Neural Architecture Search) is available to this
project: a *regularization term balances accuracy and robustness*, and the search uses *noise
examples instead of adversarial examples* to cut its cost. Everything below the level of those two
sentences is our reading; ``docs/methods/rnas.md`` lists what comes from where.

The bilevel DARTS search (Liu et al. 2019) with

- weights w: min_w CE(f(x̃; w, α), y) on the weight half, x̃ a noisy copy of x;
- architecture α: min_α CE(f(x; w, α), y) + λ · R(x, x̃) on the architecture half,

      R = D(f(x), f(x̃)),   x̃ = clip_[0,1](x + δ),
      δ ~ U[−s, s]^d  (uniform in the L∞ ball of radius s)   or   δ ~ N(0, s² I),

  with D one of (batch means, p = softmax(f(x)), q = softmax(f(x̃)), z = logits)

      kl:        KL(p ‖ q) = Σ_k p_k (log p_k − log q_k)
      js:        ½ KL(p ‖ m) + ½ KL(q ‖ m),  m = (p + q) / 2
      l2:        ‖z(x) − z(x̃)‖²₂
      features:  1/L Σ_cells ‖ĥ_l(x) − ĥ_l(x̃)‖²₂, ĥ the cell output flattened and L2-normalized
                 per example (so cells of different widths weigh the same; each term is in [0, 4]).

  The gradient reaches α through both the clean and the noisy forward pass.

Variant ``adv`` (run ``rnas_adv``) is the same search with PGD-k examples (Madry et al. 2018,
maximizing CE in the L∞ ε-ball) in place of x̃, on both levels, so that the noise search's
saving can be measured side by side. Adversarial examples are made only by
:func:`adversarial_examples`, the one place this module calls an attack.

Batch-norm running statistics: the clean forward of the architecture step and the forward of
the weight step update them as in DARTS; the extra noisy/adversarial forward of the
architecture step and the attack's forwards use batch statistics without updating the running
ones (:func:`running_stats_frozen`), so they keep tracking the inputs the weights train on.

Randomness: noise and PGD random starts come from a dedicated ``torch.Generator`` (CPU) seeded
from the run seed, checkpointed with the method, so runs are reproducible and resumable and the
global RNG stream is the one DARTS sees. With λ = 0 and s = 0 the search is DARTS bit for bit.
Within one step every weight-loss evaluation (three in the unrolled second-order step) sees the
same x̃, so the finite-difference Hessian-vector product compares like with like.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rnas.config import RnasMethodConfig
from rnas.search.base import Batch, BilevelMethod, Progress, SearchContext
from rnas.training import perturbations

VARIANTS = ("noise", "adv")

#: Stream id mixed with the run seed (numpy SeedSequence) so the noise draws are independent of
#: the data order, which torch draws from the bare run seed. An identifier, not a tunable knob.
NOISE_STREAM = 0x524E4153  # "RNAS"


# --------------------------------------------------------------------------------------------
# Perturbed inputs


def noise_examples(x: torch.Tensor, kind: str, scale: float, generator: torch.Generator) -> torch.Tensor:
    """x̃ = clip_[0,1](x + δ), δ ~ U[−scale, scale] per pixel (``uniform``) or N(0, scale²)
    (``gaussian``); ``scale`` in pixel units. The draw is made on the CPU from ``generator``
    (same numbers on every device); with scale 0, x̃ equals x bit for bit."""
    if kind == "uniform":
        delta = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1) * scale
    elif kind == "gaussian":
        delta = torch.randn(x.shape, generator=generator, dtype=x.dtype) * scale
    else:
        raise ValueError(f"unknown noise kind {kind!r}; known: uniform, gaussian")
    return (x + delta.to(x.device)).clamp(0.0, 1.0).detach()


@contextlib.contextmanager
def running_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Batch-norm layers in training mode normalize with batch statistics but leave their
    running statistics (and ``num_batches_tracked``) untouched inside this block.

    The buffers are saved on entry and copied back on exit, rather than switching
    ``track_running_stats`` off: that switch sends the forward through another batch-norm kernel,
    whose round-off differs on some CPUs (AMD EPYC: 4e-8 on the supernet's logits), so x̃ = x would
    no longer give f(x̃) = f(x) bit for bit, and the supernet would leave its grouped and folded
    batch-norm paths (``rnas.space.grouped.groupable``) for the per-edge one. Inside the block a
    training-mode layer still updates its buffers, which its own outputs never read (batch
    statistics), and the exit undoes it."""
    saved = [
        (b, b.clone())
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]
    try:
        yield
    finally:
        for b, kept in saved:
            # through .data, as batch norm's own update: the version counters stay, so a graph
            # that saved the buffers (BN's backward keeps the running statistics) stays usable
            b.data.copy_(kept)


def adversarial_examples(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: RnasMethodConfig, generator: torch.Generator
) -> torch.Tensor:
    """PGD-k on CE with a uniform random start (Madry et al. 2018) in the L∞ ball of radius
    ``cfg.adv_epsilon`` ∩ [0, 1]: ``adv_steps`` steps of ``adv_step_size`` (pixel units).

    The only place the search makes adversarial examples (variant ``adv``); it calls
    :func:`rnas.training.perturbations.pgd_inner` through its module, so a test can count calls."""
    with running_stats_frozen(model):
        return perturbations.pgd_inner(model, x, y, cfg.adv_epsilon, cfg.adv_step_size, cfg.adv_steps, generator)


# --------------------------------------------------------------------------------------------
# Divergences R between clean and perturbed outputs


def kl_divergence(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) ‖ softmax(noisy)), mean over the batch; logits (B, K)."""
    log_p, log_q = F.log_softmax(clean, dim=1), F.log_softmax(noisy, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def js_divergence(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = (p+q)/2, mean over the batch (nats, ≤ log 2).

    Logs are taken of the probabilities themselves (floored at the smallest normal float so an
    underflowed p_k contributes 0, not NaN), so that p = q gives exactly 0."""
    p, q = F.softmax(clean, dim=1), F.softmax(noisy, dim=1)
    m = 0.5 * (p + q)
    tiny = torch.finfo(p.dtype).tiny

    def log(t: torch.Tensor) -> torch.Tensor:
        return t.clamp_min(tiny).log()

    log_m = log(m)
    return 0.5 * ((p * (log(p) - log_m)).sum(1) + (q * (log(q) - log_m)).sum(1)).mean()


def l2_distance(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of the logits ‖z(x) − z(x̃)‖², mean over the batch."""
    return (clean - noisy).pow(2).sum(1).mean()


def feature_distance(clean: list[torch.Tensor], noisy: list[torch.Tensor]) -> torch.Tensor:
    """1/L Σ_l ‖ĥ_l(x) − ĥ_l(x̃)‖², ĥ = cell output (B, C, H, W) flattened and L2-normalized per
    example; mean over the batch. Each term lies in [0, 4]."""
    terms = [
        (F.normalize(a.reshape(a.shape[0], -1), dim=1) - F.normalize(b.reshape(b.shape[0], -1), dim=1))
        .pow(2)
        .sum(1)
        .mean()
        for a, b in zip(clean, noisy)
    ]
    return torch.stack(terms).mean()


LOGIT_DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "kl": kl_divergence,
    "js": js_divergence,
    "l2": l2_distance,
}


def forward_with_cells(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the output of every cell (``model.cells``), captured by forward hooks."""
    cells = getattr(model, "cells", None)
    if cells is None:
        raise ValueError("divergence 'features' needs a model with a .cells ModuleList (the supernet)")
    outputs: list[torch.Tensor] = []
    handles = [cell.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for cell in cells]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, outputs


def robustness_term(
    model: nn.Module,
    x: torch.Tensor,
    x_tilde: torch.Tensor,
    divergence: str,
    clean_logits: torch.Tensor | None = None,
    clean_cells: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """R = D(f(x), f(x̃)) (see module docstring). The forward on x̃ leaves BN running statistics
    alone; pass the clean forward's outputs to reuse them."""
    if divergence == "features":
        if clean_cells is None:
            _, clean_cells = forward_with_cells(model, x)
        with running_stats_frozen(model):
            _, noisy_cells = forward_with_cells(model, x_tilde)
        return feature_distance(clean_cells, noisy_cells)
    try:
        fn = LOGIT_DIVERGENCES[divergence]
    except KeyError:
        raise ValueError(
            f"unknown divergence {divergence!r}; known: {', '.join(LOGIT_DIVERGENCES)}, features"
        ) from None
    if clean_logits is None:
        clean_logits = model(x)
    with running_stats_frozen(model):
        noisy_logits = model(x_tilde)
    return fn(clean_logits, noisy_logits)


# --------------------------------------------------------------------------------------------
# The method


class RnasMethod(BilevelMethod):
    """DARTS bilevel search with the RNAS losses (see module docstring); variant from the run."""

    def setup(self, ctx: SearchContext) -> None:
        super().setup(ctx)
        if ctx.run.variant not in VARIANTS:
            raise ValueError(f"rnas: unknown variant {ctx.run.variant!r}; known: {', '.join(VARIANTS)}")
        self.cfg: RnasMethodConfig = ctx.params.search.methods.rnas
        self.adversarial = ctx.run.variant == "adv"
        seed = int(np.random.SeedSequence([ctx.seed, NOISE_STREAM]).generate_state(1)[0])
        self.generator = torch.Generator().manual_seed(seed)
        self._w_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x̃: noise examples, or PGD examples in the ``adv`` variant."""
        if self.adversarial:
            return adversarial_examples(model, x, y, self.cfg, self.generator)
        return noise_examples(x, self.cfg.noise, self.cfg.noise_scale, self.generator)

    def step(self, batch_w: Batch, batch_a: Batch, progress: Progress) -> dict[str, float]:
        self._w_cache = None  # one x̃ per weight batch and step
        return super().step(batch_w, batch_a, progress)

    def weight_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CE(f(x̃), y): the weights train on noisy (or adversarial) examples."""
        if self._w_cache is None or self._w_cache[0] is not x:
            self._w_cache = (x, self.perturb(model, x, y))
        logits = model(self._w_cache[1])
        return F.cross_entropy(logits, y), logits

    def arch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """CE(f(x), y) + λ·R(x, x̃); with λ = 0, R is not in the loss (a metric only)."""
        x_tilde = self.perturb(model, x, y)
        div = self.cfg.divergence
        if div == "features":
            logits, cells = forward_with_cells(model, x)
        else:
            logits, cells = model(x), None
        ce = F.cross_entropy(logits, y)
        if self.cfg.lam == 0:
            # a metric only, but with autograd on as in the clean forward: under no_grad the convs take
            # inference kernels whose round-off differs on some CPUs, so x̃ = x would not give R = 0
            r = robustness_term(
                model, x, x_tilde, div, logits.detach(), None if cells is None else [c.detach() for c in cells]
            ).detach()
            loss = ce
        else:
            r = robustness_term(model, x, x_tilde, div, logits, cells)
            loss = ce + self.cfg.lam * r
        return loss, {"arch_ce": float(ce.detach()), "robust_term": float(r.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
