"""``python -m benchmarks``: print the speed/memory table of rnas's hot paths (``make bench``).

Per case, the two variants (straightforward and fast, or an ablation's before and after) are
measured in one fresh subprocess (:func:`benchmarks.measure.interleave`): each variant's untimed
first run gives its result and peak memory, then the two are timed **interleaved**, pair after
pair, the order flipping every pair, so that a busy moment of the machine lands on one pair
rather than on one variant. Short rows get at least 5 pairs (default 7; a sample repeats a short
run until it lasts ~0.2 s); rows whose runs take seconds (search and training steps, the
AutoAttack evaluation) get 3 pairs of single runs. A case whose variants differ in a
process-wide option (``Case.process_env``: the C heap's policy) runs each sample in a fresh
process instead (:func:`run_per_process`). Every measuring process sets the pipeline stages' C
heap policy (:func:`rnas.runtime.configure_allocator`). Columns:

* ``s/run``: median seconds per run over the variant's samples; ``images/s``: examples per run
  / ``s/run`` (a search step processes a weight batch and an architecture batch);
* ``peak MiB``: memory growth during the variant's first run (CPU: peak RSS; CUDA: max allocated);
* ``GFLOP/s``: counted matmul/conv FLOPs of a run / ``s/run``; ``% ceil``: that against the
  machine's ceiling in the row's precision (:func:`measure_ceilings`: the best ``torch.mm``
  over several sizes and the best dense 3x3 convolution over two shapes, over the whole run;
  float32, and bf16 where the device has it natively; TF32 on CUDA where cuDNN runs float32
  convolutions in it);
* ``Δresult``: |result(fast) − result(straightforward)| of each variant's first run (a loss, an
  accuracy): the two compute the same algorithm, so it is float round-off (or, for attacks with
  random starts on different batches, a few examples);
* ``speedup``: the median over pairs of s(straightforward) / s(fast) (before / after for
  ablations); ``spread``: the interquartile range of those per-pair ratios (from 5 pairs; with
  fewer, their whole range); ``verdict``: ``faster`` when the spread lies above 1.02, ``slower``
  when below 0.98, ``no gain (±2%)`` when within 0.98-1.02, else ``within noise``;
* ``samples``: timed samples per variant (x runs per sample; per-process rows: processes x
  samples per process).

Timings are printed, never asserted (timings on a shared machine are noisy). Results are
checked: a row whose Δresult exceeds its case's tolerance (:func:`benchmarks.cases.allowed_delta`:
float round-off, bf16 round-off under autocast, a few examples of an accuracy, PGD's
amplification in the training rows) is marked MISMATCH, and the run exits 1 after the table,
as it does when a variant failed to run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _best_seconds(device: torch.device, fn, repeats: int) -> float:
    """The fastest of at least ``repeats`` timed calls of ``fn`` after one untimed call, more
    for short calls (until ~0.3 s of them, at most 50)."""
    best = float("inf")
    i = timed = 0
    while i <= repeats or (timed < 0.3 and i <= 50):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if i:
            best = min(best, dt)
            timed += dt
        i += 1
    return best


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul (2n³ FLOPs) on ``device``, after one untimed product;
    at least ``repeats`` timed products, more for small n (until ~0.3 s of them)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _best_seconds(device, lambda: torch.mm(a, b), repeats) / 1e9


def conv_ceiling(device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int], repeats: int = 5) -> float:
    """Best GFLOP/s of a dense 3x3 convolution (stride 1, "same" padding, C -> C channels, no
    bias; 2·N·C²·9·H² FLOPs) on a channels-last (N, C, H, H) input, ``shape`` = (N, C, H).
    Convolutions run in another library than ``torch.mm`` (oneDNN on the CPU, cuDNN on CUDA),
    and on some CPUs they reach far more: on an AMD EPYC with AVX-512 torch's MKL matmul ran at
    ~110 GFLOP/s on one thread, oneDNN's 3x3 conv at 240-290, and a ResNet-18 training row at 213
    (benchmarks/README.md), so a matmul-only ceiling sat below the rows."""
    n, c, h = shape
    x = torch.randn(n, c, h, h, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, c, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        seconds = _best_seconds(device, lambda: torch.nn.functional.conv2d(x, w, padding=1), repeats)
    return 2 * n * c * c * 9 * h * h / seconds / 1e9


def bf16_native(device: torch.device, flags: set[str] | None = None) -> bool:
    """Whether ``device`` computes bf16 products in hardware: on a CPU only with the
    AVX512-BF16 or AMX-BF16 instructions (:func:`rnas.runtime.cpu_has_native_bf16`, read from
    /proc/cpuinfo, never assumed; ``flags``: a CPU's flags instead, for tests; elsewhere bf16
    would be emulated and its "ceiling" meaningless); on CUDA as torch reports it."""
    from rnas.runtime import BF16_CPU_FLAGS, cpu_has_native_bf16

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if flags is None:
        return cpu_has_native_bf16()
    return any(f in flags for f in BF16_CPU_FLAGS)


def no_bf16_reason(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.is_bf16_supported() is False"
    return "the CPU has neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo"


@contextlib.contextmanager
def _cuda_tf32_like_convs(device: torch.device):
    """On CUDA, float32 convolutions run in TF32 when cuDNN allows it (torch's default), while
    float32 matmuls do not by default: the float32 ceiling is measured with matmuls in the
    precision the convolutions get, or it would sit below the rows that run convolutions."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(torch.backends.cudnn.allow_tf32)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def ceiling_sizes(device: torch.device) -> tuple[int, ...]:
    return (1024, 2048, 4096, 8192) if device.type == "cuda" else (512, 1024, 2048, 4096)


def ceiling_conv_shapes(device: torch.device, quick: bool = False) -> tuple[tuple[int, int, int], ...]:
    """(N, C, H) of the 3x3 convolutions of the ceiling: wide layers on 32x32 and 16x16 maps
    (~40 GFLOP each on the CPU; ``quick``: a quarter of the batch)."""
    if device.type == "cuda":
        return ((256, 256, 32), (256, 512, 16))
    n = 8 if quick else 32
    return ((n, 256, 32), (n, 512, 16))


Kernel = tuple  # ("mm", n) or ("conv3x3", (N, C, H))


def ceiling_kernels(device: torch.device, quick: bool = False) -> tuple[Kernel, ...]:
    return tuple(("mm", n) for n in ceiling_sizes(device)) + tuple(
        ("conv3x3", s) for s in ceiling_conv_shapes(device, quick)
    )


def kernel_label(kernel: Kernel) -> str:
    kind, arg = kernel
    if kind == "mm":
        return f"mm {arg}³"
    n, c, h = arg
    return f"3x3 conv N{n} C{c} {h}x{h}"


@dataclass
class Ceiling:
    """The best GFLOP/s seen in this run, per precision, over matmuls and dense convolutions,
    and the kernel that gave it (``best``: ("mm", n) or ("conv3x3", (N, C, H)))."""

    dtype: torch.dtype
    gflops: float = 0.0
    best: Kernel = ()

    def measure(self, device: torch.device, kernels: tuple[Kernel, ...], repeats: int) -> float:
        for kernel in kernels:
            kind, arg = kernel
            with _cuda_tf32_like_convs(device):
                if kind == "mm":
                    g = matmul_ceiling(device, self.dtype, arg, repeats)
                else:
                    g = conv_ceiling(device, self.dtype, arg, repeats)
            if g > self.gflops:
                self.gflops, self.best = g, kernel
        return self.gflops


def measure_ceilings(device: torch.device, quick: bool) -> dict[str, Ceiling]:
    """float32 always; bfloat16 where the device has it natively (:func:`bf16_native`)."""
    out = {"float32": Ceiling(torch.float32)}
    if bf16_native(device):
        out["bfloat16"] = Ceiling(torch.bfloat16)
    for c in out.values():
        c.measure(device, ceiling_kernels(device, quick), repeats=2 if quick else 3)
    return out


def describe_ceilings(ceilings: dict[str, Ceiling], device: torch.device, quick: bool = False) -> str:
    parts = [f"{c.gflops:.0f} GFLOP/s {name} ({kernel_label(c.best)})" for name, c in ceilings.items()]
    sizes = ", ".join(str(n) for n in ceiling_sizes(device))
    convs = ", ".join(f"N{n} C{c} {h}x{h}" for n, c, h in ceiling_conv_shapes(device, quick))
    text = (
        "ceiling: "
        + "; ".join(parts)
        + f" (best torch.mm over sizes {sizes} and 3x3 conv over {convs}, channels-last, and the whole run"
    )
    if device.type == "cuda":
        text += "; float32 with TF32 as cuDNN's float32 convolutions" if torch.backends.cudnn.allow_tf32 else ""
    elif "bfloat16" not in ceilings:
        text += "; no bf16: " + no_bf16_reason(device)
    return text + ")"


# -- statistics of the interleaved pairs -----------------------------------------------------

MIN_PAIRS_FOR_VERDICT = 3
IQR_FROM = 5  # from 5 pairs the spread is the interquartile range, below it the whole range
#: The smallest speed-up or slow-down the bench claims: in consecutive idle runs a 1% effect's IQR
#: fell on either side of 1.0 (ablate_pointwise 1.01-1.02, then 0.99-1.01, session 27), so a spread
#: that does not clear 1 ± 2% is no claim (benchmarks/README.md, "Method").
SMALLEST_EFFECT = 0.02


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of ``values``."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: list[float]) -> float:
    return quantile(values, 0.5)


def spread(ratios: list[float]) -> tuple[float, float, str]:
    """The spread of the per-pair ratios: their interquartile range from :data:`IQR_FROM`
    pairs on, else their whole range (min, max), which is the stricter of the two."""
    if len(ratios) >= IQR_FROM:
        return quantile(ratios, 0.25), quantile(ratios, 0.75), "IQR"
    return min(ratios), max(ratios), "range"


def verdict(ratios: list[float]) -> str:
    """``faster`` when the spread of the ratios (straightforward / fast, before / after) lies
    wholly above 1 + :data:`SMALLEST_EFFECT`, ``slower`` when wholly below 1 − it, ``no gain``
    when it lies wholly within 1 ± it (a difference too small to claim either way), else
    ``within noise``; fewer than :data:`MIN_PAIRS_FOR_VERDICT` pairs give no verdict."""
    if len(ratios) < MIN_PAIRS_FOR_VERDICT:
        return f"too few pairs ({len(ratios)})"
    lo, hi, _ = spread(ratios)
    if lo > 1.0 + SMALLEST_EFFECT:
        return "faster"
    if hi < 1.0 - SMALLEST_EFFECT:
        return "slower"
    if lo >= 1.0 - SMALLEST_EFFECT and hi <= 1.0 + SMALLEST_EFFECT:
        return f"no gain (±{SMALLEST_EFFECT:.0%})"
    return "within noise"


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
        f"CPU {cpu_name()} ({os.cpu_count()} logical CPUs{mem}); threads: {threads} intra-op "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); torch {torch.__version__}; "
        f"python {platform.python_version()}"
    )
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


def _subprocess(
    cmd: list[str], args: argparse.Namespace, model_file: str | None, extra_env: dict[str, str] | None = None
) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.measure", *cmd, "--threads", str(args.threads), "--device"]
    cmd.append(args.device_name)
    if args.quick:
        cmd.append("--quick")
    if model_file:
        cmd += ["--model-file", model_file]
    env = dict(
        os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), GIT_PYTHON_REFRESH="quiet"
    )
    env.update(extra_env or {})
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (out.stderr or out.stdout).strip().splitlines()[-6:]
    return {"error": f"exit {out.returncode}: " + " | ".join(tail)}


PROCESS_SAMPLES = 3  # timed samples per process of a per-process row; the process counts their median


def run_case(case: str, args: argparse.Namespace, pairs: int, long_row: bool, model_file: str | None) -> dict:
    """Both variants' first runs (result, peak memory) and interleaved timing, in one fresh
    process (:func:`benchmarks.measure.interleave`); a case whose variants differ in a
    process-wide option (``Case.process_env``) in fresh processes instead (:func:`run_per_process`)."""
    from benchmarks.cases import CASES

    if CASES[case].process_env:
        return run_per_process(case, args, pairs, long_row, model_file)
    cmd = ["--case", case, "--interleave", "--pairs", str(pairs), "--target", str(args.target)]
    out = _subprocess(cmd + (["--long"] if long_row else []), args, model_file)
    if "error" in out:
        return {"variants": {v: {"error": out["error"]} for v in CASES[case].variants}, "ratios": []}
    return out


def run_per_process(case: str, args: argparse.Namespace, pairs: int, long_row: bool, model_file: str | None) -> dict:
    """``pairs`` pairs of fresh processes, one per variant with that variant's environment
    (``Case.process_env``), the order alternating (A B, B A, ...). Each process measures its
    variant as :func:`benchmarks.measure.measure` does (first run: result and peak memory), then
    :data:`PROCESS_SAMPLES` timed samples (of ~``--target`` seconds for short rows); the median of
    those is the process's sample, and a pair's ratio is that of its two processes. The first
    process of each variant gives its result, FLOPs and peak memory."""
    from benchmarks.cases import CASES

    spec = CASES[case]
    target = 0.0 if long_row else args.target
    out: dict[str, dict] = {}
    seconds: dict[str, list[float]] = {v: [] for v in spec.variants}
    for i in range(pairs):
        for v in spec.variants if i % 2 == 0 else spec.variants[::-1]:
            if "error" in out.get(v, {}):
                continue
            cmd = ["--case", case, "--variant", v, "--repeats", str(PROCESS_SAMPLES), "--target", str(target)]
            r = _subprocess(cmd, args, model_file, spec.process_env[v])
            if "error" in r:
                out[v] = r
                continue
            seconds[v].append(median(r["seconds"]))
            out.setdefault(v, r)
    for v in spec.variants:
        if "error" not in out.get(v, {"error": "not run"}):
            out[v] = {**out[v], "seconds": seconds[v], "processes": len(seconds[v])}
    a, b = spec.variants
    ok = all("error" not in out.get(v, {"error": ""}) for v in (a, b))
    ratios = [ta / tb for ta, tb in zip(seconds[a], seconds[b])] if ok else []
    return {"variants": {v: out.get(v, {"error": "not run"}) for v in spec.variants}, "ratios": ratios}


def fmt_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


HEADER = [
    "case",
    "variant",
    "s/run",
    "images/s",
    "peak MiB",
    "GFLOP/s",
    "% ceil",
    "Δresult",
    "speedup",
    "spread",
    "verdict",
    "samples",
]


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cases import CASES, allowed_delta, train_digits_model

    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small batches and example counts (a smoke run)")
    p.add_argument(
        "--pairs", type=int, default=None, help="timed pairs of the short rows (default 7; --quick: 5; at least 5)"
    )
    p.add_argument(
        "--long-pairs",
        type=int,
        default=3,
        help="timed pairs of the rows whose runs take seconds (default 3, one run per sample)",
    )
    p.add_argument(
        "--target",
        type=float,
        default=None,
        help="seconds per timed sample of a short row: short runs repeat within it (default 0.2; --quick: 0.05)",
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
    if args.pairs is None:
        args.pairs = 5 if args.quick else 7
    if args.pairs < 5:
        p.error("--pairs: short rows need at least 5 timed pairs")
    if args.long_pairs < 1:
        p.error("--long-pairs must be at least 1")
    if args.target is None:
        args.target = 0.05 if args.quick else 0.2
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

    started = time.perf_counter()
    lines = [f"machine: {machine(device, args.threads)}"]
    print(lines[0], flush=True)
    ceilings = measure_ceilings(device, args.quick)
    print(describe_ceilings(ceilings, device, args.quick) + " [start of the run]", flush=True)
    lines.append(
        f"method: per variant an untimed first run (result, peak memory), then {args.pairs} interleaved "
        f"pairs per short row (samples of ~{args.target:g} s), {args.long_pairs} per long row (one run per "
        "sample); s/run = median; speedup = median of the per-pair ratios; spread = their IQR from 5 "
        "pairs, else their range; verdict from the spread vs 1.0 ± 2%"
    )
    print(lines[-1], flush=True)

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

    rows: list[dict] = []  # per table row: its cells, and for % ceil its GFLOP/s and precision
    configs = []
    failures: list[str] = []
    print("\n" + fmt_row(HEADER) + "\n" + fmt_row(["---"] * len(HEADER)), flush=True)

    def emit(cells: list[str], gflops: float | None = None, precision: str = "float32") -> None:
        row = {"cells": cells, "gflops": gflops, "precision": precision}
        row["printed"] = fmt_row(render(row, ceilings))
        rows.append(row)
        print(row["printed"], flush=True)

    f32 = ceilings["float32"]
    for name in names:
        case = CASES[name]
        # before every case the float32 ceiling is re-measured at its best size so far and the
        # best kept: a single measurement can land in a busy moment of a shared machine
        f32.measure(device, (f32.best,), repeats=2)
        configs.append(
            f"- `{name}` ({case.group}): {case.config}"
            + (f" [--quick: {case.quick_config}]" if args.quick and case.quick_config else "")
        )
        blank = [""] * (len(HEADER) - 3)
        if case.cuda_only and device.type != "cuda":
            emit([name, "n/a", *blank, "CUDA only: not run on CPU"])
            continue
        if case.needs_bf16 and not bf16_native(device):
            emit([name, "n/a", *blank, f"skipped: no native bf16 ({no_bf16_reason(device)})"])
            continue
        if case.requires:
            try:
                importlib.import_module(case.requires)
            except ImportError as err:
                emit([name, "n/a", *blank, f"unavailable: {case.requires} does not import ({err})"])
                continue
        long_row = case.heavy or case.single_run
        pairs = args.long_pairs if long_row else args.pairs
        timing = run_case(name, args, pairs, long_row, model_file)
        results = timing["variants"]
        ratios = timing["ratios"]
        a, b = case.variants
        for variant in case.variants:
            r = results[variant]
            if "error" in r:
                emit([name, variant, *blank, f"FAILED: {r['error'][:300]}"])
                failures.append(f"{name} {variant}: did not run ({r['error'][:300]})")
                continue
            peak = r["peak_mib"]
            s = median(r["seconds"])
            gflops = r["flops"] / s / 1e9 if r["flops"] is not None else None
            precision = "bfloat16" if r["amp"] and "bfloat16" in ceilings else "float32"
            n = len(r["seconds"])
            samples = f"{n} x {r['inner']} runs" if r["inner"] > 1 else f"{n} runs" + (" (long)" if long_row else "")
            if r.get("processes"):  # per-process rows: each sample the median of a fresh process's
                runs = f" x {r['inner']} runs" if r["inner"] > 1 else ""
                samples = f"{n} processes x {PROCESS_SAMPLES} samples{runs}"
            cells = [
                name,
                variant,
                f"{s:.4g}",
                f"{r['images'] / s:.1f}",
                "-" if peak is None else f"{peak:.0f}",
                "-" if gflops is None else f"{gflops:.1f}",
                "",  # % ceil, rendered against the ceiling of the row's precision
                "",
                "",
                "",
                "",
                samples,
            ]
            base = results.get(a)
            if variant == b and base and "error" not in base:
                cells[7] = f"{abs(r['result'] - base['result']):.2g}" if case.same_result else "n/a"
                limit = allowed_delta(case, base, r)
                if case.same_result and not abs(r["result"] - base["result"]) <= limit:  # NaN fails too
                    cells[7] += f" MISMATCH (> {limit:.2g})"
                    failures.append(
                        f"{name}: result {r['result']!r} ({variant}) vs {base['result']!r} "
                        f"({a}), |Δ| beyond the allowed {limit:.2g}"
                    )
                if ratios:
                    lo, hi, kind = spread(ratios)
                    cells[8] = f"{median(ratios):.2f}x"
                    cells[9] = f"{kind} {lo:.2f}-{hi:.2f}"
                    cells[10] = verdict(ratios)
            emit(cells, gflops, precision)
        # the bf16 ceiling, where there is one, gets the same second chance
        if "bfloat16" in ceilings:
            ceilings["bfloat16"].measure(device, (ceilings["bfloat16"].best,), repeats=2)

    # the end: every size once more, the best of the run kept; the table is rendered against it
    for c in ceilings.values():
        c.measure(device, ceiling_kernels(device, args.quick), repeats=2)
    final = describe_ceilings(ceilings, device, args.quick)
    lines.append(final)
    table = [fmt_row(HEADER), fmt_row(["---"] * len(HEADER))] + [fmt_row(render(r, ceilings)) for r in rows]
    over = [
        f"{r['cells'][0]} {r['cells'][1]} ({r['gflops']:.0f} GFLOP/s)"
        for r in rows
        if r["gflops"] is not None and r["gflops"] > ceilings[r["precision"]].gflops
    ]
    notes = []
    if over:
        notes.append(
            "WARNING: rows above the measured ceiling of their precision (a FLOP count or the ceiling "
            "is wrong): " + ", ".join(over)
        )
    elapsed = f"run time: {time.perf_counter() - started:.0f} s"
    lines.append(elapsed)
    live = [fmt_row(HEADER), fmt_row(["---"] * len(HEADER))] + [r["printed"] for r in rows]
    again = (
        "(the final ceiling leaves the table above as it is)"
        if table == live
        else "The table with % ceil against the run's best ceiling:\n\n" + "\n".join(table)
    )
    print(
        "\n"
        + final
        + "\n"
        + elapsed
        + "\n\n"
        + again
        + ("\n\n" + "\n".join(notes) if notes else "")
        + "\n\nConfigurations:\n"
        + "\n".join(configs),
        flush=True,
    )
    if args.markdown:
        Path(args.markdown).write_text(
            "\n\n".join(lines)
            + "\n\n"
            + "\n".join(table)
            + ("\n\n" + "\n".join(notes) if notes else "")
            + "\n\nConfigurations:\n\n"
            + "\n".join(configs)
            + "\n"
        )
    tmp.cleanup()
    if failures:
        print("\nbenchmark FAILED:\n" + "\n".join(f"- {f}" for f in failures), file=sys.stderr, flush=True)
        return 1
    return 0


def render(row: dict, ceilings: dict[str, Ceiling]) -> list[str]:
    """A table row's cells with % ceil against the current ceiling of the row's precision."""
    cells = list(row["cells"])
    if row["gflops"] is not None:
        cells[6] = f"{100 * row['gflops'] / ceilings[row['precision']].gflops:.1f}%"
    elif len(cells) > 6 and cells[5] == "-":
        cells[6] = "-"
    return cells


if __name__ == "__main__":
    sys.exit(main())
