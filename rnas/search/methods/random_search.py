"""Random baseline: a genotype drawn uniformly from the cell space (seeded), no search.

Retrained with the same recipe as every other run, it measures how much a search buys
(Li & Talwalkar, 2019)."""

from __future__ import annotations

from typing import Any

import torch

from rnas.search.base import SearchContext, SearchMethod
from rnas.space.genotype import random_genotype


class RandomMethod(SearchMethod):
    uses_search_loop = False

    def setup(self, ctx: SearchContext) -> None:
        super().setup(ctx)
        self.genotype = random_genotype(ctx.params.search.nodes, torch.Generator().manual_seed(ctx.seed))

    def architecture(self) -> dict[str, Any]:
        return self.genotype.to_dict()
