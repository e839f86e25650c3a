"""The one search loop: epochs of paired (weight-half, architecture-half) batches.

The search's training split is cut 50/50 into a half that trains network weights and a
half that trains architecture parameters (DARTS). Each epoch walks both halves in step,
hands each pair of batches to the method, reports the supernet's validation accuracy,
and checkpoints the method's full state (resumable, see :mod:`rnas.checkpoint`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from rnas.checkpoint import ResumeState, log_resume, log_steps_run
from rnas.config import params_for_run
from rnas.data import Splits, TensorPair, augment_batch, iterate_batches, split_half
from rnas.runtime import capture_rng, log_epoch, restore_rng
from rnas.search.base import Progress, SearchContext, SearchMethod
from rnas.search.stability import decision_digest
from rnas.training.trainer import accuracy

MetricsLogger = Callable[[dict[str, float], int], None]


@dataclass
class SearchResult:
    architecture: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0  # wall clock of the search loop (resumed runs: every process's epochs)
    cpu_seconds: float | None = None  # CPU time of this process's threads in those epochs (None: not known)
    extra_outputs: dict[str, Any] = field(default_factory=dict)
    start_epoch: int = 0  # first epoch this process ran (> 0 after a resume)
    steps_run: int = 0  # method steps this process ran (a resume runs only the remaining epochs)
    decisions: list[str] = field(default_factory=list)  # digest of the derived architecture per epoch
    decision_values: list[Any] = field(default_factory=list)  # the decision itself per epoch (JSON-able)
    side_decisions: dict[str, list[str]] = field(default_factory=dict)  # per name, a digest per epoch
    snapshots: list[Any] = field(default_factory=list)  # the method's epoch_snapshot() per epoch (e.g. softmax α)


def search_halves(splits: Splits, seed: int) -> tuple[TensorPair, TensorPair]:
    return split_half(splits.train, seed)


def run_search(
    method: SearchMethod,
    ctx_kwargs: dict[str, Any],
    splits: Splits,
    *,
    log_metrics: MetricsLogger | None = None,
    resume: ResumeState | None = None,
    progress: bool = True,
    desc: str = "search",
) -> SearchResult:
    """Set the method up and run the search; returns the discrete architecture and curves.

    The method sees ``search`` with its own overrides applied (:func:`rnas.config.params_for_run`)."""
    params = params_for_run(ctx_kwargs["params"], ctx_kwargs["run"].name)
    ctx_kwargs = {**ctx_kwargs, "params": params}
    seed = ctx_kwargs["seed"]
    device = ctx_kwargs["device"]
    s = params.search
    half_w, half_a = search_halves(splits, seed)
    # The epoch walks full batches only (drop_last below), so it has floor(n / batch) steps.
    n_steps = max(1, min(len(half_w), len(half_a)) // s.batch_size)
    ctx = SearchContext(steps_per_epoch=n_steps, **ctx_kwargs)
    method.setup(ctx)
    log_metrics = log_metrics or (lambda m, step: None)
    history: list[dict[str, float]] = []
    decisions: list[str] = []
    decision_values: list[Any] = []
    side_decisions: dict[str, list[str]] = {}
    snapshots: list[Any] = []
    elapsed = 0.0
    cpu: float | None = 0.0
    if not method.uses_search_loop:
        t0, c0 = time.perf_counter(), time.process_time()
        arch = method.architecture()
        return SearchResult(arch, history, time.perf_counter() - t0, time.process_time() - c0, method.extra_outputs())

    gen = torch.Generator().manual_seed(seed)
    start = 0
    state = resume.load() if resume is not None else None
    if state is not None:
        method.load_state_dict(state["method"])
        restore_rng(state, gen)
        history, elapsed, start = state["history"], state["seconds"], state["epoch"] + 1
        cpu = state.get("cpu_seconds")  # absent in older checkpoints: the total is then not known
        decisions = list(state.get("decisions", []))
        decision_values = list(state.get("decision_values", []))  # absent in older checkpoints
        side_decisions = {k: list(v) for k, v in state.get("side_decisions", {}).items()}
        snapshots = list(state.get("snapshots", []))  # absent in older checkpoints
        log_resume(desc, start, s.epochs, resume)
        for epoch, metrics in enumerate(history):  # the logger skips (metric, step) pairs it has
            log_metrics(metrics, epoch)

    steps_run = 0
    for epoch in range(start, s.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        method.begin_epoch(epoch)
        batches = zip(
            iterate_batches(half_w, s.batch_size, shuffle=True, generator=gen, drop_last=True),
            iterate_batches(half_a, s.batch_size, shuffle=True, generator=gen, drop_last=True),
        )
        bar = tqdm(batches, total=n_steps, desc=f"{desc} {epoch + 1}/{s.epochs}", disable=not progress, leave=False)
        sums: dict[str, float] = {}
        count = 0
        aug = s.augment
        for step, ((xw, yw), (xa, ya)) in enumerate(bar):
            batch_w = (augment_batch(xw.to(device), aug.crop_padding, aug.flip, gen), yw.to(device))
            batch_a = (augment_batch(xa.to(device), aug.crop_padding, aug.flip, gen), ya.to(device))
            m = method.step(batch_w, batch_a, Progress(epoch, step, n_steps))
            steps_run += 1
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            bar.set_postfix({k: f"{v / count:.3f}" for k, v in list(sums.items())[:3]})
        metrics = {k: v / max(1, count) for k, v in sums.items()}
        metrics.update(method.end_epoch(epoch))
        decision = json.loads(json.dumps(method.decision(), default=str))  # plain JSON types, as saved
        decisions.append(decision_digest(decision))  # the same digest as of the raw decision
        decision_values.append(decision)
        for name, choice in method.side_decisions().items():
            side_decisions.setdefault(name, []).append(decision_digest(choice))
        snapshot = method.epoch_snapshot()
        if snapshot is not None:
            snapshots.append(snapshot)
        net = method.eval_model()
        if net is not None:
            metrics["val_acc"] = accuracy(net, splits.val, 256, device)
        epoch_seconds = time.perf_counter() - t0
        elapsed += epoch_seconds
        if cpu is not None:
            cpu += time.process_time() - c0
        metrics["seconds"] = elapsed
        history.append(metrics)
        if resume is not None:  # state first, then the log: a resume re-logs what is missing
            resume.save(
                {
                    "epoch": epoch,
                    "method": method.state_dict(),
                    **capture_rng(gen),
                    "history": history,
                    "seconds": elapsed,
                    "cpu_seconds": cpu,
                    "decisions": decisions,
                    "decision_values": decision_values,
                    "side_decisions": side_decisions,
                    "snapshots": snapshots,
                }
            )
        log_metrics(metrics, epoch)
        log_epoch(desc, epoch, s.epochs, metrics, epoch_seconds)
    log_steps_run(desc, steps_run, "search", start, s.epochs)
    return SearchResult(
        method.architecture(),
        history,
        elapsed,
        cpu,
        method.extra_outputs(),
        start_epoch=start,
        steps_run=steps_run,
        decisions=decisions,
        decision_values=decision_values,
        side_decisions=side_decisions,
        snapshots=snapshots,
    )
