"""Measure one case in this (fresh) process and print one JSON line (``RESULT {...}``).

    python -m benchmarks.measure --case search_darts_paper --interleave --pairs 3 --long
    python -m benchmarks.measure --case search_darts_paper --variant fast     # one variant alone

``--interleave`` (:func:`interleave`, what ``python -m benchmarks`` runs per case): both variants
are built in this process and timed in alternation, pair after pair, the order flipping every
pair (A B, B A, A B, ...), so that both see the same machine: a busy moment of another process
lands on one pair, not on one variant. Each variant's untimed first run gives its result and its
peak memory (see :func:`interleave` for why that peak is its own). Short runs are repeated
within a timed sample until it lasts ~0.2 s (``--target``); a sample's time is seconds per run.
Multi-second runs (``--long``) are timed one per sample. Process-wide options a build sets
(rnas.runtime's autocast and compile flags) are restored before every run of its variant.

Peak memory is the growth over the process's memory once the models, data and optimizers are
built: on CPU the peak resident set size (VmHWM, reset just before the run), on CUDA
``torch.cuda.max_memory_allocated``.

``--variant`` (:func:`measure`): one variant alone in a fresh process (how issue 9's harness
measured every row), a cross-check of the interleaved run's peak memory.

:class:`FlopCount` counts the FLOPs of the matmuls and convolutions (forward and backward, a
multiply-add = 2 FLOPs) with the formulas of ``torch.utils.flop_counter``: on the workload's
``count_run`` (a 2-example batch, scaled) when it has one, else on the first run. Times are
wall clock (on CUDA with synchronization).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from rnas.runtime import configure_allocator


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0), so that the peak
    read afterwards belongs to the runs, not to imports or model building."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak is the process's lifetime peak (an upper bound)


def peak_rss_mib() -> float:
    """Peak RSS (MiB) since the last reset: VmHWM, else ru_maxrss; never below the current RSS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return max(peak, rss_mib())


def conv_backward_flops(grad_out, x, weight, output_mask, out) -> int:
    """FLOPs of ``aten.convolution_backward`` (not transposed) for grouped convolutions too.

    ``torch.utils.flop_counter``'s formula (torch 2.14) counts the weight gradient of a grouped
    convolution as if it were dense: ``groups`` times too many, 16x on a 16-channel depthwise
    conv, so a supernet's search step read 2.4-3x its real FLOPs (benchmarks/README.md, "FLOPs of
    grouped convolutions"). Here each gradient costs what the forward costs: the input gradient
    is a transposed convolution with the same weight, and the weight gradient multiplies every
    output-gradient element with the k·k·C_in/groups inputs under its window, once each."""
    from torch.utils.flop_counter import conv_flop_count

    flops = 0
    if output_mask[0]:  # grad_input: as torch's formula (already right for groups)
        flops += conv_flop_count(list(grad_out.shape), list(weight.shape), list(out[0].shape), transposed=True)
    if output_mask[1]:  # grad_weight: the forward's count, out[1] having the weight's shape (C_out, C_in/g, k, k)
        flops += conv_flop_count(list(x.shape), list(out[1].shape), list(grad_out.shape))
    return flops


class FlopCount(TorchDispatchMode):
    """``torch.utils.flop_counter``'s formulas without ``FlopCounterMode``'s module tracker, whose
    autograd hooks break ``torch.autograd.grad`` on a leaf input (AutoAttack's APGD); the
    backward of a convolution is counted by :func:`conv_backward_flops` (grouped weight
    gradients counted once, not ``groups`` times)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func._overloadpacket is torch.ops.aten.convolution_backward and not args[7]:  # not transposed
            self.total += conv_backward_flops(args[0], args[1], args[2], args[10], out)
            return out
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    case_name: str,
    variant: str,
    repeats: int,
    device: torch.device,
    quick: bool,
    model_file: str | None,
    target_s: float = 0.0,
) -> dict:
    """One variant alone in this process, measured as :func:`interleave` measures each variant
    (a counting run, the free heap handed back, the first run: result and peak memory), then
    ``repeats`` timed samples (seconds: theirs, or the first run's when there are none); with
    ``target_s``, each sample repeats the run to last about that long (:meth:`_Timed.calibrate`),
    else one untimed run precedes single-run samples (:meth:`_Timed.warm`)."""
    from benchmarks.cases import CASES, Env

    t = _Timed(CASES[case_name], variant, Env(device=device, quick=quick, model_file=model_file))
    t.count_flops()
    gc.collect()
    release_free_heap()
    t.first_run()
    if repeats and target_s > 0:
        t.calibrate(target_s)
    elif repeats:
        t.warm()
    for _ in range(repeats):
        t.sample()
    return {
        "case": case_name,
        **t.summary(),
        "seconds": t.seconds or [t.first_seconds],
    }


# -- interleaved timing: both variants in one process, A B / B A / A B ... -------------------


def release_free_heap() -> bool:
    """Hand the C heap's free memory back to the OS (glibc ``malloc_trim(0)``: the top of each
    arena and, since glibc 2.8, the free pages inside it), so that the next peak RSS grows from
    a heap holding only live data, as in a fresh process. False where there is no glibc."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def _acceleration_of_build():
    """rnas.runtime's process-wide options as the last build left them (a case's build sets
    them for its variant: bf16 autocast on CUDA for the fast one)."""
    from rnas.runtime import acceleration

    return acceleration()


def _restore_acceleration(state, device: torch.device) -> None:
    from rnas.runtime import configure_acceleration

    if state is not None:
        configure_acceleration(amp=state.amp, compile=state.compile, device=device)


class _Timed:
    """One variant's workload, built once, timed many times in this process."""

    def __init__(self, case, variant: str, env) -> None:
        self.variant = variant
        self.device = env.device
        torch.manual_seed(0)  # both variants build from the same global RNG state
        self.work = case.build(variant, env)
        self.acceleration = _acceleration_of_build()
        self.inner = 1  # runs per timed sample (short runs are repeated to reach the target)
        self.seconds: list[float] = []  # per sample: seconds per run
        self.result = None
        self.flops = None
        self.first_seconds = None
        self.peak_mib = None

    def _activate(self) -> None:
        _restore_acceleration(self.acceleration, self.device)

    def count_flops(self) -> None:
        """The FLOPs of a run: counted on ``count_run`` (scaled) when the workload has one, else
        on a whole run. Either way an untimed run before the first, so that the one-off costs of
        a process's first kernels (library code paged in, kernel caches) stay out of the peak."""
        w = self.work
        self._activate()
        counter = FlopCount()
        if w.count_run is not None:
            with counter if w.count_flops else contextlib.nullcontext():
                w.count_run()
            self.flops = int(counter.total * w.count_scale) if w.count_flops else None
        else:
            with counter if w.count_flops else contextlib.nullcontext():
                w.run()
            self.flops = counter.total if w.count_flops else None
        _sync(self.device)

    def first_run(self) -> None:
        """The untimed first run after :meth:`count_flops`: the result, and the peak memory
        (growth of peak RSS, or CUDA's max allocated, over what was live before it). The caller
        makes sure that no other run left free memory this one could reuse."""
        self._activate()
        w = self.work
        cuda = self.device.type == "cuda"
        _sync(self.device)
        if cuda:
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            base = rss_mib()
            reset_peak_rss()
        t0 = time.perf_counter()
        self.result = w.run()
        _sync(self.device)
        self.first_seconds = time.perf_counter() - t0
        if cuda:
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        else:
            self.peak_mib = max(0.0, peak_rss_mib() - base)

    def calibrate(self, target_s: float, max_inner: int = 10_000) -> None:
        """Choose how many runs a timed sample repeats so that it lasts about ``target_s``: untimed
        batches of 1, then more runs (as timeit's autorange), until a batch lasts half the target;
        one run's time is then that batch's mean, less disturbed than a single run's."""
        self._activate()
        n = 1
        while True:
            _sync(self.device)
            t0 = time.perf_counter()
            for _ in range(n):
                self.work.run()
            _sync(self.device)
            dt = max(time.perf_counter() - t0, 1e-9)
            if dt >= target_s / 2 or n >= max_inner:
                break
            n = min(max_inner, max(2 * n, math.ceil(n * target_s / 2 / dt)))
        self.inner = max(1, min(max_inner, round(target_s * n / dt)))

    def warm(self) -> None:
        """One untimed run (its memory paged in, its kernels' caches filled)."""
        self._activate()
        self.work.run()
        _sync(self.device)

    def sample(self) -> float:
        """One timed sample: ``inner`` runs back to back; appends and returns seconds per run."""
        self._activate()
        run = self.work.run
        gc.collect()
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            _sync(self.device)
            t0 = time.perf_counter()
            for _ in range(self.inner):
                run()
            _sync(self.device)
            dt = (time.perf_counter() - t0) / self.inner
        finally:
            if gc_was_on:
                gc.enable()
        self.seconds.append(dt)
        return dt

    def summary(self) -> dict:
        return {
            "variant": self.variant,
            "seconds": self.seconds,
            "inner": self.inner,
            "first_seconds": self.first_seconds,
            "flops": self.flops,
            "peak_mib": self.peak_mib,
            "result": self.result,
            "images": self.work.images,
            "amp": self.work.amp,
        }


def interleave(
    case_name: str,
    device: torch.device,
    quick: bool,
    model_file: str | None,
    pairs: int,
    repeat_short: bool = True,
    target_s: float = 0.2,
) -> dict:
    """Measure a case's two variants in this process.

    1. Per variant, in turn: build it, count its FLOPs in an untimed run (:meth:`_Timed.count_flops`;
       it also takes the one-off costs of the process's first kernels), hand the heap's free
       memory back (:func:`release_free_heap`), then its untimed first run, which gives its
       result and its peak memory, and the free memory back again. The other variant has not
       run (the first one's live memory is part of the second's base) and the heap held only
       live data, so the peak is this variant's own.
    2. With ``repeat_short`` (runs under a second or so), the runs a sample repeats to last
       about ``target_s`` (found by untimed runs); long runs are timed one per sample, after
       one untimed run of each variant: step 1 handed the first variant's free memory back to
       the OS, and its first timed run would page it in again (AMD EPYC, session 15, before
       this run: in 7 of the 13 long rows the largest of the 3 ratios was 1.25-1.7x their
       median, always above it, as a slow first run of the first variant makes it).
    3. ``pairs`` pairs of timed samples, the order alternating (A B, B A, A B, ...) so that a
       drift in the machine's speed favours neither.

    Returns ``{"variants": {name: summary or {"error": ...}}, "ratios": [t_A / t_B per pair]}``
    (A = the case's first variant: straightforward, or before)."""
    from benchmarks.cases import CASES, Env

    case = CASES[case_name]
    env = Env(device=device, quick=quick, model_file=model_file)
    timed: dict[str, _Timed] = {}
    errors: dict[str, str] = {}

    def guard(variant: str, fn) -> None:
        if variant in errors:
            return
        try:
            fn()
        except Exception as err:  # a variant that fails is reported, the other still measured
            errors[variant] = f"{type(err).__name__}: {err}"
            timed.pop(variant, None)

    def first(v: str, last: bool) -> None:
        timed[v] = _Timed(case, v, env)
        timed[v].count_flops()
        gc.collect()
        release_free_heap()
        timed[v].first_run()
        if not last:  # the next variant's peak must not reuse this one's free memory
            gc.collect()
            release_free_heap()

    for i, v in enumerate(case.variants):
        guard(v, lambda v=v, i=i: first(v, i == len(case.variants) - 1))
    if repeat_short:
        for v in case.variants:
            guard(v, lambda v=v: timed[v].calibrate(target_s))
    else:  # one untimed run each, in the first pair's order (see the docstring, step 2)
        for v in case.variants:
            guard(v, lambda v=v: timed[v].warm())
    order = list(case.variants)
    for i in range(pairs):
        for v in order if i % 2 == 0 else order[::-1]:
            guard(v, lambda v=v: timed[v].sample())
    a, b = case.variants
    ratios = []
    if a in timed and b in timed:
        ratios = [ta / tb for ta, tb in zip(timed[a].seconds, timed[b].seconds)]
    out = {v: timed[v].summary() if v in timed else {"error": errors[v]} for v in case.variants}
    return {"variants": out, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", required=True)
    p.add_argument("--variant", default=None, help="one variant alone in this process (a cross-check)")
    p.add_argument("--repeats", type=int, default=0, help="with --variant: timed runs after a warm-up (0: one run)")
    p.add_argument("--interleave", action="store_true", help="time both variants interleaved in this process")
    p.add_argument("--pairs", type=int, default=5, help="with --interleave: timed pairs")
    p.add_argument("--long", action="store_true", help="with --interleave: one run per sample (runs of seconds)")
    p.add_argument(
        "--target", type=float, default=None, help="seconds per timed sample (default 0.2; --variant: 0, single runs)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model-file", default=None)
    args = p.parse_args(argv)
    heap_reuse = configure_allocator()  # the C heap's policy of the pipeline's stages (RNAS_MALLOC)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.interleave:
        target = 0.2 if args.target is None else args.target
        out = interleave(args.case, device, args.quick, args.model_file, args.pairs, not args.long, target)
    elif args.variant:
        out = measure(args.case, args.variant, args.repeats, device, args.quick, args.model_file, args.target or 0.0)
    else:
        p.error("give --variant or --interleave")
    print("RESULT " + json.dumps({**out, "heap_reuse": heap_reuse}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
