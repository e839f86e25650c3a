"""The benchmark harness (benchmarks/, `make bench`) runs and measures what it claims."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import ROOT

torch.set_num_threads(1)
sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level package of the repository

from benchmarks.cases import CASES  # noqa: E402
from benchmarks.measure import measure  # noqa: E402


def test_every_issue_row_is_registered():
    groups = {c.group for c in CASES.values()}
    assert {"a", "b", "c", "d", "ablation"} <= groups
    assert {"search_darts_paper", "search_pcdarts_paper", "search_digits_default", "pgd10_resnet18",
            "pgd10_darts_v2", "eval_pgd20", "eval_pgd20_autoattack", "certify_ibp_crown"} <= set(CASES)
    assert CASES["certify_ibp_crown"].requires == "rnas.bounds"


@pytest.mark.parametrize("case", ["ablate_dilconv_s2_5x5", "ablate_avgpool"])
def test_measure_reports_time_flops_memory_and_the_same_result(case):
    runs = {v: measure(case, v, repeats=1, device=torch.device("cpu"), quick=True, model_file=None)
            for v in CASES[case].variants}
    before, after = (runs[v] for v in CASES[case].variants)
    for r in (before, after):
        assert len(r["seconds"]) == 1 and r["seconds"][0] > 0
        assert r["images"] == 16 and r["peak_mib"] >= 0
    assert after["flops"] > 0  # convolutions counted (forward and backward)
    assert after["result"] == pytest.approx(before["result"], rel=1e-4)  # same function, other kernel
