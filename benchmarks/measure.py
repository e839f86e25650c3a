"""Measure one variant of one case in this (fresh) process and print one JSON line.

    python -m benchmarks.measure --case search_darts_paper --variant fast --repeats 2 --threads 2

:class:`FlopCount` counts the FLOPs of the matmuls and convolutions (forward and backward, a
multiply-add = 2 FLOPs) with the formulas of ``torch.utils.flop_counter``: on the workload's
``count_run`` (a 2-example batch, scaled) when it has one, else on the warm-up run. With
``--repeats N > 0`` a warm-up run precedes N timed runs; with 0 there is one timed run and no
warm-up (steps that take many seconds). Times are wall clock (on CUDA with synchronization).
Peak memory is the growth over the process's memory once the model, data and optimizer are
built: on CPU the peak resident set size (``ru_maxrss``), on CUDA
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


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


class FlopCount(TorchDispatchMode):
    """``torch.utils.flop_counter``'s formulas without ``FlopCounterMode``'s module tracker, whose
    autograd hooks break ``torch.autograd.grad`` on a leaf input (AutoAttack's APGD)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def measure(
    case_name: str, variant: str, repeats: int, device: torch.device, quick: bool, model_file: str | None
) -> dict:
    from benchmarks.cases import CASES, Env

    case = CASES[case_name]
    work = case.build(variant, Env(device=device, quick=quick, model_file=model_file))
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    sync()
    if cuda:
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = rss_mib()
        reset_peak_rss()
    counter = FlopCount()
    flops = None
    if work.count_flops and work.count_run is not None:
        with counter:
            work.count_run()
        flops = int(counter.total * work.count_scale)
    result = warmup_s = None
    if repeats > 0:  # a warm-up run (FLOPs counted here when there is no count_run)
        counting = work.count_flops and work.count_run is None
        t0 = time.perf_counter()
        with counter if counting else contextlib.nullcontext():
            result = work.run()
        sync()
        warmup_s = time.perf_counter() - t0
        if counting:
            flops = counter.total
    times = []
    for _ in range(max(repeats, 1)):
        sync()
        t0 = time.perf_counter()
        value = work.run()
        sync()
        times.append(time.perf_counter() - t0)
        result = value if result is None else result
    if cuda:
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = max(0.0, peak_rss_mib() - base)  # (VmHWM and statm differ by page rounding)
    return {
        "case": case_name,
        "variant": variant,
        "seconds": times,
        "warmup_seconds": warmup_s,
        "flops": flops,
        "peak_mib": peak,
        "result": result,
        "images": work.images,
        "amp": work.amp,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model-file", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = measure(args.case, args.variant, args.repeats, torch.device(args.device), args.quick, args.model_file)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
