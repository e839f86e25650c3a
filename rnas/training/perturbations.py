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

PerturbationFn = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, PerturbationConfig, torch.Generator | None],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor],
]


def _uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * 2 - 1
    return (x + eps * noise).clamp(0, 1)


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
    """Maximize CE (or TRADES' KL to ``clean_logits``) over the L∞ ε-ball ∩ [0, 1].

    Gradients are taken w.r.t. the input only (``torch.autograd.grad``), so no ``.grad``
    is left on the model's parameters. The model's train/eval mode is left as it is
    (BN batch statistics during training follow the usual adversarial-training practice).
    """
    if eps == 0 or steps == 0:
        return x.detach()
    x_adv = (
        _uniform_start(x, eps, generator)
        if loss == "ce"
        else (x + 0.001 * torch.randn(x.shape, generator=generator, device="cpu").to(x.device)).clamp(0, 1)
    )
    target = F.softmax(clean_logits.detach(), dim=1) if loss == "kl" else None
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        if loss == "ce":
            objective = F.cross_entropy(logits, y)
        else:
            objective = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
        (grad,) = torch.autograd.grad(objective, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


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
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
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
