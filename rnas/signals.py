"""SIGTERM as an exception, and blocks it must not interrupt.

A stage turns SIGTERM (Snakemake or SLURM cancelling a job) into :class:`Terminated`, raised in
the main thread, so the stage can mark its MLflow run KILLED and exit 143
(:func:`install_sigterm_handler`, called by ``rnas.cli``). Some work must not be cut half-way:
an MLflow write (its SQLite transaction would stay open and the database locked) or a file write
(``torch.save``'s zip writer fails on a stream cut mid-record, and that error replaced
``Terminated``: the stage exited 1). Inside :func:`deferred_termination` a SIGTERM is remembered
and raised when the block ends. This module imports nothing of the project, so the lowest
layers (``rnas.io``) can use it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

__all__ = ["Terminated", "deferred_termination", "install_sigterm_handler"]


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM."""


_deferring = 0  # depth of deferred_termination() blocks
_deferred_signal: int | None = None


def install_sigterm_handler() -> None:
    def _handler(signum, frame):  # noqa: ARG001
        global _deferred_signal
        if _deferring:
            _deferred_signal = signum
            return
        raise Terminated(f"received signal {signum}")

    signal.signal(signal.SIGTERM, _handler)


@contextlib.contextmanager
def deferred_termination() -> Iterator[None]:
    """SIGTERM received inside the block raises :class:`Terminated` when the block ends (see the
    module docstring). Blocks nest; only the outermost raises. Without the handler installed
    (:func:`install_sigterm_handler`) it changes nothing."""
    global _deferring, _deferred_signal
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _deferred_signal is not None:
            signum, _deferred_signal = _deferred_signal, None
            raise Terminated(f"received signal {signum}")
