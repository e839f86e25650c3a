"""Atomic file writes and the project's JSON format, in one place.

Every file the pipeline writes goes through a temporary file in the destination's folder
(``.<name>.<pid>.<random>.tmp``, so :func:`rnas.checkpoint.clean_stale_temporaries` finds one a
killed write left behind) that is then renamed over the destination (``os.replace``, atomic
on POSIX): a reader never sees a half-written file under the real name. The temporary is
removed when the write fails. It is created with the usual permissions (0666 less the umask,
as ``open`` would). ``fsync=True`` flushes the data to disk before the rename, for files that
must survive a power loss (checkpoints, stage outputs). A SIGTERM arriving during the write is
raised when the file is in place (:func:`rnas.signals.deferred_termination`).

JSON (:func:`write_json`) is written with a one-space indent, keys in insertion order and a
final newline; :func:`read_json` reads it back. Text is UTF-8.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rnas.signals import deferred_termination

__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_text", "read_json", "write_json"]


def atomic_save(path: str | Path, writer: Callable[[IO[bytes]], Any], *, fsync: bool = True) -> Path:
    """Write ``path`` atomically: ``writer(fh)`` fills a binary file object (``torch.save(obj, fh)``,
    ``fig.savefig(fh, format="png")``, ``fh.write(data)``), then the temporary replaces ``path``.
    The folder is created if needed; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with deferred_termination():  # a SIGTERM inside the write is raised once the file is in place
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_save`)."""
    return atomic_save(path, lambda fh: fh.write(data), fsync=fsync)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_save`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_json(path: str | Path, data: Any, *, fsync: bool = True) -> Path:
    """Write ``data`` as JSON (indent 1, keys in insertion order, final newline) atomically."""
    return atomic_write_text(path, json.dumps(data, indent=1) + "\n", fsync=fsync)


def read_json(path: str | Path) -> Any:
    """The JSON document in ``path``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
