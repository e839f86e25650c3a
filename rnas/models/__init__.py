"""Fixed model families (used for the robust teacher) and their registry.

Every model takes inputs in [0, 1] and returns logits; normalization is its first layer. A model
is rebuilt from plain JSON-able arguments (nanoGPT's ``model_args``)::

    model = build_model("preact_resnet18", num_classes=10, input_channels=3, dataset="cifar10", width=64)
    torch.save({"model_args": model.model_args, "state_dict": model.state_dict()}, path)
    ...
    model = build_model(**checkpoint["model_args"])
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from rnas.models.normalize import NORMALIZATION, Normalize, normalization_for
from rnas.models.preact_resnet import PreActResNet18
from rnas.models.small_cnn import SmallCNN
from rnas.models.wide_resnet import WideResNet

__all__ = [
    "MODEL_FAMILIES",
    "NORMALIZATION",
    "NormalizedModel",
    "Normalize",
    "PreActResNet18",
    "SmallCNN",
    "UnknownModelError",
    "WideResNet",
    "build_model",
]

#: Family name -> factory ``(num_classes, input_channels, **size_args) -> nn.Module`` (logits).
MODEL_FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "preact_resnet18": PreActResNet18,
    "wide_resnet": WideResNet,
}


class UnknownModelError(ValueError):
    """A model family that is not in :data:`MODEL_FAMILIES`."""


class NormalizedModel(nn.Module):
    """``net(normalize(x))``: inputs in [0, 1] (B, C, H, W) -> logits (B, num_classes).

    ``.net`` is the bare network (hooks that collect the teacher's conv outputs look there);
    ``.model_args`` (set by :func:`build_model`) are the JSON-able arguments that rebuild it.
    """

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.model_args: dict[str, Any] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def build_model(family: str, num_classes: int, input_channels: int, dataset: str, **kwargs: Any) -> NormalizedModel:
    """Build ``family`` with ``dataset``'s normalization as its first layer.

    Args:
        family: a key of :data:`MODEL_FAMILIES`.
        num_classes: number of logits.
        input_channels: C of the (B, C, H, W) inputs.
        dataset: key of :data:`NORMALIZATION` whose mean/std the model uses.
        **kwargs: the family's size arguments (``small_cnn``: width, depth, convs_per_stage;
            ``preact_resnet18``: width; ``wide_resnet``: depth, widen_factor, drop_rate). Plain JSON values.

    Returns:
        A :class:`NormalizedModel` whose ``model_args`` satisfy
        ``build_model(**model.model_args)`` == an identically shaped model.

    Raises:
        UnknownModelError: unknown family (the message lists the known ones).
        ValueError: unknown dataset, a normalization with the wrong number of channels, an
            argument the family does not take, or one that is not JSON-able.
    """
    try:
        factory = MODEL_FAMILIES[family]
    except KeyError:
        known = ", ".join(sorted(MODEL_FAMILIES))
        raise UnknownModelError(f"unknown model family {family!r}; known families: {known}") from None

    accepted = [p for p in inspect.signature(factory).parameters if p not in ("self", "num_classes", "input_channels")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"model family {family!r} takes no argument(s) {unknown}; it takes {accepted}")

    mean, std = normalization_for(dataset)
    if len(mean) != input_channels:
        raise ValueError(
            f"dataset {dataset!r} has {len(mean)}-channel normalization but input_channels={input_channels}"
        )

    model_args: dict[str, Any] = {
        "family": family,
        "num_classes": num_classes,
        "input_channels": input_channels,
        "dataset": dataset,
        **kwargs,
    }
    try:
        json.dumps(model_args)
    except TypeError as err:
        raise ValueError(f"model arguments must be plain JSON values: {err}") from err

    model = NormalizedModel(Normalize(mean, std), factory(num_classes, input_channels, **kwargs))
    model.model_args = model_args
    return model
