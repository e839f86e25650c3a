"""``pipeline.amp`` on the CPU (issue 17): bf16 autocast where the CPU has native bf16.

Detection reads /proc/cpuinfo's flags (tested on fake texts); a CPU without them gets float32
and a warning. Under autocast the trainer's step (its PGD included, as on CUDA) and the search
steps run in bf16, validation and the evaluation's attacks never do. The supernet's loss and
gradients under autocast stay within these tolerances of float32 (measured on the digits search
supernet, C=8, 3 cells, batch 64, K=1 and K=4, 5 and 3 seeds, and on 32x32x3 supernets, C=4 K=1
and C=8 K=4, batch 8, 3 seeds each; benchmarks/README.md):

* loss: relative difference <= 2e-3 (measured <= 6e-4);
* weights' gradient: relative difference of the norm <= 5e-2 (measured <= 1.7e-2), and
  ||g_bf16 - g_f32|| / ||g_f32|| <= 0.3 (measured <= 0.14);
* α's (and β's) gradient: relative difference of the norm <= 0.15 (measured <= 0.087), and
  ||g_bf16 - g_f32|| / ||g_f32|| <= 0.35 (measured <= 0.19): at the near-uniform initial α these
  gradients are differences of nearly equal op outputs, so bf16's rounding shows more.

The 32x32 supernets cover torch 2.14's broken CPU bf16 kernel (channels-last stride-1 dilated
depthwise convs on maps >= 29 px wide: wrong, often NaN, weight gradients), which
``rnas.space.ops.DepthwiseConv2d`` computes in float32 under CPU autocast.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnas.runtime
from rnas.runtime import acceleration, autocast, configure_acceleration, cpu_has_native_bf16, place_model

CPU = torch.device("cpu")

LOSS_REL = 2e-3
W_NORM_REL, W_DIFF_REL = 5e-2, 0.3
ALPHA_NORM_REL, ALPHA_DIFF_REL = 0.15, 0.35

CPUINFO = """processor\t: {i}
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme de pse tsc msr {extra} avx2 avx512f
bugs\t\t: spectre_v1
"""


def _cpuinfo(*extras: str) -> str:
    return "\n".join(CPUINFO.format(i=i, extra=e) for i, e in enumerate(extras))


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU has native bf16 (the numerics are the same where it is emulated) and
    leave the process's options as they were."""
    monkeypatch.setattr(rnas.runtime, "cpu_has_native_bf16", lambda *a, **k: True)
    yield
    configure_acceleration(amp=False, compile=False, device=CPU)


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16(_cpuinfo("avx512_bf16"), "Linux")
    assert cpu_has_native_bf16(_cpuinfo("amx_bf16 amx_tile", "amx_bf16 amx_tile"), "Linux")
    assert not cpu_has_native_bf16(_cpuinfo("avx512_vnni"), "Linux")
    assert not cpu_has_native_bf16(_cpuinfo("avx512_bf16", "avx512_vnni"), "Linux")  # every CPU must have it
    assert not cpu_has_native_bf16("processor\t: 0\nmodel name\t: x\n", "Linux")  # no flags line
    assert not cpu_has_native_bf16("", "Linux")
    assert not cpu_has_native_bf16(_cpuinfo("avx512_bf16"), "Darwin")  # False outside Linux
    assert not cpu_has_native_bf16(_cpuinfo("avx512_bf16"), "Windows")
    assert isinstance(cpu_has_native_bf16(), bool)  # this machine's answer, whatever it is


def test_amp_without_native_bf16_is_float32_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(rnas.runtime, "cpu_has_native_bf16", lambda *a, **k: False)
    try:
        with caplog.at_level(logging.WARNING, logger="rnas.runtime"):
            acc = configure_acceleration(amp=True, compile=False, device=CPU)
        assert not acc.amp
        assert "pipeline.amp" in caplog.text and "no native bf16" in caplog.text and "float32" in caplog.text
        with autocast(CPU):
            assert not torch.is_autocast_enabled("cpu")
    finally:
        configure_acceleration(amp=False, compile=False, device=CPU)


def test_amp_with_native_bf16_autocasts_on_the_cpu(native_bf16, caplog):
    with caplog.at_level(logging.WARNING, logger="rnas.runtime"):
        acc = configure_acceleration(amp=True, compile=False, device=CPU)
    assert acc.amp and acceleration().amp and not caplog.text
    with autocast(CPU):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert nn.Linear(3, 2)(torch.rand(4, 3)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    configure_acceleration(amp=False, compile=False, device=CPU)
    with autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")


# -- numerics: the supernet under autocast against float32 -----------------------------------


def _grads(net, x, y, amp: bool):
    net.zero_grad(set_to_none=True)
    configure_acceleration(amp=amp, compile=False, device=CPU)
    with autocast(CPU):
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    alpha = torch.cat([p.grad.flatten() for p in net.arch_parameters()])
    weights = torch.cat([p.grad.flatten() for p in net.weights() if p.grad is not None])
    return float(loss.detach()), alpha, weights


def _digits_batch():
    from rnas.data import load_splits

    s = load_splits("digits", seed=0, image_size=8, val_fraction=0.1, test_fraction=0.2)
    return s.train.x[:64], s.train.y[:64]


def _rgb32_batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.mark.parametrize(
    "name, args, batch, seed",
    [
        ("digits search supernet", (8, 3, 10, 1, "digits", 1), _digits_batch, 3),
        ("digits, PC-DARTS K=4", (8, 3, 10, 1, "digits", 4), _digits_batch, 1),
        ("32x32, dilated convs on 32 px maps", (4, 3, 10, 3, "cifar10", 1), _rgb32_batch, 0),
        ("32x32, PC-DARTS K=4", (8, 3, 10, 3, "cifar10", 4), _rgb32_batch, 0),
    ],
)
def test_supernet_loss_and_gradients_under_bf16_are_close_to_float32(native_bf16, _one_thread, name, args, batch, seed):
    from rnas.space.supernet import Supernet

    c, layers, classes, channels, dataset, k = args
    torch.manual_seed(seed)
    net = place_model(Supernet(c, layers, classes, channels, dataset, partial_channels=k), CPU, True).train()
    x, y = batch()
    x = x.contiguous(memory_format=torch.channels_last)
    loss32, a32, w32 = _grads(net, x, y, amp=False)
    loss16, a16, w16 = _grads(net, x, y, amp=True)
    assert torch.isfinite(a16).all() and torch.isfinite(w16).all()
    assert abs(loss16 - loss32) <= LOSS_REL * abs(loss32)
    for g16, g32, norm_rel, diff_rel in (
        (w16, w32, W_NORM_REL, W_DIFF_REL),
        (a16, a32, ALPHA_NORM_REL, ALPHA_DIFF_REL),
    ):
        assert abs(g16.norm() - g32.norm()) <= norm_rel * g32.norm()
        assert (g16 - g32).norm() <= diff_rel * g32.norm()


@pytest.mark.parametrize("kernel", [3, 5])
def test_dilated_depthwise_convs_run_in_float32_under_cpu_autocast(native_bf16, _one_thread, kernel):
    """torch 2.14's channels-last bf16 kernel gets these weight gradients wrong on maps >= 29
    px wide (>100% off, inf or NaN); DepthwiseConv2d computes them in float32 under autocast."""
    from rnas.space.ops import DepthwiseConv2d

    torch.manual_seed(0)
    conv = DepthwiseConv2d(8, 8, kernel, 1, kernel - 1, dilation=2, groups=8, bias=False)
    conv = place_model(conv, CPU, True)
    x = torch.randn(8, 8, 32, 32).contiguous(memory_format=torch.channels_last)
    ref = conv(x)
    g = torch.randn_like(ref)
    (w32,) = torch.autograd.grad(ref, conv.weight, g)
    configure_acceleration(amp=True, compile=False, device=CPU)
    with autocast(CPU):
        out = conv(x.bfloat16())
    assert out.dtype == torch.float32
    (w16,) = torch.autograd.grad(out, conv.weight, g)
    assert (w16 - w32).norm() <= 1e-2 * w32.norm()  # bf16 input rounding only


# -- where autocast applies: the trainer and the search steps, never evaluation ---------------


_SEEN: list = []  # module level: the evaluation attacks a deep copy of the model (batch norms folded)


class _Recorder(nn.Module):
    """A small conv net that records, per forward pass, (training mode, autocast on, output dtype)
    in ``_SEEN``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))

    def forward(self, x):
        out = self.body(x)
        _SEEN.append((self.training, torch.is_autocast_enabled("cpu"), out.dtype))
        return out


def test_the_trainer_step_autocasts_its_pgd_and_loss_and_validation_stays_float32(native_bf16, _one_thread):
    from rnas.config import PerturbationConfig, TrainConfig
    from rnas.data import TensorPair
    from rnas.training.trainer import Trainer

    configure_acceleration(amp=True, compile=False, device=CPU)
    seen = _SEEN
    seen.clear()
    cfg = TrainConfig(
        epochs=1, batch_size=16, perturbation=PerturbationConfig(kind="pgd", epsilon=0.1, step_size=0.05, steps=2)
    )
    g = torch.Generator().manual_seed(0)
    pair = TensorPair(torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g))
    Trainer(_Recorder(), cfg, CPU, seed=0, progress=False).fit(pair, pair)
    train = [s for s in seen if s[0]]
    val = [s for s in seen if not s[0]]
    assert len(train) == 2 * (2 + 1)  # 2 batches x (PGD-2 + the loss), every one in bf16
    assert all(on and dtype == torch.bfloat16 for _, on, dtype in train)
    assert val and all(not on and dtype == torch.float32 for _, on, dtype in val)


def test_the_search_steps_autocast(native_bf16, _one_thread):
    import dataclasses

    from rnas.config import params_from_dict
    from rnas.data import DATASETS
    from rnas.runs import resolve_run
    from rnas.search.base import BilevelMethod, Progress, SearchContext

    params = params_from_dict(
        {
            "pipeline": {"progress": False, "amp": True},
            "search": {"init_channels": 4, "layers": 2, "batch_size": 8, "arch_warmup_epochs": 0},
        }
    )
    configure_acceleration(amp=True, compile=False, device=CPU)
    torch.manual_seed(0)
    method = BilevelMethod()
    info = dataclasses.replace(DATASETS["digits"], image_size=8)
    method.setup(
        SearchContext(params=params, run=resolve_run("darts"), info=info, device=CPU, seed=0, steps_per_epoch=1)
    )
    seen: list = []
    method.supernet.register_forward_hook(lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype)))
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g))
    metrics = method.step(batch, batch, Progress(0, 0, 1))
    assert len(seen) == 2 and all(on and dtype == torch.bfloat16 for on, dtype in seen)  # α step, weight step
    assert all(p.dtype == torch.float32 for p in method.supernet.parameters())
    assert torch.isfinite(torch.tensor([metrics["weight_loss"], metrics["arch_loss"]])).all()


def test_evaluation_attacks_stay_float32_with_amp_on(native_bf16, _one_thread):
    from rnas.evaluation.protocol import EvalSettings, evaluate_model

    configure_acceleration(amp=True, compile=False, device=CPU)
    assert acceleration().amp
    seen = _SEEN
    seen.clear()
    torch.manual_seed(0)
    model = _Recorder().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    settings = EvalSettings(
        epsilon=0.1, epsilon_l2=0.5, pgd_step_size=0.025, eps_sweep=(0.05,), attacks=("fgsm", "pgd20", "deepfool")
    )
    metrics, _flags = evaluate_model(model, x, y, settings, progress=False)
    assert metrics["pgd20_acc"] is not None and metrics["deepfool_acc"] is not None
    assert len(seen) > 10  # the clean pass, FGSM, PGD-20, DeepFool, the ε sweep at 0.05 (its 0 is the clean pass)
    assert all(not on and dtype == torch.float32 for _, on, dtype in seen)
