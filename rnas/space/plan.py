"""The DARTS macro-architecture as numbers (no torch): where the reduction cells sit, each cell's
channels, and the parameters of the final network that every edge choice adds to.

Torch-free so that params validation (``rnas.config``) can check an LRNAS budget against the
final network's size without importing torch (Snakemake and dvc read the params that way).
"""

from __future__ import annotations


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells (at 1/3 and 2/3 of the depth, as DARTS places them)."""
    if layers < 3:
        return (layers // 2,) if layers > 1 else ()
    return (layers // 3, 2 * layers // 3)


def cell_plan(
    init_channels: int, layers: int, stem_multiplier: int, multiplier: int
) -> list[tuple[int, int, int, bool, bool]]:
    """The DARTS macro-architecture shared by the supernet and the final network: per cell
    ``(C_prev_prev, C_prev, C, reduction, reduction_prev)``; a cell outputs ``multiplier·C``."""
    c_pp = c_p = stem_multiplier * init_channels
    c_curr, reduction_prev, plan = init_channels, False, []
    reductions = reduction_layers(layers)
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            c_curr *= 2
        plan.append((c_pp, c_p, c_curr, reduction, reduction_prev))
        reduction_prev = reduction
        c_pp, c_p = c_p, multiplier * c_curr
    return plan


def parameter_floor(
    init_channels: int, layers: int, num_classes: int, input_channels: int, nodes: int = 4, stem_multiplier: int = 3
) -> int:
    """Parameters of the final :class:`~rnas.space.network.CellNetwork` whose every edge is
    parameter-free (``none``, a pooling or a stride-1 ``skip_connect``), every node's output
    concatenated: the stem (3x3 conv and BN), each cell's two preprocessing units (1x1 conv and BN,
    or :class:`~rnas.space.ops.FactorizedReduce` after a reduction cell) and the classifier. No
    genotype of the space has fewer; LRNAS's budget must exceed it to choose any parametric op
    (``tests/test_lrnas.py`` checks it against the built network)."""
    stem = stem_multiplier * init_channels
    total = input_channels * stem * 9 + 2 * stem
    plan = cell_plan(init_channels, layers, stem_multiplier, nodes)
    for c_pp, c_p, c, _, reduction_prev in plan:
        pre0 = 2 * c_pp * (c // 2) if reduction_prev else c_pp * c  # FactorizedReduce: two half convs
        total += pre0 + c_p * c + 2 * (2 * c)  # + preprocess1's 1x1 conv, + both BNs' weight and bias
    return total + nodes * plan[-1][2] * num_classes + num_classes
