"""Process-wide settings chosen once per stage: threads, determinism, seeds, device; and how a
stage reports progress (an INFO line per epoch, bars only on a terminal)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Acceleration:
    """CUDA-only speed options of this process (params ``pipeline.amp`` / ``pipeline.compile``).

    ``amp``: the trainer's and the search step's forward passes run under
    ``torch.autocast("cuda", dtype=torch.bfloat16)`` (bf16 has float32's exponent range, so no
    loss scaling); backward passes, optimizer steps, validation and evaluation stay float32.
    ``compile``: :func:`place_model` calls ``module.compile()`` (``torch.compile`` in place, so
    ``state_dict`` keys and checkpoints are unchanged)."""

    amp: bool = False
    compile: bool = False


_ACCELERATION = Acceleration()


def configure_acceleration(amp: bool, compile: bool, device: torch.device) -> Acceleration:
    """Switch the CUDA-only options on for this process. On another device they are ignored
    with a warning saying so (float32, eager), never silently."""
    global _ACCELERATION
    asked = [name for name, on in (("pipeline.amp", amp), ("pipeline.compile", compile)) if on]
    if asked and device.type != "cuda":
        log.warning(
            "%s: CUDA only; the device is %s, so it is ignored (float32, eager mode)", " and ".join(asked), device.type
        )
        amp = compile = False
    _ACCELERATION = Acceleration(amp=amp, compile=compile)
    return _ACCELERATION


def acceleration() -> Acceleration:
    return _ACCELERATION


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``pipeline.amp`` is on, else a no-op context."""
    if _ACCELERATION.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
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
    files; set the CUDA-only options (:func:`configure_acceleration`)."""
    torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if compile:
            torch.use_deterministic_algorithms(True, warn_only=True)  # also sets inductor's flag
        else:
            # The same switch without importing torch._inductor (~1 s of every stage's start-up),
            # whose flag only matters to torch.compile'd code.
            torch._C._set_deterministic_algorithms(True, warn_only=True)
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
