"""RNAS-CL (Nath et al., "RNAS-CL: Robust Neural Architecture Search by Cross-Layer Knowledge
Distillation", 2023; docs/methods/rnas_cl.md): a robust teacher supervises the student through
attention maps, and every student layer learns which teacher layer to follow (its tutor).

Width space (run ``rnas_cl``, the paper's setting, FBNetV2-style space of
:mod:`rnas.space.width`). With Gumbel-softmax widths and tutors at temperature τ, the loss is

    L = α · (CE + kl_weight·KL(teacher ‖ student) + γ·L_attn) · C(MACs)        (FBNet's cost term)

with L_attn and KL from :mod:`rnas.distill`, MACs the expected multiply-adds with effective
widths, and ``loss_form`` choosing L_attn's form and the cost factor C:

    public (the authors' code, the default):  C = β·log(MACs)
    paper (the earlier reading):              C = log(MACs)^β

Data: every epoch walks the *whole* training split of the search, as the public code walks its
training loader: each step gets one batch of each half of the split (the shared loop's pairing),
and both batches update the same parameters. The first (1 − arch_fraction) of an epoch's steps
update the weights (``search.w_optimizer``: SGD by default, Adam as the public code with the
paper-scale profile's overrides; the common search settings), the last arch_fraction the tutor
and width logits (Adam, ``arch_lr``, ``arch_weight_decay``): 80% / 20% of the split by default, one
optimizer update per batch. τ(epoch) = tau0 · exp(−tau_decay · epoch). The search runs on clean
inputs; robustness comes from the robust teacher (adversarial training happens in retraining).

Cell space (run ``rnas_cl_cell``, an extension the paper does not have): the DARTS bilevel
search of :class:`BilevelMethod` with CE + kl_weight·KL + γ·L_attn on both levels; the tutor
logits join α's Adam as their own parameter group (``arch_lr``, ``arch_weight_decay``). There
is no cost term (the cell space has no width choice).

Discretization: every student layer keeps its argmax tutor, every block its argmax width.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rnas.config import RnasClMethodConfig
from rnas.distill import MapTaps, TeacherProbe, TutorLogits, attention_loss, kd_kl, student_layers
from rnas.runtime import autocast, place_model
from rnas.search.base import (
    Batch,
    BilevelMethod,
    Progress,
    SearchContext,
    SearchMethod,
    alpha_entropy,
    arch_lr_factor,
    load_optimizer_state,
    optimizer_state,
    weight_optimizer,
)
from rnas.space.gumbel import one_hot_argmax
from rnas.space.width import WidthSupernet, log_cost


def cost_factor(cost: torch.Tensor, beta: float, form: str) -> torch.Tensor:
    """C(MACs) of the search loss: β·log(MACs) (``public``, the authors' code) or log(MACs)^β (``paper``)."""
    log_c = log_cost(cost)
    if form == "public":
        return beta * log_c
    if form == "paper":
        return log_c**beta
    raise ValueError(f"unknown loss form {form!r}; known: public, paper")


def temperature(cfg: RnasClMethodConfig, epoch: int) -> float:
    """Gumbel-softmax temperature of an epoch: tau0 · exp(−tau_decay · epoch)."""
    return cfg.tau0 * math.exp(-cfg.tau_decay * epoch)


def step_phase(step: int, steps_per_epoch: int, arch_fraction: float) -> str:
    """``weight``, ``arch`` or ``both``: the last round(arch_fraction · n) of an epoch's n batches
    (at least one, at most n − 1) update the logits; a one-batch epoch does both."""
    n = steps_per_epoch
    if n <= 1:
        return "both"
    n_arch = min(n - 1, max(1, round(arch_fraction * n)))
    return "arch" if step >= n - n_arch else "weight"


def _require_teacher(ctx: SearchContext) -> nn.Module:
    if ctx.teacher is None:
        raise ValueError(
            "RNAS-CL needs the robust teacher (SearchContext.teacher): run `rnas teacher` first "
            "or set pipeline.teacher_checkpoint"
        )
    return ctx.teacher


class CrossLayerTerms:
    """The distillation half of RNAS-CL shared by both spaces: teacher probe, student taps,
    tutor logits, the Gumbel generator and the temperature."""

    def __init__(
        self, student: nn.Module, teacher: nn.Module, cfg: RnasClMethodConfig, device: torch.device, seed: int
    ):
        self.cfg = cfg
        self.teacher = TeacherProbe(teacher, cfg.map_size, kernels=cfg.tutor_kernels)
        self.layers = student_layers(student)
        self.taps = MapTaps(self.layers, cfg.map_size, root=student)
        self.tutors = TutorLogits(len(self.layers), len(self.teacher.names)).to(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.tau = cfg.tau0

    @property
    def student_names(self) -> list[str]:
        return [n for n, _ in self.layers]

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, train_tutors: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """CE + kl_weight·KL + γ·L_attn for the student's last forward on x (returns the loss and parts)."""
        if not self.taps.saw(x):
            raise RuntimeError("the student's last forward was not on this batch")
        s_maps = self.taps.stack()  # (n_s, B, S²)
        t_logits, t_maps = self.teacher(x)  # (B, K), (n_t, B, S²)
        g = self.tutors.sample(self.tau, self.generator)
        if not train_tutors:
            g = g.detach()
        ce = F.cross_entropy(logits, y)
        kl = kd_kl(logits, t_logits, self.cfg.temperature)
        attn = attention_loss(s_maps, t_maps, g, self.cfg.loss_form)
        loss = ce + self.cfg.kl_weight * kl + self.cfg.gamma * attn
        acc = float((logits.argmax(1) == y).float().mean())
        return loss, {
            "ce": float(ce.detach()),
            "kl": float(kl.detach()),
            "attn": float(attn.detach()),
            "train_acc": acc,
        }

    def tutor_entropy(self) -> float:
        return alpha_entropy(self.tutors.logits)

    def report(self) -> dict[str, Any]:
        """tutors.json: layer names, chosen tutors and the softmax tutor weights."""
        return {
            "student_layers": self.student_names,
            "teacher_layers": self.teacher.names,
            "tutors": self.tutors.choice(),
            "weights": self.tutors.probabilities().cpu().tolist(),
        }

    def plot(self, folder: Path, title: str) -> Path:
        from rnas.report.tutor_map import plot_tutor_map

        rep = self.report()
        return plot_tutor_map(
            rep["weights"],
            rep["student_layers"],
            rep["teacher_layers"],
            rep["tutors"],
            Path(folder) / "tutor_map.png",
            title=title,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"tutors": self.tutors.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tutors.load_state_dict(state["tutors"])
        self.generator.set_state(state["generator"])


class RnasClWidthSearch(SearchMethod):
    """RNAS-CL in the FBNetV2 width space (see module docstring)."""

    def setup(self, ctx: SearchContext) -> None:
        super().setup(ctx)
        s, cfg = ctx.params.search, ctx.params.search.methods.rnas_cl
        self.cfg, w = cfg, cfg.width
        net = WidthSupernet(
            ctx.info.num_classes,
            ctx.info.input_channels,
            ctx.info.name,
            ctx.info.image_size,
            w.stem_channels,
            w.stage_widths,
            w.stage_blocks,
            w.stage_strides,
            w.expansion,
            w.kernel,
            w.width_options,
            w.width_step,
            w.width_step_channels,
            w.stem_stride,
            w.stage_width_options,
        )
        self.supernet = place_model(net, ctx.device, ctx.params.pipeline.channels_last)
        self.cl = CrossLayerTerms(self.supernet, _require_teacher(ctx), cfg, ctx.device, ctx.seed)
        self.supernet.generator = self.cl.generator
        self.w_opt, self.w_sched = weight_optimizer(self.supernet.weights(), s)  # search.w_optimizer
        # Adam with PyTorch's default betas (0.9, 0.999): the paper gives only lr and weight decay.
        self.a_opt = torch.optim.Adam(self.arch_parameters(), lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay)
        self.set_temperature(cfg.tau0)

    def arch_parameters(self) -> list[nn.Parameter]:
        return self.supernet.arch_parameters() + list(self.cl.tutors.parameters())

    def set_temperature(self, tau: float) -> None:
        self.supernet.tau = tau
        self.cl.tau = tau

    def begin_epoch(self, epoch: int) -> None:
        self.set_temperature(temperature(self.cfg, epoch))

    def search_loss(self, x: torch.Tensor, y: torch.Tensor, train_arch: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """α · (CE + kl_weight·KL + γ·L_attn) · C(MACs) on one batch (Gumbel widths and tutors)."""
        logits = self.supernet(x)
        base, parts = self.cl.loss(x, y, logits, train_tutors=train_arch)
        cost = self.supernet.expected_cost()
        factor = cost_factor(cost, self.cfg.beta_cost, self.cfg.loss_form)
        if not train_arch:
            factor = factor.detach()  # a constant factor for the weights
        total = self.cfg.alpha_cost * base * factor
        return total, {"loss": float(total.detach()), **parts, "macs": float(cost.detach())}

    def weight_update(self, batch: Batch, progress: Progress) -> dict[str, float]:
        """One step of the supernet weights (``search.w_optimizer``) on one batch (the logits get no update)."""
        x, y = batch
        with autocast(self.ctx.device):  # bf16 when pipeline.amp is on (rnas.runtime.autocast)
            loss, metrics = self.search_loss(x, y, train_arch=False)
        if not torch.isfinite(loss):
            from rnas.training.trainer import NonFiniteLossError

            raise NonFiniteLossError(
                f"search loss is {float(loss)} at epoch {progress.epoch + 1}, step "
                f"{progress.step}; stopping (the last good checkpoint is kept)"
            )
        weights = self.supernet.weights()
        self.w_opt.zero_grad(set_to_none=True)
        loss.backward(inputs=weights)
        nn.utils.clip_grad_norm_(weights, self.ctx.params.search.grad_clip)
        self.w_opt.step()
        return metrics

    def arch_update(self, batch: Batch, progress: Progress) -> dict[str, float]:
        """One Adam step of the tutor and width logits on one batch (the weights get no update)."""
        x, y = batch
        with autocast(self.ctx.device):
            loss, metrics = self.search_loss(x, y, train_arch=True)
        params = self.arch_parameters()
        grads = torch.autograd.grad(loss, params)
        self.a_opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        s = self.ctx.params.search  # search.arch_lr_schedule (no warm-up: arch_fraction plays that part)
        factor = arch_lr_factor(s.arch_lr_schedule, progress.epoch, s.epochs)
        for group in self.a_opt.param_groups:
            group["lr"] = group.setdefault("peak_lr", group["lr"]) * factor
        self.a_opt.step()
        return metrics

    def step(self, batch_w: Batch, batch_a: Batch, progress: Progress) -> dict[str, float]:
        """Both batches (one from each half of the split) update the parameters of the step's phase,
        so that an epoch trains on the whole split, 1 − arch_fraction of it for the weights."""
        self.supernet.train()
        phase = step_phase(progress.step, progress.steps_per_epoch, self.cfg.arch_fraction)
        if phase == "both":  # a one-step epoch: the weights on one half, the logits on the other
            metrics = self.weight_update(batch_w, progress)
            self.arch_update(batch_a, progress)
            return metrics
        update = self.weight_update if phase == "weight" else self.arch_update
        parts = [update(batch, progress) for batch in (batch_w, batch_a)]
        return {k: sum(m[k] for m in parts) / len(parts) for k in parts[0]}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        self.w_sched.step()
        with torch.no_grad():
            macs_argmax = float(self.supernet.expected_cost(one_hot_argmax(self.supernet.logits())))
            macs_expected = float(self.supernet.expected_cost(torch.softmax(self.supernet.logits(), -1)))
        return {
            "tau": self.cl.tau,
            "macs_argmax": macs_argmax,
            "macs_expected": macs_expected,
            "width_entropy": alpha_entropy(self.supernet.logits()),
            "tutor_entropy": self.cl.tutor_entropy(),
        }

    def eval_model(self) -> nn.Module:
        return self.supernet  # expected (soft) widths in eval mode

    def architecture(self) -> dict[str, Any]:
        widths = self.supernet.discrete_widths()
        with torch.no_grad():
            macs = float(self.supernet.expected_cost(one_hot_argmax(self.supernet.logits())))
        rep = self.cl.report()
        return {
            "space": "width",
            "widths": widths,
            "tutors": rep["tutors"],
            "student_layers": rep["student_layers"],
            "teacher_layers": rep["teacher_layers"],
            "width_options": [list(o) for o in self.supernet.options],
            "width_probabilities": [
                p[: len(o)]
                for p, o in zip(
                    torch.softmax(self.supernet.logits().detach(), -1).cpu().tolist(), self.supernet.options
                )
            ],
            "macs": int(round(macs)),
            "image_size": self.supernet.image_size,
            "network": self.supernet.final_model_args(widths),
        }

    def decision(self) -> dict[str, Any]:
        return {"widths": self.supernet.discrete_widths()}

    def side_decisions(self) -> dict[str, Any]:
        return {"tutors": self.cl.report()["tutors"]}

    def extra_outputs(self) -> dict[str, Any]:
        return {"tutors.json": self.cl.report()}

    def write_files(self, folder: Path) -> list[Path]:
        return [self.cl.plot(folder, f"RNAS-CL tutor map ({self.ctx.run.name}, width space)")]

    def state_dict(self) -> dict[str, Any]:
        return {**optimizer_state(self), **self.cl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_optimizer_state(self, state)
        self.cl.load_state_dict(state)


class RnasClCellSearch(BilevelMethod):
    """RNAS-CL's distillation added to the DARTS bilevel search of the cell space (extension)."""

    def setup(self, ctx: SearchContext) -> None:
        super().setup(ctx)
        s, cfg = ctx.params.search, ctx.params.search.methods.rnas_cl
        self.cfg = cfg
        self.cl = CrossLayerTerms(self.supernet, _require_teacher(ctx), cfg, ctx.device, ctx.seed)
        # α keeps DARTS' Adam settings; the tutor logits are a second group with RNAS-CL's.
        self.a_opt = torch.optim.Adam(
            [
                {
                    "params": self.supernet.arch_parameters(),
                    "lr": s.arch_lr,
                    "betas": (s.arch_beta1, s.arch_beta2),
                    "weight_decay": s.arch_weight_decay,
                },
                {"params": list(self.cl.tutors.parameters()), "lr": cfg.arch_lr, "weight_decay": cfg.arch_weight_decay},
            ]
        )

    def begin_epoch(self, epoch: int) -> None:
        self.cl.tau = temperature(self.cfg, epoch)

    def weight_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        loss, _ = self.cl.loss(x, y, logits, train_tutors=False)
        return loss, logits

    def arch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(x)
        loss, parts = self.cl.loss(x, y, logits, train_tutors=True)
        # The base step differentiates w.r.t. α only; the tutor logits get their gradient here
        # (the optimizer's zero_grad ran just before this call).
        tutor_params = list(self.cl.tutors.parameters())
        for p, g in zip(tutor_params, torch.autograd.grad(loss, tutor_params, retain_graph=True)):
            p.grad = g
        return loss, {k: parts[k] for k in ("ce", "kl", "attn")}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return {**super().end_epoch(epoch), "tau": self.cl.tau, "tutor_entropy": self.cl.tutor_entropy()}

    def side_decisions(self) -> dict[str, Any]:
        return {"tutors": self.cl.report()["tutors"]}

    def extra_outputs(self) -> dict[str, Any]:
        return {**super().extra_outputs(), "tutors.json": self.cl.report()}

    def write_files(self, folder: Path) -> list[Path]:
        return [self.cl.plot(folder, f"RNAS-CL tutor map ({self.ctx.run.name}, cell space)")]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.cl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.cl.load_state_dict(state)


SPACES: dict[str, type[SearchMethod]] = {"width": RnasClWidthSearch, "cell": RnasClCellSearch}


class RnasClMethod(SearchMethod):
    """The registry entry ``rnas_cl``: picks the width or the cell implementation from the run's space."""

    def setup(self, ctx: SearchContext) -> None:
        super().setup(ctx)
        try:
            self.impl = SPACES[ctx.run.space]()
        except KeyError:
            raise ValueError(f"RNAS-CL has no search for space {ctx.run.space!r}; known: {', '.join(SPACES)}") from None
        self.impl.setup(ctx)

    def begin_epoch(self, epoch: int) -> None:
        self.impl.begin_epoch(epoch)

    def step(self, batch_w: Batch, batch_a: Batch, progress: Progress) -> dict[str, float]:
        return self.impl.step(batch_w, batch_a, progress)

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return self.impl.end_epoch(epoch)

    def architecture(self) -> dict[str, Any]:
        return self.impl.architecture()

    def decision(self) -> Any:
        return self.impl.decision()

    def side_decisions(self) -> dict[str, Any]:
        return self.impl.side_decisions()

    def eval_model(self) -> nn.Module | None:
        return self.impl.eval_model()

    def epoch_snapshot(self) -> Any:
        return self.impl.epoch_snapshot()

    def state_dict(self) -> dict[str, Any]:
        return self.impl.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.impl.load_state_dict(state)

    def extra_outputs(self) -> dict[str, Any]:
        return self.impl.extra_outputs()

    def write_files(self, folder: Path) -> list[Path]:
        return self.impl.write_files(folder)
