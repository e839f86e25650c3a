"""Issue 9's fast paths compute exactly what the straightforward code computes.

The supernet's fused mixed op (one ReLU per state, no `none` op, in-place accumulation,
channels-last PC-DARTS shuffle), the subsampled stride-2 dilated conv, the kernel cropped to
the taps that reach a small map, the 1x1 conv as a matrix product, and the options of
rnas.runtime refused with a warning where they cannot run (compile on a CPU, amp on a CPU
without native bf16). The reference is the direct implementation in benchmarks/reference.py,
which the benchmarks time against.
"""

from __future__ import annotations

import copy
import importlib.util
import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, scrambled_supernet
from torch import nn

from rnas.config import ParamsError, params_from_dict
from rnas.runtime import acceleration, autocast, configure_acceleration, place_model
from rnas.space import ops
from rnas.space.ops import DepthwiseConv2d, DilConv, FactorizedReduce, PointwiseConv2d, subsample
from rnas.space.supernet import Supernet, channel_shuffle

torch.set_num_threads(1)


def _reference():
    spec = importlib.util.spec_from_file_location("rnas_bench_reference", ROOT / "benchmarks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 8])  # 1..4: the cropped kernels (digits' 2x2 and 4x4 maps)
def test_depthwise_conv_equals_nn_conv2d(stride, kernel, dilation, size):
    torch.manual_seed(0)
    m = DepthwiseConv2d(
        4, 4, kernel, stride=stride, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=4, bias=False
    )
    x = torch.rand(2, 4, size, size, requires_grad=True)
    fast, plain = m(x), nn.Conv2d.forward(m, x)
    assert fast.shape == plain.shape
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), (x, m.weight))
    g_plain = torch.autograd.grad(plain.square().sum(), (x, m.weight))
    for a, b in zip(g_fast, g_plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel,dilation", [(3, 2), (5, 2), (3, 3)])
@pytest.mark.parametrize("size", [2, 4, 6, 8])
def test_dilated_conv_by_pixel_parity_subgrids_equals_nn_conv2d(kernel, dilation, size):
    """Stride-1 dilated depthwise convs on channels-last maps of 16+ channels run as d² undilated
    convs on the sub-grids (rnas.space.ops._dilated_by_phases): same values and gradients, the
    output and the input gradient channels-last; sizes d does not divide take the other paths."""
    torch.manual_seed(0)
    m = DepthwiseConv2d(
        16, 16, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=16, bias=False
    ).double()
    x = torch.rand(3, 16, size, size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    taken = size % dilation == 0
    calls = []
    original = ops._dilated_by_phases
    ops._dilated_by_phases = lambda *a: calls.append(1) or original(*a)
    try:
        fast = m(x)
    finally:
        ops._dilated_by_phases = original
    assert bool(calls) == taken
    plain = nn.Conv2d.forward(m, x)
    torch.testing.assert_close(fast, plain, atol=1e-12, rtol=1e-10)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    g = torch.rand_like(plain)
    g_fast = torch.autograd.grad(fast, (x, m.weight), g)
    g_plain = torch.autograd.grad(plain, (x, m.weight), g)
    assert g_fast[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(g_fast, g_plain):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("channels", [4, 8, 16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("blocks", [False, True])
def test_depthwise_backward_on_forward_kernels_equals_autograd(
    monkeypatch, kernel, dilation, channels, channels_last, blocks
):
    """The digits-size depthwise convs' backward (rnas.space.ops._DepthwiseSame: the input
    gradient as the conv with the flipped kernel, the dilated 5x5 weight gradient as four 3x3
    ones on the pixel-parity sub-grids) gives autograd's gradients, on every map size of the
    digits networks (the cropped kernels included), with ``blocks`` forcing the 3x3 split on
    every shape it applies to, whatever the channel count."""
    taken = []
    if blocks:
        original = ops._weight_grad_by_blocks
        monkeypatch.setattr(ops, "BLOCKS_MIN_CHANNELS", 1)
        monkeypatch.setattr(ops, "_weight_grad_by_blocks", lambda *a: taken.append(original(*a)) or taken[-1])
    torch.manual_seed(0)
    pad = dilation * (kernel - 1) // 2
    for size in (2, 4, 6, 8):
        m = DepthwiseConv2d(channels, channels, kernel, padding=pad, dilation=dilation, groups=channels, bias=False)
        x = torch.rand(5, channels, size, size)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        assert ops.same_backward(x)
        fast, plain = m(x), nn.Conv2d.forward(m, x)
        torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-5)
        g = torch.rand_like(plain)
        for a, b in zip(torch.autograd.grad(fast, (x, m.weight), g), torch.autograd.grad(plain, (x, m.weight), g)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if blocks:
        # 16+ channels: the forward's sub-grid path has undilated convs already
        assert any(taken) == (channels_last and (kernel, dilation) == (5, 2) and channels < ops.PHASE_MIN_CHANNELS)


def test_depthwise_backward_on_forward_kernels_has_a_double_backward():
    """DSRNA's Jacobian metric and gradient penalties differentiate through a backward: the
    custom backward is built of differentiable ops (float64 gradcheck of both orders)."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.rand(3, dtype=torch.float64, requires_grad=True)

    def conv(x, w, b):
        return ops._DepthwiseSame.apply(x, w, b, (4, 4), 2)

    assert torch.autograd.gradcheck(conv, (x, w, b))
    assert torch.autograd.gradgradcheck(conv, (x, w, b))


def test_depthwise_backward_on_forward_kernels_only_where_it_measured_faster():
    """Digits sizes only (<= 16 channels on <= 64-pixel maps): the grouped supernet edges (32+
    channels) and the paper-scale maps keep autograd's kernel, as do autocast, CUDA and no-grad."""
    assert ops.same_backward(torch.rand(2, 16, 8, 8))
    assert not ops.same_backward(torch.rand(2, 32, 8, 8))
    assert not ops.same_backward(torch.rand(2, 8, 16, 16))
    with torch.no_grad():
        assert not ops.same_backward(torch.rand(2, 8, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ops.same_backward(torch.rand(2, 8, 8, 8))


def test_the_search_supernet_keeps_autograds_depthwise_backward(monkeypatch):
    """The supernet's depthwise convs (its edges' and the grouped ones) run autograd's backward:
    no gain was measured in the search, and its cells stay those of earlier runs bit for bit;
    the final networks' convs take the new one."""
    from rnas.space.network import CellNetwork

    calls = []
    monkeypatch.setattr(
        ops._DepthwiseSame,
        "apply",
        lambda *a: calls.append(1) or F.conv2d(a[0], a[1], a[2], 1, a[3], a[4], a[1].shape[0]),
    )
    net = Supernet(4, 3, 10, input_channels=1, dataset="digits")
    assert all(not m.own_backward for m in net.modules() if isinstance(m, DepthwiseConv2d))
    x = torch.rand(4, 1, 8, 8)
    net(x).sum().backward()
    assert not calls
    edges = [["sep_conv_3x3", 0], ["dil_conv_5x5", 1]] * 4
    cells = {"normal": edges, "normal_concat": [2, 3, 4, 5], "reduce": edges, "reduce_concat": [2, 3, 4, 5]}
    final = CellNetwork(cells, 4, 3, 10, input_channels=1, dataset="digits")
    final(x).sum().backward()
    assert calls


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_conv_equals_nn_conv2d(stride, channels_last, bias):
    torch.manual_seed(0)
    m = PointwiseConv2d(5, 7, 1, stride=stride, bias=bias)
    x = torch.rand(3, 5, 7, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    fast, plain = m(x), nn.Conv2d.forward(m, x)
    assert fast.shape == plain.shape
    if stride == 1:  # the output keeps the input's memory format
        assert fast.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-5)
    wrt = (x, m.weight) + ((m.bias,) if bias else ())
    for a, b in zip(torch.autograd.grad(fast.square().sum(), wrt), torch.autograd.grad(plain.square().sum(), wrt)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cpu_vendor_is_read_from_cpuinfo():
    from rnas.runtime import cpu_vendor

    assert cpu_vendor("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: avx2\n") == "AuthenticAMD"
    assert cpu_vendor("vendor_id : GenuineIntel\n") == "GenuineIntel"
    assert cpu_vendor("processor : 0\n") == ""


def _cl(*shape, dtype=torch.float32) -> torch.Tensor:
    """A random channels-last tensor (the layout the oneDNN dispatch rules look at)."""
    return torch.rand(*shape, dtype=dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel"])
def test_wide_or_tall_pointwise_convs_run_on_onednn_on_amd_only(monkeypatch, vendor):
    """Issue 17, sessions 15 and 26: on AMD CPUs torch's matmul is the slow kernel, so 1x1 convs on
    8x8+ maps with inputs of 32+ channels and either 64+ channels or 16x16+ maps, or with 6144+
    rows (batch x pixels: the evaluation's attack batches), run on oneDNN; the digits training
    batches (64 on 8x8: 4096 rows), 4x4 and 2x2 maps keep the matmul, and so does every shape on
    other CPUs. Same function either way."""
    monkeypatch.setattr(ops, "cpu_vendor", lambda: vendor)
    amd = vendor == "AuthenticAMD"

    wide = [(64, 32, 16, 16), (64, 64, 8, 8), (64, 64, 32, 32), (8, 256, 8, 8)]  # paper-scale cells
    tall = [(359, 8, 8, 8), (359, 32, 8, 8), (103, 24, 8, 8), (64, 16, 32, 32), (64, 4, 16, 16)]  # >= 6144 rows
    for shape in wide + tall:
        assert ops.onednn_pointwise(_cl(*shape)) == amd, shape
    small = [(64, 8, 8, 8), (64, 48, 8, 8), (95, 16, 8, 8), (64, 96, 4, 4), (512, 16, 4, 4), (359, 32, 2, 2)]
    for shape in small:  # the training batches on 8x8, 4x4 and 2x2 maps
        assert not ops.onednn_pointwise(_cl(*shape)), shape
    assert not ops.onednn_pointwise(torch.rand(64, 64, 8, 8))  # NCHW keeps its product
    assert not ops.onednn_pointwise(_cl(64, 64, 8, 8).double())

    torch.manual_seed(0)
    m = PointwiseConv2d(64, 32, 1, bias=False)
    x = _cl(4, 64, 8, 8).requires_grad_(True)
    calls = []
    original = ops.pointwise
    monkeypatch.setattr(ops, "pointwise", lambda *a: calls.append(1) or original(*a))
    fast = m(x)
    assert bool(calls) != amd  # the matmul ran exactly where oneDNN did not
    plain = nn.Conv2d.forward(m, x)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(
        torch.autograd.grad(fast.square().sum(), (x, m.weight)),
        torch.autograd.grad(plain.square().sum(), (x, m.weight)),
    ):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("onednn", [False, True], ids=["block_diagonal", "grouped_conv"])
def test_grouped_pointwise_equals_a_grouped_conv(channels_last, bias, onednn):
    """``grouped_pointwise`` (n 1x1 convs on n channel groups: oneDNN's grouped conv or one product
    with the block-diagonal weight matrix) is F.conv2d with ``groups`` n: output, its memory
    format, and the input, weight and bias gradients; one group is the plain product."""
    torch.manual_seed(0)
    n, c_in, c_out = 3, 5, 4
    x = torch.rand(6, n * c_in, 7, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(n * c_out, c_in, 1, 1, requires_grad=True)
    b = torch.randn(n * c_out, requires_grad=True) if bias else None
    fast = ops.grouped_pointwise(x, w, n, b, onednn=onednn)
    plain = F.conv2d(x, w, b, groups=n)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    assert fast.is_contiguous(memory_format=torch.channels_last) == channels_last
    inputs = (x, w) + ((b,) if bias else ())
    g = torch.rand_like(plain)
    for a, c in zip(torch.autograd.grad(fast, inputs, g), torch.autograd.grad(plain, inputs, g)):
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)
    one = ops.grouped_pointwise(x[:, :c_in], w[:c_out], 1, onednn=onednn)
    torch.testing.assert_close(one, F.conv2d(x[:, :c_in], w[:c_out]), atol=1e-5, rtol=1e-5)


def test_grouped_pointwise_rule_on_amd(monkeypatch):
    """Session 26: oneDNN's grouped 1x1 conv where it beat the block-diagonal product on the AMD
    EPYC: float32 channels-last CPU inputs with 2^18+ elements (paper-scale supernet states), or
    3+ groups on one thread (the digits search, one thread per job); else the product."""

    monkeypatch.setattr(ops, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert ops.onednn_grouped_pointwise(_cl(64, 64, 32, 32), 4)  # DARTS paper, C=16 x 4 edges
    assert ops.onednn_grouped_pointwise(_cl(64, 8, 32, 32), 2)  # PC-DARTS K=4, 2^19 elements
    assert ops.onednn_grouped_pointwise(_cl(64, 32, 8, 8), 4)  # digits normal cell, 4 edges
    assert ops.onednn_grouped_pointwise(_cl(64, 48, 4, 4), 3)
    assert not ops.onednn_grouped_pointwise(_cl(64, 16, 8, 8), 2)  # 2 groups, small: the product
    assert not ops.onednn_grouped_pointwise(_cl(64, 32, 8, 8), 1)
    assert not ops.onednn_grouped_pointwise(torch.rand(64, 32, 8, 8), 4)  # NCHW
    assert not ops.onednn_grouped_pointwise(_cl(64, 32, 8, 8, dtype=torch.float64), 4)  # float64 bound passes
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not ops.onednn_grouped_pointwise(_cl(64, 32, 8, 8), 4)  # two threads: the product wins small
    assert ops.onednn_grouped_pointwise(_cl(64, 64, 32, 32), 4)


@pytest.mark.parametrize("threads", [1, 2])
def test_grouped_pointwise_rule_elsewhere(monkeypatch, threads):
    """Session 35: on an Intel Xeon the block-diagonal product beat oneDNN's grouped conv at the
    digits states and PC-DARTS K = 4's (2 groups, or 4-8 channels per group); oneDNN only for 3+
    groups of 16+ channels on 2^18+ elements, on one thread or two."""

    monkeypatch.setattr(ops, "cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    for shape, groups in [
        ((64, 32, 8, 8), 4),  # digits normal cell, 4 edges
        ((64, 48, 4, 4), 3),
        ((64, 128, 2, 2), 4),
        ((64, 16, 32, 32), 4),  # PC-DARTS K=4: 4 channels per edge
        ((64, 32, 16, 16), 4),
        ((64, 48, 8, 8), 3),  # 16 channels per group, below 2^18 elements
        ((64, 32, 32, 32), 2),  # two groups
    ]:
        assert not ops.onednn_grouped_pointwise(_cl(*shape), groups), (shape, groups)
    for shape, groups in [((64, 64, 8, 8), 4), ((64, 96, 8, 8), 3), ((64, 256, 8, 8), 4), ((256, 64, 8, 8), 4)]:
        assert ops.onednn_grouped_pointwise(_cl(*shape), groups), (shape, groups)
    assert not ops.onednn_grouped_pointwise(_cl(64, 64, 8, 8, dtype=torch.float64), 4)
    assert not ops.onednn_grouped_pointwise(torch.rand(64, 64, 8, 8), 4)  # NCHW


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride,offset", [(2, 0), (2, 1), (3, 1)])
def test_subsample_equals_slicing_and_its_gradient_keeps_the_layout(channels_last, stride, offset):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 7, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    fast, plain = subsample(x, stride, offset), x[:, :, offset::stride, offset::stride]
    torch.testing.assert_close(fast, plain, atol=0, rtol=0)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), x)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), x)
    torch.testing.assert_close(g_fast, g_plain, atol=0, rtol=0)
    # autograd's slice backward returns NCHW whatever x is; the subsample's gradient does not
    assert g_fast.is_contiguous(memory_format=torch.channels_last) == channels_last
    with torch.no_grad():
        torch.testing.assert_close(subsample(x, stride, offset), plain, atol=0, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [3, 4, 7, 8])
def test_factorized_reduce_equals_the_shifted_convolution(channels_last, size):
    """The CPU path (pixels (1 + 2i, 1 + 2j) read directly) against DARTS' own: pad(x[1:, 1:])
    through the stride-2 conv, odd sizes included."""
    torch.manual_seed(0)
    m = FactorizedReduce(4, 6).train()
    x = torch.randn(3, 4, size, size)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def plain(x):
        r = F.relu(x)
        a = nn.Conv2d.forward(m.conv_1, r)
        b = nn.Conv2d.forward(m.conv_2, F.pad(r[:, :, 1:, 1:], (0, 1, 0, 1)))
        return m.bn(torch.cat([a, b], dim=1))

    fast, ref = m(x), plain(x)
    assert fast.shape == ref.shape == (3, 6, (size + 1) // 2, (size + 1) // 2)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    wrt = (x, m.conv_1.weight, m.conv_2.weight, m.bn.weight, m.bn.bias)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((fast * w).sum(), wrt), torch.autograd.grad((ref * w).sum(), wrt)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_dil_conv_counts_as_an_ordinary_conv():
    """MAC counting and bound propagation see nn.Conv2d modules with the op's true geometry."""
    from rnas.evaluation.complexity import count_macs

    op = DilConv(4, 4, 3, 2, 2, 2, affine=True)
    assert isinstance(op[1], nn.Conv2d) and op[1].dilation == (2, 2) and op[1].stride == (2, 2)
    # depthwise 3x3 on a 4x4 output (4 channels) + pointwise 4->4 on 4x4
    assert count_macs(op, (4, 8, 8)) == 4 * 16 * 9 + 4 * 16 * 4


@pytest.mark.parametrize("k,size", [(1, 8), (4, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_supernet_matches_the_straightforward_forward(k, channels_last, size):
    ref = _reference()
    torch.manual_seed(0)
    net = Supernet(4, 3, 10, 3, "cifar10", partial_channels=k).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    other = copy.deepcopy(net)
    x, y = torch.rand(4, 3, size, size), torch.randint(0, 10, (4,))
    loss = F.cross_entropy(net(x), y)
    loss_ref = F.cross_entropy(ref.naive_supernet_forward(other, x), y)
    torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    grads_ref = torch.autograd.grad(loss_ref, list(other.parameters()))
    # (a 1x1 conv into an affine-free BN has a zero weight gradient up to round-off, hence the
    # absolute floor relative to the largest gradient)
    floor = 1e-5 * max(float(g.abs().max()) for g in grads_ref)
    for (name, _), a, b in zip(net.named_parameters(), grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=floor, msg=name)
    assert all(g.abs().sum() > 0 for g in grads[-4 if k > 1 else -2 :] if g is not None)  # α (and β) learn


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("channels", [4, 8, 16])
@pytest.mark.parametrize("affine", [False, True])
def test_batch_norm_on_an_nchw_copy_is_the_same_function(threads, channels, affine):
    """ops.batch_norm takes a channels-last input with few channels through an NCHW copy: the
    same output (channels-last), input / weight / bias gradients and running statistics as
    ``F.batch_norm``, up to float round-off; eval mode is ``F.batch_norm`` itself."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        x = (3 * torch.randn(8, channels, 6, 6) + 1).contiguous(memory_format=torch.channels_last)
        g = torch.randn_like(x)
        weight, bias = (torch.rand(channels), torch.randn(channels)) if affine else (None, None)
        expected_detour = channels <= 4 or (channels < 16 and threads > 1)
        assert ops.nchw_batch_norm(x) == expected_detour
        assert not ops.nchw_batch_norm(x.contiguous())  # NCHW input: torch's own kernel
        results = []
        for fn in (F.batch_norm, ops.batch_norm):
            xi = x.clone().requires_grad_()
            w, b = (weight.clone().requires_grad_(), bias.clone().requires_grad_()) if affine else (None, None)
            rm, rv = torch.zeros(channels), torch.ones(channels)
            y = fn(xi, rm, rv, w, b, True, 0.1, 1e-5)
            assert y.is_contiguous(memory_format=torch.channels_last)
            y.backward(g)
            grads = [xi.grad] + ([w.grad, b.grad] if affine else [])
            with torch.no_grad():
                evaluated = fn(x, rm, rv, w, b, False, 0.1, 1e-5)
            results.append([y.detach(), *grads, rm, rv, evaluated])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(previous)


def test_channel_shuffle_keeps_channels_last_and_values():
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).reshape(2, 8, 3, 3)
    out = channel_shuffle(x.contiguous(memory_format=torch.channels_last), 4)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, channel_shuffle(x, 4), rtol=0, atol=0)
    # output channel i*groups + g is input channel g*(C/groups) + i
    assert torch.equal(out[:, 1], x[:, 2]) and torch.equal(out[:, 4], x[:, 1])


def test_masked_edges_still_skip_ops_and_zero_edges_are_zero():
    torch.manual_seed(0)
    net = Supernet(4, 2, 10, 1, "digits")
    net.mask_normal.zero_()
    net.mask_normal[:, 0] = 1.0  # only `none` on: every normal edge is a zero edge
    out = net(torch.rand(2, 1, 8, 8))
    assert torch.isfinite(out).all()
    loss = out.sum()
    loss.backward()
    normal_cell = next(c for c in net.cells if not c.reduction)
    for edge in normal_cell.edges:
        assert all(p.grad is None for p in edge.parameters())  # no op of a normal edge ran


def test_cuda_options_are_refused_with_a_warning_on_cpu(caplog, monkeypatch):
    import rnas.runtime

    # amp on a CPU needs native bf16 (tests/test_amp_cpu.py); compile is CUDA only
    monkeypatch.setattr(rnas.runtime, "cpu_has_native_bf16", lambda *a, **k: False)
    try:
        with caplog.at_level(logging.WARNING, logger="rnas.runtime"):
            acc = configure_acceleration(amp=True, compile=True, device=torch.device("cpu"))
        assert not acc.amp and not acc.compile
        assert "pipeline.amp: bf16 autocast needs CUDA or a CPU with native bf16" in caplog.text
        assert "pipeline.compile: CUDA only" in caplog.text
        with autocast(torch.device("cpu")):
            assert torch.get_autocast_dtype("cpu") is not None
            assert not torch.is_autocast_enabled("cpu")
        model = place_model(nn.Conv2d(1, 2, 3), torch.device("cpu"), channels_last=True)
        assert type(model.forward).__name__ == "method"  # not wrapped by torch.compile
    finally:
        configure_acceleration(amp=False, compile=False, device=torch.device("cpu"))
    assert acceleration().amp is False


def test_amp_and_compile_params_are_typed_booleans():
    p = params_from_dict({"pipeline": {"amp": True, "compile": False}})
    assert p.pipeline.amp is True and p.pipeline.compile is False
    with pytest.raises(ParamsError, match="pipeline.amp"):
        params_from_dict({"pipeline": {"amp": "yes"}})


def _fold_pair(k: int, channels_last: bool) -> tuple[Supernet, Supernet]:
    """Two copies of one supernet (float64, α far from uniform, BN running statistics that differ
    per BN): the first folds each op weight into the op's closing BN, the second multiplies."""
    from rnas.space.supernet import MixedOp

    net = scrambled_supernet(k, channels_last, cin=3 if k > 1 else 1)
    for cell in net.cells:
        cell.group_edges = False  # the per-edge forward (the paper's DARTS cells run it)
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if isinstance(m, MixedOp):
            m.fold_weights = False
    return net, plain


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_op_weight_folded_into_the_closing_bn_is_the_same_function(k, channels_last, train):
    """w·BN(z) computed as BN with weight w (ops.scaled_by_closing_bn) in the per-edge supernet
    forward: the same output, first- and second-order gradients of every parameter (α and β
    included) and the same BN running statistics, in train and eval mode, in both memory
    formats, with and without partial channels. In channels-last it also guards the contiguous
    weight (torch's channels-last BN backward reads an expanded, stride-0 weight wrongly)."""
    folded, plain = _fold_pair(k, channels_last)
    x = torch.rand(6, 3 if k > 1 else 1, 8, 8, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (6,))
    calls = {"n": 0}
    original = ops.scaled_by_closing_bn

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        calls["n"] += out is not None
        return out

    results = []
    for net in (folded, plain):
        net.train(train)
        net.zero_grad()
        xx = x.clone().requires_grad_()
        from rnas.space import supernet as supernet_module

        supernet_module.scaled_by_closing_bn = counting
        try:
            out = net(xx)
            loss = F.cross_entropy(out, y)
            (gx,) = torch.autograd.grad(loss, xx, create_graph=True)  # DSRNA's Jacobian term
            (loss + gx.abs().sum()).backward()
        finally:
            supernet_module.scaled_by_closing_bn = original
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads, {n: b.clone() for n, b in net.named_buffers()}))
    assert calls["n"] > 0  # the fold ran
    (out_a, grads_a, buf_a), (out_b, grads_b, buf_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-12)
    assert grads_a.keys() == grads_b.keys() and any(n.startswith("alpha") for n in grads_a)
    for name in grads_b:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-8, atol=1e-10, msg=name)
    for name in buf_b:
        torch.testing.assert_close(buf_a[name], buf_b[name], rtol=1e-10, atol=1e-12, msg=name)


def test_op_weight_fold_steps_aside_for_hooks_and_autocast():
    """A hooked op, per-example weights or autocast: the caller multiplies (None)."""
    op = DilConv(4, 4, 3, 1, 1, 1, affine=False)
    x = torch.rand(2, 4, 6, 6)
    w = torch.tensor(0.5)
    assert ops.scaled_by_closing_bn(op, x, None, w) is not None
    assert ops.scaled_by_closing_bn(op, x, None, torch.rand(2)) is None
    handle = op[2].register_forward_hook(lambda *a: None)
    assert ops.scaled_by_closing_bn(op, x, None, w) is None
    handle.remove()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.scaled_by_closing_bn(op, x, None, w) is None
    assert ops.scaled_by_closing_bn(DilConv(4, 4, 3, 1, 1, 1, affine=True), x, None, w) is None


@pytest.mark.parametrize("channels_last", [False, True])
def test_cat_nodes_hands_each_node_a_contiguous_gradient(channels_last):
    """The per-edge cell's output concatenation: torch.cat's values and gradients (first and
    second order), each node's gradient contiguous in that node's memory format."""
    from rnas.space.supernet import cat_nodes

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xs = [torch.rand(3, c, 5, 5, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_() for c in (2, 3)]
    out, ref = cat_nodes([x * x for x in xs]), torch.cat([x * x for x in xs], dim=1)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.rand_like(out)
    grads = torch.autograd.grad(out, xs, g, create_graph=True)
    grads_ref = torch.autograd.grad(ref, xs, g, create_graph=True)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.is_contiguous(memory_format=fmt)
    second = torch.autograd.grad(sum((a**2).sum() for a in grads), xs)
    second_ref = torch.autograd.grad(sum((b**2).sum() for b in grads_ref), xs)
    for a, b in zip(second, second_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 4])
def test_out_edges_of_a_state_share_its_pools(k, monkeypatch):
    """Per-edge forward: each state's max pool runs once for all its out-edges (5 states feed
    edges in a 4-node cell, 14 edges), not once per edge; the function is the same (the fold test
    above compares outputs, gradients and statistics with the product path, which pools per edge)."""
    folded, plain = _fold_pair(k, channels_last=False)
    calls = {"n": 0}
    original = nn.MaxPool2d.forward

    def counting(self, x):
        calls["n"] += 1
        return original(self, x)

    monkeypatch.setattr(nn.MaxPool2d, "forward", counting)  # class level: the modules stay unhooked
    x = torch.rand(2, 3 if k > 1 else 1, 8, 8, dtype=torch.float64)
    counts = []
    for net in (folded, plain):
        calls["n"] = 0
        net.train()(x)
        counts.append(calls["n"])
    bypass = 2 * 2 if k > 1 else 0  # PC-DARTS: each reduction cell's stride-2 bypass pools of states 0 and 1
    assert counts == [3 * 5 + bypass, 3 * 14 + bypass]


def _unshared_forward(net, x):
    """The final network's forward with every op run as it is (each its own ReLU)."""
    s0 = s1 = net.stem(net.normalize(x))
    for cell in net.cells:
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        for node in range(len(cell.ops) // 2):
            states.append(sum(cell.ops[j](states[cell.indices[j]]) for j in (2 * node, 2 * node + 1)))
        s0, s1 = s1, torch.cat([states[i] for i in cell.concat], dim=1)
    return net.classifier(net.global_pooling(s1).flatten(1))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("train", [False, True])
def test_shared_relus_of_the_final_network_are_the_same_function(seed, train):
    """One ReLU per state (ops.SharedReLU): the same logits bit for bit, the same input and
    weight gradients up to the order of float sums, on random genotypes with every op (the
    reduction cells' FactorizedReduce preprocessing and skips included), and the shared path
    really taken (fewer ReLU kernels)."""
    from rnas.evaluation.fold import fold_batchnorm
    from rnas.space.genotype import random_genotype
    from rnas.space.network import CellNetwork

    torch.manual_seed(seed)
    genotype = random_genotype(4, torch.Generator().manual_seed(seed))
    net = place_model(CellNetwork(genotype, 4, 3, 10, input_channels=1, dataset="digits"), "cpu", True)
    net.train(train)
    if not train:
        net(torch.rand(16, 1, 8, 8))  # (train-mode running stats would stay at init otherwise)
        net = fold_batchnorm(net.train().eval())
    x = torch.rand(6, 1, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    shared = net(x)
    plain = _unshared_forward(net, x)
    assert torch.equal(shared, plain)
    wrt = [x, *(p for p in net.parameters() if p.requires_grad)]
    for a, b in zip(torch.autograd.grad(shared.square().sum(), wrt), torch.autograd.grad(plain.square().sum(), wrt)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

    counts = {}
    for name, run in (("shared", net), ("plain", lambda t: _unshared_forward(net, t))):
        with torch.profiler.profile() as prof:
            run(x)
        counts[name] = sum(e.count for e in prof.key_averages() if e.key in ("aten::relu", "aten::clamp_min"))
    assert counts["shared"] < counts["plain"]


def test_shared_relu_steps_aside_for_hooked_ops():
    """An op with a hook on a module the shared path skips runs as it is (its hook fires)."""
    from rnas.space.network import CellNetwork

    edges = [["sep_conv_3x3", 0], ["sep_conv_3x3", 0], ["dil_conv_3x3", 0], ["sep_conv_5x5", 1]] * 2
    cells = {"normal": edges, "normal_concat": [2, 3, 4, 5], "reduce": edges, "reduce_concat": [2, 3, 4, 5]}
    net = CellNetwork(cells, 4, 3, 10, input_channels=1, dataset="digits")
    calls = []
    for op in (net.cells[0].ops[1], net.cells[0].ops[1][0][0], net.cells[1].preprocess0[0]):
        op.register_forward_hook(lambda m, i, o: calls.append(m))
    net(torch.rand(2, 1, 8, 8))
    assert len(calls) == 3
    relus = ops.SharedReLU()
    x = torch.rand(2, 4, 5, 5)
    assert relus(x) is relus(x) and torch.equal(relus(x), torch.relu(x))
    relus.keep()
    assert relus(x) is not None and len(relus._pairs) == 1


@pytest.mark.parametrize("channels_last", [False, True])
def test_partial_channel_split_is_slicing_with_the_gradient_in_the_inputs_layout(channels_last):
    """PC-DARTS' two parts of a state by one split: the slices' values and gradient bit for bit,
    the gradient in x's memory format (two slices' backward scatters into NCHW zeros)."""
    from rnas.space.supernet import _first_channels, _partial_split

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(3, 8, 5, 5).contiguous(memory_format=fmt).requires_grad_(True)
    xa, xb = _partial_split(x, 2)
    ya, yb = _first_channels(x, 2), x[:, 2:]
    assert torch.equal(xa, ya) and torch.equal(xb, yb)
    assert xa.is_contiguous(memory_format=fmt)
    ga = torch.rand_like(xa)
    gb = torch.rand(xb.shape).contiguous(memory_format=fmt)
    (g,) = torch.autograd.grad((xa * ga).sum() + (xb * gb).sum(), x)
    (g_ref,) = torch.autograd.grad((ya * ga).sum() + (yb * gb).sum(), x)
    assert torch.equal(g, g_ref)
    assert g.is_contiguous(memory_format=fmt)


def test_channels_last_pcdarts_cells_hand_their_preprocessing_a_channels_last_gradient():
    """The BN closing a PC-DARTS cell's preprocessing (channels-last input) gets a channels-last
    gradient, not torch's slow mixed-layout case (an NCHW gradient of a channels-last map)."""
    torch.manual_seed(0)
    net = Supernet(8, 3, 10, 3, "cifar10", partial_channels=4).train().to(memory_format=torch.channels_last)
    layouts = []

    def record(_m, _i, out):
        out.register_hook(lambda g: layouts.append(g.is_contiguous(memory_format=torch.channels_last)))

    for cell in net.cells:
        for pre in (cell.preprocess0, cell.preprocess1):
            bn = pre[-1] if isinstance(pre, nn.Sequential) else pre.bn
            bn.register_forward_hook(record)
    x = torch.rand(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    F.cross_entropy(net(x), torch.randint(0, 10, (4,))).backward()
    assert len(layouts) == 2 * len(net.cells) and all(layouts)


@pytest.mark.parametrize(
    "conv, same",
    [
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), True),
        (nn.Conv2d(8, 8, 5, stride=2, padding=4, dilation=2, groups=8), True),
        (nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8), True),
        (nn.Conv2d(8, 8, 3, padding=0, groups=8), False),  # not "same"
        (nn.Conv2d(8, 8, 4, padding=2, groups=8), False),  # even kernel
        (nn.Conv2d(8, 8, (3, 5), padding=(1, 2), groups=8), False),  # not square
        (nn.Conv2d(8, 8, 3, stride=(1, 2), padding=1, groups=8), False),
        (nn.Conv2d(8, 8, 3, padding=(2, 1), dilation=(2, 1), groups=8), False),
        (nn.Conv2d(8, 16, 3, padding=1, groups=8), False),  # two filters per channel
        (nn.Conv2d(8, 8, 3, padding=1, groups=4), False),  # grouped, not depthwise
        (nn.Conv2d(8, 8, 3, padding=1), False),
    ],
)
def test_is_same_depthwise_is_what_depthwise_computes(conv, same):
    """The one predicate behind DepthwiseConv2d's and the bound graph's fast paths: where it holds,
    :func:`ops.depthwise` equals the convolution."""
    assert ops.is_same_depthwise(conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups, 8) is same
    if same:
        x = torch.randn(2, 8, 8, 8)
        d = conv.dilation[0]
        expected = conv(x)
        assert torch.allclose(ops.depthwise(x, conv.weight, conv.stride[0], d, conv.bias), expected, atol=1e-5)
