"""Scale-out: the tiny pipeline runs through the SLURM profile on a real single-node SLURM.

``tests/slurm/setup.sh`` installs Debian's slurm-wlm and munge and the executor plugin
(``pip install -e '.[slurm]'``); :mod:`tests/slurm/cluster.py` starts munged, slurmctld and
slurmd on localhost in a temporary folder. The test then runs
``snakemake --profile workflow/profiles/slurm`` on the tiny params and checks that the report
exists and that SLURM itself ran the rules' jobs (``squeue --states=all`` and the job-completion
log list them). It skips, with the reason, only where the packages cannot be installed, and
under ``CI=true`` fails instead (:func:`conftest.require_or_skip`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, require_or_skip, tiny_params

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("RNAS_SKIP_SLURM") == "1", reason="RNAS_SKIP_SLURM=1 is set"),
]

BIN = Path(sys.executable).parent
SETUP = ROOT / "tests" / "slurm" / "setup.sh"


def _cluster_module():
    spec = importlib.util.spec_from_file_location("rnas_test_slurm_cluster", ROOT / "tests" / "slurm" / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ensure_installed() -> None:
    """Run tests/slurm/setup.sh when something is missing; skip if it cannot install (CI: fail)."""
    cluster = _cluster_module()
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401

        plugin = True
    except ImportError:
        plugin = False
    if plugin and not cluster.missing_binaries():
        return
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", str(SETUP)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    require_or_skip(
        out.returncode == 0,
        f"SLURM test packages cannot be installed here (tests/slurm/setup.sh exit {out.returncode}): "
        f"{(out.stderr or out.stdout).strip()[-400:]}",
    )
    importlib.invalidate_caches()
    missing = cluster.missing_binaries()
    require_or_skip(not missing, f"tests/slurm/setup.sh ran but {missing} are still missing")


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_slurm_that_cannot_be_installed_fails_under_ci_and_skips_locally(monkeypatch, ci, outcome):
    class NoSlurm:
        @staticmethod
        def missing_binaries():
            return ["slurmctld"]

    monkeypatch.setattr(sys.modules[__name__], "_cluster_module", lambda: NoSlurm)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 100, "", "apt-get: no"))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="SLURM test packages cannot be installed here"):
        _ensure_installed()


def test_tiny_pipeline_runs_through_the_slurm_profile(tmp_path: Path):
    _ensure_installed()
    cluster = _cluster_module()
    project = tmp_path / "project"
    project.mkdir()
    p = tiny_params(runs=("darts",))
    p["tracking"]["enabled"] = False  # ~5 s less per job; MLflow under Snakemake: tests/test_workflow.py
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    slurm = cluster.LocalSlurm(tmp_path / "slurm", cpus=2)
    try:
        slurm.start()
    except cluster.SlurmUnavailable as err:
        pytest.fail(f"the local SLURM cluster did not start: {err}")
    try:
        env = slurm.env()
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["OMP_NUM_THREADS"] = "1"
        env["GIT_PYTHON_REFRESH"] = "quiet"
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [
            str(BIN / "snakemake"),
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(project),
            "--profile",
            str(ROOT / "workflow" / "profiles" / "slurm"),
            # This cluster has no accounting database (no slurmdbd): no account to charge, and
            # job states come from squeue (finished jobs stay listed for MinJobAge seconds).
            "--slurm-no-account",
            "--slurm-status-command",
            "squeue",
            # the first status check after 1 s (then +10 s per check that finds nothing finished)
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--slurm-logdir",
            str(tmp_path / "slurm_logs"),
            "--slurm-keep-successful-logs",
        ]
        out = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=1800)
        text = out.stdout + out.stderr
        assert out.returncode == 0, f"snakemake through SLURM failed:\n{text[-4000:]}\n{slurm.logs()}"
        assert (project / "results" / "report.md").is_file()
        report = (project / "results" / "report.md").read_text()
        for run in ("teacher", "darts"):
            assert f"| {run} |" in report

        # SLURM ran the jobs: squeue still lists the finished ones, the completion log has them all.
        queue = subprocess.run(
            ["squeue", "--states=all", "--noheader", "--format=%i|%j|%T"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        completed = [line for line in queue if line.endswith("|COMPLETED")]
        jobcomp = (tmp_path / "slurm" / "jobcomp.txt").read_text()
        comp_ok = jobcomp.count("JobState=COMPLETED")
        # teacher, evaluate_teacher, search, retrain, evaluate (the report runs locally)
        assert len(completed) >= 5, f"squeue saw {queue}\n{text[-2000:]}"
        assert comp_ok >= 5, jobcomp[-2000:]
        assert "JobState=FAILED" not in jobcomp
        logs = list((tmp_path / "slurm_logs").rglob("*.log"))
        assert any("search_cell" in str(p) for p in logs), logs
    finally:
        slurm.stop()
