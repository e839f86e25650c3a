"""One PGD loop (rnas.evaluation.attacks.pgd_loop) behind training's and evaluation's PGD.

The references below are the two loops the project had before they were merged (training's
``pgd_inner`` and evaluation's ``track_best`` loop), kept verbatim: the shared loop must give
their numbers bit for bit, random-number consumption included, or resumed runs and cached
evaluations would change.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnas.evaluation import attacks as A
from rnas.training import perturbations as P


def _old_pgd_inner(model, x, y, eps, step, steps, generator, loss="ce", clean_logits=None):
    if eps == 0 or steps == 0:
        return x.detach()
    if loss == "ce":
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * 2 - 1
        x_adv = (x + eps * noise).clamp(0, 1)
    else:
        x_adv = (x + 0.001 * torch.randn(x.shape, generator=generator, device="cpu").to(x.device)).clamp(0, 1)
    target = F.softmax(clean_logits.detach(), dim=1) if loss == "kl" else None
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        if loss == "ce":
            objective = F.cross_entropy(logits, y)
        else:
            objective = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
        (grad,) = torch.autograd.grad(objective, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def _old_first_fooling(model, x, y, x_adv, epsilon, step_size, steps, loss_fn):
    out = x_adv.clone()
    active = torch.arange(len(x), device=x.device)
    current = x_adv
    with torch.enable_grad():
        for _ in range(steps):
            if active.numel() == 0:
                break
            current.requires_grad_(True)
            logits = model(current)
            (grad,) = torch.autograd.grad(loss_fn(logits, y[active]), current)
            with torch.no_grad():
                fooled = logits.argmax(dim=1) != y[active]
                out[active[fooled]] = current[fooled].detach()
                keep = ~fooled
                active, current, grad = active[keep], current.detach()[keep], grad[keep]
                x_a = x[active]
                current = current + step_size * grad.sign()
                current = torch.min(torch.max(current, x_a - epsilon), x_a + epsilon).clamp(0.0, 1.0)
        with torch.no_grad():
            out[active] = current.detach()
    return out


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5)
    )


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 6, 6, generator=g), torch.randint(0, 5, (12,), generator=g)


@pytest.mark.parametrize("loss", ["ce", "kl"])
@pytest.mark.parametrize("eps, steps", [(0.1, 4), (0.0, 4), (0.1, 0)])
def test_training_pgd_is_the_old_loop_bit_for_bit(data, loss, eps, steps):
    x, y = data
    model = _net(1)  # train mode: BN batch statistics and running-stat updates, as in training
    clean = model(x).detach() if loss == "kl" else None
    results = []
    for fn in (_old_pgd_inner, P.pgd_inner):
        torch.manual_seed(0)
        model.load_state_dict(_net(1).state_dict())
        g = torch.Generator().manual_seed(3)
        x_adv = fn(model, x, y, eps, 0.03, steps, g, loss=loss, clean_logits=clean)
        results.append((x_adv, g.get_state(), model[1].running_mean.clone()))
    (a, ga, ma), (b, gb, mb) = results
    assert torch.equal(a, b) and torch.equal(ga, gb) and torch.equal(ma, mb)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_evaluation_pgd_is_the_old_loop_bit_for_bit(data, random_start, loss):
    x, y = data
    model = _net(2).eval()
    x_adv = A.pgd_attack(
        model, x, y, 0.1, 0.03, 6, random_start=random_start, loss=loss, generator=torch.Generator().manual_seed(5)
    )
    best = A.pgd_attack(
        model,
        x,
        y,
        0.1,
        0.03,
        6,
        random_start=random_start,
        loss=loss,
        generator=torch.Generator().manual_seed(5),
        track_best=True,
    )
    g = torch.Generator().manual_seed(5)
    if random_start:
        noise = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
        start = (x + (2 * noise - 1) * 0.1).clamp(0.0, 1.0)
    else:
        start = x.clone()
    loss_fn = A._PGD_LOSSES[loss]
    assert torch.equal(best, _old_first_fooling(model, x, y, start.clone(), 0.1, 0.03, 6, loss_fn))
    last = start
    for _ in range(6):  # the old last-iterate loop
        last.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(model(last), y), last)
        with torch.no_grad():
            last = torch.min(torch.max(last + 0.03 * grad.sign(), x - 0.1), x + 0.1).clamp(0.0, 1.0)
    assert torch.equal(x_adv, last)


def test_training_and_evaluation_run_the_same_iteration(data):
    """On the CPU, pgd_attack with the trainer's mean CE and modes left alone is pgd_inner."""
    x, y = data
    model = _net(3).eval()
    a = P.pgd_inner(model, x, y, 0.1, 0.03, 5, torch.Generator().manual_seed(7))
    b = A.pgd_attack(model, x, y, 0.1, 0.03, 5, loss=F.cross_entropy, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_pgd_loop_works_under_no_grad_and_keeps_modes(data):
    x, y = data
    model = _net(4).train()
    with torch.no_grad():
        x_adv = P.pgd_inner(model, x, y, 0.1, 0.03, 2, torch.Generator().manual_seed(0))
        A.pgd_loop(model, x, y, x, 0.1, 0.03, 2, F.cross_entropy, eval_mode=True)
    assert model.training and model[1].training
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not x_adv.requires_grad


def test_unknown_options_are_errors(data):
    x, y = data
    with pytest.raises(ValueError, match="known: ce, kl"):
        P.pgd_inner(_net(0), x, y, 0.1, 0.03, 1, None, loss="hinge")
    with pytest.raises(ValueError, match="known: normal, uniform"):
        A.pgd_start(x, 0.1, noise="laplace")


@pytest.mark.parametrize("steps, prefixes", [(12, (0, 1, 3, 6)), (40, (5,))])
def test_a_shorter_pgd_is_a_prefix_of_a_longer_run(data, steps, prefixes):
    """``snapshots`` of a PGD-n run equal PGD-k runs of their own, bit for bit (k < n), as long as
    some examples are still unbroken (steps 12) and after every example broke (steps 40: the
    loop ends early, the later snapshots are its final points). This is what lets the protocol
    take PGD-20 from PGD-100's run."""
    x, y = data
    model = _net(2).eval()
    eps, step = (0.03, 0.01) if steps == 12 else (0.5, 0.2)
    snaps = dict.fromkeys(prefixes)
    full = A.pgd_attack(
        model, x, y, eps, step, steps, generator=torch.Generator().manual_seed(5), track_best=True, snapshots=snaps
    )
    alone = A.pgd_attack(model, x, y, eps, step, steps, generator=torch.Generator().manual_seed(5), track_best=True)
    assert torch.equal(full, alone)
    for k in prefixes:
        own = A.pgd_attack(model, x, y, eps, step, k, generator=torch.Generator().manual_seed(5), track_best=True)
        assert torch.equal(snaps[k], own), k
    if steps == 40:  # the large ball broke every example before the snapshot
        assert not bool((model(full).argmax(1) == y).any())
    else:
        assert not torch.equal(snaps[prefixes[-1]], full)  # the snapshot is not just the end point


def test_pgd_prefix_flags_are_the_separate_runs_and_snapshots_are_checked(data):
    x, y = data
    model = _net(3).eval()
    with A.rng_scope(0):
        shared = A.pgd_prefix_flags(model, x, y, 0.1, step_size=0.03, steps=10, prefixes=(3,), batch_size=5)
    for k in (3, 10):
        with A.rng_scope(0):
            own = A.pgd_flags(model, x, y, 0.1, step_size=0.03, steps=k, batch_size=5)
        assert torch.equal(shared[k], own), k
    with pytest.raises(ValueError, match="snapshots need track_best"):
        A.pgd_attack(model, x, y, 0.1, 0.03, 4, snapshots={2: None})
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        A.pgd_attack(model, x, y, 0.1, 0.03, 4, track_best=True, snapshots={4: None})
