"""Training perturbations: a registry of loss functions (clean, FGSM-RS, PGD-k, TRADES).

Each entry maps ``(model, x, y, cfg, generator) -> (loss, logits, x_used)`` where ``x_used``
is the input the loss was computed on (adversarial for PGD/FGSM, clean for TRADES' CE term),
so that extra loss terms (distillation) can use the same input.

- ``fgsm``: FGSM with a uniform random start (Wong, Rice & Kolter 2020), step ``step_size``.
- ``pgd``: PGD-k with random start (Madry et al. 2018) on the cross-entropy.
- ``trades``: CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' maximizing that KL by PGD-k
  (Zhang et al. 2019).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rnas.config import PerturbationConfig
from rnas.evaluation.attacks import pgd_loop, pgd_start

PerturbationFn = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, PerturbationConfig, torch.Generator | None],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor],
]


def trades_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """TRADES' KL(target ‖ softmax(logits)), ``target`` probabilities, batch mean."""
    return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")


def pgd_inner(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    generator: torch.Generator | None,
    loss: str = "ce",
    clean_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Maximize CE (batch mean; ``loss="ce"``) or TRADES' KL to ``clean_logits`` (``"kl"``) over
    the L∞ ε-ball ∩ [0, 1]: the last iterate of :func:`rnas.evaluation.attacks.pgd_loop`.

    The start is uniform in the ball (CE) or x + 0.001·N(0, I) (KL), drawn on the CPU from
    ``generator``; with ``eps`` or ``steps`` 0 nothing is drawn and ``x`` is returned.
    Gradients are taken w.r.t. the input only (``torch.autograd.grad``), so no ``.grad``
    is left on the model's parameters. The model's train/eval mode is left as it is
    (BN batch statistics during training follow the usual adversarial-training practice).
    """
    if loss not in ("ce", "kl"):
        raise ValueError(f"unknown PGD loss {loss!r}; known: ce, kl")
    if eps == 0 or steps == 0:
        return x.detach()
    if loss == "ce":
        x_start = pgd_start(x, eps, generator, device="cpu")
        return pgd_loop(model, x, y, x_start, eps, step, steps, F.cross_entropy)
    x_start = pgd_start(x, 0.001, generator, noise="normal", device="cpu")
    target = F.softmax(clean_logits.detach(), dim=1)
    return pgd_loop(model, x, target, x_start, eps, step, steps, trades_kl)


def clean_loss(model, x, y, cfg, generator):
    logits = model(x)
    return F.cross_entropy(logits, y), logits, x


def fgsm_loss(model, x, y, cfg, generator):
    x_adv = pgd_inner(model, x, y, cfg.epsilon, cfg.step_size, 1, generator)
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits, x_adv


def pgd_loss(model, x, y, cfg, generator):
    x_adv = pgd_inner(model, x, y, cfg.epsilon, cfg.step_size, cfg.steps, generator)
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits, x_adv


def trades_loss(model, x, y, cfg, generator):
    logits_clean = model(x)
    x_adv = pgd_inner(
        model, x, y, cfg.epsilon, cfg.step_size, cfg.steps, generator, loss="kl", clean_logits=logits_clean
    )
    logits_adv = model(x_adv)
    robust = trades_kl(logits_adv, F.softmax(logits_clean, dim=1))
    return F.cross_entropy(logits_clean, y) + cfg.trades_beta * robust, logits_adv, x_adv


PERTURBATIONS: dict[str, PerturbationFn] = {
    "clean": clean_loss,
    "fgsm": fgsm_loss,
    "pgd": pgd_loss,
    "trades": trades_loss,
}


def get_perturbation(kind: str) -> PerturbationFn:
    try:
        return PERTURBATIONS[kind]
    except KeyError:
        raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(PERTURBATIONS)}") from None
