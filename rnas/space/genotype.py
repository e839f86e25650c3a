"""Genotypes of the DARTS cell space as JSON files (docs/design.md §4).

A genotype is data, never source code: ``{"normal": [[op, input], ...], "normal_concat": [...],
"reduce": [...], "reduce_concat": [...]}``. Pairs 2k and 2k+1 are the two inputs of node k;
input 0 and 1 are the cell inputs, 2.. the earlier nodes. ``validate_genotype`` is the
schema check every reader goes through (known ops, valid indices, two inputs per node).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnas.io import write_json
from rnas.space.ops import PRIMITIVES

Edge = tuple[str, int]


class GenotypeError(ValueError):
    """A genotype file or object breaks the schema."""


@dataclass(frozen=True)
class Genotype:
    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    @property
    def nodes(self) -> int:
        return len(self.normal) // 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }


def validate_genotype(data: Any) -> Genotype:
    """Check a JSON-decoded genotype and return it as a :class:`Genotype`."""
    if not isinstance(data, dict):
        raise GenotypeError(f"a genotype is a JSON object, got {type(data).__name__}")
    expected = {"normal", "normal_concat", "reduce", "reduce_concat"}
    extra, missing = set(data) - expected, expected - set(data)
    if missing or extra:
        raise GenotypeError(
            f"genotype keys must be {sorted(expected)}; missing {sorted(missing)}, unknown {sorted(extra)}"
        )
    cells = {}
    for kind in ("normal", "reduce"):
        edges = data[kind]
        if not isinstance(edges, list) or not edges or len(edges) % 2:
            raise GenotypeError(f"{kind}: expected a non-empty list of [op, input] pairs, two per node")
        parsed = []
        for j, pair in enumerate(edges):
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not isinstance(pair[0], str)
                or isinstance(pair[1], bool)
                or not isinstance(pair[1], int)
            ):
                raise GenotypeError(f"{kind}[{j}]: expected [op_name, input_index], got {pair!r}")
            op, src = pair
            if op not in PRIMITIVES:
                raise GenotypeError(f"{kind}[{j}]: unknown op {op!r}; known ops: {', '.join(PRIMITIVES)}")
            node = j // 2
            if not 0 <= src < node + 2:
                raise GenotypeError(f"{kind}[{j}]: input {src} is invalid for node {node} (allowed 0..{node + 1})")
            parsed.append((op, src))
        concat = data[f"{kind}_concat"]
        n_nodes = len(edges) // 2
        if (
            not isinstance(concat, list)
            or not concat
            or any(isinstance(c, bool) or not isinstance(c, int) or not 2 <= c < n_nodes + 2 for c in concat)
            or len(set(concat)) != len(concat)
        ):
            raise GenotypeError(f"{kind}_concat: expected distinct node indices in 2..{n_nodes + 1}, got {concat!r}")
        cells[kind] = (tuple(parsed), tuple(concat))
    if len(cells["normal"][0]) != len(cells["reduce"][0]):
        raise GenotypeError("normal and reduce cells must have the same number of nodes")
    return Genotype(cells["normal"][0], cells["normal"][1], cells["reduce"][0], cells["reduce"][1])


def load_genotype(path: str | Path) -> Genotype:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise GenotypeError(f"{path}: not valid JSON ({err})") from None
    try:
        return validate_genotype(data)
    except GenotypeError as err:
        raise GenotypeError(f"{path}: {err}") from None


#: The old name of :func:`rnas.io.write_json` (benchmarks/paper_smoke.py still imports it).
write_json_atomic = write_json


def save_genotype(genotype: Genotype, path: str | Path) -> None:
    write_json(path, genotype.to_dict())


def derive_genotype(
    alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor, nodes: int, primitives: tuple[str, ...] = PRIMITIVES
) -> Genotype:
    """DARTS derivation: per node keep the two incoming edges whose strongest non-``none``
    op weighs most, and that op. ``alpha_*``: (n_edges, n_ops) weights (any monotone
    transform of α, e.g. softmax)."""
    none = primitives.index("none") if "none" in primitives else None

    def parse(weights: torch.Tensor) -> tuple[Edge, ...]:
        weights = weights.detach().cpu()
        gene: list[Edge] = []
        start = 0
        for node in range(nodes):
            n_in = node + 2
            w = weights[start : start + n_in]
            scored = []
            for src in range(n_in):
                best_op, best = None, -float("inf")
                for k in range(w.shape[1]):
                    if k != none and float(w[src, k]) > best:
                        best_op, best = k, float(w[src, k])
                scored.append((best, src, best_op))
            scored.sort(key=lambda t: (-t[0], t[1]))
            for _, src, k in sorted(scored[:2], key=lambda t: t[1]):
                gene.append((primitives[k], src))
            start += n_in
        return tuple(gene)

    concat = tuple(range(2, nodes + 2))
    return Genotype(parse(alpha_normal), concat, parse(alpha_reduce), concat)


def random_genotype(nodes: int, generator: torch.Generator) -> Genotype:
    """A uniformly random genotype: per node two distinct inputs, each with a non-``none`` op."""
    ops = [p for p in PRIMITIVES if p != "none"]

    def cell() -> tuple[Edge, ...]:
        gene: list[Edge] = []
        for node in range(nodes):
            srcs = torch.randperm(node + 2, generator=generator)[:2].sort().values.tolist()
            for src in srcs:
                k = int(torch.randint(len(ops), (1,), generator=generator))
                gene.append((ops[k], int(src)))
        return tuple(gene)

    concat = tuple(range(2, nodes + 2))
    return Genotype(cell(), concat, cell(), concat)


def num_edges(nodes: int) -> int:
    """Edges of a cell with ``nodes`` intermediate nodes (node i has i + 2 inputs); also the index
    of node ``nodes``'s first edge, as α's rows are numbered node by node."""
    return sum(i + 2 for i in range(nodes))
