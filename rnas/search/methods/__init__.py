"""Registry of search methods: name -> factory. Unknown names list the known ones."""

from __future__ import annotations

from collections.abc import Callable

from rnas.search.base import SearchMethod
from rnas.search.methods.darts import DartsMethod
from rnas.search.methods.dsrna import DsrnaMethod
from rnas.search.methods.lrnas import LrnasMethod
from rnas.search.methods.random_search import RandomMethod
from rnas.search.methods.rnas import RnasMethod
from rnas.search.methods.rnas_cl import RnasClMethod

METHODS: dict[str, Callable[[], SearchMethod]] = {
    "darts": DartsMethod,
    "dsrna": DsrnaMethod,
    "random": RandomMethod,
    "lrnas": LrnasMethod,
    "rnas": RnasMethod,
    "rnas_cl": RnasClMethod,
}


def make_method(name: str) -> SearchMethod:
    try:
        return METHODS[name]()
    except KeyError:
        raise ValueError(f"unknown search method {name!r}; known: {', '.join(METHODS)}") from None
