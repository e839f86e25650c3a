"""DSRNA (rnas/search/methods/dsrna.py) and verification-based evaluation (rnas/evaluation/certify.py):
the robustness metrics move α (non-zero gradient, a step along it raises the metric), the
Jacobian metric is per example (BN at the clean batch's statistics held fixed; its value and
α-gradient equal a one-example-at-a-time reference), the architecture loss is L_val − γ·R per
variant (numerically, from hand-computed terms: tests/test_search_losses.py), the three runs
search end to end, and no example is both certified and broken by an attack (the evaluate
stage's sanity flag and the CLI)."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import tiny_splits, train_digits_cnn
from torch import nn

from rnas.checkpoint import ResumeState, save_model
from rnas.config import ParamsError, params_from_dict
from rnas.data import Splits
from rnas.evaluation.certify import SANITY_KEY, attack_radii, certified_not_broken, certify, certify_evaluation
from rnas.evaluation.protocol import EvalSettings, evaluate_model
from rnas.models.small_cnn import SmallCNN
from rnas.pipeline import stage_keys
from rnas.runs import resolve_run
from rnas.search.base import SearchContext
from rnas.search.loop import run_search
from rnas.search.methods import make_method
from rnas.search.methods.dsrna import bound_metric, jacobian_metric, scale_bound
from rnas.space.supernet import Supernet

torch.set_num_threads(1)

RUNS = ("dsrna_cb", "dsrna_jacobian", "dsrna_combined")


def tiny_params(epochs: int = 1, **dsrna):
    return params_from_dict(
        {
            "pipeline": {"progress": False, "channels_last": False},
            "search": {
                "epochs": epochs,
                "batch_size": 8,
                "init_channels": 4,
                "layers": 2,
                "nodes": 2,
                "methods": {"dsrna": dsrna},
            },
        }
    )


def supernet_and_batch():
    torch.manual_seed(0)
    net = Supernet(4, 2, 10, 1, "digits", nodes=2).double().train()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64)
    return net, x, torch.randint(0, 10, (8,), generator=g)


METRICS = {
    "jacobian_top1": lambda net, x, y: jacobian_metric(net, x, 0.1, "linf", "top1")[0],
    "jacobian_random_l2": lambda net, x, y: jacobian_metric(
        net, x, 0.5, "l2", "random", torch.Generator().manual_seed(0)
    )[0],
    "cb_ibp": lambda net, x, y: scale_bound(bound_metric(net, x, y, 0.01, "linf", "ibp")[0], "log"),
    "cb_crown": lambda net, x, y: scale_bound(bound_metric(net, x, y, 0.01, "linf", "crown")[0], "log"),
    "cb_ibp_linear": lambda net, x, y: bound_metric(net, x, y, 0.01, "linf", "ibp")[0],
}


@pytest.mark.parametrize("name", list(METRICS))
def test_metric_moves_alpha(name):
    """∂R/∂α ≠ 0, and a small step along it raises R (same weights, same batch)."""
    net, x, y = supernet_and_batch()
    metric = METRICS[name]
    r0 = metric(net, x, y).mean()
    grads = torch.autograd.grad(r0, net.arch_parameters())
    norm = torch.sqrt(sum((gr * gr).sum() for gr in grads))
    assert all(torch.isfinite(gr).all() for gr in grads) and norm > 0
    with torch.no_grad():
        for p, gr in zip(net.arch_parameters(), grads):
            p.add_(1e-3 * gr / norm)
    r1 = metric(net, x, y).mean().detach()  # the Jacobian metric needs autograd itself
    assert r1 > r0, (float(r0), float(r1))


def frozen_at_batch_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """An eval-mode copy of ``model`` whose BN running statistics are the (biased) batch
    statistics of the training-mode forward on ``x``: the function the training-mode forward
    computes on that batch, applied example by example."""
    ref = copy.deepcopy(model).train()
    stats = {}

    def hook(mod, inp, out):
        var, mean = torch.var_mean(inp[0], dim=(0, 2, 3), unbiased=False)
        stats[mod] = (mean.detach(), var.detach())

    handles = [m.register_forward_hook(hook) for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        ref(x)
    for h in handles:
        h.remove()
    for m, (mean, var) in stats.items():
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    return ref.eval()


@contextlib.contextmanager
def batch_statistics_held(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """Within the block every BN layer of ``model`` normalizes with the (biased) statistics its
    input had in a training-mode forward on ``x``: fixed in the input, still functions of the
    weights and α (so gradients reach α through them). Updates ``model``'s running statistics."""
    stats = {}

    def hook(mod, inp, out):
        var, mean = torch.var_mean(inp[0], dim=(0, 2, 3), unbiased=False)
        stats[mod] = (mean, var)

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [m.register_forward_hook(hook) for m in bns]
    model.train()(x)
    for h in handles:
        h.remove()

    def frozen(m: nn.BatchNorm2d, inp: torch.Tensor) -> torch.Tensor:
        mean, var = (t.view(1, -1, 1, 1) for t in stats[m])
        out = (inp - mean) / torch.sqrt(var + m.eps)
        return out if m.weight is None else out * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)

    for m in bns:
        m.forward = lambda inp, m=m: frozen(m, inp)
    try:
        yield
    finally:
        for m in bns:
            del m.forward


def per_example_jacobian(
    ref: nn.Module, x: torch.Tensor, eps: float, norm: str, v: torch.Tensor | None = None, create_graph: bool = False
) -> torch.Tensor:
    """−ε·‖∇ₓ g(x_i)‖_* computed one example at a time (g the top-1 logit, or vᵢᵀf)."""
    out = []
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        logits = ref(xi)[0]
        g = logits[logits.argmax()] if v is None else (logits * v[i]).sum()
        (grad,) = torch.autograd.grad(g, xi, create_graph=create_graph)
        out.append(grad.abs().sum() if norm == "linf" else grad.norm())
    return -eps * torch.stack(out)


def test_jacobian_metric_is_per_example_with_fixed_batch_statistics():
    """R_jac of each example is −ε·‖∇ₓ g(x_i)‖_* of the network with BN frozen at the clean batch's
    statistics, computed one example at a time: no other example enters through the BN mean and
    variance. The logits are the training-mode forward's."""
    net, x, y = supernet_and_batch()
    ref = frozen_at_batch_statistics(net, x)
    r, logits = jacobian_metric(net, x, 0.1, "linf", "top1")
    assert torch.allclose(logits, net(x), rtol=1e-10, atol=1e-12)
    expected = per_example_jacobian(ref, x, 0.1, "linf")
    assert torch.allclose(r, expected, rtol=1e-9, atol=1e-12), (r, expected)
    r2, _ = jacobian_metric(net, x, 0.1, "l2", "top1")
    assert torch.allclose(r2, per_example_jacobian(ref, x, 0.1, "l2"), rtol=1e-9, atol=1e-12)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3), dtype=logits.dtype)
    r3, _ = jacobian_metric(net, x, 0.5, "l2", "random", gen)
    expected3 = per_example_jacobian(ref, x, 0.5, "l2", v / v.norm(dim=1, keepdim=True))
    assert torch.allclose(r3, expected3, rtol=1e-9, atol=1e-12)
    # One example's metric does not depend on which other examples share its batch.
    r_half, _ = jacobian_metric(net, x[:4], 0.1, "linf", "top1")
    ref_half = frozen_at_batch_statistics(net, x[:4])
    assert torch.allclose(r_half, per_example_jacobian(ref_half, x[:4], 0.1, "linf"), rtol=1e-9, atol=1e-12)
    # ∂R_jac/∂α: the double backward of the same per-example function, the BN statistics
    # being functions of α (as in a training-mode forward), not constants
    ref2 = copy.deepcopy(net)
    with batch_statistics_held(ref2, x):
        expected = per_example_jacobian(ref2, x, 0.1, "linf", create_graph=True)
    assert torch.allclose(r, expected, rtol=1e-9, atol=1e-12)
    g_ref = torch.autograd.grad(expected.sum(), ref2.arch_parameters())
    g = torch.autograd.grad(r.sum(), net.arch_parameters())
    for a, b in zip(g, g_ref):
        assert b.abs().sum() > 0 and torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_jacobian_metric_two_examples_one_bn_channel():
    """Two examples, one BN channel, 1x1 images: the batch-normalized value is ±1 whatever x is,
    so the batch-statistics gradient is ≈ 0 ("perfectly robust"). With the statistics held fixed
    the gradient is conv · γ / sqrt(σ² + eps) · (classifier weight), non-zero."""
    net = SmallCNN(2, 1, width=1, depth=1).double().train()
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 2.0  # the 3x3 conv on a 1x1 image: only the centre tap
        bn.weight.fill_(1.5)
        bn.bias.fill_(4.0)  # BN output 4 ± 1.5 > 0: the ReLU passes both examples
        net.classifier.weight.copy_(torch.tensor([[1.0], [-3.0]]))
        net.classifier.bias.zero_()
    x = torch.tensor([0.2, 0.7], dtype=torch.float64).view(2, 1, 1, 1)
    a = 2.0 * x.flatten()
    var = ((a - a.mean()) ** 2).mean()
    slope = 1.0 * 1.5 / torch.sqrt(var + bn.eps) * 2.0  # ∂ logit_0 / ∂x_i, logit 0 the top one
    r, logits = jacobian_metric(net, x, 0.1, "linf", "top1")
    assert (logits.argmax(1) == 0).all()
    assert torch.allclose(r, torch.full((2,), -0.1 * float(slope), dtype=torch.float64), rtol=1e-9)
    assert float(r.detach().abs().min()) > 0.5  # far from 0 ("perfectly robust")
    grads = torch.autograd.grad(r.sum(), [bn.weight, conv.weight])  # the metric stays differentiable
    assert all(gr.abs().sum() > 0 for gr in grads)


def test_scale_bound_keeps_the_order():
    lb = torch.tensor([-1e15, -3.0, -0.5, 0.0, 0.5, 7.0])
    for scale in ("log", "linear"):
        s = scale_bound(lb, scale)
        assert (s[1:] > s[:-1]).all()
    assert float(scale_bound(lb, "log")[0]) == pytest.approx(-34.54, abs=0.01)  # log(1 + 1e15)
    with pytest.raises(ValueError, match="log, linear"):
        scale_bound(lb, "cube")


@pytest.mark.parametrize("run", RUNS)
def test_arch_loss_is_val_ce_minus_gamma_r(run):
    params = tiny_params(gamma=0.5, epsilon=0.01, jacobian_weight=2.0)
    splits = tiny_splits()
    torch.manual_seed(0)
    spec = resolve_run(run)
    method = make_method(spec.method)
    method.setup(
        SearchContext(params=params, run=spec, info=splits.info, device=torch.device("cpu"), seed=0, steps_per_epoch=1)
    )
    net = method.supernet.train()
    x, y = splits.train.x[:8], splits.train.y[:8]
    loss, metrics = method.arch_loss(net, x, y)
    ce = F.cross_entropy(net(x), y)
    assert torch.allclose(loss.detach(), ce.detach() - 0.5 * metrics["robustness"], atol=1e-5)
    assert metrics["val_ce"] == pytest.approx(float(ce.detach()), abs=1e-5)
    if spec.variant == "combined":
        assert metrics["robustness"] == pytest.approx(metrics["r_cb"] + 2.0 * metrics["r_jac"], rel=1e-5)
    else:
        key = {"cb": "r_cb", "jacobian": "r_jac"}[spec.variant]
        assert metrics["robustness"] == pytest.approx(metrics[key], rel=1e-6)
    if "r_cb" in metrics:
        assert metrics["margin_bound"] < 0 and 0.0 <= metrics["certified_frac"] <= 1.0
    grads = torch.autograd.grad(loss, net.arch_parameters())
    assert all(torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads)


def _search(run: str, params, splits: Splits, resume: ResumeState | None = None):
    torch.manual_seed(0)
    method = make_method(resolve_run(run).method)
    result = run_search(
        method,
        {"params": params, "run": resolve_run(run), "info": splits.info, "device": torch.device("cpu"), "seed": 0},
        splits,
        resume=resume,
        progress=False,
    )
    return method, result


@pytest.mark.parametrize("run", RUNS)
def test_each_variant_searches(run):
    _method, result = _search(run, tiny_params(epsilon=0.02), tiny_splits())
    assert len(result.history) == 1 and "robustness" in result.history[0] and result.seconds > 0
    assert set(result.architecture) == {"normal", "normal_concat", "reduce", "reduce_concat"}


def test_search_is_reproducible_and_resumable(tmp_path):
    params, splits = tiny_params(epochs=2, jacobian_projection="random", epsilon=0.02), tiny_splits()
    method, full = _search("dsrna_combined", params, splits)
    _search("dsrna_combined", params, splits, resume=ResumeState(tmp_path, "h"))
    (tmp_path / "prev.pt").replace(tmp_path / "last.pt")  # as if killed after epoch 1 of 2
    resumed, result = _search("dsrna_combined", params, splits, resume=ResumeState(tmp_path, "h"))
    assert result.architecture == full.architecture
    assert result.history[1]["robustness"] == full.history[1]["robustness"]
    assert torch.equal(method.generator.get_state(), resumed.generator.get_state())
    for a, b in zip(method.supernet.arch_parameters(), resumed.supernet.arch_parameters()):
        assert torch.equal(a, b)


def test_float64_bound_pass_on_a_float32_supernet():
    torch.manual_seed(0)
    net = Supernet(4, 2, 10, 1, "digits", nodes=2).train()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    lb32, logits32 = bound_metric(net, x, y, 0.01, "linf", "crown")
    lb64, logits64 = bound_metric(net, x, y, 0.01, "linf", "crown", torch.float64)
    assert lb64.dtype == torch.float32 and torch.allclose(lb32, lb64, rtol=1e-3)
    assert torch.allclose(logits32, logits64, atol=1e-5)
    grads = torch.autograd.grad(lb64.sum(), net.arch_parameters())
    assert all(gr.dtype == torch.float32 and gr.abs().sum() > 0 for gr in grads)


def test_overflowing_bound_is_a_clear_error(monkeypatch):
    import rnas.search.methods.dsrna as dsrna
    from rnas.training.trainer import NonFiniteLossError

    params, splits = tiny_params(), tiny_splits()
    spec = resolve_run("dsrna_cb")
    method = make_method(spec.method)
    method.setup(
        SearchContext(params=params, run=spec, info=splits.info, device=torch.device("cpu"), seed=0, steps_per_epoch=1)
    )
    monkeypatch.setattr(dsrna, "bound_metric", lambda *a, **k: (torch.tensor([-float("inf")]), torch.zeros(1, 10)))
    with pytest.raises(NonFiniteLossError, match="bound_dtype: float64"):
        method.arch_loss(method.supernet, splits.train.x[:1], splits.train.y[:1])


def _deep_cb_method(cb_scale: str, splits: Splits):
    params = params_from_dict(
        {
            "pipeline": {"progress": False, "channels_last": False},
            "search": {
                "epochs": 1,
                "batch_size": 8,
                "init_channels": 8,
                "layers": 8,
                "nodes": 4,
                "methods": {"dsrna": {"epsilon": 0.3, "bound_dtype": "float64", "cb_scale": cb_scale}},
            },
        }
    )
    torch.manual_seed(0)
    spec = resolve_run("dsrna_cb")
    method = make_method(spec.method)
    method.setup(
        SearchContext(params=params, run=spec, info=splits.info, device=torch.device("cpu"), seed=0, steps_per_epoch=1)
    )
    return method


def test_float64_bound_beyond_float32_range_gives_a_finite_arch_loss():
    """The paper-scale failure in small: the IBP bound of an untrained 8-cell, 4-node supernet
    (C = 8, 8x8 digits, ε = 0.3) is ≈ −1e44, beyond float32 (3.4e38) and far inside float64. With
    ``bound_dtype: float64`` the architecture loss is finite: lb stays in float64, R_cb = mean
    sign(lb)·log(1 + |lb|) is taken there and only then cast to the model's float32 (casting lb
    first read −inf and raised NonFiniteLossError; its log-scale gradient 1/(1 + |lb|) ≈ 1e-44
    would also underflow float32)."""
    splits = tiny_splits()
    method = _deep_cb_method("log", splits)
    net = method.supernet.train()
    x, y = splits.train.x[:8], splits.train.y[:8]
    loss, metrics = method.arch_loss(net, x, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    lb, _ = bound_metric(net, x, y, 0.3, "linf", "ibp", torch.float64, cast=False)
    assert lb.dtype == torch.float64 and torch.isfinite(lb).all()
    assert float(lb.abs().min()) > torch.finfo(torch.float32).max  # every example beyond float32
    assert torch.isinf(bound_metric(net, x, y, 0.3, "linf", "ibp", torch.float64)[0]).all()  # cast: −inf
    assert metrics["margin_bound"] == pytest.approx(float(lb.mean()), rel=1e-9)
    assert metrics["r_cb"] == pytest.approx(float(scale_bound(lb, "log").mean()), rel=1e-6)
    assert metrics["r_cb"] < -90  # ≈ −log(1e44)
    grads = torch.autograd.grad(loss, net.arch_parameters())
    assert all(gr.dtype == torch.float32 and torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads)
    # the linear scale, R_cb = lb, cannot fit the float32 loss: a clear error, not −inf in α
    from rnas.training.trainer import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="cb_scale: log"):
        _deep_cb_method("linear", splits).arch_loss(net, x, y)


def test_params_block_and_runs():
    with pytest.raises(ParamsError, match="search.methods.dsrna.gama: unknown key"):
        tiny_params(gama=0.1)
    with pytest.raises(ParamsError, match="bound_method"):
        tiny_params(bound_method="lp")
    with pytest.raises(ParamsError, match="rnas"):  # a method's key never leaks into another block
        params_from_dict({"search": {"methods": {"rnas": {"gamma": 0.1}}}})
    for run, variant in zip(RUNS, ("cb", "jacobian", "combined")):
        spec = resolve_run(run)
        assert (spec.method, spec.variant) == ("dsrna", variant)
    cb, jac = stage_keys("search", "dsrna_cb"), stage_keys("search", "dsrna_jacobian")
    assert "search.methods.dsrna.bound_method" in cb and "search.methods.dsrna.bound_method" not in jac
    assert "search.methods.dsrna.jacobian_projection" in jac and "search.methods.dsrna.jacobian_projection" not in cb


# -- verification-based evaluation ----------------------------------------------------


@pytest.fixture(scope="module")
def trained_digits_model():
    """A small CNN trained for a few seconds on digits (clean), and 64 test examples."""
    model, splits = train_digits_cnn()
    return model.eval(), splits.test.x[:64], splits.test.y[:64]


def test_no_certified_example_is_broken_by_an_attack(trained_digits_model):
    model, x, y = trained_digits_model
    eps = 0.02
    settings = EvalSettings(
        epsilon=eps, epsilon_l2=0.5, pgd_step_size=eps / 4, attacks=("fgsm", "pgd20"), eps_sweep=(0.01, 0.3)
    )
    metrics, flags = evaluate_model(model, x, y, settings, progress=False)
    certify_evaluation(metrics, flags, model, x, y, settings, "both", 32)
    assert metrics["clean_acc"] > 0.8
    assert 0 < metrics["certified_acc"] <= metrics["robust_acc"]
    assert metrics["certify_method"] == "both"
    assert metrics["certified_acc"] >= max(metrics["certified_acc_ibp"], metrics["certified_acc_crown"])
    assert metrics["sanity"][SANITY_KEY] is True
    result = certify(model, x, y, eps, "linf", "both", 32)
    assert result.accuracy == metrics["certified_acc"]
    for key in ("clean", "fgsm", "pgd20", "eps_sweep/0.01", "eps_sweep/0.02"):
        assert not (result.certified & ~flags[key]).any(), key
    # a larger radius is not part of the claim; a broken certified example is flagged
    radii = attack_radii(settings, flags)
    assert radii["pgd20"] == eps and "eps_sweep/0.3" in radii
    assert (result.certified & ~flags["eps_sweep/0.3"]).any()  # ... and would fail it if checked
    assert certified_not_broken(result.certified, flags, radii, eps)[0]
    doctored = dict(flags, pgd20=flags["pgd20"] & ~result.certified)
    ok, detail = certified_not_broken(result.certified, doctored, radii, eps)
    assert not ok and "pgd20" in detail


def test_certify_stage_prints_certified_accuracy(tmp_path, capsys):
    from rnas import paths
    from rnas.cli import main
    from rnas.space.genotype import random_genotype
    from rnas.space.network import CellNetwork

    raw = {
        "pipeline": {"results": str(tmp_path / "results"), "progress": False, "channels_last": False},
        "tracking": {"enabled": False},
        "evaluate": {"epsilon": 0.001, "n_examples": 16},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = params_from_dict(raw)
    torch.manual_seed(0)
    net = CellNetwork(random_genotype(4, torch.Generator().manual_seed(0)), 4, 2, 10, 1, "digits").eval()
    save_model(paths.model_file(params, "darts", 0), net, net.model_args)
    args = ["certify", "--params", str(tmp_path / "params.yaml"), "--run", "darts", "--method", "both"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_examples"] == 16 and out["certify_method"] == "both" and out["certify_epsilon"] == 0.001
    assert 0.0 <= out["certified_acc"] <= 1.0 and out["certified_acc"] >= out["certified_acc_ibp"]
    assert out["certify_intermediate"] == "ibp"
    assert main(args + ["--intermediate", "crown", "--n-examples", "4", "--out", str(tmp_path / "c.json")]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full == json.loads((tmp_path / "c.json").read_text())
    assert full["certify_intermediate"] == "crown" and full["n_examples"] == 4
