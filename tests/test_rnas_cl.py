"""RNAS-CL: attention maps, tutors, the width space and the method (tiny networks, 8x8 inputs)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnas import paths
from rnas.checkpoint import build_model as build_checkpoint_model
from rnas.config import ParamsError, params_from_dict
from rnas.data import Splits, TensorPair, get_info, iterate_batches
from rnas.distill import (
    DistillationError,
    FixedTutorDistillation,
    MapTaps,
    TeacherProbe,
    TutorLogits,
    attention_loss,
    attention_map,
    cell_layers,
    kd_kl,
    pairwise_distances,
    student_layers,
    teacher_layers,
    transfer_tutors,
)
from rnas.evaluation.complexity import count_macs, count_parameters
from rnas.models import build_model
from rnas.pipeline import stage_keys
from rnas.runs import RUNS
from rnas.search.base import Progress, SearchContext
from rnas.search.loop import run_search
from rnas.search.methods import make_method
from rnas.search.methods.rnas_cl import RnasClCellSearch, RnasClWidthSearch, cost_factor, step_phase, temperature
from rnas.space.genotype import validate_genotype
from rnas.space.network import CellNetwork
from rnas.space.supernet import Supernet
from rnas.space.width import (
    WidthArchitectureError,
    WidthNetwork,
    WidthSupernet,
    validate_width_architecture,
    width_choices,
)

torch.set_num_threads(1)

WIDTH = {"stage_widths": [8, 8], "stage_blocks": [1, 1], "stage_strides": [1, 2], "expansion": 2}


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def tiny_supernet(**kw) -> WidthSupernet:
    args = dict(
        num_classes=10,
        input_channels=1,
        dataset="digits",
        image_size=8,
        stem_channels=4,
        stage_widths=(4, 8),
        stage_blocks=(1, 2),
        stage_strides=(1, 2),
        expansion=2,
        kernel=3,
        width_options=3,
        width_step=0.25,
    )
    args.update(kw)
    return WidthSupernet(**args)


def tiny_teacher(family: str = "small_cnn") -> nn.Module:
    kwargs = {
        "small_cnn": {"width": 4, "depth": 3},
        "preact_resnet18": {"width": 2},
        "wide_resnet": {"depth": 10, "widen_factor": 1},
    }[family]
    return build_model(family, 10, 1, "digits", **kwargs).eval()


def tiny_params(**rnas_cl):
    block = {"width": WIDTH, **rnas_cl}
    return params_from_dict(
        {
            "pipeline": {"progress": False, "channels_last": False},
            "search": {"epochs": 1, "batch_size": 16, "init_channels": 4, "layers": 2, "methods": {"rnas_cl": block}},
        }
    )


def digits_info():
    return dataclasses.replace(get_info("digits"), image_size=8)


def random_splits(n: int = 96) -> Splits:
    gen = torch.Generator().manual_seed(1)

    def pair(k: int) -> TensorPair:
        return TensorPair(torch.rand(k, 1, 8, 8, generator=gen), torch.randint(0, 10, (k,), generator=gen))

    return Splits(pair(n), pair(16), pair(16), digits_info())


def make_ctx(params, run: str, teacher: nn.Module, seed: int = 0, steps: int = 5) -> SearchContext:
    return SearchContext(params, RUNS[run], digits_info(), torch.device("cpu"), seed, steps, teacher)


# -- attention maps and losses ---------------------------------------------------------


def test_attention_map_is_normalized_sum_of_squares():
    a = torch.randn(3, 5, 8, 8)
    m = attention_map(a, 8)
    assert m.shape == (3, 64)
    assert torch.allclose(m.norm(dim=1), torch.ones(3))
    expected = a.pow(2).sum(1).flatten(1)
    assert torch.allclose(m, expected / expected.norm(dim=1, keepdim=True))
    assert torch.allclose(attention_map(7.0 * a, 8), m, atol=1e-6)  # scale-free
    assert attention_map(torch.randn(2, 3, 2, 2), 4).shape == (2, 16)  # upsampled
    assert attention_map(torch.randn(2, 3, 16, 16), 4).shape == (2, 16)  # area-averaged


def test_attention_loss_forms_match_their_definitions():
    """public (the authors' code): per student layer the L2 norm of the tutor-weighted differences
    to every teacher map, summed over student layers; paper: Σ_ij g_ij·d_ij / (n_s·n_t)."""
    s, t = torch.randn(4, 3, 9), torch.randn(2, 3, 9)
    g = torch.softmax(torch.randn(4, 2), -1)
    d = [[float(((s[i] - t[j]) ** 2).sum(-1).mean()) for j in range(2)] for i in range(4)]
    paper = sum(float(g[i, j]) * d[i][j] for i in range(4) for j in range(2)) / 8
    public = sum(math.sqrt(sum(float(g[i, j]) ** 2 * d[i][j] for j in range(2))) for i in range(4))
    assert float(attention_loss(s, t, g, "paper")) == pytest.approx(paper, rel=1e-5)
    assert float(attention_loss(s, t, g, "public")) == pytest.approx(public, rel=1e-5)
    assert float(attention_loss(s, t, g)) == pytest.approx(public, rel=1e-5)  # the default form
    # The public form is the authors' norm over the stacked weighted differences (batch of one:
    # their batch-wide map normalization and this per-example one coincide).
    s1, t1 = F.normalize(torch.rand(4, 1, 9), dim=-1), F.normalize(torch.rand(2, 1, 9), dim=-1)
    authors = sum(torch.linalg.norm((t1[:, 0] - s1[i, 0][None, :]) * g[i][:, None]) for i in range(4))
    assert torch.allclose(attention_loss(s1, t1, g, "public"), authors, atol=1e-6)
    assert torch.allclose(pairwise_distances(s, s).diagonal(), torch.zeros(4), atol=1e-5)
    with pytest.raises(DistillationError):
        attention_loss(s, t, torch.ones(2, 4))
    with pytest.raises(DistillationError, match="loss form"):
        attention_loss(s, t, g, "squared")


def test_public_attention_loss_has_a_finite_gradient_at_zero_distance():
    s = torch.rand(3, 2, 4, requires_grad=True)
    loss = attention_loss(s, s.detach().clone(), torch.eye(3), "public")
    (grad,) = torch.autograd.grad(loss, s)
    assert float(loss.detach()) < 1e-5 and torch.isfinite(grad).all()


def test_cost_factor_forms():
    cost = torch.tensor(math.exp(9.0))
    assert float(cost_factor(cost, 0.5, "public")) == pytest.approx(4.5)  # β·log(MACs), the authors' code
    assert float(cost_factor(cost, 0.5, "paper")) == pytest.approx(3.0)  # log(MACs)^β
    with pytest.raises(ValueError):
        cost_factor(torch.tensor(1.0), 0.5, "public")


def test_kd_kl_is_teacher_to_student_kl_times_t_squared():
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    p_t = torch.softmax(t / 2, 1)
    manual = (p_t * (p_t.log() - torch.log_softmax(s / 2, 1))).sum(1).mean() * 4
    assert torch.allclose(kd_kl(s, t, 2.0), manual, atol=1e-5)
    assert float(kd_kl(t, t, 1.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("family", ["small_cnn", "preact_resnet18", "wide_resnet"])
def test_teacher_layers_are_every_conv_of_any_family(family):
    teacher = tiny_teacher(family)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in teacher.modules())
    probe = TeacherProbe(teacher, 4)
    logits, maps = probe(torch.rand(2, 1, 8, 8))
    assert len(probe.names) == n_convs == maps.shape[0] and logits.shape == (2, 10)
    assert maps.shape[1:] == (2, 16) and not maps.requires_grad
    assert all(not p.requires_grad for p in teacher.parameters())


# -- the width space -------------------------------------------------------------------


def test_width_choices_and_bad_options():
    assert width_choices(16, 3, 0.25) == (16, 12, 8)
    with pytest.raises(ValueError):
        width_choices(2, 3, 0.25)  # 2, 2, 1: not distinct


@pytest.mark.parametrize("train", [True, False])
def test_full_width_masks_give_the_unmasked_network(train):
    net = tiny_supernet().train(train)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        net.width_mode = "full"
        masked = net(x)
        net.width_mode = "none"
        unmasked = net(x)
        full = net.export(list(net.max_widths)).train(train)
        exported = full(x)
    assert torch.equal(masked, unmasked)
    assert torch.allclose(exported, unmasked, atol=1e-5)


def test_hard_masks_equal_the_exported_network_and_its_macs():
    net = tiny_supernet().eval()
    with torch.no_grad():
        net.width_logits.copy_(torch.tensor([[0.0, 0, 5], [0, 5, 0], [5, 0, 0]]))
    net.width_mode = "argmax"
    widths = net.discrete_widths()
    assert widths == [2, 6, 8]
    final = net.export(widths).eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x), final(x), atol=1e-5)
        cost = float(net.expected_cost(F.one_hot(net.width_logits.argmax(-1), 3).float()))
    assert cost == count_macs(final, (1, 8, 8))
    # the rebuilt network (checkpoint registry) has the same shape
    rebuilt = build_checkpoint_model(final.model_args)
    assert count_parameters(rebuilt) == count_parameters(final)
    assert all(a.shape == b.shape for a, b in zip(rebuilt.state_dict().values(), final.state_dict().values()))


def test_expected_cost_uses_effective_widths_and_is_differentiable():
    net = tiny_supernet()
    g = torch.softmax(net.width_logits, -1)
    cost = net.expected_cost(g)
    (grad,) = torch.autograd.grad(cost, net.width_logits)
    assert torch.isfinite(grad).all() and (grad[:, 0] > 0).all()  # more width, more MACs
    assert float(net.expected_cost(F.one_hot(torch.full((3,), 2), 3).float())) < float(cost.detach())


# -- gradients reach every tutor and width logit ------------------------------------------


def test_attention_loss_gradient_reaches_every_tutor_and_width_logit():
    net = tiny_supernet().train()
    net.tau = 1.0
    teacher = TeacherProbe(tiny_teacher(), 4)
    taps = MapTaps(student_layers(net), 4, root=net)
    tutors = TutorLogits(len(taps.names), len(teacher.names))
    x = torch.rand(8, 1, 8, 8)
    net(x)
    _, t_maps = teacher(x)
    loss = attention_loss(taps.stack(), t_maps, tutors.sample(1.0, torch.Generator().manual_seed(0)))
    g_width, g_tutor = torch.autograd.grad(loss, [net.width_logits, tutors.logits])
    assert (g_width.abs() > 0).all(), "every width logit moves the attention loss"
    assert (g_tutor.abs() > 0).all(), "every tutor logit moves the attention loss"


@pytest.mark.parametrize("form", ["public", "paper"])
def test_tutors_follow_permuted_teacher_maps(form):
    """Optimized tutors pick the closest teacher map; permuting the teacher layers permutes them.

    paper: fitted through Gumbel samples at τ = 1. public: Σ_i sqrt(Σ_j g_ij²·d_ij) is smallest at
    the spread weights g_ij ∝ 1/d_ij (argmax: the closest map), and its Gumbel gradient reaches a
    teacher layer only in proportion to its sampled weight, so the tutors are fitted on the
    noise-free softmax and checked against that minimum (docs/methods/rnas_cl.md, "Loss forms")."""
    net = tiny_supernet().eval()
    net.width_mode = "full"
    teacher = TeacherProbe(tiny_teacher(), 4)
    taps = MapTaps(student_layers(net), 4, root=net)
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        net(x)
        s_maps = taps.stack()
        _, t_maps = teacher(x)

    def fit(t: torch.Tensor) -> TutorLogits:
        tutors = TutorLogits(s_maps.shape[0], t.shape[0])
        opt = torch.optim.Adam(tutors.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(0)
        for _ in range(60 if form == "paper" else 300):
            opt.zero_grad()
            g = tutors.sample(1.0, gen) if form == "paper" else torch.softmax(tutors.logits, -1)
            attention_loss(s_maps, t, g, form).backward()
            opt.step()
        return tutors

    d = pairwise_distances(s_maps, t_maps)  # (n_s, n_t)
    best2 = d.topk(2, dim=1, largest=False).values
    clear = (best2[:, 1] - best2[:, 0] > 0.02).nonzero().flatten().tolist()  # rows that are not near-ties
    assert len(clear) >= len(d) // 2
    fitted = fit(t_maps)
    if form == "public":
        assert torch.allclose(fitted.probabilities(), (1 / d) / (1 / d).sum(1, keepdim=True), atol=1e-3)
    chosen = fitted.choice()
    assert [chosen[i] for i in clear] == d.argmin(1)[clear].tolist()
    perm = [2, 0, 1]  # a cycle: no teacher layer keeps its index
    chosen_perm = fit(t_maps[perm]).choice()
    assert [chosen_perm[i] for i in clear] == [perm.index(chosen[i]) for i in clear]
    assert [chosen_perm[i] for i in clear] != [chosen[i] for i in clear]


# -- the method -----------------------------------------------------------------------


def test_schedule_80_20_and_temperature():
    phases = [step_phase(i, 10, 0.2) for i in range(10)]
    assert phases == ["weight"] * 8 + ["arch"] * 2
    assert step_phase(0, 1, 0.2) == "both"
    assert [step_phase(i, 3, 0.2) for i in range(3)] == ["weight", "weight", "arch"]
    cfg = tiny_params().search.methods.rnas_cl
    assert temperature(cfg, 0) == 5.0
    assert temperature(cfg, 10) == pytest.approx(5.0 * math.exp(-0.45))


def _arch_steps(beta: float, seed: int = 0) -> float:
    """Expected MACs after a few architecture steps at cost exponent β (paper form: log(MACs)^β;
    in the public form β·log(MACs) β only scales the loss)."""
    torch.manual_seed(seed)
    method = RnasClWidthSearch()
    method.setup(make_ctx(tiny_params(beta_cost=beta, loss_form="paper"), "rnas_cl", tiny_teacher(), seed=seed))
    splits = random_splits(112)
    for x, y in iterate_batches(splits.train, 16, True, torch.Generator().manual_seed(seed), True):
        method.step((x, y), (x, y), Progress(0, 4, 5))  # step 4 of 5: an architecture step
    with torch.no_grad():
        return float(method.supernet.expected_cost(torch.softmax(method.supernet.width_logits, -1)))


def test_larger_cost_exponent_gives_a_smaller_network():
    costs = [_arch_steps(beta) for beta in (0.0, 0.5, 4.0)]
    assert costs[0] > costs[1] > costs[2], costs


def test_arch_step_updates_only_logits_and_weight_step_only_weights():
    method = RnasClWidthSearch()
    method.setup(make_ctx(tiny_params(), "rnas_cl", tiny_teacher()))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    w0 = [p.detach().clone() for p in method.supernet.weights() if p.dim() > 1]
    a0 = [p.detach().clone() for p in method.arch_parameters()]
    method.step((x, y), (x, y), Progress(0, 0, 5))  # weight step
    assert all(torch.equal(a, p) for a, p in zip(a0, method.arch_parameters()))
    assert any(not torch.equal(w, p) for w, p in zip(w0, [p for p in method.supernet.weights() if p.dim() > 1]))
    metrics = method.step((x, y), (x, y), Progress(0, 4, 5))  # architecture step
    assert all(not torch.equal(a, p) for a, p in zip(a0, method.arch_parameters()))
    assert {"loss", "ce", "kl", "attn", "macs"} <= set(metrics)


def _area_or_bilinear(m: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W) -> (B, size, size) as the docs define it: area averaging down, bilinear up."""
    if m.shape[-1] >= size:
        return F.adaptive_avg_pool2d(m[:, None], size)[:, 0]
    return F.interpolate(m[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def _by_hand_map(a: torch.Tensor, size: int) -> torch.Tensor:
    m = _area_or_bilinear(a.double().pow(2).sum(1), size).flatten(1)  # F(A) = Σ_c A_c², resized
    return m / m.norm(dim=1, keepdim=True)  # per example


def _by_hand_search_loss(
    form: str, cfg, tau: float, s_acts, t_acts, logits, t_logits, y, tutor_logits, noise, width_logits, net
) -> dict[str, float]:
    """The width search loss of one batch from its definition (docs/methods/rnas_cl.md), in float64."""
    size = cfg.map_size
    s_maps = [_by_hand_map(a, size) for a in s_acts]
    t_maps = [_by_hand_map(a, size) for a in t_acts]
    n_s, n_t = len(s_maps), len(t_maps)
    g = torch.softmax((tutor_logits.double() + noise) / tau, -1)  # Gumbel-softmax tutor weights
    d = [[float(((s_maps[i] - t_maps[j]) ** 2).sum(1).mean()) for j in range(n_t)] for i in range(n_s)]
    if form == "public":
        attn = sum(math.sqrt(sum(float(g[i, j]) ** 2 * d[i][j] for j in range(n_t))) for i in range(n_s))
    else:
        attn = sum(float(g[i, j]) * d[i][j] for i in range(n_s) for j in range(n_t)) / (n_s * n_t)
    z, zt, big_t = logits.double(), t_logits.double(), cfg.temperature
    ce = float(-torch.log_softmax(z, 1)[torch.arange(len(y)), y].mean())
    p_t = torch.softmax(zt / big_t, 1)
    kl = float((p_t * (p_t.log() - torch.log_softmax(z / big_t, 1))).sum(1).mean()) * big_t**2
    # MACs with effective widths Σ_i g_i·w_i (soft width weights softmax(l/τ)), stem + blocks + head
    g_w = torch.softmax(width_logits.double() / tau, -1)
    e, k = net.expansion, net.kernel
    macs = net.stem_size**2 * net.input_channels * net.stem_channels * 9
    c_in = float(net.stem_channels)
    for b, ((size_in, size_out), options) in enumerate(zip(net.sizes, net.options)):
        w = float(sum(float(g_w[b, i]) * options[i] for i in range(len(options))))
        macs += size_in**2 * c_in * e * w + size_out**2 * k * k * e * w + size_out**2 * e * w * w
        c_in = w
    macs += c_in * net.num_classes
    factor = cfg.beta_cost * math.log(macs) if form == "public" else math.log(macs) ** cfg.beta_cost
    total = cfg.alpha_cost * (ce + cfg.kl_weight * kl + cfg.gamma * attn) * factor
    return {"loss": total, "ce": ce, "kl": kl, "attn": attn, "macs": macs}


@pytest.mark.parametrize("form", ["public", "paper"])
def test_search_loss_equals_its_definition_by_hand(form):
    """α·(CE + kl_weight·KL + γ·L_attn)·C(MACs) computed term by term from the definitions on a
    tiny student, teacher and batch: dropping a term, changing a weight or a form fails this."""
    params = tiny_params(loss_form=form, gamma=3.0, kl_weight=0.7, temperature=2.0, alpha_cost=0.3, beta_cost=0.8)
    cfg = params.search.methods.rnas_cl
    teacher = tiny_teacher()
    method = RnasClWidthSearch()
    method.setup(make_ctx(params, "rnas_cl", teacher))
    net = method.supernet
    with torch.no_grad():
        net.width_logits.copy_(torch.randn_like(net.width_logits))
        method.cl.tutors.logits.copy_(torch.randn_like(method.cl.tutors.logits))
    tau = 2.0
    method.set_temperature(tau)
    net.width_mode = "soft"  # widths softmax(l/τ): the only random draw left is the tutors' Gumbel noise
    s_acts, t_acts, out = [], [], {}
    hooks = [m.register_forward_hook(lambda _m, _i, o: s_acts.append(o.detach())) for _, m in net.distill_layers()]
    hooks += [
        m.register_forward_hook(lambda _m, _i, o: t_acts.append(o.detach()))
        for m in teacher.modules()
        if isinstance(m, nn.Conv2d)
    ]
    hooks.append(net.register_forward_hook(lambda _m, _i, o: out.__setitem__("s", o.detach())))
    hooks.append(teacher.register_forward_hook(lambda _m, _i, o: out.__setitem__("t", o.detach())))
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 3, 5, 9])
    state = method.cl.generator.get_state()
    u = torch.rand(method.cl.tutors.logits.shape, generator=torch.Generator().manual_seed(0).set_state(state))
    noise = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10))).double()
    for train_arch in (True, False):  # the same value on both levels (the weights see C as a constant)
        s_acts.clear(), t_acts.clear()
        method.cl.generator.set_state(state)
        total, parts = method.search_loss(x, y, train_arch=train_arch)
        assert len(s_acts) == len(net.distill_layers()) and len(t_acts) == 3
        expected = _by_hand_search_loss(
            form,
            cfg,
            tau,
            s_acts,
            t_acts,
            out["s"],
            out["t"],
            y,
            method.cl.tutors.logits.detach(),
            noise,
            net.width_logits.detach(),
            net,
        )
        for key in ("ce", "kl", "attn", "macs"):
            assert parts[key] == pytest.approx(expected[key], rel=1e-4), key
        assert float(total.detach()) == pytest.approx(expected["loss"], rel=1e-4)
    other = _by_hand_search_loss(
        "paper" if form == "public" else "public",
        cfg,
        tau,
        s_acts,
        t_acts,
        out["s"],
        out["t"],
        y,
        method.cl.tutors.logits.detach(),
        noise,
        net.width_logits.detach(),
        net,
    )
    assert abs(other["loss"] - expected["loss"]) > 0.05 * expected["loss"]  # the two forms are told apart
    for h in hooks:
        h.remove()


def test_width_search_uses_the_whole_split_80_20(monkeypatch):
    """One epoch trains on every example of the search's training split once: the first 80% of the
    epoch's batches update the weights, the last 20% the logits (the public code's search_data_percent)."""
    n = 160  # two halves of 80 = 5 steps of 16 per half: 4 weight steps, 1 architecture step
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=gen)
    x[:, 0, 0, 0] = torch.arange(n) / n  # tag every example
    tag = {float(v): i for i, v in enumerate(x[:, 0, 0, 0])}
    splits = Splits(
        TensorPair(x, torch.randint(0, 10, (n,), generator=gen)),
        random_splits().val,
        random_splits().test,
        digits_info(),
    )
    seen: dict[bool, list[int]] = {False: [], True: []}
    original = RnasClWidthSearch.search_loss

    def recording(self, xb, yb, train_arch):
        seen[train_arch] += [tag[float(v)] for v in xb[:, 0, 0, 0]]
        return original(self, xb, yb, train_arch)

    monkeypatch.setattr(RnasClWidthSearch, "search_loss", recording)
    run_search(
        make_method("rnas_cl"),
        {
            "params": tiny_params(),
            "run": RUNS["rnas_cl"],
            "info": digits_info(),
            "device": torch.device("cpu"),
            "seed": 0,
            "teacher": tiny_teacher(),
        },
        splits,
        progress=False,
    )
    weights, arch = seen[False], seen[True]
    assert len(weights) == 0.8 * n and len(arch) == 0.2 * n
    assert sorted(weights + arch) == list(range(n))  # every example once


def test_params_loss_form_defaults_and_validation():
    params = tiny_params()
    assert params.search.methods.rnas_cl.loss_form == "public" and params.retrain.distill.loss_form == "public"
    assert tiny_params(loss_form="paper", beta_cost=0.0).search.methods.rnas_cl.beta_cost == 0.0
    with pytest.raises(ParamsError, match="beta_cost"):
        tiny_params(beta_cost=0.0)  # public: β·log(MACs) = 0 would zero the whole loss
    with pytest.raises(ParamsError, match="loss_form"):
        tiny_params(loss_form="squared")
    with pytest.raises(ParamsError, match="loss_form"):
        params_from_dict({"retrain": {"distill": {"loss_form": "squared"}}})


def test_width_search_writes_a_rebuildable_architecture(tmp_path):
    params = tiny_params()
    method = make_method("rnas_cl")
    result = run_search(
        method,
        {
            "params": params,
            "run": RUNS["rnas_cl"],
            "info": digits_info(),
            "device": torch.device("cpu"),
            "seed": 0,
            "teacher": tiny_teacher(),
        },
        random_splits(),
        progress=False,
    )
    arch = validate_width_architecture(json.loads(json.dumps(result.architecture)))
    assert arch["space"] == "width" and len(arch["widths"]) == 2
    assert len(arch["tutors"]) == len(arch["student_layers"]) == 1 + 3 * 2
    assert all(0 <= t < len(arch["teacher_layers"]) == 3 for t in arch["tutors"])
    net = build_checkpoint_model(arch["network"])
    assert isinstance(net, WidthNetwork) and arch["macs"] == count_macs(net, (1, 8, 8))
    assert [n for n, _ in net.distill_layers()] == arch["student_layers"]
    png = method.write_files(tmp_path)[0]
    assert png.name == "tutor_map.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.extra_outputs["tutors.json"]["tutors"] == arch["tutors"]
    # The decision is the network (its widths); the tutors are tracked beside it, per epoch.
    assert method.decision() == {"widths": arch["widths"]}
    assert method.side_decisions() == {"tutors": arch["tutors"]}
    epochs = params.search.epochs
    assert len(result.decisions) == len(result.side_decisions["tutors"]) == epochs
    state = method.state_dict()
    again = make_method("rnas_cl")
    again.setup(make_ctx(params, "rnas_cl", tiny_teacher()))
    again.load_state_dict(state)
    assert again.architecture() == method.architecture()


def test_width_architecture_schema_errors():
    good = {"space": "width", "widths": [4], "tutors": [0], "network": {"kind": "width", "widths": [4]}}
    validate_width_architecture(good)
    for bad in (
        {**good, "widths": [0]},
        {**good, "tutors": ["a"]},
        {**good, "network": {"kind": "cell"}},
        {k: v for k, v in good.items() if k != "tutors"},
        {**good, "network": {"kind": "width", "widths": [8]}},
    ):
        with pytest.raises(WidthArchitectureError):
            validate_width_architecture(bad)


def test_cell_variant_gradient_reaches_tutors_and_alpha():
    method = RnasClCellSearch()
    method.setup(make_ctx(tiny_params(), "rnas_cl_cell", tiny_teacher()))
    net = method.supernet
    assert [n for n, _ in method.cl.layers] == [n for n, _ in cell_layers(net)]
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    method.a_opt.zero_grad(set_to_none=True)
    loss, parts = method.arch_loss(net, x, y)
    assert method.cl.tutors.logits.grad is not None and (method.cl.tutors.logits.grad.abs() > 0).all()
    (g_alpha,) = torch.autograd.grad(loss, [net.alpha_normal])
    assert g_alpha.abs().sum() > 0 and parts["attn"] > 0
    t0 = method.cl.tutors.logits.detach().clone()
    method.step((x, y), (x, y), Progress(0, 0, 1))
    assert not torch.equal(t0, method.cl.tutors.logits)
    validate_genotype(method.architecture())
    rep = method.extra_outputs()["tutors.json"]
    assert len(rep["tutors"]) == len(rep["student_layers"]) == 1 + 3 * 2


# -- retraining ------------------------------------------------------------------------


def test_transfer_tutors_by_layer_kind_and_depth():
    names = [n for n, _ in cell_layers(Supernet(4, 2, 10, 1, "digits"))]
    tutors = list(range(len(names)))  # stem 0; cell 0: 1, 2, 3; cell 1: 4, 5, 6
    assert transfer_tutors(names, tutors, names) == tutors
    genotype = validate_genotype(json.loads(json.dumps(Supernet(4, 2, 10, 1, "digits").genotype().to_dict())))
    target = [n for n, _ in cell_layers(CellNetwork(genotype, 4, 4, 10, 1, "digits"))]
    # 4 cells at depths 1/8, 3/8, 5/8, 7/8 follow the searched cells at 1/4 and 3/4
    assert transfer_tutors(names, tutors, target) == [0, 1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6]


@pytest.mark.parametrize("form", ["public", "paper"])
def test_fixed_tutor_distillation_value_and_reforward(form):
    final = tiny_supernet().export([4, 8, 8]).train()
    teacher = tiny_teacher()
    names = [n for n, _ in final.distill_layers()]
    n_t = len(teacher_layers(teacher))
    assignment = {
        "student_layers": names,
        "teacher_layers": [n for n, _ in teacher_layers(teacher)],
        "tutors": [i % n_t for i in range(len(names))],
    }
    loss_fn = FixedTutorDistillation(
        final, teacher, assignment, map_size=4, gamma=2.0, kl_weight=0.5, temperature=1.0, loss_form=form
    )
    x = torch.rand(8, 1, 8, 8)
    logits = final(x)
    value = loss_fn(final, x, None, logits)
    maps = loss_fn.student_taps.stack()
    t_logits, t_maps = TeacherProbe(teacher, 4)(x)
    g = F.one_hot(torch.tensor(assignment["tutors"]), n_t).float()
    d = [float(((maps[i] - t_maps[t]) ** 2).sum(-1).mean().detach()) for i, t in enumerate(assignment["tutors"])]
    attn = sum(math.sqrt(v) for v in d) if form == "public" else sum(d) / (len(names) * n_t)
    assert float(attention_loss(maps, t_maps, g, form).detach()) == pytest.approx(attn, rel=1e-5)
    expected = 0.5 * kd_kl(logits, t_logits, 1.0) + 2.0 * attention_loss(maps, t_maps, g, form)
    assert torch.allclose(value, expected, atol=1e-6)
    (grad,) = torch.autograd.grad(value, [final.stem.conv.weight])
    assert grad.abs().sum() > 0
    other = torch.rand(8, 1, 8, 8)
    loss_fn(final, other, None, logits)  # logits of x, input `other`: the student runs again
    assert loss_fn.student_taps.saw(other)
    with pytest.raises(DistillationError):
        FixedTutorDistillation(
            final,
            teacher,
            {**assignment, "teacher_layers": ["x"]},
            map_size=4,
            gamma=1.0,
            kl_weight=1.0,
            temperature=1.0,
        )


# -- runs, paths, params, CLI ------------------------------------------------------------


def test_runs_paths_and_stage_keys():
    params = tiny_params()
    assert paths.arch_file(params, "rnas_cl_nokd", 0) == paths.arch_file(params, "rnas_cl", 0)
    assert paths.arch_file(params, "rnas_cl", 0).name == "architecture.json"
    assert paths.arch_file(params, "rnas_cl_cell_nokd", 0).name == "genotype.json"
    assert paths.tutors_file(params, "rnas_cl_cell", 0).parent == paths.arch_file(params, "rnas_cl_cell", 0).parent
    assert RUNS["rnas_cl"].distill and not RUNS["rnas_cl_nokd"].distill
    assert "retrain.distill" in stage_keys("retrain", "rnas_cl")
    assert "retrain.distill" not in stage_keys("retrain", "rnas_cl_nokd")
    assert "retrain.distill" not in stage_keys("search", "rnas_cl")
    assert "search.methods.rnas_cl" in stage_keys("search", "rnas_cl")
    assert "search.methods.rnas_cl.width" not in stage_keys("search", "rnas_cl_cell")
    assert not any(k.startswith("search.methods.rnas_cl") for k in stage_keys("search", "darts"))


def test_width_params_are_validated():
    with pytest.raises(ParamsError, match="same length"):
        tiny_params(width={"stage_widths": [8], "stage_blocks": [1, 1], "stage_strides": [1]})
    with pytest.raises(ParamsError, match="distinct"):
        tiny_params(width={"stage_widths": [2], "stage_blocks": [1], "stage_strides": [1]})
    with pytest.raises(ParamsError, match="unknown key"):
        tiny_params(lam=1.0)


def test_arch_params_cli_counts_a_width_architecture(tmp_path, capsys):
    import argparse

    from rnas.stages import arch as arch_stage

    def main(argv: list[str]) -> int:  # `rnas arch ...` without the other subcommands
        parser = argparse.ArgumentParser()
        arch_stage.add_arguments(parser)
        return arch_stage.run(parser.parse_args(argv[1:]))

    net = tiny_supernet()
    arch = {"space": "width", "widths": [4, 6, 8], "tutors": [], "network": net.final_model_args([4, 6, 8])}
    f = tmp_path / "architecture.json"
    f.write_text(json.dumps(arch))
    assert main(["arch", "params", str(f)]) == 0
    assert int(capsys.readouterr().out.strip().splitlines()[-1]) == count_parameters(
        build_checkpoint_model(arch["network"])
    )
    assert main(["arch", "macs", str(f), "--image-size", "8"]) == 0
    assert int(capsys.readouterr().out.strip().splitlines()[-1]) == count_macs(
        build_checkpoint_model(arch["network"]), (1, 8, 8)
    )


def test_bounds_support_the_width_network():
    """The certified-accuracy bounds build the final width network exactly (channel truncation and
    zero-padding on identity paths included) and stay sound."""
    from rnas.bounds import build_graph, spec_bounds

    net = tiny_supernet().export([2, 6, 8]).eval()  # block 0 truncates 4 -> 2, block 2 pads 6 -> 8
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    graph = build_graph(net)
    with torch.no_grad():
        points, _ = graph.forward(x)
        assert torch.allclose(points[graph.output], net(x), atol=1e-5)
        lower = spec_bounds(net, x, y, 0.01, "linf", ("ibp", "crown")).margin()
        for _ in range(5):
            xp = (x + 0.01 * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
            logits = net(xp)
            true_y = logits.gather(1, y[:, None]).squeeze(1)
            others = logits.scatter(1, y[:, None], float("-inf")).max(1).values
            assert (lower <= true_y - others + 1e-5).all()


def test_width_search_resumes_bit_exactly(tmp_path):
    """Killed after epoch 1 and resumed, the search ends where the uninterrupted one does (the
    Gumbel generator, tutors and both optimizers are checkpointed)."""
    from rnas.checkpoint import ResumeState

    params = params_from_dict(
        {
            "pipeline": {"progress": False, "channels_last": False},
            "search": {"epochs": 2, "batch_size": 16, "methods": {"rnas_cl": {"width": WIDTH}}},
        }
    )
    teacher = tiny_teacher()

    def search(resume=None, log_metrics=None):
        torch.manual_seed(0)
        method = make_method("rnas_cl")
        ctx = {
            "params": params,
            "run": RUNS["rnas_cl"],
            "info": digits_info(),
            "device": torch.device("cpu"),
            "seed": 0,
            "teacher": teacher,
        }
        result = run_search(method, ctx, random_splits(), resume=resume, log_metrics=log_metrics, progress=False)
        return method, result

    full, full_result = search()

    class Killed(Exception):
        pass

    def kill_after_first(_metrics, epoch):  # the loop saves an epoch's state, then logs it
        if epoch == 0:
            raise Killed

    state = ResumeState(tmp_path / "state", "hash")
    with pytest.raises(Killed):
        search(state, kill_after_first)
    assert state.load()["epoch"] == 0
    resumed, resumed_result = search(state)
    assert resumed_result.architecture == full_result.architecture
    for a, b in zip(full.state_dict()["supernet"].values(), resumed.state_dict()["supernet"].values()):
        assert torch.equal(a, b)
    assert torch.equal(full.impl.cl.tutors.logits, resumed.impl.cl.tutors.logits)
