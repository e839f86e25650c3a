"""The grouped supernet forward (rnas.space.grouped): each state's out-edges computed together
give the per-edge forward's output, every gradient (first and second order) and the same BN
statistics, in both memory formats, with and without PC-DARTS partial channels."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import scrambled_supernet

from rnas.space import grouped
from rnas.space.supernet import SearchCell, Supernet


def _pair(k: int, channels_last: bool, cin: int = 1, seed: int = 0) -> tuple[Supernet, Supernet]:
    net = scrambled_supernet(k, channels_last, cin, seed)
    per_edge = copy.deepcopy(net)
    for cell in per_edge.cells:
        cell.group_edges = False
    return net, per_edge


def _run(net: Supernet, x: torch.Tensor, y: torch.Tensor):
    net.train()
    net.zero_grad()
    xx = x.clone().requires_grad_()
    out = net(xx)
    loss = torch.nn.functional.cross_entropy(out, y)
    (gx,) = torch.autograd.grad(loss, xx, create_graph=True)  # DSRNA's Jacobian term needs 2nd order
    (loss + gx.abs().sum()).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    return out.detach(), grads, buffers


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("onednn", [False, True], ids=["block_diagonal", "grouped_conv"])
def test_grouped_equals_per_edge(k: int, channels_last: bool, size: int, onednn: bool) -> None:
    """Both kernels of the grouped 1x1 convs (``SearchCell.onednn_grouped``: the block-diagonal
    product, the grouped convolution), second-order gradients included."""
    cin = 3 if k == 4 else 1
    a, b = _pair(k, channels_last, cin)
    for cell in a.cells:
        cell.onednn_grouped = onednn
    calls = {"n": 0}
    original = grouped.state_ops

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    x = torch.rand(6, cin, size, size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (6,))
    grouped.state_ops = counting
    try:
        out_a, grads_a, buf_a = _run(a, x, y)
    finally:
        grouped.state_ops = original
    assert calls["n"] == 3 * 5  # every state of every cell went through the grouped path
    out_b, grads_b, buf_b = _run(b, x, y)
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-12)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_b:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-9, atol=1e-11, msg=name)
    assert buf_a.keys() == buf_b.keys()
    for name in buf_b:
        torch.testing.assert_close(buf_a[name], buf_b[name], rtol=1e-10, atol=1e-12, msg=name)


def test_grouped_output_keeps_the_memory_format() -> None:
    net, _ = _pair(4, True, cin=3)
    net.train()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    s0 = s1 = net.stem(net.normalize(x))
    cell = net.cells[0]
    out = cell(s0, s1, net.op_weights(False), net.edge_weights(False))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_eval_mode_and_masks_run_edge_by_edge() -> None:
    """Eval-mode BNs normalize with each edge's own running statistics, and a masked op is not
    run on its edge: both take the per-edge path, unchanged."""
    net, per_edge = _pair(1, False)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    original = grouped.state_ops
    grouped.state_ops = lambda *a, **k: pytest.fail("grouped path taken")
    try:
        net.eval()
        per_edge.eval()
        torch.testing.assert_close(net(x), per_edge(x))
        net.train()
        with torch.no_grad():
            net.mask_normal[0, 4] = 0.0
            net.mask_reduce[1, 5] = 0.0
        net(x)
    finally:
        grouped.state_ops = original


def test_grouping_rule_follows_the_op_input_size() -> None:
    """Few-channel or tiny op inputs are grouped; the paper DARTS K = 1 cells (16 channels at
    32x32) are not (benchmarks/README.md, "Grouped edges")."""
    cell = SearchCell(4, 48, 48, 16, False, False, partial_channels=4)
    assert cell._worth_grouping(torch.zeros(1, 16, 32, 32))  # PC-DARTS: 4 channels x 32x32
    cell1 = SearchCell(4, 48, 48, 16, False, False, partial_channels=1)
    assert not cell1._worth_grouping(torch.zeros(1, 16, 32, 32))
    assert cell1._worth_grouping(torch.zeros(1, 16, 8, 8))
    assert not cell1._worth_grouping(torch.zeros(1, 64, 8, 8))


def test_batch_norm_group_updates_each_bn_as_its_own() -> None:
    torch.manual_seed(0)
    bns = [torch.nn.BatchNorm2d(3, affine=False).double() for _ in range(4)]
    with torch.no_grad():
        for b in bns:
            b.running_mean.uniform_(-1, 1)
    twins = copy.deepcopy(bns)
    x = torch.randn(5, 12, 4, 4, dtype=torch.float64)
    out = grouped.batch_norm_group(x, bns)
    ref = torch.cat([b(x[:, 3 * t : 3 * t + 3]) for t, b in enumerate(twins)], dim=1)
    torch.testing.assert_close(out, ref)
    for b, t in zip(bns, twins):
        torch.testing.assert_close(b.running_mean, t.running_mean)
        torch.testing.assert_close(b.running_var, t.running_var)
        assert int(b.num_batches_tracked) == int(t.num_batches_tracked) == 1
    shared = grouped.shared_batch_norm(x[:, :3], bns[:2])
    torch.testing.assert_close(shared, twins[0](x[:, :3]))
    torch.testing.assert_close(bns[0].running_var, twins[0].running_var)
