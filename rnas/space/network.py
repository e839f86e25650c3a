"""The final network built from a genotype (DARTS ``NetworkCIFAR``, no auxiliary head).

Stem: 3x3 conv to 3·C channels + BN. Then ``layers`` cells; the cells at 1/3 and 2/3 of the
depth are reduction cells (stride 2, channels doubled). Each cell preprocesses its two inputs
to C channels (a FactorizedReduce when the previous cell reduced), applies the genotype's
8 edges and concatenates the chosen nodes. Global average pooling and a linear classifier.
Inputs are in [0, 1]; normalization is the first layer (``Normalize``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rnas.models.normalize import Normalize, normalization_for
from rnas.space.genotype import Genotype, GenotypeError, validate_genotype
from rnas.space.ops import FactorizedReduce, Identity, ReLUConvBN, SharedReLU, make_op
from rnas.space.plan import cell_plan


def cell_normalization(dataset: str | None, input_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The dataset's channel statistics, or mean 0.5 / std 0.5 when no dataset is named."""
    if dataset is None:
        return (0.5,) * input_channels, (0.5,) * input_channels
    return normalization_for(dataset)


def drop_path(x: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep, generator=generator)
    return x / keep * mask


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0)
        edges, concat = (
            (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
        )
        self.concat = tuple(concat)
        self.indices = tuple(src for _, src in edges)
        self.op_names = tuple(op for op, _ in edges)
        self.ops = nn.ModuleList(
            make_op(name, c, 2 if reduction and src < 2 else 1, affine=True) for name, src in edges
        )
        self.multiplier = len(self.concat)
        self.drop_prob = 0.0

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, relus: SharedReLU | None = None) -> torch.Tensor:
        # relus: the network's SharedReLU (ReLU(s0), ReLU(s1) and each state's ReLU computed once)
        relus = SharedReLU() if relus is None else relus
        states = [relus.apply(self.preprocess0, s0), relus.apply(self.preprocess1, s1)]
        for node in range(len(self.ops) // 2):
            total = 0
            for j in (2 * node, 2 * node + 1):
                h = relus.apply(self.ops[j], states[self.indices[j]])
                if self.training and self.drop_prob > 0 and not isinstance(self.ops[j], Identity):
                    h = drop_path(h, self.drop_prob)
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class CellNetwork(nn.Module):
    """Final network of the cell space. ``model_args`` rebuild it (stored in checkpoints)."""

    def __init__(
        self,
        genotype: Genotype | dict,
        init_channels: int,
        layers: int,
        num_classes: int,
        input_channels: int = 3,
        dataset: str | None = None,
        stem_multiplier: int = 3,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if isinstance(genotype, dict):
            genotype = validate_genotype(genotype)
        self.genotype = genotype
        self.model_args: dict[str, Any] = {
            "kind": "cell",
            "genotype": genotype.to_dict(),
            "init_channels": init_channels,
            "layers": layers,
            "num_classes": num_classes,
            "input_channels": input_channels,
            "dataset": dataset,
            "stem_multiplier": stem_multiplier,
            "drop_path": drop_path,
        }
        self.normalize = Normalize(*cell_normalization(dataset, input_channels))
        c_curr = stem_multiplier * init_channels
        self.stem = nn.Sequential(
            nn.Conv2d(input_channels, c_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_curr),
        )
        self.cells = nn.ModuleList()
        multiplier = len(genotype.normal_concat)
        if len(genotype.reduce_concat) != multiplier:
            raise GenotypeError("normal_concat and reduce_concat must have the same length")
        plan = cell_plan(init_channels, layers, stem_multiplier, multiplier)
        for c_pp, c_p, c_curr, reduction, reduction_prev in plan:
            self.cells.append(Cell(genotype, c_pp, c_p, c_curr, reduction, reduction_prev))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(multiplier * plan[-1][2], num_classes)
        self.set_drop_path(drop_path)

    def set_drop_path(self, prob: float) -> None:
        for cell in self.cells:
            cell.drop_prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C_in, H, W) in [0, 1]
        s0 = s1 = self.stem(self.normalize(x))
        relus = SharedReLU()  # a cell's output is rectified by the next two cells' preprocessing
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, relus)
            relus.keep(s0, s1)
        out = self.global_pooling(s1).flatten(1)
        return self.classifier(out)  # (B, num_classes) logits
