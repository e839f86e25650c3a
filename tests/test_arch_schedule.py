"""search.arch_warmup_epochs and search.arch_lr_schedule (rnas/search/base.py): α stays put while
the weights warm up, then moves with Adam at arch_lr × the schedule's factor."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_splits

from rnas.config import ParamsError, params_from_dict
from rnas.runs import resolve_run
from rnas.search.base import Progress, SearchContext, arch_lr_factor, arch_warmup
from rnas.search.methods import make_method


def params(**search):
    base = {"epochs": 4, "batch_size": 8, "init_channels": 4, "layers": 2, "nodes": 2}
    return params_from_dict({"pipeline": {"progress": False, "channels_last": False}, "search": {**base, **search}})


def set_up(p):
    splits = tiny_splits()
    torch.manual_seed(0)
    spec = resolve_run("darts")
    method = make_method(spec.method)
    method.setup(
        SearchContext(params=p, run=spec, info=splits.info, device=torch.device("cpu"), seed=0, steps_per_epoch=1)
    )
    x, y = splits.train.x, splits.train.y
    return method, (x[:8], y[:8]), (x[8:16], y[8:16])


def alphas(method) -> list[torch.Tensor]:
    return [a.detach().clone() for a in method.supernet.arch_parameters()]


def test_factor_constant_and_cosine():
    assert all(arch_lr_factor("constant", e, 8, 1) == 1.0 for e in range(8))
    cos = [arch_lr_factor("cosine", e, 8, 1) for e in range(8)]
    assert cos[0] == 1.0 and cos[1] == 1.0  # warm-up epoch, then the first α epoch at the full rate
    assert all(a > b for a, b in zip(cos[1:], cos[2:]))  # falls every epoch ...
    assert cos[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 6 / 7))) and cos[-1] > 0  # ... never to 0
    with pytest.raises(ValueError):
        arch_lr_factor("linear", 0, 8)


def test_alpha_stays_put_during_warmup_then_moves():
    method, bw, ba = set_up(params(arch_warmup_epochs=2, arch_lr=0.1))
    before = alphas(method)
    w_before = [w.detach().clone() for w in method.supernet.weights()]
    for epoch in range(2):
        m = method.step(bw, ba, Progress(epoch, 0, 1))
        assert "arch_loss" not in m and "weight_loss" in m
    assert all(torch.equal(a, b) for a, b in zip(before, alphas(method)))
    assert any(not torch.equal(a, b.detach()) for a, b in zip(w_before, method.supernet.weights()))
    m = method.step(bw, ba, Progress(2, 0, 1))
    assert "arch_loss" in m
    assert any(not torch.equal(a, b) for a, b in zip(before, alphas(method)))


def test_cosine_scales_the_adam_step():
    """Adam's first step moves every α entry by lr·factor (its sign step); the peak lr is kept."""
    p = params(arch_lr=0.1, arch_lr_schedule="cosine", arch_warmup_epochs=1, arch_weight_decay=0.0)
    method, bw, ba = set_up(p)
    before = alphas(method)
    method.step(bw, ba, Progress(3, 0, 1))  # epoch 3 of 4 after 1 warm-up: factor ½(1 + cos(2π/3)) = ¼
    factor = arch_lr_factor("cosine", 3, 4, 1)
    assert factor == pytest.approx(0.25)
    moved = torch.cat([(a - b).abs().flatten() for a, b in zip(alphas(method), before)])
    assert float(moved.max()) == pytest.approx(0.1 * factor, rel=1e-3)
    assert all(g["peak_lr"] == 0.1 and g["lr"] == pytest.approx(0.025) for g in method.a_opt.param_groups)


def test_defaults_are_darts():
    s = params().search
    assert s.arch_warmup_epochs == 0 and s.arch_lr_schedule == "constant"


def test_warmup_is_capped_so_alpha_moves():
    assert arch_warmup(5, 4) == 3 and arch_warmup(1, 1) == 0 and arch_warmup(2, 8) == 2


@pytest.mark.parametrize(
    "search, key",
    [
        ({"arch_warmup_epochs": -1}, "search.arch_warmup_epochs"),
        ({"arch_lr_schedule": "linear"}, "search.arch_lr_schedule"),
    ],
)
def test_invalid(search, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        params(**search)
