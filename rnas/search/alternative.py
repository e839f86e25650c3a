"""The cell an undecided search left open: what it had chosen last before its final cell.

A search is undecided when its derived cell changed in the last quarter of its epochs
(:mod:`rnas.search.stability`), mostly by one entry on a near-tie (docs/methods/darts.md). The
*alternative cell* is the most recent per-epoch cell that differs from the final one, derived
from the softmax(α) the search kept after each epoch (``alphas.json``'s ``per_epoch``, scaled by
PC-DARTS's edge weights where it has them) with the same derivation as the final cell
(:func:`rnas.space.genotype.derive_genotype`). Retrained and evaluated with the same recipe and
protocol (``rnas alternative``), it measures how much the entry left open moves the result.
"""

from __future__ import annotations

import torch

from rnas.search.stability import changed_entries
from rnas.space.genotype import Genotype, derive_genotype


def _weights(snapshot: dict, kind: str) -> torch.Tensor:
    rows = torch.tensor(snapshot[kind], dtype=torch.float64)
    edges = snapshot.get(f"{kind}_edges")
    return rows * torch.tensor(edges, dtype=torch.float64)[:, None] if edges else rows


def snapshot_genotype(snapshot: dict, primitives: tuple[str, ...], nodes: int) -> Genotype:
    """The cell derived from one epoch's snapshot (softmax α per cell type, PC-DARTS edge weights)."""
    return derive_genotype(_weights(snapshot, "normal"), _weights(snapshot, "reduce"), nodes, primitives)


def alternative_cell(genotype: dict, alphas: dict) -> tuple[int, Genotype, list[str]] | None:
    """(1-based epoch, its cell, the genotype entries where it differs from ``genotype``) of the
    most recent epoch whose derived cell differs from the final one, or None when none does.

    Raises ValueError when the per-epoch α cannot stand for the search: missing, or the last
    epoch's derivation is not the final cell (the search's own file, ``genotype.json``)."""
    per_epoch = alphas.get("per_epoch") or []
    primitives = tuple(alphas.get("primitives") or ())
    if not per_epoch or not primitives:
        raise ValueError("alphas.json has no per-epoch α (per_epoch) or no primitives")
    nodes = len(genotype["normal"]) // 2
    cells = [snapshot_genotype(s, primitives, nodes) for s in per_epoch]
    files = [c.to_dict() for c in cells]  # each cell in the file's own JSON form (save_genotype)
    if files[-1] != genotype:
        raise ValueError("the last epoch's α does not derive the search's genotype.json")
    for epoch in range(len(cells) - 1, -1, -1):
        if files[epoch] != genotype:
            return epoch + 1, cells[epoch], changed_entries(files[epoch], genotype)
    return None
