"""Evaluation: attacks with per-example robust flags, model complexity, the eval protocol.

Importing this package is light: foolbox and AutoAttack are imported only when an attack that
needs them runs.
"""

from rnas.evaluation.attacks import (
    ATTACKS,
    AttackSpec,
    ThreatModel,
    get_attack,
    pgd_attack,
    run_attack,
)
from rnas.evaluation.complexity import count_macs, count_parameters
from rnas.evaluation.protocol import EvalSettings, evaluate_model, worst_case_flags

__all__ = [
    "ATTACKS",
    "AttackSpec",
    "EvalSettings",
    "ThreatModel",
    "count_macs",
    "count_parameters",
    "evaluate_model",
    "get_attack",
    "pgd_attack",
    "run_attack",
    "worst_case_flags",
]
