"""The partial-channel mixed op of PC-DARTS (Xu et al., ICLR 2020) in the cell-space supernet:
output shapes, the channel shuffle, edge normalization, and K = 1 being plain DARTS."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnas.space.genotype import num_edges
from rnas.space.ops import PRIMITIVES
from rnas.space.supernet import MixedOp, Supernet, channel_shuffle

torch.set_num_threads(1)


def _darts_mixed(op: MixedOp, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """DARTS' mixed op, written out: Σ_o w_o · op_o(x)."""
    return sum(w[i] * m(x) for i, m in enumerate(op.ops))


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_mixed_op_shapes(k, stride, size):
    torch.manual_seed(0)
    op = MixedOp(8, stride, partial_channels=k).eval()
    x = torch.randn(3, 8, size, size)
    out = op(x, torch.softmax(torch.randn(len(PRIMITIVES)), 0))
    side = -(-size // stride)  # ceil: what every strided op (and the bypass pool) gives
    assert out.shape == (3, 8, side, side)
    assert len(op.ops) == len(PRIMITIVES)
    assert next(op.ops[4].parameters()).shape[0] == 8 // k  # sep_conv sees C/K channels


@pytest.mark.parametrize("k", [1, 2, 4])
def test_supernet_output_shape_and_arch_parameters(k):
    torch.manual_seed(0)
    net = Supernet(8, 3, 10, input_channels=1, nodes=3, partial_channels=k)
    out = net(torch.rand(4, 1, 8, 8))
    assert out.shape == (4, 10)
    n_e = num_edges(3)
    shapes = [tuple(p.shape) for p in net.arch_parameters()]
    assert shapes == ([(n_e, 8), (n_e, 8)] + ([(n_e,), (n_e,)] if k > 1 else []))
    ids = {id(p) for p in net.arch_parameters()}
    assert not any(id(p) in ids for p in net.weights())


def test_channel_shuffle_is_a_permutation():
    b, c, k = 2, 12, 4
    x = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1).expand(b, c, 3, 3).contiguous()
    y = channel_shuffle(x, k)
    order = y[0, :, 0, 0].long()
    assert sorted(order.tolist()) == list(range(c))  # every channel exactly once
    for i in range(c // k):  # output i·K + g is input g·(C/K) + i
        for g in range(k):
            assert int(order[i * k + g]) == g * (c // k) + i
    assert torch.equal(channel_shuffle(y, c // k), x)  # the transposed shuffle undoes it
    xl = x.to(memory_format=torch.channels_last)  # NHWC input gives the same result
    assert torch.equal(channel_shuffle(xl, k), y)


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channels_bypass_and_processed_part(stride):
    """K = 2: the first C/2 channels go through the mixed op, the rest bypass it (max-pooled on
    a stride-2 edge), then the shuffle interleaves them."""
    torch.manual_seed(0)
    k, c = 2, 8
    op = MixedOp(c, stride, partial_channels=k).eval()
    x = torch.randn(2, c, 8, 8)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    out = op(x, w)
    unshuffled = channel_shuffle(out, c // k)  # back to [processed | bypass]
    processed = _darts_mixed(op, x[:, : c // k], w)
    bypass = x[:, c // k :] if stride == 1 else torch.nn.functional.max_pool2d(x[:, c // k :], 2, 2)
    torch.testing.assert_close(unshuffled[:, : c // k], processed)
    torch.testing.assert_close(unshuffled[:, c // k :], bypass)


def test_edge_normalization_sums_to_one_per_node():
    torch.manual_seed(0)
    nodes = 4
    net = Supernet(8, 3, 10, input_channels=1, nodes=nodes, partial_channels=2)
    with torch.no_grad():
        net.beta_normal.copy_(torch.randn_like(net.beta_normal) * 3)
    for reduction in (False, True):
        e = net.edge_weights(reduction)
        assert e.shape == (num_edges(nodes),)
        assert bool((e > 0).all())
        start = 0
        for node in range(nodes):
            torch.testing.assert_close(e[start : start + node + 2].sum(), torch.tensor(1.0))
            start += node + 2
    assert Supernet(8, 3, 10, input_channels=1, partial_channels=1).edge_weights(False) is None


def test_edge_normalization_weighs_each_edge_and_gets_gradients():
    torch.manual_seed(0)
    net = Supernet(8, 2, 10, input_channels=1, nodes=2, partial_channels=2)
    loss = net(torch.rand(4, 1, 8, 8)).square().mean()
    loss.backward()
    for p in net.arch_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0)
    # The derived genotype multiplies op weights by edge weights: β decides which two of node
    # 1's three inputs are kept, whatever α says.
    for favoured in ((0, 2), (1, 2), (0, 1)):
        with torch.no_grad():
            for beta in (net.beta_normal, net.beta_reduce):
                beta.copy_(torch.tensor([0.0, 0.0] + [5.0 if j in favoured else -5.0 for j in range(3)]))
        g = net.genotype()
        assert [src for _, src in g.normal] == [0, 1, *favoured]
        assert [src for _, src in g.reduce] == [0, 1, *favoured]


def _darts_reference_forward(net: Supernet, x: torch.Tensor) -> torch.Tensor:
    """The DARTS (Liu et al. 2019) supernet forward written from the paper's formulas:
    node_j = Σ_{i<j} Σ_o softmax(α_ij)_o · o(x_i), cell output = concat of the nodes."""
    w_n, w_r = torch.softmax(net.alpha_normal, -1), torch.softmax(net.alpha_reduce, -1)
    s0 = s1 = net.stem(net.normalize(x))
    for cell in net.cells:
        w = w_r if cell.reduction else w_n
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        offset = 0
        for _ in range(cell.nodes):
            states.append(sum(_darts_mixed(cell.edges[offset + j], h, w[offset + j]) for j, h in enumerate(states)))
            offset += len(states) - 1
        s0, s1 = s1, torch.cat(states[2:], dim=1)
    return net.classifier(net.global_pooling(s1).flatten(1))


def test_k1_equals_full_darts():
    torch.manual_seed(0)
    net = Supernet(8, 3, 10, input_channels=1, nodes=3, partial_channels=1).eval()
    with torch.no_grad():
        net.alpha_normal.copy_(torch.randn_like(net.alpha_normal))
        net.alpha_reduce.copy_(torch.randn_like(net.alpha_reduce))
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(net(x), _darts_reference_forward(net, x))
    op = net.cells[0].edges[0]
    assert op.bypass_pool is None and op.k == 1
    assert next(op.ops[4].parameters()).shape[0] == net.cells[0].preprocess1[1].out_channels  # all channels


def test_k_must_divide_channels():
    with pytest.raises(ValueError, match="must divide"):
        MixedOp(6, 1, partial_channels=4)


# --------------------------------------------------------------------------------------------
# K > 1 against the PC-DARTS definition, written out
# --------------------------------------------------------------------------------------------


def _shuffle_by_definition(x: torch.Tensor, k: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle with K groups, as an index list: output channel i·K + g is
    input channel g·(C/K) + i."""
    c = x.shape[1]
    return x[:, [g * (c // k) + i for i in range(c // k) for g in range(k)]]


def _pc_edge_by_definition(edge: MixedOp, x: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    """PC-DARTS' partial-channel edge (Xu et al. 2020, eq. 2 and their model_search.py): the
    ops see the sampled 1/K of the channels (the first C/K; the shuffle of the previous node
    decides which they are), Σ_o w_o · o(x_sampled); the other channels bypass the ops
    (max-pooled 2x2 on a stride-2 edge); the two parts are concatenated, then shuffled."""
    c = x.shape[1]
    sampled, bypassed = x[:, : c // k], x[:, c // k :]
    mixed = sum(w[o] * op(sampled) for o, op in enumerate(edge.ops))
    if edge.stride == 2:
        bypassed = F.max_pool2d(bypassed, 2, 2)
    return _shuffle_by_definition(torch.cat([mixed, bypassed], dim=1), k)


def _pc_forward_by_definition(net: Supernet, x: torch.Tensor, k: int) -> torch.Tensor:
    """The PC-DARTS supernet forward: node_j = Σ_{i<j} softmax(β over node j's inputs)_i ·
    edge_ij(x_i) (edge normalization), each edge as :func:`_pc_edge_by_definition` with
    w = softmax(α_ij) times the switch-off mask; the cell output concatenates the nodes."""
    s0 = s1 = net.stem(net.normalize(x))
    for cell in net.cells:
        alpha, beta, mask = (
            (net.alpha_reduce, net.beta_reduce, net.mask_reduce)
            if cell.reduction
            else (net.alpha_normal, net.beta_normal, net.mask_normal)
        )
        w = torch.softmax(alpha, -1) * mask
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        offset = 0
        for _ in range(cell.nodes):
            n_in = len(states)
            b = torch.softmax(beta[offset : offset + n_in], 0)
            states.append(
                sum(
                    b[j] * _pc_edge_by_definition(cell.edges[offset + j], h, w[offset + j], k)
                    for j, h in enumerate(states)
                )
            )
            offset += n_in
        s0, s1 = s1, torch.cat(states[2:], dim=1)
    return net.classifier(net.global_pooling(s1).flatten(1))


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_partial_channel_supernet_matches_the_pc_darts_definition(k, masked):
    torch.manual_seed(0)
    net = Supernet(8, 3, 10, input_channels=1, nodes=3, partial_channels=k)  # normal, reduce, reduce
    with torch.no_grad():
        for p in net.arch_parameters():  # far from uniform, so every weight matters
            p.copy_(2 * torch.randn_like(p))
        if masked:  # primitives switched off (LRNAS' contribution estimate)
            for mask in (net.mask_normal, net.mask_reduce):
                mask.copy_((torch.rand_like(mask) > 0.3).float())
    x = torch.rand(4, 1, 8, 8)
    for train in (True, False):  # BN with batch statistics (search) and with running statistics
        net.train(train)
        with torch.no_grad():
            torch.testing.assert_close(net(x), _pc_forward_by_definition(net, x, k), atol=1e-5, rtol=1e-4)
    # and the gradient reaches α and β as in the definition
    net.train()
    x = torch.rand(4, 1, 8, 8)
    got = torch.autograd.grad(net(x).square().sum(), net.arch_parameters())
    want = torch.autograd.grad(_pc_forward_by_definition(net, x, k).square().sum(), net.arch_parameters())
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, atol=1e-5, rtol=1e-4)
