"""Workflow level: SIGKILL the whole runner mid-search, recover the documented way, and get
exactly the files of an uninterrupted run (issue 8)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, kill_test_params
from rnas.config import load_params
from rnas.pipeline import dvc_yaml

BIN = Path(sys.executable).parent
TARGET = "results/digits/darts/seed0/genotype.json"
STATE = "results/.state/digits/darts/seed0/search/last.pt"
pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", GIT_PYTHON_REFRESH="quiet")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _project(path: Path) -> Path:
    p = kill_test_params()
    path.mkdir(parents=True)
    (path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def _snakemake(project: Path, *args: str, **kw):
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(project), *args]
    return subprocess.run(cmd, cwd=project, env=_env(), capture_output=True, text=True, timeout=900, **kw)


def _kill_group_when_checkpointed(cmd: list[str], project: Path) -> None:
    proc = subprocess.Popen(cmd, cwd=project, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (project / STATE).exists():
        assert proc.poll() is None, "the runner finished before it could be killed"
        time.sleep(0.2)
    assert (project / STATE).exists()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (project / TARGET).exists()


def _same_search_outputs(a: Path, b: Path) -> None:
    for name in ("genotype.json", "alphas.json"):
        assert (a / "results/digits/darts/seed0" / name).read_text() == \
            (b / "results/digits/darts/seed0" / name).read_text(), name


def test_snakemake_killed_mid_search_finishes_from_the_checkpoint(tmp_path, darts_search_reference):
    ref = darts_search_reference
    proj = _project(tmp_path / "killed")
    _kill_group_when_checkpointed([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
                                   "--cores", "1", TARGET], proj)
    assert _snakemake(proj, "--unlock").returncode == 0
    out = _snakemake(proj, "--cores", "1", "--rerun-incomplete", TARGET)
    assert out.returncode == 0, out.stderr[-3000:]
    _same_search_outputs(ref, proj)


def test_dvc_killed_mid_search_finishes_from_the_checkpoint(tmp_path, darts_search_reference):
    ref = darts_search_reference
    proj = _project(tmp_path / "dvc")
    (proj / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml(load_params(proj / "params.yaml")), sort_keys=False))
    for cmd in (["init", "--no-scm", "-q"], ["config", "core.analytics", "false"]):
        subprocess.run([str(BIN / "dvc"), *cmd], cwd=proj, env=_env(), check=True)
    _kill_group_when_checkpointed([str(BIN / "dvc"), "repro", "search_darts_seed0"], proj)
    out = subprocess.run([str(BIN / "dvc"), "repro", "search_darts_seed0"], cwd=proj, env=_env(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    _same_search_outputs(ref, proj)
