"""Workflow level: SIGKILL the whole runner mid-search, recover the documented way, and get
exactly the files of an uninterrupted run (issue 8). The runs are deterministic, so a recovery
that silently started the search over would give the same files: the recovered search's log must
also say it resumed from the checkpoint's epoch and ran only the remaining epochs' steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, checkpointed_epochs, kill_test_params

from rnas.config import load_params
from rnas.dag import render_dvc_yaml

BIN = Path(sys.executable).parent
TARGET = "results/digits/darts/seed0/genotype.json"
STATE = "results/.state/digits/darts/seed0/search/last.pt"
EPOCHS, STEPS_PER_EPOCH = 3, 20  # kill_test_params: 3 search epochs of 20 steps
pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", GIT_PYTHON_REFRESH="quiet")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _project(path: Path) -> Path:
    p = kill_test_params()
    p["tracking"]["enabled"] = False  # MLflow's part of a kill: tests/test_resilience.py
    path.mkdir(parents=True)
    (path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def _snakemake(project: Path, *args: str, **kw):
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(project), *args]
    return subprocess.run(cmd, cwd=project, env=_env(), capture_output=True, text=True, timeout=900, **kw)


def _kill_group_when_checkpointed(cmd: list[str], project: Path) -> int:
    """Start ``cmd``, SIGKILL its process group once the search has a checkpoint; returns the
    epochs that checkpoint holds (the newest readable generation, as the resume will read it)."""
    proc = subprocess.Popen(
        cmd, cwd=project, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 600
    while time.time() < deadline and not (project / STATE).exists():
        assert proc.poll() is None, "the runner finished before it could be killed"
        time.sleep(0.2)
    assert (project / STATE).exists()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (project / TARGET).exists()
    return checkpointed_epochs((project / STATE).parent)


def _resumed_not_restarted(log: str, done: int) -> None:
    """The recovered search logged its resume and ran exactly the epochs the checkpoint lacked."""
    assert f"search darts: resuming from epoch {done}/{EPOCHS} (checkpoint " in log, log[-3000:]
    assert f"search darts: ran {(EPOCHS - done) * STEPS_PER_EPOCH} search steps in this process" in log, log[-3000:]


def _same_search_outputs(a: Path, b: Path) -> None:
    for name in ("genotype.json", "alphas.json"):
        assert (a / "results/digits/darts/seed0" / name).read_text() == (
            b / "results/digits/darts/seed0" / name
        ).read_text(), name


def test_snakemake_killed_mid_search_finishes_from_the_checkpoint(tmp_path, darts_search_reference):
    ref = darts_search_reference
    proj = _project(tmp_path / "killed")
    done = _kill_group_when_checkpointed(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--cores", "1", TARGET], proj
    )
    assert _snakemake(proj, "--unlock").returncode == 0
    out = _snakemake(proj, "--cores", "1", "--rerun-incomplete", TARGET)
    assert out.returncode == 0, out.stderr[-3000:]
    _same_search_outputs(ref, proj)
    _resumed_not_restarted((proj / "logs/digits/darts/seed0/search.log").read_text(), done)


def test_dvc_killed_mid_search_finishes_from_the_checkpoint(tmp_path, darts_search_reference):
    ref = darts_search_reference
    proj = _project(tmp_path / "dvc")
    (proj / "dvc.yaml").write_text(render_dvc_yaml(load_params(proj / "params.yaml"), root=proj))
    for cmd in (["init", "--no-scm", "-q"], ["config", "core.analytics", "false"]):
        subprocess.run([str(BIN / "dvc"), *cmd], cwd=proj, env=_env(), check=True)
    done = _kill_group_when_checkpointed([str(BIN / "dvc"), "repro", "search_darts@0"], proj)
    out = subprocess.run(
        [str(BIN / "dvc"), "repro", "search_darts@0"], cwd=proj, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    _same_search_outputs(ref, proj)
    _resumed_not_restarted(out.stdout + out.stderr, done)
