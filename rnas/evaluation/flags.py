"""Per-example results of one evaluation, stored beside ``eval.json`` as ``flags.json``.

Every model is evaluated on the same first ``n_examples`` test examples, so two runs can be
compared *paired* (McNemar per seed, paired intervals over seeds: :mod:`rnas.report.stats`).
The file holds, for every flag the protocol computed (``clean``, each attack, ``robust`` -- the
worst case --, the ε sweep, ``certified`` ...), one character per example: ``1`` when the
example was classified correctly (survived the attack, was certified), ``0`` otherwise. Numeric
per-example values (e.g. a certified radius) go under ``values`` as lists.

Format (version 1)::

    {"version": 1, "n_examples": 360, "flags": {"clean": "0110...", ...},
     "values": {"certified_radius": [0.031, ...]}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnas.io import atomic_write_text, read_json

VERSION = 1

__all__ = ["encode_flags", "read_flags", "write_flags"]


def _bits(values: Any) -> str:
    arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values).reshape(-1)
    return "".join("1" if bool(v) else "0" for v in arr)


def encode_flags(flags: Mapping[str, Any], values: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """The JSON document for ``flags`` (name -> bool tensor/array of one value per example)."""
    bits = {name: _bits(f) for name, f in sorted(flags.items())}
    lengths = {len(b) for b in bits.values()}
    if len(lengths) > 1:
        raise ValueError(f"flags cover different numbers of examples: { {k: len(v) for k, v in bits.items()} }")
    n = lengths.pop() if lengths else 0
    doc: dict[str, Any] = {"version": VERSION, "n_examples": n, "flags": bits}
    if values:
        doc["values"] = {}
        for name, vals in sorted(values.items()):
            vals = [float(v) for v in np.asarray(vals, dtype=float).reshape(-1)]
            if len(vals) != n:
                raise ValueError(f"values[{name!r}] has {len(vals)} entries for {n} examples")
            doc["values"][name] = vals
    return doc


def write_flags(path: Path, flags: Mapping[str, Any], values: Mapping[str, Sequence[float]] | None = None) -> Path:
    """Write ``flags.json`` atomically (temporary file, then rename)."""
    return atomic_write_text(path, json.dumps(encode_flags(flags, values), separators=(",", ":")), fsync=False)


def read_flags(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(flags, values)``: bool arrays and float arrays by name; a clear error on a bad file."""
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"{path}: not a version-{VERSION} flags file")
    n = doc["n_examples"]
    flags = {}
    for name, bits in doc["flags"].items():
        if len(bits) != n or set(bits) - {"0", "1"}:
            raise ValueError(f"{path}: flags[{name!r}] is not {n} characters of 0/1")
        flags[name] = np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1")
    values = {name: np.asarray(v, dtype=float) for name, v in doc.get("values", {}).items()}
    return flags, values
