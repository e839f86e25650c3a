"""DSRNA: differentiable search of robust neural architectures (Hosseini, Yang & Xie, CVPR 2021).

The DARTS bilevel search (Liu et al. 2019, first-order by default, ``search.unrolled`` for the
second-order step) with an explicit, differentiable robustness metric R(α) in the architecture
objective, which is *maximized* alongside the validation loss:

    min_α  L_val(w*(α), α) − γ · R(w*(α), α),      w*(α) ≈ argmin_w L_train(w, α).

The weights train on plain cross-entropy (the method changes only the architecture objective).
R is a mean over the architecture batch of one of:

* variant ``cb`` — the certified lower bound of the margin,
  lb_i ≤ min_{x ∈ B_ε(x_i) ∩ [0,1]^d} [f_y(x) − max_{k≠y} f_k(x)]  (a sound lower bound),
  propagated through every op of the supernet — mixed ops weighted by softmax(α) — with interval
  bounds (IBP) or CROWN-IBP linear bounds (:mod:`rnas.bounds`); R_cb = mean_i s(lb_i) with s the
  identity (``cb_scale: linear``) or sign(lb)·log(1 + |lb|) (``log``, see :func:`scale_bound`).
  Higher = more certifiably robust.
* variant ``jacobian`` — R_jac = −ε · ‖∇_x g(x)‖_*, with ‖·‖_* the dual norm of the threat model
  (L1 for L∞, L2 for L2) and g the top-1 logit f_{argmax}(x) or a random projection vᵀf(x), v
  uniform on the unit sphere (Hoffman et al. 2019), so that one backward pass suffices; it is
  the first-order change of the output over the ε-ball. Higher (smaller gradient) = more robust.
* variant ``combined`` — R = R_cb + λ_J · R_jac (``jacobian_weight``).

Gradients reach α through softmax(α) in every mixed op: for R_cb through the bound computation
(everything in :mod:`rnas.bounds` is differentiable), for R_jac through a double backward
(``create_graph=True``).

Batch norm during the search is in training mode: the supernet's forward uses the batch
statistics. Both metrics treat each BN layer as the affine map given by the *clean* batch's
statistics held fixed (:class:`rnas.bounds.graph.BatchNorm`) — the same function the
training-mode forward computes on that batch, but one in which example i's output depends on
x_i alone: the bound holds them fixed over the ε-ball, the Jacobian metric differentiates with
respect to the input with them fixed (:func:`jacobian_metric`), so that neither metric sees
the other examples of the batch through the BN mean and variance. The statistics are still
functions of the weights and α, and gradients flow through them. The cross-entropy uses the
logits of the metric's own clean pass (identical to ``model(x)``), so the clean forward is not
repeated; these passes leave BN running statistics alone.

Randomness (the random projection) comes from a dedicated generator seeded from the run seed
and checkpointed with the method, so runs are reproducible and resumable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rnas.bounds import build_graph, spec_bounds
from rnas.config import DsrnaMethodConfig
from rnas.search.base import BilevelMethod, SearchContext
from rnas.training.trainer import NonFiniteLossError

VARIANTS: dict[str, tuple[str, ...]] = {"cb": ("cb",), "jacobian": ("jacobian",), "combined": ("cb", "jacobian")}

#: Stream id mixed with the run seed (numpy SeedSequence) so the projection draws are independent
#: of the data order, which torch draws from the bare run seed. An identifier, not a knob.
PROJECTION_STREAM = 0x44535241  # "DSRA"


def dual_norm(g: torch.Tensor, norm: str) -> torch.Tensor:
    """‖g_i‖_* per example of (B, ...): L1 for an L∞ threat model, L2 for L2."""
    flat = g.flatten(1)
    if norm == "linf":
        return flat.abs().sum(1)
    if norm == "l2":
        return flat.norm(dim=1)
    raise ValueError(f"unknown norm {norm!r}; known: linf, l2")


def jacobian_metric(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    norm: str = "linf",
    projection: str = "top1",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """R_jac = −ε·‖∇_x g(x_i)‖_* per example (B,) and the clean logits (B, K) (those of ``model(x)``).

    g = f_{argmax f(x)}(x) (``top1``) or vᵀ f(x) with v uniform on the unit sphere per example
    (``random``, drawn on the CPU from ``generator``). Differentiable in the weights and α
    (double backward).

    Training-mode batch norm normalizes with the clean batch's statistics *held fixed*, as in
    the bound metric: the bound graph's point pass on x computes them, and the gradient is
    taken at a second copy of the batch that goes through the graph with them
    (:meth:`rnas.bounds.graph.Graph.forward_fixed_stats`). Each example's gradient is then its
    own. With the batch statistics in the graph, ∇_x Σ_i g(x_i) would carry terms from every
    other example through the batch mean and variance (for two examples and one BN channel the
    normalized value is ±1 whatever x is, and the metric would read 0, "perfectly robust").
    The statistics remain functions of the weights and α, so gradients reach α through them
    too; neither pass touches the BN running statistics."""
    x = x.detach()
    x_in = x.clone().requires_grad_(True)  # the copy the gradient is taken at; x only feeds the statistics
    logits, out = build_graph(model).forward_fixed_stats(x, x_in)  # (B, K) each, equal values
    if projection == "top1":
        g = out.gather(1, logits.detach().argmax(1, keepdim=True)).sum()
    elif projection == "random":
        v = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        v = (v / v.norm(dim=1, keepdim=True)).to(out.device)
        g = (out * v).sum()
    else:
        raise ValueError(f"unknown jacobian projection {projection!r}; known: top1, random")
    (grad,) = torch.autograd.grad(g, x_in, create_graph=True)
    return -eps * dual_norm(grad, norm), logits


def bound_metric(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "linf",
    method: str = "ibp",
    dtype: torch.dtype | None = None,
    cast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The lower bound lb (B,) of f_y − max_{k≠y} f_k over the ε-ball ∩ [0, 1] per example, and
    the clean logits (B, K) of the bound's point pass (both in x's dtype; propagated in
    ``dtype`` if given). ``cast=False`` returns lb in the propagation dtype instead: a float64
    bound of a deep supernet (≈ −1e62 at 8 cells) does not fit float32 and would read −inf, and
    its log scale (:func:`scale_bound`, whose derivative 1/(1 + |lb|) underflows float32 too)
    must be taken before any cast (:meth:`DsrnaMethod.robustness`)."""
    result = spec_bounds(model, x, y, eps, norm, (method,), dtype=dtype)
    lb = result.margin(method)
    return (lb.to(x.dtype) if cast else lb), result.logits.to(x.dtype)


def scale_bound(lb: torch.Tensor, scale: str) -> torch.Tensor:
    """R_cb per example from the margin lower bound: ``linear`` lb, or ``log`` sign(lb)·log(1 + |lb|).

    Both increase with lb (a more certifiably robust architecture scores higher); ``log`` keeps
    the scale of L_val: the IBP bound of the untrained digits supernet with batch-statistics BN
    is about −6e15 at ε = 0.01 and −5e16 at ε = 0.1 (each BN rescales the box by 1/σ of the clean
    batch, ~5–10x per layer), and ∂R/∂α = ∂lb/∂α / (1 + |lb|) is the *relative* change of the bound."""
    if scale == "linear":
        return lb
    if scale == "log":
        return torch.sign(lb) * torch.log1p(lb.abs())
    raise ValueError(f"unknown cb scale {scale!r}; known: log, linear")


class DsrnaMethod(BilevelMethod):
    """DARTS with the architecture loss L_val − γ·R (see the module docstring)."""

    def setup(self, ctx: SearchContext) -> None:
        super().setup(ctx)
        if ctx.run.variant not in VARIANTS:
            raise ValueError(f"unknown DSRNA variant {ctx.run.variant!r}; known: {', '.join(VARIANTS)}")
        self.cfg: DsrnaMethodConfig = ctx.params.search.methods.dsrna
        self.metrics = VARIANTS[ctx.run.variant]
        seed = np.random.SeedSequence([ctx.seed, PROJECTION_STREAM]).generate_state(1)[0]
        self.generator = torch.Generator().manual_seed(int(seed))

    def robustness(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(R (scalar), clean logits (B, K), metrics) of the run's variant on one batch."""
        cfg = self.cfg
        parts: dict[str, torch.Tensor] = {}
        logits = None
        if "jacobian" in self.metrics:
            r_jac, logits = jacobian_metric(model, x, cfg.epsilon, cfg.norm, cfg.jacobian_projection, self.generator)
            parts["r_jac"] = r_jac.mean()
        if "cb" in self.metrics:
            # lb stays in bound_dtype (≈ −1e62 at the paper's 8 cells: beyond float32) until it is scaled
            lb, cb_logits = bound_metric(
                model, x, y, cfg.epsilon, cfg.norm, cfg.bound_method, getattr(torch, cfg.bound_dtype), cast=False
            )
            if not torch.isfinite(lb).all():
                fix = (
                    "set search.methods.dsrna.bound_dtype: float64, or lower search.methods.dsrna.epsilon / "
                    "search.layers"
                    if cfg.bound_dtype != "float64"
                    else "float64 overflows too (docs/methods/dsrna.md, 'Paper scale'): lower search.layers "
                    "(search.methods.dsrna.overrides.layers)"
                )
                raise NonFiniteLossError(
                    f"DSRNA R_cb: the {cfg.bound_method} margin bound is not finite in {cfg.bound_dtype} "
                    f"(loose bounds of a deep untrained supernet overflow); {fix}"
                )
            r_cb = scale_bound(lb, cfg.cb_scale).mean().to(x.dtype)  # scaled in bound_dtype, then cast
            if not torch.isfinite(r_cb):
                raise NonFiniteLossError(
                    f"DSRNA R_cb: the {cfg.bound_method} margin bound ({float(lb.detach().mean()):.3g}, finite in "
                    f"{cfg.bound_dtype}) does not fit {x.dtype} with cb_scale: {cfg.cb_scale}; "
                    "set search.methods.dsrna.cb_scale: log"
                )
            parts["r_cb"] = r_cb
            parts["margin_bound"] = lb.detach().mean()
            parts["certified_frac"] = (lb.detach() > 0).float().mean()
            logits = cb_logits if logits is None else logits
        if "r_cb" in parts and "r_jac" in parts:
            r = parts["r_cb"] + cfg.jacobian_weight * parts["r_jac"]
        else:
            r = parts["r_cb"] if "r_cb" in parts else parts["r_jac"]
        return r, logits, {k: float(v.detach()) for k, v in parts.items()}

    def arch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        r, logits, metrics = self.robustness(model, x, y)
        ce = F.cross_entropy(logits, y)
        loss = ce - self.cfg.gamma * r
        return loss, {"val_ce": float(ce.detach()), "robustness": float(r.detach()), **metrics}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
