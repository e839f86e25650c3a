"""The evaluation's folded copy (rnas/evaluation/fold.py) computes the model's function.

Checked in float64 (so the comparison is not drowned in float32 rounding at ReLU kinks) on
every model family of the project, with non-trivial BN running statistics and affine
parameters: logits and input gradients equal to the unfolded model, the foldable norms gone,
the original model untouched, and the protocol counting parameters on the original.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rnas.evaluation.complexity import count_parameters
from rnas.evaluation.fold import fold_batchnorm
from rnas.evaluation.protocol import EvalSettings, evaluate_model
from rnas.models import build_model
from rnas.space.genotype import random_genotype, validate_genotype
from rnas.space.network import CellNetwork
from rnas.space.supernet import Supernet

ALL_OPS = {  # every op at stride 1 and 2, FactorizedReduce as a skip and as preprocess0
    "normal": [
        ["sep_conv_3x3", 0],
        ["skip_connect", 1],
        ["avg_pool_3x3", 0],
        ["dil_conv_3x3", 2],
        ["max_pool_3x3", 1],
        ["sep_conv_5x5", 3],
        ["dil_conv_5x5", 2],
        ["skip_connect", 4],
    ],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [
        ["skip_connect", 0],
        ["sep_conv_5x5", 1],
        ["dil_conv_5x5", 0],
        ["max_pool_3x3", 1],
        ["sep_conv_3x3", 2],
        ["dil_conv_3x3", 0],
        ["avg_pool_3x3", 1],
        ["skip_connect", 3],
    ],
    "reduce_concat": [2, 3, 4, 5],
}


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=gen))
                    m.bias.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


def _models():
    torch.manual_seed(0)
    yield "cells", CellNetwork(validate_genotype(ALL_OPS), 4, 3, 10, 1, "digits"), (1, 8, 8)
    yield "cells_odd", CellNetwork(random_genotype(4, torch.Generator().manual_seed(1)), 4, 4, 10, 3), (3, 7, 7)
    yield "small_cnn", build_model("small_cnn", 10, 1, "digits", width=4, depth=2, convs_per_stage=2), (1, 8, 8)
    yield "preact_resnet18", build_model("preact_resnet18", 10, 3, "cifar10", width=4), (3, 8, 8)
    yield "supernet", Supernet(4, 3, 10, 1, "digits", 3), (1, 8, 8)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name,model,shape", list(_models()), ids=[n for n, *_ in _models()])
def test_folded_copy_is_the_same_function(name, model, shape, channels_last):
    model = _randomize_norms(model).double()
    x = torch.rand(6, *shape, dtype=torch.float64)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    before = copy.deepcopy(model.state_dict())
    folded = fold_batchnorm(model)
    assert not folded.training
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    if name == "preact_resnet18":
        assert left > 0  # pre-activation: each norm comes before its conv, nothing to fold into
    elif name == "supernet":
        assert 0 < left < norms  # the norms after its pooling ops stay
    else:
        assert norms > 0 and left == 0
    x.requires_grad_(True)
    y = torch.arange(6) % 10
    out, out_f = model(x), folded(x)
    torch.testing.assert_close(out_f, out, atol=1e-10, rtol=1e-10)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(out, y), x)
    (g_f,) = torch.autograd.grad(nn.functional.cross_entropy(out_f, y), x)
    torch.testing.assert_close(g_f, g, atol=1e-10, rtol=1e-9)
    after = model.state_dict()  # the original is untouched
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_training_mode_is_refused():
    model = CellNetwork(validate_genotype(ALL_OPS), 4, 3, 10, 1, "digits").train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model)


def test_the_protocol_attacks_the_folded_copy_and_counts_the_original():
    torch.manual_seed(0)
    model = _randomize_norms(CellNetwork(validate_genotype(ALL_OPS), 4, 3, 10, 1, "digits"))
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    settings = EvalSettings(epsilon=0.1, epsilon_l2=0.5, pgd_step_size=0.05, attacks=("fgsm",))
    metrics, flags = evaluate_model(model, x, y, settings, progress=False)
    assert metrics["params"] == count_parameters(model)  # the folded copy has extra conv biases
    assert count_parameters(fold_batchnorm(model)) != count_parameters(model)
    with torch.no_grad():
        assert torch.equal(flags["clean"], model(x).argmax(1) == y)
