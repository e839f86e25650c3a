"""Crashes, kills and bad input lose nothing (issue 8).

Kill tests run the real ``rnas`` stages in subprocesses; a tiny wrapper script SIGKILLs the
process at a chosen training step (mid-epoch), the stage is re-run, and the result must equal
an uninterrupted run bit for bit (CPU, one thread, deterministic algorithms). Since the runs are
deterministic, a resume that silently started over would give the same result: the wrapper also
counts the steps the resumed process runs, which must be exactly the epochs the checkpoint had
not finished."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import checkpointed_epochs, kill_test_params, tiny_params

from rnas.checkpoint import CheckpointError, ResumeState, load_checked, save_atomic
from rnas.config import TrainConfig
from rnas.data import TensorPair
from rnas.search.base import SearchMethod
from rnas.training.trainer import NonFiniteLossError, Trainer

KILLER = textwrap.dedent("""
    # Run an rnas stage, SIGKILL-ing ourselves at the N-th call of the training perturbation
    # (teacher/retrain) or of the search step (search): a kill in the middle of an epoch.
    # N = 0 never kills; every run prints how many of those calls it made (STEPS_CALLED=k).
    import atexit, os, signal, sys
    from rnas import cli
    from rnas.training import perturbations
    from rnas.search import base
    n = int(os.environ["RNAS_KILL_AT"])
    calls = {"n": 0}
    def counted(fn):
        def wrapper(*a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*a, **k)
        return wrapper
    for name in list(perturbations.PERTURBATIONS):
        perturbations.PERTURBATIONS[name] = counted(perturbations.PERTURBATIONS[name])
    base.BilevelMethod.step = counted(base.BilevelMethod.step)
    atexit.register(lambda: print(f"STEPS_CALLED={calls['n']}", file=sys.stderr, flush=True))
    sys.exit(cli.main(sys.argv[1:]))
""")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", GIT_PYTHON_REFRESH="quiet")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _project(tmp: Path, **overrides) -> Path:
    p = kill_test_params()
    for section, values in overrides.items():
        p[section].update(values)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (tmp / "killer.py").write_text(KILLER)
    return tmp


def _rnas(project: Path, *args: str, kill_at: int | None = None, count: bool = False) -> subprocess.CompletedProcess:
    """Run ``rnas ARGS``; ``kill_at``: SIGKILL at that step; ``count``: through the wrapper
    without a kill, so that :func:`_steps_called` can read how many steps the process ran."""
    env = _env()
    if kill_at is None and not count:
        cmd = [sys.executable, "-m", "rnas.cli", *args]
    else:
        env["RNAS_KILL_AT"] = str(kill_at or 0)
        cmd = [sys.executable, str(project / "killer.py"), *args]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)


def _steps_called(out: subprocess.CompletedProcess) -> int:
    """Training/search steps the wrapped process ran (the wrapper's own count, not the code's)."""
    return int(out.stderr.rsplit("STEPS_CALLED=", 1)[1].split()[0])


def _runs(project: Path) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(project / "mlflow.db")
    rows = db.execute("select run_uuid, name, status from runs").fetchall()
    db.close()
    return rows


def _metric_steps(project: Path, run_id: str, key: str) -> list[int]:
    db = sqlite3.connect(project / "mlflow.db")
    rows = db.execute("select step from metrics where run_uuid=? and key=? order by step", (run_id, key)).fetchall()
    db.close()
    return [s for (s,) in rows]


@pytest.mark.slow
def test_teacher_killed_mid_epoch_resumes_bit_exact_and_continues_its_mlflow_run(tmp_path):
    ref = _project(tmp_path / "ref")
    assert _rnas(ref, "teacher").returncode == 0
    proj = _project(tmp_path / "killed")
    # tiny digits: 1293 training examples / batch 64 = 21 steps per epoch; step 30 is mid-epoch 2
    killed = _rnas(proj, "teacher", kill_at=30)
    assert killed.returncode == -signal.SIGKILL
    state = proj / "results/.state/digits/teacher/teacher"
    assert (state / "last.pt").exists()
    assert checkpointed_epochs(state) == 1  # epoch 1 (steps 1-21) saved, killed at step 30 of epoch 2
    resumed = _rnas(proj, "teacher", count=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # only epochs 2 and 3 ran again: 3 x 21 steps in all, 21 of them in the checkpoint
    assert _steps_called(resumed) == 3 * 21 - 21
    assert (
        f"teacher: resuming from epoch 1/3 (checkpoint {Path('results/.state/digits/teacher/teacher/last.pt')}"
        in resumed.stderr
    )
    assert "teacher: ran 42 training steps in this process (epochs 2-3 of 3)" in resumed.stderr
    a = torch.load(ref / "results/digits/teacher/model.pt", weights_only=True)["state_dict"]
    b = torch.load(proj / "results/digits/teacher/model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((ref / "results/digits/teacher/train.json").read_text())["history"]
    hb = json.loads((proj / "results/digits/teacher/train.json").read_text())["history"]
    assert ha == hb
    runs = _runs(proj)
    assert len(runs) == 1, runs  # the resume continued its own run
    assert runs[0][2] == "FINISHED"
    assert _metric_steps(proj, runs[0][0], "val_robust_acc") == [0, 1, 2]  # no duplicates


@pytest.mark.slow
def test_search_killed_mid_epoch_resumes_bit_exact(tmp_path, darts_search_reference):
    ref = darts_search_reference
    proj = _project(tmp_path / "killed")
    killed = _rnas(proj, "search", "--run", "darts", "--seed", "0", kill_at=25)  # 20 steps/epoch
    assert killed.returncode == -signal.SIGKILL
    state = proj / "results/.state/digits/darts/seed0/search"
    assert checkpointed_epochs(state) == 1
    resumed = _rnas(proj, "search", "--run", "darts", "--seed", "0", count=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _steps_called(resumed) == 3 * 20 - 20  # epochs 2 and 3 only, not a fresh start
    assert "search darts: resuming from epoch 1/3" in resumed.stderr
    assert "search darts: ran 40 search steps in this process (epochs 2-3 of 3)" in resumed.stderr
    for name in ("genotype.json", "alphas.json"):
        assert (ref / "results/digits/darts/seed0" / name).read_text() == (
            proj / "results/digits/darts/seed0" / name
        ).read_text()
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    ha = json.loads((ref / "results/digits/darts/seed0/search.json").read_text())["history"]
    hb = json.loads((proj / "results/digits/darts/seed0/search.json").read_text())["history"]
    assert strip(ha) == strip(hb)


@pytest.mark.slow
def test_sigterm_ends_the_mlflow_run_killed(tmp_path):
    proj = _project(tmp_path / "term", teacher={"train": {**tiny_params()["teacher"]["train"], "epochs": 50}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnas.cli", "teacher"],
        cwd=proj,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (proj / "results/.state/digits/teacher/teacher/last.pt").exists():
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM" in err
    assert [r[2] for r in _runs(proj)] == ["KILLED"]


def test_orphaned_running_run_is_marked_failed(tmp_path):
    import mlflow  # a dependency of the project: never a reason to skip

    from rnas.config import params_from_dict
    from rnas.tracking import experiment_name, reap_orphans, stage_run, tracking_uri

    p = tiny_params()
    p["tracking"]["store"] = str(tmp_path / "m.db")
    params = params_from_dict(p)
    client = mlflow.MlflowClient(tracking_uri(params.tracking))
    exp = client.create_experiment(experiment_name(params))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    orphan = client.create_run(exp, tags={"rnas.pid": str(dead.pid), "rnas.host": socket.gethostname()})
    alive = client.create_run(exp, tags={"rnas.pid": str(os.getpid()), "rnas.host": socket.gethostname()})
    with stage_run(params, "report", run="x", method="x", variant="x", seed=0, keys=("data",)):
        pass
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert reap_orphans(client, exp) == []


# -- checkpoints ---------------------------------------------------------------------


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a loadable checkpoint"),
        (lambda p: p.write_bytes(b"\0" * 4096), "not a loadable checkpoint"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: save_atomic({"epoch": 1}, p), "lacks keys"),
        (
            lambda p: p.write_bytes(pickle.dumps({"epoch": 1, "params_hash": "h", "x": _Payload()})),
            "not a loadable checkpoint",
        ),
    ],
)
def test_corrupt_checkpoints_are_refused_and_the_previous_one_used(tmp_path, corrupt, match):
    state = ResumeState(tmp_path / "s", params_hash="h")
    state.save({"epoch": 0, "w": torch.ones(3)})
    state.save({"epoch": 1, "w": torch.full((3,), 2.0)})
    corrupt(state.last)
    with pytest.raises(CheckpointError, match=match):
        load_checked(state.last, ResumeState.REQUIRED)
    good = state.load()
    assert good["epoch"] == 0 and torch.equal(good["w"], torch.ones(3))


def test_pickle_payload_is_never_executed(tmp_path, capfd):
    f = tmp_path / "evil.pt"
    buf = io.BytesIO()
    torch.save({"epoch": 1, "params_hash": "h", "x": _Payload()}, buf)
    f.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError):
        load_checked(f)
    assert "pwned" not in capfd.readouterr().out


def test_params_hash_mismatch_is_not_resumed_silently(tmp_path):
    ResumeState(tmp_path / "s", params_hash="old").save({"epoch": 3})
    with pytest.raises(CheckpointError, match="other params"):
        ResumeState(tmp_path / "s", params_hash="new").load()


KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys, torch
    from rnas.checkpoint import ResumeState
    state = ResumeState(sys.argv[1], params_hash="h")
    state.save({"epoch": 0, "w": torch.zeros(1000)})
    real_save = torch.save
    def dying_save(obj, f, *a, **k):
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = dying_save
    state.save({"epoch": 1, "w": torch.ones(1000)})
""")


def test_kill_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    script = tmp_path / "k.py"
    script.write_text(KILL_DURING_WRITE)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "s")], env=_env(), capture_output=True)
    assert out.returncode == -signal.SIGKILL
    stale = list((tmp_path / "s").glob(".*.tmp"))
    assert stale, "the killed write should have left its temporary behind"
    state = ResumeState(tmp_path / "s", params_hash="h").load()
    assert state["epoch"] == 0 and torch.equal(state["w"], torch.zeros(1000))
    assert not list((tmp_path / "s").glob(".*.tmp")), "the next start removes the stale temporary"


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(16, 1, 2, 2), torch.randint(0, 3, (16,))
    pair = TensorPair(x, y)
    cfg = TrainConfig(epochs=3, batch_size=8, perturbation=TrainConfig().perturbation.__class__(kind="clean"))
    calls = {"n": 0}

    def poisoned(model, x, y, logits):
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] > 2 else torch.zeros(())

    resume = ResumeState(tmp_path / "s", params_hash="h")
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        Trainer(model, cfg, torch.device("cpu"), seed=0, extra_loss=poisoned, resume=resume, progress=False).fit(
            pair, pair
        )
    state = resume.load()
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values())


# -- resume: only what the checkpoint lacks, and never a silent restart -------------


def _corrupt_both(state: ResumeState) -> dict[str, bytes]:
    state.last.write_bytes(state.last.read_bytes()[:100])
    state.prev.write_bytes(b"\0" * 4096)
    return {p.name: p.read_bytes() for p in (state.last, state.prev)}


def test_no_readable_checkpoint_is_an_error_and_the_files_are_left_alone(tmp_path):
    state = ResumeState(tmp_path / "s", params_hash="h")
    state.save({"epoch": 0, "w": torch.ones(3)})
    state.save({"epoch": 1, "w": torch.full((3,), 2.0)})
    before = _corrupt_both(state)
    with pytest.raises(CheckpointError) as err:
        state.load()
    message = str(err.value)
    assert str(state.folder) in message and "last.pt" in message and "prev.pt" in message
    assert "start over" in message
    assert {p.name: p.read_bytes() for p in state.folder.iterdir()} == before  # nothing removed or rewritten


def test_a_lone_unreadable_last_checkpoint_is_an_error(tmp_path):
    state = ResumeState(tmp_path / "s", params_hash="h")
    state.save({"epoch": 0})
    state.last.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint among last.pt"):
        state.load()
    assert state.last.read_bytes() == b"garbage"


def test_killed_between_the_two_generations_resumes_from_prev(tmp_path):
    # save() moves last.pt to prev.pt, then writes last.pt: a kill in between leaves prev.pt only
    state = ResumeState(tmp_path / "s", params_hash="h")
    state.save({"epoch": 0, "w": torch.ones(3)})
    os.replace(state.last, state.prev)
    good = state.load()
    assert good["epoch"] == 0 and state.loaded_from == state.prev


def _tiny_training(tmp_path: Path, epochs: int = 3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    pair = TensorPair(torch.rand(16, 1, 2, 2), torch.randint(0, 3, (16,)))  # batch 8: 2 steps per epoch
    cfg = TrainConfig(epochs=epochs, batch_size=8, perturbation=TrainConfig().perturbation.__class__(kind="clean"))
    return model, pair, cfg, ResumeState(tmp_path / "s", params_hash="h")


class _Killed(Exception):
    pass


def _counting_loss(calls: dict, kill_at: int | None = None):
    def extra(model, x, y, logits):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise _Killed
        return torch.zeros(())

    return extra


def test_trainer_resume_runs_only_the_remaining_epochs_and_says_so(tmp_path, caplog):
    model, pair, cfg, resume = _tiny_training(tmp_path)
    with pytest.raises(_Killed):  # killed at step 4 = the second step of epoch 2: epoch 1 is saved
        Trainer(
            model,
            cfg,
            torch.device("cpu"),
            seed=0,
            extra_loss=_counting_loss({"n": 0}, 4),
            resume=resume,
            progress=False,
            desc="teacher",
        ).fit(pair, pair)
    calls = {"n": 0}
    caplog.set_level("INFO")
    result = Trainer(
        model,
        cfg,
        torch.device("cpu"),
        seed=0,
        extra_loss=_counting_loss(calls),
        resume=resume,
        progress=False,
        desc="teacher",
    ).fit(pair, pair)
    assert calls["n"] == 3 * 2 - 2  # the steps actually run: epochs 2 and 3, not a fresh start
    assert (result.start_epoch, result.steps_run) == (1, 4)
    assert f"teacher: resuming from epoch 1/3 (checkpoint {resume.last}); epochs 2-3 to run" in caplog.text
    assert "teacher: ran 4 training steps in this process (epochs 2-3 of 3)" in caplog.text
    assert len(result.history) == 3


def test_trainer_refuses_unreadable_checkpoints_instead_of_restarting(tmp_path):
    model, pair, cfg, resume = _tiny_training(tmp_path)
    with pytest.raises(_Killed):  # killed in epoch 3: two generations saved
        Trainer(
            model,
            cfg,
            torch.device("cpu"),
            seed=0,
            extra_loss=_counting_loss({"n": 0}, 5),
            resume=resume,
            progress=False,
        ).fit(pair, pair)
    before = _corrupt_both(resume)
    calls = {"n": 0}
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        Trainer(
            model, cfg, torch.device("cpu"), seed=0, extra_loss=_counting_loss(calls), resume=resume, progress=False
        ).fit(pair, pair)
    assert calls["n"] == 0
    assert {p.name: p.read_bytes() for p in resume.folder.iterdir()} == before


def test_trainer_resumes_from_prev_when_last_is_corrupt(tmp_path, caplog):
    model, pair, cfg, resume = _tiny_training(tmp_path)
    with pytest.raises(_Killed):  # killed in epoch 3: last.pt = epoch 2, prev.pt = epoch 1
        Trainer(
            model,
            cfg,
            torch.device("cpu"),
            seed=0,
            extra_loss=_counting_loss({"n": 0}, 5),
            resume=resume,
            progress=False,
        ).fit(pair, pair)
    resume.last.write_bytes(b"\0" * 64)
    calls = {"n": 0}
    caplog.set_level("INFO")
    result = Trainer(
        model,
        cfg,
        torch.device("cpu"),
        seed=0,
        extra_loss=_counting_loss(calls),
        resume=resume,
        progress=False,
        desc="retrain darts",
    ).fit(pair, pair)
    assert calls["n"] == 4 and result.start_epoch == 1  # from prev.pt: epoch 1 done, 2 and 3 run
    assert f"retrain darts: resuming from epoch 1/3 (checkpoint {resume.prev})" in caplog.text


class _CountingSearch(SearchMethod):
    """A search method with one parameter that counts its steps (and can die at a given one)."""

    def __init__(self, kill_at: int | None = None):
        self.kill_at, self.calls = kill_at, 0

    def setup(self, ctx):
        super().setup(ctx)
        self.w = torch.zeros(1)

    def step(self, batch_w, batch_a, progress):
        self.calls += 1
        if self.calls == self.kill_at:
            raise _Killed
        self.w += 1
        return {"w": float(self.w)}

    def architecture(self):
        return {"w": float(self.w)}

    def state_dict(self):
        return {"w": self.w.clone()}

    def load_state_dict(self, state):
        self.w = state["w"].clone()


def test_search_resume_runs_only_the_remaining_epochs_and_says_so(tmp_path, caplog):
    from conftest import tiny_splits

    from rnas.config import params_from_dict
    from rnas.runs import resolve_run
    from rnas.search.loop import run_search

    p = tiny_params()
    p["search"].update(epochs=3, batch_size=8)
    params = params_from_dict(p)
    splits = tiny_splits(n_train=32)  # two halves of 16: 2 steps per epoch
    ctx = {"params": params, "run": resolve_run("darts"), "info": splits.info, "device": torch.device("cpu"), "seed": 0}
    resume = ResumeState(tmp_path / "s", params_hash="h")
    with pytest.raises(_Killed):
        run_search(_CountingSearch(kill_at=4), ctx, splits, resume=resume, progress=False, desc="search x")
    caplog.set_level("INFO")
    method = _CountingSearch()
    result = run_search(method, ctx, splits, resume=resume, progress=False, desc="search x")
    assert method.calls == 3 * 2 - 2 and (result.start_epoch, result.steps_run) == (1, 4)
    assert result.architecture == {"w": 6.0}  # the 2 checkpointed steps + the 4 run here
    assert f"search x: resuming from epoch 1/3 (checkpoint {resume.last}); epochs 2-3 to run" in caplog.text
    assert "search x: ran 4 search steps in this process (epochs 2-3 of 3)" in caplog.text


@pytest.mark.slow
def test_stage_with_unreadable_checkpoints_fails_naming_them(tmp_path):
    proj = _project(tmp_path / "p")
    state = proj / "results/.state/digits/teacher/teacher"
    state.mkdir(parents=True)
    (state / "last.pt").write_bytes(b"\0" * 128)
    (state / "prev.pt").write_bytes(b"")
    out = _rnas(proj, "teacher")
    assert out.returncode == 1, out.stderr[-2000:]
    assert (
        f"rnas teacher: {Path('results/.state/digits/teacher/teacher')}: no readable checkpoint among "
        f"last.pt, prev.pt" in out.stderr
    )
    assert (state / "last.pt").read_bytes() == b"\0" * 128 and (state / "prev.pt").read_bytes() == b""
    assert not (proj / "results/digits/teacher/model.pt").exists()
    assert [r[2] for r in _runs(proj)] == ["FAILED"]


def test_sigterm_during_an_mlflow_call_lets_the_call_finish_first():
    """A SIGTERM landing in an MLflow write used to interrupt it and leave the SQLite database
    locked, so the run could not be marked KILLED (the stage then exited 1, not 143)."""
    from rnas.signals import Terminated, install_sigterm_handler
    from rnas.tracking import DeferringClient

    calls = []

    class Store:
        def write(self, value):
            os.kill(os.getpid(), signal.SIGTERM)  # delivered at once, inside the call
            calls.append(value)
            return value

    previous = signal.getsignal(signal.SIGTERM)
    install_sigterm_handler()
    try:
        client = DeferringClient(Store())
        with pytest.raises(Terminated):
            client.write("metrics")
        assert calls == ["metrics"]  # finished before Terminated was raised
        with pytest.raises(Terminated):  # outside a call it is raised at once, as before
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_during_a_file_write_lets_the_write_finish_first(tmp_path):
    """A SIGTERM landing inside torch.save (a checkpoint) cut the zip writer mid-record; its
    "unexpected pos" error replaced Terminated and the stage exited 1, not 143 (seen in CI's
    forkserver SIGTERM test). Every atomic write now completes, then Terminated is raised; the
    previous file stays until the new one is whole."""
    import torch

    from rnas.checkpoint import save_atomic
    from rnas.io import atomic_save
    from rnas.signals import Terminated, install_sigterm_handler

    path = tmp_path / "last.pt"
    save_atomic({"epoch": 0}, path)

    def writer(fh):
        fh.write(b"first half ")
        os.kill(os.getpid(), signal.SIGTERM)  # delivered at once, inside the write
        fh.write(b"second half")

    previous = signal.getsignal(signal.SIGTERM)
    install_sigterm_handler()
    try:
        with pytest.raises(Terminated):
            atomic_save(tmp_path / "out.bin", writer)
        assert (tmp_path / "out.bin").read_bytes() == b"first half second half"

        state = {"epoch": 1, "w": torch.arange(10_000.0)}

        def save_and_signal(fh):
            os.kill(os.getpid(), signal.SIGTERM)
            torch.save(state, fh)

        with pytest.raises(Terminated):
            atomic_save(path, save_and_signal)
        loaded = torch.load(path, weights_only=True)
        assert loaded["epoch"] == 1 and torch.equal(loaded["w"], state["w"])
        assert not list(tmp_path.glob(".*.tmp"))  # no temporary left behind
    finally:
        signal.signal(signal.SIGTERM, previous)
