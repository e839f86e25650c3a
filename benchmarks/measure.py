"""Measure one variant of one case in this (fresh) process and print one JSON line.

    python -m benchmarks.measure --case search_darts_paper --variant fast --repeats 2 --threads 2

The first run is the warm-up; it runs under :class:`FlopCount`, which counts the FLOPs of the
matmuls and convolutions (forward and backward, a multiply-add = 2 FLOPs) that the unit of work
executes, with the formulas of ``torch.utils.flop_counter``. The ``repeats`` runs after it are timed (wall clock; on CUDA with
synchronization). Peak memory is the growth over the process's memory just before the warm-up
(model, data and optimizer built): on CPU the peak resident set size (``ru_maxrss``), on CUDA
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


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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


def measure(case_name: str, variant: str, repeats: int, device: torch.device, quick: bool,
            model_file: str | None) -> dict:
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
    counter = FlopCount()
    t0 = time.perf_counter()
    with counter if work.count_flops else contextlib.nullcontext():
        result = work.run()
    sync()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        work.run()
        sync()
        times.append(time.perf_counter() - t0)
    if not times:  # --repeats 0: the warm-up (not counted) is the timed run
        times = [warmup_s]
    if cuda:
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = peak_rss_mib() - base
    return {"case": case_name, "variant": variant, "seconds": times, "warmup_seconds": warmup_s,
            "flops": counter.total if work.count_flops else None, "peak_mib": peak, "result": result,
            "images": work.images, "amp": work.amp, "note": work.note}


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
