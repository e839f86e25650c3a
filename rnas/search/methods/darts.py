"""Plain DARTS (Liu et al., ICLR 2019): clean bilevel search, the baseline every robust
method is measured against."""

from rnas.search.base import BilevelMethod


class DartsMethod(BilevelMethod):
    """Clean CE on both levels; all behaviour is the shared bilevel machinery."""
