"""LRNAS: the Monte Carlo Shapley estimator on toy games, switching primitives off in the
supernet, the per-cell-type update by hand, a hand-set supernet where exactly one op helps, the
weight step by hand, greedy selection under the parameter budget, budget runs, and a tiny
end-to-end search."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from rnas.config import params_from_dict, to_dict
from rnas.evaluation.complexity import count_parameters
from rnas.runs import parse_budget, resolve_run
from rnas.search.methods.lrnas import (
    ParameterCost,
    edge_endpoints,
    edge_stride,
    greedy_select,
    momentum_update,
    standardize_per_cell,
)
from rnas.search.shapley import lrnas_values, monte_carlo_shapley, permutation_marginals, sample_marginals, zscore
from rnas.space.genotype import Genotype, num_edges, random_genotype, validate_genotype
from rnas.space.network import CellNetwork
from rnas.space.ops import PRIMITIVES, Zero, is_parameter_free
from rnas.space.supernet import Supernet

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# The estimator on games with known Shapley values
# --------------------------------------------------------------------------------------------


def additive(weights):
    w = torch.tensor(weights, dtype=torch.float64)
    return lambda active: (w * active).sum().view(1)


def glove(active):
    """Player 0 owns a left glove, players 1 and 2 a right glove; a pair is worth 1.
    Shapley values (2/3, 1/6, 1/6)."""
    a = active.tolist()
    return torch.tensor([float(min(a[0], a[1] + a[2]))], dtype=torch.float64)


def majority(active):
    """3-player majority game: 1 if at least two players; Shapley values 1/3 each."""
    return torch.tensor([float(int(active.sum()) >= 2)], dtype=torch.float64)


def exact_shapley(value, n):
    """Shapley values by enumerating all n! orders (the definition)."""
    phi = torch.zeros(n, dtype=torch.float64)
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        active = torch.zeros(n, dtype=torch.bool)
        before = value(active)[0]
        for i in order:
            active[i] = True
            after = value(active)[0]
            phi[i] += after - before
            before = after
    return phi / len(orders)


def test_exact_values_of_the_toy_games():
    torch.testing.assert_close(exact_shapley(glove, 3), torch.tensor([2 / 3, 1 / 6, 1 / 6], dtype=torch.float64))
    torch.testing.assert_close(exact_shapley(majority, 3), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_additive_game_is_exact_with_one_permutation():
    w = [0.5, -1.0, 2.0, 0.0, 3.5]
    gen = torch.Generator().manual_seed(0)
    est = monte_carlo_shapley(additive(w), 5, 1, gen)
    torch.testing.assert_close(est[:, 0], torch.tensor(w, dtype=torch.float64))


@pytest.mark.parametrize("game,truth", [(glove, [2 / 3, 1 / 6, 1 / 6]), (majority, [1 / 3] * 3)])
def test_estimator_converges_to_the_shapley_values(game, truth):
    truth = torch.tensor(truth, dtype=torch.float64)
    errors = {}
    for n in (4, 64, 1024):
        errs = [
            float((monte_carlo_shapley(game, 3, n, torch.Generator().manual_seed(seed))[:, 0] - truth).abs().max())
            for seed in range(8)
        ]
        errors[n] = sum(errs) / len(errs)
    assert errors[4] > errors[64] > errors[1024]
    assert errors[1024] < 0.04  # the standard error is ~0.5/sqrt(1024) ≈ 0.016


def test_permutation_marginals_switch_players_off_in_order():
    calls = []

    def value(active):
        calls.append(active.clone())
        return glove(active)

    order = torch.tensor([2, 0, 1])
    m = permutation_marginals(value, order)
    assert [c.tolist() for c in calls] == [
        [True, True, True],
        [True, True, False],
        [False, True, False],
        [False, False, False],
    ]
    # drops: removing 2 from {0,1,2} -> 0; removing 0 from {0,1} -> 1; removing 1 from {1} -> 0
    assert m[:, 0].tolist() == [1.0, 0.0, 0.0]
    # efficiency: every permutation's drops sum to v(N) − v(∅)
    marg = sample_marginals(majority, 3, 20, torch.Generator().manual_seed(1))
    torch.testing.assert_close(marg.sum(1)[:, 0], torch.ones(20, dtype=torch.float64))


def test_truncation_stops_near_the_empty_value_and_keeps_efficiency_within_tolerance():
    w = torch.tensor([1.0, 0.001, 0.002, 0.001, 0.003], dtype=torch.float64)
    calls = []

    def value(active):
        calls.append(1)
        return (w * active).sum().view(1)

    order = torch.tensor([0, 1, 2, 3, 4])
    m = permutation_marginals(value, order, tolerance=0.01)
    assert len(calls) == 3  # full, empty, after removing player 0 -> within 0.01 of v(∅): stop
    assert abs(float(m[0, 0]) - 1.0) < 1e-12 and bool((m[1:] == 0).all())
    assert abs(float(m.sum()) - float(w.sum())) < 0.01


@pytest.mark.parametrize("tolerance", [0.0, 0.01])
@pytest.mark.parametrize("chunk", [1, 2, 4, 16])
def test_chunked_marginals_equal_the_one_by_one_ones(chunk, tolerance):
    """Coalitions scored ``chunk`` at a time (``many``) give the one-by-one drops, truncated at
    the same point; the stacks hold exactly the coalitions along the permutation."""
    gen = torch.Generator().manual_seed(3)
    w = torch.rand(7, generator=gen, dtype=torch.float64) ** 4  # a few large, many tiny players

    def value(active):
        return torch.stack([(w * active).sum(), (w * active).sum() ** 2])

    stacks = []

    def many(actives):
        stacks.append(actives.clone())
        return torch.stack([value(a) for a in actives])

    order = torch.randperm(7, generator=gen)
    one = permutation_marginals(value, order, tolerance)
    chunked = permutation_marginals(value, order, tolerance, many=many, chunk=chunk)
    assert torch.equal(one, chunked)
    scored = torch.cat(stacks)
    expected = torch.ones(8, 7, dtype=torch.bool)
    for t in range(1, 8):
        expected[t:, order[t - 1]] = False
    rows = [r for r in scored if r.any() or tolerance == 0.0]  # the all-off coalition of the truncation check
    assert torch.equal(torch.stack(rows)[: len(rows)], expected[: len(rows)])
    assert max(len(st) for st in stacks) <= max(chunk, 1)


@pytest.mark.parametrize("partial_channels", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_coalition_forward_equals_one_masked_forward_per_coalition(partial_channels, channels_last, train):
    """G coalitions in one forward of G stacked copies: each copy's logits are those of the
    supernet with that copy's mask (BN statistics per copy in train mode); the running
    statistics and the BN modules are left as they were."""
    torch.manual_seed(0)
    net = Supernet(8, 3, 10, 1, "digits", 4, partial_channels=partial_channels).train(train)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    x = torch.rand(6, 1, 8, 8)
    n_e, n_ops = net.mask_normal.shape
    masks = torch.rand(5, 2 * n_e * n_ops, generator=torch.Generator().manual_seed(1)) < 0.5
    masks[0], masks[1] = True, False  # the grand coalition and the empty one
    running = [b.clone() for b in net.buffers()]
    with torch.no_grad():
        with net.coalitions(masks.float()):
            stacked = net(x.repeat(5, 1, 1, 1)).view(5, 6, 10)
        assert all(torch.equal(a, b) for a, b in zip(running, net.buffers()))  # no running-stat update
        assert not any("forward" in vars(m) for m in net.modules())  # the BNs are themselves again
        for g, m in enumerate(masks.float()):
            net.mask_normal.copy_(m.view(2, n_e, n_ops)[0])
            net.mask_reduce.copy_(m.view(2, n_e, n_ops)[1])
            torch.testing.assert_close(stacked[g], net(x), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="coalition masks"):
        with net.coalitions(masks[:, :-1].float()):
            pass


@pytest.mark.parametrize("partial_channels", [1, 2])
def test_ops_off_in_every_coalition_copy_are_skipped_with_the_same_logits(partial_channels, monkeypatch):
    """A stack of coalitions along one permutation shares the players switched off before its
    first coalition: those ops are off in every copy, and the forward does not run them (each
    edge's mix is told so). The logits equal those of running them (scaled by 0) bit for bit,
    and an op on in one copy only still runs."""
    from rnas.space.supernet import MixedOp

    torch.manual_seed(0)
    net = Supernet(8, 3, 10, 1, "digits", 4, partial_channels=partial_channels).train()
    n_e, n_ops = net.mask_normal.shape
    x = torch.rand(4, 1, 8, 8)
    masks = torch.rand(3, 2 * n_e * n_ops, generator=torch.Generator().manual_seed(1)) < 0.5
    masks[:, ::3] = False  # off in every copy
    masks[1, 1::6] = True  # on in one copy only
    told: dict[int, list[bool] | None] = {}
    mix = MixedOp.mix

    def recording_mix(self, xa, weights, active=None, *args):
        told[id(self)] = active
        return mix(self, xa, weights, active, *args)

    monkeypatch.setattr(MixedOp, "mix", recording_mix)
    with torch.no_grad():
        with net.coalitions(masks.float()):
            skipped = net(x.repeat(3, 1, 1, 1))
        on_somewhere = masks.any(0).view(2, n_e, n_ops)
        for cell in net.cells:
            for e, edge in enumerate(cell.edges):
                assert told[id(edge)] == on_somewhere[int(cell.reduction), e].tolist()
        monkeypatch.setattr(Supernet, "_coalition_active", lambda self, reduction: None)
        with net.coalitions(masks.float()):
            everything = net(x.repeat(3, 1, 1, 1))
    assert told[id(net.cells[0].edges[0])] is None  # every op ran
    assert torch.equal(skipped, everything)


def test_coalition_scores_by_hand():
    """accuracy: 1 where the argmax is the label; probability: softmax(logits)[y], which moves
    when the logits move and no prediction flips (the noise of the accuracy game on small
    batches: such a primitive's marginal is 0 there)."""
    from rnas.search.methods.lrnas import CoalitionValue, coalition_scores

    y = torch.tensor([0, 1])
    before = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, math.log(2.0)]])
    after = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, math.log(2.0)]])  # example 0 more confident, same argmax
    assert coalition_scores(before, y).tolist() == [1.0, 0.0]
    assert torch.equal(coalition_scores(after, y), coalition_scores(before, y))
    e = math.e
    expected = torch.tensor([e**2 / (e**2 + 2), 1 / (e + 1 + 2)], dtype=torch.float64)
    torch.testing.assert_close(coalition_scores(before, y, "probability"), expected)
    assert float(coalition_scores(after, y, "probability")[0]) > float(expected[0])
    with pytest.raises(ValueError, match="known: accuracy, probability"):
        coalition_scores(before, y, "loss")
    net = Supernet(4, 2, 10, 1, "digits", 2)
    with pytest.raises(ValueError, match="unknown LRNAS value 'loss'"):
        CoalitionValue(net, torch.rand(2, 1, 8, 8), y, 0.1, True, torch.zeros(2, dtype=torch.bool), value="loss")


@pytest.mark.parametrize("attack_each,value", [(False, "accuracy"), (True, "accuracy"), (False, "probability")])
def test_coalition_values_of_a_stack_are_those_of_one_call_each(attack_each, value):
    """CoalitionValue.many scores a stack of coalitions in one supernet forward (two with
    FGSM per coalition); accuracies are those of one call per coalition (an argmax within
    float round-off of a tie could differ by one example: allowed, and counted), probabilities
    within round-off, and consecutive coalitions differing only in null players share one copy."""
    from rnas.search.methods.lrnas import CoalitionValue

    torch.manual_seed(0)
    net = Supernet(8, 3, 10, 1, "digits", 4).train()
    n_e, n_ops = net.mask_normal.shape
    null = torch.tensor([op == "none" for _ in range(2) for _ in range(n_e) for op in net.primitives])
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    gen = torch.Generator().manual_seed(2)
    actives = torch.rand(12, 2 * n_e * n_ops, generator=gen) < 0.6
    actives[5] = actives[4] ^ null  # differs from the previous one in null players only
    one = CoalitionValue(net, x, y, 0.2, attack_each, null, value=value)
    expected = torch.stack([one(a) for a in actives])
    stacked = CoalitionValue(net, x, y, 0.2, attack_each, null, value=value)
    got = stacked.many(actives)
    assert stacked.evaluations == one.evaluations == 11
    diff = (got - expected).abs()
    if value == "accuracy":
        assert bool((diff <= 1 / 16 + 1e-12).all()) and float((diff == 0).double().mean()) >= 0.9
    else:
        assert float(diff.max()) < 1e-5 and bool((got > 0).all() & (got < 1).all())
    assert torch.equal(got[5], got[4])


def test_zscore_and_lrnas_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    z = zscore(x, dim=1)
    torch.testing.assert_close(z[0], torch.tensor([-1.0, 0.0, 1.0]) * math.sqrt(1.5))
    assert bool((z[1] == 0).all())  # constant drops: z = 0, not NaN
    # (n_perm=2, players=3, k=2): value = mean_p z(ΔA) + z(ΔR)
    m = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]], [[0.0, 1.0], [0.0, 1.0], [2.0, 1.0]]])
    expected = ((zscore(m[0, :, 0], 0) + zscore(m[0, :, 1], 0)) + (zscore(m[1, :, 0], 0) + 0)) / 2
    torch.testing.assert_close(lrnas_values(m), expected)


def test_zscore_of_equal_values_is_zero_despite_rounding():
    # the mean of these 40 equal floats is not exactly their value: std ~1e-17, and z = ±1 from rounding
    x = torch.full((40,), 0.1, dtype=torch.float64) * -1.2345
    assert float(x.std()) > 0
    for correction in (0, 1):
        assert bool((zscore(x, 0, correction) == 0).all())
        assert bool((standardize_per_cell(torch.stack([x, x.flip(0)]).view(2, 5, 8)) == 0).all())


def test_update_by_hand_standardizes_each_cell_type_separately():
    """The α update on a tiny case, numbers worked out by hand: each cell type's V̂ is z-scored
    over its own entries (sample std, n − 1, as the public LRNAS code's update_alpha), then
    V ← (1 − μ)·V + μ·z and α ← α + η·V (μ = 0.2, η = 0.1). Every reduction value is below
    every normal value, yet the reduction cell's best op rises as much as the normal one's."""
    v_hat = torch.tensor([[1.0, 2.0, 3.0], [0.1, 0.2, 0.6]], dtype=torch.float64)  # (cell type, primitive)
    V1, step1 = momentum_update(torch.zeros(2, 3, dtype=torch.float64), v_hat, 0.2, 0.1)
    # normal: mean 2, sample std 1 -> z = (-1, 0, 1); reduce: mean 0.3, sample std sqrt(0.07)
    z_r = [-0.7559289460, -0.3779644730, 1.1338934190]
    torch.testing.assert_close(V1, torch.tensor([[-0.2, 0.0, 0.2], [0.2 * z for z in z_r]], dtype=torch.float64))
    torch.testing.assert_close(step1, torch.tensor([[-0.02, 0.0, 0.02], [0.02 * z for z in z_r]], dtype=torch.float64))
    assert float(step1[1, 2]) > 0 and float(step1[1].argmax()) == 2  # the reduction cell's best op rises
    # second epoch: the momentum keeps 0.8 of V
    v_hat2 = torch.tensor([[3.0, 2.0, 1.0], [0.5, 0.5, 0.2]], dtype=torch.float64)
    V2, step2 = momentum_update(V1, v_hat2, 0.2, 0.1)
    # normal: z = (1, 0, -1), V = 0.8·(-0.2, 0, 0.2) + 0.2·(1, 0, -1) = (0.04, 0, -0.04)
    # reduce: mean 0.4, sample std sqrt(0.03), z = (0.5773502692, 0.5773502692, -1.1547005384)
    v2_r = [0.16 * a + 0.2 * b for a, b in zip(z_r, [0.5773502692, 0.5773502692, -1.1547005384])]
    torch.testing.assert_close(V2, torch.tensor([[0.04, 0.0, -0.04], v2_r], dtype=torch.float64))
    torch.testing.assert_close(
        step2, torch.tensor([[0.004, 0.0, -0.004], [0.1 * v for v in v2_r]], dtype=torch.float64)
    )
    # a cell whose values are all equal carries no ranking: z = 0 there, the other cell unchanged
    V3, step3 = momentum_update(
        torch.zeros(2, 3, dtype=torch.float64),
        torch.tensor([[5.0, 5.0, 5.0], [1.0, 2.0, 3.0]], dtype=torch.float64),
        0.2,
        0.1,
    )
    assert bool((V3[0] == 0).all()) and bool((step3[0] == 0).all())
    torch.testing.assert_close(step3[1], torch.tensor([-0.02, 0.0, 0.02], dtype=torch.float64))


def test_standardize_per_cell():
    v = torch.tensor([[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    z = standardize_per_cell(v)
    s = math.sqrt(((1 - 4) ** 2 + (3 - 4) ** 2 + (5 - 4) ** 2 + (7 - 4) ** 2) / 3)  # sample std, n - 1
    torch.testing.assert_close(z[0], (v[0] - 4.0) / s)
    assert bool((z[1] == 0).all())
    # an affine change of one cell's values (e.g. a different scale of its drops) changes nothing
    torch.testing.assert_close(
        standardize_per_cell(torch.stack([3 * v[0] - 2, v[0] * 0.01])), torch.stack([z[0], z[0]])
    )


# --------------------------------------------------------------------------------------------
# Switching primitives off in the supernet
# --------------------------------------------------------------------------------------------


def _tiny_supernet(k=1):
    torch.manual_seed(0)
    net = Supernet(4, 3, 10, input_channels=1, nodes=2, partial_channels=k)
    with torch.no_grad():
        net.alpha_normal.copy_(torch.randn_like(net.alpha_normal))
        net.alpha_reduce.copy_(torch.randn_like(net.alpha_reduce))
    return net


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("reduction,edge,op", [(False, 0, 4), (True, 1, 3), (True, 4, 7), (False, 2, 1)])
def test_switching_an_op_off_removes_it_from_the_forward(k, reduction, edge, op):
    net = _tiny_supernet(k).train()
    ref = copy.deepcopy(net)
    for cell in ref.cells:  # the same op's module replaced by zero in every cell of that type
        if cell.reduction == reduction:
            cell.edges[edge].ops[op] = Zero(cell.edges[edge].stride)
    (net.mask_reduce if reduction else net.mask_normal)[edge, op] = 0.0
    x = torch.rand(4, 1, 8, 8)
    out = net(x)
    torch.testing.assert_close(out, ref(x))
    out.square().sum().backward()
    switched, kept = [], []
    for cell in net.cells:
        for j, m in enumerate(cell.edges[edge].ops):
            params = list(m.parameters())
            if not params:
                continue
            grads = [p.grad for p in params]
            (switched if (cell.reduction == reduction and j == op) else kept).append(grads)
    for grads in switched:  # not run at all: no gradient
        assert all(g is None or bool((g == 0).all()) for g in grads)
    assert any(g is not None and bool(g.abs().sum() > 0) for grads in kept for g in grads)
    # switching it back on restores the original output
    (net.mask_reduce if reduction else net.mask_normal)[edge, op] = 1.0
    torch.testing.assert_close(net(x), _tiny_supernet(k).train()(x))


def test_everything_switched_off_gives_a_constant_network():
    net = _tiny_supernet(1).eval()
    net.mask_normal.zero_()
    net.mask_reduce.zero_()
    out = net(torch.rand(5, 1, 8, 8))
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    torch.testing.assert_close(out, out[:1].expand_as(out))  # no input reaches the classifier


# --------------------------------------------------------------------------------------------
# Parameter count and greedy selection
# --------------------------------------------------------------------------------------------

DARTS_V2 = Genotype(
    (
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("skip_connect", 0),
        ("dil_conv_3x3", 2),
    ),
    (2, 3, 4, 5),
    (
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
    ),
    (2, 3, 4, 5),
)


def test_parameter_cost_is_exact():
    # published counts: DARTS V2 at C=36, 20 cells, 10 classes = 3,349,342; C=16, 8 cells = 246,106
    assert ParameterCost(36, 20, 10, 3).genotype_params(DARTS_V2) == 3_349_342
    assert ParameterCost(16, 8, 10, 3).genotype_params(DARTS_V2) == 246_106
    cost = ParameterCost(8, 4, 10, 1, "digits")
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        g = random_genotype(4, gen)
        assert cost.genotype_params(g) == cost.count_built(g)
    for reduction in (False, True):
        for src in range(5):
            for op in PRIMITIVES:
                assert (cost.edge_cost(reduction, src, op) == 0) == is_parameter_free(op, edge_stride(reduction, src))


def _check_selection(sel, cost, budget, nodes=4):
    g = validate_genotype(sel.genotype.to_dict())
    for cell in (g.normal, g.reduce):
        for node in range(nodes):
            pair = cell[2 * node : 2 * node + 2]
            assert len({src for _, src in pair}) == 2  # two distinct inputs per node
    assert sel.params == cost.count_built(g)
    if sel.params > budget:
        assert all(
            is_parameter_free(op, edge_stride(red, src))
            for cell, red in ((g.normal, False), (g.reduce, True))
            for op, src in cell
        )


def test_greedy_selection_respects_the_budget_and_two_inputs_per_node():
    cost = ParameterCost(8, 4, 10, 1, "digits")
    base, n_e = cost.base(), num_edges(4)
    gen = torch.Generator().manual_seed(0)
    for trial in range(6):
        a_n, a_r = torch.randn(n_e, 8, generator=gen), torch.randn(n_e, 8, generator=gen)
        if trial % 2:  # convs most valuable: the budget binds
            a_n[:, 4:] += 2.0
            a_r[:, 4:] += 2.0
        previous = -1
        for budget in (1_000, base, base + 3_000, 25_000, 40_000, 60_000, 10**7):
            sel = greedy_select(a_n, a_r, cost, budget)
            _check_selection(sel, cost, budget)
            assert sel.params >= previous  # a larger budget never gives a smaller network
            previous = sel.params
        assert sel.params > base  # unbounded: the parametric best ops are all taken
        below = greedy_select(a_n, a_r, cost, 1_000)  # below the parameter-free network
        assert below.params == base and below.over_budget


def test_greedy_selection_takes_best_ops_in_alpha_order():
    cost = ParameterCost(8, 4, 10, 1, "digits")
    n_e = num_edges(4)
    a = torch.zeros(n_e, 8)
    ends = edge_endpoints(4)
    # node k: its edge from input k+1 has sep_conv_3x3 best, then input 0 has avg_pool; others low
    for e, (node, src) in enumerate(ends):
        a[e, 0] = -1.0
        if src == node + 1:
            a[e, 4] = 3.0 - node * 0.1
        elif src == 0:
            a[e, 2] = 1.0
    sel = greedy_select(a, a.clone(), cost, 10**7)
    assert sel.genotype.normal == tuple(
        edge for node in range(4) for edge in (("avg_pool_3x3", 0), ("sep_conv_3x3", node + 1))
    )
    # with a budget for only the first conv of the normal cell, later convs are refused and
    # nodes fall back to parameter-free ops
    first = cost.base() + cost.edge_cost(False, 1, "sep_conv_3x3")
    sel = greedy_select(a, a.clone(), cost, first)
    assert sel.params == first and sel.over_budget
    assert sum(op == "sep_conv_3x3" for op, _ in sel.genotype.normal + sel.genotype.reduce) == 1
    _check_selection(sel, cost, first)


# --------------------------------------------------------------------------------------------
# Runs and the method end to end
# --------------------------------------------------------------------------------------------


def test_budget_runs():
    assert parse_budget("20k") == 20_000 and parse_budget("2M") == 2_000_000 and parse_budget("1500") == 1500
    spec = resolve_run("lrnas_60k")
    assert (spec.method, spec.variant) == ("lrnas", "60k")
    assert "search.methods.lrnas.budget" not in spec.method_keys
    assert set(spec.search_keys) == {"retrain.init_channels", "retrain.layers"}
    assert resolve_run("lrnas").variant == "default"
    for bad in ("lrnas_0k", "lrnas_1.5M", "lrnas_20K", "lrnas_", "lrnas_k"):
        with pytest.raises(KeyError):
            resolve_run(bad)
    with pytest.raises(ValueError):
        parse_budget("1.5M")


def _tiny_params(search=None, **lrnas):
    block = {
        "warmup_epochs": 1,
        "permutations": 2,
        "batch_size": 16,
        "budget": 30_000,
        "fgsm_epsilon": 0.1,
        "attack_each_coalition": False,
        **lrnas,
    }
    return params_from_dict(
        {
            "pipeline": {"runs": ["lrnas"], "progress": False, "channels_last": False},
            "data": {"dataset": "digits", "train_subset": 160},
            "search": {
                "epochs": 2,
                "batch_size": 16,
                "init_channels": 4,
                "layers": 2,
                "nodes": 2,
                **(search or {}),
                "methods": {"lrnas": block},
            },
            "retrain": {"init_channels": 8, "layers": 4},
            "tracking": {"enabled": False},
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("run,attack_each", [("lrnas", False), ("lrnas_20k", True)])
def test_search_end_to_end(tmp_path, run, attack_each):
    from rnas.data import load_splits
    from rnas.search.loop import run_search
    from rnas.search.methods import make_method

    params = _tiny_params(attack_each_coalition=attack_each, permutations=1)
    splits = load_splits(
        "digits",
        root="data",
        download=False,
        seed=0,
        val_fraction=0.1,
        image_size=8,
        test_fraction=0.2,
        train_subset=160,
    )
    method = make_method("lrnas")
    ctx = {"params": params, "run": resolve_run(run), "info": splits.info, "device": torch.device("cpu"), "seed": 0}
    result = run_search(method, ctx, splits, progress=False)
    budget = 30_000 if run == "lrnas" else 20_000
    assert method.budget == budget
    contrib = result.extra_outputs["contributions.json"]
    assert contrib["epochs"] == [1] and len(contrib["value"][0]) == 2 * num_edges(2) * 8
    assert contrib["params"] == contrib["params_built"]
    assert contrib["params"] <= budget
    json.dumps(contrib)  # JSON-able
    g = validate_genotype(result.architecture)
    assert g.nodes == 2
    hist = result.history
    assert "shapley_seconds" in hist[1] and "shapley_seconds" not in hist[0]
    assert 0.0 <= hist[1]["shapley_full_clean_acc"] <= 1.0
    assert all(not p.requires_grad for p in method.supernet.arch_parameters())
    assert bool((method.supernet.mask_normal == 1).all()) and bool((method.supernet.mask_reduce == 1).all())
    files = method.write_files(tmp_path)
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the checkpointed state restores the contributions
    other = make_method("lrnas")
    other.setup(method.ctx)
    torch.save(method.state_dict(), tmp_path / "state.pt")
    other.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert other.contributions()["value"] == contrib["value"]
    assert other.architecture() == result.architecture


def _z_cell_by_hand(v):
    """Each cell type's values z-scored over that cell's entries, sample std (n − 1), written out."""
    out = []
    for cell in v.double():
        if bool((cell == cell.flatten()[0]).all()):
            out.append(torch.zeros_like(cell))  # all equal: no ranking in this cell
            continue
        mean = cell.sum() / cell.numel()
        std = math.sqrt(float(((cell - mean) ** 2).sum()) / (cell.numel() - 1))
        out.append((cell - mean) / std)
    return torch.stack(out)


def _lrnas_method(params, seed=0):
    from rnas.data import DATASETS
    from rnas.search.base import SearchContext
    from rnas.search.methods import make_method

    method = make_method("lrnas")
    method.setup(SearchContext(params, resolve_run("lrnas"), DATASETS["digits"], torch.device("cpu"), seed, 1))
    return method


def _alphas(net):
    return torch.stack([net.alpha_normal.detach().clone(), net.alpha_reduce.detach().clone()]).double()


def test_alpha_update_on_digits_by_hand_and_masks_are_restored():
    from rnas.data import load_splits

    params = _tiny_params(permutations=1, batch_size=16)
    torch.manual_seed(0)
    splits = load_splits(
        "digits",
        root="data",
        download=False,
        seed=0,
        val_fraction=0.1,
        image_size=8,
        test_fraction=0.2,
        train_subset=160,
    )
    method = _lrnas_method(params)
    net = method.supernet
    before = _alphas(net)
    bn_before = [b.clone() for b in net.buffers()]
    method._batches = [(splits.val.x[:16], splits.val.y[:16])]
    metrics = method.estimate_contributions(1)
    v_hat = method.history[-1]["value"].view(2, *net.alpha_normal.shape)
    assert float(v_hat.norm()) > 0  # some primitive mattered
    # V starts at 0: α moves by η·μ·z_cell(V̂) (η = 0.1, μ = 0.2, the defaults)
    torch.testing.assert_close(_alphas(net) - before, 0.1 * 0.2 * _z_cell_by_hand(v_hat), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(method.V, 0.2 * _z_cell_by_hand(v_hat), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(bn_before, net.buffers()))  # BN stats and masks restored
    assert metrics["shapley_evaluations"] >= 2
    assert net.training  # modes restored


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_step_follows_the_arch_lr_schedule(schedule):
    """η_t = η × arch_lr_factor over the estimate epochs (warm-up 2 of 6 epochs): the estimate of
    epoch 4 (0-based) moves α by η·½(1 + cos(π·2/4))·μ·z_cell(V̂) = η·0.5·μ·z under cosine."""
    params = _tiny_params(search={"epochs": 6, "arch_lr_schedule": schedule}, warmup_epochs=2, permutations=1)
    torch.manual_seed(0)
    method = _lrnas_method(params)
    net = method.supernet
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    method._batches = [(x, y)]
    before = _alphas(net)
    metrics = method.estimate_contributions(4)
    v_hat = method.history[-1]["value"].view(2, *net.alpha_normal.shape)
    factor = 1.0 if schedule == "constant" else 0.5
    assert metrics["shapley_step_factor"] == pytest.approx(factor)
    torch.testing.assert_close(_alphas(net) - before, 0.1 * factor * 0.2 * _z_cell_by_hand(v_hat), atol=1e-6, rtol=1e-5)


class _AdditiveCoalition:
    """Stands in for CoalitionValue: an additive game, v(S) = Σ_{i∈S} w_i for the clean and the
    FGSM accuracy alike, so every permutation's drop of player i is exactly w_i."""

    worth: torch.Tensor

    def __init__(self, net, x, y, epsilon, attack_each, null, value="accuracy"):
        self.evaluations = 0

    def __call__(self, active):
        self.evaluations += 1
        v = float((self.worth * active.double()).sum())
        return torch.tensor([v, v], dtype=torch.float64)

    def many(self, actives):
        return torch.stack([self(a) for a in actives])


def test_reduction_candidates_are_standardized_and_ranked_on_their_own_scale(monkeypatch):
    """Every reduction primitive contributes less than every normal one (in the paper's supernet
    a reduction op acts in 2 of 8 cells, a normal op in 6), yet the reduction cell's clearly best
    primitive rises, and the greedy selection's one list takes it first."""
    import rnas.search.methods.lrnas as lrnas_module

    method = _lrnas_method(_tiny_params(permutations=3))
    net = method.supernet
    n_e, n_ops = net.alpha_normal.shape
    gen = torch.Generator().manual_seed(0)
    normal = 1.0 + torch.rand(n_e, n_ops, generator=gen, dtype=torch.float64)  # in [1, 2]
    reduce = 0.1 + 0.05 * torch.rand(n_e, n_ops, generator=gen, dtype=torch.float64)  # in [0.1, 0.15]
    best = (3, PRIMITIVES.index("sep_conv_5x5"))  # edge 3: node 1 <- input 1
    reduce[best] = 0.5
    assert float(reduce.max()) < float(normal.min())
    worth = torch.stack([normal, reduce])
    monkeypatch.setattr(
        lrnas_module, "CoalitionValue", type("Additive", (_AdditiveCoalition,), {"worth": worth.flatten()})
    )
    before = _alphas(net)
    method._batches = [(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    method.estimate_contributions(1)
    step = _alphas(net) - before
    assert float(step[1][best]) > 0 and float(step[1][best]) == float(step[1].max())  # the reduction best rises
    # by hand: every drop is w_i, so V̂ = z(w) + z(w), z over all players (population std) ...
    flat = worth.flatten()
    z_all = (flat - flat.mean()) / math.sqrt(float(((flat - flat.mean()) ** 2).mean()))
    torch.testing.assert_close(method.history[-1]["value"].double(), 2 * z_all, atol=1e-5, rtol=1e-5)
    # ... and each cell's re-standardized V̂ is the cell's z of w: α moves by η·μ·z_cell(w)
    torch.testing.assert_close(step, 0.1 * 0.2 * _z_cell_by_hand(worth), atol=1e-6, rtol=1e-5)
    # one list for both cell types: the reduction cell's best primitive is the first candidate
    sel = method.selection()
    first = sel.steps[0]
    assert (first["cell"], first["node"], first["input"], first["op"], first["result"]) == (
        "reduce",
        1,
        1,
        "sep_conv_5x5",
        "added",
    )
    assert ("sep_conv_5x5", 1) in sel.genotype.reduce


class _Scale(nn.Module):
    """factor · x, spatially strided like the op it replaces."""

    def __init__(self, factor, stride=1):
        super().__init__()
        self.factor, self.stride = factor, stride

    def forward(self, x):
        return self.factor * x[:, :, :: self.stride, :: self.stride]


class _Repeat(nn.Module):
    """The input's first channel repeated to ``channels`` channels."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return x[:, :1].repeat(1, self.channels, 1, 1)


class _Signed(nn.Module):
    def forward(self, x):
        return 2 * x - 1


SKIP, MAX_POOL = PRIMITIVES.index("skip_connect"), PRIMITIVES.index("max_pool_3x3")


def _one_useful_op(net):
    """Hand-set weights on a 2-cell (normal, reduce) supernet, task: is the (constant) image
    brighter than 0.5? The signal s = 2x − 1 reaches the classifier only through the normal
    cell's ``skip_connect`` from input 1 (N), then any of the reduction cell's seven non-zero ops
    from input 1 (redundant carriers: every path needs one of them). Every other op outputs 0,
    except the normal cell's ``max_pool_3x3`` from input 0 (H), which adds −s/2 (harmful). With
    N and a carrier on the network is always right (w_N − w_H/2 > 0 for equal α), with N off and
    H on always wrong, with no signal it says class 0 (half right here). Exact Shapley values of
    this game (enumerated): N 49/72, H −7/36, each carrier 1/504, every other primitive 0."""
    c = net.model_args["init_channels"]
    net.normalize = _Signed()
    net.stem = _Repeat(net.stem[0].out_channels)
    for cell in net.cells:
        channels = 2 * c if cell.reduction else c
        cell.preprocess0, cell.preprocess1 = _Repeat(channels), _Repeat(channels)
        for edge in cell.edges:
            for o, name in enumerate(PRIMITIVES):
                if name != "none":
                    edge.ops[o] = _Scale(0.0, edge.stride)
    normal, reduce = net.cells
    assert not normal.reduction and reduce.reduction
    normal.edges[1].ops[SKIP] = _Scale(1.0)
    normal.edges[0].ops[MAX_POOL] = _Scale(-0.5)
    for o, name in enumerate(PRIMITIVES):
        if name != "none":
            reduce.edges[1].ops[o] = _Scale(1.0, 2)
    with torch.no_grad():
        net.classifier.weight.zero_()
        net.classifier.bias.zero_()
        net.classifier.weight[1, 0], net.classifier.weight[0, 0] = 1.0, -1.0


@pytest.mark.parametrize("value", ["accuracy", "probability"])
def test_the_one_useful_op_gets_the_highest_contribution_and_its_alpha_rises(value):
    """The real contribution estimate (masks in the supernet, clean and FGSM accuracy or
    probability, z-scores, update) on :func:`_one_useful_op`'s network: N gets the highest value
    and its α rises most in its cell, the harmful H the lowest and its α falls, and every α moves
    by η·μ·z_cell(V̂)."""
    params = _tiny_params(
        search={"init_channels": 2},
        permutations=4,
        attack_each_coalition=False,
        fgsm_epsilon=0.1,
        batch_size=12,
        value=value,
    )
    method = _lrnas_method(params)
    net = method.supernet
    _one_useful_op(net)
    shade = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.8, 0.9] * 2)
    x, y = shade.view(-1, 1, 1, 1).expand(12, 1, 8, 8).contiguous(), (shade > 0.5).long()
    # the op provably helps: on, every example right; off (H still on), every one wrong
    assert bool((net(x).argmax(1) == y).all())
    net.mask_normal[1, SKIP] = 0.0
    assert bool((net(x).argmax(1) != y).all())
    net.mask_normal.fill_(1.0)

    n_e, n_ops = net.alpha_normal.shape
    before = _alphas(net)
    method._batches = [(x, y)]
    metrics = method.estimate_contributions(1)
    if value == "accuracy":
        assert metrics["shapley_full_clean_acc"] == 1.0 and metrics["shapley_full_fgsm_acc"] == 1.0
    else:  # every example right: each true-class probability above the other classes' (1/10 of 1 here)
        assert 0.1 < metrics["shapley_full_fgsm_acc"] <= metrics["shapley_full_clean_acc"] < 1.0
    h = method.history[-1]
    v_hat = h["value"].view(2, n_e, n_ops).double()
    clean = h["shapley_clean"].view(2, n_e, n_ops)
    useful, harmful = (0, 1, SKIP), (0, 0, MAX_POOL)
    others = torch.ones(2, n_e, n_ops, dtype=torch.bool)
    others[useful] = False
    assert float(v_hat[useful]) > float(v_hat[others].max())  # the highest contribution of all
    assert float(clean[useful]) > float(clean[others].max())  # also the plain Shapley estimate (exact: 49/72)
    assert float(clean[harmful]) <= 0 and float(v_hat[harmful]) == float(v_hat[0].min())
    step = _alphas(net) - before
    assert float(step[useful]) > 0 and int(step[0].argmax()) == 1 * n_ops + SKIP  # rises, most of its cell
    assert float(step[harmful]) < 0
    z = _z_cell_by_hand(v_hat)
    assert bool((torch.sign(step) == torch.sign(z)).all())  # the update's sign is the cell's z-score's
    torch.testing.assert_close(step, 0.1 * 0.2 * z, atol=1e-6, rtol=1e-5)
    assert int(net.alpha_normal.argmax()) == 1 * n_ops + SKIP
    # (the reduction cell's carriers share a tiny value; the scale of that cell's update against the
    # normal cell's is test_reduction_candidates_are_standardized_and_ranked_on_their_own_scale's)
    assert ("skip_connect", 1) in method.selection().genotype.normal


def test_weight_step_is_clean_cross_entropy_and_sgd_by_hand():
    """LRNAS' weight loss is plain cross-entropy on the weight half and the update one SGD step
    (momentum, weight decay, gradient clipping at search.grad_clip); α, β are not touched and the
    validation batch is only collected after the warm-up."""
    from rnas.search.base import Progress

    # a clip that binds and a weight decay large enough to be seen in the step
    params = _tiny_params(search={"partial_channels": 2, "grad_clip": 0.05, "w_weight_decay": 0.01})
    s = params.search
    method = _lrnas_method(params)
    net = method.supernet
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    xa, ya = torch.rand(20, 1, 8, 8, generator=gen), torch.randint(0, 10, (20,), generator=gen)
    ref = copy.deepcopy(net).train()
    logits = ref(x)
    loss = -(logits - logits.logsumexp(1, keepdim=True)).gather(1, y[:, None]).mean()
    weights = ref.weights()
    grads = [
        torch.zeros_like(w) if g is None else g
        for w, g in zip(weights, torch.autograd.grad(loss, weights, allow_unused=True))
    ]
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    clip = min(1.0, s.grad_clip / (norm + 1e-6))
    assert clip < 0.5
    # first SGD step: the momentum buffer is the first gradient (with weight decay), w <- w - lr·buffer
    expected = [-s.w_lr * (clip * g + s.w_weight_decay * w.detach()) for w, g in zip(weights, grads)]
    old = [w.detach().clone() for w in net.weights()]
    arch = [p.detach().clone() for p in net.arch_parameters()]
    metrics = method.step((x, y), (xa, ya), Progress(0, 0, 1))
    assert abs(metrics["weight_loss"] - float(loss.detach())) < 1e-6
    for w, w0, e in zip(net.weights(), old, expected):
        torch.testing.assert_close(w.detach() - w0, e, atol=1e-8, rtol=1e-3)
    assert all(torch.equal(p, a) for p, a in zip(net.arch_parameters(), arch))
    assert method._batches == []  # warm-up epoch: no validation batch kept
    method.step((x, y), (xa, ya), Progress(1, 0, 1))
    assert len(method._batches) == 1 and torch.equal(method._batches[0][0], xa[:16])
    assert all(torch.equal(p, a) for p, a in zip(net.arch_parameters(), arch))


def test_warmup_must_leave_an_estimation_epoch():
    from rnas.config import ParamsError

    with pytest.raises(ParamsError, match="warmup_epochs"):
        _tiny_params(warmup_epochs=2)
    d = to_dict(_tiny_params())
    d["search"]["methods"]["lrnas"]["warmup_epochs"] = 5
    d["pipeline"]["runs"] = ["darts"]  # no lrnas run: not checked
    params_from_dict(d)


# --------------------------------------------------------------------------------------------
# A budget run selects from the search of ``lrnas``
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("init_channels", "layers", "classes", "channels", "nodes", "dataset"),
    [
        (8, 3, 10, 1, 4, "digits"),
        (36, 20, 10, 3, 4, "cifar10"),
        (36, 20, 100, 3, 4, "cifar100"),
        (12, 5, 10, 3, 3, None),
    ],
)
def test_the_parameter_floor_is_the_built_network_with_only_parameter_free_edges(
    init_channels, layers, classes, channels, nodes, dataset
):
    """``parameter_floor`` (torch-free, read by params validation) is the parameter count of the
    built final network whose edges are all parameter-free, and no genotype has fewer."""
    from rnas.space.plan import parameter_floor

    floor = parameter_floor(init_channels, layers, classes, channels, nodes)
    cost = ParameterCost(init_channels, layers, classes, channels, dataset, nodes)
    free = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")  # skip: parameter-free at stride 1 only
    normal = tuple((free[(2 * k + i) % 4], i) for k in range(nodes) for i in (0, 1))
    reduce = tuple((free[(k + i) % 3], i) for k in range(nodes) for i in (0, 1))  # no skip on a stride-2 edge
    concat = tuple(range(2, nodes + 2))
    built = count_parameters(
        CellNetwork(Genotype(normal, concat, reduce, concat), init_channels, layers, classes, channels, dataset)
    )
    assert floor == built == cost.base()
    g = torch.Generator().manual_seed(0)
    a_n, a_r = torch.randn(num_edges(nodes), 8, generator=g), torch.randn(num_edges(nodes), 8, generator=g)
    assert greedy_select(a_n, a_r, cost, 10**9).params > floor  # a parametric op adds to it


def test_a_budget_that_leaves_no_room_for_a_parametric_op_is_refused_before_any_work():
    """λ at or below the parameter-free network's size: the selection could take no parametric op
    whatever the search found, so params validation refuses it, naming the key and the floor."""
    from rnas.config import ParamsError

    # digits' final network (retrain 8 channels, 3 cells): 6,130 parameters with every edge parameter-free
    digits = {"retrain": {"init_channels": 8, "layers": 3}}
    with pytest.raises(ParamsError, match=r"pipeline.runs\[1\]: 'lrnas_6k' has a budget of 6,000, .* > 6,130"):
        params_from_dict({"pipeline": {"runs": ["lrnas", "lrnas_6k"]}, **digits})
    with pytest.raises(ParamsError, match=r"search.methods.lrnas.budget: 6,130 leaves no room .* \(allowed: > 6,130\)"):
        params_from_dict(
            {"pipeline": {"runs": ["lrnas"]}, "search": {"methods": {"lrnas": {"budget": 6130}}}, **digits}
        )
    params_from_dict({"pipeline": {"runs": ["lrnas", "lrnas_7k"]}, **digits})
    # the floor follows the final network's size: 20,954 with 16 channels
    with pytest.raises(ParamsError, match=r"retrain.init_channels 16, retrain.layers 3\) .* > 20,954"):
        params_from_dict({"pipeline": {"runs": ["lrnas", "lrnas_20k"]}, "retrain": {"init_channels": 16, "layers": 3}})
    # the paper-scale default (2.0M at 36 channels, 20 cells) against 1,368,190 on digits' 1 channel
    params_from_dict({"pipeline": {"runs": ["lrnas"]}})
    with pytest.raises(ParamsError, match=r"'lrnas_1M' has a budget of 1,000,000, .* > 1,368,190"):
        params_from_dict({"pipeline": {"runs": ["lrnas", "lrnas_1M"]}})
    params_from_dict({"pipeline": {"runs": ["darts"]}, "search": {"methods": {"lrnas": {"budget": 1}}}})  # no LRNAS run


def test_a_budget_run_shares_the_lrnas_search(tmp_path):
    from rnas import dag
    from rnas.config import ParamsError
    from rnas.search.base import SharedSearchError
    from rnas.search.methods.lrnas import select_from_search

    spec = resolve_run("lrnas_15k")
    assert spec.select_from == "lrnas" and resolve_run("lrnas").select_from is None
    params = params_from_dict(
        {"pipeline": {"runs": ["lrnas", "lrnas_15k"]}, "retrain": {"init_channels": 8, "layers": 3}}
    )
    read = dag.search_inputs(params, "lrnas_15k", 2)
    assert {f"results/digits/lrnas/seed2/{name}" for name in ("alphas.json", "search.json")} <= set(read)
    assert dag.search_inputs(params, "lrnas", 2) == []
    with pytest.raises(ParamsError, match=r"pipeline.runs\[1\]: 'lrnas_15k' selects .* list 'lrnas' in pipeline.runs"):
        params_from_dict({"pipeline": {"runs": ["darts", "lrnas_15k"]}})
    # the shared search not run yet, or run by a version that kept no per-epoch α: what to run
    folder = tmp_path / "lrnas" / "seed2"
    folder.mkdir(parents=True)
    cost = ParameterCost(8, 3, 10, 1, "digits", 4)
    with pytest.raises(
        SharedSearchError, match=r"no alphas.json: run that search first \(`rnas search --run lrnas --seed 2`\)"
    ):
        select_from_search(folder, "lrnas_15k", 15_000, cost)
    for name in ("alphas", "contributions", "search"):
        (folder / f"{name}.json").write_text(json.dumps({"per_epoch": [{"normal": [], "reduce": []}]}))
    with pytest.raises(SharedSearchError, match="has no per-epoch α"):
        select_from_search(folder, "lrnas_15k", 15_000, cost)


@pytest.mark.slow
def test_a_budget_runs_selection_is_what_a_search_of_its_own_would_decide(tmp_path):
    """``rnas search --run lrnas_8k`` selects from the ``lrnas`` search's files; a project whose
    ``lrnas`` searches with λ = 8k itself decides the same after every epoch and at the end."""
    import os
    import subprocess
    import sys

    import yaml
    from conftest import tiny_params

    def project(name: str, budget: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        p = tiny_params(runs=("lrnas", "lrnas_8k"))
        p["tracking"]["enabled"] = False
        p["search"]["epochs"] = 3  # two contribution estimates after a warm-up epoch
        p["search"]["methods"]["lrnas"].update(warmup_epochs=1, budget=budget)
        p["retrain"].update(init_channels=8, layers=3)
        (folder / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        return folder

    def search(folder: Path, run: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", GIT_PYTHON_REFRESH="quiet", RNAS_FORKSERVER="off")
        cmd = [sys.executable, "-m", "rnas.cli", "search", "--run", run, "--seed", "0"]
        out = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]

    def files(folder: Path, run: str) -> dict:
        d = folder / "results" / "digits" / run / "seed0"
        return {name: json.loads((d / f"{name}.json").read_text()) for name in ("genotype", "search", "contributions")}

    shared, own = project("shared", 10_000_000), project("own", 8_000)
    search(shared, "lrnas")
    search(shared, "lrnas_8k")
    search(own, "lrnas")
    big, selected, alone = files(shared, "lrnas"), files(shared, "lrnas_8k"), files(own, "lrnas")
    assert selected["genotype"] == alone["genotype"]
    for key in ("decisions", "stable_from_epoch", "decided", "decision_changes", "late_changed"):
        assert selected["search"][key] == alone["search"][key], key

    def untimed(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in epoch.items() if "seconds" not in k} for epoch in history]

    assert untimed(selected["search"]["history"]) == untimed(alone["search"]["history"])  # one α trajectory
    assert selected["search"]["search_shared_with"] == "lrnas"
    assert selected["search"]["search_seconds"] == big["search"]["search_seconds"]  # the shared search's time
    drop = ("run", "params_built")
    assert {k: v for k, v in selected["contributions"].items() if k not in drop} == {
        k: v for k, v in alone["contributions"].items() if k not in drop
    }
    # the budget binds, so the selection is not the search's own: the test compares two decisions
    assert selected["contributions"]["over_budget"] and not big["contributions"]["over_budget"]
    assert selected["contributions"]["params"] <= 8_000 < big["contributions"]["params"]
    assert selected["search"]["decisions"] != big["search"]["decisions"]
    assert (shared / "results/digits/lrnas_8k/seed0/contributions.png").read_bytes()[:4] == b"\x89PNG"
