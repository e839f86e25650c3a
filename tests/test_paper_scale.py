"""Paper-scale profiles (issue 15): per-method search overrides, the public robust teacher's state
dict, every profile valid and planned, and the paper-scale sizes checked where public code gives them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnas.config import ParamsError, load_params, params_for_run, params_from_dict, search_for
from rnas.runs import resolve_run

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ["cifar10", "cifar100", "svhn", "mnist"]
METHODS = ["darts", "random", "lrnas", "rnas_cl", "rnas", "dsrna"]


def profile(name: str):
    return load_params(ROOT / "configs" / f"{name}.yaml")


# -- per-method overrides --------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ({"partial_channels": 0}, "partial_channels", "[1, 16]"),
        ({"epochs": 0}, "epochs", "[1, 10000]"),
        ({"batch_size": -4}, "batch_size", "[1, 65536]"),
        ({"w_lr": 0.0}, "w_lr", "(0.0, 10.0]"),
        ({"arch_beta1": 1.0}, "arch_beta1", "[0.0, 1.0)"),
        ({"arch_warmup_epochs": -1}, "arch_warmup_epochs", "[0, 10000]"),
        ({"arch_lr": "1e-3"}, "arch_lr", "1.0e-3"),
        ({"arch_lr_schedule": "linear"}, "arch_lr_schedule", "constant, cosine"),
        ({"augment": {"crop_padding": 20}}, "augment.crop_padding", "[0, 16]"),
        ({"momentum": 0.9}, "momentum", "unknown key; known keys here: epochs, batch_size"),
    ],
)
def test_overrides_out_of_range_or_unknown_are_refused_naming_the_key(method, override, key, allowed):
    with pytest.raises(ParamsError) as err:
        params_from_dict({"search": {"methods": {method: {"overrides": override}}}})
    msg = str(err.value)
    assert msg.startswith(f"search.methods.{method}.overrides.{key}"), msg
    assert allowed in msg, msg


def test_cross_checks_use_each_methods_own_values():
    with pytest.raises(
        ParamsError,
        match=r"^search\.methods\.lrnas\.overrides\.partial_channels: 3 must divide "
        r"search\.init_channels \(16\)",
    ):
        params_from_dict({"search": {"methods": {"lrnas": {"overrides": {"partial_channels": 3}}}}})
    with pytest.raises(ParamsError, match=r"^search\.methods\.rnas\.overrides\.w_lr_min: 0\.5 exceeds search\.w_lr"):
        params_from_dict({"search": {"methods": {"rnas": {"overrides": {"w_lr_min": 0.5}}}}})
    with pytest.raises(ParamsError, match=r"warmup_epochs: 15 leaves no epoch .*overrides\.epochs is 10"):
        params_from_dict(
            {
                "pipeline": {"runs": ["lrnas"]},
                "search": {"methods": {"lrnas": {"warmup_epochs": 15, "overrides": {"epochs": 10}}}},
            }
        )
    # the common value is fine for DARTS while LRNAS overrides it with one that fits its own C
    p = params_from_dict(
        {"search": {"init_channels": 16, "methods": {"lrnas": {"overrides": {"partial_channels": 4}}}}}
    )
    assert search_for(p, "lrnas").partial_channels == 4 and search_for(p, "darts").partial_channels == 1


def test_overrides_apply_to_their_method_only_and_reach_the_search():
    from rnas.data import DATASETS
    from rnas.search.base import SearchContext
    from rnas.search.methods import make_method

    raw = {
        "search": {
            "init_channels": 8,
            "layers": 3,
            "methods": {"lrnas": {"overrides": {"partial_channels": 4, "epochs": 20, "w_lr": 0.1, "batch_size": 128}}},
        }
    }
    p = params_from_dict(raw)
    lr, darts = params_for_run(p, "lrnas_20k").search, params_for_run(p, "darts").search
    assert (lr.partial_channels, lr.epochs, lr.w_lr, lr.batch_size) == (4, 20, 0.1, 128)
    assert (darts.partial_channels, darts.epochs, darts.w_lr, darts.batch_size) == (1, 50, 0.025, 64)
    assert params_for_run(p, "darts") is p  # no override: the same object
    method = make_method("lrnas")
    method.setup(
        SearchContext(
            params=params_for_run(p, "lrnas"),
            run=resolve_run("lrnas"),
            info=DATASETS["digits"],
            device=torch.device("cpu"),
            seed=0,
            steps_per_epoch=1,
        )
    )
    assert method.supernet.partial_channels == 4
    assert method.w_opt.param_groups[0]["lr"] == 0.1


def test_an_override_changes_the_search_hash_of_that_methods_runs_only():
    from rnas.config import params_hash
    from rnas.pipeline import stage_keys

    base = params_from_dict({})
    changed = params_from_dict({"search": {"methods": {"dsrna": {"overrides": {"epochs": 7}}}}})
    for run in (
        "dsrna_cb",
        "dsrna_jacobian",
        "dsrna_combined",
        "rnas",
        "rnas_adv",
        "rnas_cl_cell",
        "lrnas",
        "lrnas_20k",
        "darts",
        "rnas_cl",
    ):
        keys = stage_keys("search", run)
        differs = params_hash(base, keys) != params_hash(changed, keys)
        assert differs == run.startswith("dsrna"), run
    for run in ("rnas", "rnas_adv", "rnas_cl_cell", "lrnas_20k"):  # runs listing their keys one by one
        method = resolve_run(run).method
        assert any(
            k == f"search.methods.{method}.overrides" or k == f"search.methods.{method}"
            for k in stage_keys("search", run)
        ), run


# -- the profiles ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_validate_params_accepts_every_profile(name, capsys):
    from rnas.cli import main

    assert main(["validate-params", str(ROOT / "configs" / f"{name}.yaml")]) == 0
    assert "valid" in capsys.readouterr().out


def test_cifar10_runs_every_run_at_each_papers_setting():
    from rnas.runs import RUNS

    p = profile("cifar10")
    assert set(RUNS) <= set(p.pipeline.runs)
    assert any(r.startswith("lrnas_") for r in p.pipeline.runs)
    lr = params_for_run(p, "lrnas").search
    assert (
        lr.partial_channels,
        lr.epochs,
        lr.methods.lrnas.warmup_epochs,
        lr.methods.lrnas.permutations,
        lr.methods.lrnas.budget,
    ) == (4, 50, 15, 10, 2_000_000)
    assert (p.retrain.init_channels, p.retrain.layers) == (36, 20)
    cl = p.search.methods.rnas_cl
    assert cl.map_size == 14 and p.retrain.distill.map_size == 14
    assert cl.arch_lr == pytest.approx(0.1)
    assert (p.teacher.family, p.teacher.depth, p.teacher.widen_factor) == ("wide_resnet", 34, 10)
    ds = p.search.methods.dsrna
    assert ds.gamma == pytest.approx(0.01) and ds.bound_dtype == "float64"
    assert params_for_run(p, "darts").search.partial_channels == 1


@pytest.mark.parametrize(
    "name, runs, eps",
    [
        ("cifar100", {"lrnas", "darts", "random"}, 8 / 255),
        ("svhn", {"lrnas", "darts", "random"}, 8 / 255),
        ("mnist", {"dsrna_cb", "dsrna_jacobian", "dsrna_combined", "darts", "random"}, 0.3),
    ],
)
def test_other_dataset_profiles_are_complete_with_their_epsilon(name, runs, eps):
    p = profile(name)
    assert p.data.dataset == name
    assert runs <= set(p.pipeline.runs)
    assert p.evaluate.epsilon == pytest.approx(eps)
    assert p.retrain.train.perturbation.epsilon == pytest.approx(eps)
    text = (ROOT / "configs" / f"{name}.yaml").read_text()
    assert "ε convention" in text  # each profile states its convention in its header


def _planned_jobs(name: str) -> dict[str, int]:
    env = {
        **os.environ,
        "RNAS_PARAMS": f"configs/{name}.yaml",
        "GIT_PYTHON_REFRESH": "quiet",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout + out.stderr
    stats = table[table.index("Job stats") :]
    jobs: dict[str, int] = {}
    for line in stats.splitlines():
        m = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if m and m[1] not in jobs:
            jobs[m[1]] = int(m[2])
    return jobs


@pytest.mark.slow
@pytest.mark.parametrize("name", PROFILES)
def test_snakemake_plans_search_retrain_and_evaluate_for_every_run(name):
    p = profile(name)
    jobs = _planned_jobs(name)
    seeds = len(p.pipeline.seeds)
    searched = [r for r in p.pipeline.runs if resolve_run(r).arch_from is None]
    assert sum(v for k, v in jobs.items() if k.startswith("search")) == len(searched) * seeds
    assert jobs["retrain"] == len(p.pipeline.runs) * seeds
    assert jobs["evaluate"] == len(p.pipeline.runs) * seeds
    assert jobs["teacher"] == 1 and jobs["report"] == 1


# -- sizes against the papers' public code ---------------------------------------------------------


def test_lrnas_final_network_at_36_20_stays_under_the_2M_budget():
    """LRNAS' budget (2.0M parameters, the public code's ``threshold=2.0``) is counted on the final
    network of the profile (C=36, 20 cells, CIFAR-10): the greedy selection stays under it for any α,
    its count is the built network's, and the budget binds (a parametric op had to be refused)."""
    from rnas.search.methods.lrnas import ParameterCost, greedy_select

    p = profile("cifar10")
    budget = p.search.methods.lrnas.budget
    cost = ParameterCost(p.retrain.init_channels, p.retrain.layers, 10, 3, "cifar10", p.search.nodes)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        a_n, a_r = torch.randn(14, 8, generator=g), torch.randn(14, 8, generator=g)
        sel = greedy_select(a_n, a_r, cost, budget)
        assert sel.params <= budget == 2_000_000
        assert sel.params == cost.count_built(sel.genotype)
    # every edge the most expensive op: the budget must refuse some of them
    heavy = torch.zeros(14, 8)
    heavy[:, 5] = 1.0  # sep_conv_5x5
    sel = greedy_select(heavy, heavy.clone(), cost, budget)
    assert sel.over_budget and 1_000_000 < sel.params <= budget


def _fbnetv2_s3_macs(widths: list[int]) -> int:
    """Multiply-adds of the public code's "fbnetv2_supernet_s3" sub-network for 32x32 CIFAR images,
    written out from its definition: a 3x3 stem of 16 channels at stride 2 (16x16), then stages of
    3 inverted-residual blocks (1x1 expand x6, 3x3 depthwise, 1x1 project) with C_max 16, 32, 64 at
    strides 1, 2, 2, and a linear classifier; ``widths`` the 9 blocks' output channels."""
    total = 16 * 16 * 3 * 16 * 9
    c_in, side = 16, 16
    for b, w in enumerate(widths):
        stride = 2 if b in (3, 6) else 1
        out = side // stride
        hidden = 6 * w
        total += side * side * c_in * hidden + out * out * 9 * hidden + out * out * hidden * w
        c_in, side = w, out
    return total + c_in * 10


def test_rnas_cl_search_network_macs_span_the_public_fbnetv2_s3_space():
    """The cifar10 profile's width supernet is the public code's s3 supernet: its widest and its
    narrowest networks have the s3 space's multiply-adds (9.14M and 5.19M, written out above from the
    public definition), every block offers the public code's widths, and the exported networks'
    counted MACs equal the search's cost model."""
    import torch.nn.functional as F

    from rnas.evaluation.complexity import count_macs
    from rnas.space.width import WidthSupernet

    p = profile("cifar10")
    w = p.search.methods.rnas_cl.width
    net = WidthSupernet(
        10,
        3,
        "cifar10",
        32,
        w.stem_channels,
        w.stage_widths,
        w.stage_blocks,
        w.stage_strides,
        w.expansion,
        w.kernel,
        w.width_options,
        w.width_step,
        w.width_step_channels,
        w.stem_stride,
        w.stage_width_options,
    )
    assert net.options == [(16, 12)] * 3 + [(32, 28, 24, 20)] * 3 + [(64, 60, 56, 52)] * 3
    n, n_opt = len(net.blocks), net.width_logits.shape[-1]
    full = F.one_hot(torch.zeros(n, dtype=torch.long), n_opt).float()
    narrow = F.one_hot(torch.tensor([len(o) - 1 for o in net.options]), n_opt).float()
    widest, narrowest = float(net.expected_cost(full)), float(net.expected_cost(narrow))
    assert widest == _fbnetv2_s3_macs([16] * 3 + [32] * 3 + [64] * 3) == 9_136_768
    assert narrowest == _fbnetv2_s3_macs([12] * 3 + [20] * 3 + [52] * 3)
    assert 5e6 < narrowest < widest < 1e7  # a few million multiply-adds: a mobile-size CIFAR network
    for g in (full, narrow):
        widths = [net.options[b][int(i)] for b, i in enumerate(g.argmax(1))]
        assert count_macs(net.export(widths).eval(), (3, 32, 32)) == round(float(net.expected_cost(g)))


def test_blocks_with_fewer_width_options_never_sample_or_choose_the_padding():
    from rnas.space.width import WidthSupernet

    net = WidthSupernet(10, 3, "cifar10", 16, 8, (8, 16), (1, 1), (1, 2), 2, 3, 4, 0.25, 2, 1, (2, 4))
    assert net.options == [(8, 6), (16, 14, 12, 10)]
    with torch.no_grad():
        net.width_logits[0] = torch.tensor([0.0, 0.0, 9.0, 9.0])  # the padding would win if it counted
    net.generator = torch.Generator().manual_seed(0)
    net.width_mode = "sample"
    g = net.width_weights()
    assert torch.all(g[0, 2:] == 0) and torch.allclose(g.sum(-1), torch.ones(2))
    assert net.discrete_widths()[0] in (8, 6)
    x = torch.rand(2, 3, 16, 16)
    net.train()(x).sum().backward()
    assert torch.isfinite(net.width_logits.grad).all() and torch.all(net.width_logits.grad[0, 2:] == 0)


# -- the public robust teacher ---------------------------------------------------------------------


def _robustbench_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The project's WideResNet state dict renamed to the RobustBench / robust-overfitting layout, written
    out here from that layout (blockG.layer.I., convShortcut, the final BN as bn1)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"^block(\d)\.(\d+)\.(.*)$", k)
        if m:
            k = f"block{m[1]}.layer.{m[2]}.{m[3]}"
        k = k.replace("conv_shortcut.", "convShortcut.")
        out["bn1." + k[3:] if k.startswith("bn.") else k] = v.clone()
    return out


@pytest.fixture
def wrn():
    from rnas.models import WideResNet

    torch.manual_seed(0)
    net = WideResNet(10, 3, depth=10, widen_factor=2)
    for m in net.modules():  # non-trivial BN statistics, so a mix-up of BN layers shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("layout", ["robust_overfitting", "robustbench"])
def test_a_public_wrn_state_dict_loads_as_the_teacher(wrn, layout, tmp_path):
    """robust-overfitting: a DataParallel state dict (``module.`` on every key), CIFAR-10's mean/std;
    RobustBench: nested under ``state_dict``, without prefix, with its unused ``sub_block1`` group and
    raw [0, 1] inputs. Both give the network's own outputs with the normalization they were trained with."""
    from rnas.models.external import load_teacher_file
    from rnas.models.normalize import normalization_for

    state = _robustbench_keys(wrn.state_dict())
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    if layout == "robust_overfitting":
        obj = {f"module.{k}": v for k, v in state.items()}
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization_for("cifar10"))
        expected = wrn((x - mean) / std)
        normalization = "dataset"
    else:
        sub = {k.replace("block1.", "sub_block1.", 1): v for k, v in state.items() if k.startswith("block1.")}
        obj = {"state_dict": {**state, **sub}, "epoch": 99}
        expected = wrn(x)
        normalization = "none"
    path = tmp_path / "teacher.pt"
    torch.save(obj, path)
    teacher = load_teacher_file(path, "cifar10", 10, 3, normalization)
    assert not teacher.training
    assert torch.allclose(teacher(x), expected, atol=1e-5)
    from rnas.distill import teacher_layers

    assert len(teacher_layers(teacher)) == sum(isinstance(m, torch.nn.Conv2d) for m in wrn.modules())


def test_a_normalization_stored_in_the_file_wins(wrn, tmp_path):
    from rnas.models.external import load_teacher_file

    state = _robustbench_keys(wrn.state_dict())
    state["mu"], state["sigma"] = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])
    torch.save(state, tmp_path / "t.pt")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(
        load_teacher_file(tmp_path / "t.pt", "cifar10", 10, 3, "none")(x), wrn((x - 0.5) / 0.25), atol=1e-5
    )


def test_a_mismatched_state_dict_is_refused_naming_the_first_keys_that_do_not_fit(wrn, tmp_path):
    from rnas.checkpoint import CheckpointError
    from rnas.models.external import load_teacher_file

    state = {f"module.{k}": v for k, v in _robustbench_keys(wrn.state_dict()).items()}
    state["module.block2.layer.0.extra.weight"] = torch.zeros(3)
    del state["module.fc.bias"]
    state["module.block3.layer.0.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_teacher_file(tmp_path / "bad.pt", "cifar10", 10, 3)
    msg = str(err.value)
    assert "module.block2.layer.0.extra.weight" in msg  # no place for it
    assert "module.fc.bias" in msg  # missing
    assert "module.block3.layer.0.conv2.weight (128, 128, 1, 1)" in msg  # wrong shape
    torch.save({"conv.weight": torch.zeros(1), "linear.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(
        CheckpointError, match=r"not a WideResNet state dict .*first keys: conv\.weight, linear\.weight"
    ):
        load_teacher_file(tmp_path / "other.pt", "cifar10", 10, 3)
    torch.save(_robustbench_keys(wrn.state_dict()), tmp_path / "c100.pt")
    with pytest.raises(CheckpointError, match="10 classes .* cifar100 has 100"):
        load_teacher_file(tmp_path / "c100.pt", "cifar100", 100, 3)


def test_pipeline_teacher_checkpoint_reads_the_public_layout(wrn, tmp_path):
    from rnas.data import DATASETS
    from rnas.models.external import load_teacher

    path = tmp_path / "cifar10_wide10_linf_eps8.pth"
    torch.save({f"module.{k}": v for k, v in _robustbench_keys(wrn.state_dict()).items()}, path)
    params = params_from_dict({"pipeline": {"teacher_checkpoint": str(path)}, "data": {"dataset": "cifar10"}})
    teacher = load_teacher(params, DATASETS["cifar10"], "cpu")
    assert teacher.net.conv1.weight.shape == wrn.conv1.weight.shape
    assert params.pipeline.teacher_normalization == "dataset"


# -- make paper-smoke ------------------------------------------------------------------------------


@pytest.mark.slow
def test_paper_smoke_runs_a_profile_end_to_end(capsys):
    """The paper-smoke command on the cheapest profile's two baselines (the full command is `make
    paper-smoke`, minutes on two cores: README)."""
    from benchmarks.paper_smoke import main

    assert main(["--profiles", "configs/mnist.yaml", "--runs", "random", "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| mnist \| random \| retrain \| CellNetwork C=36 L=20 ", out)
    assert re.search(r"\| mnist \| teacher \| train \|", out)
    assert "0 failed" in out


def _smoke_rows(seconds_per_flop: float):
    """Hand-made smoke rows of the MNIST profile's teacher and darts: every step with FLOPs and the
    seconds a device running at 1 / seconds_per_flop FLOP/s takes for them."""
    from benchmarks.paper_smoke import Row

    steps = {
        ("teacher", "train"): 4e9,
        ("teacher", "evaluate"): 2e9,
        ("darts", "search"): 6e9,
        ("darts", "retrain"): 8e9,
        ("darts", "evaluate"): 3e9,
        ("darts", "certify"): 1e9,
    }
    return [
        Row("configs/mnist.yaml", run, step, "net", 1, 4, seconds=f * seconds_per_flop, flops=int(f))
        for (run, step), f in steps.items()
    ]


def test_measured_cost_is_the_flop_formula_over_seconds():
    """cost_rows(value="seconds") runs the FLOP formula on each step's seconds: at one rate for every
    step it is the FLOP table divided by that rate, and the measured table prints seconds / 3600 per
    stage and × seeds in total (a run without measured steps reads –)."""
    from benchmarks.paper_smoke import cost_rows, measured_cost_markdown

    rate = 2e12
    rows = _smoke_rows(1 / rate)
    by_flops = {c["run"]: c for c in cost_rows(rows)}
    by_seconds = {c["run"]: c for c in cost_rows(rows, "seconds")}
    for run in ("teacher", "darts"):
        for stage in ("search", "train", "evaluate"):
            assert by_seconds[run][stage] == pytest.approx(by_flops[run][stage] / rate, rel=1e-9)
    assert by_seconds["darts"]["search"] > 0 and by_seconds["darts"]["evaluate"] > 0

    text = measured_cost_markdown(cost_rows(rows, "seconds"), {"configs/mnist.yaml": 3}, "a test device")
    darts = by_seconds["darts"]
    line = next(x for x in text.splitlines() if x.startswith("| mnist | darts |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:5] == [f"{darts[k] / 3600:.2f}" for k in ("search", "train", "evaluate")]
    assert cells[5:] == ["3", f"{3 * (darts['search'] + darts['train'] + darts['evaluate']) / 3600:.2f}"]
    assert "| mnist | random | 0.00 | – | – | 3 | – |" in text  # its steps were not measured
    assert "a test device" in text


def test_smoke_step_timing_takes_the_median_of_the_timed_runs():
    """measured(): the FLOPs are the counted run's; with timed runs the seconds are their median, not
    the counted run's (which pays the counter and first-call set-up)."""
    from benchmarks.paper_smoke import measured

    durations = iter([0.3, 0.01, 0.05, 0.02])
    calls = []

    def fn():
        import time

        time.sleep(next(durations))
        calls.append(1)
        return torch.ones(8, 8) @ torch.ones(8, 8)

    out, m = measured(fn, amp=False, timed=3)
    assert len(calls) == 4 and float(out[0, 0]) == 8.0
    assert m["flops"] == 2 * 8 * 8 * 8
    assert 0.02 <= m["seconds"] < 0.3  # the median of 0.01, 0.05, 0.02 s, not the 0.3 s counted run
