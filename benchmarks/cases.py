"""The benchmark cases: each builds one unit of work in a given variant.

A case's ``build(variant, env)`` returns a :class:`Workload` whose ``run()`` does the unit of work
once (a search step, a training step, an evaluation, a bound pass) and returns a scalar result
(a loss, an accuracy) that both variants must agree on up to float rounding — the "same
algorithm" check printed as Δresult. Variants: ``"straightforward"`` (the reference
implementation of the same algorithm: NCHW float32, no reuse, every attack on all examples) and
``"fast"`` (rnas's own code path with the options on: channels-last, the fused supernet
mixed op, the subsampled stride-2 dilated convs, reuse, attacks on still-robust examples, and on
CUDA bf16 autocast). Ablation cases compare one optimization switched off ("before") and on
("after") with everything else equal; the ``ablate_amp*`` rows (float32 -> bf16 autocast, on
CUDA or a CPU with native bf16) are how ``pipeline.amp`` is measured on a CPU, where the fast
path stays float32 as ``pipeline.amp``'s default does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.reference import plain_kernels

HERE = Path(__file__).resolve().parent
VARIANTS = ("straightforward", "fast")
ABLATION_VARIANTS = ("before", "after")

# How far result(fast) may be from result(straightforward) (``Case.tolerance_*``; a row beyond it
# fails ``make bench``), relative to max(1, |result|). Float32 in another summation order or
# kernel: every row outside the search steps measured 0.
ROUNDOFF_REL = 1e-4
# Search steps: the α step is Adam's first, ≈ lr·sign(∇α), so round-off in a near-zero component
# of ∇α flips its update before the weight loss is measured (measured up to 2.5e-5 on a loss of
# ~4.6, 1.3e-4 with --quick's batch 4).
SEARCH_REL = 1e-3
# A variant under bf16 autocast (8 mantissa bits, 3.9e-3 relative per rounding, summed over a
# network). Measured on a CPU with native bf16 (benchmarks/README.md): the search step's loss
# within 3e-4 relative of float32 (digits and paper config).
BF16_REL = 5e-2
# PGD-10 training rows: sign(∇) turns round-off into other adversarial examples, and the loss on
# them differs beyond round-off (measured 0.0027 on ResNet-18's loss, 0.1 on DARTS V2's at batch 8).
PGD_TRAIN_REL = 0.1


@dataclass
class Env:
    """What a case is built for: the device, the size preset and the robust model's file."""

    device: torch.device
    quick: bool = False
    model_file: str | None = None  # state_dict of the PGD-trained digits network (evaluation rows)


@dataclass
class Workload:
    run: Callable[[], float]  # one unit of work; returns a scalar result for the Δ check
    images: int  # examples processed by one run (images/s = images / seconds)
    amp: bool = False  # ran under bf16 autocast (GFLOP/s is then compared to the bf16 ceiling)
    count_flops: bool = True  # False where the counter's per-op Python overhead would dominate the warm-up
    count_run: Callable[[], object] | None = None  # a smaller run whose FLOPs x count_scale are the run's
    count_scale: float = 1.0


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    config: str  # one line: the configuration measured
    build: Callable[[str, Env], Workload]
    variants: tuple[str, str] = VARIANTS
    quick_config: str = ""  # the configuration under --quick, when it differs
    cuda_only: bool = False
    needs_bf16: bool = False  # bf16 autocast rows: CUDA, or a CPU with native bf16; else skipped with the reason
    requires: str = ""  # a module that must import, else the row says unavailable
    heavy: bool = False  # multi-second steps: no warm-up, one timed run (FLOPs from count_run)
    single_run: bool = False  # no repeat: the one (uncounted) run is the timed one (minutes-long rows)
    same_result: bool = True  # False: the two variants compute different things (no Δresult)
    tolerance_rel: float = ROUNDOFF_REL  # |Δresult| allowed, relative to max(1, |result(straightforward)|) ...
    tolerance_examples: int = 0  # ... plus this many examples' worth of an accuracy (k / images)
    # per variant, environment variables of a process-wide option that cannot be switched back in
    # a process (the C heap's policy): each timed sample then runs in a fresh process of its own
    process_env: dict[str, dict[str, str]] | None = None


def allowed_delta(case: Case, base: dict, other: dict) -> float:
    """The largest |result(other) − result(base)| that is still "the same algorithm" for ``case``
    (``base``/``other``: the two variants' measurements, as :func:`benchmarks.measure.measure` returns)."""
    rel = max(case.tolerance_rel, BF16_REL if base.get("amp") or other.get("amp") else 0.0)
    return rel * max(1.0, abs(base["result"])) + case.tolerance_examples / max(1, other["images"])


# -- shared pieces ---------------------------------------------------------------------------


def _digits_params():
    """params.yaml (the default digits profile): the evaluation rows use its settings."""
    from rnas.config import load_params

    return load_params(HERE.parent / "params.yaml")


_P = _digits_params()


def _use_amp(variant: str, env: Env) -> bool:
    return variant in ("fast", "after") and env.device.type == "cuda"


def _configure(variant: str, env: Env, amp: bool | None = None) -> bool:
    """Process-wide options of rnas.runtime for this variant; returns whether autocast is on."""
    from rnas.runtime import configure_acceleration

    on = _use_amp(variant, env) if amp is None else amp
    configure_acceleration(amp=on, compile=False, device=env.device)
    return on


def _data(batch: int, channels: int, size: int, classes: int, seed: int, device: torch.device):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, size, size, generator=gen)
    y = torch.randint(0, classes, (batch,), generator=gen)
    return x.to(device), y.to(device)


def _place(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    from rnas.runtime import place_model

    return place_model(model, device, channels_last)


def darts_v2():
    from rnas.space.genotype import load_genotype

    return load_genotype(HERE / "darts_v2.json")


# -- (a) one supernet search step ------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpec:
    init_channels: int
    layers: int
    batch: int
    size: int
    channels: int
    dataset: str
    partial_channels: int


def _search_workload(
    spec: SearchSpec,
    variant: str,
    env: Env,
    fused: bool | None = None,
    channels_last: bool | None = None,
    amp: bool | None = None,
    compile: bool = False,
    plain: bool | None = None,
    grouped: bool = True,
) -> Workload:
    """One first-order DARTS step (α on an architecture batch, then w on a weight batch) through
    rnas's :class:`~rnas.search.base.BilevelMethod`; the straightforward variant swaps in the
    direct supernet forward of :mod:`benchmarks.reference` in NCHW, with the plain
    ``nn.Conv2d`` / ``nn.AvgPool2d`` kernels (``plain``; default: the straightforward variant).
    ``grouped`` False: the fused supernet runs its edges one by one (``SearchCell.group_edges``)."""
    from benchmarks.reference import NaiveSupernet
    from rnas.search.base import Progress

    fast = variant in ("fast", "after")
    fused = fast if fused is None else fused
    channels_last = fast if channels_last is None else channels_last
    plain = variant == "straightforward" if plain is None else plain
    amp = _configure(variant, env, amp)
    method, info = _bilevel_method(spec, env, channels_last, amp, compile)
    if plain:
        plain_kernels(method.supernet)
    for cell in method.supernet.cells:
        cell.group_edges = grouped
    if not fused:
        method.supernet = NaiveSupernet(method.supernet)
    xw, yw = _data(spec.batch, spec.channels, spec.size, info.num_classes, 1, env.device)
    xa, ya = _data(spec.batch, spec.channels, spec.size, info.num_classes, 2, env.device)

    def run() -> float:
        m = method.step((xw, yw), (xa, ya), Progress(0, 0, 1))
        return m["weight_loss"] + m["arch_loss"]

    def count_run() -> None:  # FLOPs are linear in the batch: count 2 examples, scale
        method.step((xw[:2], yw[:2]), (xa[:2], ya[:2]), Progress(0, 0, 1))

    return Workload(run, images=2 * spec.batch, amp=amp, count_run=count_run, count_scale=spec.batch / 2)


def _bilevel_method(spec: SearchSpec, env: Env, channels_last: bool, amp: bool, compile: bool = False):
    """rnas's :class:`~rnas.search.base.BilevelMethod` (DARTS, first order) set up for ``spec``
    with params.yaml's search defaults otherwise (weights seeded with 0); returns it and the
    dataset facts."""
    from rnas.config import params_from_dict
    from rnas.data import DATASETS
    from rnas.runs import resolve_run
    from rnas.search.base import BilevelMethod, SearchContext

    if compile:
        from rnas.runtime import configure_acceleration

        configure_acceleration(amp=amp, compile=True, device=env.device)
    params = params_from_dict(
        {
            "pipeline": {"device": env.device.type, "channels_last": channels_last, "progress": False},
            "search": {
                "init_channels": spec.init_channels,
                "layers": spec.layers,
                "batch_size": spec.batch,
                "partial_channels": spec.partial_channels,
            },
        }
    )
    info = dataclasses.replace(DATASETS[spec.dataset], image_size=spec.size)
    torch.manual_seed(0)
    method = BilevelMethod()
    method.setup(
        SearchContext(params=params, run=resolve_run("darts"), info=info, device=env.device, seed=0, steps_per_epoch=1)
    )
    return method, info


def _twin_workload(spec: SearchSpec, variant: str, env: Env) -> Workload:
    """One PC-DARTS weight step (forward, CE, backward, clip 5, SGD; no α step) at ``spec``.
    Straightforward: the from-scratch twin of the public PC-DARTS search network
    (:mod:`benchmarks.pcdarts_twin`; NCHW float32, plain ``nn.Conv2d``), given the weights, BN
    statistics, α and β of rnas's supernet built with the same seed, and SGD with rnas's search
    hyper-parameters; fast: rnas's own :meth:`~rnas.search.base.BilevelMethod.weight_step` as
    the pipeline runs it. Both start from the same weights, so their first losses agree up to
    float round-off."""
    from benchmarks import pcdarts_twin
    from rnas.search.base import Progress

    fast = variant == "fast"
    amp = _configure(variant, env)
    method, info = _bilevel_method(spec, env, channels_last=fast, amp=amp)
    xw, yw = _data(spec.batch, spec.channels, spec.size, info.num_classes, 1, env.device)
    if fast:

        def step(x: torch.Tensor, y: torch.Tensor) -> float:
            return method.weight_step((x, y), Progress(0, 0, 1))["weight_loss"]

        inputs = xw
    else:
        net = method.supernet
        twin = pcdarts_twin.PCDartsTwin(
            spec.init_channels, spec.layers, info.num_classes, spec.channels, k=spec.partial_channels
        )
        twin = pcdarts_twin.copy_from_rnas(twin.to(env.device), net)
        s = method.ctx.params.search
        opt = torch.optim.SGD(twin.weights(), lr=s.w_lr, momentum=s.w_momentum, weight_decay=s.w_weight_decay)
        inputs = pcdarts_twin.normalized(net, xw).contiguous()  # the public code normalizes in the data transform
        del method, net

        def step(x: torch.Tensor, y: torch.Tensor) -> float:
            return pcdarts_twin.weight_step(twin, opt, x, y, s.grad_clip)

    return Workload(
        lambda: step(inputs, yw),
        images=spec.batch,
        amp=amp,
        count_run=lambda: step(inputs[:2], yw[:2]),
        count_scale=spec.batch / 2,
    )


PAPER_SEARCH = SearchSpec(16, 8, 64, 32, 3, "cifar10", 1)
PAPER_SEARCH_QUICK = SearchSpec(16, 8, 8, 32, 3, "cifar10", 1)
DIGITS_SEARCH = SearchSpec(
    _P.search.init_channels,
    _P.search.layers,
    _P.search.batch_size,  # params.yaml
    _P.data.image_size,
    1,
    "digits",
    _P.search.partial_channels,
)


def _paper(k: int, quick: bool) -> SearchSpec:
    return dataclasses.replace(PAPER_SEARCH_QUICK if quick else PAPER_SEARCH, partial_channels=k)


# -- (b) PGD-10 adversarial training step ----------------------------------------------------


def _train_workload(
    build_model: Callable[[], nn.Module], batch: int, size: int, channels: int, variant: str, env: Env
) -> Workload:
    """One step of the trainer's inner loop: PGD-10 (ε 8/255, step 2/255, random start) on
    the batch, CE on the adversarial examples, backward, clip 5, SGD."""
    from rnas.config import PerturbationConfig

    fast = variant == "fast"
    amp = _configure(variant, env)
    torch.manual_seed(0)
    model = build_model()
    if not fast:
        plain_kernels(model)
    model = _place(model, env.device, channels_last=fast).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    pcfg = PerturbationConfig(kind="pgd", epsilon=8 / 255, step_size=2 / 255, steps=10)
    x, y = _data(batch, channels, size, 10, 3, env.device)

    def step(xs: torch.Tensor, ys: torch.Tensor) -> float:
        return _adversarial_step(model, opt, pcfg, xs, ys, env.device)

    return Workload(
        lambda: step(x, y), images=batch, amp=amp, count_run=lambda: step(x[:2], y[:2]), count_scale=batch / 2
    )


def _adversarial_step(model: nn.Module, opt, pcfg, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """The trainer's inner loop once: ``pcfg``'s perturbation of the batch (its random start
    from a generator seeded 0), CE on the perturbed batch, backward, clip 5, the optimizer's
    step; returns the loss."""
    from rnas.runtime import autocast
    from rnas.training.perturbations import get_perturbation

    with autocast(device):
        loss, _logits, _x = get_perturbation(pcfg.kind)(model, x, y, pcfg, torch.Generator().manual_seed(0))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return float(loss)


def _resnet18() -> nn.Module:
    from rnas.models import build_model

    return build_model("preact_resnet18", num_classes=10, input_channels=3, dataset="cifar10", width=64)


def _darts_v2_paper() -> nn.Module:
    from rnas.space.network import CellNetwork

    return CellNetwork(darts_v2(), init_channels=36, layers=20, num_classes=10, input_channels=3, dataset="cifar10")


# -- (c), (d): evaluation of the PGD-trained digits network ----------------------------------

EVAL_EPS = _P.evaluate.epsilon  # L∞ radius, pixel units
EVAL_STEP = _P.evaluate.pgd_step_size  # absolute PGD step
EVAL_N, EVAL_N_QUICK = _P.evaluate.n_examples, 32
CERT_N, CERT_N_QUICK = _P.evaluate.certify_batch_size, 32
SQUARE_QUERIES = 500  # AutoAttack's Square budget here (standard: 5000; see README)
AA_N, AA_N_QUICK = min(64, EVAL_N), 16  # AutoAttack on CPU takes minutes: at most 64 examples


def digits_network() -> nn.Module:
    """params.yaml's final network size (retrain.init_channels / layers) with the DARTS V2 cell,
    at params.yaml's digits image size."""
    from rnas.space.network import CellNetwork

    return CellNetwork(
        darts_v2(),
        init_channels=_P.retrain.init_channels,
        layers=_P.retrain.layers,
        num_classes=10,
        input_channels=1,
        dataset="digits",
    )


def _digits_splits():
    from rnas.data import load_splits

    d = _P.data
    return load_splits(
        "digits", seed=0, image_size=d.image_size, val_fraction=d.val_fraction, test_fraction=d.test_fraction
    )


def train_digits_model(path: Path, epochs: int = 2) -> dict[str, float]:
    """Adversarial training with params.yaml's retrain recipe (fewer epochs) of
    :func:`digits_network`, so that the evaluation rows attack a model with a real robust accuracy."""
    from rnas.config import replace
    from rnas.training.trainer import Trainer

    torch.manual_seed(0)
    splits = _digits_splits()
    model = digits_network()
    cfg = replace(_P.retrain.train, epochs=epochs)
    result = Trainer(model, cfg, torch.device("cpu"), seed=0, progress=False).fit(splits.train, splits.val)
    torch.save(model.state_dict(), path)
    return result.history[-1]


def _eval_setup(variant: str, env: Env, n_full: int = EVAL_N, n_quick: int = EVAL_N_QUICK):
    _configure(variant, env, amp=False)  # evaluation stays float32
    fast = variant in ("fast", "after")
    model = digits_network()
    if env.model_file:
        model.load_state_dict(torch.load(env.model_file, weights_only=True))
    if not fast:
        plain_kernels(model)
    model = _place(model, env.device, channels_last=fast).eval()
    splits = _digits_splits()
    n = n_quick if env.quick else n_full
    return model, splits.test.x[:n].to(env.device), splits.test.y[:n].to(env.device)


def _pgd20_workload(variant: str, env: Env) -> Workload:
    """PGD-20 flags (the protocol's pgd20: foolbox LinfPGD, absolute step, random start)."""
    from rnas.evaluation.attacks import get_attack, rng_scope

    model, x, y = _eval_setup(variant, env)

    def run() -> float:
        with rng_scope(0, x.device):
            flags = get_attack("pgd").fn(model, x, y, EVAL_EPS, step_size=EVAL_STEP, steps=20)
        return float(flags.float().mean())

    return Workload(run, images=len(x))


def _depthwise_backward_workload(variant: str, env: Env) -> Workload:
    """Forward + backward (the input's and every weight's gradient) of the four conv ops of the
    digits cells, chained (``sep_conv_3x3``, ``sep_conv_5x5``, ``dil_conv_3x3``, ``dil_conv_5x5``:
    every depthwise kernel shape the retrained networks hold), on params.yaml's retraining maps
    (C = ``retrain.init_channels``, ``data.image_size``², batch ``retrain.train.batch_size``,
    channels-last, train mode). ``before``: autograd's depthwise backward (the limit of
    :func:`rnas.space.ops.same_backward` set to 0 channels while a sample runs); ``after``:
    :class:`rnas.space.ops._DepthwiseSame`'s. The ops alone: inside a whole PGD-3 retraining step
    (the row's first workload) the 2-5% gain was as large as the step's noise, and the row's
    verdict changed between runs."""
    from rnas.space import ops

    _configure(variant, env, amp=False)
    torch.manual_seed(0)
    c, size = _P.retrain.init_channels, _P.data.image_size
    names = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    op = _place(nn.Sequential(*(ops.make_op(n, c, 1, affine=True) for n in names)), env.device, True).train()
    x, _ = _data(8 if env.quick else _P.retrain.train.batch_size, c, size, 10, 7, env.device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    limit = ops.SAME_BACKWARD_MAX_CHANNELS if variant == "after" else 0

    def run() -> float:
        saved, ops.SAME_BACKWARD_MAX_CHANNELS = ops.SAME_BACKWARD_MAX_CHANNELS, limit
        try:
            x.grad = None
            op.zero_grad(set_to_none=True)
            op(x).square().mean().backward()
            return float(x.grad.abs().sum()) + sum(float(p.grad.abs().sum()) for p in op.parameters())
        finally:
            ops.SAME_BACKWARD_MAX_CHANNELS = saved

    return Workload(run, images=len(x))


def _recorded_grouped_pointwise(spec: SearchSpec, env: Env) -> list[tuple[torch.Size, torch.Size, int]]:
    """(input shape, weight shape, groups) of every grouped 1x1 conv (2+ groups) that one
    first-order search step of ``spec`` runs through :func:`rnas.space.ops.grouped_pointwise`
    (the grouped edges' sep/dil convs, :mod:`rnas.space.grouped`), in the order it runs them:
    the step itself, with the call wrapped to note its arguments."""
    from rnas.space import grouped

    calls: list[tuple[torch.Size, torch.Size, int]] = []
    original = grouped.grouped_pointwise

    def noting(x, weight, groups, bias=None, onednn=None):
        if groups > 1:  # one group is one plain product either way
            calls.append((x.shape, weight.shape, groups))
        return original(x, weight, groups, bias, onednn=onednn)

    work = _search_workload(spec, "fast", env)
    grouped.grouped_pointwise = noting
    try:
        work.run()
    finally:
        grouped.grouped_pointwise = original
    return calls


def _grouped_pointwise_workload(variant: str, env: Env) -> Workload:
    """Forward + backward (input and weight gradients) of every grouped 1x1 conv of one PC-DARTS
    K = 4 paper search step (the shapes and groups noted from the step itself,
    :func:`_recorded_grouped_pointwise`), one after the other, channels-last. ``before``: each as
    one product with the block-diagonal matrix of its groups' weights; ``after``: where
    :func:`rnas.space.ops.onednn_grouped_pointwise` says so, oneDNN's grouped convolution. The
    convs alone: inside the whole step (the row's first workload) the 3-6% gain was as large as
    the step's noise, and the verdict changed between runs (session 27)."""
    from rnas.space import ops

    shapes = _recorded_grouped_pointwise(_paper(4, env.quick), env)
    _configure(variant, env, amp=False)
    generator = torch.Generator().manual_seed(0)
    xs = [
        torch.randn(s, generator=generator).to(env.device, memory_format=torch.channels_last).requires_grad_()
        for s, _, _ in shapes
    ]
    ws = [(0.1 * torch.randn(s, generator=generator)).to(env.device).requires_grad_() for _, s, _ in shapes]
    onednn = None if variant == "after" else False

    def run() -> float:
        total = torch.zeros((), device=env.device)
        for x, w, (_, _, groups) in zip(xs, ws, shapes):
            y = ops.grouped_pointwise(x, w, groups, onednn=onednn)
            gx, gw = torch.autograd.grad(y, (x, w), y)
            total += gx.abs().sum() + gw.abs().sum()
        return float(total) / len(shapes)

    return Workload(run, images=len(xs[0]) if xs else 0)


def _closing_bn_workload(variant: str, env: Env) -> Workload:
    """Forward + backward (the input's, α's and every weight's gradient) of one DARTS supernet edge
    (:class:`rnas.space.supernet.MixedOp`: the 8 ops, stride 1, C = 16 on 32x32, batch 16, the
    state's ReLU computed once as the cell does, train mode, channels-last) weighted by
    softmax(α). ``before``: each op's output multiplied by its weight w_o; ``after``: w_o as the
    weight of the op's closing batch norm (:func:`rnas.space.ops.scaled_by_closing_bn`). The edge
    alone: inside the whole DARTS paper step (the row's first workload) the 1.04-1.09x of the
    edges read 0.99x (range 0.96-1.10) in the next run (session 27)."""
    from rnas.space.supernet import MixedOp

    _configure(variant, env, amp=False)
    torch.manual_seed(0)
    c, size = 16, 32
    edge = _place(MixedOp(c, 1), env.device, True).train()
    edge.fold_weights = variant == "after"
    x, _ = _data(4 if env.quick else 16, c, size, 10, 7, env.device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    alpha = (1e-3 * torch.randn(len(edge.ops), generator=torch.Generator().manual_seed(1))).to(env.device)
    alpha.requires_grad_(True)

    def run() -> float:
        x.grad = alpha.grad = None
        edge.zero_grad(set_to_none=True)
        x_relu = torch.relu(x)
        edge(x, torch.softmax(alpha, -1), x_relu=x_relu, shared={}).square().mean().backward()
        grads = [x.grad, alpha.grad] + [p.grad for p in edge.parameters() if p.grad is not None]
        return sum(float(g.abs().sum()) for g in grads)

    return Workload(run, images=len(x))


def _worst_case_workload(variant: str, env: Env) -> Workload:
    """Worst case over PGD-20 and AutoAttack (robust_acc of the two). Straightforward: each
    attack on all examples, flags AND-ed. Fast: AutoAttack only on the examples PGD-20 left
    robust (docs/design.md §6 allows it for the worst case, never for per-attack numbers)."""
    from rnas.evaluation.attacks import autoattack_flags, get_attack, rng_scope

    model, x, y = _eval_setup(variant, env, n_full=AA_N, n_quick=AA_N_QUICK)
    cascade = variant in ("fast", "after")

    def run() -> float:
        with rng_scope(0, x.device):
            robust = get_attack("pgd").fn(model, x, y, EVAL_EPS, step_size=EVAL_STEP, steps=20)
        idx = robust.nonzero().flatten() if cascade else torch.arange(len(x), device=x.device)
        if len(idx):
            aa = autoattack_flags(model, x[idx], y[idx], EVAL_EPS, n_queries=SQUARE_QUERIES, seed=0)
            robust = robust.clone()
            robust[idx] &= aa
        return float(robust.float().mean())

    return Workload(run, images=len(x), count_flops=False)


def _bounds_workload(variant: str, env: Env, eps: float = EVAL_EPS, dtype: torch.dtype | None = None) -> Workload:
    """Certified margin bounds (IBP and CROWN-IBP, per specification the tighter) of the
    evaluation examples at ``eps``, propagated in ``dtype`` (None: the model's). Straightforward:
    one bound method per pass (the graph and the point + interval pass rebuilt for each). Fast:
    both from one graph and one shared IBP pass. ``ablate_malloc`` times the fast one as the
    certified-radius search runs it below ``evaluate.certify_float64_below``: float64 at ε 1e-7,
    the radii of the digits networks (docs/methods/dsrna.md)."""
    from rnas.bounds import spec_bounds

    model, x, y = _eval_setup(variant, env, n_full=CERT_N, n_quick=CERT_N_QUICK)
    shared = variant in ("fast", "after")

    def run() -> float:
        with torch.no_grad():
            if shared:
                lower = spec_bounds(model, x, y, eps, "linf", ("ibp", "crown"), dtype=dtype).best()
            else:
                ibp = spec_bounds(model, x, y, eps, "linf", ("ibp",), dtype=dtype).lower["ibp"]
                crown = spec_bounds(model, x, y, eps, "linf", ("crown",), dtype=dtype).lower["crown"]
                lower = torch.maximum(ibp, crown)
        return float((lower.min(dim=1).values > 0).float().mean())

    return Workload(run, images=len(x))


def _taps64_workload(variant: str, env: Env) -> Workload:
    """The certified radius's float64 bound pass (IBP + CROWN-IBP at ε 1e-7, as ``ablate_malloc``)
    with the depthwise convs as aten's grouped conv ("before") or as one multiply-add per kernel
    tap (``rnas.bounds.graph.depthwise_taps``, "after")."""
    from rnas.bounds import graph

    inner = _bounds_workload("fast", env, eps=1e-7, dtype=torch.float64)
    if variant == "after":
        return inner

    def run() -> float:
        keep = graph.float64_depthwise
        graph.float64_depthwise = lambda *a: False  # aten's conv for every depthwise pass
        try:
            return inner.run()
        finally:
            graph.float64_depthwise = keep

    return Workload(run, images=inner.images)


# -- ablations: one optimization off / on ----------------------------------------------------


def _op_workload(
    op: nn.Module, variant: str, env: Env, batch: int, channels: int, size: int, data_seed: int, train: bool = True
) -> Workload:
    """Forward + backward of one op on a channels-last batch; the "before" variant gets the plain
    ``nn.Conv2d`` / ``nn.AvgPool2d`` kernels back (:func:`plain_kernels`)."""
    if variant == "before":
        plain_kernels(op)
    op = _place(op, env.device, True).train(train)
    x, _ = _data(batch, channels, size, 10, data_seed, env.device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)

    def run() -> float:
        x.grad = None
        op(x).square().mean().backward()
        return float(x.grad.abs().sum())

    return Workload(run, images=batch)


def _dilconv_workload(stride: int, kernel: int, variant: str, env: Env, quick: bool) -> Workload:
    """Forward + backward of one ``dil_conv`` (ReLU, depthwise dilation-2 conv, 1x1 conv, BN)
    at the paper supernet's first reduction cell: C=32, 32x32 input, batch 64, channels-last."""
    from rnas.space.ops import DilConv

    _configure(variant, env, amp=False)
    torch.manual_seed(0)
    op = DilConv(32, 32, kernel, stride, 2 * (kernel - 1) // 2, 2, affine=False)
    return _op_workload(op, variant, env, 16 if quick else 64, 32, 32, data_seed=4)


def _small_map_workload(
    op_name: str, channels: int, size: int, variant: str, env: Env, quick: bool, batch: int = 100
) -> Workload:
    """Forward + backward of one op at the map sizes of the digits networks (8x8 down to 2x2),
    batch 100 (the evaluation's examples; ``batch``), channels-last: where oneDNN's ~50 µs
    per-call cost, not arithmetic, sets the time."""
    from rnas.space.ops import PointwiseConv2d, make_op

    _configure(variant, env, amp=False)
    torch.manual_seed(0)
    if op_name == "conv_1x1":
        op = nn.Sequential(nn.ReLU(), PointwiseConv2d(channels, channels, 1, bias=False))
    else:
        op = make_op(op_name, channels, 1, affine=True)
    return _op_workload(op, variant, env, 20 if quick else batch, channels, size, data_seed=6, train=False)


def _avgpool_workload(variant: str, env: Env, quick: bool) -> Workload:
    """Forward + backward of the ``avg_pool_3x3`` op (+ its BN) on the paper supernet's first
    cells' edges: C=16, 32x32, batch 64, channels-last."""
    from rnas.space.ops import make_op

    _configure(variant, env, amp=False)
    op = nn.Sequential(make_op("avg_pool_3x3", 16, 1, affine=False), nn.BatchNorm2d(16, affine=False))
    return _op_workload(op, variant, env, 16 if quick else 64, 16, 32, data_seed=5)


def _batch_norm_workload(variant: str, env: Env, quick: bool) -> Workload:
    """Forward + backward of a train-mode batch norm (op weight as its weight, as the supernet's
    closing BNs) on the PC-DARTS K=4 paper supernet's first cells' edges: C=16/4 = 4 channels,
    32x32, batch 64, channels-last; before: ``F.batch_norm``, after: ``rnas.space.ops.batch_norm``
    (an NCHW copy where :func:`rnas.space.ops.nchw_batch_norm` says so)."""
    from rnas.space.ops import batch_norm

    _configure(variant, env, amp=False)
    fn = batch_norm if variant == "after" else nn.functional.batch_norm
    x, _ = _data(16 if quick else 64, 4, 32, 10, 7, env.device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    weight = torch.full((4,), 0.3, device=env.device, requires_grad=True)
    running_mean, running_var = torch.zeros(4, device=env.device), torch.ones(4, device=env.device)
    # a fixed projection, not the squared output: mean(BN(x)²) is w² up to eps, its x-gradient ~0
    g = _data(len(x), 4, 32, 10, 8, env.device)[0].contiguous(memory_format=torch.channels_last) - 0.5

    def run() -> float:
        x.grad = weight.grad = None
        (fn(x, running_mean, running_var, weight, None, True, 0.1, 1e-5) * g).mean().backward()
        return float(x.grad.abs().sum())

    return Workload(run, images=len(x))


def _amp_or_compile_workload(option: str, variant: str, env: Env, spec: SearchSpec | None = None) -> Workload:
    """A search step (default: the paper PC-DARTS one) with bf16 autocast (``pipeline.amp``; CUDA
    or a CPU with native bf16) / torch.compile (CUDA) off and on, everything else as in the fast
    path (channels-last; compile is measured with amp off)."""
    on = variant == "after"
    spec = _paper(4, env.quick) if spec is None else spec
    if option == "amp":
        return _search_workload(spec, "fast", env, amp=on)
    return _search_workload(spec, "fast", env, amp=False, compile=on)


def _search_case(
    name: str, group: str, spec_of: Callable[[bool], SearchSpec], config: str, quick: str, heavy: bool = False, **kw
) -> Case:
    return Case(
        name,
        group,
        config,
        lambda v, e: _search_workload(spec_of(e.quick), v, e, **kw),
        quick_config=quick,
        heavy=heavy,
        tolerance_rel=SEARCH_REL,
    )


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        _search_case(
            "search_darts_paper",
            "a",
            lambda q: _paper(1, q),
            "DARTS supernet C=16, 8 cells, batch 64+64, 32x32x3, first-order step",
            "DARTS supernet C=16, 8 cells, batch 8+8, 32x32x3",
            heavy=True,
        ),
        _search_case(
            "search_pcdarts_paper",
            "a",
            lambda q: _paper(4, q),
            "PC-DARTS K=4 supernet C=16, 8 cells, batch 64+64, 32x32x3, first-order step",
            "PC-DARTS K=4 supernet C=16, 8 cells, batch 8+8, 32x32x3",
            heavy=True,
        ),
        Case(
            "search_pcdarts_public_twin",
            "a",
            "PC-DARTS K=4 supernet C=16, 8 cells, batch 64, 32x32x3, one weight step (forward, CE, backward, "
            "clip 5, SGD); straightforward: from-scratch twin of the public PC-DARTS model_search.py "
            "(NCHW float32, plain nn.Conv2d); fast: rnas's BilevelMethod.weight_step",
            lambda v, e: _twin_workload(_paper(4, e.quick), v, e),
            quick_config="PC-DARTS K=4 supernet C=16, 8 cells, batch 8, 32x32x3, one weight step",
            heavy=True,
        ),
        _search_case(
            "search_digits_default",
            "a",
            lambda q: DIGITS_SEARCH,
            f"params.yaml search: C={DIGITS_SEARCH.init_channels}, {DIGITS_SEARCH.layers} cells, batch "
            f"{DIGITS_SEARCH.batch}+{DIGITS_SEARCH.batch}, {DIGITS_SEARCH.size}x{DIGITS_SEARCH.size}x1 digits, "
            f"K={DIGITS_SEARCH.partial_channels}",
            "",
        ),
        Case(
            "pgd10_resnet18",
            "b",
            "PreAct ResNet-18 (width 64), batch 32, 32x32x3, PGD-10 AT step",
            lambda v, e: _train_workload(_resnet18, 8 if e.quick else 32, 32, 3, v, e),
            quick_config="PreAct ResNet-18, batch 8",
            heavy=True,
            tolerance_rel=PGD_TRAIN_REL,
        ),
        Case(
            "pgd10_darts_v2",
            "b",
            "DARTS V2 network C=36, 20 cells, batch 8, 32x32x3, PGD-10 AT step",
            lambda v, e: _train_workload(_darts_v2_paper, 4 if e.quick else 8, 32, 3, v, e),
            quick_config="DARTS V2 C=36, 20 cells, batch 4",
            heavy=True,
            tolerance_rel=PGD_TRAIN_REL,
        ),
        Case(
            "eval_pgd20",
            "c",
            f"PGD-20 flags, params.yaml's digits evaluation (DARTS V2 cell, "
            f"C={_P.retrain.init_channels}, {_P.retrain.layers} cells), n={EVAL_N}, eps {EVAL_EPS}",
            _pgd20_workload,
            quick_config=f"n={EVAL_N_QUICK}",
            tolerance_examples=2,
        ),
        Case(
            "eval_pgd20_autoattack",
            "c",
            f"worst case PGD-20 + AutoAttack (Square {SQUARE_QUERIES} queries), n={AA_N}, eps {EVAL_EPS}",
            _worst_case_workload,
            quick_config=f"n={AA_N_QUICK}",
            single_run=True,
            tolerance_examples=2,
        ),
        Case(
            "certify_ibp_crown",
            "d",
            f"IBP + CROWN-IBP margin bounds, digits DARTS V2 net, n={CERT_N}, eps {EVAL_EPS}",
            _bounds_workload,
            quick_config=f"n={CERT_N_QUICK}",
            requires="rnas.bounds",
            tolerance_examples=1,
        ),
        # ablations
        Case(
            "ablate_channels_last",
            "ablation",
            "channels_last: straightforward supernet step NCHW -> NHWC (paper C=16, 8 cells, batch 16+16)",
            lambda v, e: _search_workload(
                dataclasses.replace(_paper(1, True), batch=4 if e.quick else 16),
                v,
                e,
                fused=False,
                channels_last=(v == "after"),
                plain=True,
            ),
            variants=ABLATION_VARIANTS,
            heavy=True,
            tolerance_rel=SEARCH_REL,
        ),
        Case(
            "ablate_fused_mixed_op",
            "ablation",
            "fused mixed op (shared ReLU, no `none` op, in-place addcmul, "
            "subsampled stride-2 dil convs), NHWC (paper C=16, 8 cells, batch 16+16)",
            lambda v, e: _search_workload(
                dataclasses.replace(_paper(1, True), batch=4 if e.quick else 16),
                v,
                e,
                fused=(v == "after"),
                channels_last=True,
                plain=False,
            ),
            variants=ABLATION_VARIANTS,
            heavy=True,
            tolerance_rel=SEARCH_REL,
        ),
        Case(
            "ablate_partial_channels",
            "ablation",
            "PC-DARTS partial channels K=1 -> K=4, fast path (paper C=16, 8 cells, batch 16+16)",
            lambda v, e: _search_workload(
                dataclasses.replace(_paper(1 if v == "before" else 4, True), batch=4 if e.quick else 16), "fast", e
            ),
            variants=ABLATION_VARIANTS,
            heavy=True,
            same_result=False,
        ),
        Case(
            "ablate_grouped_edges",
            "ablation",
            "out-edges of a state one by one -> together (rnas.space.grouped), fast path "
            "(PC-DARTS K=4 paper search step: C=16, 8 cells, batch 64+64, 32x32x3, first-order)",
            lambda v, e: _search_workload(_paper(4, e.quick), "fast", e, grouped=(v == "after")),
            quick_config="PC-DARTS K=4 paper search step, batch 8+8",
            variants=ABLATION_VARIANTS,
            heavy=True,
            tolerance_rel=SEARCH_REL,
        ),
        Case(
            "ablate_grouped_pointwise",
            "ablation",
            "grouped edges' 1x1 convs: one product with the block-diagonal weights -> oneDNN's grouped "
            "conv where rnas.space.ops.onednn_grouped_pointwise says so (every grouped 1x1 conv of one "
            "PC-DARTS K=4 paper search step, C=16, 8 cells, batch 64+64, 32x32x3, its shapes as the step "
            "runs them; fwd+bwd)",
            _grouped_pointwise_workload,
            quick_config="the grouped 1x1 convs of a PC-DARTS K=4 paper search step at batch 8+8",
            variants=ABLATION_VARIANTS,
        ),
        Case(
            "ablate_op_weight_in_bn",
            "ablation",
            "w·BN(z) as a product -> as BN with weight w (rnas.space.ops.scaled_by_closing_bn): one DARTS "
            "supernet edge, its 8 ops weighted by softmax(α) (C=16, 32x32, batch 16, stride 1, "
            "channels-last, fwd+bwd with α's gradient)",
            _closing_bn_workload,
            quick_config="batch 4",
            variants=ABLATION_VARIANTS,
        ),
        Case(
            "ablate_grouped_edges_digits",
            "ablation",
            "out-edges of a state one by one -> together, fast path (params.yaml search step: "
            f"C={DIGITS_SEARCH.init_channels}, {DIGITS_SEARCH.layers} cells, "
            f"batch {DIGITS_SEARCH.batch}+{DIGITS_SEARCH.batch}, "
            f"{DIGITS_SEARCH.size}x{DIGITS_SEARCH.size}x1 digits, K={DIGITS_SEARCH.partial_channels})",
            lambda v, e: _search_workload(DIGITS_SEARCH, "fast", e, grouped=(v == "after")),
            variants=ABLATION_VARIANTS,
            tolerance_rel=SEARCH_REL,
        ),
        Case(
            "ablate_dilconv_s2_3x3",
            "ablation",
            "dil_conv_3x3 stride 2: dilated kernel -> subsampled conv (C=32, 32x32, batch 64, fwd+bwd)",
            lambda v, e: _dilconv_workload(2, 3, v, e, e.quick),
            variants=ABLATION_VARIANTS,
        ),
        Case(
            "ablate_dilconv_s2_5x5",
            "ablation",
            "dil_conv_5x5 stride 2: dilated kernel -> subsampled conv (C=32, 32x32, batch 64, fwd+bwd)",
            lambda v, e: _dilconv_workload(2, 5, v, e, e.quick),
            variants=ABLATION_VARIANTS,
        ),
        Case(
            "ablate_pointwise",
            "ablation",
            "1x1 conv (+ReLU): oneDNN conv -> one matmul (C=8, 8x8 digits map, batch 64: 4096 rows, where "
            "rnas.space.ops.onednn_pointwise keeps the matmul; fwd+bwd)",
            lambda v, e: _small_map_workload("conv_1x1", 8, 8, v, e, e.quick, batch=64),
            variants=ABLATION_VARIANTS,
        ),
        Case(
            "ablate_dilconv_crop",
            "ablation",
            "dil_conv_5x5 stride 1 on a 2x2 map: full kernel -> the taps that reach the map (C=32, batch 100, fwd+bwd)",
            lambda v, e: _small_map_workload("dil_conv_5x5", 32, 2, v, e, e.quick),
            variants=ABLATION_VARIANTS,
        ),
        Case(
            "ablate_depthwise_backward",
            "ablation",
            "depthwise conv backward: autograd's kernels -> the flipped-kernel conv and 3x3 weight gradients "
            "(rnas.space.ops._DepthwiseSame): sep_conv_3x3/5x5 and dil_conv_3x3/5x5 chained, params.yaml's "
            f"retraining maps (C={_P.retrain.init_channels}, {_P.data.image_size}x{_P.data.image_size}, batch "
            f"{_P.retrain.train.batch_size}, fwd+bwd, every gradient)",
            _depthwise_backward_workload,
            quick_config="batch 8",
            variants=ABLATION_VARIANTS,
        ),
        Case(
            "ablate_avgpool",
            "ablation",
            "avg_pool_3x3 (+BN): pooling kernel -> ones-kernel depthwise conv / "
            "window count (C=16, 32x32, batch 64, fwd+bwd)",
            lambda v, e: _avgpool_workload(v, e, e.quick),
            variants=ABLATION_VARIANTS,
        ),
        Case(
            "ablate_nchw_batch_norm",
            "ablation",
            "train-mode batch norm of a channels-last map with 4 channels: torch's channels-last kernel -> "
            "an NCHW copy (rnas.space.ops.batch_norm; PC-DARTS K=4 paper edges: 32x32, batch 64, fwd+bwd)",
            lambda v, e: _batch_norm_workload(v, e, e.quick),
            variants=ABLATION_VARIANTS,
        ),
        Case(
            "ablate_malloc",
            "ablation",
            "the C heap: glibc's dynamic mmap/trim thresholds -> fixed (rnas.runtime.configure_allocator, "
            "RNAS_MALLOC glibc -> reuse), each sample a fresh process (a certified-radius bound pass: "
            f"IBP + CROWN-IBP in float64 at eps 1e-7, digits DARTS V2 net, n={CERT_N})",
            lambda v, e: _bounds_workload("fast", e, eps=1e-7, dtype=torch.float64),
            quick_config=f"n={CERT_N_QUICK}",
            variants=ABLATION_VARIANTS,
            process_env={"before": {"RNAS_MALLOC": "glibc"}, "after": {"RNAS_MALLOC": "reuse"}},
        ),
        Case(
            "ablate_depthwise_taps64",
            "ablation",
            "float64 depthwise convs of the bound graph: aten's grouped conv -> one multiply-add per kernel tap "
            f"(a certified-radius bound pass: IBP + CROWN-IBP in float64 at eps 1e-7, digits DARTS V2 net, n={CERT_N})",
            _taps64_workload,
            quick_config=f"n={CERT_N_QUICK}",
            variants=ABLATION_VARIANTS,
            tolerance_examples=1,
        ),
        Case(
            "ablate_amp",
            "ablation",
            "pipeline.amp: float32 -> bf16 autocast, fast path (PC-DARTS K=4 paper search step: C=16, 8 cells, "
            "batch 64+64, 32x32x3, first-order)",
            lambda v, e: _amp_or_compile_workload("amp", v, e),
            quick_config="PC-DARTS K=4 paper search step, batch 8+8",
            variants=ABLATION_VARIANTS,
            needs_bf16=True,
            heavy=True,
            tolerance_rel=SEARCH_REL,
        ),
        Case(
            "ablate_amp_digits",
            "ablation",
            "pipeline.amp: float32 -> bf16 autocast, fast path (params.yaml search step: "
            f"C={DIGITS_SEARCH.init_channels}, {DIGITS_SEARCH.layers} cells, "
            f"batch {DIGITS_SEARCH.batch}+{DIGITS_SEARCH.batch}, "
            f"{DIGITS_SEARCH.size}x{DIGITS_SEARCH.size}x1 digits, K={DIGITS_SEARCH.partial_channels})",
            lambda v, e: _amp_or_compile_workload("amp", v, e, DIGITS_SEARCH),
            variants=ABLATION_VARIANTS,
            needs_bf16=True,
            tolerance_rel=SEARCH_REL,
        ),
        Case(
            "ablate_compile",
            "ablation",
            "torch.compile off -> on (PC-DARTS paper search step)",
            lambda v, e: _amp_or_compile_workload("compile", v, e),
            variants=ABLATION_VARIANTS,
            cuda_only=True,
            tolerance_rel=SEARCH_REL,
        ),
    )
}
