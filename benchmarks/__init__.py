"""Speed and memory benchmarks of rnas's hot paths (issue 9): ``python -m benchmarks``.

Every row times one unit of work (a search step, an adversarial-training step, an evaluation,
a certified-bound pass) twice in the same run: the straightforward version of the algorithm
(plain NCHW float32, every op computed on its own, no reuse, each attack on all examples) and
rnas's version, each in a fresh subprocess so that peak memory is measured per variant. Timings
are printed, never asserted; a row whose two results differ beyond its tolerance fails the run.
See benchmarks/README.md for the table and the machine.
"""
