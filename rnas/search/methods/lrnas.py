"""LRNAS: lightweight robust NAS by contribution estimation and greedy selection (docs/design.md §5).

Only the abstract of LRNAS is available; the formulas below are this project's reading of it
(docs/methods/lrnas.md says what follows the paper and what is interpretation).

Supernet: the DARTS cell space, PC-DARTS partial channels when ``search.partial_channels > 1``.
α is **not** trained by gradient; the weights are trained by the usual SGD on the weight half
(clean cross-entropy, :meth:`BilevelMethod.weight_step`).

1. Warm-up: ``warmup_epochs`` epochs of weight training only.
2. Every later epoch, after its weight steps: the players are the primitives (cell type, edge,
   op). For each of n random permutations, on one validation batch (the architecture half),
   the primitives are switched off one by one in permutation order (``Supernet.mask_*``), and
   each one's marginal drop in clean accuracy ΔA and in FGSM(ε) accuracy ΔR is recorded
   (:mod:`rnas.search.shapley`). Within a permutation ΔA and ΔR are z-scored over the players;
   the contribution is V̂ = mean over permutations of z(ΔA) + z(ΔR).
3. Update, per cell type as the public LRNAS code (github.com/fyqsama/LRNAS, ``ranking.py``):
   V̂ is z-scored again over each cell type's own primitives (:func:`standardize_per_cell`), then
   V ← (1 − μ)·V + μ·z_cell(V̂),   α ← α + η_t·V, with η_t = η × ``search.arch_lr_schedule``'s
   factor over the estimate epochs (constant: η, the paper; cosine: falling towards 0, as α's
   step in the gradient methods).
4. Greedy selection (:func:`greedy_select`) under the parameter budget λ of the *final*
   network (``retrain.init_channels``, ``retrain.layers``): each edge's best op by α, edges in
   decreasing α, added while its node has fewer than two inputs; once adding a parametric op
   would take the final network over λ, only parameter-free ops are accepted. Nodes left with
   fewer than two inputs get the best parameter-free op of their remaining edges.

Coalitions are scored with the supernet's weights frozen and, by default (``batch_stats``),
BN normalizing with the scored batch's own statistics: the running statistics of a
weight-sharing supernet lag behind its weights and do not match a subnetwork with primitives
switched off (on digits after 3 epochs: 45% clean accuracy with running statistics, 89% with
batch statistics). The running statistics are restored after each estimate. A run ``lrnas_<budget>``
takes λ from its name (RunSpec variant, e.g. "20k"); ``lrnas`` uses the block's ``budget``.

λ acts only in step 4, so the search of a budget run would repeat ``lrnas``'s α step for step.
A budget run therefore does not search: :func:`select_from_search` makes its greedy selection
under its own λ from the α the ``lrnas`` search of the same seed kept after every epoch
(``alphas.json``'s ``per_epoch``, which carries α itself beside softmax(α)), the per-epoch
decisions included, so its architecture and stability are those a search of its own would
report (``tests/test_lrnas.py``), at no search cost of its own.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rnas.config import LrnasMethodConfig, LrnasValue, Params
from rnas.data import DatasetInfo
from rnas.evaluation.attacks import frozen_parameters
from rnas.evaluation.complexity import count_parameters
from rnas.runs import RunSpec, run_budget
from rnas.search.base import (
    Batch,
    BilevelMethod,
    Progress,
    SearchContext,
    Selected,
    SharedSearchError,
    arch_lr_factor,
)
from rnas.search.shapley import lrnas_values, permutation_marginals, zscore
from rnas.space.genotype import Edge, Genotype
from rnas.space.network import CellNetwork
from rnas.space.ops import PRIMITIVES, is_parameter_free, make_op
from rnas.space.plan import reduction_layers
from rnas.space.supernet import Supernet

CELL_TYPES = ("normal", "reduce")


def edge_endpoints(nodes: int) -> list[tuple[int, int]]:
    """Edge index -> (node k, input j) in the supernet's order (node 0's inputs 0, 1; node 1's 0..2; ...)."""
    return [(node, src) for node in range(nodes) for src in range(node + 2)]


def edge_stride(reduction: bool, src: int) -> int:
    """Edges from the two cell inputs of a reduction cell have stride 2."""
    return 2 if reduction and src < 2 else 1


# --------------------------------------------------------------------------------------------
# Parameter count of the final network
# --------------------------------------------------------------------------------------------


class ParameterCost:
    """Exact parameter count of the final :class:`CellNetwork` as a base plus per-edge op costs.

    params(genotype) = base + Σ_{cells c} Σ_{edges (op, j) of c's type} params(op at C_c, stride),
    where base is the network with every edge ``none`` (stem, preprocessing, classifier: it
    only depends on how many nodes each cell concatenates) and C_c the cell's channels
    (``init_channels``, doubled at each reduction cell as in DARTS). Op costs are counted on
    the real modules (``make_op(..., affine=True)``), so the sum equals ``count_parameters``
    of the built network (tests check it on the published DARTS V2 cell).
    """

    def __init__(
        self,
        init_channels: int,
        layers: int,
        num_classes: int,
        input_channels: int = 3,
        dataset: str | None = None,
        nodes: int = 4,
    ):
        self.net_args = {
            "init_channels": init_channels,
            "layers": layers,
            "num_classes": num_classes,
            "input_channels": input_channels,
            "dataset": dataset,
        }
        self.nodes = nodes
        self.cells: list[tuple[bool, int]] = []  # (reduction, C) per cell, in order
        c = init_channels
        reductions = reduction_layers(layers)
        for i in range(layers):
            if i in reductions:
                c *= 2
            self.cells.append((i in reductions, c))
        self._ops: dict[tuple[str, int, int], int] = {}
        self._base: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}

    def op_params(self, op: str, channels: int, stride: int) -> int:
        key = (op, channels, stride)
        if key not in self._ops:
            self._ops[key] = count_parameters(make_op(op, channels, stride, affine=True))
        return self._ops[key]

    def edge_cost(self, reduction: bool, src: int, op: str) -> int:
        """Parameters one genotype edge (op from input ``src``) adds to the final network."""
        stride = edge_stride(reduction, src)
        return sum(self.op_params(op, c, stride) for red, c in self.cells if red == reduction)

    def base(self, normal_concat: tuple[int, ...] | None = None, reduce_concat: tuple[int, ...] | None = None) -> int:
        full = tuple(range(2, self.nodes + 2))
        key = (tuple(normal_concat or full), tuple(reduce_concat or full))
        if key not in self._base:
            empty = tuple(("none", src) for _ in range(self.nodes) for src in (0, 1))
            genotype = Genotype(empty, key[0], empty, key[1])
            self._base[key] = count_parameters(CellNetwork(genotype, **self.net_args))
        return self._base[key]

    def genotype_params(self, genotype: Genotype) -> int:
        total = self.base(genotype.normal_concat, genotype.reduce_concat)
        for reduction, edges in ((False, genotype.normal), (True, genotype.reduce)):
            total += sum(self.edge_cost(reduction, src, op) for op, src in edges)
        return total

    def count_built(self, genotype: Genotype) -> int:
        """The same number counted on the built network (slower; a check)."""
        return count_parameters(CellNetwork(genotype, **self.net_args))


# --------------------------------------------------------------------------------------------
# Greedy selection under the budget
# --------------------------------------------------------------------------------------------


@dataclass
class Selection:
    genotype: Genotype
    params: int  # parameters of the final network (exact)
    budget: int
    over_budget: bool  # the budget stopped a parametric op at some point
    steps: list[dict[str, Any]] = field(default_factory=list)  # the trace, in order


def greedy_select(
    alpha_normal: torch.Tensor,
    alpha_reduce: torch.Tensor,
    cost: ParameterCost,
    budget: int,
    primitives: tuple[str, ...] = PRIMITIVES,
) -> Selection:
    """LRNAS' greedy selection with two inputs per node (see module docstring, step 4).

    ``alpha_*``: (n_edges, n_ops). Ties in α are broken by cell type (normal first), then edge
    index, so the result is deterministic. Never exceeds ``budget`` unless the network with
    only parameter-free ops already does; every node gets exactly two distinct inputs.
    """
    nodes = cost.nodes
    ends = edge_endpoints(nodes)
    alphas = {False: alpha_normal.detach().cpu().double(), True: alpha_reduce.detach().cpu().double()}
    for a in alphas.values():
        if tuple(a.shape) != (len(ends), len(primitives)):
            raise ValueError(f"α has shape {tuple(a.shape)}, expected ({len(ends)}, {len(primitives)})")
    candidates = []
    for reduction in (False, True):
        for e in range(len(ends)):
            o = int(alphas[reduction][e].argmax())
            candidates.append((float(alphas[reduction][e, o]), reduction, e, o))
    candidates.sort(key=lambda t: (-t[0], t[1], t[2]))

    chosen: dict[bool, list[list[Edge]]] = {r: [[] for _ in range(nodes)] for r in (False, True)}
    total = cost.base()
    over = False
    steps: list[dict[str, Any]] = []
    for a, reduction, e, o in candidates:
        node, src = ends[e]
        op = primitives[o]
        step = {"cell": CELL_TYPES[reduction], "node": node, "input": src, "op": op, "alpha": a}
        steps.append(step)
        if len(chosen[reduction][node]) == 2:
            step["result"] = "skipped: node has two inputs"
            continue
        free = is_parameter_free(op, edge_stride(reduction, src))
        added = cost.edge_cost(reduction, src, op)
        if not free and (over or total + added > budget):
            over = True
            step["result"] = "skipped: over budget, only parameter-free ops accepted"
            continue
        chosen[reduction][node].append((op, src))
        total += added
        step.update(result="added", params=total)

    # Nodes the budget left short: the best parameter-free op of their remaining edges.
    for reduction in (False, True):
        a = alphas[reduction]
        for node in range(nodes):
            while len(chosen[reduction][node]) < 2:
                used = {src for _, src in chosen[reduction][node]}
                options = [
                    (float(a[e, o]), e, o)
                    for e, (n, src) in enumerate(ends)
                    if n == node and src not in used
                    for o in range(len(primitives))
                    if is_parameter_free(primitives[o], edge_stride(reduction, src))
                ]
                _, e, o = max(options, key=lambda t: (t[0], -t[1], -t[2]))
                src = ends[e][1]
                chosen[reduction][node].append((primitives[o], src))
                steps.append(
                    {
                        "cell": CELL_TYPES[reduction],
                        "node": node,
                        "input": src,
                        "op": primitives[o],
                        "alpha": float(a[e, o]),
                        "result": "filled: best parameter-free op",
                        "params": total,
                    }
                )

    def cell(reduction: bool) -> tuple[Edge, ...]:
        return tuple(edge for pair in chosen[reduction] for edge in sorted(pair, key=lambda t: t[1]))

    concat = tuple(range(2, nodes + 2))
    genotype = Genotype(cell(False), concat, cell(True), concat)
    return Selection(genotype, cost.genotype_params(genotype), budget, over, steps)


# --------------------------------------------------------------------------------------------
# The coalition value: clean and FGSM accuracy of the supernet with some primitives off
# --------------------------------------------------------------------------------------------


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FGSM (Goodfellow et al. 2015), no random start: x' = clip₀¹(x + ε·sign ∇ₓ CE(f(x), y)).
    Returns (x', clean logits). Gradients are taken w.r.t. the input only."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), x)
    return (x + epsilon * grad.sign()).clamp(0.0, 1.0).detach(), logits.detach()


def set_active(net: Supernet, active: torch.Tensor) -> None:
    """Switch primitives on/off: ``active`` (2·n_edges·n_ops,) bool, normal cell first."""
    masks = active.view(2, *net.mask_normal.shape)
    net.mask_normal.copy_(masks[0])
    net.mask_reduce.copy_(masks[1])


COALITION_VALUES = get_args(LrnasValue)  # search.methods.lrnas.value


def coalition_scores(logits: torch.Tensor, y: torch.Tensor, value: str = "accuracy") -> torch.Tensor:
    """Per example, what a coalition scores: ``accuracy``, 1 if the prediction is ``y`` else 0
    (the paper); ``probability``, the softmax probability of ``y``, whose mean over the batch is
    the expected accuracy of the network's predictive distribution (the same game made smooth: a
    switched-off primitive that moves the logits but flips no prediction of a 16-example batch
    scores 0 under accuracy and its real effect under probability). Returns float64 (B,)."""
    if value == "accuracy":
        return (logits.argmax(1) == y).double()
    if value == "probability":
        return logits.double().softmax(1).gather(1, y[:, None]).squeeze(1)
    raise ValueError(f"unknown LRNAS value {value!r}; known: {', '.join(COALITION_VALUES)}")


class CoalitionValue:
    """v(S) = (clean accuracy, FGSM(ε) accuracy) on one batch of the supernet with exactly the
    primitives in S switched on: the value function of the contribution game. ``value``:
    ``accuracy`` or ``probability`` (:func:`coalition_scores`, the mean over the batch).

    ``attack_each``: FGSM is run against each coalition's network (white-box); otherwise the
    adversarial batch is crafted once against the full supernet. Clean and adversarial
    examples go through separate forwards (BN batch statistics never mix them). Players in ``null`` (the
    ``none`` ops: w·0 = 0, switching them off leaves the forward unchanged) do not change the
    value, so a coalition that differs from the last one only in them reuses its value.
    """

    def __init__(
        self,
        net: Supernet,
        x: torch.Tensor,
        y: torch.Tensor,
        epsilon: float,
        attack_each: bool,
        null: torch.Tensor,
        value: str = "accuracy",
    ):
        self.net, self.x, self.y, self.epsilon, self.attack_each = net, x, y, epsilon, attack_each
        self.null = null
        if value not in COALITION_VALUES:
            raise ValueError(f"unknown LRNAS value {value!r}; known: {', '.join(COALITION_VALUES)}")
        self.value = value
        self.evaluations = 0
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        if not attack_each:
            set_active(net, torch.ones_like(null))
            self.x_adv, _ = fgsm(net, x, y, epsilon)

    def many(self, actives: torch.Tensor) -> torch.Tensor:
        """v of a stack of coalitions (G, n) -> (G, 2), in one forward of the supernet over the
        batch's 2·U copies (clean and adversarial, U the distinct coalitions; BN statistics per
        copy, :meth:`Supernet.coalitions`): the values of U calls, within float round-off.
        Consecutive coalitions that differ only in null players share one copy."""
        keys = actives | self.null
        distinct: list[int] = []  # row of `actives` whose copy scores each row
        owner: list[int] = []
        for r in range(len(keys)):
            previous = keys[r - 1] if r else (self._last[0] if self._last is not None else None)
            if previous is not None and torch.equal(keys[r], previous):
                owner.append(owner[-1] if r else -1)
            else:
                owner.append(len(distinct))
                distinct.append(r)
        values = torch.empty(len(keys), 2, dtype=torch.float64)
        if distinct:
            masks = actives[distinct].to(self.net.mask_normal.dtype)
            u, b = len(distinct), len(self.y)
            y = self.y.repeat(u)
            if self.attack_each:
                with self.net.coalitions(masks):
                    x_adv, clean_logits = fgsm(self.net, self.x.repeat(u, 1, 1, 1), y, self.epsilon)
                with self.net.coalitions(masks), torch.no_grad():
                    adv_logits = self.net(x_adv)
            else:  # clean and adversarial copies in one forward
                both = torch.cat([self.x.repeat(u, 1, 1, 1), self.x_adv.repeat(u, 1, 1, 1)])
                with self.net.coalitions(torch.cat([masks, masks])), torch.no_grad():
                    clean_logits, adv_logits = self.net(both).split(u * b)
            clean = coalition_scores(clean_logits, y, self.value).view(u, b).mean(1)
            adv = coalition_scores(adv_logits, y, self.value).view(u, b).mean(1)
            scored = torch.stack([clean, adv], dim=1).cpu()
            self.evaluations += u
        for r, o in enumerate(owner):
            values[r] = self._last[1] if o == -1 else scored[o]
        last = len(keys) - 1
        self._last = (keys[last], values[last].clone())
        return values

    def __call__(self, active: torch.Tensor) -> torch.Tensor:
        key = active | self.null
        if self._last is not None and torch.equal(key, self._last[0]):
            return self._last[1]
        set_active(self.net, active)
        y = self.y
        if self.attack_each:
            x_adv, clean_logits = fgsm(self.net, self.x, y, self.epsilon)
        else:
            x_adv = self.x_adv
            with torch.no_grad():
                clean_logits = self.net(self.x)
        with torch.no_grad():
            adv_logits = self.net(x_adv)
        value = torch.stack(
            [coalition_scores(clean_logits, y, self.value).mean(), coalition_scores(adv_logits, y, self.value).mean()]
        ).cpu()
        self.evaluations += 1
        self._last = (key, value)
        return value


@contextlib.contextmanager
def scoring(net: nn.Module, batch_stats: bool) -> Iterator[None]:
    """Inside: ``net`` set up to score coalitions, in train mode (BN batch statistics) when
    ``batch_stats`` else eval mode, no parameter requiring a gradient
    (:func:`~rnas.evaluation.attacks.frozen_parameters`: modes, ``requires_grad`` and ``.grad``
    restored on exit), and every buffer (BN running statistics, the masks) restored on exit."""
    buffers = [(b, b.detach().clone()) for b in net.buffers()]
    with frozen_parameters(net):
        try:
            net.train(batch_stats)
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


def standardize_per_cell(v_hat: torch.Tensor) -> torch.Tensor:
    """Each cell type's contributions z-scored over that cell type's own entries (its edges × ops):
    ``v_hat`` (2, ...) with dim 0 the cell type (normal, reduce) -> the same shape. Sample
    standard deviation (n − 1), as the public LRNAS code (``ranking.update_alpha``); a cell type
    whose values are all equal gets 0.

    The z-scores of :func:`rnas.search.shapley.lrnas_values` are taken over the players of both
    cell types together, and the two types act in different numbers of cells (6 normal and 2
    reduction cells in the paper's supernet, 1 and 2 in digits'), so one type's drops, and then
    its values, are smaller by construction. Re-standardized per cell type, each cell's best
    primitive moves up by the same measure, and the greedy selection's single list compares the
    cell types on one scale."""
    return torch.stack([zscore(cell.flatten(), correction=1).view_as(cell) for cell in v_hat])


def momentum_update(
    V: torch.Tensor, v_hat: torch.Tensor, momentum: float, step_size: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """LRNAS' update, ``V`` and ``v_hat`` (2, ...) with dim 0 the cell type:
    V ← (1−μ)·V + μ·z_cell(V̂) (:func:`standardize_per_cell`); returns (new V, the step η·V
    added to α)."""
    V = (1 - momentum) * V + momentum * standardize_per_cell(v_hat)
    return V, step_size * V


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------


class LrnasMethod(BilevelMethod):
    """LRNAS (see module docstring): weight training, Shapley contributions, greedy selection."""

    def setup(self, ctx: SearchContext) -> None:
        super().setup(ctx)
        s = ctx.params.search
        self.cfg: LrnasMethodConfig = s.methods.lrnas
        if self.cfg.warmup_epochs >= s.epochs:
            raise ValueError(
                f"search.methods.lrnas.warmup_epochs ({self.cfg.warmup_epochs}) leaves no epoch of "
                f"contribution estimation (search.epochs is {s.epochs})"
            )
        self.budget = run_budget(self.cfg, ctx.run)
        net = self.supernet
        for p in net.arch_parameters():  # α (and PC-DARTS β) get no gradient in LRNAS
            p.requires_grad_(False)
        n_e, n_ops = net.alpha_normal.shape
        self.n_players = 2 * n_e * n_ops
        self.null = torch.tensor([op == "none" for _ in CELL_TYPES for _ in range(n_e) for op in net.primitives])
        self.V = torch.zeros(2, n_e, n_ops, dtype=torch.float64)  # momentum of the contributions
        self.history: list[dict[str, Any]] = []
        self._batches: list[Batch] = []
        self._selection: Selection | None = None
        self.cost = final_network_cost(ctx.params, ctx.info)

    def begin_epoch(self, epoch: int) -> None:
        self._batches = []

    def step(self, batch_w: Batch, batch_a: Batch, progress: Progress) -> dict[str, float]:
        if progress.epoch >= self.cfg.warmup_epochs and len(self._batches) < self.cfg.permutations:
            xa, ya = batch_a
            b = min(self.cfg.batch_size, ya.shape[0])
            self._batches.append((xa[:b], ya[:b]))
        return self.weight_step(batch_w, progress)

    def end_epoch(self, epoch: int) -> dict[str, float]:
        metrics = super().end_epoch(epoch)
        if epoch >= self.cfg.warmup_epochs:
            metrics.update(self.estimate_contributions(epoch))
        return metrics

    # -- contribution estimation -----------------------------------------------------
    def estimate_contributions(self, epoch: int) -> dict[str, float]:
        """Steps 2 and 3 of the module docstring on this epoch's validation batches."""
        if not self._batches:
            raise RuntimeError(
                "LRNAS: no validation batch this epoch (the architecture half is smaller than search.batch_size)"
            )
        cfg, net = self.cfg, self.supernet
        t0 = time.perf_counter()
        # One permutation stream per (seed, epoch): a resumed search draws the same permutations.
        seed = int(np.random.SeedSequence([self.ctx.seed, epoch]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        marginals, full, evaluations = [], [], 0
        with scoring(net, cfg.batch_stats):
            for j in range(cfg.permutations):
                x, y = self._batches[j % len(self._batches)]  # fewer batches than permutations: reuse
                drops, whole, n_evaluated = self.permutation_drops(x, y, gen)
                marginals.append(drops)
                full.append(whole)
                evaluations += n_evaluated
        m = torch.stack(marginals)  # (n, players, 2): ΔA, ΔR
        v_hat = lrnas_values(m).view_as(self.V)
        # η × search.arch_lr_schedule's factor, as α's step in the gradient methods (cosine: the
        # estimates late in the search move α less, so the selection can settle; constant: the paper)
        s = self.ctx.params.search
        factor = arch_lr_factor(s.arch_lr_schedule, epoch, s.epochs, cfg.warmup_epochs)
        self.V, step = momentum_update(self.V, v_hat, cfg.momentum, cfg.step_size * factor)
        with torch.no_grad():
            net.alpha_normal.add_(step[0].to(net.alpha_normal))
            net.alpha_reduce.add_(step[1].to(net.alpha_reduce))
        self._selection = None
        full_t = torch.stack(full).mean(0)
        self.history.append(
            {
                "epoch": epoch,
                "value": v_hat.flatten().float(),
                "momentum": self.V.flatten().float(),
                "shapley_clean": m[..., 0].mean(0).float(),
                "shapley_robust": m[..., 1].mean(0).float(),
                "full_clean_acc": float(full_t[0]),
                "full_fgsm_acc": float(full_t[1]),
                "evaluations": evaluations,
                "step_factor": factor,
            }
        )
        return {
            "shapley_seconds": time.perf_counter() - t0,
            "shapley_evaluations": float(evaluations),
            "shapley_full_clean_acc": float(full_t[0]),
            "shapley_full_fgsm_acc": float(full_t[1]),
            "shapley_step_factor": factor,
        }

    def permutation_drops(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, value: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One random permutation of the players on the batch (x, y), inside :func:`scoring`:
        (its marginal drops (players, 2), the full supernet's value (2,), coalitions evaluated).
        ``value``: the coalition value (default ``search.methods.lrnas.value``)."""
        cfg = self.cfg
        score = CoalitionValue(
            self.supernet, x, y, cfg.fgsm_epsilon, cfg.attack_each_coalition, self.null, value=value or cfg.value
        )
        whole = score(torch.ones(self.n_players, dtype=torch.bool))  # the first coalition reuses it
        order = torch.randperm(self.n_players, generator=generator)
        drops = permutation_marginals(
            score, order, cfg.truncation_tolerance, many=score.many, chunk=cfg.coalition_batch
        )
        return drops, whole, score.evaluations

    # -- result --------------------------------------------------------------------
    def selection(self) -> Selection:
        if self._selection is None:
            self._selection = greedy_select(
                self.supernet.alpha_normal, self.supernet.alpha_reduce, self.cost, self.budget, self.supernet.primitives
            )
        return self._selection

    def architecture(self) -> dict[str, Any]:
        return self.selection().genotype.to_dict()

    def players(self) -> list[dict[str, Any]]:
        ends = edge_endpoints(self.supernet.nodes)
        return [
            {"cell": kind, "edge": e, "node": node, "input": src, "op": op}
            for kind in CELL_TYPES
            for e, (node, src) in enumerate(ends)
            for op in self.supernet.primitives
        ]

    def contributions(self) -> dict[str, Any]:
        r = self.ctx.params.retrain
        return {
            "method": "lrnas",
            "run": self.ctx.run.name,
            "final_network": {"init_channels": r.init_channels, "layers": r.layers},
            **selection_fields(self.selection(), self.cost),
            "primitives": list(self.supernet.primitives),
            "players": self.players(),
            "epochs": [h["epoch"] for h in self.history],
            "value": [h["value"].tolist() for h in self.history],
            "momentum": [h["momentum"].tolist() for h in self.history],
            "shapley_clean": [h["shapley_clean"].tolist() for h in self.history],
            "shapley_robust": [h["shapley_robust"].tolist() for h in self.history],
            "full_clean_acc": [h["full_clean_acc"] for h in self.history],
            "full_fgsm_acc": [h["full_fgsm_acc"] for h in self.history],
            "evaluations": [h["evaluations"] for h in self.history],
            "alpha": self.alpha(),
        }

    def extra_outputs(self) -> dict[str, Any]:
        return {**super().extra_outputs(), "contributions.json": self.contributions()}

    def alpha(self) -> dict[str, list[list[float]]]:
        """α itself per cell type (the greedy selection ranks it across edges; softmax(α) does not
        keep that order)."""
        net = self.supernet
        return {"normal": net.alpha_normal.detach().cpu().tolist(), "reduce": net.alpha_reduce.detach().cpu().tolist()}

    def epoch_snapshot(self) -> dict[str, Any]:
        """softmax(α), as every cell-space search, and α (``alpha``): a budget run replays each
        epoch's selection from it (:func:`select_from_search`)."""
        return {**super().epoch_snapshot(), "alpha": self.alpha()}

    def write_files(self, folder: Path) -> list[Path]:
        return [draw_contributions(self.contributions(), folder)]

    def select_from(self, folder: Path, params: Params, run: RunSpec, info: DatasetInfo) -> Selected:
        budget = run_budget(params.search.methods.lrnas, run)
        shared = select_from_search(folder, run.name, budget, final_network_cost(params, info))
        return Selected(
            architecture=shared.selection.genotype.to_dict(),
            decision_values=shared.decision_values,
            extra_outputs={"alphas.json": shared.alphas, "contributions.json": shared.contributions},
            source=shared.search,
            draw=lambda out: [draw_contributions(shared.contributions, out)],
        )

    # -- checkpoint ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lrnas_V": self.V, "lrnas_history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.V = state["lrnas_V"]
        self.history = list(state["lrnas_history"])
        self._selection = None


# --------------------------------------------------------------------------------------------
# A budget run: the selection under its own λ from the search of ``lrnas``
# --------------------------------------------------------------------------------------------


def final_network_cost(params: Params, info: DatasetInfo) -> ParameterCost:
    """The parameter count of the final network (``retrain.init_channels``, ``retrain.layers``)."""
    r, nodes = params.retrain, params.search.nodes
    return ParameterCost(r.init_channels, r.layers, info.num_classes, info.input_channels, info.name, nodes)


def selection_fields(sel: Selection, cost: ParameterCost) -> dict[str, Any]:
    """The fields of ``contributions.json`` that depend on λ."""
    return {
        "budget": sel.budget,
        "params": sel.params,
        "params_built": cost.count_built(sel.genotype),
        "over_budget": sel.over_budget,
        "selection": sel.steps,
    }


def draw_contributions(contributions: dict[str, Any], folder: str | Path) -> Path:
    """``contributions.png`` of a ``contributions.json`` (:mod:`rnas.report.contributions`)."""
    from rnas.report.contributions import plot_contributions

    players = contributions["players"]
    return plot_contributions(
        contributions["value"],
        contributions["epochs"],
        [f"{p['node']}←{p['input']} {p['op']}" for p in players],
        [p["cell"] for p in players],
        Path(folder) / "contributions.png",
        title=f"LRNAS contributions ({contributions['run']}, λ = {contributions['budget']:,} params)",
    )


@dataclass
class SharedSelection:
    """A budget run's selection from another run's search (:func:`select_from_search`)."""

    selection: Selection  # under this run's λ, from the search's final α
    decision_values: list[Any]  # per epoch, the architecture the selection gave then (file form)
    contributions: dict[str, Any]  # the search's contributions.json with this run's λ and selection
    alphas: dict[str, Any]  # the search's alphas.json
    search: dict[str, Any]  # the search's search.json


def select_from_search(folder: str | Path, run: str, budget: int, cost: ParameterCost) -> SharedSelection:
    """The greedy selection under ``budget`` from the LRNAS search whose files are in ``folder``
    (``alphas.json``, ``contributions.json``, ``search.json``): after every epoch (from the α
    that epoch left, ``per_epoch[i]["alpha"]``) and at the end. Since λ acts in nothing but this
    selection, every epoch's decision equals that of a search run with this ``budget``.
    :class:`SharedSearchError` when the files are missing or hold no per-epoch α."""
    folder = Path(folder)
    again = (
        f"run that search first (`rnas search --run {folder.parent.name} --seed {folder.name.removeprefix('seed')}`)"
    )
    files = {name: folder / f"{name}.json" for name in ("alphas", "contributions", "search")}
    for path in files.values():
        if not path.is_file():
            raise SharedSearchError(
                f"{run} selects from the LRNAS search in {folder}, which has no {path.name}: {again}"
            )
    alphas, contributions, search = (json.loads(path.read_text()) for path in files.values())
    per_epoch = alphas.get("per_epoch") or []
    if not per_epoch or any("alpha" not in snapshot for snapshot in per_epoch):
        raise SharedSearchError(
            f"{files['alphas']} has no per-epoch α (written by an older version of the LRNAS search): {again}"
        )
    primitives = tuple(alphas["primitives"])

    def select(alpha: dict[str, Any]) -> Selection:
        a = {k: torch.tensor(alpha[k], dtype=torch.float64) for k in CELL_TYPES}
        return greedy_select(a["normal"], a["reduce"], cost, budget, primitives)

    selections = [select(s["alpha"]) for s in per_epoch]  # the last epoch's α is the final one
    # the file form, as the search loop records a decision (tuples become lists)
    decisions = [json.loads(json.dumps(sel.genotype.to_dict())) for sel in selections]
    final = selections[-1]
    contributions = {**contributions, "run": run, **selection_fields(final, cost)}
    return SharedSelection(final, decisions, contributions, alphas, search)
