"""When did a search decide? The epoch from which its derived architecture stopped changing.

A search *decides* when the discrete architecture it would return (the argmax genotype of a
cell-space search, the widths of a width search, LRNAS's greedy selection) stays the same over
the last quarter of its epochs. Choices beside the network (RNAS-CL's tutors, see
``SearchMethod.side_decisions``) get the same summary of their own and do not count.
:func:`stable_from` finds the first epoch of the final unchanged stretch; :func:`is_decided`
applies the last-quarter rule; :func:`late_changes` names the entries of the decision (an op, an
input, a width) that still moved in that window, so an undecided search shows how far from decided
it is (one near-tie or the whole cell). The search loop records the per-epoch decision (and its
digest) and the figures in ``search.json``; the report shows them beside the α entropy.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "decision_digest",
    "decision_entries",
    "is_decided",
    "last_quarter_start",
    "late_changes",
    "stable_from",
    "stability_summary",
]


def decision_digest(decision: Any) -> str:
    """A short, order-independent digest of a JSON-able decision (dict keys sorted)."""
    text = json.dumps(decision, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def decision_entries(decision: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON-able decision as its scalar entries by path: dict keys (sorted) after a dot, list
    positions in brackets. A DARTS genotype ``{"normal": [["sep_conv_3x3", 0], ...], ...}`` gives
    ``normal[0][0]`` (the op of the cell's first kept edge) and ``normal[0][1]`` (its input)."""
    if isinstance(decision, dict):
        out: dict[str, Any] = {}
        for key in sorted(decision, key=str):
            out.update(decision_entries(decision[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(decision, list | tuple):
        out = {}
        for i, item in enumerate(decision):
            out.update(decision_entries(item, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: decision}


def late_changes(values: Sequence[Any], epochs: int, fraction: float = 0.25) -> dict[str, Any]:
    """The entries (:func:`decision_entries`) of the per-epoch decisions ``values`` that differ
    from the final decision in some epoch of the window :func:`is_decided` checks (the epoch
    before the last ``fraction`` of ``epochs`` and every epoch in it): ``late_changed``, their
    paths, empty exactly when the search decided; ``decision_entries``, how many the decision has.
    Empty dict when there are fewer than two decisions."""
    if len(values) < 2:
        return {}
    final = values[-1]
    first = max(0, last_quarter_start(epochs, fraction) - 1)
    changed: dict[str, None] = {}  # insertion-ordered
    for value in values[first:-1]:
        changed.update(dict.fromkeys(changed_entries(value, final)))
    order = {path: i for i, path in enumerate(decision_entries(final))}
    return {"late_changed": sorted(changed, key=lambda p: order.get(p, len(order))), "decision_entries": len(order)}


def changed_entries(value: Any, final: Any) -> list[str]:
    """The entries (:func:`decision_entries`) where decision ``value`` differs from ``final``: the
    final decision's paths in its order, then paths only ``value`` has."""
    a, b = decision_entries(value), decision_entries(final)
    missing = object()
    return [p for p in [*b, *(p for p in a if p not in b)] if a.get(p, missing) != b.get(p, missing)]


def stable_from(decisions: Sequence[str]) -> int | None:
    """First epoch (0-based) from which every decision equals the last one; None if empty."""
    if not decisions:
        return None
    last = decisions[-1]
    epoch = len(decisions) - 1
    while epoch > 0 and decisions[epoch - 1] == last:
        epoch -= 1
    return epoch


def is_decided(stable_epoch: int | None, epochs: int, fraction: float = 0.25) -> bool:
    """True when the decision did not change over the last ``fraction`` of ``epochs``.

    The last quarter of 20 epochs is epochs 15..19 (0-based): the decision held at the end of
    epoch 14 must survive all five, so a search stable from epoch 14 or earlier is decided. A
    single-epoch search never is (there is no change to look for).
    """
    if stable_epoch is None or epochs < 2:
        return False
    return stable_epoch <= last_quarter_start(epochs, fraction) - 1


def last_quarter_start(epochs: int, fraction: float = 0.25) -> int:
    """First epoch (0-based) of the window :func:`is_decided` checks: the last ``fraction`` of
    ``epochs``, at least one epoch (20 epochs: 15)."""
    return epochs - max(1, math.ceil(fraction * epochs))


def stability_summary(decisions: Sequence[str], epochs: int, fraction: float = 0.25) -> dict[str, Any]:
    """``stable_from_epoch`` (1-based for people, None if no epoch ran) and ``decided``."""
    s = stable_from(decisions)
    return {
        "stable_from_epoch": None if s is None else s + 1,
        "decided": is_decided(s, epochs, fraction),
        "decision_changes": sum(1 for a, b in zip(decisions, decisions[1:]) if a != b),
    }
