"""RNAS (noise examples, rnas/search/methods/rnas.py): equivalence to DARTS at λ = 0 and noise
scale 0, R = 0 without noise, no attack in the noise search (and some in the ``adv`` variant),
reproducible and resumable noise, params and runs, the report section."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from conftest import tiny_splits

import rnas.evaluation.attacks as attacks
import rnas.training.perturbations as perturbations
from rnas.checkpoint import ResumeState
from rnas.config import ParamsError, RnasMethodConfig, params_from_dict, section
from rnas.data import Splits
from rnas.pipeline import stage_keys
from rnas.report.rnas_noise import noise_vs_adversarial_markdown
from rnas.runs import resolve_run
from rnas.search.base import SearchContext
from rnas.search.loop import run_search, search_halves
from rnas.search.methods import make_method
from rnas.search.methods.rnas import (
    js_divergence,
    kl_divergence,
    l2_distance,
    noise_examples,
    robustness_term,
    running_stats_frozen,
)

torch.set_num_threads(1)

DIVERGENCES = ("kl", "js", "l2", "features")


def tiny_params(epochs: int = 1, unrolled: bool = False, **rnas):
    return params_from_dict(
        {
            "pipeline": {"progress": False, "channels_last": False},
            "search": {
                "epochs": epochs,
                "batch_size": 8,
                "init_channels": 4,
                "layers": 2,
                "nodes": 2,
                "unrolled": unrolled,
                "methods": {"rnas": rnas},
            },
        }
    )


def search(run: str, params, splits: Splits, seed: int = 0, resume: ResumeState | None = None):
    """One search of ``run`` from a fixed global seed (as the search stage does)."""
    torch.manual_seed(seed)
    spec = resolve_run(run)
    method = make_method(spec.method)
    result = run_search(
        method,
        {"params": params, "run": spec, "info": splits.info, "device": torch.device("cpu"), "seed": seed},
        splits,
        resume=resume,
        progress=False,
    )
    return method, result


def set_up(run: str, params, splits: Splits, seed: int = 0):
    torch.manual_seed(seed)
    spec = resolve_run(run)
    method = make_method(spec.method)
    method.setup(
        SearchContext(
            params=params, run=spec, info=splits.info, device=torch.device("cpu"), seed=seed, steps_per_epoch=1
        )
    )
    return method


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------------
# Equivalence to DARTS


@pytest.mark.parametrize(
    "divergence, noise, unrolled", [("kl", "uniform", False), ("features", "gaussian", False), ("js", "uniform", True)]
)
def test_lambda0_scale0_is_darts_bit_for_bit(divergence, noise, unrolled):
    splits = tiny_splits()
    darts, r_darts = search("darts", tiny_params(2, unrolled), splits)
    rnas, r_rnas = search(
        "rnas", tiny_params(2, unrolled, lam=0.0, noise_scale=0.0, divergence=divergence, noise=noise), splits
    )
    assert len(r_rnas.history) == 2
    assert_same_state(darts.supernet.state_dict(), rnas.supernet.state_dict())  # α, weights, BN buffers
    for p, q in zip(darts.supernet.arch_parameters(), rnas.supernet.arch_parameters()):
        assert torch.equal(p, q)
    assert r_darts.architecture == r_rnas.architecture
    for h_d, h_r in zip(r_darts.history, r_rnas.history):
        for key in ("weight_loss", "arch_loss", "train_acc", "val_acc"):
            assert h_d[key] == h_r[key], key
        assert h_r["robust_term"] == 0.0
    # ... and the search moved: α changed from its initialisation.
    torch.manual_seed(0)
    fresh = set_up("darts", tiny_params(), splits)
    assert not torch.equal(fresh.supernet.alpha_normal, rnas.supernet.alpha_normal)


def test_noise_changes_the_search():
    """Guard against the equivalence holding trivially: noise (λ = 0) alone changes the weights."""
    splits = tiny_splits()
    darts, _ = search("darts", tiny_params(), splits)
    rnas, _ = search("rnas", tiny_params(lam=0.0, noise_scale=0.1), splits)
    assert not torch.equal(darts.supernet.stem[0].weight, rnas.supernet.stem[0].weight)


# --------------------------------------------------------------------------------------------
# The regularizer R


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_R_is_zero_without_noise_and_positive_with_it(divergence):
    splits = tiny_splits()
    x, y = splits.train.x[:8], splits.train.y[:8]
    for scale, zero in ((0.0, True), (0.3, False)):
        method = set_up("rnas", tiny_params(lam=1.0, noise_scale=scale, divergence=divergence), splits)
        loss, metrics = method.arch_loss(method.supernet, x, y)
        assert math.isfinite(metrics["robust_term"])
        if zero:
            assert metrics["robust_term"] == 0.0
            assert float(loss) == metrics["arch_ce"]
        else:
            assert metrics["robust_term"] > 0.0
            assert float(loss) > metrics["arch_ce"]


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_R_gradient_reaches_alpha(divergence):
    splits = tiny_splits()
    method = set_up("rnas", tiny_params(lam=1.0, noise_scale=0.3, divergence=divergence), splits)
    net = method.supernet
    x = splits.train.x[:8]
    x_tilde = noise_examples(x, "uniform", 0.3, torch.Generator().manual_seed(1))
    r = robustness_term(net, x, x_tilde, divergence)
    grads = torch.autograd.grad(r, net.arch_parameters())
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(float(g.abs().sum()) > 0 for g in grads)


def test_noisy_forward_leaves_bn_running_stats_alone():
    splits = tiny_splits()
    method = set_up("rnas", tiny_params(lam=1.0, noise_scale=0.3), splits)
    net = method.supernet
    x = splits.train.x[:8]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        r = robustness_term(net, x, x.flip(0), "kl", clean_logits=torch.zeros(8, 10))
    assert float(r) > 0
    assert_same_state(before, net.state_dict())


def test_divergences_by_hand():
    a = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    b = torch.tensor([[math.log(3.0), 0.0]])  # q = (3/4, 1/4)
    kl = 0.25 * math.log(1 / 3) + 0.75 * math.log(3)
    assert float(kl_divergence(a, b)) == pytest.approx(kl, rel=1e-6)
    js = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)  # m = (1/2, 1/2), both halves equal
    assert float(js_divergence(a, b)) == pytest.approx(js, rel=1e-6)
    assert float(js_divergence(a, b)) == pytest.approx(float(js_divergence(b, a)), rel=1e-6)
    far = torch.tensor([[0.0, 200.0]]), torch.tensor([[200.0, 0.0]])  # softmax underflows to 0
    assert float(js_divergence(*far)) == pytest.approx(math.log(2), rel=1e-5)
    assert float(l2_distance(a, b)) == pytest.approx(2 * math.log(3.0) ** 2, rel=1e-6)


def test_noise_examples():
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    u = noise_examples(x, "uniform", 0.1, torch.Generator().manual_seed(5))
    assert (u - x).abs().max() <= 0.1 + 1e-6 and u.min() >= 0 and u.max() <= 1
    assert (u - x).abs().max() > 0.09  # fills the ball
    assert torch.equal(u, noise_examples(x, "uniform", 0.1, torch.Generator().manual_seed(5)))
    g = noise_examples(x, "gaussian", 0.5, torch.Generator().manual_seed(5))
    assert g.min() >= 0 and g.max() <= 1 and (g - x).abs().max() > 0.5  # unbounded before clipping
    assert torch.equal(noise_examples(x, "gaussian", 0.0, torch.Generator()), x)
    with pytest.raises(ValueError, match="uniform, gaussian"):
        noise_examples(x, "salt", 0.1, torch.Generator())


# --------------------------------------------------------------------------------------------
# No attack in the noise search


@pytest.fixture
def attack_calls(monkeypatch) -> dict[str, int]:
    """Counting wrappers around pgd_inner and every attack function of rnas.evaluation.attacks."""
    counts: dict[str, int] = {}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(perturbations, "pgd_inner", counting("pgd_inner", perturbations.pgd_inner))
    names = ["pgd_attack", "run_attack", *(n for n in attacks.__all__ if n.endswith(("_adv", "_flags")))]
    for name in names:
        monkeypatch.setattr(attacks, name, counting(name, getattr(attacks, name)))
    return counts


def test_noise_search_never_attacks_adv_variant_does(attack_calls):
    splits = tiny_splits()
    params = tiny_params(lam=1.0, noise_scale=0.1, adv_steps=2)
    _, result = search("rnas", params, splits)
    assert attack_calls == {}
    assert result.history[0]["robust_term"] > 0
    _, result = search("rnas_adv", params, splits)
    half_w, half_a = search_halves(splits, 0)
    steps = min(len(half_w), len(half_a)) // 8
    assert attack_calls == {"pgd_inner": 2 * steps}  # one weight batch + one architecture batch a step
    assert result.history[0]["robust_term"] > 0


# --------------------------------------------------------------------------------------------
# Reproducible and resumable


def test_noise_is_reproducible_and_resumable(tmp_path):
    splits = tiny_splits()
    params = tiny_params(2, lam=0.5, noise_scale=0.2, noise="gaussian", divergence="js")
    full, r_full = search("rnas", params, splits)
    # A second run, checkpointed each epoch, then resumed from its epoch-1 state: equal to the
    # uninterrupted first run (so the search is reproducible and the noise stream resumes).
    search("rnas", params, splits, resume=ResumeState(tmp_path, "h"))
    (tmp_path / "prev.pt").replace(tmp_path / "last.pt")  # as if killed after epoch 1 of 2
    resumed, r_resumed = search("rnas", params, splits, seed=0, resume=ResumeState(tmp_path, "h"))
    assert_same_state(full.supernet.state_dict(), resumed.supernet.state_dict())
    assert torch.equal(full.generator.get_state(), resumed.generator.get_state())
    assert r_full.history[1]["robust_term"] == r_resumed.history[1]["robust_term"]

    seed0, seed1 = set_up("rnas", params, splits, seed=0), set_up("rnas", params, splits, seed=1)
    assert not torch.equal(seed0.generator.get_state(), seed1.generator.get_state())


# --------------------------------------------------------------------------------------------
# Params, runs, report


def test_params_block_and_runs():
    cfg = tiny_params(lam=2.0, divergence="features", noise="gaussian").search.methods.rnas
    assert (cfg.lam, cfg.divergence, cfg.noise) == (2.0, "features", "gaussian")
    with pytest.raises(ParamsError, match="search.methods.rnas.eps"):
        tiny_params(eps=0.1)
    with pytest.raises(ParamsError, match="search.methods.rnas.divergence"):
        tiny_params(divergence="wasserstein")
    with pytest.raises(ParamsError, match="search.methods.rnas.lam"):
        tiny_params(lam=-1.0)
    noise, adv = resolve_run("rnas"), resolve_run("rnas_adv")
    assert (noise.method, noise.variant, adv.method, adv.variant) == ("rnas", "noise", "rnas", "adv")
    params = tiny_params()
    covered = {k.rsplit(".", 1)[1] for k in noise.method_keys + adv.method_keys}
    assert covered == set(RnasMethodConfig.model_fields)
    assert not any("adv_" in k for k in noise.method_keys)
    assert not any("noise" in k for k in adv.method_keys)
    for k in stage_keys("search", "rnas_adv"):
        section(params, k)  # every key resolves


def test_unknown_variant_is_refused():
    splits = tiny_splits()
    spec = dataclasses.replace(resolve_run("rnas"), variant="fgsm")
    with pytest.raises(ValueError, match="noise, adv"):
        make_method("rnas").setup(
            SearchContext(
                params=tiny_params(), run=spec, info=splits.info, device=torch.device("cpu"), seed=0, steps_per_epoch=1
            )
        )


def test_report_section(tmp_path):
    params = params_from_dict({"pipeline": {"results": str(tmp_path), "runs": ["darts", "rnas", "rnas_adv"]}})
    assert noise_vs_adversarial_markdown(params) == ""
    for run, seconds, clean, robust in (("rnas", 30.0, 0.9, 0.5), ("rnas_adv", 90.0, 0.85, 0.6)):
        folder = tmp_path / "digits" / run / "seed0"
        folder.mkdir(parents=True)
        (folder / "search.json").write_text(json.dumps({"search_seconds": seconds}))
        if run == "rnas":
            assert noise_vs_adversarial_markdown(params) == ""  # the other run is missing
        (folder / "eval.json").write_text(json.dumps({"clean_acc": clean, "robust_acc": robust}))
    text = noise_vs_adversarial_markdown(params)
    assert text.startswith("### RNAS: noise vs adversarial search\n")
    assert "| rnas | noise | 1 | 30 | 90.0 | 50.0 |" in text
    assert "| rnas_adv | adversarial (PGD) | 1 | 90 | 85.0 | 60.0 |" in text
    assert "3.0× faster" in text and "-10.0 points" in text
    assert "search CPU s" not in text  # the files predate the CPU seconds
    only_noise = params_from_dict({"pipeline": {"results": str(tmp_path), "runs": ["rnas"]}})
    assert noise_vs_adversarial_markdown(only_noise) == ""
    # With the CPU seconds of every seed: their column, and the ratio stated on them.
    for run, seconds, cpu in (("rnas", 30.0, 20.0), ("rnas_adv", 90.0, 80.0)):
        (tmp_path / "digits" / run / "seed0" / "search.json").write_text(
            json.dumps({"search_seconds": seconds, "search_cpu_seconds": cpu})
        )
    text = noise_vs_adversarial_markdown(params)
    assert "| rnas | noise | 1 | 30 | 20 | 90.0 | 50.0 |" in text
    assert "took 0.25× the CPU time of the adversarial one (4.0× faster)" in text


def test_frozen_running_stats_keep_the_batch_norm_path_and_restore_the_buffers():
    """Inside running_stats_frozen a training-mode forward takes the same batch-norm path as outside
    (the supernet's grouped and folded BNs need track_running_stats): the same logits bit for bit,
    gradients still flow, and every buffer is back on exit. Switching track_running_stats off
    instead changed the logits by 4e-8 on an AMD EPYC and sent the supernet to its per-edge path."""
    splits = tiny_splits()
    x = splits.train.x[:8]
    net = set_up("rnas", tiny_params(lam=1.0), splits).supernet
    net.train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.track_running_stats for m in bns)
    clean = net(x)
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    with running_stats_frozen(net):
        assert all(m.track_running_stats for m in bns)
        frozen = net(x)
    frozen.sum().backward()  # after the restore: it must not break a graph that saved the buffers
    assert torch.equal(clean, frozen)
    after = net.state_dict()
    for k, v in buffers.items():
        assert torch.equal(after[k], v), k
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
