"""Model size and compute: trainable parameters and multiply-accumulates (MACs).

These are the ``params`` and ``macs`` entries of ``eval.json`` (docs/design.md §6).

MACs are counted for one forward pass of ONE example, by forward hooks on

* ``nn.Conv2d``: out_elements · (in_channels / groups) · k_h · k_w
  (out_elements = C_out · H_out · W_out, so stride, padding and dilation are accounted for);
* ``nn.Linear``: in_features · out_features per output row (one row for a flat input).

Not counted: biases, batch/layer normalization, pooling, activations, additions and
concatenations (e.g. DARTS' node sums), channel shuffles and masks -- all linear in the
activation size and small next to the convolutions, which is the usual convention for NAS
papers' "multiply-adds". A module applied several times in one forward is counted every time;
a module that is not called (e.g. an auxiliary head skipped in eval mode) is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["count_macs", "count_parameters"]


def count_parameters(model: nn.Module, exclude_prefixes: Sequence[str] = ("auxiliary",)) -> int:
    """Number of trainable parameter elements (``requires_grad``), each shared tensor once.

    Parameters whose qualified name (``model.named_parameters()``) starts with one of
    ``exclude_prefixes`` are left out: DARTS reports the final network without its auxiliary
    head, which only exists to help training.
    """
    prefixes = tuple(exclude_prefixes)
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and not (prefixes and name.startswith(prefixes))
    )


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass of a single ``(C, H, W)`` example.

    The forward runs on a zero tensor ``(1, C, H, W)`` on the model's device and dtype, under
    ``torch.no_grad()`` and in eval mode (so batch norm uses running statistics and updates
    none); every module's train/eval mode is restored afterwards. See the module docstring for
    what is and is not counted.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")

    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        rows = output.numel() // module.out_features  # 1 for a flat (1, in) input
        total += rows * module.in_features * module.out_features

    handles = []
    modes = [(m, m.training) for m in model.modules()]
    try:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                handles.append(module.register_forward_hook(conv_hook))
            elif isinstance(module, nn.Linear):
                handles.append(module.register_forward_hook(linear_hook))
        device, dtype = _model_device_dtype(model)
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    return int(total)
