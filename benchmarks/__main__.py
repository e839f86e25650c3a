"""``python -m benchmarks``: print the speed/memory table of rnas's hot paths (``make bench``).

Each case's two variants run one after the other, each in a fresh subprocess
(:mod:`benchmarks.measure`): one warm-up run (FLOPs counted there), then timed repeats, of which
the fastest is reported (the least disturbed by other processes). Steps that take many seconds
(search and training steps, the AutoAttack evaluation) run once, without warm-up; their FLOPs
are counted on a 2-example batch and scaled (they are linear in the batch). Columns:

* ``s/run``: seconds of the fastest timed run; ``images/s``: examples per run / ``s/run``
  (a search step processes a weight batch and an architecture batch);
* ``peak MiB``: memory growth during the runs (CPU: peak RSS; CUDA: max allocated);
* ``GFLOP/s``: counted matmul/conv FLOPs of a run / ``s/run``; ``% ceil``: that against the
  machine's measured matmul ceiling (float32 ``torch.mm``; bf16 on CUDA for autocast runs);
* ``Δresult``: |result(fast) − result(straightforward)| of the warm-up run (a loss, an
  accuracy): the two compute the same algorithm, so it is float round-off (or, for attacks with
  random starts on different batches, a few examples);
* ``speedup``: s/run(straightforward) / s/run(fast), or before/after for ablations.

Timings are printed, never asserted (timings on a shared machine are noisy). Results are
checked: a row whose Δresult exceeds its case's tolerance (:func:`benchmarks.cases.allowed_delta`:
float round-off, bf16 round-off under autocast, a few examples of an accuracy, PGD's
amplification in the training rows) is marked MISMATCH, and the run exits 1 after the table,
as it does when a variant failed to run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul (2n³ FLOPs) on ``device``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        (a @ b).sum().item()
        dt = time.perf_counter() - t0
        if i:
            best = min(best, dt)
    return 2 * n**3 / best / 1e9


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: torch.device, threads: int) -> str:
    mem = ""
    try:
        total = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
        mem = f", {total:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    text = (
        f"{cpu_name()} ({os.cpu_count()} logical CPUs{mem}); torch {torch.__version__}, "
        f"{threads} intra-op thread(s); python {platform.python_version()}"
    )
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


def run_variant(case: str, variant: str, args: argparse.Namespace, repeats: int, model_file: str | None) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.measure",
        "--case",
        case,
        "--variant",
        variant,
        "--repeats",
        str(repeats),
        "--threads",
        str(args.threads),
        "--device",
        args.device_name,
    ]
    if args.quick:
        cmd.append("--quick")
    if model_file:
        cmd += ["--model-file", model_file]
    env = dict(
        os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), GIT_PYTHON_REFRESH="quiet"
    )
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (out.stderr or out.stdout).strip().splitlines()[-6:]
    return {"error": f"exit {out.returncode}: " + " | ".join(tail)}


def fmt_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cases import CASES, allowed_delta, train_digits_model

    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small batches and example counts (a smoke run)")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs after a warm-up (default 3; --quick: 1); multi-second steps always run once, without warm-up",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1, as pipeline.threads: one core per Snakemake job)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--only", default="", help="comma-separated case names (default: all)")
    p.add_argument("--no-ablations", action="store_true", help="skip the per-optimization ablation rows")
    p.add_argument("--markdown", default="", help="also write the table to this file")
    args = p.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    args.device_name = device.type
    torch.set_num_threads(args.threads)
    names = [n for n in (args.only.split(",") if args.only else CASES) if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    if args.no_ablations:
        names = [n for n in names if CASES[n].group != "ablation"]

    lines = [f"machine: {machine(device, args.threads)}"]
    ceil32 = matmul_ceiling(device, torch.float32, 4096 if device.type == "cuda" else 2048, repeats=10)
    ceil16 = matmul_ceiling(device, torch.bfloat16, 8192) if device.type == "cuda" else None
    lines.append(
        f"matmul ceiling: {ceil32:.0f} GFLOP/s float32"
        + (f", {ceil16:.0f} GFLOP/s bfloat16" if ceil16 else "")
        + " (best of 5 torch.mm)"
    )
    print("\n".join(lines), flush=True)

    model_file = None
    tmp = tempfile.TemporaryDirectory(prefix="rnas-bench-")
    if any(CASES[n].group in ("c", "d") for n in names):
        t0 = time.perf_counter()
        model_file = str(Path(tmp.name) / "digits_pgd.pt")
        last = train_digits_model(Path(model_file), epochs=1 if args.quick else 2)
        msg = (
            f"evaluation model: digits DARTS V2 net PGD-trained in {time.perf_counter() - t0:.0f} s "
            f"(val clean {last['val_clean_acc']:.3f}, val PGD {last['val_robust_acc']:.3f})"
        )
        lines.append(msg)
        print(msg, flush=True)

    header = ["case", "variant", "s/run", "images/s", "peak MiB", "GFLOP/s", "% ceil", "Δresult", "speedup"]
    table = [fmt_row(header), fmt_row(["---"] * len(header))]
    configs = []
    failures: list[str] = []
    print("\n" + table[0] + "\n" + table[1], flush=True)

    def emit(cells: list[str]) -> None:
        row = fmt_row(cells)
        table.append(row)
        print(row, flush=True)

    for name in names:
        case = CASES[name]
        # the ceiling is re-measured before every case and the best kept: on a shared machine a
        # single measurement can land in a busy moment and understate it
        ceil32 = max(ceil32, matmul_ceiling(device, torch.float32, 4096 if device.type == "cuda" else 2048, repeats=3))
        configs.append(
            f"- `{name}` ({case.group}): {case.config}"
            + (f" [--quick: {case.quick_config}]" if args.quick and case.quick_config else "")
        )
        if case.cuda_only and device.type != "cuda":
            emit([name, "n/a", "", "", "", "", "", "", "CUDA only: not run on CPU"])
            continue
        if case.requires:
            try:
                importlib.import_module(case.requires)
            except ImportError as err:
                emit([name, "n/a", "", "", "", "", "", "", f"unavailable: {case.requires} does not import ({err})"])
                continue
        if case.heavy or case.single_run:
            repeats = 0  # no warm-up, one timed run: these runs take many seconds
        else:
            repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
        results = {}
        for variant in case.variants:
            r = run_variant(name, variant, args, repeats, model_file)
            results[variant] = r
            if "error" in r:
                emit([name, variant, "", "", "", "", "", "", f"FAILED: {r['error'][:300]}"])
                failures.append(f"{name} {variant}: did not run ({r['error'][:300]})")
                continue
            s = min(r["seconds"])
            ceiling = ceil16 if (r["amp"] and ceil16) else ceil32
            gflops = r["flops"] / s / 1e9 if r["flops"] is not None else None
            cells = [
                name,
                variant,
                f"{s:.3f}",
                f"{r['images'] / s:.1f}",
                f"{r['peak_mib']:.0f}",
                "-" if gflops is None else f"{gflops:.1f}",
                "-" if gflops is None else f"{100 * gflops / ceiling:.1f}%",
                "",
                "",
            ]
            base = results.get(case.variants[0])
            if variant == case.variants[1] and base and "error" not in base:
                cells[7] = f"{abs(r['result'] - base['result']):.2g}" if case.same_result else "n/a"
                cells[8] = f"speedup {min(base['seconds']) / s:.2f}x"
                limit = allowed_delta(case, base, r)
                if case.same_result and not abs(r["result"] - base["result"]) <= limit:  # NaN fails too
                    cells[7] += f" MISMATCH (> {limit:.2g})"
                    failures.append(
                        f"{name}: result {r['result']!r} ({variant}) vs {base['result']!r} "
                        f"({case.variants[0]}), |Δ| beyond the allowed {limit:.2g}"
                    )
            emit(cells)
    final = f"matmul ceiling, best over the run: {ceil32:.0f} GFLOP/s float32"
    lines.append(final)
    print("\n" + final + "\n\nConfigurations:\n" + "\n".join(configs), flush=True)
    if args.markdown:
        Path(args.markdown).write_text(
            "\n".join(lines) + "\n\n" + "\n".join(table) + "\n\nConfigurations:\n" + "\n".join(configs) + "\n"
        )
    tmp.cleanup()
    if failures:
        print("\nbenchmark FAILED:\n" + "\n".join(f"- {f}" for f in failures), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
