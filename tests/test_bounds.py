"""Sound margin bounds (rnas.bounds): the graph computes the model, IBP and CROWN bounds hold at
sampled and adversarial points of the ε-ball, are exact at ε = 0, the reported bound is never
looser than IBP, and every linear op's backward rule is its exact adjoint."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from rnas.bounds import (
    BOUND_METHODS,
    InputSet,
    UnsupportedModelError,
    build_graph,
    graph as g,
    margin_lower_bound,
    margin_spec,
    spec_bounds,
)
from rnas.evaluation.attacks import pgd_attack
from rnas.models import build_model
from rnas.space.genotype import validate_genotype
from rnas.space.network import CellNetwork
from rnas.space.ops import AvgPool2d
from rnas.space.supernet import Supernet

torch.set_num_threads(1)

# Every op of the cell space, in both cell types: stride-2 skip (factorized reduce), pools and
# 'none' on reduction edges, odd and even sizes after reductions.
ALL_OPS_GENOTYPE = {
    "normal": [
        ["sep_conv_3x3", 0],
        ["max_pool_3x3", 1],
        ["avg_pool_3x3", 0],
        ["skip_connect", 2],
        ["dil_conv_3x3", 1],
        ["none", 3],
        ["dil_conv_5x5", 2],
        ["sep_conv_5x5", 4],
    ],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [
        ["skip_connect", 0],
        ["max_pool_3x3", 1],
        ["none", 0],
        ["sep_conv_3x3", 2],
        ["avg_pool_3x3", 1],
        ["dil_conv_3x3", 3],
        ["sep_conv_5x5", 0],
        ["dil_conv_5x5", 4],
    ],
    "reduce_concat": [2, 3, 4, 5],
}


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial eval-mode BN: random running statistics and (signed) affine parameters."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
            if m.weight is not None:
                m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=gen))


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "supernet":
        m = Supernet(4, 2, 10, 1, "digits")  # a normal and a reduction cell
    elif kind == "supernet_pc":
        m = Supernet(4, 2, 10, 1, "digits", partial_channels=2)
    elif kind == "cell":
        m = CellNetwork(validate_genotype(ALL_OPS_GENOTYPE), 4, 3, 10, 1, "digits")
    elif kind == "small_cnn":
        m = build_model("small_cnn", 10, 1, "digits", width=4, depth=3)
    elif kind == "preact_resnet18":
        m = build_model("preact_resnet18", 10, 1, "digits", width=2)
    elif kind == "wide_resnet":
        m = build_model("wide_resnet", 10, 1, "digits", depth=10, widen_factor=1)
    else:
        raise ValueError(kind)
    with torch.no_grad():
        _randomize_bn(m, torch.Generator().manual_seed(1))
    return m.double().eval()


KINDS = ["supernet", "supernet_pc", "cell", "small_cnn", "preact_resnet18", "wide_resnet"]


def _data(n: int = 6, side: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, side, side, generator=gen, dtype=torch.float64)
    x[:, :, :2] = 0.0  # some pixels on the [0, 1] boundary, as in real digits
    return x, torch.randint(0, 10, (n,), generator=gen)


def _margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """f_y − f_k for every k ≠ y, (B, K−1), in the order of margin_spec."""
    return (margin_spec(y, logits.shape[1], logits.dtype) @ logits.unsqueeze(-1)).squeeze(-1)


def _ball_points(x: torch.Tensor, eps: float, norm: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points per example in the ε-ball ∩ [0, 1]: uniform, corners / sphere, clipped (clipping
    to the box never leaves the ball since x ∈ [0, 1])."""
    pts = []
    for i in range(n):
        if norm == "linf":
            d = torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1
            if i % 2:
                d = d.sign()  # vertices of the box
            d = eps * d
        else:
            d = torch.randn(x.shape, generator=gen, dtype=x.dtype)
            d = eps * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            if i % 2:
                d = d * torch.rand(len(x), 1, 1, 1, generator=gen, dtype=x.dtype)
        pts.append((x + d).clamp(0, 1))
    return torch.stack(pts)  # (n, B, C, H, W)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train", [False, True])
def test_graph_computes_the_model(kind, train):
    model = _model(kind).train(train)
    x, _ = _data()
    with torch.no_grad():
        assert torch.allclose(build_graph(model)(x), model(x), atol=1e-10)


def test_supernet_graph_follows_masks_and_alpha():
    model = _model("supernet").train()
    model.mask_normal[0, 3] = 0.0  # switch single primitives off
    model.mask_reduce[:, 5] = 0.0
    model.mask_normal[1] = 0.0  # a whole edge off: a zero edge
    with torch.no_grad():
        model.alpha_normal.normal_()
    x, _ = _data()
    with torch.no_grad():
        assert torch.allclose(build_graph(model)(x), model(x), atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_bounds_are_exact_at_eps_zero(kind):
    model = _model(kind)
    x, y = _data()
    res = spec_bounds(model, x, y, 0.0, methods=("ibp", "crown"))
    with torch.no_grad():
        true = _margins(model(x), y)
    for name in ("ibp", "crown"):
        assert torch.allclose(res.lower[name], true, atol=1e-9), name
    assert torch.allclose(res.margin(), true.min(1).values, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm, eps", [("linf", 0.02), ("l2", 0.1)])
def test_sampled_points_never_beat_the_bound(kind, norm, eps):
    model = _model(kind)
    x, y = _data()
    res = spec_bounds(model, x, y, eps, norm, methods=("ibp", "crown"))
    pts = _ball_points(x, eps, norm, 16, torch.Generator().manual_seed(2))
    with torch.no_grad():
        worst = torch.stack([_margins(model(p), y) for p in pts]).min(0).values  # (B, K−1)
    for name in ("ibp", "crown"):
        assert (worst >= res.lower[name] - 1e-9).all(), name
    assert (worst >= res.best() - 1e-9).all()
    assert res.lower["ibp"].abs().max() > 0  # not a vacuous comparison


class _DtypeAudit(TorchDispatchMode):
    """Records every op (views aside) that produces a floating tensor not in ``dtype``."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype, self.wrong = dtype, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
            self.wrong |= {f"{func} -> {t.dtype}" for t in outs if t.dtype != self.dtype}
        return out


@pytest.mark.parametrize("kind", ["supernet_pc", "small_cnn"])
@pytest.mark.parametrize("train", [False, True])
def test_float64_bound_pass_of_a_float32_model_runs_every_op_in_float64(kind, train):
    """dtype=float64 on a float32 model: no op of the point, IBP or CROWN pass runs in float32 —
    not softmax(α) / softmax(β), not Normalize's 1/std, not eval-mode BN's rsqrt(running_var + eps)
    (they used to, on the float32 parameters and buffers, before being promoted)."""
    model = _model(kind).float().train(train)
    x, y = _data()
    x, audit = x.float(), _DtypeAudit(torch.float64)
    with audit:
        res = spec_bounds(model, x, y, 0.02, methods=("ibp", "crown"), dtype=torch.float64)
    assert not audit.wrong, sorted(audit.wrong)
    assert res.logits.dtype == torch.float64 and all(v.dtype == torch.float64 for v in res.lower.values())


@pytest.mark.parametrize("kind", ["supernet_pc", "small_cnn"])
def test_float64_bounds_of_a_float32_model_are_sound(kind):
    """The float64 pass bounds the float32 model's function (its parameters and buffers, cast):
    no sampled point of the ball, evaluated in float64, beats it; equal to the float32 pass up to
    float32's rounding."""
    model = _model(kind).float()
    x, y = _data()
    res = spec_bounds(model, x.float(), y, 0.02, methods=("ibp", "crown"), dtype=torch.float64)
    res32 = spec_bounds(model, x.float(), y, 0.02, methods=("ibp", "crown"))
    exact = copy.deepcopy(model).double()
    pts = _ball_points(x, 0.02, "linf", 16, torch.Generator().manual_seed(2))
    with torch.no_grad():
        worst = torch.stack([_margins(exact(p), y) for p in pts]).min(0).values
    for name in ("ibp", "crown"):
        assert (worst >= res.lower[name] - 1e-9).all(), name
        assert torch.allclose(res.lower[name], res32.lower[name].double(), rtol=1e-4, atol=1e-4), name


@pytest.mark.parametrize("kind", ["cell", "small_cnn", "preact_resnet18"])
def test_pgd_points_never_beat_the_bound(kind):
    """PGD on the margin (Madry et al. 2018) looks for the worst point the sampling may miss."""
    model = _model(kind)
    x, y = _data()
    eps = 0.03
    lb = {name: margin_lower_bound(model, x, y, eps, "linf", name) for name in ("ibp", "crown", "both")}
    x_adv = pgd_attack(
        model, x, y, eps, step_size=eps / 4, steps=10, loss="margin", generator=torch.Generator().manual_seed(0)
    )
    assert (x_adv - x).abs().max() <= eps + 1e-12 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        margin = _margins(model(x_adv), y).min(1).values
        clean = _margins(model(x), y).min(1).values
    assert (margin <= clean + 1e-12).all() and (margin < clean).any()  # the attack did something
    for name, bound in lb.items():
        assert (margin >= bound - 1e-9).all(), name


@pytest.mark.parametrize("kind", KINDS)
def test_reported_bound_is_the_tighter_and_never_looser_than_ibp(kind):
    model = _model(kind)
    x, y = _data()
    res = spec_bounds(model, x, y, 0.05, methods=("ibp", "crown"))
    assert torch.equal(res.best(), torch.maximum(res.lower["ibp"], res.lower["crown"]))
    both = margin_lower_bound(model, x, y, 0.05, "linf", "both")
    assert torch.allclose(both, res.margin(), rtol=0, atol=1e-12)
    assert (both >= res.margin("ibp")).all() and (both >= res.margin("crown")).all()
    # the bounds loosen as ε grows (IBP is monotone in the box)
    assert (margin_lower_bound(model, x, y, 0.1, "linf", "ibp") <= res.margin("ibp") + 1e-12).all()


@pytest.mark.parametrize("kind", ["cell", "small_cnn"])
def test_full_crown_is_sound_and_tightens_crown_ibp(kind):
    if kind == "cell":  # full CROWN is quadratic in depth: a smaller cell network
        torch.manual_seed(0)
        model = CellNetwork(validate_genotype(ALL_OPS_GENOTYPE), 2, 2, 10, 1, "digits")
        with torch.no_grad():
            _randomize_bn(model, torch.Generator().manual_seed(1))
        model = model.double().eval()
    else:
        model = _model(kind)
    x, y = _data(n=3, side=6)
    eps = 0.02
    full = spec_bounds(model, x, y, eps, methods=("ibp", "crown"), intermediate="crown", chunk=512)
    fast = spec_bounds(model, x, y, eps, methods=("ibp", "crown"))
    pts = _ball_points(x, eps, "linf", 16, torch.Generator().manual_seed(3))
    with torch.no_grad():
        worst = torch.stack([_margins(model(p), y) for p in pts]).min(0).values
    for name in ("ibp", "crown"):
        assert (worst >= full.lower[name] - 1e-9).all(), name
    # refined intermediate boxes are intersections, so IBP on them can only tighten
    assert (full.lower["ibp"] >= fast.lower["ibp"] - 1e-9).all()
    assert (full.best() >= fast.lower["ibp"] - 1e-9).all()


def test_crown_is_tighter_than_ibp_at_small_eps():
    """Linear bounds win where the relaxations are nearly tight (the reason to report both)."""
    model = _model("cell")
    x, y = _data()
    res = spec_bounds(model, x, y, 0.005, methods=("ibp", "crown"))
    assert (res.lower["crown"] > res.lower["ibp"]).float().mean() > 0.9


@pytest.mark.parametrize("method", list(BOUND_METHODS))
def test_bounds_are_differentiable_in_alpha_and_weights(method):
    model = _model("supernet").train()
    x, y = _data()
    lb = margin_lower_bound(model, x, y, 0.01, "linf", method).mean()
    grads = torch.autograd.grad(lb, model.arch_parameters() + [model.stem[0].weight])
    for gr in grads:
        assert torch.isfinite(gr).all() and gr.abs().sum() > 0


def test_stacked_ibp_gradients_equal_those_of_sliced_stacks(monkeypatch):
    """The IBP pass splits each stacked (clean, lower, upper) tensor into views whose backward
    stacks the three gradients (``split3``); slicing instead gives the same bound and the same
    gradients in α and the weights, bit for bit."""
    from rnas.bounds import graph

    model = _model("supernet_pc").train()
    x, y = _data()
    params = model.arch_parameters() + [model.stem[0].weight]

    def grads():
        lb = margin_lower_bound(model, x, y, 0.01, "linf", "ibp")
        return [lb.detach()] + list(torch.autograd.grad(lb.mean(), params))

    views = grads()
    monkeypatch.setattr(graph, "split3", lambda z, n: (z[:n], z[n : 2 * n], z[2 * n :]))
    for a, b in zip(views, grads()):
        assert torch.equal(a, b)


def _per_edge_graphs(monkeypatch) -> None:
    """Build every supernet graph with one mixed op per edge (no state groups)."""
    from rnas.bounds import builders

    monkeypatch.setattr(builders, "_cell_groupable", lambda *args: False)


def test_grouped_supernet_graph_equals_the_per_edge_one(monkeypatch):
    """In training mode the out-edges of each state are one group of channel blocks in the graph,
    as in the supernet's own forward: the same point pass, IBP bound and α gradients as one mixed
    op per edge, in fewer than half the nodes. CROWN-IBP is at least as tight (a state's n pools
    are one node, relaxed once instead of once per edge) and sound: no point of the ball, through
    the network with BN frozen at the clean batch's statistics, has a margin below either bound."""
    model = _model("supernet").train()
    with torch.no_grad():
        model.alpha_normal.normal_(generator=torch.Generator().manual_seed(3))
        model.alpha_reduce.normal_(generator=torch.Generator().manual_seed(4))
    x, y = _data()

    def passes():
        graph = build_graph(model)
        res = spec_bounds(model, x, y, 0.02, methods=("ibp", "crown"))
        grads = torch.autograd.grad(res.lower["ibp"].sum(), model.arch_parameters())
        return graph, res, grads

    graph, grouped, grads = passes()
    _per_edge_graphs(monkeypatch)
    per_edge_graph, per_edge, per_edge_grads = passes()
    assert len(graph.nodes) < len(per_edge_graph.nodes) / 2
    with torch.no_grad():
        torch.testing.assert_close(graph(x), per_edge_graph(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grouped.lower["ibp"], per_edge.lower["ibp"], rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, per_edge_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert (grouped.lower["crown"] >= per_edge.lower["crown"] - 1e-9).all()
    exact = spec_bounds(model, x, y, 0.0, methods=("ibp", "crown"))  # still per edge: a point
    monkeypatch.undo()
    at_zero = spec_bounds(model, x, y, 0.0, methods=("ibp", "crown"))
    with torch.no_grad():
        true = _margins(model(x), y)
    for name in ("ibp", "crown"):  # exact at ε = 0 (every coefficient of the backward pass counts)
        torch.testing.assert_close(at_zero.lower[name], true, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(exact.lower[name], true, rtol=1e-9, atol=1e-9)
    pts = _ball_points(x, 0.02, "linf", 16, torch.Generator().manual_seed(2))
    with torch.no_grad():
        worst = torch.stack([_margins(graph.forward_fixed_stats(x, p)[1], y) for p in pts]).min(0).values
    for name in ("ibp", "crown"):
        assert (worst >= grouped.lower[name] - 1e-9).all(), name


@pytest.mark.parametrize("case", ["eval", "partial_channels", "masked"])
def test_supernet_graph_stays_per_edge_where_groups_would_differ(case, monkeypatch):
    """No state groups in eval mode (each edge's BN after a pool has its own running statistics),
    with PC-DARTS' partial channels, or with ops switched off: the graph is the per-edge one."""
    model = _model("supernet_pc" if case == "partial_channels" else "supernet").train(case != "eval")
    if case == "masked":  # one op off in each cell type (a cell without masks is grouped)
        model.mask_normal[0, 3] = 0.0
        model.mask_reduce[2, 4] = 0.0
    grouped_nodes = len(build_graph(model).nodes)
    _per_edge_graphs(monkeypatch)
    assert grouped_nodes == len(build_graph(model).nodes)


def test_train_mode_bound_is_the_bound_of_the_network_frozen_at_batch_statistics():
    """Training-mode BN in the bound = affine map with the clean batch's (biased) statistics."""
    model = _model("supernet").train()
    x, y = _data()
    stats = {}

    def hook(mod, inp, out):
        var, mean = torch.var_mean(inp[0], dim=(0, 2, 3), unbiased=False)
        stats[mod] = (mean.detach(), var.detach())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_bound = spec_bounds(model, x, y, 0.01, methods=("ibp", "crown"))
    for k, v in model.state_dict().items():  # the bound pass leaves running statistics alone
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    for m, (mean, var) in stats.items():
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    eval_bound = spec_bounds(model.eval(), x, y, 0.01, methods=("ibp", "crown"))
    for name in ("ibp", "crown"):
        assert torch.allclose(train_bound.lower[name], eval_bound.lower[name], rtol=1e-9, atol=1e-9)


def test_margin_spec_rows():
    y = torch.tensor([0, 3, 9])
    C = margin_spec(y, 10)
    assert C.shape == (3, 9, 10)
    assert (C.sum(-1) == 0).all() and (C[torch.arange(3), :, y] == 1).all()
    others = C.argmin(-1)
    for i in range(3):
        assert sorted(others[i].tolist()) == [k for k in range(10) if k != int(y[i])]


def test_l2_input_set_lower_bound_is_sound():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 5, 5, generator=gen, dtype=torch.float64)
    A = torch.randn(4, 3, 1, 5, 5, generator=gen, dtype=torch.float64)
    s = InputSet(x, 0.3, "l2")
    lower = s.lower(A, torch.zeros(4, 3, dtype=torch.float64))
    pts = _ball_points(x, 0.3, "l2", 64, gen)
    values = torch.einsum("bsd,nbd->nbs", A.flatten(2), pts.flatten(2))
    assert (values >= lower - 1e-12).all()
    # tight for an interior centre: the minimizer x − ε A/‖A‖ is in the box
    xc = torch.full_like(x, 0.5)
    inner = InputSet(xc, 0.1, "l2").lower(A, torch.zeros(4, 3, dtype=torch.float64))
    expected = (A.flatten(2) * xc.flatten(1).unsqueeze(1)).sum(-1) - 0.1 * A.flatten(2).norm(dim=-1)
    assert torch.allclose(inner, expected)


def _adjoint_check(op: g.Op, x: torch.Tensor) -> None:
    """⟨A, f(x) − f(0)⟩ = ⟨crown coefficient, x⟩ and the bias is ⟨A, f(0)⟩ (exact linear rules)."""
    gen = torch.Generator().manual_seed(5)
    out = op.forward([x])
    A = torch.randn(x.shape[0], 3, *out.shape[1:], generator=gen, dtype=x.dtype)
    (a_in,), bias = op.crown(A, [(x, x)], [x])
    lhs = (A * out.unsqueeze(1)).flatten(2).sum(-1)
    rhs = (a_in * x.unsqueeze(1)).flatten(2).sum(-1) + (0 if bias is None else bias)
    assert torch.allclose(lhs, rhs, atol=1e-10)


@pytest.mark.parametrize(
    "stride, padding, dilation, groups, side",
    # stride 1 runs as a flipped-kernel conv (unpadded, grouped, dilated); padding beyond the
    # kernel's reach (1, 3, ...) and stride 2 as the transpose convolution
    [(1, 1, 1, 1, 7), (1, 0, 1, 2, 7), (1, 3, 1, 1, 5), (2, 1, 1, 1, 7), (2, 2, 2, 4, 7), (2, 4, 2, 4, 8)]
    + [(1, 2, 2, 4, 5), (2, 0, 1, 1, 7)],
)
def test_conv_rule_is_the_adjoint(stride, padding, dilation, groups, side):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3 if padding < 4 else 5, stride, padding, dilation, groups, bias=True).double()
    _adjoint_check(g.Conv(conv), torch.randn(2, 4, side, side, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride, padding, dilation, groups, k", [(1, 1, 1, 8, 3), (2, 1, 1, 8, 3), (2, 2, 2, 8, 3)])
@pytest.mark.parametrize("side", [7, 8])
def test_conv_adjoint_equals_autograd_in_both_layouts(stride, padding, dilation, groups, k, side, dtype):
    """``conv_adjoint`` (flipped-kernel conv over zero-inserted A in float32 channels-last on the
    CPU, the transpose conv otherwise) is the vector-Jacobian product of the convolution."""
    torch.manual_seed(0)
    w = torch.randn(8, 8 // groups, k, k, dtype=dtype)
    x = torch.randn(3, 8, side, side, dtype=dtype, requires_grad=True)
    out = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, groups)
    A = torch.randn(3, 2, *out.shape[1:], dtype=dtype)
    for a in (A, A.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)):  # NCHW, channels-last
        got = g.conv_adjoint(a, w, stride, padding, dilation, groups, (side, side))
        for j in range(A.shape[1]):
            (want,) = torch.autograd.grad(out, x, A[:, j], retain_graph=True)
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            assert torch.allclose(got[:, j], want, atol=tol, rtol=tol)


@pytest.mark.parametrize(
    "op",
    [
        g.AvgPool(nn.AvgPool2d(3, 1, 1, count_include_pad=False)),
        g.AvgPool(nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
        g.AvgPool(AvgPool2d(3, 2, 1, count_include_pad=False)),
        g.AvgPool(nn.AvgPool2d(2, 2)),
        g.GlobalAvgPool(),
        g.Shift(),
        g.ChannelShuffle(2),
        g.SliceChannels(2, True),
        g.SliceChannels(2, False),
        g.Scale(torch.tensor(-0.7, dtype=torch.float64)),
        g.ChannelAffine(
            torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=torch.float64),
            torch.tensor([0.1, 0.2, -0.3, 0.0], dtype=torch.float64),
        ),
    ],
)
def test_linear_rules_are_adjoints(op):
    _adjoint_check(op, torch.randn(2, 4, 7, 7, dtype=torch.float64))


def test_relaxations_bound_relu_and_max_pool():
    gen = torch.Generator().manual_seed(0)
    lo = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    up = lo + torch.rand(lo.shape, generator=gen, dtype=torch.float64)
    for op in (g.ReLU(), g.MaxPool(nn.MaxPool2d(3, 2, 1)), g.MaxPool(nn.MaxPool2d(2, 2, ceil_mode=True))):
        out = op.forward([lo])
        A = torch.randn(2, 4, *out.shape[1:], generator=gen, dtype=torch.float64)
        (a_in,), bias = op.crown(A, [(lo, up)], [lo])
        for _ in range(20):
            z = lo + (up - lo) * torch.rand(lo.shape, generator=gen, dtype=torch.float64)
            value = (A * op.forward([z]).unsqueeze(1)).flatten(2).sum(-1)
            linear = (a_in * z.unsqueeze(1)).flatten(2).sum(-1) + bias
            assert (value >= linear - 1e-10).all(), op


def test_unsupported_module_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU())
    with pytest.raises(UnsupportedModelError, match="GELU.*supported:.*Conv2d"):
        build_graph(model)
    with pytest.raises(ValueError, match="unknown bound method"):
        margin_lower_bound(_model("small_cnn"), *_data(), 0.1, "linf", "lp")


def _layouts(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return t.contiguous(), t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "k, stride, dilation, groups, side",
    # depthwise "same" convs of the cell ops (subsampled, by pixel phases, cropped on small maps),
    # 1x1 convs (ReLUConvBN, and the supernet graph's grouped 1x1 of n edges), and a plain conv
    [(3, 1, 1, 0, 8), (5, 1, 1, 0, 8), (3, 1, 2, 0, 8), (5, 1, 2, 0, 4), (3, 2, 2, 0, 8), (5, 2, 2, 0, 8)]
    + [(5, 1, 2, 0, 2), (1, 1, 1, 1, 4), (1, 1, 1, 4, 4), (3, 1, 1, 1, 5)],
)
def test_graph_conv_fast_paths_equal_the_convolution(k, stride, dilation, groups, side, dtype):
    """The graph's conv node computes depthwise and 1x1 convs with the networks' fast kernels
    (``rnas.space.ops.depthwise`` / ``pointwise``): the value, ``|W| r`` and every gradient
    (input, weight), double backward included (DSRNA's Jacobian metric), equal ``F.conv2d``'s in
    both memory formats."""
    torch.manual_seed(0)
    c = 16
    groups = c if groups == 0 else groups  # 0: depthwise
    conv = nn.Conv2d(c, c, k, stride, dilation * (k - 1) // 2, dilation, groups, bias=False).to(dtype)
    node = g.Conv(conv)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    for x0 in _layouts(torch.randn(6, c, side, side, dtype=dtype)):
        pairs = ((node.apply, conv), (node.apply_abs, lambda t: conv._conv_forward(t, conv.weight.abs(), None)))
        for fast, plain in pairs:
            x = x0.clone().requires_grad_(True)
            got, want = fast(x), plain(x)
            assert got.shape == want.shape and torch.allclose(got, want, **tol)
            v = torch.randn_like(want)
            g_got = torch.autograd.grad((got * v).sum(), (x, conv.weight), create_graph=True)
            g_want = torch.autograd.grad((want * v).sum(), (x, conv.weight), create_graph=True)
            for a, b in zip(g_got, g_want):
                assert torch.allclose(a, b, **tol)
            gg_got = torch.autograd.grad(g_got[0].square().sum(), conv.weight)[0]
            gg_want = torch.autograd.grad(g_want[0].square().sum(), conv.weight)[0]
            assert torch.allclose(gg_got, gg_want, **tol)


@pytest.mark.parametrize("shape", [(64, 32, 8, 8), (6, 5, 3, 3), (7, 128, 2, 2)])
def test_batch_var_mean_is_var_mean_with_its_gradient(shape):
    """BN statistics of the bound graph and the grouped pools: the biased variance and the mean
    per channel, values and gradients, in both memory formats (channels-last takes the two
    products with a row of 1/N)."""
    from rnas.space.ops import batch_var_mean

    torch.manual_seed(0)
    base = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    v_ref, m_ref = torch.var_mean(base, dim=(0, 2, 3), unbiased=False)
    for x0 in _layouts(base):
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
            x = x0.to(dtype).requires_grad_(True)
            var, mean = batch_var_mean(x)
            assert torch.allclose(var.double(), v_ref, rtol=tol, atol=tol)
            assert torch.allclose(mean.double(), m_ref, rtol=tol, atol=tol)
            w1, w2 = torch.randn(shape[1], dtype=dtype), torch.randn(shape[1], dtype=dtype)
            (got,) = torch.autograd.grad((var * w1 + mean * w2).sum(), x)
            xr = x.detach().double().requires_grad_(True)
            vr, mr = torch.var_mean(xr, dim=(0, 2, 3), unbiased=False)
            (want,) = torch.autograd.grad((vr * w1.double() + mr * w2.double()).sum(), xr)
            assert torch.allclose(got.double(), want, rtol=tol, atol=tol)


def _taps_cases() -> list[tuple]:
    """Kernel, (stride, padding, dilation) and map side, where the conv has an output position."""
    geometries = [(1, 1, 1), (1, 2, 1), (1, 2, 2), (2, 1, 1), (2, 4, 2), (1, 0, 1), (2, 3, 1)]
    return [
        (k, *geo, side)
        for k in [(3, 3), (5, 5), (3, 5)]
        for geo in geometries
        for side in [1, 2, 3, 4, 7, 8]
        if side + 2 * geo[1] >= geo[2] * (max(k) - 1) + 1
    ]


@pytest.mark.parametrize("k, stride, padding, dilation, side", _taps_cases())
def test_float64_depthwise_taps_equal_the_convolution_and_its_adjoint(k, stride, padding, dilation, side):
    """The bound graph's float64 depthwise conv as one multiply-add per kernel tap (the certified
    radius's passes): the value of ``F.conv2d`` and, as the adjoint, the vector-Jacobian product,
    on maps smaller than the kernel too, from both memory formats."""
    torch.manual_seed(0)
    c = 6
    w = torch.randn(c, 1, *k, dtype=torch.float64)
    for x0 in _layouts(torch.randn(3, c, side, side, dtype=torch.float64)):
        x = x0.clone().requires_grad_(True)
        want = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, c)
        assert not g.float64_depthwise(x, w, c)  # autograd: the plain conv
        with torch.no_grad():
            assert g.float64_depthwise(x, w, c) and not g.float64_depthwise(x.float(), w.float(), c)
            got = g.depthwise_taps(x, w, stride, padding, dilation)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-12, rtol=1e-12)
        A = torch.randn(3, 2, *want.shape[1:], dtype=torch.float64)
        with torch.no_grad():
            adj = g.conv_adjoint(A, w, stride, padding, dilation, c, (side, side))
        for j in range(A.shape[1]):
            (vjp,) = torch.autograd.grad(want, x, A[:, j], retain_graph=True)
            assert torch.allclose(adj[:, j], vjp, atol=1e-12, rtol=1e-12)


def test_float64_bounds_are_those_of_the_plain_depthwise_conv(monkeypatch):
    """The certified margins of a cell network (separable and dilated convs, both cell types) in
    float64 are the same with the depthwise taps as with aten's conv, to float round-off."""
    from rnas.evaluation.certify import certified_margins

    model, (x, y) = _model("cell").float(), _data()
    y = model(x.float()).argmax(1)  # classified correctly: finite margins
    eps = torch.tensor([1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2], dtype=torch.float64)
    fast = certified_margins(model, x, y, eps, "linf", "both", 8, "ibp", torch.float64)
    monkeypatch.setattr(g, "float64_depthwise", lambda *a: False)
    plain = certified_margins(model, x, y, eps, "linf", "both", 8, "ibp", torch.float64)
    assert torch.isfinite(plain).all() and (plain > 0).any() and (plain < 0).any()
    assert torch.allclose(fast, plain, rtol=1e-9, atol=1e-12)
