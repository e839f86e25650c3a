"""Gumbel-softmax relaxation of a categorical choice (Jang et al. 2017; Maddison et al. 2017).

Given logits l (..., K) and a temperature τ > 0, a sample is

    g = softmax((l + G) / τ),   G_k = −log(−log U_k),  U_k ~ Uniform(0, 1),

a point on the simplex that is differentiable in l and becomes one-hot as τ → 0. RNAS-CL uses
it for the tutor weights of every student layer and (FBNetV2) for the width of every block.

The noise is drawn on the CPU from an explicit ``torch.Generator`` (then moved to the logits'
device), so a search resumed from a checkpoint draws exactly the same samples.
"""

from __future__ import annotations

import torch

# Uniform draws are clamped into [TINY, 1 − TINY] so that −log(−log U) stays finite.
TINY = 1e-10


def gumbel_noise(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Standard Gumbel noise G = −log(−log U) of the given shape."""
    u = torch.rand(tuple(shape), generator=generator, device="cpu").clamp_(TINY, 1.0 - TINY)
    return (-torch.log(-torch.log(u))).to(device)


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """softmax((logits + G) / τ) over the last dimension; same shape as ``logits``."""
    if tau <= 0:
        raise ValueError(f"Gumbel-softmax temperature must be positive, got {tau}")
    noise = gumbel_noise(logits.shape, generator, logits.device).to(logits.dtype)
    return torch.softmax((logits + noise) / tau, dim=-1)


def one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    """The discrete choice: one-hot of argmax over the last dimension (no gradient)."""
    index = logits.detach().argmax(dim=-1)
    return torch.nn.functional.one_hot(index, logits.shape[-1]).to(logits.dtype)
