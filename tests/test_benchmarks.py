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
    assert {
        "search_darts_paper",
        "search_pcdarts_paper",
        "search_digits_default",
        "pgd10_resnet18",
        "pgd10_darts_v2",
        "eval_pgd20",
        "eval_pgd20_autoattack",
        "certify_ibp_crown",
    } <= set(CASES)
    assert CASES["certify_ibp_crown"].requires == "rnas.bounds"


@pytest.mark.parametrize("case", ["ablate_dilconv_s2_5x5", "ablate_avgpool"])
def test_measure_reports_time_flops_memory_and_the_same_result(case):
    runs = {
        v: measure(case, v, repeats=1, device=torch.device("cpu"), quick=True, model_file=None)
        for v in CASES[case].variants
    }
    before, after = (runs[v] for v in CASES[case].variants)
    for r in (before, after):
        assert len(r["seconds"]) == 1 and r["seconds"][0] > 0
        assert r["images"] == 16 and r["peak_mib"] >= 0
    assert after["flops"] > 0  # convolutions counted (forward and backward)
    assert after["result"] == pytest.approx(before["result"], rel=1e-4)  # same function, other kernel


# -- the result check: a fast path that computes something else fails `make bench` ----------


def _in_process(monkeypatch) -> None:
    """Run main()'s variants in this process (so that a monkeypatched fast path is the one
    measured) and skip the matmul-ceiling measurement."""
    import benchmarks.__main__ as bench

    def run_variant(case, variant, args, repeats, model_file):
        return measure(
            case, variant, repeats=repeats, device=torch.device("cpu"), quick=args.quick, model_file=model_file
        )

    monkeypatch.setattr(bench, "run_variant", run_variant)
    monkeypatch.setattr(bench, "matmul_ceiling", lambda *a, **k: 1.0)


def _fake_case(monkeypatch, fast_result: float, **kw) -> str:
    from benchmarks.cases import Case, Workload

    def build(variant, env):
        return Workload(lambda: 2.0 if variant == "straightforward" else fast_result, images=10, count_flops=False)

    monkeypatch.setitem(CASES, "fake", Case("fake", "a", "a fake row", build, **kw))
    return "fake"


@pytest.mark.parametrize("fast_result, rc", [(2.0, 0), (2.0 + 1e-6, 0), (2.01, 1), (float("nan"), 1)])
def test_a_result_beyond_round_off_fails_the_run(monkeypatch, capsys, fast_result, rc):
    import benchmarks.__main__ as bench

    _in_process(monkeypatch)
    assert bench.main(["--only", _fake_case(monkeypatch, fast_result), "--quick"]) == rc
    out, err = capsys.readouterr()
    assert ("MISMATCH" in out and "benchmark FAILED" in err and "fake: result" in err) == (rc == 1)


def test_an_accuracy_row_allows_its_few_examples_only(monkeypatch):
    import benchmarks.__main__ as bench

    _in_process(monkeypatch)  # 10 images, 2 examples allowed (and round-off): 0.2 passes, 0.3 does not
    assert bench.main(["--only", _fake_case(monkeypatch, 2.0 + 0.2, tolerance_examples=2)]) == 0
    assert bench.main(["--only", _fake_case(monkeypatch, 2.0 + 0.3, tolerance_examples=2)]) == 1


def test_a_variant_that_does_not_run_fails_the_run(monkeypatch):
    import benchmarks.__main__ as bench
    from benchmarks.cases import Case, Workload

    def build(variant, env):
        if variant == "fast":
            raise RuntimeError("broken fast path")
        return Workload(lambda: 1.0, images=1, count_flops=False)

    def run_variant(case, variant, args, repeats, model_file):
        try:
            return measure(case, variant, repeats=repeats, device=torch.device("cpu"), quick=True, model_file=None)
        except RuntimeError as err:
            return {"error": str(err)}

    monkeypatch.setitem(CASES, "fake", Case("fake", "a", "a fake row", build))
    monkeypatch.setattr(bench, "run_variant", run_variant)
    monkeypatch.setattr(bench, "matmul_ceiling", lambda *a, **k: 1.0)
    assert bench.main(["--only", "fake"]) == 1


def test_a_deliberately_wrong_fast_kernel_fails_its_real_row(monkeypatch, capsys):
    """The real ``ablate_avgpool`` row with rnas's fast average pooling broken the classic way
    (dividing by the full window, as if padding counted): the harness must catch it."""
    import benchmarks.__main__ as bench
    from rnas.space import ops

    _in_process(monkeypatch)
    assert bench.main(["--only", "ablate_avgpool", "--quick"]) == 0  # the real fast path agrees

    def count_include_pad(self, x):
        k, s, p = self.kernel_size, self.stride, self.padding
        ones = x.new_ones((x.shape[1], 1, k, k))
        return torch.nn.functional.conv2d(x, ones, None, s, p, 1, x.shape[1]) / (k * k)

    monkeypatch.setattr(ops.AvgPool2d, "forward", count_include_pad)
    assert bench.main(["--only", "ablate_avgpool", "--quick"]) == 1
    assert "ablate_avgpool: result" in capsys.readouterr().err
