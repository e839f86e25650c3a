"""The one trainer: teacher training and retraining of every found architecture.

SGD with momentum, cosine/step/constant schedule, gradient clipping, a pluggable training
perturbation (:mod:`rnas.training.perturbations`) and optional extra loss terms (e.g. the
distillation terms of RNAS-CL). After each epoch the model is measured on the *validation*
split (clean and PGD accuracy at the training ε) and the checkpoint to keep is chosen there
(robust overfitting, Rice et al. 2020) — never on the test split.

The full state (model, optimizer, scheduler, best weights, RNG states, epoch) is saved each
epoch through :class:`rnas.checkpoint.ResumeState`, so a killed run resumes bit-exactly.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from rnas.checkpoint import ResumeState, log_resume, log_steps_run
from rnas.config import TrainConfig
from rnas.data import TensorPair, augment_batch, iterate_batches
from rnas.runtime import autocast, capture_rng, log_epoch, restore_rng
from rnas.training.perturbations import get_perturbation, pgd_inner

# extra_loss(model, x_used, y, logits) -> scalar tensor added to the perturbation loss
ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
MetricsLogger = Callable[[dict[str, float], int], None]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, epochs: int, lr_min: float):
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=lr_min)
    if schedule == "step":  # x0.1 at 50% and 75% of training (Madry / Rice et al.)
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(1, epochs // 2), max(1, 3 * epochs // 4)], 0.1)
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _e: 1.0)
    raise ValueError(f"unknown schedule {schedule!r}; known: cosine, step, constant")


@torch.no_grad()
def accuracy(model: nn.Module, pair: TensorPair, batch_size: int, device: torch.device) -> float:
    model.eval()
    correct = 0
    for x, y in iterate_batches(pair, batch_size, shuffle=False):
        correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    return correct / max(1, len(pair))


def robust_accuracy(
    model: nn.Module,
    pair: TensorPair,
    batch_size: int,
    device: torch.device,
    eps: float,
    step: float,
    steps: int,
    seed: int = 0,
) -> float:
    """PGD-k accuracy (random start from a fixed seed) used for checkpoint selection."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for x, y in iterate_batches(pair, batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        x_adv = pgd_inner(model, x, y, eps, step, steps, gen)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == y).sum())
    return correct / max(1, len(pair))


@dataclass
class FitResult:
    best_epoch: int
    best_metric: float
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0  # first epoch this process ran (> 0 after a resume)
    steps_run: int = 0  # optimizer steps this process ran (a resume runs only the remaining epochs)


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"loss is {float(loss)} at epoch {epoch + 1}, step {step}; stopping. The last good checkpoint is kept. "
            "Lower the learning rate or check the inputs."
        )


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        device: torch.device,
        seed: int,
        extra_loss: ExtraLoss | None = None,
        log_metrics: MetricsLogger | None = None,
        resume: ResumeState | None = None,
        progress: bool = True,
        desc: str = "train",
        extra_modules: nn.Module | None = None,
    ):
        self.model = model.to(device)
        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.extra_loss = extra_loss
        self.log_metrics = log_metrics or (lambda metrics, step: None)
        self.resume = resume
        self.progress = progress
        self.desc = desc
        params = list(model.parameters()) + (list(extra_modules.parameters()) if extra_modules is not None else [])
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule, cfg.epochs, cfg.lr_min)
        self.perturb = get_perturbation(cfg.perturbation.kind)

    # -- state ------------------------------------------------------------------------
    def _state(self, epoch: int, gen: torch.Generator, best: dict, history: list) -> dict:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **capture_rng(gen),
            "best": best,
            "history": history,
        }

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, epoch: int = 0, step: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a training batch (on the device): augmentation, the perturbation's
        loss plus the extra terms, gradient clipping. Returns (loss, logits), the loss detached."""
        cfg = self.cfg
        x = augment_batch(x, cfg.augment.crop_padding, cfg.augment.flip, gen)  # training batches only
        with autocast(self.device):  # bf16 when pipeline.amp is on (CUDA, or a CPU with native bf16), else a no-op
            loss, logits, x_used = self.perturb(self.model, x, y, cfg.perturbation, gen)
            if self.extra_loss is not None:
                loss = loss + self.extra_loss(self.model, x_used, y, logits)
        check_finite(loss, epoch, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        return loss.detach(), logits

    def fit(self, train: TensorPair, val: TensorPair) -> FitResult:
        cfg, device = self.cfg, self.device
        gen = torch.Generator().manual_seed(self.seed)
        best = {"epoch": -1, "metric": -math.inf, "state_dict": None}
        history: list[dict[str, float]] = []
        start = 0
        state = self.resume.load() if self.resume is not None else None
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            restore_rng(state, gen)
            best, history, start = state["best"], state["history"], state["epoch"] + 1
            log_resume(self.desc, start, cfg.epochs, self.resume)
            for epoch, metrics in enumerate(history):  # the logger skips (metric, step) pairs it has
                self.log_metrics(metrics, epoch)
        pcfg = cfg.perturbation
        steps_run = 0
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            self.model.train()
            total, correct, loss_sum = 0, 0, 0.0
            batches = iterate_batches(train, cfg.batch_size, shuffle=True, generator=gen, drop_last=False)
            n_batches = math.ceil(len(train) / cfg.batch_size)
            bar = tqdm(
                batches,
                total=n_batches,
                desc=f"{self.desc} {epoch + 1}/{cfg.epochs}",
                disable=not self.progress,
                leave=False,
            )
            for step, (x, y) in enumerate(bar):
                x, y = x.to(device), y.to(device)
                loss, logits = self.train_step(x, y, gen, epoch, step)
                steps_run += 1
                total += len(y)
                correct += int((logits.argmax(1) == y).sum())
                loss_sum += float(loss.detach()) * len(y)
                bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            val_clean = accuracy(self.model, val, 256, device)
            val_robust = robust_accuracy(
                self.model, val, 256, device, pcfg.epsilon, pcfg.step_size, max(1, pcfg.steps), seed=self.seed
            )
            metrics = {
                "train_loss": loss_sum / total,
                "train_acc": correct / total,
                "val_clean_acc": val_clean,
                "val_robust_acc": val_robust,
                "lr": lr,
            }
            history.append(metrics)
            metric = {"val_robust": val_robust, "val_clean": val_clean, "last": float(epoch)}[cfg.select_on]
            if metric > best["metric"]:
                best = {"epoch": epoch, "metric": metric, "state_dict": copy.deepcopy(self.model.state_dict())}
            if self.resume is not None:  # state first, then the log: a resume re-logs what is missing
                self.resume.save(self._state(epoch, gen, best, history))
            self.log_metrics(metrics, epoch)
            log_epoch(self.desc, epoch, cfg.epochs, metrics, time.perf_counter() - t0)
        if best["state_dict"] is not None:
            self.model.load_state_dict(best["state_dict"])
        self.model.eval()
        log_steps_run(self.desc, steps_run, "training", start, cfg.epochs)
        return FitResult(
            best_epoch=best["epoch"],
            best_metric=best["metric"],
            history=history,
            start_epoch=start,
            steps_run=steps_run,
        )
