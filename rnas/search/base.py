"""The search-method interface and the shared DARTS bilevel machinery.

A method is an object with a small fixed surface (NASLib's optimizer interface):

- ``setup(ctx)``: build its supernet/optimizers on the search space;
- ``step(batch_w, batch_a, progress)``: one step on a weight batch and an architecture
  batch (the two halves of the search's training split); returns metrics;
- ``end_epoch(epoch)``: per-epoch bookkeeping, returns metrics;
- ``architecture()``: the discrete result as a JSON-able dict (a genotype, or a width-space
  architecture), written by the search stage;
- ``state_dict()`` / ``load_state_dict()``: everything that must be checkpointed;
- ``select_from(folder, params, run, info)`` (only where a run has ``RunSpec.select_from``): the
  architecture of a run that shares another run's search, from that search's files.

:class:`BilevelMethod` is DARTS (Liu et al. 2019): weights w minimize L_train(w, α) with SGD
(or Adam: ``search.w_optimizer``, :func:`weight_optimizer`), architecture α minimizes L_val(w*(α), α)
with Adam, from epoch ``search.arch_warmup_epochs`` + 1 on (before it the weights train alone, so
α's first steps see trained weights). First-order by default (w*(α) ≈ w); second-order
(``unrolled``) uses w' = w − ξ∇_w L_train(w, α) (ξ the weights' current learning rate; a plain
gradient step whatever the optimizer) and the finite-difference Hessian-vector product of DARTS'
``architect.py``:

    ∇_α L_val(w', α) − ξ · [∇_α L_train(w⁺, α) − ∇_α L_train(w⁻, α)] / (2r),
    w± = w ± r·∇_{w'} L_val(w', α),  r = 0.01 / ‖∇_{w'} L_val‖.

Robust methods override ``weight_loss`` and/or ``arch_loss``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rnas.config import Params, SearchCommon
from rnas.data import DatasetInfo
from rnas.runs import RunSpec
from rnas.runtime import autocast, place_model
from rnas.space.supernet import Supernet

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class SearchContext:
    params: Params
    run: RunSpec
    info: DatasetInfo  # dataset facts: classes, channels, image size
    device: torch.device
    seed: int
    steps_per_epoch: int
    teacher: nn.Module | None = None  # the robust teacher (methods that need one)


@dataclass(frozen=True)
class Progress:
    epoch: int
    step: int
    steps_per_epoch: int


class SharedSearchError(RuntimeError):
    """The search a run shares (``RunSpec.select_from``) has not written its files, or wrote them
    in an older form; the message names the folder and the command that writes them."""


@dataclass
class Selected:
    """What :meth:`SearchMethod.select_from` gives a run that shares another run's search."""

    architecture: dict[str, Any]
    decision_values: list[Any]  # per epoch of the shared search, the decision (file form) for this run
    extra_outputs: dict[str, Any]  # JSON files written beside the architecture ({name: data})
    source: dict[str, Any]  # the shared search's search.json
    draw: Callable[[Path], list[Path]] = lambda folder: []  # writes the run's plots into folder


class SearchMethod:
    """Base class of every search method (see module docstring)."""

    uses_search_loop: bool = True  # False: the method needs no epochs (e.g. random)

    def setup(self, ctx: SearchContext) -> None:
        self.ctx = ctx

    def begin_epoch(self, epoch: int) -> None:
        pass

    def step(self, batch_w: Batch, batch_a: Batch, progress: Progress) -> dict[str, float]:
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return {}

    def architecture(self) -> dict[str, Any]:
        raise NotImplementedError

    def decision(self) -> Any:
        """The discrete choice the search would return now (JSON-able): the loop records its
        digest every epoch to find when the search stopped changing its mind
        (:mod:`rnas.search.stability`). Methods whose architecture file carries continuous
        values (probabilities, costs) return only the discrete part."""
        return self.architecture()

    def side_decisions(self) -> dict[str, Any]:
        """Discrete choices the search makes beside the architecture (JSON-able, by name), e.g.
        RNAS-CL's tutor of each student layer, which retraining uses but which is not part of the
        network. The loop tracks each one's stability as the architecture's; they do not count
        towards *decided*, which is about the architecture alone."""
        return {}

    def eval_model(self) -> nn.Module | None:
        """The network whose validation accuracy the loop reports (the supernet), if any."""
        return None

    def epoch_snapshot(self) -> Any:
        """The continuous state behind the decision (JSON-able), recorded by the loop after every
        epoch, or None: a cell-space search's softmax(α), so how an undecided search's near-ties
        evolved can be read (and drawn) from its files. The search stage writes the list into
        ``alphas.json`` as ``per_epoch``."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def extra_outputs(self) -> dict[str, Any]:
        """Further JSON files the search stage writes beside the architecture ({name: data})."""
        return {}

    def select_from(self, folder: Path, params: Params, run: RunSpec, info: DatasetInfo) -> Selected:
        """The architecture of ``run`` (``RunSpec.select_from``) from the files of the search it
        shares, in ``folder``; the method is not set up."""
        raise NotImplementedError(f"{type(self).__name__} has no run that selects from another run's search")

    def write_files(self, folder: Path) -> list[Path]:
        """Non-JSON files (e.g. plots) written into ``folder`` beside the architecture; returns them."""
        return []


def alpha_entropy(alpha: torch.Tensor) -> float:
    """Mean entropy (nats) of softmax(α) over edges: high = undecided, low = committed."""
    p = torch.softmax(alpha.detach(), dim=-1)
    return float(-(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean())


def arch_warmup(warmup_epochs: int, epochs: int) -> int:
    """Epochs in which only the weights train: ``search.arch_warmup_epochs``, capped at epochs − 1
    so that α moves in at least the last epoch (a one-epoch smoke search has no warm-up)."""
    return max(0, min(warmup_epochs, epochs - 1))


def arch_lr_factor(schedule: str, epoch: int, epochs: int, warmup: int = 0) -> float:
    """Multiplier of α's learning rate in ``epoch`` (0-based): 1 for ``constant``; for ``cosine``
    ½(1 + cos(π t)), t = (epoch − warmup) / (epochs − warmup): 1 in the first epoch α moves,
    falling towards 0 over the remaining ones (per epoch, like the weights' schedule)."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown arch_lr_schedule {schedule!r}; known: constant, cosine")
    t = max(0, epoch - warmup) / max(1, epochs - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * t))


# -- the weights' optimizer (search.w_optimizer) ------------------------------------------

#: Adam's betas for the weights: PyTorch's defaults, which the RNAS-CL public code's search names.
ADAM_BETAS = (0.9, 0.999)


def _sgd(params: list[nn.Parameter], s: SearchCommon) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=s.w_lr, momentum=s.w_momentum, weight_decay=s.w_weight_decay)


def _adam(params: list[nn.Parameter], s: SearchCommon) -> torch.optim.Optimizer:
    # weight decay as L2 added to the gradient (torch.optim.Adam), as the RNAS-CL public code
    return torch.optim.Adam(params, lr=s.w_lr, betas=ADAM_BETAS, weight_decay=s.w_weight_decay)


#: ``search.w_optimizer`` -> builder of the weights' optimizer from the search settings.
WEIGHT_OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], SearchCommon], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
}


def weight_optimizer(
    params: Iterable[nn.Parameter], s: SearchCommon
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer of a search's network weights (``search.w_optimizer``, learning rate ``w_lr``,
    weight decay ``w_weight_decay``) and its schedule, the same for every optimizer: cosine from
    ``w_lr`` to ``w_lr_min`` over ``search.epochs``, stepped once per epoch."""
    try:
        build = WEIGHT_OPTIMIZERS[s.w_optimizer]
    except KeyError:
        raise ValueError(
            f"search.w_optimizer: unknown optimizer {s.w_optimizer!r}; known: {', '.join(WEIGHT_OPTIMIZERS)}"
        ) from None
    opt = build(list(params), s)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.epochs, eta_min=s.w_lr_min)


class BilevelMethod(SearchMethod):
    """DARTS bilevel search on the cell-space supernet."""

    def setup(self, ctx: SearchContext) -> None:
        super().setup(ctx)
        s = ctx.params.search
        self.supernet = Supernet(
            s.init_channels,
            s.layers,
            ctx.info.num_classes,
            ctx.info.input_channels,
            ctx.info.name,
            nodes=s.nodes,
            partial_channels=s.partial_channels,
        )
        self.supernet = place_model(self.supernet, ctx.device, ctx.params.pipeline.channels_last)
        self.w_opt, self.w_sched = weight_optimizer(self.supernet.weights(), s)
        self.a_opt = torch.optim.Adam(
            self.supernet.arch_parameters(),
            lr=s.arch_lr,
            betas=(s.arch_beta1, s.arch_beta2),
            weight_decay=s.arch_weight_decay,
        )

    # -- losses robust methods override ---------------------------------------------
    def weight_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss the weights minimize on the weight half; returns (loss, logits)."""
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    def arch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss α minimizes on the architecture half; returns (loss, metrics)."""
        loss = F.cross_entropy(model(x), y)
        return loss, {}

    # -- one bilevel step ----------------------------------------------------------
    def step(self, batch_w: Batch, batch_a: Batch, progress: Progress) -> dict[str, float]:
        s = self.ctx.params.search
        warmup = arch_warmup(s.arch_warmup_epochs, s.epochs)
        if progress.epoch < warmup:  # warm-up: the weights train alone, α stays put
            return self.weight_step(batch_w, progress)
        factor = arch_lr_factor(s.arch_lr_schedule, progress.epoch, s.epochs, warmup)
        for group in self.a_opt.param_groups:  # the peak lr travels in the optimizer's state (resumable)
            group["lr"] = group.setdefault("peak_lr", group["lr"]) * factor
        net = self.supernet
        net.train()
        xa, ya = batch_a
        self.a_opt.zero_grad(set_to_none=True)
        if s.unrolled:
            arch_metrics = self._unrolled_arch_grad(batch_w, batch_a)
        else:
            with autocast(self.ctx.device):  # bf16 when pipeline.amp is on (first-order only)
                a_loss, arch_metrics = self.arch_loss(net, xa, ya)
            grads = torch.autograd.grad(a_loss, net.arch_parameters(), allow_unused=True)
            for p, g in zip(net.arch_parameters(), grads):
                p.grad = g
            arch_metrics = {"arch_loss": float(a_loss.detach()), **arch_metrics}
        self.a_opt.step()
        return {**self.weight_step(batch_w, progress), **arch_metrics}

    def weight_step(self, batch_w: Batch, progress: Progress) -> dict[str, float]:
        """One step of the weights (``search.w_optimizer``) on a weight-half batch (α gets no update from it)."""
        s = self.ctx.params.search
        net = self.supernet
        net.train()
        xw, yw = batch_w
        self.w_opt.zero_grad(set_to_none=True)
        with autocast(self.ctx.device):  # bf16 when pipeline.amp is on (rnas.runtime.autocast)
            w_loss, logits = self.weight_loss(net, xw, yw)
        if not torch.isfinite(w_loss):
            from rnas.training.trainer import NonFiniteLossError

            raise NonFiniteLossError(
                f"search weight loss is {float(w_loss)} at epoch {progress.epoch + 1}, "
                f"step {progress.step}; stopping (the last good checkpoint is kept)"
            )
        weights = [p for p in net.weights() if p.requires_grad]
        w_loss.backward(inputs=weights)  # not through α's branches (the mixed ops' α-gradient sums)
        nn.utils.clip_grad_norm_(weights, s.grad_clip)
        self.w_opt.step()
        for p in net.arch_parameters():  # α gets no update from the weight step
            p.grad = None
        acc = float((logits.argmax(1) == yw).float().mean())
        return {"weight_loss": float(w_loss.detach()), "train_acc": acc}

    def _unrolled_arch_grad(self, batch_w: Batch, batch_a: Batch) -> dict[str, float]:
        net = self.supernet
        xi = self.w_opt.param_groups[0]["lr"]
        weights = net.weights()
        backup = [w.detach().clone() for w in weights]
        xw, yw = batch_w
        xa, ya = batch_a
        loss_w, _ = self.weight_loss(net, xw, yw)
        g_w = torch.autograd.grad(loss_w, weights, allow_unused=True)
        with torch.no_grad():  # virtual step w' = w − ξ ∇_w L_train
            for w, g in zip(weights, g_w):
                if g is not None:
                    w.sub_(xi * g)
        a_loss, metrics = self.arch_loss(net, xa, ya)
        grads = torch.autograd.grad(a_loss, list(net.arch_parameters()) + weights, allow_unused=True)
        n_a = len(net.arch_parameters())
        d_alpha, d_w = grads[:n_a], grads[n_a:]
        with torch.no_grad():
            for w, b in zip(weights, backup):
                w.copy_(b)
        norm = torch.sqrt(sum((g * g).sum() for g in d_w if g is not None))
        r = 0.01 / (float(norm) + 1e-12)
        hvp = []
        for sign in (+1, -1):
            with torch.no_grad():
                for w, g in zip(weights, d_w):
                    if g is not None:
                        w.add_(sign * r * g if sign > 0 else -2 * r * g)
            loss_p, _ = self.weight_loss(net, xw, yw)
            hvp.append(torch.autograd.grad(loss_p, net.arch_parameters(), allow_unused=True))
        with torch.no_grad():
            for w, b in zip(weights, backup):
                w.copy_(b)
        for p, da, hp, hm in zip(net.arch_parameters(), d_alpha, hvp[0], hvp[1]):
            g = torch.zeros_like(p) if da is None else da.clone()
            if hp is not None and hm is not None:
                g -= xi * (hp - hm) / (2 * r)
            p.grad = g
        return {"arch_loss": float(a_loss), **metrics}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        self.w_sched.step()
        return {
            "alpha_entropy_normal": alpha_entropy(self.supernet.alpha_normal),
            "alpha_entropy_reduce": alpha_entropy(self.supernet.alpha_reduce),
        }

    def eval_model(self) -> nn.Module:
        return self.supernet

    def architecture(self) -> dict[str, Any]:
        return self.supernet.genotype().to_dict()

    def epoch_snapshot(self) -> dict[str, Any]:
        """softmax(α) per cell type (and PC-DARTS's edge weights, by which the derivation scales it)."""
        net = self.supernet
        alphas: dict[str, Any] = {
            "normal": torch.softmax(net.alpha_normal.detach().cpu(), -1).tolist(),
            "reduce": torch.softmax(net.alpha_reduce.detach().cpu(), -1).tolist(),
        }
        for kind, reduction in (("normal", False), ("reduce", True)):
            edges = net.edge_weights(reduction)
            if edges is not None:
                alphas[f"{kind}_edges"] = edges.detach().cpu().tolist()
        return alphas

    def extra_outputs(self) -> dict[str, Any]:
        return {"alphas.json": {"primitives": list(self.supernet.primitives), **self.epoch_snapshot()}}

    def state_dict(self) -> dict[str, Any]:
        return optimizer_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_optimizer_state(self, state)


def optimizer_state(method: Any) -> dict[str, Any]:
    """The resumable state of a method with a supernet, a weight optimizer and its schedule, and
    an architecture optimizer (``supernet``, ``w_opt``, ``w_sched``, ``a_opt``)."""
    return {key: getattr(method, key).state_dict() for key in _OPTIMIZER_STATE}


def load_optimizer_state(method: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`optimizer_state` saved."""
    for key in _OPTIMIZER_STATE:
        getattr(method, key).load_state_dict(state[key])


_OPTIMIZER_STATE = ("supernet", "w_opt", "w_sched", "a_opt")


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))
