"""The width options of a stage of the width space, in plain Python: params validation
(:mod:`rnas.config`) checks them without importing torch, which every params load (the Snakefile's
parse, ``rnas init-store``) would otherwise pay (~1.3 s). :mod:`rnas.space.width` builds on it."""

from __future__ import annotations


def width_choices(c_max: int, n_options: int, step_fraction: float, step_channels: int = 0) -> tuple[int, ...]:
    """The options C_max − i·step (i = 0..n−1), rounded, descending; step = ``step_channels`` channels
    when given (FBNetV2's fixed step, e.g. 4), else step_fraction·C_max."""
    step = step_channels if step_channels > 0 else step_fraction * c_max
    widths = tuple(int(round(c_max - i * step)) for i in range(n_options))
    if len(set(widths)) != len(widths) or widths[-1] < 1:
        raise ValueError(
            f"width options {widths} for C_max={c_max} are not distinct positive channel counts; "
            f"lower width_options or raise width_step / the stage width"
        )
    return widths
