"""The DARTS cell-space operations (Liu et al., ICLR 2019, ``operations.py``).

Every op maps (B, C, H, W) -> (B, C, H/stride, W/stride). ``affine`` is False in the search
supernet (as in DARTS) and True in the final network. ``OPS`` is the registry the supernet,
the final network, genotype validation and the bound propagation all read from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rnas.runtime import cpu_vendor

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class _Subsample(torch.autograd.Function):
    """x[:, :, o::s, o::s] whose gradient keeps x's memory format.

    Autograd's own slice backward scatters into a new NCHW (contiguous) zero tensor, whatever
    the input's layout; on a channels_last network every later gradient kernel then mixes
    layouts (ReLU's backward on an NHWC input with an NCHW gradient measured ~10x slower, plus a
    layout copy at each gradient sum). Here the zeros are ``zeros_like(x)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stride: int, offset: int) -> torch.Tensor:
        ctx.stride, ctx.offset, ctx.shape, ctx.fmt = stride, offset, x.shape, memory_format_of(x)
        o = offset
        return x[:, :, o::stride, o::stride].contiguous(memory_format=ctx.fmt)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        o, s = ctx.offset, ctx.stride
        gx = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.fmt).zero_()
        gx[:, :, o::s, o::s] = grad
        return gx, None, None


def subsample(x: torch.Tensor, stride: int, offset: int = 0) -> torch.Tensor:
    """Every ``stride``-th pixel from ``offset`` in both spatial dims, (B, C, ⌈(H−o)/s⌉, ⌈(W−o)/s⌉),
    in x's memory format; its gradient keeps that format too (:class:`_Subsample`)."""
    if stride == 1 and offset == 0:
        return x
    if not torch.is_grad_enabled() or not x.requires_grad:
        return x[:, :, offset::stride, offset::stride].contiguous(memory_format=memory_format_of(x))
    return _Subsample.apply(x, stride, offset)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (same parameters, same result up to float rounding) that runs as one
    matrix product on the CPU: out[b] = W · x[b] with x[b] viewed as (C_in, H·W).

    oneDNN's convolution has a fixed cost of ~50 µs per call, which dominates at the channel
    counts and map sizes of the search and of the small digits networks; the matmul is ~2x
    faster forward + backward there (benchmarks/README.md). NCHW and channels_last inputs each
    get their layout's product (the output keeps the input's memory format); a stride s reads
    x[..., ::s, ::s] first. Other devices and padded or grouped convs run ``nn.Conv2d.forward``;
    hooks and the bound propagation see an ordinary ``nn.Conv2d``.

    On AMD CPUs wide or tall inputs run ``nn.Conv2d.forward`` too (:func:`onednn_pointwise`):
    torch's matmul (MKL) reaches ~110 GFLOP/s there against oneDNN's ~290 for convolutions, is
    slow for tall products with few columns, and oneDNN's 1x1 conv measured 1.9-2.2x the matmul
    forward + backward on (64, 64, 8, 8) and (64, 32, 16, 16) (benchmarks/README.md, session 15),
    1.0-2.7x on the evaluation's batches of 8x8 maps (session 26)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or x.dim() != 4
            or self.groups != 1
            or self.padding != (0, 0)
            or self.kernel_size != (1, 1)
            or self.stride[0] != self.stride[1]
            or (self.stride == (1, 1) and onednn_pointwise(x))
        ):
            return super().forward(x)
        return self.product(subsample(x, self.stride[0]))

    def product(self, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """The 1x1 conv at stride 1 as one matrix product (CPU, 4-D x), ignoring ``self.stride``;
        ``bias=False`` leaves out ``self.bias``."""
        weight = self.weight.view(self.out_channels, self.in_channels)
        return pointwise(x, weight, self.bias if bias else None)


ONEDNN_POINTWISE_VENDORS = ("AuthenticAMD",)
ONEDNN_POINTWISE_MIN_ROWS = 6144  # batch x pixels from which oneDNN's 1x1 conv wins on 8x8+ maps


def onednn_pointwise(x: torch.Tensor) -> bool:
    """Whether a stride-1 1x1 conv on the CPU input ``x`` runs on oneDNN rather than as one
    matmul: on CPUs of :data:`ONEDNN_POINTWISE_VENDORS` (read from /proc/cpuinfo, never
    assumed), for float32 channels-last inputs on 8x8+ maps with either 6144+ rows (batch x
    pixels: the evaluation's attack batches, LRNAS's stacked coalitions, maps of 16x16 and up)
    or 32+ channels and either 64+ channels or 16x16+ maps. torch's matmul (MKL) is slow on
    these CPUs for a tall product with few columns (a (23040, 8) @ (8, 8) product 3.9x slower
    than oneDNN's conv). Measured on an AMD EPYC (Zen 5), forward + both backwards, matmul time /
    oneDNN time, one thread (benchmarks/README.md, session 26): 1.0-2.7x at 8x8 maps with 6592+
    rows and 4-48 channels, 1.3-4.1x at 16x16 and 32x32 (batch 64), but 0.6-1.3x with 4096
    rows (the training batches of 64 at 8x8, which stay on the matmul), 0.5-1.0x on 4x4 maps
    with 2512 rows and 0.4-0.7x on 2x2; AutoAttack's APGD on two digits networks 1.08-1.14x;
    session 15: 1.9x on (64, 64, 8, 8), 2.2x on (64, 32, 16, 16), the paper-scale DARTS search
    step 1.08-1.13x. On the Xeon the matmul was the faster at the digits training size (1.29x)."""
    c, pixels = x.shape[1], x.shape[-2] * x.shape[-1]
    return (
        pixels >= 64
        and (x.shape[0] * pixels >= ONEDNN_POINTWISE_MIN_ROWS or (c >= 32 and (c >= 64 or pixels >= 256)))
        and x.dtype == torch.float32
        and memory_format_of(x) == torch.channels_last
        and cpu_vendor() in ONEDNN_POINTWISE_VENDORS
    )


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A stride-1 1x1 convolution with a (C_out, C_in) ``weight`` as one matrix product; the
    output keeps x's memory format (NCHW or channels_last)."""
    b, c, h, w = x.shape
    c_out = weight.shape[0]
    if memory_format_of(x) == torch.channels_last:
        # NHWC: (B·H·W, C_in) @ (C_in, C_out), the result viewed back as channels_last NCHW
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
        if bias is not None and not torch.is_autocast_enabled(x.device.type):
            out = torch.addmm(bias, rows, weight.t())  # the bias in the product: one kernel less
        else:
            out = torch.matmul(rows, weight.t())
            if bias is not None:
                out = out + bias
        return out.view(b, h, w, c_out).permute(0, 3, 1, 2)
    out = torch.matmul(weight, x.reshape(b, c, h * w))  # (B, C_out, H·W)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(b, c_out, h, w)


GROUPED_ONEDNN_MIN_ELEMENTS = 1 << 18  # input elements from which oneDNN's grouped 1x1 conv can win
GROUPED_ONEDNN_MIN_GROUP_CHANNELS = 16  # input channels per group from which it wins on other CPUs


def onednn_grouped_pointwise(x: torch.Tensor, groups: int) -> bool:
    """Whether ``groups`` stride-1 1x1 convs on the channel groups of the CPU input ``x`` run as
    oneDNN's grouped convolution rather than as one product with the block-diagonal matrix of
    their weights (:func:`grouped_pointwise`), for float32 channels-last inputs. The
    block-diagonal product multiplies ``groups`` times the useful work, most of it by zeros; the
    grouped convolution does the useful work in one call, which costs more per call. Which wins
    depends on the CPU (:func:`rnas.runtime.cpu_vendor`, read from /proc/cpuinfo, never assumed):

    - On CPUs of :data:`ONEDNN_POINTWISE_VENDORS` (AMD, whose matmul is the slow kernel): inputs
      with 2^18+ elements (the paper-scale supernets' states), or 3+ groups on one thread (the
      digits search, one thread per job). Measured on an AMD EPYC (Zen 5), forward + both
      backwards, batch 64, block-diagonal time / grouped-conv time (benchmarks/README.md, session
      26): one thread 2.2-6.4x at the DARTS paper states (C 16-64, 32x32-8x8), 1.0-3.6x at PC-DARTS
      K = 4's (4-16 channels per edge), 1.0-1.7x at the digits states with 3 or 4 groups,
      0.66-0.79x with 2 groups below 2^18 elements; two threads 2.5-6.0x, 1.1-2.4x at PC-DARTS'
      with 3-4 groups, 0.6-1.2x at the digits states.
    - Elsewhere (measured on Intel Xeons): 3+ groups of 16+ input channels each on 2^18+ elements. On
      an Ice Lake Xeon, the same ratio (benchmarks/README.md, session 35): 0.61-0.91x at every
      grouped shape of the PC-DARTS K = 4 paper step and the digits step but one, (64, 64, 8, 8)
      in 4 groups (1.26x); 1.15-2.03x with 3-4 groups of 16-64 channels on 2^18+ elements, 0.76-0.78x
      with 4-8 channels per group or with 2 groups even there (one thread; two alike). Session 28's
      Xeon with AMX: the product 1.2-1.5x faster at the digits states."""
    if not (
        groups > 1
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and memory_format_of(x) == torch.channels_last
    ):
        return False
    if cpu_vendor() in ONEDNN_POINTWISE_VENDORS:
        return x.numel() >= GROUPED_ONEDNN_MIN_ELEMENTS or (groups >= 3 and torch.get_num_threads() == 1)
    return (
        groups >= 3
        and x.shape[1] // groups >= GROUPED_ONEDNN_MIN_GROUP_CHANNELS
        and x.numel() >= GROUPED_ONEDNN_MIN_ELEMENTS
    )


def grouped_pointwise(
    x: torch.Tensor, weight: torch.Tensor, groups: int, bias: torch.Tensor | None = None, onednn: bool | None = None
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, groups=groups)`` for a 1x1 ``weight`` (groups·C_out, C_in, 1, 1),
    stride 1, x (B, groups·C_in, H, W): group t's C_out outputs from its C_in inputs. Where
    :func:`onednn_grouped_pointwise` says so (``onednn`` overrides it; benchmarks and tests), that
    very call; otherwise (and for one group) one matrix product (:func:`pointwise`), with the
    block-diagonal matrix of the groups' weights. The same function up to float round-off."""
    c_out, c_in = weight.shape[0] // groups, weight.shape[1]
    if groups == 1:
        return pointwise(x, weight.view(c_out, c_in), bias)
    if onednn_grouped_pointwise(x, groups) if onednn is None else onednn:
        return torch.nn.functional.conv2d(x, weight.view(groups * c_out, c_in, 1, 1), bias, groups=groups)
    return pointwise(x, torch.block_diag(*weight.view(groups, c_out, c_in).unbind(0)), bias)


def conv2d(c_in: int, c_out: int, kernel: int, **kwargs) -> nn.Conv2d:
    """``nn.Conv2d``, or its :class:`PointwiseConv2d` fast path for a 1x1 kernel."""
    return (PointwiseConv2d if kernel == 1 else nn.Conv2d)(c_in, c_out, kernel, **kwargs)


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv(k, stride, padding) -> BN: the conv-bn-act unit of cells and preprocessing."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward_preactivated(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The unit on an input that is already ReLU(x) (see :class:`SharedReLU`)."""
        return self[2](self[1](x_relu))

    def preactivation_skips(self) -> tuple[nn.Module, ...]:
        """The modules :meth:`forward_preactivated` does not call (see :class:`SharedReLU`)."""
        return (self, self[0])


class DepthwiseConv2d(nn.Conv2d):
    """The depthwise conv of :class:`DilConv`: an ``nn.Conv2d`` (same parameters, same result)
    with two fast paths for "same" padding p = d·(k−1)/2 and odd k.

    *Subsampling*, for stride = dilation = d > 1: the stride-2 ``dil_conv`` edges of reduction
    cells.
    Such a conv reads only every d-th pixel: out[i] = Σ_t w[t]·x[d·i + d·t − p]
    = Σ_t w[t]·x_d[i + t − p/d] with x_d = x[..., ::d, ::d], so it equals a stride-1,
    dilation-1 conv of the subsampled input with padding p/d (output size ⌈H/d⌉ both ways).
    CPU kernels for dilated depthwise convs are slow (forward + backward ~3-10x the subsampled
    conv's at 32x32, benchmarks/README.md).

    *Cropping*, for stride 1 on a map smaller than the kernel's reach: a tap at offset d·t
    (|t| ≤ (k−1)/2) reads only zero padding when d·|t| ≥ H, so the kernel is cropped to the taps
    with d·|t| ≤ H − 1 (per axis) and the padding shrinks to match. A dil_conv_5x5 on the 2x2
    maps of a digits network is then a 1x1 conv; CPU kernels spend most of their time on the
    padding there (440 µs vs 55 µs per call).

    *Backward*, for the stride-1 convs of the digits networks' sizes: :class:`_DepthwiseSame`,
    whose gradients run on faster kernels (:func:`same_backward`). ``own_backward = False`` keeps
    autograd's; the search supernet sets it (no gain measured there, and the searched cells of
    earlier runs stay the same bit for bit).

    Every other setting runs ``nn.Conv2d.forward`` unchanged. Module hooks (MAC counting) and
    the bound propagation (which reads stride/padding/dilation) see an ordinary ``nn.Conv2d``."""

    own_backward: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dilation[0]
        same = self.padding_mode == "zeros" and is_same_depthwise(
            self.weight, self.stride, self.padding, self.dilation, self.groups, self.in_channels
        )
        if not same:
            if max(self.dilation) > 1 and self.stride == (1, 1) and _cpu_autocast(x):
                with torch.autocast("cpu", enabled=False):  # see depthwise()
                    return super().forward(x.float())
            return super().forward(x)
        return depthwise(x, self.weight, self.stride[0], d, self.bias, self.own_backward)


def _cpu_autocast(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def as_pair(v) -> tuple[int, int]:
    """A conv setting (stride, padding, ...) as given to ``nn.Conv2d``, an int or a pair, as a pair."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def is_same_depthwise(weight: torch.Tensor, stride, padding, dilation, groups: int, in_channels: int) -> bool:
    """Whether a zero-padded conv with these settings is what :func:`depthwise` computes: one odd
    square filter per channel (``weight`` (C, 1, k, k), ``groups`` = C = ``in_channels``), equal
    stride and dilation d on both axes, "same" padding d·(k−1)/2. :class:`DepthwiseConv2d` and
    the bound graph's conv node (:mod:`rnas.bounds.graph`) take their fast paths on it."""
    (sh, sw), (ph, pw), (dh, dw) = as_pair(stride), as_pair(padding), as_pair(dilation)
    c, per_group, kh, kw = weight.shape
    return (
        kh == kw
        and kh % 2 == 1
        and dh == dw
        and sh == sw
        and (ph, pw) == (dh * (kh - 1) // 2,) * 2
        and groups == in_channels == c
        and per_group == 1
    )


def depthwise(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    dilation: int,
    bias: torch.Tensor | None = None,
    own_backward: bool = True,
) -> torch.Tensor:
    """The depthwise conv (one filter per channel, ``weight`` (C, 1, k, k), odd k) with "same"
    padding d·(k−1)/2, through the fast paths of :class:`DepthwiseConv2d` (``own_backward``:
    its backward where it applies)."""
    k, d, c = weight.shape[-1], dilation, weight.shape[0]
    if d > 1 and stride == 1 and _cpu_autocast(x):
        # torch 2.14's CPU bf16 kernel gives wrong weight gradients (off by >100%, inf, NaN) for
        # channels-last stride-1 dilated depthwise convs on maps >= 29 px wide: float32 here
        # (rnas.runtime.autocast; tests/test_amp_cpu.py)
        with torch.autocast("cpu", enabled=False):
            return depthwise(x.float(), weight.float(), stride, d, None if bias is None else bias.float(), own_backward)
    r = (k - 1) // 2  # taps on each side of the centre
    if d > 1 and stride == d:
        return depthwise_same(subsample(x, d), weight, bias, (r, r), 1, own_backward)
    if d > 1 and stride == 1 and _by_phases(x, d):
        return _dilated_by_phases(x, weight, d, bias, own_backward)
    if stride == 1:
        h, w = x.shape[-2:]
        rh, rw = min(r, (h - 1) // d), min(r, (w - 1) // d)
        if (rh, rw) != (r, r):
            weight = weight[:, :, r - rh : r + rh + 1, r - rw : r + rw + 1]
        return depthwise_same(x, weight, bias, (d * rh, d * rw), d, own_backward)
    return nn.functional.conv2d(x, weight, bias, stride, d * r, d, c)


def depthwise_same(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
    dilation: int,
    own_backward: bool = True,
) -> torch.Tensor:
    """The stride-1 depthwise conv with "same" padding (d·(k−1)/2 per axis, odd k): ``F.conv2d``'s
    value, with :class:`_DepthwiseSame`'s backward where ``own_backward`` and :func:`same_backward`
    take it."""
    if not (own_backward and same_backward(x)):
        return nn.functional.conv2d(x, weight, bias, 1, padding, dilation, weight.shape[0])
    return _DepthwiseSame.apply(_unleafed(x), _unleafed(weight), bias, padding, dilation)


def _unleafed(t: torch.Tensor) -> torch.Tensor:
    """A leaf that requires grad behind a view, so that the backward can ask the engine whether
    its gradient is wanted (:func:`_wanted`; the engine does not answer that for a leaf under
    ``torch.autograd.grad``)."""
    return t.view_as(t) if t.requires_grad and t.grad_fn is None else t


def _wanted(ctx, i: int) -> bool:
    """Whether the running backward uses the gradient of the Function's input ``i``: an attack's
    ``torch.autograd.grad`` w.r.t. the input skips the weights' even when they require grad,
    as autograd's own conv backward does."""
    if not ctx.needs_input_grad[i]:
        return False
    try:
        return torch._C._will_engine_execute_node(ctx.next_functions[i][0])
    except (AttributeError, RuntimeError):  # a torch without it, or a leaf: compute it
        return True


SAME_BACKWARD_MAX_CHANNELS = 16
SAME_BACKWARD_MAX_PIXELS = 64


def same_backward(x: torch.Tensor) -> bool:
    """Whether a stride-1 depthwise conv of ``x`` takes :class:`_DepthwiseSame`'s backward: on
    the CPU, outside autocast, with gradients on, for maps of at most 64 pixels with at most 16
    channels -- the digits networks' convs. Measured there (AMD EPYC, one thread, interleaved):
    an attack's forward + input gradient 1.10x, a training step 1.08-1.16x on the retrained
    digits networks; the digits supernet's search step within noise (its edges' convs are
    grouped into 32+ channels, where autograd's backward is as fast). The paper-scale search
    steps (16-64 channels on 8-32 px maps) measured 0.90-0.97x with it, so they keep autograd's,
    and the supernet opts out (:attr:`DepthwiseConv2d.own_backward`; benchmarks/README.md
    "Depthwise backward")."""
    h, w = x.shape[-2:]
    return (
        x.device.type == "cpu"
        and x.shape[1] <= SAME_BACKWARD_MAX_CHANNELS
        and h * w <= SAME_BACKWARD_MAX_PIXELS
        and torch.is_grad_enabled()
        and not _cpu_autocast(x)
    )


class _DepthwiseSame(torch.autograd.Function):
    """A stride-1 depthwise conv with "same" padding whose backward runs on faster kernels.

    oneDNN's depthwise backward is slower than its forward on the CPU (channels-last, one
    thread, AMD EPYC; benchmarks/README.md "Depthwise backward"): on the digits networks'
    (160, 8, 8, 8) maps the input gradient takes 2-5x the forward, and the weight gradient of
    the dilated 5x5 kernel 35x (2.7 ms against 0.08 ms).

    * Input gradient: for stride 1 and "same" padding it is the depthwise conv of the output
      gradient with the kernel flipped in both axes, ∂L/∂x[p] = Σ_t g[p − d·t]·w[t]: the
      forward kernel, any dilation.
    * Weight gradient: :func:`depthwise_weight_grad`.

    Both sum the same products as autograd's kernels in another order: the same numbers up to
    float rounding (tests/test_fast_paths.py). The backward is built of differentiable ops, so
    double backward works."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.bias = padding, dilation, bias is not None
        return nn.functional.conv2d(x, weight, bias, 1, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=memory_format_of(x))  # x's layout, as autograd's kernel
        gx = gw = gb = None
        if _wanted(ctx, 0):
            gx = nn.functional.conv2d(grad, weight.flip(-2, -1), None, 1, ctx.padding, ctx.dilation, weight.shape[0])
        if _wanted(ctx, 1):
            gw = depthwise_weight_grad(x, grad, weight, ctx.padding, ctx.dilation)
        if ctx.bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None


def _aten_weight_grad(x, grad, weight, padding, dilation: int) -> torch.Tensor:
    c, mask = weight.shape[0], [False, True, False]  # the weight's gradient only
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1], list(padding), [dilation] * 2, False, [0, 0], c, mask
    )[1]


BLOCKS_MIN_CHANNELS = 8


def _weight_grad_by_blocks(x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int], d: int) -> bool:
    """Whether :func:`depthwise_weight_grad` splits the kernel: a dilated 5x5 kernel with full
    "same" padding on a float32 channels-last input of 8+ channels whose map d divides (below
    8 channels the copies cost more than the slow kernel loses)."""
    h, w = x.shape[-2:]
    return (
        d > 1
        and tuple(weight.shape[-2:]) == (5, 5)
        and padding == (2 * d, 2 * d)
        and weight.shape[0] >= BLOCKS_MIN_CHANNELS
        and h % d == 0
        and w % d == 0
        and x.dtype == torch.float32
        and memory_format_of(x) == torch.channels_last
    )


def _pixel_phases(t: torch.Tensor, d: int) -> torch.Tensor:
    """(B, C, H, W) channels-last -> (B·d², C, H/d, W/d) channels-last: the d² sub-grids t[a::d, b::d]."""
    b, c, h, w = t.shape
    nhwc = t.permute(0, 2, 3, 1).reshape(b, h // d, d, w // d, d, c).permute(0, 2, 4, 1, 3, 5)
    return nhwc.reshape(b * d * d, h // d, w // d, c).permute(0, 3, 1, 2)


def depthwise_weight_grad(
    x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int], dilation: int
) -> torch.Tensor:
    """∂L/∂w (C, 1, k, k) of the stride-1 depthwise conv of x with "same" ``padding`` and
    ``dilation`` d, given ∂L/∂out ``grad``, ∂L/∂w[t] = Σ_{b, p} g[b, p]·x̃[b, p + d·t] per channel
    (x̃ the padded input): autograd's kernel, or (:func:`_weight_grad_by_blocks`) four undilated
    3x3 weight gradients, which oneDNN runs fast (a 5x5 or dilated one it does not):

    * the dilation becomes d² undilated problems, one per pixel-parity sub-grid (out[d·i + a]
      reads x̃[d·(i + t) + a] only), stacked along the batch, over which the gradient sums;
    * the 5x5 kernel is four 3x3 blocks at tap offsets (0|2, 0|2), each the weight gradient of
      a valid 3x3 conv of a crop of the padded input; rows and columns 0-2 come from the first
      block of each axis, 3-4 from the second."""
    if not _weight_grad_by_blocks(x, weight, padding, dilation):
        return _aten_weight_grad(x, grad, weight, padding, dilation)
    d, p, cl = dilation, padding[0], torch.channels_last
    xp = _pixel_phases(nn.functional.pad(x, (p, p, p, p)).contiguous(memory_format=cl), d)
    g = _pixel_phases(grad.contiguous(memory_format=cl), d)
    h, w = g.shape[-2:]
    three = weight.new_empty(weight.shape[0], 1, 3, 3)  # only its shape is read

    def block(i: int, j: int) -> torch.Tensor:
        crop = xp[:, :, i : i + h + 2, j : j + w + 2].contiguous(memory_format=cl)
        return _aten_weight_grad(crop, g, three, (0, 0), 1)

    top = torch.cat([block(0, 0), block(0, 2)[..., 1:]], dim=-1)  # taps in rows 0-2
    bottom = torch.cat([block(2, 0), block(2, 2)[..., 1:]], dim=-1)  # rows 2-4
    return torch.cat([top, bottom[:, :, 1:]], dim=-2)


PHASE_MIN_CHANNELS = 16  # below it the two layout copies cost more than the dilated kernel loses


def _by_phases(x: torch.Tensor, d: int) -> bool:
    h, w = x.shape[-2:]
    return (
        x.device.type == "cpu"
        and x.shape[1] >= PHASE_MIN_CHANNELS
        and h % d == 0
        and w % d == 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


def _dilated_by_phases(
    x: torch.Tensor, weight: torch.Tensor, d: int, bias: torch.Tensor | None, own_backward: bool = True
) -> torch.Tensor:
    """A stride-1 depthwise conv with dilation d and "same" padding as d² undilated convs, one
    per pixel-parity sub-grid, batched: out[d·i + a] = Σ_t w[t]·x[d·(i + t − r) + a], so the
    sub-grid x_a = x[a::d] (both axes) convolved with dilation 1 and padding r gives out[a::d]
    (d must divide H and W). On a channels_last x the sub-grids are gathered and scattered back
    with one copy each way. CPU kernels for dilated depthwise convs are slow (forward + backward
    measured 1.2-5x the undilated kernel on the sub-grids with 16-64 channels, benchmarks/README.md)."""
    b, c, h, w = x.shape
    hd, wd = h // d, w // d
    y = depthwise(_pixel_phases(x, d), weight, 1, 1, bias, own_backward)  # (B·d², C, H/d, W/d), channels_last
    out = y.permute(0, 2, 3, 1).reshape(b, d, d, hd, wd, c).permute(0, 3, 1, 4, 2, 5).reshape(b, h, w, c)
    return out.permute(0, 3, 1, 2)


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` (same result up to float rounding) computed as a depthwise convolution
    with a ones kernel divided by the per-pixel count of window pixels inside the image
    (``count_include_pad=False``): out = conv(x, 1) / conv(1_image, 1). CPU average-pooling
    kernels are 2-3x slower than the depthwise conv, forward + backward (benchmarks/README.md).
    Used when padding is zero-padding-free counting with ``ceil_mode=False`` (the DARTS op);
    anything else runs ``nn.AvgPool2d.forward``. Bound propagation reads kernel/stride/padding
    of this ``nn.AvgPool2d`` as before."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = self.kernel_size, self.stride, self.padding
        if (
            not isinstance(k, int)
            or not isinstance(s, int)
            or not isinstance(p, int)
            or self.ceil_mode
            or self.count_include_pad
            or self.divisor_override is not None
            or x.dim() != 4
        ):
            return super().forward(x)
        c = x.shape[1]
        ones = x.new_ones((c, 1, k, k))
        total = nn.functional.conv2d(x, ones, None, s, p, 1, c)  # (B, C, H', W')
        count = nn.functional.conv2d(x.new_ones((1, 1) + x.shape[-2:]), ones[:1], None, s, p)  # (1, 1, H', W')
        return total / count


class DilConv(nn.Sequential):
    """ReLU -> depthwise dilated conv -> pointwise conv -> BN."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int, affine: bool = True
    ):
        super().__init__(
            nn.ReLU(inplace=False),
            DepthwiseConv2d(
                c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation, groups=c_in, bias=False
            ),
            PointwiseConv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward_preactivated(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The op on an input that is already ReLU(x) (the supernet shares one ReLU per state)."""
        return self[3](self[2](self[1](x_relu)))

    def preactivation_skips(self) -> tuple[nn.Module, ...]:
        """The modules :meth:`forward_preactivated` does not call (see :class:`SharedReLU`)."""
        return (self, self[0])


class SepConv(nn.Sequential):
    """Two stacked DilConv(dilation=1) units, the first carrying the stride (DARTS SepConv)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )

    def forward_preactivated(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The op on an input that is already ReLU(x) (see :meth:`DilConv.forward_preactivated`)."""
        return self[1](self[0].forward_preactivated(x_relu))

    def preactivation_skips(self) -> tuple[nn.Module, ...]:
        """The modules :meth:`forward_preactivated` does not call (see :class:`SharedReLU`)."""
        return (self, *self[0].preactivation_skips())


class SharedReLU:
    """ReLU(x) computed once per tensor x, for the ops of a final (derived) network that start
    with one: sep and dil convs, the ``ReLUConvBN`` preprocessing and ``FactorizedReduce``.

    A cell's state feeds several ops, and a cell's output is the input of the next two cells'
    preprocessing, so the same tensor is rectified 2-4 times in a forward pass: 108 of the 387
    ReLUs of the 18 digits networks of ``make run`` (28%). :meth:`apply` runs such an op from the
    one ReLU(x) (``op.forward_preactivated``), as the search supernet does per state. The values
    are the same bit for bit; an input's gradient is the same sum of its consumers' gradients,
    summed in another order where three or more meet (float rounding). Measured on the retrained
    digits networks (AMD EPYC, one thread): an attack's forward + input gradient 1.04-1.08x at
    150 examples, 1.18-1.24x at 360; APGD-CE + APGD-T 0.96-1.19x over three networks, two runs
    each, the same flags (benchmarks/README.md, session 22).

    One instance serves one forward pass, keyed by tensor identity; :meth:`keep` forgets every
    ReLU but those of the given tensors (the next cell's inputs), so no-grad inference holds at
    most one cell's worth. An op with a hook (or an instance ``forward``) on a module
    ``forward_preactivated`` would skip (``op.preactivation_skips()``) runs as it is."""

    def __init__(self) -> None:
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t, r in self._pairs:
            if t is x:
                return r
        r = torch.relu(x)
        self._pairs.append((x, r))
        return r

    def keep(self, *tensors: torch.Tensor) -> None:
        self._pairs = [(t, r) for t, r in self._pairs if any(t is u for u in tensors)]

    def apply(self, op: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``op(x)``, from the shared ReLU(x) where ``op`` starts with a ReLU."""
        skips = getattr(op, "preactivation_skips", None)
        if skips is None or not all(_runs_as_defined(m) for m in skips()):
            return op(x)
        return op.forward_preactivated(self(x))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` op: a zero edge (spatially strided so shapes match)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Stride-2 'skip': two 1x1 stride-2 convs on offset grids, concatenated, then BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = PointwiseConv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = PointwiseConv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.paths(x))

    def forward_preactivated(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The op on an input that is already ReLU(x) (see :class:`SharedReLU`)."""
        return self.bn(self.paths_preactivated(x_relu))

    def preactivation_skips(self) -> tuple[nn.Module, ...]:
        """The modules :meth:`forward_preactivated` does not call (see :class:`SharedReLU`)."""
        return (self, self.relu)

    def paths(self, x: torch.Tensor) -> torch.Tensor:
        """The two convolved paths concatenated, before the BN."""
        return self.paths_preactivated(self.relu(x))

    def paths_preactivated(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`paths` of an input that is already ReLU(x)."""
        a = self.conv_1(x)
        if x.device.type == "cpu" and x.dim() == 4:
            # conv_2 reads pixels (1 + 2i, 1 + 2j), zero past the border on odd sizes: the same
            # product as below without the shifted copy, its gradient in x's memory format
            b = self.conv_2.product(subsample(x, 2, 1), bias=False)
            b = nn.functional.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
            if self.conv_2.bias is not None:  # the padded pixels get the bias too, as conv_2(0)
                b = b + self.conv_2.bias.view(1, -1, 1, 1)
        else:
            # The second path is shifted one pixel; pad so odd sizes still line up.
            b = self.conv_2(nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1)))
        return torch.cat([a, b], dim=1)


NCHW_BATCH_NORM_BELOW = 16  # channels: a 64-byte cache line holds 16 float32


def nchw_batch_norm(x: torch.Tensor) -> bool:
    """Whether train-mode batch norm of ``x`` runs faster on an NCHW copy: a float32
    channels-last CPU input with fewer than :data:`NCHW_BATCH_NORM_BELOW` channels, when torch
    runs more than one intra-op thread, or with at most 4 channels on one.

    torch 2.14's channels-last kernel reduces row by row over the (N·H·W, C) matrix into one
    C-float buffer per thread; with C < 16 a row is shorter than a vector and the threads'
    buffers share a cache line. Measured on an AMD EPYC, forward + backward, batch 64 (µs, one /
    two threads, channels-last against the NCHW copy with both conversions): (4, 32x32) 1,867 /
    2,172 against 1,115 / 738; (8, 16x16) 283 / 592 against 565 / 315; (8, 32x32) 1,590 / 2,534
    against 2,774 / 1,554; (16, 16x16) 352 / 199 against 1,139 / 624 (benchmarks/README.md,
    "Batch norm with few channels")."""
    if x.dim() != 4:
        return False
    c = x.shape[1]
    return (
        c < NCHW_BATCH_NORM_BELOW
        and (c <= 4 or torch.get_num_threads() > 1)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


def batch_var_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(biased variance, mean) per channel of x (B, C, H, W) over (B, H, W), as
    ``torch.var_mean(x, dim=(0, 2, 3), unbiased=False)`` up to float round-off. On a channels-last
    x the pixels are the rows of a (B·H·W, C) matrix and both passes (the mean, then the mean
    square deviation) are products with a row of 1/N: 2-2.3x faster with the backward than
    ``var_mean``'s kernel on the digits supernet's maps (AMD EPYC, one thread)."""
    if x.dim() != 4 or memory_format_of(x) != torch.channels_last:
        return torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # a view
    ones = rows.new_full((1, rows.shape[0]), 1.0 / rows.shape[0])
    mean = (ones @ rows).squeeze(0)
    dev = rows - mean
    return (ones @ (dev * dev)).squeeze(0), mean


def batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> torch.Tensor:
    """``nn.functional.batch_norm`` (same arguments, same function and running statistics up to
    float round-off); in train mode on the inputs of :func:`nchw_batch_norm` it normalizes an
    NCHW copy and returns the result channels-last."""
    if training and nchw_batch_norm(x):
        y = nn.functional.batch_norm(x.contiguous(), running_mean, running_var, weight, bias, True, momentum, eps)
        return y.contiguous(memory_format=torch.channels_last)
    return nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


def _foldable_bn(bn: nn.Module) -> bool:
    return (
        type(bn) is nn.BatchNorm2d
        and not bn.affine
        and bn.track_running_stats
        and bn.momentum is not None
        and bn.running_mean is not None
    )


def _runs_as_defined(m: nn.Module) -> bool:
    """``m`` has no forward hook and no instance-level ``forward``: calling its class's code
    directly (skipping its ``__call__``) skips nothing."""
    return not (m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m))


def unhooked(op: nn.Module) -> bool:
    """No module of ``op`` has a hook or an instance-level ``forward``: a fast path that skips
    their ``__call__`` would skip those too (also :func:`rnas.space.grouped.edges_groupable`)."""
    return all(_runs_as_defined(m) for m in op.modules())


def _pool_key(pool: nn.Module) -> tuple:
    """Pools of one class and settings give the same output on the same input."""
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "count_include_pad", "divisor_override")
    return (type(pool),) + tuple(repr(getattr(pool, n, None)) for n in names)


def scaled_by_closing_bn(
    op: nn.Module,
    x: torch.Tensor,
    x_relu: torch.Tensor | None,
    w: torch.Tensor,
    shared: dict | None = None,
) -> torch.Tensor | None:
    """``w · op(x)`` for a scalar ``w``, computed with ``w`` as the weight of the affine-free
    BatchNorm that closes ``op`` (sep/dil convs, pools followed by a BN, FactorizedReduce):
    ``w·(z − μ)/σ = BN_{γ=w}(z)``, so the supernet's weighted sum needs no separate product with
    ``w`` forward, and backward the BN kernel gives ``w``'s gradient (Σ g·ẑ, which it computes
    anyway) instead of a product and a sum over the whole map per op. Same function and gradients
    (second order included) up to float round-off; the BN's running statistics are updated as
    its own forward would (``tests/test_fast_paths.py``). ``x_relu``: ReLU(x) when the caller has
    it. ``shared``: a dict kept per input x by the caller (one per supernet state): a pool's
    output is stored there and reused by the same pool on the state's other out-edges (pooling
    has no parameters, so every edge computes the same map; autograd then sums their gradients
    into one pool backward). None where it does not apply (another op, a hook, autocast,
    per-example weights): the caller then computes ``w · op(x)``."""
    if w.dim() != 0 or torch.is_autocast_enabled(x.device.type):
        return None
    t = type(op)
    if t is DilConv or t is SepConv:
        unit = op if t is DilConv else op[1]
        bn = unit[3]
        if not (_foldable_bn(bn) and unhooked(op)):
            return None
        if t is DilConv:
            r = x_relu if x_relu is not None else unit[0](x)
        else:
            first = op[0]
            z = first.forward_preactivated(x_relu) if x_relu is not None else first(x)
            r = unit[0](z)
        z = unit[2](unit[1](r))
    elif t is nn.Sequential and len(op) == 2 and type(op[0]) in (nn.MaxPool2d, AvgPool2d, nn.AvgPool2d):
        bn = op[1]
        if not (_foldable_bn(bn) and unhooked(op)):
            return None
        key = _pool_key(op[0])
        z = shared.get(key) if shared is not None else None
        if z is None:
            z = op[0](x)
            if shared is not None:
                shared[key] = z
    elif t is FactorizedReduce:
        bn = op.bn
        if not (_foldable_bn(bn) and unhooked(op)):
            return None
        z = op.paths(x)
    else:
        return None
    if bn.training:
        bn.num_batches_tracked.add_(1)  # as nn.BatchNorm2d.forward does
    # contiguous: torch 2.14's channels-last BN backward reads a stride-0 (expanded) weight
    # wrongly (input gradients of ~1e229; tests/test_fast_paths.py keeps a check)
    weight = w.to(z.dtype).expand(bn.num_features).contiguous()
    return batch_norm(z, bn.running_mean, bn.running_var, weight, None, bn.training, bn.momentum, bn.eps)


OpFactory = Callable[[int, int, bool], nn.Module]  # (C, stride, affine) -> module

OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda c, stride, affine: AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "skip_connect": lambda c, stride, affine: Identity() if stride == 1 else FactorizedReduce(c, c, affine),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine),
}
assert tuple(OPS) == PRIMITIVES  # registry and list agree

PARAMETER_FREE: frozenset[str] = frozenset({"none", "max_pool_3x3", "avg_pool_3x3"})


def is_parameter_free(op: str, stride: int) -> bool:
    """True when the op has no weights at this stride (skip is a FactorizedReduce at stride 2)."""
    if op == "skip_connect":
        return stride == 1
    return op in PARAMETER_FREE


def make_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    try:
        factory = OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; known ops: {', '.join(PRIMITIVES)}") from None
    return factory(channels, stride, affine)
