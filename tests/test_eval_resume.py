"""Resumable evaluation: an evaluation killed after some attacks resumes from its state file,
skips what is done and gives exactly the numbers of an uninterrupted run (AutoAttack's own
checks, kept in the state beside the flags, included)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from rnas.checkpoint import load_checked
from rnas.evaluation import attacks as A
from rnas.evaluation.protocol import EvalSettings, EvalState, evaluate_with_sanity, state_key
from rnas.evaluation.sanity import SQUARE_KEY, SanitySettings

torch.set_num_threads(1)

N_CLASSES = 10
# At the L2 radius 2.5 AutoAttack-L2's APGD-CE already breaks every example, so its later
# sub-attacks are skipped and the test stays fast; its own checks still run and are resumed.
SETTINGS = EvalSettings(
    epsilon=0.1,
    epsilon_l2=2.5,
    pgd_step_size=0.025,
    eps_sweep=(0.05,),
    attacks=("fgsm", "pgd20", "autoattack_l2", "deepfool"),
    deepfool_steps=10,
)
SANITY = SanitySettings(large_epsilon=0.5, square_queries=50, tolerance=0.05)


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.rand(N_CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, N_CLASSES, (288,), generator=gen)
    x = (0.6 * prototypes[y] + 0.4 * torch.rand(288, 1, 8, 8, generator=gen)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, N_CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[32:]), y[32:]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x[:32], y[:32]


ORIGINAL_ATTACKS = dict(A.ATTACKS)


class Interrupted(BaseException):
    """Stands in for a kill (SIGTERM / KeyboardInterrupt) in the middle of an attack."""


def _counting(monkeypatch, calls: dict[str, int], fail: str | None = None) -> None:
    """Wrap every registry attack: count its calls; raise Interrupted when ``fail`` runs."""
    for name, spec in ORIGINAL_ATTACKS.items():

        def fn(*args, _orig=spec.fn, _name=name, **kw):
            calls[_name] = calls.get(_name, 0) + 1
            if _name == fail:
                raise Interrupted(_name)
            return _orig(*args, **kw)

        monkeypatch.setitem(A.ATTACKS, name, dataclasses.replace(spec, fn=fn))


def _strip(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "attack_seconds"}


def test_resume_gives_the_uninterrupted_numbers(setup, tmp_path, monkeypatch):
    model, x, y = setup
    full, full_flags = evaluate_with_sanity(model, x, y, SETTINGS, SANITY, progress=False)

    key = state_key(SETTINGS, "model-digest", x, y, SANITY)
    path = tmp_path / "state" / "flags.pt"
    calls: dict[str, int] = {}
    _counting(monkeypatch, calls, fail="deepfool_l2")
    with pytest.raises(Interrupted):
        evaluate_with_sanity(model, x, y, SETTINGS, SANITY, progress=False, state=EvalState(path, key))
    saved = load_checked(path, ("key", "flags", "seconds", "info"))  # weights_only=True load
    assert saved["key"] == key and set(saved["flags"]) == {"fgsm", "pgd20", "autoattack_l2"}
    assert set(saved["info"]) == {"autoattack_l2"}
    assert "range_output" in saved["info"]["autoattack_l2"]["autoattack_checks"]
    assert not list(path.parent.glob(".*.tmp"))  # atomic writes leave no temporaries

    calls.clear()
    _counting(monkeypatch, calls)
    resumed, resumed_flags = evaluate_with_sanity(
        model, x, y, SETTINGS, SANITY, progress=False, state=EvalState(path, key)
    )
    assert "fgsm" not in calls and calls["pgd"] == 3  # ε 0.05, the probes at 0 and 0.5; not PGD-20 at ε
    assert calls["deepfool_l2"] == 1 and calls["autoattack"] == 1  # the rest, incl. Square alone
    assert calls["autoattack_l2"] == 1  # APGD-CE at the large L2 radius, not the protocol's AutoAttack-L2
    assert _strip(resumed) == _strip(full)
    assert set(full["autoattack_checks"]) == {"autoattack_l2", SQUARE_KEY, "sanity/apgd_ce_l2@4.0"}
    assert full["robust_acc_l2"] is not None and full["worst_case_attacks"]["robust_acc"].endswith(SQUARE_KEY)
    assert set(resumed_flags) == set(full_flags) and SQUARE_KEY in resumed_flags
    assert all(torch.equal(resumed_flags[k], full_flags[k]) for k in full_flags)
    assert resumed["attack_seconds"]["fgsm"] == pytest.approx(float(saved["seconds"]["fgsm"]))

    # a finished state makes a rerun free: nothing is attacked again
    calls.clear()
    again, _ = evaluate_with_sanity(model, x, y, SETTINGS, SANITY, progress=False, state=EvalState(path, key))
    assert set(calls) <= {"clean"} and _strip(again) == _strip(full)


def test_stale_state_is_ignored_and_a_corrupt_one_refused(setup, tmp_path, monkeypatch, caplog):
    model, x, y = setup
    path = tmp_path / "flags.pt"
    key = state_key(SETTINGS, "digest-a", x, y, SANITY)
    state = EvalState(path, key)
    state.put("fgsm", torch.zeros(len(x), dtype=torch.bool), 1.0)  # fake: every example broken
    assert EvalState(path, key).get("fgsm") is not None
    # another model, other settings, other examples or other sanity knobs -> other key
    others = [
        state_key(SETTINGS, "digest-b", x, y, SANITY),
        state_key(dataclasses.replace(SETTINGS, pgd_restarts=2), "digest-a", x, y, SANITY),
        state_key(SETTINGS, "digest-a", x[:-1], y[:-1], SANITY),
        state_key(SETTINGS, "digest-a", x, y, dataclasses.replace(SANITY, square_queries=51)),
    ]
    assert len({key, *others}) == 5
    stale = EvalState(path, others[0])
    assert stale.get("fgsm") is None and "fgsm" not in stale
    caplog.set_level("INFO")
    EvalState(path, key)
    assert f"evaluation: resuming from {path}; done already: fgsm" in caplog.text
    path.write_bytes(b"not a checkpoint")
    from rnas.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="unreadable and was left as it is"):
        EvalState(path, key)
    assert path.read_bytes() == b"not a checkpoint"
    state.clear()
    assert not path.exists()
