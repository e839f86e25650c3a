"""Workflow level: Snakemake and dvc see the same DAG; a tiny pipeline runs end to end."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_workflow
from rnas.config import load_params
from rnas.pipeline import dvc_yaml

BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env["GIT_PYTHON_REFRESH"] = "quiet"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _snakemake(project: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(project),
                 *args], cwd=project)


def _dvc_project(project: Path) -> None:
    params = load_params(project / "params.yaml")
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml(params), sort_keys=False))
    _run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=project)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], cwd=project)


def test_committed_dvc_yaml_matches_params():
    params = load_params(ROOT / "params.yaml")
    committed = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert committed == dvc_yaml(params), "regenerate with: rnas dvc-yaml --out dvc.yaml"


def test_dvc_stages_list_exactly_the_keys_each_stage_reads():
    stages = dvc_yaml(load_params(ROOT / "params.yaml"))["stages"]
    assert "search.methods.darts" in stages["search_darts_seed0"]["params"]
    assert not any(k.startswith("search.methods.random") for k in stages["search_darts_seed0"]["params"])
    assert "teacher" not in stages["search_darts_seed0"]["params"]
    assert not any(k.startswith("evaluate") for k in stages["retrain_darts_seed0"]["params"])


def test_snakemake_dry_run_plans_every_stage(tiny_project):
    out = _snakemake(tiny_project, "-n", "--cores", "2")
    text = out.stdout + out.stderr
    for rule in ("teacher", "search_cell", "retrain", "evaluate", "evaluate_teacher", "report"):
        assert rule in text, text[-2000:]


def test_dvc_plans_every_stage(tiny_project):
    """On a fresh project `dvc repro --dry` stops at the first stage whose input does not exist
    yet (dvc issue #9021), so the whole plan is checked with `dvc dag` and `dvc status`, and
    `dvc repro --dry` is run on the first stage; the slow end-to-end test runs it on a built one."""
    _dvc_project(tiny_project)
    dag = _run([str(BIN / "dvc"), "dag", "--md"], cwd=tiny_project).stdout
    status = _run([str(BIN / "dvc"), "status"], cwd=tiny_project).stdout
    for stage in ("teacher", "evaluate_teacher", "search_darts_seed0", "retrain_random_seed0",
                  "evaluate_darts_seed0", "report"):
        assert stage in dag, dag
        assert f"{stage}:" in status, status
    dry = _run([str(BIN / "dvc"), "repro", "--dry", "teacher"], cwd=tiny_project).stdout
    assert "Running stage 'teacher'" in dry and "rnas teacher" in dry
    assert not (tiny_project / "results").exists()  # a dry run writes nothing


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_with_both_runners(tiny_project, tmp_path_factory):
    _snakemake(tiny_project, "--cores", "2")
    results = tiny_project / "results" / "digits"
    report = (tiny_project / "results" / "report.md").read_text()
    for run in ("teacher", "darts", "random"):
        assert f"\n| {run} " in report, report[:3000]  # a table row per run
    for run in ("darts", "random"):
        ev = json.loads((results / run / "seed0" / "eval.json").read_text())
        for key in ("clean_acc", "fgsm_acc", "pgd20_acc", "cw_acc", "autoattack_acc", "epsilon", "epsilon_l2",
                    "params", "macs", "n_examples"):
            assert key in ev, key
        for key in ("clean_acc", "fgsm_acc", "pgd20_acc", "autoattack_acc", "robust_acc"):
            assert 0.0 <= ev[key] <= 1.0
            assert ev[key] <= ev["clean_acc"] + 1e-12
        assert ev["n_examples"] == 16
        # per-example results beside eval.json, agreeing with its accuracies
        from rnas.evaluation.flags import read_flags

        flags, _ = read_flags(results / run / "seed0" / "flags.json")
        assert flags["clean"].mean() == pytest.approx(ev["clean_acc"])
        assert flags["robust"].mean() == pytest.approx(ev["robust_acc"])
    assert "### Claims" in report and "`darts` is more robust than a random architecture" in report
    assert "### Did the searches decide?" in report
    # MLflow store: one run per stage invocation, all FINISHED, tagged
    db = sqlite3.connect(tiny_project / "mlflow.db")
    statuses = db.execute("select status from runs").fetchall()
    db.close()
    assert len(statuses) >= 1 + 1 + 2 * 3  # teacher, teacher eval, 2 runs x (search, retrain, evaluate)
    assert {s for (s,) in statuses} == {"FINISHED"}
    # second run: nothing to do (cached)
    again = _snakemake(tiny_project, "--cores", "2")
    assert "Nothing to be done" in again.stdout + again.stderr
    # an added run: its three jobs and the report (whose outputs gain a cell drawing) are planned
    p = yaml.safe_load((tiny_project / "params.yaml").read_text())
    p["pipeline"]["runs"].append("dsrna_jacobian")
    added = tiny_project / "params_added.yaml"
    added.write_text(yaml.safe_dump(p, sort_keys=False))
    env = dict(_env(), RNAS_PARAMS=str(added))
    dry = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "-n"], cwd=tiny_project,
                         env=env, capture_output=True, text=True, timeout=300)
    stats = dry.stdout.split("Job stats:")[-1]
    planned = {line.split()[0]: int(line.split()[1]) for line in stats.splitlines()
               if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert planned == {"search_cell": 1, "retrain": 1, "evaluate": 1, "report": 1, "all": 1, "total": 5}, dry.stdout

    # dvc repro in a fresh copy produces the same files
    other = tmp_path_factory.mktemp("dvc")
    (other / "params.yaml").write_text((tiny_project / "params.yaml").read_text())
    _dvc_project(other)
    _run([str(BIN / "dvc"), "repro"], cwd=other)
    for rel in ("darts/seed0/genotype.json", "random/seed0/genotype.json", "darts/seed0/eval.json",
                "darts/seed0/flags.json"):
        a = json.loads((results / rel).read_text())
        b = json.loads((other / "results" / "digits" / rel).read_text())
        if rel.endswith("eval.json"):  # wall-clock timings differ between any two runs
            a = {k: v for k, v in a.items() if not k.endswith("_seconds")}
            b = {k: v for k, v in b.items() if not k.endswith("_seconds")}
        assert a == b, rel
    again = _run([str(BIN / "dvc"), "repro"], cwd=other)
    assert "Running stage" not in again.stdout, again.stdout[-1500:]
    # a changed evaluation param: the dry run plans exactly the evaluations and the report
    p = yaml.safe_load((other / "params.yaml").read_text())
    p["evaluate"]["n_examples"] = 12
    (other / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    dry = _run([str(BIN / "dvc"), "repro", "--dry"], cwd=other).stdout
    planned = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    assert planned == {"evaluate_teacher", "evaluate_darts_seed0", "evaluate_random_seed0", "report"}, dry
