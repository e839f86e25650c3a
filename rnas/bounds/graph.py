"""A small computation-graph IR for bound propagation, and the semantics of its operations.

A network is turned (by :mod:`rnas.bounds.builders`) into a :class:`Graph`: a list of nodes in
topological order, each an :class:`Op` object with the indices of its input nodes. Every op
gives three semantics of the same function f:

* ``forward(xs)`` — the clean value (the "point" pass); it must equal the module's output;
* ``ibp(zs, n)`` — a sound box: if every input lies in its box ``[l, u]``, the output lies in
  the returned box (interval bound propagation, Gowal et al. 2018; Mirman et al. 2018). For
  speed the clean value and the box travel together, stacked along the batch dimension:
  ``z = cat([x, l, u])`` with n = B rows each (one call per op instead of three); ops that are
  monotone and act per example (ReLU, pooling, sums, concatenation, slicing, ...) simply apply
  their ``forward`` to the stack;
* ``crown(A, boxes, xs)`` — one step of the backward linear-bound pass of CROWN (Zhang et al.
  2018) / Fast-Lin (Weng et al. 2018): given a linear function ``A · out`` of the op's output,
  with ``A`` of shape (B, S, *out_shape) (S specifications per example), return coefficients
  ``A_j`` on each input and a bias ``b`` (B, S) such that, for every input in its box,
  ``A · f(ins) ≥ Σ_j A_j · in_j + b`` (a *lower* bound; an upper bound is minus the lower bound
  of ``−A``). Linear ops are exact (``b`` is the bias term); ReLU and max pooling use the
  relaxations described on their classes; a ``None`` coefficient means "no dependence".

``xs`` are the clean values of the inputs (the point pass); batch-norm layers in training mode
take their statistics from them (see :class:`BatchNorm`), never from the box rows. The same
rule gives :meth:`Graph.forward_fixed_stats`: the network at other points with the clean
batch's BN statistics held fixed (``forward_again``, used by DSRNA's Jacobian metric). Graphs are
cheap and built afresh for every batch (weights are read from the modules at evaluation time,
so gradients reach them and the architecture parameters α). Shapes: activations (B, C, H, W) or (B, F); coefficients
(B, S, C, H, W) or (B, S, F).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnas.space.ops import as_pair, batch_var_mean, depthwise, grouped_pointwise, is_same_depthwise

Box = tuple[Tensor, Tensor]  # (lower, upper), same shape as the activation


class UnsupportedModelError(ValueError):
    """The bound propagation has no rule for a module (the message names it)."""


def _pos_neg(a: Tensor) -> tuple[Tensor, Tensor]:
    return a.clamp(min=0), a.clamp(max=0)


def _sum_spec(t: Tensor) -> Tensor:
    """Sum a (B, S, ...) tensor over everything but (B, S)."""
    return t.flatten(2).sum(-1)


def cast(t: Tensor | None, like: Tensor) -> Tensor | None:
    """A parameter in the dtype of the propagated tensors (bounds may run in float64 on a float32
    model, see :func:`rnas.bounds.spec_bounds`); differentiable, a no-op when they agree."""
    return t if t is None or t.dtype == like.dtype else t.to(like.dtype)


def _taps(size_in: int, size_out: int, k: int, stride: int, padding: int, dilation: int) -> list[tuple[slice, slice]]:
    """Per kernel tap i along one axis, the output positions o it reaches and the input positions
    o·s + i·d − p they read, as (output slice, input slice); taps that read only padding are left out."""
    taps = []
    for i in range(k):
        off = i * dilation - padding
        first = max(0, -(off // stride))  # the first o with o·s + off >= 0
        last = min(size_out - 1, (size_in - 1 - off) // stride)
        if last < first:
            taps.append((slice(0, 0), slice(0, 0)))
            continue
        start = first * stride + off
        taps.append((slice(first, last + 1), slice(start, start + (last - first) * stride + 1, stride)))
    return taps


def float64_depthwise(t: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether :func:`depthwise_taps` takes the conv of ``weight`` over ``t`` (or, for the adjoint,
    over the coefficients ``t``): depthwise (weight (C, 1, kh, kw), groups C > 1, C channels in
    ``t``), float64 on the CPU, where aten runs such a conv group by group (10-30 ms a call on the
    certified radius's 513-row stacks, 1.5-20x slower than the taps), and outside autograd."""
    return (
        t.dtype == torch.float64
        and t.device.type == "cpu"
        and 1 < groups == t.shape[1] == weight.shape[0]
        and weight.shape[1] == 1
        and not (torch.is_grad_enabled() and (t.requires_grad or weight.requires_grad))
    )


def depthwise_taps(
    x: Tensor, weight: Tensor, stride, padding, dilation, out_hw: tuple[int, int] | None = None, adjoint: bool = False
) -> Tensor:
    """The depthwise conv ``F.conv2d(x, weight, None, stride, padding, dilation, C)`` (weight
    (C, 1, kh, kw)), or with ``adjoint`` its transpose onto an input of size ``out_hw``
    (``conv_transpose2d`` with the output padding that gives that size), as one multiply-add
    per kernel tap over the maps laid out (H, W, N, C), so each tap's slice is a few contiguous
    blocks of N·C values. The same sums in another order (float round-off)."""
    stride, padding, dilation = as_pair(stride), as_pair(padding), as_pair(dilation)
    kh, kw = weight.shape[-2:]
    h, w = x.shape[-2:]
    if adjoint:
        size = out_hw
        taps = [_taps(size[d], (h, w)[d], (kh, kw)[d], stride[d], padding[d], dilation[d]) for d in range(2)]
    else:
        size = tuple(
            (n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip((h, w), (kh, kw), stride, padding, dilation)
        )
        taps = [_taps((h, w)[d], size[d], (kh, kw)[d], stride[d], padding[d], dilation[d]) for d in range(2)]
    xs = x.permute(2, 3, 0, 1).contiguous()
    out = xs.new_zeros(*size, *xs.shape[2:])
    wt = weight[:, 0]
    for i, (o_h, i_h) in enumerate(taps[0]):
        for j, (o_w, i_w) in enumerate(taps[1]):
            if adjoint:  # input position += w · output position
                out[i_h, i_w].addcmul_(xs[o_h, o_w], wt[:, i, j])
            else:
                out[o_h, o_w].addcmul_(xs[i_h, i_w], wt[:, i, j])
    return out.permute(2, 3, 0, 1)


def conv_adjoint(A: Tensor, weight: Tensor, stride, padding, dilation, groups: int, in_hw: tuple[int, int]) -> Tensor:
    """Aᵀ through a (bias-free) 2-D convolution: (B, S, C_out, H', W') -> (B, S, C_in, H, W).

    The transpose convolution, with ``output_padding`` chosen so that the result has the input's
    spatial size (a strided convolution drops trailing rows that no window covers). Where the
    padding allows (``d·(k−1) ≥ p``) it is computed as the ordinary convolution with the flipped,
    in/out-swapped kernel and padding ``d·(k−1)−p`` over A with s−1 zeros inserted between its
    pixels (stride s > 1; none at stride 1): the same sums. On the CPU that is faster than
    ``conv_transpose2d`` on the B·S-example maps of a CROWN pass: 1.3-6x in float64 at stride 1,
    and in float32 in channels-last layout, where oneDNN runs it, 2-9x at stride 1 and 2-20x at
    stride 2 (benchmarks/README.md, "The optimizations" 13). Float64 stays NCHW
    (channels-last is 2x slower there) and at stride 2 in ``conv_transpose2d``."""
    b, s = A.shape[:2]
    a = A.reshape(b * s, *A.shape[2:])
    if float64_depthwise(a, weight, groups):
        r = depthwise_taps(a, weight, stride, padding, dilation, in_hw, adjoint=True)
        return r.reshape(b, s, *r.shape[1:])
    stride, padding, dilation = as_pair(stride), as_pair(padding), as_pair(dilation)
    k = weight.shape[-2:]
    out_pad = [
        in_hw[d] - ((a.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (k[d] - 1) + 1) for d in range(2)
    ]
    flipped_pad = tuple(dilation[d] * (k[d] - 1) - padding[d] for d in range(2))
    cpu32 = a.device.type == "cpu" and a.dtype == torch.float32
    if a.device.type == "cpu":
        a = a.contiguous(memory_format=torch.channels_last if cpu32 else torch.contiguous_format)
    if min(flipped_pad) >= 0 and (stride == (1, 1) or cpu32):
        if stride != (1, 1):  # zeros between the pixels, and output_padding's at the end
            size = [(a.shape[2 + d] - 1) * stride[d] + 1 + out_pad[d] for d in range(2)]
            up = a.new_zeros(a.shape[0], *size, a.shape[1]).permute(0, 3, 1, 2)  # channels-last
            up[:, :, :: stride[0], :: stride[1]] = a
            a = up
        r = F.conv2d(a, _adjoint_kernel(weight, groups), None, 1, flipped_pad, dilation, groups)
    else:
        r = F.conv_transpose2d(a, weight, None, stride, padding, tuple(out_pad), groups, dilation)
    return r.reshape(b, s, *r.shape[1:])


def _adjoint_kernel(weight: Tensor, groups: int) -> Tensor:
    """The kernel of a stride-1 convolution's adjoint: (C_out, C_in/g, kh, kw) ->
    (C_in, C_out/g, kh, kw), swapped within each group and flipped in space."""
    c_out, c_in_g, kh, kw = weight.shape
    w = weight.view(groups, c_out // groups, c_in_g, kh, kw).transpose(1, 2)
    return w.reshape(groups * c_in_g, c_out // groups, kh, kw).flip(-1, -2)


def split3(z: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(clean value, lower, upper) of a stacked tensor ``cat([x, l, u])``: views, whose backward
    stacks the three gradients into one tensor (three slices would each zero-fill a tensor of
    the whole stack's size and add them up)."""
    x, lo, up = z.unflatten(0, (3, n)).unbind(0)
    return x, lo, up


class Op:
    """One node's operation (see the module docstring for the three semantics)."""

    monotone = False  # True: non-decreasing and per example, so ibp(zs, n) = forward(zs)

    def forward(self, xs: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def ibp(self, zs: list[Tensor], n: int) -> Tensor:
        if self.monotone:
            return self.forward(zs)
        raise NotImplementedError

    def crown(self, A: Tensor, boxes: list[Box], xs: list[Tensor]) -> tuple[list[Tensor | None], Tensor | None]:
        raise NotImplementedError

    def forward_again(self, xs: list[Tensor]) -> Tensor:
        """The op at other inputs, with whatever it takes from the batch as in its last
        ``forward`` (:meth:`Graph.forward_fixed_stats`). Every op but training-mode batch norm
        acts per example, so this is ``forward``; :class:`BatchNorm` keeps the clean batch's
        statistics."""
        return self.forward(xs)

    def __repr__(self) -> str:
        return type(self).__name__


class InputOp(Op):
    """The network input x ∈ [0, 1]; its box is the threat set (given by the caller)."""


class LinearOp(Op):
    """An affine map f(x) = L x + b. IBP in centre/radius form (Gowal et al. 2018):
    c' = L c + b, r' = |L| r, which is exact for a single affine layer."""

    def apply(self, x: Tensor) -> Tensor:  # L x + b
        raise NotImplementedError

    def apply_abs(self, r: Tensor) -> Tensor:  # |L| r (no bias)
        raise NotImplementedError

    def forward(self, xs):
        return self.apply(xs[0])

    def ibp(self, zs, n):
        if self.monotone:
            return self.forward(zs)
        x, lo, up = split3(zs[0], n)
        out = self.apply(torch.cat([x, (up + lo) / 2]))  # clean value and centre in one call
        r = self.apply_abs((up - lo) / 2)
        x, c = out.unflatten(0, (2, n)).unbind(0)
        return torch.cat([x, c - r, c + r])


class ChannelAffine(LinearOp):
    """y = x · scale[c] + shift[c] per channel (``Normalize``: scale 1/std, shift −mean/std)."""

    def __init__(self, scale: Tensor, shift: Tensor):
        self.scale, self.shift = scale.reshape(-1), shift.reshape(-1)

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return cast(self.scale, x), cast(self.shift, x)

    def apply(self, x):
        scale, shift = self._params(x)
        return x * self._view(scale, x.dim()) + self._view(shift, x.dim())

    @staticmethod
    def _view(v: Tensor, ndim: int) -> Tensor:
        return v.view(1, -1, *([1] * (ndim - 2)))

    def ibp(self, zs, n):
        scale, shift = self._params(zs[0][:n])
        z = self.apply(zs[0])  # affine per channel: the box ends may swap where scale < 0
        x, lo, up = split3(z, n)
        return torch.cat([x, torch.minimum(lo, up), torch.maximum(lo, up)])

    def crown(self, A, boxes, xs):
        scale, shift = self._params(xs[0])
        view = (1, 1, -1, *([1] * (A.dim() - 3)))
        bias = (A.flatten(3).sum(-1) * shift).sum(-1) if A.dim() > 3 else (A * shift).sum(-1)
        return [A * scale.view(view)], bias


class Normalize(ChannelAffine):
    """``rnas.models.normalize.Normalize``, (x − mean) / std per channel: scale 1/std and shift
    −mean/std, computed from the module's buffers in the propagated dtype (not in the model's)."""

    def __init__(self, mean: Tensor, std: Tensor):
        self.mean, self.std = mean.reshape(-1), std.reshape(-1)

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        std = cast(self.std, x)
        return 1.0 / std, -cast(self.mean, x) / std


class BatchNorm(ChannelAffine):
    """``nn.BatchNorm2d`` as the per-channel affine map it is for a fixed set of statistics:
    scale = γ / sqrt(σ² + eps), shift = β − μ · scale.

    The statistics follow the module's mode: in eval mode (and whenever it keeps no running
    statistics' alternative) the running mean/var; in training mode the mean and (biased)
    variance of the *clean* batch's activation at this layer, computed in the point pass and
    held fixed over the perturbation set. The bound then certifies the network whose BN layers
    are frozen at those statistics — exactly the function a training-mode forward computes on
    the clean batch. Gradients flow through the statistics as in a training-mode forward."""

    def __init__(self, module: nn.BatchNorm2d):
        self.m = module
        self._cache: tuple[Tensor, Tensor] | None = None

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._cache is not None:
            return self._cache
        m = self.m
        use_batch = m.training or m.running_mean is None
        if use_batch:
            var, mean = batch_var_mean(x)
        else:  # float32 buffers of a float32 model: cast before rsqrt, so it runs in x's dtype
            mean, var = cast(m.running_mean, x), cast(m.running_var, x)
        scale = torch.rsqrt(var + m.eps)
        if m.weight is not None:
            scale = scale * cast(m.weight, x)
        shift = -mean * scale
        if m.bias is not None:
            shift = shift + cast(m.bias, x)
        self._cache = (scale, shift)  # a graph serves one batch (see the module docstring)
        return self._cache

    def forward(self, xs):
        self._cache = None  # statistics of this batch's clean values
        return self.apply(xs[0])

    def forward_again(self, xs):
        return self.apply(xs[0])  # the statistics of the last forward's (clean) input

    def ibp(self, zs, n):
        self._cache = None  # statistics of the clean rows only
        if self.m.weight is None:  # scale 1/σ > 0: monotone, the stack maps in one affine op
            self._params(zs[0][:n])
            return self.apply(zs[0])
        return super().ibp(zs, n)


def _conv_kind(m, weight: Tensor, c_in: int) -> str:
    """``depthwise`` (one odd square filter per channel, "same" padding d·(k−1)/2),
    ``pointwise`` (1x1, stride 1, no padding, any groups) or ``conv``."""
    if tuple(weight.shape[-2:]) == (1, 1) and as_pair(m.stride) == (1, 1) and as_pair(m.padding) == (0, 0):
        return "pointwise"
    if is_same_depthwise(weight, m.stride, m.padding, m.dilation, m.groups, c_in):
        return "depthwise"
    return "conv"


class Conv(LinearOp):
    """``nn.Conv2d`` (zero padding; any stride, dilation, groups; optional bias)."""

    def __init__(self, module: nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise UnsupportedModelError(f"Conv2d with padding {module.padding!r} / mode {module.padding_mode!r}")
        self.m = module

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        m = self.m
        kind = _conv_kind(m, weight, x.shape[1])
        if float64_depthwise(x, weight, m.groups):
            y = depthwise_taps(x, weight, m.stride, m.padding, m.dilation)
            return y if bias is None else y + bias.view(-1, 1, 1)
        if kind == "depthwise":
            return depthwise(x, weight, as_pair(m.stride)[0], as_pair(m.dilation)[0], bias, own_backward=False)
        if kind == "pointwise":
            return grouped_pointwise(x, weight, m.groups, bias)
        return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)

    def apply(self, x):
        return self._conv(x, cast(self.m.weight, x), cast(self.m.bias, x))

    def apply_abs(self, r):
        return self._conv(r, cast(self.m.weight, r).abs(), None)

    def crown(self, A, boxes, xs):
        m = self.m
        a_in = conv_adjoint(A, cast(m.weight, A), m.stride, m.padding, m.dilation, m.groups, tuple(xs[0].shape[-2:]))
        bias = None if m.bias is None else (A.flatten(3).sum(-1) * cast(m.bias, A)).sum(-1)
        return [a_in], bias


class Linear(LinearOp):
    """``nn.Linear`` on (B, F)."""

    def __init__(self, module: nn.Linear):
        self.m = module

    def apply(self, x):
        return F.linear(x, cast(self.m.weight, x), cast(self.m.bias, x))

    def apply_abs(self, r):
        return F.linear(r, cast(self.m.weight, r).abs())

    def crown(self, A, boxes, xs):  # A: (B, S, out)
        bias = None if self.m.bias is None else A @ cast(self.m.bias, A)
        return [A @ cast(self.m.weight, A)], bias


class GlobalAvgPool(LinearOp):
    """(B, C, H, W) -> (B, C): the mean over space (``AdaptiveAvgPool2d(1)`` + flatten)."""

    monotone = True

    def apply(self, x):
        return x.mean(dim=(2, 3))

    apply_abs = apply

    def crown(self, A, boxes, xs):  # A: (B, S, C)
        h, w = xs[0].shape[-2:]
        return [(A / (h * w))[..., None, None].expand(*A.shape, h, w)], None


class AvgPool(LinearOp):
    """``nn.AvgPool2d`` (any ``count_include_pad``; ``ceil_mode`` off): a non-negative linear map
    avg(x) = sumpool(x) · m, with m the reciprocal window count of each output position."""

    monotone = True

    def __init__(self, module: nn.AvgPool2d):
        if module.ceil_mode:
            raise UnsupportedModelError("AvgPool2d with ceil_mode=True")
        self.m = module

    def apply(self, x):
        return self.m(x)

    apply_abs = apply

    def crown(self, A, boxes, xs):
        x = xs[0]
        k = as_pair(self.m.kernel_size)
        stride = as_pair(self.m.stride if self.m.stride is not None else self.m.kernel_size)
        pad = as_pair(self.m.padding)
        ones = torch.ones(1, 1, *x.shape[-2:], dtype=A.dtype, device=A.device)
        sums = F.avg_pool2d(ones, k, stride, pad, count_include_pad=True) * (k[0] * k[1])
        scale = self.m(ones) / sums  # (1, 1, H', W')
        c = x.shape[1]
        kernel = torch.ones(c, 1, *k, dtype=A.dtype, device=A.device)
        return [conv_adjoint(A * scale.unsqueeze(0), kernel, stride, pad, 1, c, tuple(x.shape[-2:]))], None


class Scale(LinearOp):
    """y = w · x with a scalar tensor w (a mixed-op weight softmax(α)_o, an edge weight).
    ``nonnegative=True`` (softmax weights) makes it monotone: the box is just w · [l, u]."""

    def __init__(self, w: Tensor, nonnegative: bool = False):
        self.w = w
        self.monotone = nonnegative

    def apply(self, x):
        return self.w * x

    def apply_abs(self, r):
        return self.w.abs() * r

    def ibp(self, zs, n):  # one multiply of the stack; the box ends swap if w < 0
        if self.monotone:
            return self.w * zs[0]
        z = self.w * zs[0]
        x, lo, up = split3(z, n)
        return torch.cat([x, torch.minimum(lo, up), torch.maximum(lo, up)])

    def crown(self, A, boxes, xs):
        return [A * self.w], None


class Zero(Op):
    """The ``none`` op: zeros of the (strided) input's shape; no dependence on the input."""

    monotone = True

    def __init__(self, stride: int):
        self.stride = stride

    def forward(self, xs):
        x = xs[0]
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.zeros_like(x)

    def crown(self, A, boxes, xs):
        return [None], None


class Add(Op):
    """Sum of the inputs (cell nodes, residual connections)."""

    monotone = True

    def forward(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    def crown(self, A, boxes, xs):
        return [A] * len(xs), None


class Concat(Op):
    """Concatenation along channels (cell outputs, factorized reduce, PC-DARTS)."""

    monotone = True

    def forward(self, xs):
        return torch.cat(xs, dim=1)

    def crown(self, A, boxes, xs):
        return list(torch.split(A, [x.shape[1] for x in xs], dim=2)), None


class RepeatChannels(Op):
    """(B, C, H, W) -> (B, n·C, H, W): n copies along the channels, block-major (the input of the
    n out-edges of one supernet state, computed together: :func:`rnas.bounds.builders._state_edges`)."""

    monotone = True

    def __init__(self, n: int):
        self.n = n

    def forward(self, xs):
        return torch.cat([xs[0]] * self.n, dim=1)

    def crown(self, A, boxes, xs):  # the sum of the n blocks' coefficients
        return [A.unflatten(2, (self.n, -1)).sum(2)], None


class ChannelRange(Op):
    """Channels ``start:stop`` (one edge's block of a grouped state's output)."""

    monotone = True

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def forward(self, xs):
        return xs[0][:, self.start : self.stop]

    def crown(self, A, boxes, xs):
        return [F.pad(A, (0, 0, 0, 0, self.start, xs[0].shape[1] - self.stop))], None


class ChannelScale(LinearOp):
    """y = x · s[c] with s ≥ 0 per channel (n edges' softmax weights of one op, each repeated over
    its edge's block of channels): monotone, so the box is s · [l, u]."""

    monotone = True

    def __init__(self, s: Tensor):
        self.s = s.reshape(-1)

    def apply(self, x):
        return x * cast(self.s, x).view(1, -1, *([1] * (x.dim() - 2)))

    apply_abs = apply

    def crown(self, A, boxes, xs):
        return [A * cast(self.s, A).view(1, 1, -1, *([1] * (A.dim() - 3)))], None


class SliceChannels(Op):
    """PC-DARTS' partial channels: the first C/K channels (``first``) or the remaining ones."""

    monotone = True

    def __init__(self, k: int, first: bool):
        self.k, self.first = k, first

    def _range(self, c: int) -> tuple[int, int]:
        part = c // self.k
        return (0, part) if self.first else (part, c)

    def forward(self, xs):
        start, stop = self._range(xs[0].shape[1])
        return xs[0][:, start:stop]

    def crown(self, A, boxes, xs):
        c = xs[0].shape[1]
        start, stop = self._range(c)
        return [F.pad(A, (0, 0, 0, 0, start, c - stop))], None


class Shift(Op):
    """FactorizedReduce's second path: y = pad(x[:, :, 1:, 1:], (0, 1, 0, 1))."""

    monotone = True

    def forward(self, xs):
        return F.pad(xs[0][:, :, 1:, 1:], (0, 1, 0, 1))

    def crown(self, A, boxes, xs):
        return [F.pad(A[..., :-1, :-1], (1, 0, 1, 0))], None


class ChannelShuffle(Op):
    """PC-DARTS' channel shuffle with ``groups`` groups (a permutation of channels)."""

    monotone = True

    def __init__(self, groups: int):
        self.g = groups

    def forward(self, xs):
        b, c, h, w = xs[0].shape
        return xs[0].view(b, self.g, c // self.g, h, w).transpose(1, 2).reshape(b, c, h, w)

    def crown(self, A, boxes, xs):  # the inverse permutation
        b, s, c, h, w = A.shape
        return [A.reshape(b, s, c // self.g, self.g, h, w).transpose(2, 3).reshape(b, s, c, h, w)], None


class ReLU(Op):
    """ReLU. IBP: (relu(l), relu(u)). CROWN relaxation of an unstable neuron (l < 0 < u):
    upper line u/(u−l) · (z − l); lower line z if u ≥ −l else 0 (CROWN's adaptive lower slope,
    Zhang et al. 2018); stable neurons are exact (identity or zero)."""

    monotone = True

    def forward(self, xs):
        return torch.relu(xs[0])

    @staticmethod
    def relaxation(lo: Tensor, up: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(lower slope, upper slope, upper intercept) per neuron."""
        active, inactive = lo >= 0, up <= 0
        unstable = ~(active | inactive)
        one, zero = torch.ones_like(lo), torch.zeros_like(lo)
        width = torch.where(unstable, up - lo, one)
        upper_slope = torch.where(active, one, torch.where(unstable, up / width, zero))
        upper_bias = torch.where(unstable, -lo * upper_slope, zero)
        lower_slope = torch.where(active | (unstable & (up >= -lo)), one, zero)
        return lower_slope, upper_slope, upper_bias

    def crown(self, A, boxes, xs):
        sl, su, bu = (t.unsqueeze(1) for t in self.relaxation(*boxes[0]))
        a_pos, a_neg = _pos_neg(A)
        return [a_pos * sl + a_neg * su], _sum_spec(a_neg * bu)


class MaxPool(Op):
    """``nn.MaxPool2d``. IBP: (maxpool(l), maxpool(u)) — max is monotone. CROWN: per output, the
    window element j* with the largest lower bound gives a linear lower bound (max ≥ x_j*), and
    the window's largest upper bound a constant upper bound (max ≤ max_j u_j); sound, exact when
    the box is a point (the DeepPoly-style relaxation of max, Singh et al. 2019, simplified)."""

    monotone = True

    def __init__(self, module: nn.MaxPool2d):
        if module.return_indices:
            raise UnsupportedModelError("MaxPool2d with return_indices=True")
        self.m = module

    def _pool(self, x: Tensor, indices: bool = False):
        m = self.m
        return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, indices)

    def forward(self, xs):
        return self._pool(xs[0])

    def crown(self, A, boxes, xs):
        lo, up = boxes[0]
        _, idx = self._pool(lo, indices=True)  # (B, C, H', W'), flat indices into H*W
        upper = self._pool(up)
        a_pos, a_neg = _pos_neg(A)
        b, s, c = A.shape[:3]
        h, w = lo.shape[-2:]
        flat = idx.flatten(2).unsqueeze(1).expand(b, s, c, -1)
        a_in = torch.zeros(b, s, c, h * w, dtype=A.dtype, device=A.device)
        a_in = a_in.scatter_add(3, flat, a_pos.flatten(3))
        return [a_in.view(b, s, c, h, w)], _sum_spec(a_neg * upper.unsqueeze(1))


@dataclass
class Node:
    op: Op
    inputs: tuple[int, ...] = ()


@dataclass
class Graph:
    """Nodes in topological order; node 0 is the input, the last node the logits."""

    nodes: list[Node] = field(default_factory=list)
    _relu_of: dict[int, int] = field(default_factory=dict, repr=False)
    _last: int = -1
    #: the dtype the bounds will be propagated in (None: the model's); builders that compute
    #: weights of their own (the supernet's softmax(α)) compute them in it
    dtype: torch.dtype | None = None

    def add(self, op: Op, *inputs: int) -> int:
        """Append ``op`` on the given nodes; returns its node. A ReLU of a node that already has
        one is that node (every op of every edge leaving a cell state starts with the same ReLU)."""
        for i in inputs:
            if not 0 <= i < len(self.nodes):
                raise ValueError(f"node input {i} does not exist yet")
        if isinstance(op, ReLU) and inputs[0] in self._relu_of:
            self._last = self._relu_of[inputs[0]]
            return self._last
        self.nodes.append(Node(op, tuple(inputs)))
        self._last = len(self.nodes) - 1
        if isinstance(op, ReLU):
            self._relu_of[inputs[0]] = self._last
        return self._last

    @property
    def output(self) -> int:
        """The node added last (the logits once the network is built)."""
        return self._last

    def forward(self, x: Tensor, box: Box | None = None) -> tuple[list[Tensor], list[Box] | None]:
        """The point pass on ``x`` and, if ``box`` (the input set's box) is given, the IBP pass.

        Returns (clean values of every node, boxes of every node or None)."""
        if box is None:
            points: list[Tensor] = []
            for node in self.nodes:
                points.append(x if isinstance(node.op, InputOp) else node.op.forward([points[j] for j in node.inputs]))
            return points, None
        n = x.shape[0]
        stacks: list[Tensor] = []
        for node in self.nodes:
            if isinstance(node.op, InputOp):
                stacks.append(torch.cat([x, box[0], box[1]]))
            else:
                stacks.append(node.op.ibp([stacks[j] for j in node.inputs], n))
        return unstack(stacks, n)

    def forward_fixed_stats(self, x: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """The logits at the clean batch ``x`` (B, ...) and at ``points`` (any number of rows of
        the same shape), every training-mode BN layer normalizing both with the statistics of the
        *clean* batch's activation at that layer, held fixed as in the IBP pass (eval-mode BN uses
        the running statistics as always). So row i of the second result depends on points[i]
        alone (and on x only through the statistics), and its input gradient is per example. The
        point pass and the pass at ``points`` (:meth:`Op.forward_again`) run node by node; the
        running statistics are left alone. Returns (logits at x (B, K), logits at points)."""
        clean: list[Tensor] = []
        other: list[Tensor] = []
        for node in self.nodes:
            if isinstance(node.op, InputOp):
                clean.append(x)
                other.append(points)
            else:
                clean.append(node.op.forward([clean[j] for j in node.inputs]))
                other.append(node.op.forward_again([other[j] for j in node.inputs]))
        return clean[self.output], other[self.output]

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)[0][-1]


def unstack(stacks: list[Tensor], n: int) -> tuple[list[Tensor], list[Box]]:
    """Per-node (clean values, boxes) from stacked tensors (views, no copies)."""
    parts = [split3(z, n) for z in stacks]
    return [p[0] for p in parts], [(p[1], p[2]) for p in parts]
