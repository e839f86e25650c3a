"""Each bilevel method's search losses, checked numerically on a tiny deterministic case.

For DARTS (rnas/search/base.py), DSRNA (rnas/search/methods/dsrna.py) and RNAS
(rnas/search/methods/rnas.py) the expected architecture and weight losses are computed here from
their definitions (docs/methods/*.md) with independent code: cross-entropy, softmax and the
divergences written out by hand from logits computed separately, the Jacobian metric one example
at a time on a copy of the network frozen at the batch statistics, the margin bound from
``rnas.bounds``. Each method's loss must equal it to float64 tolerance, so that dropping a term
or changing a weight (γ, λ, ε, λ_J, the noise) fails a test. The step tests check that one
bilevel step reports those losses and moves α along the gradient of the expected architecture
loss (Adam's first step is −lr·sign of the gradient).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_splits
from test_dsrna import batch_statistics_held, frozen_at_batch_statistics, per_example_jacobian
from torch import nn

import rnas.search.methods.rnas as rnas_module
from rnas.bounds import margin_lower_bound
from rnas.config import params_from_dict
from rnas.runs import resolve_run
from rnas.search.base import Progress, SearchContext
from rnas.search.methods import make_method

torch.set_num_threads(1)

TOL = dict(rel=1e-9, abs=1e-12)  # float64 throughout


def val(t: torch.Tensor) -> float:
    return float(t.detach())


def params(method: str, **kw):
    return params_from_dict(
        {
            "pipeline": {"progress": False, "channels_last": False},
            "search": {
                "epochs": 1,
                "batch_size": 8,
                "init_channels": 4,
                "layers": 2,
                "nodes": 2,
                "methods": {method: kw} if kw else {},
            },
        }
    )


def set_up(run: str, p):
    """The run's method, set up on a tiny supernet in float64 (training mode), and two batches."""
    splits = tiny_splits()
    torch.manual_seed(0)
    spec = resolve_run(run)
    method = make_method(spec.method)
    method.setup(
        SearchContext(params=p, run=spec, info=splits.info, device=torch.device("cpu"), seed=0, steps_per_epoch=1)
    )
    method.supernet.double().train()  # in place: the optimizers keep the same parameters
    x = splits.train.x.double()
    return method, (x[:8], splits.train.y[:8]), (x[8:16], splits.train.y[8:16])


# -- definitions, written out -----------------------------------------------------------------


def ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, batch mean: log Σ_k exp z_k − z_y."""
    zmax = z.max(1, keepdim=True).values
    lse = zmax.squeeze(1) + torch.log(torch.exp(z - zmax).sum(1))
    return (lse - z[torch.arange(len(y)), y]).mean()


def softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(1, keepdim=True).values)
    return e / e.sum(1, keepdim=True)


def divergence(
    name: str,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    clean_cells: list[torch.Tensor],
    noisy_cells: list[torch.Tensor],
) -> torch.Tensor:
    """D(f(x), f(x̃)) of docs/methods/rnas.md, batch mean."""
    p, q = softmax(clean), softmax(noisy)
    if name == "kl":
        return (p * (torch.log(p) - torch.log(q))).sum(1).mean()
    if name == "js":
        m = (p + q) / 2
        return (0.5 * (p * torch.log(p / m)).sum(1) + 0.5 * (q * torch.log(q / m)).sum(1)).mean()
    if name == "l2":
        return ((clean - noisy) ** 2).sum(1).mean()
    assert name == "features"
    terms = []
    for a, b in zip(clean_cells, noisy_cells):
        a, b = a.flatten(1), b.flatten(1)
        a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        terms.append(((a - b) ** 2).sum(1).mean())
    return sum(terms) / len(terms)


def logits_and_cells(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    cells: list[torch.Tensor] = []
    handles = [c.register_forward_hook(lambda _m, _i, out: cells.append(out)) for c in net.cells]
    try:
        return net(x), cells
    finally:
        for h in handles:
            h.remove()


def uniform_noise(x: torch.Tensor, scale: float, gen: torch.Generator) -> torch.Tensor:
    """clip_[0,1](x + δ), δ ~ U[−s, s] per pixel, drawn from ``gen`` on the CPU."""
    delta = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * scale
    return torch.clamp(x + delta, 0.0, 1.0)


def copy_generator(gen: torch.Generator) -> torch.Generator:
    g = torch.Generator()
    g.set_state(gen.get_state())
    return g


def assert_first_adam_step(method, alpha_before: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """α after the step = α − lr·ĝ/(|ĝ| + eps_Adam), ĝ = ∇_α L + wd·α (Adam's first step)."""
    group = method.a_opt.param_groups[0]
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    for a0, g, a1 in zip(alpha_before, grads, method.supernet.arch_parameters()):
        gh = g + wd * a0
        expected = a0 - lr * gh / (gh.abs() + eps)
        assert torch.allclose(a1.detach(), expected, rtol=1e-7, atol=1e-12)


# -- DARTS -------------------------------------------------------------------------------------


def test_darts_losses_are_clean_ce():
    method, (xa, ya), (xw, yw) = set_up("darts", params("dsrna"))
    net = method.supernet
    loss, metrics = method.arch_loss(net, xa, ya)
    assert val(loss) == pytest.approx(val(ce(net(xa), ya)), **TOL) and metrics == {}
    w_loss, logits = method.weight_loss(net, xw, yw)
    assert torch.allclose(logits, net(xw), rtol=1e-12, atol=1e-12)
    assert val(w_loss) == pytest.approx(val(ce(net(xw), yw)), **TOL)


def test_darts_step_reports_the_losses_and_moves_alpha_along_their_gradient():
    method, (xa, ya), (xw, yw) = set_up("darts", params("dsrna"))
    ref = copy.deepcopy(method.supernet)
    expected_a = ce(ref(xa), ya)
    grads = torch.autograd.grad(expected_a, ref.arch_parameters())
    alpha0 = [a.detach().clone() for a in ref.arch_parameters()]
    metrics = method.step((xw, yw), (xa, ya), Progress(0, 0, 1))
    assert metrics["arch_loss"] == pytest.approx(val(expected_a), **TOL)
    assert_first_adam_step(method, alpha0, grads)
    with torch.no_grad():  # the weight step sees the new α and the old weights
        for p, q in zip(ref.arch_parameters(), method.supernet.arch_parameters()):
            p.copy_(q)
    assert metrics["weight_loss"] == pytest.approx(val(ce(ref(xw), yw)), **TOL)


# -- DSRNA -------------------------------------------------------------------------------------

DSRNA = dict(gamma=0.7, epsilon=0.05, jacobian_weight=3.0, bound_dtype="float64")


def expected_r_cb(net, x, y, eps, bound_method, scale):
    lb = margin_lower_bound(net, x, y, eps, "linf", bound_method)  # (B,), training-mode BN
    s = lb if scale == "linear" else torch.sign(lb) * torch.log(1 + lb.abs())
    return s.mean(), lb


def expected_r_jac(net, x, eps, norm, v=None, differentiable=False):
    """Mean of −ε·‖∇ₓ g(x_i)‖_*, one example at a time, BN at the batch's statistics: constants
    (an eval-mode copy), or (``differentiable``) functions of α on ``net`` itself (a double backward)."""
    if not differentiable:
        return per_example_jacobian(frozen_at_batch_statistics(net, x), x, eps, norm, v).mean()
    with batch_statistics_held(net, x):
        return per_example_jacobian(net, x, eps, norm, v, create_graph=True).mean()


def projection(gen: torch.Generator, shape) -> torch.Tensor:
    v = torch.randn(shape, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("bound_method, scale", [("ibp", "log"), ("ibp", "linear"), ("crown", "log")])
def test_dsrna_cb_arch_loss(bound_method, scale):
    method, (x, y), _ = set_up("dsrna_cb", params("dsrna", bound_method=bound_method, cb_scale=scale, **DSRNA))
    net = method.supernet
    r_cb, lb = expected_r_cb(net, x, y, 0.05, bound_method, scale)
    expected = ce(net(x), y) - 0.7 * r_cb
    loss, metrics = method.arch_loss(net, x, y)
    assert val(loss) == pytest.approx(val(expected), **TOL)
    assert abs(0.7 * val(r_cb)) > 1e-3  # the term is far above the tolerance
    assert metrics["r_cb"] == pytest.approx(val(r_cb), **TOL) == metrics["robustness"]
    assert metrics["margin_bound"] == pytest.approx(val(lb.mean()), **TOL)
    assert metrics["certified_frac"] == val((lb > 0).double().mean())


@pytest.mark.parametrize("norm, proj", [("linf", "top1"), ("l2", "random")])
def test_dsrna_jacobian_arch_loss(norm, proj):
    method, (x, y), _ = set_up("dsrna_jacobian", params("dsrna", norm=norm, jacobian_projection=proj, **DSRNA))
    net = method.supernet
    v = projection(copy_generator(method.generator), (8, 10)) if proj == "random" else None
    r_jac = expected_r_jac(net, x, 0.05, norm, v)
    expected = ce(net(x), y) - 0.7 * r_jac
    loss, metrics = method.arch_loss(net, x, y)
    assert val(loss) == pytest.approx(val(expected), **TOL)
    assert abs(0.7 * val(r_jac)) > 1e-3
    assert metrics["r_jac"] == pytest.approx(val(r_jac), **TOL) == metrics["robustness"]


def test_dsrna_combined_arch_loss_and_step():
    method, (xa, ya), (xw, yw) = set_up("dsrna_combined", params("dsrna", **DSRNA))
    ref = copy.deepcopy(method.supernet)
    r_cb, _ = expected_r_cb(ref, xa, ya, 0.05, "ibp", "log")
    r_jac = expected_r_jac(ref, xa, 0.05, "linf", differentiable=True)
    expected = ce(ref(xa), ya) - 0.7 * (r_cb + 3.0 * r_jac)
    assert abs(0.7 * 3.0 * val(r_jac)) > 1e-3
    loss, metrics = method.arch_loss(method.supernet, xa, ya)
    assert val(loss) == pytest.approx(val(expected), **TOL)
    assert metrics["robustness"] == pytest.approx(val(r_cb + 3.0 * r_jac), **TOL)
    assert metrics["r_cb"] == pytest.approx(val(r_cb), **TOL)
    assert metrics["r_jac"] == pytest.approx(val(r_jac), **TOL)
    # the step: the same loss, α along its gradient (∂R_jac/∂α by a double backward of the
    # one-example-at-a-time reference), then the weights on clean CE
    grads = torch.autograd.grad(expected, ref.arch_parameters())
    alpha0 = [a.detach().clone() for a in ref.arch_parameters()]
    step = method.step((xw, yw), (xa, ya), Progress(0, 0, 1))
    assert step["arch_loss"] == pytest.approx(val(expected), **TOL)
    assert_first_adam_step(method, alpha0, grads)
    with torch.no_grad():
        for p, q in zip(ref.arch_parameters(), method.supernet.arch_parameters()):
            p.copy_(q)
    assert step["weight_loss"] == pytest.approx(val(ce(ref(xw), yw)), **TOL)


# -- RNAS --------------------------------------------------------------------------------------

RNAS = dict(lam=0.7, noise_scale=0.2)


def expected_rnas_arch(net, x, y, x_tilde, div: str, lam: float):
    clean, clean_cells = logits_and_cells(net, x)
    noisy, noisy_cells = logits_and_cells(net, x_tilde)
    c, d = ce(clean, y), divergence(div, clean, noisy, clean_cells, noisy_cells)
    return c + lam * d, c, d


@pytest.mark.parametrize("div", ["kl", "js", "l2", "features"])
def test_rnas_arch_loss(div):
    method, (x, y), _ = set_up("rnas", params("rnas", divergence=div, **RNAS))
    net = method.supernet
    x_tilde = uniform_noise(x, 0.2, copy_generator(method.generator))
    expected, c, d = expected_rnas_arch(net, x, y, x_tilde, div, 0.7)
    loss, metrics = method.arch_loss(net, x, y)
    assert val(loss) == pytest.approx(val(expected), **TOL)
    assert 0.7 * val(d) > 1e-4  # the term is far above the tolerance
    assert metrics["arch_ce"] == pytest.approx(val(c), **TOL)
    assert metrics["robust_term"] == pytest.approx(val(d), **TOL)


def test_rnas_lambda0_arch_loss_is_ce_and_logs_R():
    method, (x, y), _ = set_up("rnas", params("rnas", lam=0.0, noise_scale=0.2))
    net = method.supernet
    x_tilde = uniform_noise(x, 0.2, copy_generator(method.generator))
    _, c, d = expected_rnas_arch(net, x, y, x_tilde, "kl", 0.0)
    loss, metrics = method.arch_loss(net, x, y)
    assert val(loss) == pytest.approx(val(c), **TOL)
    assert metrics["robust_term"] == pytest.approx(val(d), **TOL) and val(d) > 1e-4


def test_rnas_gaussian_weight_loss():
    method, _, (x, y) = set_up("rnas", params("rnas", noise="gaussian", **RNAS))
    net = method.supernet
    gen = copy_generator(method.generator)
    x_tilde = torch.clamp(x + torch.randn(x.shape, generator=gen, dtype=x.dtype) * 0.2, 0.0, 1.0)
    w_loss, logits = method.weight_loss(net, x, y)
    assert val(w_loss) == pytest.approx(val(ce(net(x_tilde), y)), **TOL)
    assert val(w_loss) != pytest.approx(val(ce(net(x), y)), rel=1e-3)  # the noise matters
    assert torch.allclose(logits, net(x_tilde), rtol=1e-12, atol=1e-12)


def test_rnas_step_noise_on_both_levels():
    """One step: the architecture loss on (x_a, x̃_a), then the weights on CE(f(x̃_w)), the two
    noise draws taken in that order from the method's generator."""
    method, (xa, ya), (xw, yw) = set_up("rnas", params("rnas", divergence="js", **RNAS))
    ref = copy.deepcopy(method.supernet)
    gen = copy_generator(method.generator)
    xa_t, xw_t = uniform_noise(xa, 0.2, gen), uniform_noise(xw, 0.2, gen)
    expected_a, _, _ = expected_rnas_arch(ref, xa, ya, xa_t, "js", 0.7)
    grads = torch.autograd.grad(expected_a, ref.arch_parameters())
    alpha0 = [a.detach().clone() for a in ref.arch_parameters()]
    step = method.step((xw, yw), (xa, ya), Progress(0, 0, 1))
    assert step["arch_loss"] == pytest.approx(val(expected_a), **TOL)
    assert_first_adam_step(method, alpha0, grads)
    with torch.no_grad():
        for p, q in zip(ref.arch_parameters(), method.supernet.arch_parameters()):
            p.copy_(q)
    assert step["weight_loss"] == pytest.approx(val(ce(ref(xw_t), yw)), **TOL)


def test_rnas_adv_uses_the_adversarial_examples_on_both_levels(monkeypatch):
    """``rnas_adv``: the same losses with x̃ the attack's output (the attack replaced here by a
    fixed, recognisable perturbation; PGD itself is tested in test_rnas_noise.py)."""

    def fake_attack(model, x, y, cfg, generator):
        return (1.0 - x).detach()

    monkeypatch.setattr(rnas_module, "adversarial_examples", fake_attack)
    method, (xa, ya), (xw, yw) = set_up("rnas_adv", params("rnas", lam=0.7, divergence="l2"))
    net = method.supernet
    expected, _, _ = expected_rnas_arch(net, xa, ya, 1.0 - xa, "l2", 0.7)
    loss, _ = method.arch_loss(net, xa, ya)
    assert val(loss) == pytest.approx(val(expected), **TOL)
    w_loss, _ = method.weight_loss(net, xw, yw)
    assert val(w_loss) == pytest.approx(val(ce(net(1.0 - xw), yw)), **TOL)


@pytest.mark.parametrize("run", ["darts", "dsrna_cb", "dsrna_jacobian"])
def test_weight_loss_is_clean_ce(run):
    """DARTS and DSRNA train the weights on clean CE (DSRNA changes only the architecture loss)."""
    method, _, (x, y) = set_up(run, params("dsrna", **DSRNA))
    w_loss, _ = method.weight_loss(method.supernet, x, y)
    assert val(w_loss) == pytest.approx(val(ce(method.supernet(x), y)), **TOL)
    assert math.isfinite(val(w_loss))
