"""The benchmark harness (benchmarks/, `make bench`) runs and measures what it claims."""

from __future__ import annotations

import platform
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
        "search_pcdarts_public_twin",  # issue 17
        "search_digits_default",
        "pgd10_resnet18",
        "pgd10_darts_v2",
        "eval_pgd20",
        "eval_pgd20_autoattack",
        "certify_ibp_crown",
    } <= set(CASES)
    assert CASES["certify_ibp_crown"].requires == "rnas.bounds"


@pytest.mark.parametrize(
    ("channels", "groups", "kernel", "dilation", "stride"),
    [(16, 16, 3, 1, 1), (16, 16, 5, 2, 2), (16, 4, 3, 1, 2), (16, 1, 3, 1, 1)],
    ids=["depthwise", "depthwise_dilated_s2", "grouped_s2", "dense"],
)
def test_flop_count_of_a_convolution_backward_is_the_forwards_per_gradient(channels, groups, kernel, dilation, stride):
    """Each gradient of a convolution costs its forward's multiply-adds: the input gradient is a
    transposed convolution with the same weight, the weight gradient one product per (output
    gradient, input under its window) pair. torch 2.14's own formula counts a grouped weight
    gradient ``groups`` times (16x on this depthwise conv); FlopCount must not."""
    from benchmarks.measure import FlopCount
    from rnas.space.ops import DepthwiseConv2d

    make = DepthwiseConv2d if groups == channels else torch.nn.Conv2d
    conv = make(channels, channels, kernel, stride, dilation * (kernel // 2), dilation, groups, bias=False)
    x = torch.randn(4, channels, 8, 8, requires_grad=True)
    with FlopCount() as forward:
        y = conv(x)
    macs = y.numel() * (channels // groups) * kernel * kernel  # every output: C_in/g · k² products
    assert forward.total == 2 * macs
    with FlopCount() as both:
        y.square().sum().backward()
    assert both.total == 2 * forward.total
    conv.weight.requires_grad_(False)
    y = conv(x)
    with FlopCount() as input_only:
        y.square().sum().backward()
    assert input_only.total == forward.total


def test_kernel_rates_prints_a_rate_for_every_kernel_and_shape(capsys):
    from benchmarks import kernel_rates

    assert kernel_rates.main(["--quick"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows[1:]] == list(kernel_rates.KERNELS)
    for row in rows[1:]:
        cells = row.strip("| ").split(" | ")[1:]
        assert len(cells) == len(kernel_rates.SHAPES)
        assert all(float(c.split(" ")[0]) > 0 for c in cells)


@pytest.mark.parametrize("case", ["ablate_dilconv_s2_5x5", "ablate_avgpool", "ablate_nchw_batch_norm"])
def test_measure_reports_time_flops_memory_and_the_same_result(case):
    runs = {
        v: measure(case, v, repeats=1, device=torch.device("cpu"), quick=True, model_file=None)
        for v in CASES[case].variants
    }
    before, after = (runs[v] for v in CASES[case].variants)
    for r in (before, after):
        assert len(r["seconds"]) == 1 and r["seconds"][0] > 0
        assert r["images"] == 16 and r["peak_mib"] >= 0
    if case == "ablate_nchw_batch_norm":  # batch norm alone: no matmul or convolution to count
        assert after["flops"] == before["flops"] == 0
    else:
        assert after["flops"] > 0  # convolutions counted (forward and backward)
    assert after["result"] == pytest.approx(before["result"], rel=1e-4)  # same function, other kernel


@pytest.mark.parametrize("case", ["ablate_grouped_pointwise", "ablate_op_weight_in_bn"])
def test_op_level_ablations_compute_the_same_in_both_variants(case):
    runs = {
        v: measure(case, v, repeats=1, device=torch.device("cpu"), quick=True, model_file=None)
        for v in CASES[case].variants
    }
    before, after = (runs[v] for v in CASES[case].variants)
    assert after["flops"] > 0 and before["flops"] > 0
    assert after["result"] == pytest.approx(before["result"], rel=1e-4)


def test_the_grouped_pointwise_row_replays_the_paper_steps_own_grouped_convs(monkeypatch):
    """The row's calls are those of a PC-DARTS K=4 paper step (every one grouped), and only its
    ``after`` variant sends any of them to oneDNN's grouped convolution."""
    from benchmarks.cases import Env, _grouped_pointwise_workload, _paper, _recorded_grouped_pointwise
    from rnas.space import ops

    env = Env(device=torch.device("cpu"), quick=True)
    calls = _recorded_grouped_pointwise(_paper(4, True), env)
    assert calls and all(groups >= 2 and w[0] % groups == 0 for _, w, groups in calls)
    assert {x[1] // groups for x, _, groups in calls} == {4, 8, 16}  # C/K at the three resolutions
    grouped_convs = []
    conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(
        torch.nn.functional,
        "conv2d",
        lambda *a, **k: grouped_convs.append(k.get("groups", 1)) or conv2d(*a, **k),
    )
    monkeypatch.setattr(ops, "onednn_grouped_pointwise", lambda x, groups: True)
    for variant, used in (("before", False), ("after", True)):
        work = _grouped_pointwise_workload(variant, env)
        grouped_convs.clear()
        work.run()
        assert any(g > 1 for g in grouped_convs) == used


def test_the_closing_bn_row_folds_the_weights_only_after(monkeypatch):
    from benchmarks.cases import Env, _closing_bn_workload
    from rnas.space import supernet

    env = Env(device=torch.device("cpu"), quick=True)
    folded = []
    fold = supernet.scaled_by_closing_bn

    def noting(*args):
        out = fold(*args)
        folded.append(out is not None)
        return out

    monkeypatch.setattr(supernet, "scaled_by_closing_bn", noting)
    for variant, n_folded in (("before", 0), ("after", 6)):  # sep/dil convs and the two pools' BNs
        work = _closing_bn_workload(variant, env)
        folded.clear()
        work.run()
        assert sum(folded) == n_folded


# -- the result check: a fast path that computes something else fails `make bench` ----------


def _in_process(monkeypatch) -> None:
    """Run main()'s measurements in this process (so that a monkeypatched fast path is the one
    measured) and make the matmul-ceiling measurement trivial. The garbage collection before
    each timed sample (clean timings) is skipped: in a test process holding many objects it
    costs ~0.1 s a sample, and these tests check what is measured, not how fast."""
    import gc
    import types

    import benchmarks.__main__ as bench
    from benchmarks import measure
    from benchmarks.measure import interleave

    monkeypatch.setattr(
        measure,
        "gc",
        types.SimpleNamespace(collect=lambda: 0, isenabled=gc.isenabled, disable=gc.disable, enable=gc.enable),
    )

    def run_case(case, args, pairs, long_row, model_file):
        return interleave(case, torch.device("cpu"), args.quick, model_file, pairs, not long_row, target_s=0.001)

    monkeypatch.setattr(bench, "run_case", run_case)
    monkeypatch.setattr(bench, "matmul_ceiling", lambda *a, **k: 1.0)
    monkeypatch.setattr(bench, "conv_ceiling", lambda *a, **k: 1.0)


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


def test_a_variant_that_does_not_run_fails_the_run(monkeypatch, capsys):
    import benchmarks.__main__ as bench
    from benchmarks.cases import Case, Workload

    def build(variant, env):
        if variant == "fast":
            raise RuntimeError("broken fast path")
        return Workload(lambda: 1.0, images=1, count_flops=False)

    _in_process(monkeypatch)
    monkeypatch.setitem(CASES, "fake", Case("fake", "a", "a fake row", build))
    assert bench.main(["--only", "fake"]) == 1
    out = capsys.readouterr()
    assert "FAILED: RuntimeError: broken fast path" in out.out and "fake fast: did not run" in out.err


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


# -- the method: interleaved pairs, their spread and the verdict ------------------------------


def test_the_spread_is_the_iqr_from_five_pairs_and_the_range_below():
    from benchmarks.__main__ import quantile, spread

    ratios = [1.4, 0.9, 1.2, 1.1, 1.3]
    np = pytest.importorskip("numpy")
    for q in (0.25, 0.5, 0.75):
        assert quantile(ratios, q) == pytest.approx(float(np.quantile(ratios, q)))
    assert spread(ratios) == (pytest.approx(1.1), pytest.approx(1.3), "IQR")
    assert spread([1.2, 0.9, 1.1]) == (0.9, 1.2, "range")  # fewer pairs: the whole range, stricter


@pytest.mark.parametrize(
    "ratios, expected",
    [
        ([0.97, 1.04, 0.99, 1.02, 1.01, 0.98, 1.03], "within noise"),  # straddles 1.0
        ([0.9, 1.3], "too few pairs (2)"),
        ([0.95, 1.1, 1.2], "within noise"),  # 3 pairs: the range, and one pair below 1.0
        ([1.05, 1.1, 1.2], "faster"),
        ([1.02, 1.05, 1.1, 1.2, 1.3], "faster"),  # all above 1
        ([0.8, 1.2, 1.25, 1.3, 1.4], "faster"),  # one outlier pair below 1 stays outside the IQR
        ([0.8, 0.85, 0.9, 0.95, 0.99], "slower"),
        ([1.005, 1.01, 1.012, 1.015, 1.02], "no gain (±2%)"),  # IQR 1.010-1.015: excludes 1.0, too small to claim
        ([0.99, 0.995, 1.0, 1.005, 1.01], "no gain (±2%)"),
        ([1.01, 1.015, 1.02, 1.025, 1.03], "within noise"),  # IQR 1.015-1.025: neither clear of 1.02 nor within it
        ([1.0, 1.03, 1.04, 1.05, 1.2], "faster"),  # IQR 1.03-1.05
        ([0.9, 0.95, 0.96, 0.97, 1.0], "slower"),  # IQR 0.95-0.97
    ],
)
def test_the_verdict_needs_the_spread_to_clear_one_by_the_smallest_effect(ratios, expected):
    from benchmarks.__main__ import verdict

    assert verdict(ratios) == expected


def test_the_variants_are_interleaved_in_alternating_order():
    from benchmarks.cases import Case, Workload
    from benchmarks.measure import interleave

    calls = []

    def build(variant, env):
        def run():
            calls.append(variant)
            return 1.0

        return Workload(run, images=1, count_flops=False)

    CASES["fake_order"] = Case("fake_order", "a", "order", build)
    try:
        out = interleave("fake_order", torch.device("cpu"), True, None, pairs=4, repeat_short=False)
    finally:
        del CASES["fake_order"]
    s, f = "straightforward", "fast"
    # per variant an untimed counting run and first run (result, memory), before the other
    # variant runs; long rows: one untimed run each (the first variant's memory was handed back
    # to the OS); then A B, B A, A B, B A: a drift favours neither
    assert calls == [s, s, f, f] + [s, f] + [s, f, f, s, s, f, f, s]
    assert len(out["ratios"]) == 4 and all(r > 0 for r in out["ratios"])
    assert out["variants"][s]["result"] == 1.0 and out["variants"][s]["inner"] == 1


def test_the_table_prints_median_speedup_spread_and_verdict(monkeypatch, capsys, tmp_path):
    """main() on canned timings: the median of the per-pair ratios, their spread, the verdict,
    and the machine (CPU model, threads) and ceiling in the header and in the markdown."""
    import benchmarks.__main__ as bench
    from benchmarks.cases import Case, Workload

    _in_process(monkeypatch)
    monkeypatch.setitem(
        CASES, "fake", Case("fake", "a", "a fake row", lambda v, e: Workload(lambda: 1.0, images=10, count_flops=False))
    )
    canned = {
        "noisy": [0.96, 1.05, 0.99, 1.03, 1.01],
        "clear": [1.5, 1.6, 1.55, 1.7, 1.45],
    }
    for label, ratios in canned.items():

        def run_case(case, args, pairs, long_row, model_file, ratios=ratios):
            a = {"seconds": [r * 0.1 for r in ratios], "inner": 3, "flops": None, "result": 1.0}
            b = {"seconds": [0.1] * len(ratios), "inner": 3, "flops": None, "result": 1.0}
            for d in (a, b):
                d.update(images=10, amp=False, first_seconds=0.1, peak_mib=1.0)
            return {"variants": {"straightforward": a, "fast": b}, "ratios": ratios}

        monkeypatch.setattr(bench, "run_case", run_case)
        md = tmp_path / f"{label}.md"
        assert bench.main(["--only", "fake", "--markdown", str(md)]) == 0
        out = capsys.readouterr().out
        row = next(line for line in out.splitlines() if line.startswith("| fake | fast |"))
        if label == "noisy":
            assert "| 1.01x | IQR 0.99-1.03 | within noise | 5 x 3 runs |" in row
        else:
            assert "| 1.55x | IQR 1.50-1.60 | faster | 5 x 3 runs |" in row
        text = md.read_text()
        for where in (out, text):
            assert f"CPU {bench.cpu_name()}" in where and "threads: 1 intra-op" in where
            assert "ceiling:" in where and "float32" in where and "3x3 conv" in where
        assert "| speedup | spread | verdict | samples |" in text


def test_short_rows_need_five_pairs():
    import benchmarks.__main__ as bench

    with pytest.raises(SystemExit):
        bench.main(["--only", "ablate_avgpool", "--pairs", "3"])


def test_bf16_rows_are_skipped_with_the_reason_where_there_is_no_native_bf16(monkeypatch, capsys):
    """Issue 17: the float32 -> bf16 autocast rows of the search step (digits and paper config)
    run on CUDA or a CPU with native bf16, and say why they did not run elsewhere."""
    import benchmarks.__main__ as bench

    for name in ("ablate_amp", "ablate_amp_digits"):
        assert CASES[name].needs_bf16 and not CASES[name].cuda_only
    _in_process(monkeypatch)
    monkeypatch.setattr(bench, "bf16_native", lambda device, flags=None: False)
    assert bench.main(["--only", "ablate_amp_digits,ablate_amp", "--quick"]) == 0
    out, _ = capsys.readouterr()
    for name in ("ablate_amp", "ablate_amp_digits"):
        assert f"| {name} | n/a |" in out
    assert out.count("skipped: no native bf16 (the CPU has neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo)") >= 2


def test_bf16_ceiling_only_where_the_cpu_has_bf16():
    from benchmarks.__main__ import bf16_native, conv_ceiling, matmul_ceiling

    cpu = torch.device("cpu")
    assert bf16_native(cpu, {"avx512f", "avx512_bf16"}) and bf16_native(cpu, {"amx_bf16", "amx_tile"})
    assert not bf16_native(cpu, {"avx512f", "avx2", "fma"}) and not bf16_native(cpu, set())
    assert matmul_ceiling(cpu, torch.float32, 64, repeats=1) > 0
    assert conv_ceiling(cpu, torch.float32, (2, 16, 8), repeats=1) > 0


def test_the_ceiling_is_the_best_of_matmuls_and_convolutions(monkeypatch):
    """Issue 17: a row must not exceed the ceiling. On CPUs where torch's matmul library is slow
    (MKL on an AMD EPYC: ~110 GFLOP/s, oneDNN's conv ~240, a ResNet-18 row 213) a matmul-only
    ceiling sat below the rows; the ceiling is the best kernel of either kind, and says which."""
    import benchmarks.__main__ as bench

    cpu = torch.device("cpu")
    kernels = bench.ceiling_kernels(cpu)
    assert {k[0] for k in kernels} == {"mm", "conv3x3"}
    monkeypatch.setattr(bench, "matmul_ceiling", lambda device, dtype, n, repeats: 100.0 + n / 1024)
    monkeypatch.setattr(bench, "conv_ceiling", lambda device, dtype, shape, repeats: 240.0 + shape[1] / 1024)
    ceiling = bench.Ceiling(torch.float32)
    assert ceiling.measure(cpu, kernels, repeats=1) == pytest.approx(240.5)
    assert ceiling.best == ("conv3x3", bench.ceiling_conv_shapes(cpu)[1])
    text = bench.describe_ceilings({"float32": ceiling}, cpu)
    assert "240 GFLOP/s float32 (3x3 conv N32 C512 16x16)" in text
    monkeypatch.setattr(bench, "matmul_ceiling", lambda device, dtype, n, repeats: 500.0)
    assert ceiling.measure(cpu, kernels, repeats=1) == 500.0 and ceiling.best == ("mm", 512)


# -- the search rows' straightforward versions ----------------------------------------------


def test_the_straightforward_search_step_runs_no_rnas_kernel(monkeypatch):
    """The README says the straightforward supernet step uses the plain nn.Conv2d / nn.AvgPool2d
    kernels: rnas's 1x1-as-matmul, depthwise and average-pooling fast paths must not run."""
    from benchmarks.cases import Env, SearchSpec, _search_workload
    from rnas.space import ops

    def forbidden(self, x):
        raise AssertionError(f"rnas's own {type(self).__name__} kernel ran")

    for cls in (ops.PointwiseConv2d, ops.DepthwiseConv2d, ops.AvgPool2d):
        monkeypatch.setattr(cls, "forward", forbidden)
    spec = SearchSpec(4, 3, 2, 8, 3, "cifar10", 1)
    work = _search_workload(spec, "straightforward", Env(device=torch.device("cpu"), quick=True))
    assert work.run() > 0


def test_the_public_pcdarts_twin_computes_rnas_step():
    """At a tiny config the twin of the public PC-DARTS search network, given rnas's weights,
    has the same loss as rnas's own weight step, and after an SGD step still the same."""
    from benchmarks.cases import Env, SearchSpec, _twin_workload

    spec = SearchSpec(8, 5, 4, 16, 3, "cifar10", 4)
    env = Env(device=torch.device("cpu"), quick=True)
    losses = {}
    for v in CASES["search_pcdarts_public_twin"].variants:
        work = _twin_workload(spec, v, env)
        losses[v] = [work.run(), work.run()]
    twin, ours = losses["straightforward"], losses["fast"]
    assert twin[0] == pytest.approx(ours[0], rel=1e-5)  # same function of the same weights
    assert twin[1] == pytest.approx(ours[1], rel=1e-4)  # same gradients and SGD update
    assert twin[1] != twin[0]


def test_the_twin_refuses_another_network():
    from benchmarks.pcdarts_twin import PCDartsTwin, copy_from_rnas
    from rnas.space.supernet import Supernet

    net = Supernet(8, 5, 10, 3, "cifar10", partial_channels=4)
    copy_from_rnas(PCDartsTwin(8, 5, 10, 3, k=4), net)
    with pytest.raises(ValueError):
        copy_from_rnas(PCDartsTwin(8, 4, 10, 3, k=4), net)  # another depth
    with pytest.raises(ValueError):
        copy_from_rnas(PCDartsTwin(8, 5, 10, 3, k=4, pool_bn=False), net)  # LRNAS's ops: no BN after pooling


def test_each_variant_gets_its_own_peak_memory(monkeypatch):
    """Both variants run in one process; the second must not reuse the heap the first freed
    (its peak would then read ~0). Small tensors (100 KiB, below glibc's mmap threshold) come
    from the heap, so this is the case a shared process gets wrong without the trim."""
    from benchmarks.cases import Case, Workload
    from benchmarks.measure import interleave

    pinned = []

    def build(variant, env):
        n = 800 if variant == "straightforward" else 400  # ~80 MiB vs ~40 MiB of live small tensors

        def run():
            held = [torch.ones(25_600) for _ in range(n)]  # 100 KiB each
            pinned.append(held[-1])  # a live chunk above the freed ones: glibc cannot shrink the heap's top
            return float(len(held))

        return Workload(run, images=1, count_flops=False)

    monkeypatch.setitem(CASES, "fake_memory", Case("fake_memory", "a", "memory", build))
    out = interleave("fake_memory", torch.device("cpu"), True, None, pairs=1, repeat_short=False)
    peaks = {v: out["variants"][v]["peak_mib"] for v in ("straightforward", "fast")}
    assert 60 < peaks["straightforward"] < 120, peaks
    assert 30 < peaks["fast"] < 60, peaks  # not ~0: the first variant's free heap went back to the OS


def test_lrnas_consistency_agreement_by_hand_and_estimates_on_a_tiny_supernet():
    """benchmarks/lrnas_consistency.py: r of identical estimates is 1, of a sign-flipped pair −1
    (split-half too); its estimates are one V̂ per call (players × 1), finite, and leave the
    supernet's BN statistics as they were."""
    import numpy as np

    from benchmarks.lrnas_consistency import estimates_of, pairwise_agreement
    from rnas.config import params_from_dict
    from rnas.data import DATASETS
    from rnas.runs import resolve_run
    from rnas.search.base import SearchContext
    from rnas.search.methods import make_method

    a = np.array([1.0, 2.0, 4.0, 0.5])
    assert pairwise_agreement([a, a, a, a]) == pytest.approx((1.0, 1.0, 1.0, 1.0))
    assert pairwise_agreement([a, -a]) == pytest.approx((-1.0, -1.0, -1.0, -1.0))
    params = params_from_dict(
        {
            "search": {
                "epochs": 2,
                "init_channels": 2,
                "layers": 2,
                "nodes": 2,
                "methods": {"lrnas": {"warmup_epochs": 1}},
            },
            "tracking": {"enabled": False},
        }
    )
    method = make_method("lrnas")
    method.setup(SearchContext(params, resolve_run("lrnas"), DATASETS["digits"], torch.device("cpu"), 0, 1))
    before = [b.clone() for b in method.supernet.buffers()]
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    gen = torch.Generator().manual_seed(0)
    for value in ("accuracy", "probability"):
        est = estimates_of(method, [(x, y)], value, 4, 2, gen)
        assert len(est) == 2 and all(e.shape == (method.n_players,) and np.isfinite(e).all() for e in est)
    assert all(torch.equal(b, c) for b, c in zip(before, method.supernet.buffers()))


def test_a_process_wide_option_is_timed_in_fresh_processes_in_alternating_order(monkeypatch):
    """A row whose variants differ in a process-wide option (the C heap's policy) times each
    sample in a fresh process with that variant's environment, the order alternating; a pair's
    ratio is that of its two processes' median samples; the first process of each variant gives
    the result and the peak memory."""
    import benchmarks.__main__ as bench

    calls = []
    times = {"before": iter([[3.0, 2.0, 9.0], [4.0, 4.0, 4.0], [2.0, 2.0, 2.0]]), "after": iter([[1.0] * 3] * 3)}

    def fake(cmd, args, model_file, extra_env=None):
        variant = cmd[cmd.index("--variant") + 1]
        calls.append((variant, extra_env))
        assert cmd[cmd.index("--repeats") + 1] == str(bench.PROCESS_SAMPLES)
        return {"seconds": next(times[variant]), "peak_mib": len(calls), "result": 0.5, "inner": 1}

    monkeypatch.setattr(bench, "_subprocess", fake)
    args = bench.argparse.Namespace(target=0.2)
    out = bench.run_case("ablate_malloc", args, pairs=3, long_row=False, model_file=None)
    env = CASES["ablate_malloc"].process_env
    assert [v for v, _ in calls] == ["before", "after", "after", "before", "before", "after"]
    assert all(e == env[v] for v, e in calls) and env["before"] == {"RNAS_MALLOC": "glibc"}
    assert out["ratios"] == [3.0, 4.0, 2.0]  # medians 3, 4, 2 against 1
    assert out["variants"]["before"]["seconds"] == [3.0, 4.0, 2.0] and out["variants"]["before"]["processes"] == 3
    assert out["variants"]["before"]["peak_mib"] == 1 and out["variants"]["after"]["peak_mib"] == 2


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_ablate_malloc_runs_each_variant_under_its_heap_policy():
    """The real row's processes: `before` under glibc's policy, `after` with the heap kept, the
    same bound pass computing the same certified fraction."""
    import argparse

    import benchmarks.__main__ as bench

    args = argparse.Namespace(threads=1, device_name="cpu", quick=True)
    cmd = ["--case", "ablate_malloc", "--repeats", "1", "--target", "0"]
    env = CASES["ablate_malloc"].process_env
    runs = {v: bench._subprocess([*cmd, "--variant", v], args, None, env[v]) for v in ("before", "after")}
    assert runs["before"]["heap_reuse"] is False and runs["after"]["heap_reuse"] is True
    assert runs["before"]["result"] == runs["after"]["result"]  # the allocator changes no value


def test_lrnas_budgets_replays_each_seeds_selection_per_budget(tmp_path):
    """benchmarks/lrnas_budgets.py on two hand-made ``lrnas`` searches of 8 epochs: one whose α
    stops moving after epoch 2 (every budget's selection decided), one whose last epoch swaps two
    ops (undecided wherever that edge is chosen, e.g. without a budget); every final network
    within its budget once λ clears the parameter-free network."""
    import json

    from benchmarks.lrnas_budgets import budget_table, markdown
    from rnas import paths
    from rnas.config import params_from_dict
    from rnas.space.ops import PRIMITIVES

    params = params_from_dict(
        {
            "pipeline": {"runs": ["lrnas"], "seeds": [0, 1], "results": str(tmp_path / "results")},
            "search": {"epochs": 8, "nodes": 2, "methods": {"lrnas": {"warmup_epochs": 1}}},
            "retrain": {"init_channels": 4, "layers": 3},
        }
    )
    gen = torch.Generator().manual_seed(0)
    edges = 2 + 3  # nodes 2: inputs 2 and 3
    for seed in (0, 1):
        a = {k: torch.rand(edges, len(PRIMITIVES), generator=gen) for k in ("normal", "reduce")}
        per_epoch = []
        for epoch in range(8):
            if epoch < 2:
                a = {k: v + torch.rand(v.shape, generator=gen) for k, v in a.items()}
            if seed == 1 and epoch == 7:  # the last epoch: every edge's best two ops of the normal cell swap
                top2 = a["normal"].topk(2, dim=1).indices
                rows = torch.arange(edges)
                b = a["normal"].clone()
                b[rows, top2[:, 0]], b[rows, top2[:, 1]] = a["normal"][rows, top2[:, 1]], a["normal"][rows, top2[:, 0]]
                a = {**a, "normal": b}
            per_epoch.append({"alpha": {k: v.tolist() for k, v in a.items()}})
        folder = paths.run_dir(params, "lrnas", seed)
        folder.mkdir(parents=True)
        alphas = {"primitives": list(PRIMITIVES), "per_epoch": per_epoch, "alpha": per_epoch[-1]["alpha"]}
        (folder / "alphas.json").write_text(json.dumps(alphas))
        (folder / "contributions.json").write_text("{}")
        (folder / "search.json").write_text("{}")
    rows = budget_table(params, [1_000, 50_000, 10**9])
    assert [r["budget"] for r in rows] == [1_000, 50_000, 10**9]
    assert all(row["seeds"][0]["decided"] and row["seeds"][0]["stable_from_epoch"] == 2 for row in rows)
    assert not rows[-1]["seeds"][1]["decided"] and rows[-1]["seeds"][1]["stable_from_epoch"] == 8
    assert all(s["params"] <= 50_000 for s in rows[1]["seeds"])
    text = markdown(rows, 8)
    assert "| 1,000,000,000 | 2 * | 8 |" in text and text.rstrip().endswith("pairs decided.")


def test_amp_accuracy_stops_with_the_reason_where_bf16_is_not_native(monkeypatch, capsys, tmp_path):
    """benchmarks/amp_accuracy.py: without bf16 in hardware autocast would run float32, so the
    comparison would be empty; it says why and starts no stage (``--out`` stays empty)."""
    import benchmarks.amp_accuracy as amp

    monkeypatch.setattr(amp, "native_bf16", lambda device: (False, "no avx512_bf16 or amx_bf16 flag"))
    monkeypatch.setattr(amp, "rnas_command", lambda *a, **k: pytest.fail("a stage ran"))
    assert amp.main(["--out", str(tmp_path / "out")]) == 0
    assert "skipped: no avx512_bf16 or amx_bf16 flag" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_amp_accuracy_refuses_a_teacher_run_and_a_used_folder(monkeypatch, tmp_path):
    """A run that distils needs the teacher, which the chains do not train; a non-empty ``--out``
    would make the stages resume from another comparison's files."""
    import benchmarks.amp_accuracy as amp

    monkeypatch.setattr(amp, "native_bf16", lambda device: (True, ""))
    monkeypatch.setattr(amp, "rnas_command", lambda *a, **k: pytest.fail("a stage ran"))
    with pytest.raises(SystemExit):
        amp.main(["--run", "rnas_cl", "--out", str(tmp_path / "a")])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "left.txt").write_text("x")
    with pytest.raises(SystemExit):
        amp.main(["--out", str(tmp_path / "b")])


def test_amp_accuracy_variants_differ_only_in_amp_and_results(tmp_path):
    """The two params files are valid, the same as the user's but for ``pipeline.amp`` and each
    its own results folder."""
    import yaml

    from benchmarks.amp_accuracy import PRECISIONS, write_variant
    from rnas.config import load_params

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, amp in PRECISIONS.items():
        raw = yaml.safe_load(write_variant(ROOT / "params.yaml", tmp_path, name).read_text())
        assert raw["pipeline"].pop("amp") is amp and raw["pipeline"].pop("results") == str(tmp_path / name / "results")
        expected = {**base, "pipeline": {k: v for k, v in base["pipeline"].items() if k not in ("amp", "results")}}
        assert raw == expected
        assert load_params(tmp_path / name / "params.yaml").pipeline.amp is amp


def test_amp_accuracy_compares_cells_and_flags_by_hand():
    """Cells: the count of differing genotype entries, an op and an input each, as the report
    counts them (a dropped edge is two); flags: bf16 − float32 paired over seeds,
    within seed noise only when the interval holds 0 and the difference is no larger than the
    float32 seeds' sd."""
    import numpy as np

    from benchmarks.amp_accuracy import cell_differences, compare

    g = {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "reduce": [["max_pool_3x3", 0]]}
    assert cell_differences(g, g) == 0
    assert cell_differences(g, {**g, "reduce": [["max_pool_3x3", 1]]}) == 1
    assert cell_differences(g, {**g, "normal": g["normal"][:1]}) == 2
    rng = np.random.default_rng(0)
    f32 = {s: (rng.random(360) < p).astype(float) for s, p in zip((0, 1, 2), (0.5, 0.6, 0.55), strict=True)}

    def results(bf16):
        return {
            "float32": {s: {"flags": {"robust": f}} for s, f in f32.items()},
            "bf16": {s: {"flags": {"robust": bf16(f)}} for s, f in f32.items()},
        }

    same = compare(results(lambda f: f.copy()), [0, 1, 2], scores=("robust",))["robust"]
    assert same["comparison"].diff == 0.0 and same["within_seed_noise"]
    assert same["float32_seed_sd"] == pytest.approx(np.std([f.mean() for f in f32.values()], ddof=1))
    worse = compare(results(lambda f: np.zeros_like(f)), [0, 1, 2], scores=("robust",))["robust"]
    assert worse["comparison"].diff == pytest.approx(-np.mean([f.mean() for f in f32.values()]))
    assert not worse["within_seed_noise"]


def test_amp_accuracy_sets_bf16s_cell_changes_against_another_seeds():
    """The cells' reference: bf16 against float32 seed by seed, and float32 seeds pairwise."""
    from benchmarks.amp_accuracy import _mean_differences

    def cell(*ops):
        return {"normal": [[op, 0] for op in ops], "reduce": []}

    results = {
        "float32": {0: {"architecture": cell("a", "b")}, 1: {"architecture": cell("c", "d")}},
        "bf16": {0: {"architecture": cell("a", "x")}, 1: {"architecture": cell("c", "d")}},
    }
    assert _mean_differences(results, [0, 1], "bf16") == "0.5"  # seed 0: one entry, seed 1: none
    assert _mean_differences(results, [0, 1]) == "2.0"  # the float32 seeds differ in both entries
