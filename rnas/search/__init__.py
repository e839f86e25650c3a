"""Architecture search: one search loop (:mod:`rnas.search.loop`), pluggable methods
(:mod:`rnas.search.methods`), each implementing :class:`rnas.search.base.SearchMethod`."""
