"""Process-wide settings chosen once per stage: threads, determinism, seeds, device, the C
heap's policy; and how a stage reports progress (an INFO line per epoch, bars only on a terminal)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None, system: str | None = None) -> bool:
    """Whether this CPU computes bf16 products in hardware: on Linux, every ``flags`` line of
    /proc/cpuinfo (``cpuinfo``: that text, for tests) names ``avx512_bf16`` (AVX512-BF16) or
    ``amx_bf16`` (AMX); False on other systems, when the file cannot be read or has no flags.
    Read, never assumed: without these instructions bf16 is emulated and slower than float32."""
    if (platform.system() if system is None else system) != "Linux":
        return False
    if cpuinfo is None:
        return _proc_cpuinfo_has_bf16()
    flag_lines = [
        line.split(":", 1)[1].split()
        for line in cpuinfo.splitlines()
        if line.split(":", 1)[0].strip() == "flags" and ":" in line
    ]
    return bool(flag_lines) and all(any(f in flags for f in BF16_CPU_FLAGS) for flags in flag_lines)


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> str | None:
    """The text of /proc/cpuinfo, read once per process; None where it cannot be read."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _proc_cpuinfo_has_bf16() -> bool:
    text = _proc_cpuinfo()
    return text is not None and cpu_has_native_bf16(text, "Linux")


def cpu_vendor(cpuinfo: str | None = None) -> str:
    """The ``vendor_id`` of /proc/cpuinfo (``GenuineIntel``, ``AuthenticAMD``, ...; ``cpuinfo``:
    that text, for tests); "" where it cannot be read (another system, no such line)."""
    if cpuinfo is None:
        return _proc_cpu_vendor()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return ""


@functools.lru_cache(maxsize=1)
def _proc_cpu_vendor() -> str:  # cached: PointwiseConv2d asks on every forward
    return cpu_vendor(_proc_cpuinfo() or "")


# -- the C heap ---------------------------------------------------------------------------------
# glibc's malloc serves a request of at least its mmap threshold with fresh pages from the OS and
# unmaps them when the block is freed; the threshold starts at 128 KiB and rises to the size of
# each such block freed (to 32 MiB at most), and the heap's free top goes back to the OS once it
# is more than twice that. A training, search or attack loop frees and allocates the same
# activations every step, so under that policy each step can fault its activations' pages in
# again, zero-filled by the kernel: system time, and timings that depend on how fragmented the
# machine's memory is (the AMD EPYC of session 16: 868 page faults per step of a 4 MiB depthwise
# conv + batch norm, 10 under the fixed policy below; 14% of the digits evaluations' CPU time was
# system time). Fixed thresholds keep freed blocks under 32 MiB in the heap for the next step.
MALLOC_ENV = "RNAS_MALLOC"  # reuse (default) | glibc: glibc's own policy (for measuring it)
MALLOC_POLICIES = ("reuse", "glibc")
M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit (HEAP_MAX_SIZE / 2): larger blocks are still mapped
TRIM_THRESHOLD = 2**30  # a free heap top above 1 GiB still goes back to the OS


def configure_allocator(policy: str | None = None) -> bool:
    """Set the C heap's policy of this process (``policy``, default: the ``RNAS_MALLOC``
    environment variable, else ``reuse``): ``reuse`` fixes glibc's mmap threshold at 32 MiB and
    its trim threshold at 1 GiB, so the blocks a step frees serve the next step instead of going
    back to the OS (see the comment above); ``glibc`` changes nothing (a process that has set
    ``reuse`` keeps it: glibc's thresholds do not become dynamic again). Returns whether this
    call set the fixed policy; False on a C library without ``mallopt`` (macOS, musl), where
    nothing changes. Where a block lives changes no computed value: ``make run`` gives the same
    files byte for byte under both policies."""
    policy = os.environ.get(MALLOC_ENV, "reuse") if policy is None else policy
    if policy not in MALLOC_POLICIES:
        raise ValueError(f"{MALLOC_ENV}={policy!r}: expected one of {', '.join(MALLOC_POLICIES)}")
    if policy == "glibc" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


@dataclass(frozen=True)
class Acceleration:
    """Speed options of this process (params ``pipeline.amp`` / ``pipeline.compile``).

    ``amp``: the trainer's steps (the training perturbation, PGD included, and the loss) and the
    search steps' forward passes run under ``torch.autocast(device, dtype=torch.bfloat16)``
    (:func:`autocast`): on CUDA, and on a CPU with native bf16 (:func:`cpu_has_native_bf16`).
    bf16 has float32's exponent range, so no loss scaling; parameters, gradients, optimizer
    steps, the unrolled (second-order) DARTS step, validation and evaluation stay float32.
    ``compile`` (CUDA only): :func:`place_model` calls ``module.compile()`` (``torch.compile`` in
    place, so ``state_dict`` keys and checkpoints are unchanged)."""

    amp: bool = False
    compile: bool = False


_ACCELERATION = Acceleration()


def amp_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively on ``device``: CUDA, or a CPU with native bf16."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def configure_acceleration(amp: bool, compile: bool, device: torch.device) -> Acceleration:
    """Set the options for this process. ``amp`` needs CUDA or a CPU with native bf16 and
    ``compile`` needs CUDA; otherwise each is ignored with a warning saying why (float32,
    eager), never silently."""
    global _ACCELERATION
    if amp and not amp_supported(device):
        why = (
            "the CPU has no native bf16 (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo)"
            if device.type == "cpu"
            else f"the device is {device.type}"
        )
        log.warning(
            "pipeline.amp: bf16 autocast needs CUDA or a CPU with native bf16; %s, so it is ignored (float32)", why
        )
        amp = False
    elif amp and device.type == "cpu":
        log.info("pipeline.amp: bf16 autocast on the CPU (native bf16); evaluation stays float32")
    if compile and device.type != "cuda":
        log.warning("pipeline.compile: CUDA only; the device is %s, so it is ignored (eager mode)", device.type)
        compile = False
    _ACCELERATION = Acceleration(amp=amp, compile=compile)
    return _ACCELERATION


def acceleration() -> Acceleration:
    return _ACCELERATION


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``pipeline.amp`` is on and the device runs it natively
    (:func:`amp_supported`), else a no-op context. The one place amp is applied: the trainer's
    step and the search steps enter it; evaluation never does."""
    if _ACCELERATION.amp and amp_supported(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("pipeline.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


def setup_runtime(
    threads: int, deterministic: bool, device: str, amp: bool = False, compile: bool = False
) -> torch.device:
    """Fix threads and deterministic algorithms so both runners and resumed runs give the same
    files; set the speed options (:func:`configure_acceleration`) and the C heap's policy
    (:func:`configure_allocator`)."""
    configure_allocator()
    torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if compile:
            torch.use_deterministic_algorithms(True, warn_only=True)  # also sets inductor's flag
        else:
            # The same switch without importing torch._inductor (~1 s of every stage's start-up),
            # whose flag only matters to torch.compile'd code.
            torch._C._set_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also NaN-fills every new tensor's memory, a guard against kernels that
        # read memory they did not write: one more write of every activation and gradient, 2-4% of
        # a digits search step (session 19). Every kernel here writes what it returns: the same
        # gradients bit for bit without it, and a whole `make run` wrote the same files.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    chosen = choose_device(device)
    configure_acceleration(amp, compile, chosen)
    return chosen


def place_model(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """Move a model to the stage's device, in NHWC memory format when asked (faster convs),
    and compile it in place when ``pipeline.compile`` is on (CUDA only)."""
    if channels_last:
        model = model.to(device=device, memory_format=torch.channels_last)
    else:
        model = model.to(device)
    if _ACCELERATION.compile and device.type == "cuda":
        model.compile()
    return model


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def capture_rng(generator: torch.Generator) -> dict:
    """RNG states of python, numpy, torch and the stage's generator, as tensors and lists
    only, so the checkpoint loads with ``torch.load(weights_only=True)``."""
    _name, keys, pos, _has_gauss, _cached = np.random.get_state()
    state = {
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "python_rng": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(("MT19937", state["numpy_rng"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python_rng"]), None))
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def show_progress(requested: bool, stream=None) -> bool:
    """Whether to draw progress bars: ``pipeline.progress`` is on *and* ``stream`` (stderr) is a
    terminal. Under Snakemake and dvc stderr is a log file, where a bar's carriage-return
    redraws leave fragments; there the INFO line per epoch (:func:`log_epoch`) is the progress."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(requested) and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _metric_text(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def log_epoch(desc: str, epoch: int, epochs: int, metrics: Mapping[str, float], seconds: float) -> None:
    """One INFO line for a finished epoch, its metrics under the names logged to MLflow:
    ``teacher epoch 3/30: train_loss 0.8123, train_acc 0.7031, val_clean_acc 0.8, val_robust_acc
    0.52, lr 0.0976, 12.4 s``."""
    parts = [
        f"{k} {_metric_text(v)}"
        for k, v in metrics.items()
        if k != "seconds" and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    log.info("%s epoch %d/%d: %s, %.1f s", desc, epoch + 1, epochs, ", ".join(parts), seconds)
