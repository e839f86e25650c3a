"""RNAS-CL's public-code settings (issue 15): the weights' optimizer (``search.w_optimizer``, a
per-method override) and the tutor candidates (``search.methods.rnas_cl.tutor_kernels``), the same
teacher layers in search and in retraining."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import torch
from torch import nn

from rnas.config import ParamsError, SearchCommon, WeightOptimizer, load_params, params_for_run, params_from_dict
from rnas.data import Splits, TensorPair, get_info
from rnas.distill import (
    DistillationError,
    FixedTutorDistillation,
    TeacherProbe,
    attention_loss,
    load_tutors,
    teacher_layers,
)
from rnas.models import build_model
from rnas.pipeline import stage_keys
from rnas.runs import RUNS
from rnas.search.base import WEIGHT_OPTIMIZERS, Progress, SearchContext, weight_optimizer
from rnas.search.loop import run_search
from rnas.search.methods import make_method
from rnas.stages.retrain import build_final_network

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
WIDTH = {"stage_widths": [8, 8], "stage_blocks": [1, 1], "stage_strides": [1, 2], "expansion": 2}


def info():
    return dataclasses.replace(get_info("digits"), image_size=8)


def tiny_wrn() -> nn.Module:
    """WRN-10-1: a 3x3 stem, 3 blocks of two 3x3 convs, 1x1 shortcuts where a block changes width (2)."""
    torch.manual_seed(0)
    return build_model("wide_resnet", 10, 1, "digits", depth=10, widen_factor=1).eval()


def params(rnas_cl: dict | None = None, **search):
    block = {"width": WIDTH, **(rnas_cl or {})}
    return params_from_dict(
        {
            "pipeline": {"progress": False, "channels_last": False},
            "search": {
                "epochs": 2,
                "batch_size": 16,
                "init_channels": 4,
                "layers": 2,
                **search,
                "methods": {"rnas_cl": block, "lrnas": {"warmup_epochs": 1}},
            },
        }
    )


def setup(p, run: str, teacher: nn.Module | None = None):
    method = make_method(RUNS[run].method)
    method.setup(SearchContext(params_for_run(p, run), RUNS[run], info(), torch.device("cpu"), 0, 5, teacher))
    return method


# -- search.w_optimizer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"search": {"w_optimizer": "rmsprop"}}, "search.w_optimizer"),
        (
            {"search": {"methods": {"rnas_cl": {"overrides": {"w_optimizer": "Adam"}}}}},
            "search.methods.rnas_cl.overrides.w_optimizer",
        ),
        (
            {"search": {"methods": {"darts": {"overrides": {"w_optimizer": 1}}}}},
            "search.methods.darts.overrides.w_optimizer",
        ),
    ],
)
def test_an_unknown_weight_optimizer_is_refused_naming_the_key(raw, key):
    with pytest.raises(ParamsError) as err:
        params_from_dict(raw)
    msg = str(err.value)
    assert msg.startswith(key) and "sgd, adam" in msg, msg


def test_the_registry_builds_every_allowed_optimizer_and_refuses_others():
    assert set(WEIGHT_OPTIMIZERS) == set(typing.get_args(WeightOptimizer))
    assert params_from_dict({}).search.w_optimizer == "sgd"  # the default: every earlier run's SGD
    bad = SearchCommon.model_construct(**{**dict(SearchCommon()), "w_optimizer": "lion"})
    with pytest.raises(ValueError, match=r"^search\.w_optimizer: unknown optimizer 'lion'; known: sgd, adam"):
        weight_optimizer([nn.Parameter(torch.zeros(2))], bad)


def test_adam_when_asked_with_w_lr_decay_betas_and_the_cosine_schedule():
    p = params({"overrides": {"w_optimizer": "adam", "w_lr": 0.004, "w_lr_min": 1.6e-7, "w_weight_decay": 2e-4}})
    method = setup(p, "rnas_cl", tiny_wrn()).impl
    opt, sched = method.w_opt, method.w_sched
    assert type(opt) is torch.optim.Adam
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.004, (0.9, 0.999), 2e-4)
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert (sched.T_max, sched.eta_min) == (2, 1.6e-7)
    # one weight-phase step (step 0 of 5: the first 80% update the weights) moves the weights by Adam
    before = [w.detach().clone() for w in method.supernet.weights()]
    logits_before = [a.detach().clone() for a in method.arch_parameters()]
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
    method.step(batch, batch, Progress(0, 0, 5))
    changed = [not torch.equal(b, w.detach()) for b, w in zip(before, method.supernet.weights())]
    assert any(changed)
    assert all("exp_avg" in opt.state[w] for w, c in zip(method.supernet.weights(), changed) if c)
    assert all(torch.equal(a, b.detach()) for a, b in zip(logits_before, method.arch_parameters()))
    method.end_epoch(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.6e-7 + (0.004 - 1.6e-7) * 0.5)  # cosine, half way


def test_the_override_applies_to_its_method_only():
    p = params({"overrides": {"w_optimizer": "adam", "w_lr": 0.004}})
    assert p.search.w_optimizer == "sgd"
    teacher = tiny_wrn()
    assert type(setup(p, "rnas_cl", teacher).impl.w_opt) is torch.optim.Adam
    assert type(setup(p, "rnas_cl_cell", teacher).impl.w_opt) is torch.optim.Adam  # the same method
    for run in ("darts", "lrnas", "dsrna_cb", "rnas"):
        opt = setup(p, run).w_opt
        assert type(opt) is torch.optim.SGD and opt.param_groups[0]["lr"] == 0.025, run
    # and a common w_optimizer reaches every method that does not override it
    common = params({"overrides": {"w_optimizer": "sgd"}}, w_optimizer="adam")
    assert type(setup(common, "darts").w_opt) is torch.optim.Adam
    assert type(setup(common, "rnas_cl", teacher).impl.w_opt) is torch.optim.SGD


def test_cifar10_profile_runs_rnas_cl_with_the_public_codes_settings():
    p = load_params(ROOT / "configs" / "cifar10.yaml")
    s = params_for_run(p, "rnas_cl").search
    assert (s.w_optimizer, s.w_lr, s.w_weight_decay) == ("adam", 0.004, 2e-4)
    assert s.methods.rnas_cl.tutor_kernels == (3,)
    assert params_for_run(p, "darts").search.w_optimizer == "sgd"
    assert params_for_run(p, "lrnas").search.w_optimizer == "sgd"
    assert load_params(ROOT / "params.yaml").search.methods.rnas_cl.tutor_kernels == ()  # digits: every conv


# -- search.methods.rnas_cl.tutor_kernels ------------------------------------------------------


@pytest.mark.parametrize(
    "family, kwargs, every, three",
    [
        ("wide_resnet", {"depth": 34, "widen_factor": 10}, 34, 31),  # the paper-scale teacher
        ("preact_resnet18", {"width": 64}, 20, 17),
        ("small_cnn", {"width": 16, "depth": 3, "convs_per_stage": 3}, 9, 9),  # the digits teacher: 3x3 only
    ],
)
def test_tutor_candidates_with_and_without_the_kernel_filter(family, kwargs, every, three):
    with torch.device("meta"):  # the real sizes, no memory
        teacher = build_model(family, 10, 3, "cifar10", **kwargs)
    assert len(teacher_layers(teacher)) == every
    assert len(teacher_layers(teacher, [3])) == three
    assert all(m.kernel_size == (3, 3) for _, m in teacher_layers(teacher, [3]))
    assert len(teacher_layers(teacher, [1, 3])) == every
    if every != three:
        assert len(teacher_layers(teacher, [1])) == every - three


def test_tutor_kernels_are_validated_and_a_filter_leaving_no_conv_is_refused():
    with pytest.raises(ParamsError, match=r"^search\.methods\.rnas_cl\.tutor_kernels\[0\]: 0 is out of range"):
        params({"tutor_kernels": [0]})
    with pytest.raises(ParamsError, match=r"^search\.methods\.rnas_cl\.tutor_kernels: expected a list"):
        params({"tutor_kernels": 3})
    with pytest.raises(DistillationError, match="5x5 .tutor_kernels"):
        setup(params({"tutor_kernels": [5]}), "rnas_cl", tiny_wrn())
    assert "search.methods.rnas_cl.tutor_kernels" in stage_keys("search", "rnas_cl_cell")


def _splits(n: int = 64) -> Splits:
    g = torch.Generator().manual_seed(1)

    def pair(k: int) -> TensorPair:
        return TensorPair(torch.rand(k, 1, 8, 8, generator=g), torch.randint(0, 10, (k,), generator=g))

    return Splits(pair(n), pair(16), pair(16), info())


@pytest.mark.parametrize("kernels, n_t", [([3], 7), ([], 9)])
def test_a_tutor_index_means_the_same_teacher_layer_in_search_and_retraining(kernels, n_t, tmp_path):
    teacher = tiny_wrn()
    p = params({"tutor_kernels": kernels})
    method = make_method("rnas_cl")
    ctx = {"params": p, "run": RUNS["rnas_cl"], "info": info(), "device": torch.device("cpu"), "seed": 0}
    run_search(method, {**ctx, "teacher": teacher}, _splits(), progress=False)
    cl = method.impl.cl
    assert len(cl.teacher.names) == n_t
    # spread the tutors over the teacher layers, first to last (without the filter: 1x1 convs too)
    n_s = cl.tutors.logits.shape[0]
    spread = [round(i * (n_t - 1) / (n_s - 1)) for i in range(n_s)]
    with torch.no_grad():
        cl.tutors.logits.copy_(torch.nn.functional.one_hot(torch.tensor(spread), n_t).float())
    arch_path = tmp_path / "architecture.json"
    arch_path.write_text(json.dumps(method.architecture()))
    tutors = json.loads(arch_path.read_text())["tutors"]
    assert tutors == spread and tutors[-1] == n_t - 1
    kinds = {cl.teacher.layers[t][1].kernel_size for t in tutors}
    assert kinds == ({(3, 3)} if kernels else {(3, 3), (1, 1)})

    model = build_final_network(p, RUNS["rnas_cl"], arch_path, info())
    retrain = FixedTutorDistillation(
        model, teacher, load_tutors(arch_path), map_size=4, gamma=1.0, kl_weight=1.0, temperature=1.0
    )
    assert retrain.tutors == tutors
    assert [n for n, _ in retrain.teacher.layers] == cl.teacher.names
    for t in tutors:  # the very module
        assert retrain.teacher.layers[t][1] is cl.teacher.layers[t][1]
    x = torch.rand(8, 1, 8, 8)
    _, t_search = cl.teacher(x)
    _, t_retrain = retrain.teacher(x)
    assert torch.equal(t_search, t_retrain)
    # the retraining's L_attn is the search's with one-hot tutors, on the same maps
    model.eval()
    value = retrain(model, x, torch.zeros(8, dtype=torch.long), model(x))
    s_maps = retrain.student_taps.stack()
    g = torch.nn.functional.one_hot(torch.tensor(tutors), n_t).float()
    assert retrain.last["attn"] == pytest.approx(float(attention_loss(s_maps, t_search, g).detach()), rel=1e-6)
    assert torch.isfinite(value)
    retrain.remove()


def test_retraining_refuses_a_teacher_whose_convs_differ_from_the_tutor_files():
    teacher = tiny_wrn()
    names = [n for n, _ in teacher_layers(teacher, [3])]
    TeacherProbe(teacher, 4, names=names)  # the same teacher: fine
    deeper = build_model("wide_resnet", 10, 1, "digits", depth=16, widen_factor=1)  # same names, and more
    assert set(names) <= {n for n, _ in teacher_layers(deeper)}
    with pytest.raises(DistillationError, match="differ from those the tutors were searched with"):
        TeacherProbe(deeper, 4, names=names)
    with pytest.raises(DistillationError, match="not convs of this teacher: \\['nope'\\]"):
        TeacherProbe(teacher, 4, names=[*names, "nope"])
