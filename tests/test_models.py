"""Tests of the fixed model families: logits of the right shape, a finite gradient reaching every
parameter, normalization inside the model, and a rebuild from JSON-able model_args."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rnas.models import (
    MODEL_FAMILIES,
    NORMALIZATION,
    Normalize,
    NormalizedModel,
    UnknownModelError,
    build_model,
)

# Tiny sizes: every family builds, runs forward and backward in well under a second.
TINY: dict[str, dict] = {
    "small_cnn": {"width": 8, "depth": 3},
    "preact_resnet18": {"width": 8},
    "wide_resnet": {"depth": 10, "widen_factor": 1},
}


def test_every_family_has_a_tiny_config() -> None:
    assert set(TINY) == set(MODEL_FAMILIES)


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize(("dataset", "channels"), [("cifar10", 3), ("mnist", 1)])
def test_forward_backward_every_parameter_gets_a_gradient(family: str, dataset: str, channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(family, num_classes=7, input_channels=channels, dataset=dataset, **TINY[family])
    model.train()
    x = torch.rand(2, channels, 16, 16)  # inputs in [0, 1]
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([1, 4])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("family", sorted(TINY))
def test_outputs_are_logits_and_eval_mode_is_deterministic(family: str) -> None:
    torch.manual_seed(0)
    model = build_model(family, 10, 3, "cifar10", **TINY[family]).eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    # Not probabilities: rows do not sum to one and values may be negative.
    assert not torch.allclose(a.sum(dim=1), torch.ones(3))


def test_input_gradient_flows_through_normalization() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 3, "cifar10", **TINY["small_cnn"]).eval()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_normalize_layer() -> None:
    norm = Normalize((0.5, 0.25), (0.5, 0.25))
    assert norm.mean.shape == (1, 2, 1, 1) and norm.std.shape == (1, 2, 1, 1)
    assert {name for name, _ in norm.named_buffers()} == {"mean", "std"}
    assert list(norm.parameters()) == []
    x = torch.ones(1, 2, 3, 3)
    assert torch.allclose(norm(x), torch.tensor([1.0, 3.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3))
    with pytest.raises(ValueError):
        Normalize((0.5,), (0.5, 0.5))
    with pytest.raises(ValueError):
        Normalize((0.5,), (0.0,))
    assert set(NORMALIZATION) == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"}


def test_normalized_model_structure() -> None:
    model = build_model("preact_resnet18", 10, 3, "cifar10", width=8)
    assert isinstance(model, NormalizedModel)
    assert isinstance(model.normalize, Normalize)
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(NORMALIZATION["cifar10"][0]))
    convs = [m for m in model.net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # stem, two per block, three 1x1 shortcuts


@pytest.mark.parametrize("family", sorted(TINY))
def test_build_model_round_trip_from_model_args(family: str) -> None:
    torch.manual_seed(0)
    model = build_model(family, 10, 1, "digits", **TINY[family])
    args = json.loads(json.dumps(model.model_args))  # what a checkpoint stores
    expected = {"family": family, "num_classes": 10, "input_channels": 1, "dataset": "digits"}
    assert args == {**expected, **TINY[family]}
    rebuilt = build_model(**args)
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_default_sizes_match_the_papers() -> None:
    def n_params(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    # PreAct ResNet-18 with the final BN of Rice et al. (2020): 11,172,170 parameters.
    assert n_params(MODEL_FAMILIES["preact_resnet18"](10, 3)) == 11_172_170
    # WRN-16-4 (Zagoruyko & Komodakis 2016, table 4 lists 2.7M): 2,748,890 parameters.
    assert n_params(MODEL_FAMILIES["wide_resnet"](10, 3, depth=16, widen_factor=4)) == 2_748_890


def test_unknown_family_and_bad_arguments() -> None:
    with pytest.raises(UnknownModelError, match="small_cnn") as info:
        build_model("resnet50", 10, 3, "cifar10")
    assert isinstance(info.value, ValueError)
    assert "preact_resnet18" in str(info.value) and "wide_resnet" in str(info.value)
    with pytest.raises(ValueError, match="widen_factor"):
        build_model("small_cnn", 10, 3, "cifar10", widen_factor=2)
    with pytest.raises(ValueError, match="channel"):
        build_model("small_cnn", 10, 1, "cifar10")
    with pytest.raises(ValueError, match="known"):
        build_model("small_cnn", 10, 3, "imagenet")
    with pytest.raises(ValueError, match="6n"):
        build_model("wide_resnet", 10, 3, "cifar10", depth=12)


def _conv_output_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return shapes


@pytest.mark.parametrize(("depth", "convs_per_stage"), [(3, 1), (3, 3), (4, 2)])
def test_small_cnn_stages_of_several_convs(depth: int, convs_per_stage: int) -> None:
    """Stage i: ``convs_per_stage`` convs with width·2^i channels at (8 / 2^i)² pixels (ceil), then pooling."""
    model = build_model("small_cnn", 10, 1, "digits", width=4, depth=depth, convs_per_stage=convs_per_stage)
    shapes = _conv_output_shapes(model, torch.rand(2, 1, 8, 8))
    expected = [(2, 4 * 2**i, -(-8 // 2**i), -(-8 // 2**i)) for i in range(depth) for _ in range(convs_per_stage)]
    assert shapes == expected
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    pools = [m for m in model.net.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == depth - 1


def test_small_cnn_default_is_the_one_conv_per_stage_network() -> None:
    """convs_per_stage=1 (the default) keeps the former module names, so older checkpoints load."""
    old = MODEL_FAMILIES["small_cnn"](10, 1, width=8, depth=3)
    assert list(old.state_dict()) == list(
        MODEL_FAMILIES["small_cnn"](10, 1, width=8, depth=3, convs_per_stage=1).state_dict()
    )
    assert [n for n, m in old.named_modules() if isinstance(m, nn.Conv2d)] == ["features.0", "features.4", "features.8"]
    with pytest.raises(ValueError, match="convs_per_stage"):
        MODEL_FAMILIES["small_cnn"](10, 1, width=8, depth=3, convs_per_stage=0)


@pytest.mark.parametrize("params_file", ["params.yaml", "configs/digits_full.yaml"])
def test_digits_teacher_gives_rnas_cl_a_choice_of_tutors(params_file: str) -> None:
    """The embedded profile's teacher (built as the teacher stage builds it) has >= 8 conv layers,
    every one a tutor candidate of RNAS-CL, and rebuilds from the model_args its checkpoint stores."""
    from pathlib import Path

    from rnas.checkpoint import build_model as build_checkpoint_model
    from rnas.config import load_params
    from rnas.data import get_info
    from rnas.distill import TeacherProbe
    from rnas.stages.teacher import teacher_model_args

    params = load_params(Path(__file__).resolve().parents[1] / params_file)
    args = json.loads(json.dumps(teacher_model_args(params, get_info("digits"))))
    teacher = build_checkpoint_model(args)
    probe = TeacherProbe(teacher, 4)
    logits, maps = probe(torch.rand(3, 1, 8, 8))
    assert len(probe.names) >= 8 and maps.shape == (len(probe.names), 3, 16) and logits.shape == (3, 10)
