"""Checkpoints: atomic writes, safe loads, corruption detection, model rebuilding.

Every file is written through a temporary file in the same folder (flush, fsync, rename),
so a kill mid-write never leaves a half-written checkpoint under the real name. Loading
uses ``torch.load(weights_only=True)``: no pickle payload is ever executed. Resumable
stage state keeps two generations (``last.pt`` and ``prev.pt``); a corrupt ``last.pt``
is reported and ``prev.pt`` is used; when neither is readable the stage stops with an error
naming the folder and its files (never a silent restart from epoch 0) and leaves them as they
are.

``build_model(model_args)`` rebuilds any network the project saves from the arguments stored
in its checkpoint (a registry keyed by ``model_args["kind"]``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnas.io import atomic_save

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not one of ours."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically, fsynced (:func:`rnas.io.atomic_save`)."""
    atomic_save(path, lambda fh: torch.save(obj, fh))


def load_checked(path: str | Path, required: tuple[str, ...] = (), map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` and check it has the ``required`` keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (truncated write?)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt/unsafe files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {first})") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks keys {missing}")
    return obj


def clean_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove temporaries left by a write that was killed; returns what was removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class ResumeState:
    """Two-generation resumable state of one stage (``last.pt``, ``prev.pt``) in ``folder``."""

    REQUIRED = ("epoch", "params_hash")

    def __init__(self, folder: str | Path, params_hash: str):
        self.folder = Path(folder)
        self.params_hash = params_hash
        self.loaded_from: Path | None = None  # the file the last load() returned

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def prev(self) -> Path:
        return self.folder / "prev.pt"

    def save(self, state: dict) -> None:
        state = dict(state, params_hash=self.params_hash)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.last.exists():
            os.replace(self.last, self.prev)
        save_atomic(state, self.last)

    def load(self) -> dict | None:
        """The newest good state, or None when the folder holds no checkpoint (a fresh start).

        A corrupt ``last.pt`` falls back to ``prev.pt`` (logged). Checkpoint files none of which
        is readable are an error, not a silent restart from epoch 0: the files are left as they
        are for a person to look at. A params-hash mismatch is an error too. ``loaded_from``
        names the file the returned state came from.
        """
        self.loaded_from = None
        for tmp in clean_stale_temporaries(self.folder):
            log.warning("removed stale temporary %s from an interrupted write", tmp)
        present = [path for path in (self.last, self.prev) if path.exists()]
        errors = []
        for path in present:
            try:
                state = load_checked(path, self.REQUIRED)
            except CheckpointError as err:
                errors.append(str(err))
                if path == self.last and self.prev in present:
                    log.error("%s; falling back to the previous checkpoint %s", err, self.prev.name)
                continue
            if state["params_hash"] != self.params_hash:
                raise CheckpointError(
                    f"{path}: written with other params (hash {state['params_hash']}, now {self.params_hash}); "
                    f"delete {self.folder} to start over"
                )
            self.loaded_from = path
            return state
        if present:
            raise CheckpointError(
                f"{self.folder}: no readable checkpoint among {', '.join(p.name for p in present)} "
                f"({'; '.join(errors)}); not starting over silently. The files are left untouched: "
                f"restore a good checkpoint there, or delete {self.folder} to start over"
            )
        return None

    def clear(self) -> None:
        for path in (self.last, self.prev):
            path.unlink(missing_ok=True)


def log_resume(desc: str, start: int, epochs: int, resume: ResumeState) -> None:
    """One INFO line when a stage resumes: the checkpoint's epoch, its file and what is left."""
    todo = f"epochs {start + 1}-{epochs} to run" if start < epochs else "no epoch left to run"
    log.info("%s: resuming from epoch %d/%d (checkpoint %s); %s", desc, start, epochs, resume.loaded_from, todo)


def log_steps_run(desc: str, steps: int, kind: str, start: int, epochs: int) -> None:
    """How many steps this process ran (after a resume: only the remaining epochs')."""
    span = f"epochs {start + 1}-{epochs} of {epochs}" if start < epochs else "no epoch"
    log.info("%s: ran %d %s steps in this process (%s)", desc, steps, kind, span)


# -- model registry ------------------------------------------------------------------


def _build_cell(args: dict) -> nn.Module:
    from rnas.space.network import CellNetwork

    return CellNetwork(**{k: v for k, v in args.items() if k != "kind"})


def _build_width(args: dict) -> nn.Module:
    from rnas.space.width import build_width_network

    return build_width_network(args)


def _build_family(args: dict) -> nn.Module:
    from rnas.models import build_model as build_family

    return build_family(**{k: v for k, v in args.items() if k != "kind"})


MODEL_KINDS: dict[str, Callable[[dict], nn.Module]] = {
    "cell": _build_cell,
    "family": _build_family,
    "width": _build_width,
}


def build_model(model_args: dict) -> nn.Module:
    kind = model_args.get("kind")
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"unknown model kind {kind!r}; known: {', '.join(MODEL_KINDS)}")
    return MODEL_KINDS[kind](model_args)


def save_model(path: str | Path, model: nn.Module, model_args: dict, extra: dict | None = None) -> None:
    save_atomic({"model_args": model_args, "state_dict": model.state_dict(), **(extra or {})}, path)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    ckpt = load_checked(path, ("model_args", "state_dict"))
    model = build_model(ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the stored model_args ({str(err).splitlines()[0]})") from err
    return model.to(device).eval(), ckpt
