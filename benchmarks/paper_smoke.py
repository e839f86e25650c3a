"""``make paper-smoke``: every run of every paper-scale profile, at its real size, one step each (CPU or CUDA).

    python -m benchmarks.paper_smoke                       # configs/{cifar10,cifar100,svhn,mnist}.yaml
    python -m benchmarks.paper_smoke --profiles configs/mnist.yaml --runs darts,random --images 2
    python -m benchmarks.paper_smoke --json smoke.json --cost docs/cost_table.md
    python -m benchmarks.paper_smoke --device cuda --images 64 --json gpu.json --cost-measured hours.md

No dataset is read: each profile's networks are built at the sizes its params give (the teacher,
the cell supernet or the RNAS-CL width supernet with the method's own overrides applied
(:func:`rnas.config.params_for_run`), the final network a run retrains: ``retrain.init_channels`` x
``retrain.layers`` cells, or the width network) and fed ``--images`` random images per batch of the
dataset's shape. For each run it times, through the code the pipeline runs:

* ``search``: one step of the run's method (``method.step`` on a weight and an architecture batch;
  bilevel methods at their first epoch with α moving, LRNAS at its first estimation epoch, RNAS-CL's
  width search with both its weight and its logit update), plus for LRNAS one contribution
  estimate with a single permutation (``estimate``: the profile's 10 cost 10x); none for a budget run
  (``lrnas_<budget>``), which has no search of its own and selects under its budget from ``lrnas``'s;
* ``retrain``: one adversarial training step of the final network (``Trainer.train_step``: the
  profile's augmentation, perturbation and, for distillation runs, RNAS-CL's terms with the tutors
  the search step chose);
* ``evaluate``: one evaluation batch, float32: clean accuracy and PGD-20 at ``evaluate.epsilon``,
  then (``certify``) the certified bound of ``evaluate.certify_method`` on the same batch;

and, once per profile, one step of the teacher's training and its evaluation batch. Training
and search steps run under ``torch.autocast(device, dtype=torch.bfloat16)`` when the profile sets
``pipeline.amp`` (float64 bounds are never cast). Each line prints the step's wall time, the peak
memory during the step (on the CPU the process's resident memory, on CUDA the device memory
PyTorch allocated) and its growth over the memory before the step, and the matmul/conv FLOPs the
step ran (:class:`benchmarks.measure.FlopCount`). With ``--device cuda`` the seconds are the
median of ``--timed`` runs after the counted one (:func:`measured`). Steps are checked for finite losses; any failure is
printed and the command exits 1.

``--cost`` writes the GPU-hour table of docs/cost.md from these FLOPs (:func:`cost_rows`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.measure import FlopCount, peak_rss_mib, reset_peak_rss, rss_mib

PROFILES = ("configs/cifar10.yaml", "configs/cifar100.yaml", "configs/svhn.yaml", "configs/mnist.yaml")
ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Row:
    profile: str
    run: str
    step: str
    network: str
    params: int
    images: int
    seconds: float = float("nan")
    peak_mib: float = float("nan")
    growth_mib: float = float("nan")
    flops: int = 0
    note: str = ""
    ok: bool = True


def measured(
    fn: Callable[[], Any], amp: bool, device: torch.device | None = None, timed: int = 0
) -> tuple[Any, dict[str, float]]:
    """Run ``fn`` once with the FLOP counter: (its result, {seconds, peak_mib, growth_mib, flops}).

    On the CPU the peak is the process's resident memory. On CUDA it is the device memory PyTorch
    allocated during the step, the clock waits for the device, and the counted run (which also pays
    cuDNN's first-call set-up) is followed by ``timed`` runs without the counter whose median is
    the step's seconds (the counter's per-op Python work would dominate a launch-bound step)."""
    device = device or torch.device("cpu")
    cuda = device.type == "cuda"

    def cast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = rss_mib()
        reset_peak_rss()
    counter = FlopCount()
    t0 = time.perf_counter()
    with counter, cast():
        out = fn()
    sync()
    seconds = time.perf_counter() - t0
    times = []
    for _ in range(timed):
        t0 = time.perf_counter()
        with cast():
            out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    if times:
        seconds = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mib()
    return out, {"seconds": seconds, "peak_mib": peak, "growth_mib": max(0.0, peak - base), "flops": counter.total}


def _batch(n: int, info: Any, seed: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random images and labels of the dataset's shape, drawn on the CPU (the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, info.input_channels, info.image_size, info.image_size, generator=g)
    y = torch.randint(0, info.num_classes, (n,), generator=g)
    return (x, y) if device is None else (x.to(device), y.to(device))


def _count(model: torch.nn.Module) -> int:
    from rnas.evaluation.complexity import count_parameters

    return count_parameters(model)


def _finite(value: Any, what: str) -> None:
    values = value.values() if isinstance(value, dict) else [value]
    for v in values:
        v = float(v)
        if not math.isfinite(v):
            raise FloatingPointError(f"{what}: non-finite value {v}")


def eval_batch(model: torch.nn.Module, ev: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The attacks' unit of work on one batch (float32, eval mode): clean accuracy and PGD-20 at ε
    (21 forward-backward passes: the cost sheet's unit of an attack step)."""
    from rnas.evaluation.attacks import pgd_attack

    model.eval()
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    gen = torch.Generator(device=x.device).manual_seed(0)  # the random start is drawn on x's device
    x_adv = pgd_attack(model, x, y, ev.epsilon, ev.pgd_step_size, 20, generator=gen)
    with torch.no_grad():
        robust = float((model(x_adv).argmax(1) == y).float().mean())
    return {"clean": clean, "pgd20": robust}


def certify_batch(model: torch.nn.Module, ev: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """The certified bound of ``evaluate.certify_method`` at ε on one batch (skipped, and said so, for
    networks the bounds do not cover)."""
    from rnas.bounds import UnsupportedModelError
    from rnas.evaluation.certify import certify

    model.eval()
    try:
        res = certify(model, x, y, ev.epsilon, method=ev.certify_method, intermediate=ev.certify_intermediate)
    except UnsupportedModelError as err:
        return {"skipped": str(err).splitlines()[0]}
    return {"certified": float(res.certified.float().mean())}


def first_full_epoch(params: Any, method_name: str) -> int:
    """The first epoch in which the method's whole step runs (α moves; LRNAS estimates)."""
    from rnas.search.base import arch_warmup

    s = params.search
    if method_name == "lrnas":
        return s.methods.lrnas.warmup_epochs
    return arch_warmup(s.arch_warmup_epochs, s.epochs)


class ProfileSmoke:
    """The smoke steps of one params file (see the module docstring)."""

    def __init__(
        self,
        path: str,
        images: int,
        runs: list[str] | None,
        log: Callable[[Row], None],
        device: str = "cpu",
        timed: int = 0,
    ):
        from rnas.config import load_params
        from rnas.data import DATASETS

        self.path, self.images, self.log = path, images, log
        self.params = load_params(ROOT / path if not Path(path).is_absolute() else path)
        info = DATASETS[self.params.data.dataset]
        size = self.params.data.image_size if info.name == "digits" else info.image_size
        self.info = dataclasses.replace(info, image_size=size)
        self.runs = [r for r in self.params.pipeline.runs if runs is None or r in runs]
        self.amp = self.params.pipeline.amp
        self.device = torch.device(device)
        self.timed = timed  # CUDA: timed runs after the counted one (:func:`measured`)
        self.tmp = Path(tempfile.mkdtemp(prefix="paper-smoke-"))
        self.teacher: torch.nn.Module | None = None
        self.rows: list[Row] = []

    def row(
        self,
        run: str,
        step: str,
        network: str,
        params: int,
        fn: Callable[[], Any],
        amp: bool,
        images: int | None = None,
        known: tuple[type, str, str] | None = None,
    ) -> Any:
        """Measure ``fn`` as one line. ``known``: (exception type, text in its message, where it is
        documented) of a known failure: reported as XFAIL, not counted as a failure."""
        r = Row(self.path, run, step, network, params, images or self.images)
        try:
            out, m = measured(fn, amp, self.device, self.timed)
            for k, v in m.items():
                setattr(r, k, v)
            if isinstance(out, dict):
                r.note = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items())
            if known is not None:
                r.note = f"XPASS (a known failure did not happen: {known[2]}) " + r.note
        except Exception as err:  # reported, and the command exits 1 unless it is the known failure
            out = None
            if known is not None and isinstance(err, known[0]) and known[1] in str(err):
                r.note = f"XFAIL, known ({known[2]}): {type(err).__name__}: {str(err).splitlines()[0]}"
            else:
                r.ok, r.note = False, f"FAILED {type(err).__name__}: {err}"
                traceback.print_exc()
        self.rows.append(r)
        self.log(r)
        return out

    # -- teacher -----------------------------------------------------------------------
    def build_teacher(self) -> None:
        from rnas.models import build_model
        from rnas.runtime import place_model
        from rnas.stages.teacher import teacher_model_args

        args = teacher_model_args(self.params, self.info)
        model = build_model(**{k: v for k, v in args.items() if k != "kind"})
        self.teacher = place_model(model, self.device, self.params.pipeline.channels_last)
        name = f"teacher {self.params.teacher.family}"
        self.row(
            "teacher", "train", name, _count(model), lambda: self.train_step(model, self.params.teacher.train), self.amp
        )
        self.evaluate("teacher", name, model)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def train_step(self, model: torch.nn.Module, cfg: Any, extra: Any = None) -> dict[str, float]:
        from rnas.training.trainer import Trainer

        trainer = Trainer(model, cfg, self.device, seed=0, extra_loss=extra, progress=False)
        model.train()
        x, y = _batch(self.images, self.info, 1, self.device)
        loss, _ = trainer.train_step(x, y, torch.Generator().manual_seed(0))
        _finite(loss, "training loss")
        return {"loss": float(loss)}

    def evaluate(self, run: str, network: str, model: torch.nn.Module) -> None:
        """The evaluation batch (float32): the attacks' unit, then the certified bound when the profile
        certifies (``evaluate.certify_method``)."""
        x, y = _batch(self.images, self.info, 2, self.device)
        ev, n_params = self.params.evaluate, _count(model)
        self.row(run, "evaluate", network, n_params, lambda: eval_batch(model, ev, x, y), False)
        if ev.certify_method != "none":
            self.row(run, "certify", network, n_params, lambda: certify_batch(model, ev, x, y), False)

    # -- one run -----------------------------------------------------------------------
    def search(self, run: str) -> Path | None:
        """The run's search step(s); writes its architecture (and tutors) under the temporary folder."""
        from rnas.config import params_for_run, replace
        from rnas.runs import resolve_run
        from rnas.search.base import Progress, SearchContext
        from rnas.search.methods import make_method
        from rnas.space.genotype import write_json_atomic

        spec = resolve_run(run)
        params = params_for_run(self.params, run)
        method = make_method(spec.method)
        ctx = SearchContext(
            params=params,
            run=spec,
            info=self.info,
            device=self.device,
            seed=0,
            steps_per_epoch=1,
            teacher=self.teacher if spec.needs_teacher else None,
        )
        method.setup(ctx)
        net = getattr(method, "supernet", None) or getattr(getattr(method, "impl", None), "supernet", None)
        network = type(net).__name__ if net is not None else "(no network)"
        n_params = _count(net) if net is not None else 0
        if method.uses_search_loop and not spec.select_from:  # a budget run selects from another run's search
            s = params.search
            network += f" C={s.init_channels} L={s.layers} K={s.partial_channels}" if spec.space == "cell" else ""
            epoch = first_full_epoch(params, spec.method)
            if spec.method == "lrnas":  # one permutation of the profile's n (the cost sheet scales it)
                method.cfg = replace(method.cfg, permutations=1)
            xw, yw = _batch(self.images, self.info, 3, self.device)
            xa, ya = _batch(self.images, self.info, 4, self.device)

            def step() -> dict[str, float]:
                method.begin_epoch(epoch)
                metrics = method.step((xw, yw), (xa, ya), Progress(epoch, 0, 1))
                _finite({k: v for k, v in metrics.items() if k in ("weight_loss", "arch_loss", "loss")}, "search")
                keys = ("weight_loss", "arch_loss", "loss", "macs", "margin_bound", "r_cb")  # DSRNA: its bound
                return {k: metrics[k] for k in keys if k in metrics}

            self.row(run, "search", network, n_params, step, self.amp)
            if spec.method == "lrnas":
                self.estimate(run, method, epoch, network, n_params, params)
        folder = self.tmp / run
        arch_path = folder / spec.arch_file
        for name, data in method.extra_outputs().items():
            write_json_atomic(folder / name, data)
        write_json_atomic(arch_path, method.architecture())
        return arch_path

    def estimate(self, run: str, method: Any, epoch: int, network: str, n_params: int, params: Any) -> None:
        """LRNAS' contribution estimate with one permutation (minutes on the CPU: ~200 coalitions of two
        supernet forwards each). Its cost depends only on the supernet and the scored batch, so a run
        whose supernet was estimated before (a budget run, another dataset of the same shape) reuses
        that row instead of running it again."""
        s, lr = params.search, params.search.methods.lrnas
        key = (
            s.init_channels,
            s.layers,
            s.nodes,
            s.partial_channels,
            self.info.input_channels,
            self.info.image_size,
            lr.attack_each_coalition,
            lr.truncation_tolerance,
            self.amp,
        )
        images = min(lr.batch_size, self.images)
        done = ESTIMATED.get(key)
        if done is not None:
            r = dataclasses.replace(
                done,
                profile=self.path,
                run=run,
                note=f"as {Path(done.profile).stem} {done.run} (same cells, channels and batch; not run again)",
            )
            self.rows.append(r)
            self.log(r)
            return

        def estimate() -> dict[str, float]:
            m = method.end_epoch(epoch)
            return {"evaluations": m["shapley_evaluations"]}

        self.row(run, "estimate", network + " (1 permutation)", n_params, estimate, self.amp, images=images)
        if self.rows[-1].ok:
            ESTIMATED[key] = self.rows[-1]

    def retrain_and_evaluate(self, run: str, arch_path: Path) -> None:
        from rnas.distill import FixedTutorDistillation, load_tutors
        from rnas.evaluation.complexity import count_macs
        from rnas.runs import resolve_run
        from rnas.runtime import place_model
        from rnas.stages.retrain import build_final_network

        spec = resolve_run(run)
        model = place_model(
            build_final_network(self.params, spec, arch_path, self.info),
            self.device,
            self.params.pipeline.channels_last,
        )
        n_params = _count(model)
        macs = count_macs(model, (self.info.input_channels, self.info.image_size, self.info.image_size))
        r = self.params.retrain
        network = (
            f"{type(model).__name__} "
            + (f"C={r.init_channels} L={r.layers} " if spec.space == "cell" else "")
            + f"{macs / 1e6:.1f}M MACs"
        )
        extra = None
        if spec.distill:
            d = r.distill
            extra = FixedTutorDistillation(
                model,
                self.teacher,
                load_tutors(arch_path),
                map_size=d.map_size,
                gamma=d.gamma,
                kl_weight=d.kl_weight,
                temperature=d.temperature,
                loss_form=d.loss_form,
            )
        self.row(run, "retrain", network, n_params, lambda: self.train_step(model, r.train, extra), self.amp)
        if extra is not None:
            extra.remove()
        self.evaluate(run, network, model)

    def run_all(self) -> list[Row]:
        from rnas.runs import resolve_run

        self.build_teacher()  # every profile trains and evaluates its teacher; RNAS-CL distils from it
        archs: dict[str, Path | None] = {}
        for run in self.runs:
            spec = resolve_run(run)
            try:
                archs[run] = archs.get(spec.arch_from) if spec.arch_from else self.search(run)
            except Exception as err:
                traceback.print_exc()
                r = Row(
                    self.path, run, "search", "", 0, self.images, ok=False, note=f"FAILED {type(err).__name__}: {err}"
                )
                self.rows.append(r)
                self.log(r)
                archs[run] = None
                continue
            if spec.arch_from and archs[run] is None:
                archs[run] = self.search(spec.arch_from)
            self.retrain_and_evaluate(run, archs[run])
        return self.rows


#: LRNAS estimate rows measured in this process, by supernet and batch (:meth:`ProfileSmoke.estimate`).
ESTIMATED: dict[tuple, Row] = {}


# -- printing ----------------------------------------------------------------------------------

HEADER = "| profile | run | step | network | params | images | s | peak MiB (+growth) | GFLOP | result |"


def markdown_line(r: Row) -> str:
    return (
        f"| {Path(r.profile).stem} | {r.run} | {r.step} | {r.network} | {r.params:,} | {r.images} | "
        f"{r.seconds:.2f} | {r.peak_mib:.0f} (+{r.growth_mib:.0f}) | {r.flops / 1e9:.1f} | {r.note} |"
    )


# -- the cost sheet ----------------------------------------------------------------------------

#: The cost table's achieved throughputs (FLOP/s) on one A100-class GPU: docs/cost.md says where they
#: come from. Supernet searches run thousands of tiny kernels a step (launch-bound), networks do not.
THROUGHPUT = 20e12
SEARCH_THROUGHPUT = 1e12

#: Training-set sizes (the pool before the validation split) of the paper-scale datasets.
TRAIN_POOL = {"cifar10": 50_000, "cifar100": 50_000, "svhn": 73_257, "mnist": 60_000}


#: Forward+backward passes per example of the attack suite, upper bound (an example still robust
#: after every attack): FGSM 1, PGD-20 20, PGD-100 100, APGD-CE + APGD-T 1,000, AutoAttack standard
#: L∞ and L2 (APGD-CE 100, APGD-T 9x100, FAB-T 9x100x2, Square 5000 queries ≈ 1700
#: backward-equivalents) 4,500 each, C&W-L2 binary-search steps x steps, DeepFool steps x classes,
#: the ε sweep's PGD-20s.
def attack_passes(ev: Any, num_classes: int) -> int:
    per = {
        "fgsm": 1,
        "pgd20": 20,
        "pgd100": 100,
        "apgd": 1000,
        "autoattack": 4500,
        "autoattack_l2": 4500,
        "cw": ev.cw_steps * ev.cw_binary_search_steps,
        "deepfool": ev.deepfool_steps * num_classes,
    }
    return sum(per.get(a, 0) for a in ev.attacks) * ev.pgd_restarts + 20 * len(ev.eps_sweep)


def cost_rows(rows: list[Row], value: str = "flops") -> list[dict[str, Any]]:
    """Expected FLOPs per stage and run from the measured steps (docs/cost.md has the formula):

        FLOPs(stage) = FLOPs per example of one step (measured) x examples per step x steps

    with steps = epochs x full batches of the stage's split (search: of one half; the search step
    processes a weight and an architecture batch), plus per-epoch validation (PGD-k on the
    validation split) for training, LRNAS' estimates (permutations x batch x estimation epochs)
    for its search, and the attack suite and certification on ``evaluate.n_examples``.

    ``value="seconds"``: the same formula over each step's measured seconds instead of its FLOPs,
    which gives device-seconds per stage at the rate each step ran (every term is linear in it)."""
    from rnas.config import load_params, params_for_run
    from rnas.runs import resolve_run

    by_key = {(r.profile, r.run, r.step): r for r in rows if r.ok and not math.isnan(r.seconds)}
    out = []
    for profile in dict.fromkeys(r.profile for r in rows):
        params = load_params(ROOT / profile)
        pool = TRAIN_POOL.get(params.data.dataset)
        if pool is None:
            continue
        n_train = pool - int(round(params.data.val_fraction * pool))
        n_val, half = pool - n_train, n_train // 2

        # The loop's values are bound as defaults (each iteration calls its own helpers).
        def train_flops(run: str, cfg: Any, *, profile=profile, n_train=n_train, n_val=n_val) -> float:
            row, val = (
                by_key.get((profile, run, "train" if run == "teacher" else "retrain")),
                by_key.get((profile, run, "evaluate")),
            )
            if row is None:
                return float("nan")
            val_per_example = getattr(val, value) / val.images * (cfg.perturbation.steps + 1) / 21 if val else 0.0
            return cfg.epochs * (n_train * getattr(row, value) / row.images + n_val * val_per_example)

        def evaluate_flops(run: str, *, profile=profile, params=params) -> float:
            """The attack suite (the batch's PGD-20 is 21 passes; the suite attack_passes) and the
            certification (the bound at ε, each ε of the sweep, each bisection step of the radius)."""
            ev = params.evaluate
            row, cert = by_key.get((profile, run, "evaluate")), by_key.get((profile, run, "certify"))
            if row is None:
                return float("nan")
            classes = 100 if params.data.dataset == "cifar100" else 10
            flops = getattr(row, value) / row.images / 21 * attack_passes(ev, classes)
            if cert is not None:
                flops += getattr(cert, value) / cert.images * (1 + len(ev.certify_eps_sweep) + ev.certify_radius_steps)
            return ev.n_examples * flops

        out.append(
            {
                "profile": profile,
                "run": "teacher",
                "space": "",
                "search": 0.0,
                "train": train_flops("teacher", params.teacher.train),
                "evaluate": evaluate_flops("teacher"),
            }
        )
        for run in params.pipeline.runs:
            spec = resolve_run(run)
            s = params_for_run(params, run).search
            search = 0.0
            # no search of its own: ablations (arch_from), LRNAS budget runs (select_from), random
            if spec.arch_from is None and spec.select_from is None and spec.method != "random":
                row = by_key.get((profile, run, "search"))
                search = float("nan")
                if row is not None:
                    search = getattr(row, value) / row.images * s.batch_size * (half // s.batch_size) * s.epochs
                    est = by_key.get((profile, run, "estimate"))
                    if est is not None:
                        lr = s.methods.lrnas
                        search += (
                            getattr(est, value)
                            / est.images
                            * lr.batch_size
                            * lr.permutations
                            * (s.epochs - lr.warmup_epochs)
                        )
            out.append(
                {
                    "profile": profile,
                    "run": run,
                    "space": spec.space,
                    "search": search,
                    "train": train_flops(run, params.retrain.train),
                    "evaluate": evaluate_flops(run),
                }
            )
    return out


def cost_markdown(
    costs: list[dict[str, Any]], throughput: float, search_throughput: float, seeds: dict[str, int]
) -> str:
    """The table of docs/cost.md: PFLOP per stage and the device-hours at the stated achieved throughputs
    (FLOP/s): ``search_throughput`` for the cell-supernet searches (thousands of tiny kernels a step),
    ``throughput`` for everything else (the networks, and the width space's search, whose FLOPs are
    mostly the teacher's forward passes)."""

    def hours(flops: float, t: float) -> float:
        return flops / t / 3600

    def fmt(v: float, scale: float = 1.0, digits: int = 1) -> str:
        return "–" if math.isnan(v) else f"{v / scale:.{digits}f}"

    lines = [
        f"Achieved throughput: cell-supernet searches {search_throughput / 1e12:g} TFLOP/s, everything else "
        f"{throughput / 1e12:g} TFLOP/s (matmul and convolution FLOPs).",
        "",
        "| profile | run | search PFLOP | retrain PFLOP | evaluate PFLOP | search h | retrain h | evaluate h | "
        "seeds | total h |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    totals: dict[str, float] = {}
    for c in costs:
        n = 1 if c["run"] == "teacher" else seeds[c["profile"]]
        t_search = search_throughput if c["space"] == "cell" else throughput
        h = [hours(c["search"], t_search), hours(c["train"], throughput), hours(c["evaluate"], throughput)]
        total = sum(v for v in h if not math.isnan(v)) * n
        totals[c["profile"]] = totals.get(c["profile"], 0.0) + total
        pf = [fmt(c[k], 1e15) for k in ("search", "train", "evaluate")]
        lines.append(
            f"| {Path(c['profile']).stem} | {c['run']} | {' | '.join(pf)} | "
            f"{' | '.join(fmt(v, digits=2) for v in h)} | {n} | {total:.1f} |"
        )
    lines.append("")
    for profile, total in totals.items():
        lines.append(f"- {Path(profile).stem}: {total:.0f} device-hours ({total / 24:.1f} device-days)")
    return "\n".join(lines) + "\n"


def measured_cost_markdown(costs: list[dict[str, Any]], seeds: dict[str, int], where: str) -> str:
    """The device-hours table from measured seconds (:func:`cost_rows` with ``value="seconds"``):
    each stage at the rate its own smoke step ran on ``where``. The steps ran on the smoke's batch,
    smaller than most stages' (retraining 128, evaluation 500), so on a launch-bound GPU these hours
    are upper bounds; a run whose steps were not measured reads "–"."""

    def fmt(v: float) -> str:
        return "–" if math.isnan(v) else f"{v / 3600:.2f}"

    lines = [
        f"Device-hours per stage at the measured step times ({where}); one seed, then all seeds.",
        "",
        "| profile | run | search h | retrain h | evaluate h | seeds | total h |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    totals: dict[str, tuple[float, int]] = {}
    for c in costs:
        n = 1 if c["run"] == "teacher" else seeds[c["profile"]]
        stages = [c["search"], c["train"], c["evaluate"]]
        if any(math.isnan(v) for v in stages):
            total = float("nan")
        else:
            total = sum(stages) * n
            t, k = totals.get(c["profile"], (0.0, 0))
            totals[c["profile"]] = (t + total, k + 1)
        lines.append(
            f"| {Path(c['profile']).stem} | {c['run']} | {' | '.join(fmt(v) for v in stages)} | {n} | {fmt(total)} |"
        )
    lines.append("")
    for profile, (total, k) in totals.items():
        lines.append(f"- {Path(profile).stem}: {total / 3600:.0f} device-hours over the {k} measured rows")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated params files")
    p.add_argument("--runs", default=None, help="comma-separated runs (default: every run of each profile)")
    p.add_argument("--images", type=int, default=2, help="random images per batch (>= 2: batch norm)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the steps run")
    p.add_argument(
        "--timed",
        type=int,
        default=None,
        help="runs timed after the counted one, their median the step's seconds (default: 0 on the CPU, 3 on CUDA)",
    )
    p.add_argument("--json", default=None, help="write every row as JSON here (rewritten after each row)")
    p.add_argument("--cost", default=None, help="write the cost table (docs/cost.md) here")
    p.add_argument("--throughput", type=float, default=THROUGHPUT, help="achieved FLOP/s on the networks (cost table)")
    p.add_argument(
        "--search-throughput",
        type=float,
        default=SEARCH_THROUGHPUT,
        help="achieved FLOP/s on the supernet searches (cost table)",
    )
    p.add_argument(
        "--cost-measured",
        default=None,
        help="write the device-hours table at the measured step times here (for a --device cuda run)",
    )
    p.add_argument("--where", default="", help="the machine the rows ran on, for --cost-measured with --from-json")
    p.add_argument("--from-json", default=None, help="no steps: the cost table from a --json file of an earlier run")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False on this machine")
    timed = args.timed if args.timed is not None else (3 if args.device == "cuda" else 0)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    measures = (
        f"GPU {torch.cuda.get_device_name()}; peak = device memory allocated during the step; s = median of "
        f"{timed} timed runs after the counted one"
        if args.device == "cuda"
        else "CPU; peak = resident memory of this process during the step"
    )
    print(
        f"paper-smoke: {args.images} random images per batch, {args.threads} thread(s), torch "
        f"{torch.__version__}; {measures}",
        flush=True,
    )
    print(HEADER)
    print("| --- " * (HEADER.count("|") - 1) + "|")
    runs = args.runs.split(",") if args.runs else None
    rows: list[Row] = []
    t0 = time.perf_counter()
    if args.from_json:
        rows = [Row(**r) for r in json.loads(Path(args.from_json).read_text())]
    done: list[Row] = []

    def log(r: Row) -> None:
        print(markdown_line(r), flush=True)
        done.append(r)
        if args.json:  # after every row, so an interrupted run leaves what it measured
            Path(args.json).write_text(json.dumps([dataclasses.asdict(d) for d in done], indent=1) + "\n")

    for profile in args.profiles.split(",") if not args.from_json else []:
        rows += ProfileSmoke(profile, args.images, runs, log, args.device, timed).run_all()
    failed = [r for r in rows if not r.ok]
    kind = "device" if args.device == "cuda" else "resident"
    print(
        f"\n{len(rows)} steps in {time.perf_counter() - t0:.0f} s, {len(failed)} failed; "
        f"peak {kind} memory {max((r.peak_mib for r in rows if r.ok), default=0):.0f} MiB"
    )
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1) + "\n")
    if args.cost or args.cost_measured:
        from benchmarks.__main__ import machine
        from rnas.config import load_params

        seeds = {pr: len(load_params(ROOT / pr).pipeline.seeds) for pr in {r.profile for r in rows}}
    if args.cost:
        Path(args.cost).write_text(cost_markdown(cost_rows(rows), args.throughput, args.search_throughput, seeds))
    if args.cost_measured:
        where = args.where or machine(torch.device(args.device), args.threads)
        Path(args.cost_measured).write_text(measured_cost_markdown(cost_rows(rows, "seconds"), seeds, where))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
