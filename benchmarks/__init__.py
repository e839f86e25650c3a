"""Speed and memory benchmarks of rnas's hot paths (issue 9): ``python -m benchmarks``.

Every row times one unit of work (a search step, an adversarial-training step, an evaluation,
a certified-bound pass) in two variants: the straightforward version of the algorithm (plain
NCHW float32, every op computed on its own, no reuse, each attack on all examples) and rnas's
version. The two are timed interleaved in one process, pair after pair (issue 17), and each
row gets the median per-pair speedup, its spread and a verdict (``faster`` only when the spread
clears 1.0 by 2%); peak memory comes from a separate fresh process per variant. Timings are
printed, never asserted; a row whose two results differ beyond its tolerance fails the run.
See benchmarks/README.md for the method, the table and the machine.
"""
