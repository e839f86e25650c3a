"""Public robust teachers: WRN state dicts in the RobustBench / robust-overfitting layout.

The robust WRN-34-10 checkpoints researchers already have (Rice et al. 2020, "Overfitting in
adversarially robust deep learning", github.com/locuslab/robust_overfitting; the WideResNet of
RobustBench's model zoo; RNAS-CL's teacher loader reads the same files) are bare state dicts of
one WideResNet layout:

    conv1.weight
    block{g}.layer.{i}.bn1.*, .conv1.weight, .bn2.*, .conv2.weight, [.convShortcut.weight]
    bn1.*                      (the BN before pooling)
    fc.weight, fc.bias

often saved from ``nn.DataParallel`` (every key prefixed ``module.``), sometimes nested under
``state_dict`` / ``model_state_dict`` / ``model``, and in RobustBench with an unused
``sub_block1.*`` group. The network is the same pre-activation WRN as
:class:`rnas.models.wide_resnet.WideResNet` (which follows that implementation), so the weights
map one to one (:func:`map_wrn_keys`): ``block{g}.layer.{i}.`` -> ``block{g}.{i}.``,
``convShortcut`` -> ``conv_shortcut``, the final ``bn1`` -> ``bn``. Depth, widen factor, classes and
input channels are read from the tensor shapes.

Normalization: such a file does not say what its network expects. ``pipeline.teacher_normalization``
does: ``dataset`` (the dataset's mean/std, as robust-overfitting trains) or ``none`` (raw [0, 1]
inputs, as most RobustBench models); a mean/std stored in the file (``mu``/``sigma`` or
``mean``/``std``) wins. It becomes the model's first layer, as for every model of this project.

A file that does not fit is refused with a :class:`rnas.checkpoint.CheckpointError` naming the
first keys that do not fit (unexpected, missing, or of the wrong shape).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnas.checkpoint import CheckpointError, build_model as build_checkpoint_model, load_checked
from rnas.models import Normalize, NormalizedModel, WideResNet
from rnas.models.normalize import normalization_for

__all__ = ["file_key", "load_teacher", "load_teacher_file", "map_wrn_keys", "wrn_from_state_dict"]

#: Containers a checkpoint may nest its state dict in, tried in this order.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: Keys of a normalization stored beside the weights: (mean, std) names.
NORM_KEYS = (("mu", "sigma"), ("mean", "std"), ("normalize.mean", "normalize.std"))
SHOWN = 5  # how many offending keys an error names

_BLOCK = re.compile(r"^block([123])\.layer\.(\d+)\.(.+)$")


def _tensor_dict(obj: Any) -> dict[str, Tensor] | None:
    """The state dict inside ``obj``: ``obj`` itself when its values are tensors, else a nested one."""
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, dict):
        for key in NESTED_KEYS:
            if key in obj:
                found = _tensor_dict(obj[key])
                if found is not None:
                    return found
    return None


def _strip_module(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``nn.DataParallel``'s ``module.`` prefix (from every key, or from none)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def map_wrn_keys(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """RobustBench / robust-overfitting WRN keys -> :class:`WideResNet` keys.

    Returns the renamed state dict and, for error messages, new name -> original name. Keys of
    RobustBench's unused ``sub_block1`` and of a stored normalization are dropped; other keys keep
    their names (and are reported as unexpected if the network has no place for them)."""
    norm_names = {name for pair in NORM_KEYS for name in pair}
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        if key.startswith("sub_block1.") or key in norm_names:
            continue
        new = key
        m = _BLOCK.match(key)
        if m:
            new = f"block{m[1]}.{m[2]}.{m[3]}"
        new = new.replace("convShortcut.", "conv_shortcut.")
        if new.startswith("bn1."):  # the top-level BN before pooling (blocks' bn1 carry a block prefix)
            new = "bn." + new[len("bn1.") :]
        out[new] = value
        origin[new] = key
    return out, origin


_OURS = re.compile(r"^block([123])\.(\d+)\.(.+)$")


def file_key(key: str) -> str:
    """The inverse of :func:`map_wrn_keys` for one key: a :class:`WideResNet` key in the file's layout."""
    m = _OURS.match(key)
    if m:
        key = f"block{m[1]}.layer.{m[2]}.{m[3]}"
    key = key.replace("conv_shortcut.", "convShortcut.")
    return "bn1." + key[len("bn.") :] if key.startswith("bn.") else key


def _stored_normalization(state: dict[str, Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    for mean_key, std_key in NORM_KEYS:
        if mean_key in state and std_key in state:
            return (
                tuple(float(v) for v in state[mean_key].flatten()),
                tuple(float(v) for v in state[std_key].flatten()),
            )
    return None


def _shape_of(state: dict[str, Tensor], key: str, where: str) -> torch.Size:
    if key not in state:
        first = ", ".join(list(state)[:SHOWN])
        raise CheckpointError(
            f"{where}: not a WideResNet state dict in the RobustBench / robust-overfitting layout "
            f"(no {key!r}; its first keys: {first})"
        )
    return state[key].shape


def wrn_from_state_dict(
    state: dict[str, Tensor], dataset: str, normalization: str = "dataset", where: str = "state dict"
) -> NormalizedModel:
    """A :class:`NormalizedModel` around a :class:`WideResNet` holding the weights of a
    RobustBench / robust-overfitting state dict (``module.`` prefix or not); see the module docstring.

    Raises:
        CheckpointError: the keys or shapes do not fit a WideResNet (the message names the first
            offending keys by their names in the file).
    """
    raw = _strip_module(state)
    prefix = "module." if raw is not state and state else ""  # errors name keys as the file spells them
    mapped, origin = map_wrn_keys(raw)
    input_channels = _shape_of(mapped, "conv1.weight", where)[1]
    widen = _shape_of(mapped, "block1.0.conv1.weight", where)[0] // 16
    num_classes = _shape_of(mapped, "fc.weight", where)[0]
    blocks = {int(k.split(".")[1]) for k in mapped if k.startswith("block1.")}
    depth = 6 * len(blocks) + 4
    try:
        net = WideResNet(num_classes, input_channels, depth=depth, widen_factor=max(1, widen))
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from None
    target = net.state_dict()
    unexpected = [prefix + origin[k] for k in mapped if k not in target]
    missing = [prefix + file_key(k) for k in target if k not in mapped]
    wrong = [
        f"{prefix}{origin[k]} {tuple(mapped[k].shape)} (WRN-{depth}-{widen} needs {tuple(target[k].shape)})"
        for k in mapped
        if k in target and mapped[k].shape != target[k].shape
    ]
    if unexpected or missing or wrong:
        parts = []
        if unexpected:
            parts.append(
                f"keys with no place in WRN-{depth}-{widen}: {', '.join(unexpected[:SHOWN])}"
                + (f" (+{len(unexpected) - SHOWN} more)" if len(unexpected) > SHOWN else "")
            )
        if missing:
            parts.append(
                f"missing in the file: {', '.join(missing[:SHOWN])}"
                + (f" (+{len(missing) - SHOWN} more)" if len(missing) > SHOWN else "")
            )
        if wrong:
            parts.append(f"wrong shapes: {', '.join(wrong[:SHOWN])}")
        raise CheckpointError(
            f"{where}: does not fit the RobustBench / robust-overfitting WideResNet layout; " + "; ".join(parts)
        )
    net.load_state_dict(mapped)
    stored = _stored_normalization(raw)
    if stored is not None:
        mean, std = stored
    elif normalization == "dataset":
        mean, std = normalization_for(dataset)
    elif normalization == "none":
        mean, std = (0.0,) * input_channels, (1.0,) * input_channels
    else:
        raise ValueError(f"unknown teacher normalization {normalization!r}; known: dataset, none")
    if len(mean) != input_channels:
        raise CheckpointError(f"{where}: a {len(mean)}-channel normalization for a {input_channels}-channel network")
    model = NormalizedModel(Normalize(mean, std), net)
    # Informative only: a foreign teacher is loaded from its file every time, never rebuilt from these.
    model.model_args = {
        "source": "wrn_state_dict",
        "depth": depth,
        "widen_factor": widen,
        "num_classes": int(num_classes),
        "input_channels": int(input_channels),
        "mean": list(mean),
        "std": list(std),
    }
    return model


def load_teacher_file(
    path: str | Path,
    dataset: str,
    num_classes: int,
    input_channels: int,
    normalization: str = "dataset",
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The teacher in ``path``, in eval mode on ``device``: a checkpoint of this project (with
    ``model_args``) or a foreign WRN state dict (:func:`wrn_from_state_dict`), checked against the
    dataset's classes and input channels."""
    obj = load_checked(path)
    if "model_args" in obj and "state_dict" in obj:
        model = build_checkpoint_model(obj["model_args"])
        try:
            model.load_state_dict(obj["state_dict"])
        except RuntimeError as err:
            raise CheckpointError(
                f"{path}: weights do not fit the stored model_args ({str(err).splitlines()[0]})"
            ) from err
    else:
        state = _tensor_dict(obj)
        if state is None:
            raise CheckpointError(
                f"{path}: neither a checkpoint of this project (model_args + state_dict) nor a "
                f"state dict of tensors (top-level keys: {', '.join(map(str, list(obj)[:SHOWN]))})"
            )
        model = wrn_from_state_dict(state, dataset, normalization, where=str(path))
        args = model.model_args
        if (args["num_classes"], args["input_channels"]) != (num_classes, input_channels):
            raise CheckpointError(
                f"{path}: a teacher for {args['num_classes']} classes and {args['input_channels']} "
                f"input channels; {dataset} has {num_classes} and {input_channels}"
            )
    return model.to(device).eval()


def load_teacher(params: Any, info: Any, device: torch.device | str) -> nn.Module:
    """The teacher the distillation runs read (``rnas.paths.distill_teacher``: ``pipeline.teacher_checkpoint``
    or the teacher stage's model), for the dataset of ``info`` (:class:`rnas.data.DatasetInfo`)."""
    from rnas import paths

    return load_teacher_file(
        paths.distill_teacher(params),
        info.name,
        info.num_classes,
        info.input_channels,
        params.pipeline.teacher_normalization,
        device,
    )
