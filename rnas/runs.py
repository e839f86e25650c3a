"""The run registry: a *run* is a search method with its variant (docs/design.md §2).

Run names are what the pipeline's paths and MLflow tags use
(``results/<dataset>/<run>/seed<k>/``); the method and variant are tagged apart in MLflow.
Each run also names the params sections its search reads, so dvc stages list exactly those
keys and Snakemake re-runs a job when one of them changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rnas.config import LrnasMethodConfig


# Search methods that need no epochs (their class sets ``uses_search_loop = False``): their searches
# write no per-epoch history. Kept here, torch-free, because the Snakefile and dvc.yaml read it
# (the curve files' series) while parsing; a test holds it equal to the method classes.
SEARCH_LOOP_FREE_METHODS = frozenset({"random"})


@dataclass(frozen=True)
class RunSpec:
    name: str
    method: str  # key of rnas.search.methods.METHODS
    variant: str = "default"
    space: str = "cell"  # "cell" (genotype.json) or "width" (architecture.json)
    needs_teacher: bool = False  # the search and retraining read the teacher checkpoint
    method_keys: tuple[str, ...] = field(default=())  # params sections the method reads
    arch_from: str | None = None  # ablation: reuse this run's architecture, no search of its own
    distill: bool = False  # retraining adds the method's distillation terms (RNAS-CL)
    search_keys: tuple[str, ...] = field(default=())  # further sections the search reads (LRNAS: final size)
    # The run's search stage selects its architecture from this run's search (same seed) instead of
    # searching: an LRNAS budget run, whose λ acts only in the final greedy selection, so the α
    # trajectory is the same for every budget (rnas.search.methods.lrnas.select_from_search).
    select_from: str | None = None

    @property
    def arch_file(self) -> str:
        return "architecture.json" if self.space == "width" else "genotype.json"


def _spec(name: str, method: str, **kw) -> RunSpec:
    kw.setdefault("method_keys", (f"search.methods.{method}",))
    return RunSpec(name=name, method=method, **kw)


RUNS: dict[str, RunSpec] = {
    "darts": _spec("darts", "darts"),
    "random": _spec("random", "random"),
    # RNAS reads only the keys of its variant, so changing the PGD settings does not re-run the
    # noise search (and the noise settings do not re-run the adversarial one).
    "rnas": _spec(
        "rnas",
        "rnas",
        variant="noise",
        method_keys=tuple(
            f"search.methods.rnas.{k}" for k in ("lam", "divergence", "noise", "noise_scale", "overrides")
        ),
    ),
    "rnas_adv": _spec(
        "rnas_adv",
        "rnas",
        variant="adv",
        method_keys=tuple(
            f"search.methods.rnas.{k}"
            for k in ("lam", "divergence", "adv_epsilon", "adv_step_size", "adv_steps", "overrides")
        ),
    ),
    # RNAS-CL: the width-space search reads the whole block; the cell-space variant only the
    # distillation knobs (no cost term, no width space). Retraining reads retrain.distill; the
    # ablations retrain the same architectures with the same recipe without distillation.
    "rnas_cl": _spec(
        "rnas_cl",
        "rnas_cl",
        variant="width",
        space="width",
        needs_teacher=True,
        distill=True,
        method_keys=("search.methods.rnas_cl", "retrain.distill"),
    ),
    "rnas_cl_cell": _spec(
        "rnas_cl_cell",
        "rnas_cl",
        variant="cell",
        needs_teacher=True,
        distill=True,
        method_keys=(
            *(
                f"search.methods.rnas_cl.{k}"
                for k in (
                    "loss_form",
                    "gamma",
                    "kl_weight",
                    "temperature",
                    "map_size",
                    "tau0",
                    "tau_decay",
                    "arch_lr",
                    "arch_weight_decay",
                    "tutor_kernels",
                    "overrides",
                )
            ),
            "retrain.distill",
        ),
    ),
    "rnas_cl_nokd": _spec(
        "rnas_cl_nokd", "rnas_cl", variant="width_nokd", space="width", arch_from="rnas_cl", method_keys=()
    ),
    "rnas_cl_cell_nokd": _spec(
        "rnas_cl_cell_nokd", "rnas_cl", variant="cell_nokd", arch_from="rnas_cl_cell", method_keys=()
    ),
}

# DSRNA: each variant reads the keys of its metric(s) only (docs/methods/dsrna.md), and the
# method's search overrides.
_DSRNA_KEYS = {
    "cb": ("gamma", "epsilon", "norm", "bound_method", "cb_scale", "bound_dtype", "overrides"),
    "jacobian": ("gamma", "epsilon", "norm", "jacobian_projection", "overrides"),
    "combined": (
        "gamma",
        "epsilon",
        "norm",
        "bound_method",
        "cb_scale",
        "bound_dtype",
        "jacobian_projection",
        "jacobian_weight",
        "overrides",
    ),
}
for _variant, _keys in _DSRNA_KEYS.items():
    RUNS[f"dsrna_{_variant}"] = _spec(
        f"dsrna_{_variant}", "dsrna", variant=_variant, method_keys=tuple(f"search.methods.dsrna.{k}" for k in _keys)
    )

# LRNAS: the search reads the final network's size (its parameter budget is counted there).
# A budget run ``lrnas_<budget>`` (e.g. lrnas_20k, lrnas_2M; parameters, suffix k = 10^3,
# M = 10^6) takes λ from its name (variant "20k") and selects its architecture under it from
# the ``lrnas`` run's search of the same seed (λ does not act before the final selection, so a
# search of its own would repeat that one's α step for step); its keys are the block's without
# ``budget``, so a change of any of them re-runs the selection as it re-runs the search.
_LRNAS_SIZE = ("retrain.init_channels", "retrain.layers")
RUNS["lrnas"] = _spec("lrnas", "lrnas", search_keys=_LRNAS_SIZE)
_BUDGET = re.compile(r"([1-9][0-9]*)([kM]?)")


def parse_budget(text: str) -> int:
    """``"20k"`` -> 20000, ``"2M"`` -> 2000000, ``"1500"`` -> 1500 (parameters)."""
    m = _BUDGET.fullmatch(text)
    if m is None:
        raise ValueError(f"not a parameter budget: {text!r} (expected e.g. 20k, 2M or 1500)")
    return int(m[1]) * {"": 1, "k": 1_000, "M": 1_000_000}[m[2]]


def run_budget(cfg: LrnasMethodConfig, run: RunSpec) -> int:
    """λ of an LRNAS run: ``lrnas`` the block's ``budget``, ``lrnas_<budget>`` the one in its name."""
    return cfg.budget if run.variant == "default" else parse_budget(run.variant)


def _lrnas_budget_run(m: re.Match[str]) -> RunSpec:
    from rnas.config import LrnasMethodConfig

    keys = tuple(f"search.methods.lrnas.{name}" for name in LrnasMethodConfig.model_fields if name != "budget")
    return _spec(m[0], "lrnas", variant=m[1], method_keys=keys, search_keys=_LRNAS_SIZE, select_from="lrnas")


_PATTERNS: list[tuple[re.Pattern[str], callable]] = [
    (re.compile(r"lrnas_([1-9][0-9]*[kM]?)"), _lrnas_budget_run),
]


def resolve_run(name: str) -> RunSpec:
    """Look a run name up; raises KeyError for unknown names."""
    if name in RUNS:
        return RUNS[name]
    for pattern, make in _PATTERNS:
        m = pattern.fullmatch(name)
        if m:
            return make(m)
    raise KeyError(name)


#: Methods whose searches derive their cell from α by DARTS's rule, so an epoch's α gives the cell
#: it chose then (``rnas alternative``); LRNAS selects greedily under a budget, random has no α.
ALTERNATIVE_METHODS = frozenset({"darts", "rnas", "dsrna", "rnas_cl"})


def has_alternative(name: str) -> bool:
    """True for a run with a cell-space gradient search of its own (its alternative cell can be
    retrained): not an ``arch_from`` ablation, not the width space."""
    spec = resolve_run(name)
    return spec.method in ALTERNATIVE_METHODS and spec.space == "cell" and spec.arch_from is None
