"""``python -m benchmarks.kernel_rates``: GFLOP/s of the kernel kinds a search supernet is made of,
one kernel at a time, at the supernets' own shapes.

A search row's ``% ceil`` in ``make bench`` compares its FLOPs per second with the best dense
kernel of the machine (a 3x3 convolution with 512 channels). A supernet is mostly depthwise and
1x1 convolutions on few channels, whose kernels run far below that ceiling on their own; this
table says how far, so that a step's ``% ceil`` can be read against what its kernels allow.

Each row times forward + backward (input and weight gradients) of one channels-last
convolution, batch 64, the best of 5 samples of repeated runs, FLOPs counted by
:class:`benchmarks.measure.FlopCount` (a grouped weight gradient counted once). The shapes are
the PC-DARTS K = 4 paper supernet's edges (C = 16 / 4 channels on 32x32, 8 on 16x16, 16 on 8x8)
and the full-width DARTS ones (16 on 32x32, 32 on 16x16, 64 on 8x8).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.measure import FlopCount

SHAPES = ((4, 32), (8, 16), (16, 8), (16, 32), (32, 16), (64, 8))  # (channels, map side)
KERNELS: dict[str, Callable[[int], nn.Module]] = {
    "depthwise 3x3": lambda c: nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
    "depthwise 5x5": lambda c: nn.Conv2d(c, c, 5, padding=2, groups=c, bias=False),
    "depthwise 3x3 dil 2": lambda c: nn.Conv2d(c, c, 3, padding=2, dilation=2, groups=c, bias=False),
    "1x1": lambda c: nn.Conv2d(c, c, 1, bias=False),
    "dense 3x3": lambda c: nn.Conv2d(c, c, 3, padding=1, bias=False),
}


def rate(module: nn.Module, batch: int, channels: int, side: int, min_seconds: float = 0.2) -> tuple[float, float]:
    """(GFLOP/s, seconds per run) of forward + backward of ``module`` on a channels-last batch."""
    module = module.to(memory_format=torch.channels_last)
    x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()

    def run() -> None:
        y = module(x)
        y.backward(torch.ones_like(y))

    run()
    with FlopCount() as count:
        run()
    repeats = 1
    while True:  # as timeit's autorange: enough repeats for a sample of min_seconds
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        if time.perf_counter() - start >= min_seconds:
            break
        repeats *= 2
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        best = min(best, (time.perf_counter() - start) / repeats)
    return count.total / best / 1e9, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="batch 4, short samples (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch, min_seconds = (4, 0.01) if args.quick else (args.batch, 0.2)
    print(f"forward + backward, channels-last, batch {batch}, {args.threads} thread(s); GFLOP/s (ms per run)")
    print("| kernel | " + " | ".join(f"C {c}, {s}x{s}" for c, s in SHAPES) + " |")
    print("| --- " * (len(SHAPES) + 1) + "|")
    for name, make in KERNELS.items():
        cells = []
        for channels, side in SHAPES:
            torch.manual_seed(0)
            gflops, seconds = rate(make(channels), batch, channels, side, min_seconds)
            cells.append(f"{gflops:.1f} ({seconds * 1e3:.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
