"""RNAS-CL's width space: FBNetV2-style channel search over inverted-residual blocks.

Network (docs/methods/rnas_cl.md): ``Normalize`` -> stem (3x3 conv-bn-ReLU, fixed width) -> stages of
inverted-residual blocks (MobileNetV2, Sandler et al. 2018) -> global average pool -> linear.
A block with output width C_out, expansion e, kernel k and stride s is

    expand    1x1 conv  C_in -> e·C_out,   BN, ReLU
    depthwise k x k conv (stride s) on e·C_out channels, BN, ReLU
    project   1x1 conv  e·C_out -> C_out, BN (linear)
    (+ identity when s = 1 and the stage keeps its maximum width)

Each block chooses its width from ``width_options`` values ``C_max − i·step`` (i = 0..n−1,
step = ``width_step``·C_max). FBNetV2 (Wan et al. 2020) relaxes the choice with channel masks:
with Gumbel-softmax weights g over the options, the output mask is

    m_c = Σ_i g_i · 1[c < w_i]        (c = 0..C_max−1),

the hidden mask is the same with e·w_i, and the effective width is Σ_i g_i·w_i. Every
conv-bn-act unit (:class:`ConvBNAct`) multiplies its output by its mask, so a hard one-hot g
is exactly the smaller network (BN and the depthwise conv act per channel; zero input channels
add nothing to a 1x1 conv) and g on the full-width option is exactly the unmasked supernet.

Cost (multiply-adds of one example, the ``count_macs`` convention):

    stem:  H·W·C_in·C_stem·3²
    block: H_in·W_in·C_in·(e·C_out)  +  H_out·W_out·k²·(e·C_out)  +  H_out·W_out·(e·C_out)·C_out
    head:  C_last·classes

with C_in, C_out the effective widths; with s = 1 the block term is
H·W·(C_in·C_out·e + k²·(C_out·e) + C_out²·e). With a one-hot g it equals ``count_macs`` of the
final :class:`WidthNetwork` exactly.

The final network (:class:`WidthNetwork`) is rebuilt from plain ``model_args``
(``{"kind": "width", ...}``), stored in checkpoints and in ``architecture.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rnas.models.normalize import Normalize
from rnas.space.genotype import GenotypeError
from rnas.space.gumbel import gumbel_softmax, one_hot_argmax
from rnas.space.network import cell_normalization
from rnas.space.ops import conv2d
from rnas.space.widths import width_choices

STEM_KERNEL = 3  # the stem is a 3x3 conv at stride 1, as in the DARTS networks


class WidthArchitectureError(GenotypeError):
    """A width-space architecture file or object breaks the schema."""


def conv_out_size(size: int, kernel: int, stride: int) -> int:
    """Output side of a conv with padding kernel // 2 (pixels)."""
    pad = kernel // 2
    return (size + 2 * pad - kernel) // stride + 1


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Truncate or zero-pad x's channels to ``channels`` (the identity path of a width block)."""
    c = x.shape[1]
    if c == channels:
        return x
    if c > channels:
        return x[:, :channels]
    return F.pad(x, (0, 0, 0, 0, 0, channels - c))


class ConvBNAct(nn.Module):
    """Conv -> BN -> ReLU (or no activation for the linear projection) -> optional channel mask.

    The conv-bn-act unit: RNAS-CL's student layers in the width space are exactly these
    modules (their forward output, after the mask, is what the attention maps are taken of).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=False) if act else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.act(self.bn(self.conv(x)))  # (B, C_out, H', W')
        if mask is not None:  # mask: (C_out,)
            out = out * mask.view(1, -1, 1, 1)
        return out


class WidthSearchBlock(nn.Module):
    """Inverted-residual block at its maximum width, masked to the sampled width. ``n_options`` pads the
    options to the supernet's largest count (padding rows keep every channel off; their weight is 0)."""

    def __init__(
        self,
        c_in_max: int,
        c_max: int,
        stride: int,
        expansion: int,
        kernel: int,
        widths: tuple[int, ...],
        n_options: int | None = None,
    ):
        super().__init__()
        hidden = expansion * c_max
        self.widths = tuple(widths)
        widths = tuple(widths) + (0,) * ((n_options or len(widths)) - len(widths))
        self.expand = ConvBNAct(c_in_max, hidden, 1)
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride=stride, groups=hidden)
        self.project = ConvBNAct(hidden, c_max, 1, act=False)
        self.residual = stride == 1 and c_in_max == c_max
        channel = torch.arange(c_max)
        hidden_channel = torch.arange(hidden)
        # (n_options, C_max) and (n_options, e·C_max): 1 where channel c is inside option i's width.
        self.register_buffer("out_masks", (channel[None, :] < torch.tensor(widths)[:, None]).float())
        self.register_buffer(
            "hidden_masks", (hidden_channel[None, :] < expansion * torch.tensor(widths)[:, None]).float()
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:  # g: (n_options,) or None
        m_out = m_hidden = None
        if g is not None:
            m_out, m_hidden = g @ self.out_masks, g @ self.hidden_masks
        h = self.expand(x, m_hidden)
        h = self.depthwise(h, m_hidden)
        out = self.project(h, m_out)
        if self.residual:
            out = out + (x if m_out is None else x * m_out.view(1, -1, 1, 1))
        return out


WIDTH_MODES = ("auto", "sample", "soft", "argmax", "full", "none")


class WidthSupernet(nn.Module):
    """The width-space search network (FBNetV2 channel masks).

    ``width_logits`` (n_blocks, n_options) are the architecture parameters. ``width_mode``
    chooses the weights g of each forward:

    - ``auto``: ``sample`` in training mode, ``soft`` in eval mode (the default; the
      validation accuracy the search loop reports is that of the supernet as trained);
    - ``sample``: Gumbel-softmax at temperature ``tau`` with noise from ``generator``;
    - ``soft``: softmax(logits / τ), no noise;
    - ``argmax``: one-hot of the strongest option (the discrete architecture);
    - ``full``: one-hot on the full width (option 0);
    - ``none``: no masks at all (the unmasked supernet).

    The g of the last forward is kept in ``last_width_weights`` for :meth:`expected_cost`.
    """

    def __init__(
        self,
        num_classes: int,
        input_channels: int,
        dataset: str | None,
        image_size: int,
        stem_channels: int,
        stage_widths: tuple[int, ...],
        stage_blocks: tuple[int, ...],
        stage_strides: tuple[int, ...],
        expansion: int,
        kernel: int,
        width_options: int,
        width_step: float,
        width_step_channels: int = 0,
        stem_stride: int = 1,
        stage_width_options: tuple[int, ...] = (),
    ):
        super().__init__()
        if not len(stage_widths) == len(stage_blocks) == len(stage_strides):
            raise ValueError("stage_widths, stage_blocks and stage_strides need the same length")
        self.num_classes, self.input_channels, self.dataset = num_classes, input_channels, dataset
        self.image_size, self.stem_channels, self.stem_stride = image_size, stem_channels, stem_stride
        self.expansion, self.kernel = expansion, kernel
        self.normalize = Normalize(*cell_normalization(dataset, input_channels))
        self.stem = ConvBNAct(input_channels, stem_channels, STEM_KERNEL, stride=stem_stride)
        self.blocks = nn.ModuleList()
        self.strides: list[int] = []
        self.max_widths: list[int] = []
        self.options: list[tuple[int, ...]] = []
        if stage_width_options and len(stage_width_options) != len(stage_widths):
            raise ValueError("stage_width_options needs one count per stage")
        counts = tuple(stage_width_options) or (width_options,) * len(stage_widths)
        n_opt = max(counts)
        c_in = stem_channels
        for c_max, n_blocks, stride, count in zip(stage_widths, stage_blocks, stage_strides, counts):
            for b in range(n_blocks):
                s = stride if b == 0 else 1
                widths = width_choices(c_max, count, width_step, width_step_channels)
                self.blocks.append(WidthSearchBlock(c_in, c_max, s, expansion, kernel, widths, n_opt))
                self.strides.append(s)
                self.max_widths.append(c_max)
                self.options.append(widths)
                c_in = c_max
        self.classifier = nn.Linear(c_in, num_classes)
        # FBNet starts from a uniform choice: zero logits. Blocks with fewer options than the largest
        # count have their extra logits masked to −inf (:meth:`logits`): weight 0, never chosen.
        self.width_logits = nn.Parameter(torch.zeros(len(self.blocks), n_opt))
        padded = [list(o) + [0] * (n_opt - len(o)) for o in self.options]
        self.register_buffer("option_widths", torch.tensor(padded, dtype=torch.float32))  # (n_blocks, n_opt)
        self.register_buffer(
            "option_valid", torch.tensor([[i < len(o) for i in range(n_opt)] for o in self.options]), persistent=False
        )
        self.tau = 1.0
        self.generator: torch.Generator | None = None
        self.width_mode = "auto"
        self.last_width_weights: torch.Tensor | None = None
        # Spatial sides (pixels) at each block's input and output, for the cost.
        self.sizes: list[tuple[int, int]] = []
        size = conv_out_size(image_size, STEM_KERNEL, stem_stride)
        self.stem_size = size
        for s in self.strides:
            out = conv_out_size(size, kernel, s)
            self.sizes.append((size, out))
            size = out

    # -- parameter groups ----------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.width_logits]

    def weights(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p is not self.width_logits]

    def distill_layers(self) -> list[tuple[str, nn.Module]]:
        """RNAS-CL student layers: every conv-bn-act unit, in forward order."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, ConvBNAct)]

    # -- width weights -------------------------------------------------------------
    def logits(self) -> torch.Tensor:
        """``width_logits`` with the padding options of blocks with fewer choices at −inf (n_blocks, n_opt)."""
        if bool(self.option_valid.all()):
            return self.width_logits
        return self.width_logits.masked_fill(~self.option_valid, float("-inf"))

    def width_weights(self) -> torch.Tensor | None:
        """g for every block, (n_blocks, n_options), or None for ``width_mode = 'none'``."""
        mode = self.width_mode
        if mode not in WIDTH_MODES:
            raise ValueError(f"unknown width_mode {mode!r}; known: {', '.join(WIDTH_MODES)}")
        if mode == "auto":
            mode = "sample" if self.training else "soft"
        logits = self.logits()
        if mode == "sample":
            return gumbel_softmax(logits, self.tau, self.generator)
        if mode == "soft":
            return torch.softmax(logits / self.tau, dim=-1)
        if mode == "argmax":
            return one_hot_argmax(logits)
        if mode == "full":
            return F.one_hot(
                torch.zeros(len(self.blocks), dtype=torch.long, device=logits.device), logits.shape[-1]
            ).to(logits.dtype)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C_in, H, W) in [0, 1]
        g = self.width_weights()
        self.last_width_weights = g
        out = self.stem(self.normalize(x))
        for b, block in enumerate(self.blocks):
            out = block(out, None if g is None else g[b])
        return self.classifier(out.mean(dim=(2, 3)))  # (B, num_classes) logits

    # -- cost ----------------------------------------------------------------------
    def expected_cost(self, g: torch.Tensor | None = None) -> torch.Tensor:
        """Multiply-adds of one example with effective widths Σ_i g_i·w_i (differentiable in g).

        ``g`` defaults to the weights of the last forward; None there means full widths.
        """
        if g is None:
            g = self.last_width_weights
        if g is None:
            g = F.one_hot(torch.zeros(len(self.blocks), dtype=torch.long), self.width_logits.shape[-1]).float()
        g = g.to(self.option_widths.device)
        widths = (g * self.option_widths).sum(-1)  # (n_blocks,) effective widths
        e, k2 = self.expansion, self.kernel**2
        total = torch.zeros((), device=widths.device)
        total = total + self.stem_size**2 * self.input_channels * self.stem_channels * STEM_KERNEL**2
        c_in: torch.Tensor | float = float(self.stem_channels)
        for b, (size_in, size_out) in enumerate(self.sizes):
            c_out = widths[b]
            hidden = e * c_out
            total = total + size_in**2 * c_in * hidden + size_out**2 * k2 * hidden + size_out**2 * hidden * c_out
            c_in = c_out
        return total + c_in * self.num_classes

    def discrete_widths(self) -> list[int]:
        """Each block's argmax width (channels)."""
        index = self.logits().detach().argmax(-1).tolist()
        return [self.options[b][i] for b, i in enumerate(index)]

    # -- the final network ---------------------------------------------------------
    def final_model_args(self, widths: list[int]) -> dict[str, Any]:
        if len(widths) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} widths, got {len(widths)}")
        return {
            "kind": "width",
            "num_classes": self.num_classes,
            "input_channels": self.input_channels,
            "dataset": self.dataset,
            "stem_channels": self.stem_channels,
            "widths": [int(w) for w in widths],
            "strides": list(self.strides),
            "residual": [bool(b.residual) for b in self.blocks],
            "expansion": self.expansion,
            "kernel": self.kernel,
            **({"stem_stride": self.stem_stride} if self.stem_stride != 1 else {}),
        }

    @torch.no_grad()
    def export(self, widths: list[int]) -> WidthNetwork:
        """The final network at ``widths`` with the supernet's weights sliced into it.

        For a one-hot g on these widths the two compute the same function (tested)."""
        net = WidthNetwork(**{k: v for k, v in self.final_model_args(widths).items() if k != "kind"})
        net = net.to(self.width_logits.device)
        _copy_unit(self.stem, net.stem, self.stem_channels, self.input_channels)
        c_in = self.stem_channels
        for sb, fb, w in zip(self.blocks, net.blocks, widths):
            hidden = self.expansion * w
            _copy_unit(sb.expand, fb.expand, hidden, c_in)
            _copy_unit(sb.depthwise, fb.depthwise, hidden, 1)
            _copy_unit(sb.project, fb.project, w, hidden)
            c_in = w
        net.classifier.weight.copy_(self.classifier.weight[:, :c_in])
        net.classifier.bias.copy_(self.classifier.bias)
        return net


def _copy_unit(src: ConvBNAct, dst: ConvBNAct, c_out: int, c_in_per_group: int) -> None:
    dst.conv.weight.copy_(src.conv.weight[:c_out, :c_in_per_group])
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst.bn, name).copy_(getattr(src.bn, name)[:c_out])
    dst.bn.num_batches_tracked.copy_(src.bn.num_batches_tracked)


class WidthBlock(nn.Module):
    """The final inverted-residual block at its chosen width."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int, kernel: int, residual: bool):
        super().__init__()
        hidden = expansion * c_out
        self.c_out = c_out
        self.expand = ConvBNAct(c_in, hidden, 1)
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride=stride, groups=hidden)
        self.project = ConvBNAct(hidden, c_out, 1, act=False)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        if self.residual:  # identity, truncated or zero-padded to C_out (as the masks do in the supernet)
            out = out + match_channels(x, self.c_out)
        return out


class WidthNetwork(nn.Module):
    """Final network of the width space; ``model_args`` (kind ``width``) rebuild it."""

    def __init__(
        self,
        num_classes: int,
        input_channels: int,
        dataset: str | None,
        stem_channels: int,
        widths: list[int],
        strides: list[int],
        residual: list[bool],
        expansion: int,
        kernel: int,
        stem_stride: int = 1,
    ):
        super().__init__()
        if not len(widths) == len(strides) == len(residual):
            raise WidthArchitectureError("widths, strides and residual need one entry per block")
        if any(int(w) < 1 for w in widths):
            raise WidthArchitectureError(f"widths must be positive channel counts, got {widths}")
        self.model_args: dict[str, Any] = {
            "kind": "width",
            "num_classes": num_classes,
            "input_channels": input_channels,
            "dataset": dataset,
            "stem_channels": stem_channels,
            "widths": [int(w) for w in widths],
            "strides": [int(s) for s in strides],
            "residual": [bool(r) for r in residual],
            "expansion": expansion,
            "kernel": kernel,
            **({"stem_stride": int(stem_stride)} if stem_stride != 1 else {}),
        }
        self.normalize = Normalize(*cell_normalization(dataset, input_channels))
        self.stem = ConvBNAct(input_channels, stem_channels, STEM_KERNEL, stride=stem_stride)
        self.blocks = nn.ModuleList()
        c_in = stem_channels
        for w, s, r in zip(widths, strides, residual):
            self.blocks.append(WidthBlock(c_in, int(w), int(s), expansion, kernel, bool(r)))
            c_in = int(w)
        self.classifier = nn.Linear(c_in, num_classes)

    def distill_layers(self) -> list[tuple[str, nn.Module]]:
        """RNAS-CL student layers: every conv-bn-act unit, in forward order (same names as the supernet)."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, ConvBNAct)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C_in, H, W) in [0, 1]
        out = self.stem(self.normalize(x))
        for block in self.blocks:
            out = block(out)
        return self.classifier(out.mean(dim=(2, 3)))  # (B, num_classes) logits


# -- architecture.json ---------------------------------------------------------------

ARCH_KEYS = ("space", "widths", "tutors", "network")


def is_width_architecture(data: Any) -> bool:
    return isinstance(data, dict) and data.get("space") == "width"


def is_width_file(path: str | Path) -> bool:
    """True when ``path`` holds a width-space architecture (False for genotypes, unreadable or bad JSON,
    whose loaders then report the problem)."""
    try:
        return is_width_architecture(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError):
        return False


def validate_width_architecture(data: Any) -> dict[str, Any]:
    """Check a decoded ``architecture.json`` of the width space; returns it unchanged.

    Required: ``space`` = "width", ``widths`` (one positive int per block), ``tutors`` (one
    teacher-layer index per student layer, may be empty), ``network`` (WidthNetwork
    ``model_args`` whose widths equal ``widths``)."""
    if not is_width_architecture(data):
        raise WidthArchitectureError('a width-space architecture is a JSON object with "space": "width"')
    missing = [k for k in ARCH_KEYS if k not in data]
    if missing:
        raise WidthArchitectureError(f"architecture lacks keys {missing}")
    widths, tutors, network = data["widths"], data["tutors"], data["network"]
    if (
        not isinstance(widths, list)
        or not widths
        or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)
    ):
        raise WidthArchitectureError(f"widths: expected a non-empty list of positive integers, got {widths!r}")
    if not isinstance(tutors, list) or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in tutors):
        raise WidthArchitectureError(f"tutors: expected a list of teacher-layer indices, got {tutors!r}")
    if not isinstance(network, dict) or network.get("kind") != "width":
        raise WidthArchitectureError('network: expected WidthNetwork model_args with "kind": "width"')
    if network.get("widths") != widths:
        raise WidthArchitectureError(f"network.widths {network.get('widths')} differ from widths {widths}")
    return data


def load_width_architecture(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WidthArchitectureError(f"{path}: not valid JSON ({err})") from None
    try:
        return validate_width_architecture(data)
    except WidthArchitectureError as err:
        raise WidthArchitectureError(f"{path}: {err}") from None


def build_width_network(arch_or_args: dict[str, Any]) -> WidthNetwork:
    """The final network from an ``architecture.json`` dict or from ``model_args``."""
    args = arch_or_args["network"] if is_width_architecture(arch_or_args) else arch_or_args
    try:
        return WidthNetwork(**{k: v for k, v in args.items() if k != "kind"})
    except TypeError as err:
        raise WidthArchitectureError(f"network: arguments do not fit WidthNetwork ({err})") from None


def log_cost(cost: torch.Tensor) -> torch.Tensor:
    """log(MACs) for RNAS-CL's cost factor (β·log(MACs) or log(MACs)^β); MACs must exceed 1 so that
    the log is positive."""
    if float(cost.detach()) <= 1.0:
        raise ValueError(f"cost {float(cost.detach())} MACs is too small for the log(MACs) cost factor")
    return torch.log(cost)
