"""Workflow level: Snakemake and dvc see the same DAG from the same description (rnas.dag); the
params are Snakemake's own config; every file a stage writes or reads is declared; editing a
module re-runs exactly the stages that execute it, under both runners; a tiny pipeline runs end
to end. The DAG tests run the runners for real with a stand-in ``rnas`` command that writes a
stage's declared outputs in milliseconds."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, tiny_params

from rnas import dag, paths
from rnas.config import load_params
from rnas.runs import resolve_run

BIN = Path(sys.executable).parent
FULL_RUNS = yaml.safe_load((ROOT / "configs" / "digits_full.yaml").read_text())["pipeline"]["runs"]

# Stands in for the `rnas` command: writes the outputs the DAG declares for the stage (so a wrong
# declaration fails the runner), logs the call; dvc-yaml is the real one, the MLflow hooks no-ops.
FAKE_RNAS = """#!{python}
import sys
from pathlib import Path

from rnas import dag, paths
from rnas.cli import main
from rnas.config import load_params

argv = sys.argv[1:]
if argv[0] not in ("teacher", "search", "retrain", "evaluate", "alternative", "report"):
    sys.exit(main(argv) if argv[0] == "dvc-yaml" else 0)
stage, opts = argv[0], dict(zip(argv[1::2], argv[2::2]))
params = load_params(opts.get("--params", "params.yaml"))
run, seed = opts.get("--run", paths.TEACHER), int(opts.get("--seed", 0))
outs = {{"teacher": lambda: [paths.teacher_model(params), paths.train_log(params, paths.TEACHER, 0)],
        "search": lambda: dag.search_outputs(params, run, seed),
        "retrain": lambda: [paths.model_file(params, run, seed), paths.train_log(params, run, seed)],
        "evaluate": lambda: [paths.eval_file(params, run, seed), paths.flags_file(params, run, seed)],
        "alternative": lambda: [paths.alternative_dir(params, run, seed) / "summary.json"],  # its folder
        "report": lambda: dag.report_outputs(params)}}[stage]()
for out in map(Path, outs):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('{{"clean_acc": 0.5}}\\n' if out.name == "eval.json" else "[]\\n")
with open("calls.log", "a") as fh:
    fh.write(f"{{stage}} {{run}} {{seed}}\\n")
"""


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env["GIT_PYTHON_REFRESH"] = "quiet"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def _run(cmd: list[str], cwd: Path, timeout: int = 900, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    if ok:
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _snakemake(project: Path, *args: str, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
    snakefile = project / "Snakefile" if (project / "Snakefile").exists() else ROOT / "Snakefile"
    return _run(
        [str(BIN / "snakemake"), "--snakefile", str(snakefile), "--directory", str(project), *args],
        cwd=project,
        ok=ok,
        **env,
    )


def _dvc(project: Path, *args: str, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
    return _run([str(BIN / "dvc"), *args], cwd=project, ok=ok, **env)


def _servers_in(project: Path) -> list:
    """Fork servers (rnas/forkserver.py) still running in ``project``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        if "rnas.forkserver" in " ".join(proc.info["cmdline"] or ()) and proc.info["cwd"] == str(project):
            found.append(proc)
    return found


def _planned(dry_run_output: str) -> Counter:
    """Job stats of ``snakemake -n``: rule -> count (without the total)."""
    stats = dry_run_output.split("Job stats:")[-1]
    return Counter(
        {
            line.split()[0]: int(line.split()[1])
            for line in stats.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit() and line.split()[0] != "total"
        }
    )


def _snakemake_jobs(dry_run_output: str) -> set[tuple[str, str, int]]:
    """(stage, run, seed) of every stage job a dry run plans."""
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not m or m[1] == "all":
            continue
        w = dict(re.findall(r"(\w+)=([\w.]+)", (re.search(r"wildcards: (.*)", block) or [""])[0]))
        stage = "search" if m[1].startswith("search_") else m[1]
        run, seed = w.get("run", "teacher" if stage in ("teacher", "evaluate_teacher") else "-"), int(w.get("seed", 0))
        jobs.add(("evaluate" if stage == "evaluate_teacher" else stage, run, seed))
    return jobs


def _dvc_jobs(names: list[str]) -> set[tuple[str, str, int]]:
    jobs = set()
    for name in names:
        group, _, key = name.partition("@")
        if group == "evaluate":
            run, _, seed = key.rpartition("-")
            jobs.add(("evaluate", run, int(seed)))
        elif group in ("teacher", "evaluate_teacher"):
            jobs.add(("evaluate" if group == "evaluate_teacher" else "teacher", "teacher", 0))
        elif group == "report":
            jobs.add(("report", "-", 0))
        else:
            stage, _, run = group.partition("_")
            jobs.add((stage, run, int(key)))
    return jobs


def _tiny(runs: tuple[str, ...] = ("darts", "random")) -> dict:
    """conftest.tiny_params for these runs and seed 0; LRNAS estimates contributions from the first epoch."""
    p = tiny_params(runs=runs)
    p["pipeline"]["seeds"] = [0]
    p["search"]["methods"]["lrnas"]["warmup_epochs"] = 0
    return p


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with :func:`_tiny` params (darts, random; one seed)."""
    _write_params(tmp_path, _tiny())
    return tmp_path


def _write_params(project: Path, params: dict) -> Path:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project / "params.yaml"


def _code_project(path: Path, params: dict) -> tuple[Path, dict]:
    """A project folder with its own copy of the package and the workflow, and the environment
    that runs them with the stand-in ``rnas`` (PYTHONPATH points at the copy)."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "rnas", path / "rnas", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "workflow", path / "workflow")
    shutil.copy(ROOT / "Snakefile", path / "Snakefile")
    _write_params(path, params)
    fake = path.parent / f"{path.name}_bin" / "rnas"
    fake.parent.mkdir()
    fake.write_text(FAKE_RNAS.format(python=sys.executable))
    fake.chmod(0o755)
    return path, {"PYTHONPATH": str(path), "PATH": f"{fake.parent}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"}


def _dvc_init(project: Path, scm: bool = False, **env: str) -> None:
    if scm:
        for cmd in (["init", "-q"], ["config", "user.email", "t@example.org"], ["config", "user.name", "t"]):
            _run(["git", *cmd], cwd=project)
    _dvc(project, "init", "-q", *([] if scm else ["--no-scm"]), **env)
    _dvc(project, "config", "core.analytics", "false", **env)


def _git_commit(project: Path, message: str) -> None:
    _run(["git", "add", "-A"], cwd=project)
    _run(["git", "commit", "-qm", message], cwd=project)


def _changed_stages(status_output: str) -> set[str]:
    return {line[:-1] for line in status_output.splitlines() if line and not line[0].isspace() and line.endswith(":")}


# --------------------------------------------------------------------------------------------
# The description (no runner)


def test_code_inputs_follow_imports_and_keep_methods_apart():
    from rnas.search.methods import METHODS

    assert dag.method_modules() == {name: cls.__module__ for name, cls in METHODS.items()}
    lrnas = "rnas/search/methods/lrnas.py"
    for stage in ("teacher", "retrain", "evaluate", "report"):
        code = dag.code_inputs(stage, root=ROOT)
        assert "rnas/config.py" in code and "rnas/cli.py" in code and f"rnas/stages/{stage}.py" in code
        assert not [f for f in code if f.startswith("rnas/search/methods/") and not f.endswith("__init__.py")], stage
        assert "rnas/dag.py" not in code  # the runners' description re-runs nothing
    assert lrnas in dag.code_inputs("search", "lrnas", ROOT) and lrnas in dag.code_inputs("search", "lrnas_10k", ROOT)
    assert "rnas/search/shapley.py" in dag.code_inputs("search", "lrnas", ROOT)
    darts = dag.code_inputs("search", "darts", ROOT)
    assert lrnas not in darts and "rnas/search/shapley.py" not in darts and "rnas/search/methods/darts.py" in darts
    assert "rnas/bounds/interval.py" in dag.code_inputs("search", "dsrna_cb", ROOT)
    assert "rnas/bounds/interval.py" in dag.code_inputs("evaluate", root=ROOT)
    assert "rnas/bounds/interval.py" not in darts
    assert not any(f.startswith("rnas/report/") for f in dag.code_inputs("retrain", root=ROOT))
    assert all(Path(ROOT / f).is_file() for f in dag.code_inputs("report", root=ROOT))
    # a folder outside the package gets absolute paths
    assert all(Path(f).is_absolute() for f in dag.code_inputs("teacher", root="/nonexistent"))


def test_local_snakemake_gets_a_wide_rate_window_and_exits_without_waiting():
    """A local run that kept Snakemake's default job-rate window (a scheduling round once a
    second besides the job events) gets one minute; any other window is kept; the timers left
    at the end are cancelled, so the process need not wait for them."""
    import threading
    import types

    from snakemake.settings.types import MaxJobsPerTimespan

    def workflow(limit):
        return types.SimpleNamespace(scheduling_settings=types.SimpleNamespace(max_jobs_per_timespan=limit))

    default = workflow(MaxJobsPerTimespan.parse_choice("100/1s"))  # the CLI's default, parsed as it parses it
    assert dag.widen_rate_window(default)
    limit = default.scheduling_settings.max_jobs_per_timespan
    assert (limit.max_jobs, limit.timespan) == dag.LOCAL_RATE_WINDOW
    chosen = workflow(MaxJobsPerTimespan.parse_choice("50/10s"))
    assert not dag.widen_rate_window(chosen)
    assert chosen.scheduling_settings.max_jobs_per_timespan.max_jobs == 50
    assert not dag.widen_rate_window(workflow(None)) and not dag.widen_rate_window(types.SimpleNamespace())

    fired = threading.Event()
    timer = threading.Timer(60.0, fired.set)
    timer.start()
    assert dag.cancel_timers() >= 1
    timer.join(timeout=5)
    assert not timer.is_alive() and not fired.is_set()


def test_code_inputs_include_data_files_beside_the_modules(tmp_path, monkeypatch):
    """A template next to the report's modules (a package data file) is an input of the report."""
    pkg = tmp_path / "rnas"
    shutil.copytree(ROOT / "rnas", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "report" / "templates").mkdir(exist_ok=True)
    (pkg / "report" / "templates" / "x.html.j2").write_text("{{ x }}")
    monkeypatch.setattr(dag, "PACKAGE", pkg)
    for f in (dag._modules, dag._imports, dag._code_files, dag.method_modules):
        f.cache_clear()
    try:
        assert "rnas/report/templates/x.html.j2" in dag.code_inputs("report", root=tmp_path)
        assert "rnas/report/templates/x.html.j2" not in dag.code_inputs("teacher", root=tmp_path)
    finally:
        monkeypatch.undo()
        for f in (dag._modules, dag._imports, dag._code_files, dag.method_modules):
            f.cache_clear()


def test_every_run_declares_the_files_its_search_writes():
    from rnas.runs import RUNS
    from rnas.search.methods import METHODS

    kinds = {dag.search_kind(run) for run in RUNS if resolve_run(run).arch_from is None}
    assert kinds == set(dag.SEARCH_FILES)  # every kind is used, every search has one
    assert {resolve_run(run).method for run in RUNS} == set(METHODS)
    for run in RUNS:
        source = paths.arch_source(run)
        files = dag.SEARCH_FILES[dag.search_kind(source)]
        assert resolve_run(source).arch_file in files and "search.json" in files, run
        assert ("tutors.json" in files) == (resolve_run(source).distill), run  # retraining reads them
    p = load_params(ROOT / "configs" / "digits_full.yaml")
    inputs = set(dag.report_inputs(p))
    assert str(paths.run_dir(p, "lrnas", 0) / "contributions.png") in inputs
    assert str(paths.run_dir(p, "rnas_cl", 0) / "tutor_map.png") in inputs
    assert str(paths.run_dir(p, "darts", 0) / "alphas.json") in inputs
    assert str(paths.run_dir(p, "rnas_cl_nokd", 0) / "search.json") not in inputs  # an ablation has none


def test_conda_env_pins_what_pyproject_pins():
    env = yaml.safe_load((ROOT / "workflow" / "envs" / "rnas.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(pip) == sorted(project["dependencies"])
    assert any(str(d).startswith("python=") for d in env["dependencies"])
    assert (ROOT / "workflow" / "envs" / "rnas.post-deploy.sh").read_text().count("pip install --no-deps -e .") == 1


def test_committed_dvc_yaml_is_up_to_date():
    params = load_params(ROOT / "params.yaml")
    assert dag.dvc_yaml_problems(ROOT / "dvc.yaml", params) == [], "regenerate with: rnas dvc-yaml --out dvc.yaml"
    committed = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert committed == dag.dvc_yaml(params, root=ROOT), "regenerate with: rnas dvc-yaml --out dvc.yaml"


def test_dvc_yaml_templates_over_params_yaml_and_lists_each_stages_keys():
    d = dag.dvc_yaml(load_params(ROOT / "params.yaml"), root=ROOT)
    stages = d["stages"]
    darts = stages["search_darts"]
    assert darts["foreach"] == "${pipeline.seeds}"
    assert "--seed ${item}" in darts["do"]["cmd"]
    assert "${pipeline.results}/${data.dataset}/darts/seed${item}/genotype.json" in darts["do"]["outs"]
    assert stages["evaluate"]["matrix"] == {
        "run": list(load_params(ROOT / "params.yaml").pipeline.runs),
        "seed": "${pipeline.seeds}",
    }
    assert "search.methods.darts" in darts["do"]["params"]
    assert not any(k.startswith("search.methods.random") for k in darts["do"]["params"])
    assert "teacher" not in darts["do"]["params"]
    assert not any(k.startswith("evaluate") for k in stages["retrain_darts"]["do"]["params"])
    assert "rnas/search/methods/darts.py" in darts["do"]["deps"]
    assert "rnas/search/methods/lrnas.py" not in darts["do"]["deps"]
    assert "rnas/search/methods/lrnas.py" in stages["search_lrnas"]["do"]["deps"]
    assert stages["report"]["cmd"].startswith("rnas dvc-yaml --params params.yaml --check dvc.yaml && ")
    for metric in stages["evaluate"]["metrics"]:  # git keeps their history (.gitignore)
        assert list(metric.values()) == [{"cache": False}]
    probe = ROOT / "results" / "digits" / "some_run" / "seed3" / "eval.json"
    assert _run(["git", "check-ignore", "-q", str(probe)], cwd=ROOT, ok=False).returncode == 1
    assert _run(["git", "check-ignore", "-q", str(probe.with_name("model.pt"))], cwd=ROOT, ok=False).returncode == 0


@pytest.mark.slow
def test_dvc_yaml_check_names_what_changed(tmp_path):
    p = _tiny()
    _write_params(tmp_path, p)
    (tmp_path / "dvc.yaml").write_text(dag.render_dvc_yaml(load_params(tmp_path / "params.yaml"), root=tmp_path))
    check = [sys.executable, "-m", "rnas.cli", "dvc-yaml", "--check", "dvc.yaml"]
    assert _run(check, cwd=tmp_path).returncode == 0
    p["pipeline"]["seeds"] = [0, 1, 2]  # templated: the same file
    _write_params(tmp_path, p)
    assert _run(check, cwd=tmp_path).returncode == 0
    p["pipeline"]["runs"] = ["darts", "lrnas"]
    _write_params(tmp_path, p)
    out = _run(check, cwd=tmp_path, ok=False)
    assert out.returncode == 1
    assert "stage 'search_lrnas' is missing" in out.stderr and "'retrain_random' is not in the pipeline" in out.stderr
    assert "rnas dvc-yaml --params params.yaml --out dvc.yaml" in out.stderr


# --------------------------------------------------------------------------------------------
# Snakemake


def test_snakemake_lint_is_clean(project):
    out = _snakemake(project, "--lint", ok=False)
    assert out.returncode == 0 and "Congratulations, your workflow is in a good condition" in out.stdout + out.stderr, (
        out.stdout[-3000:] + out.stderr[-3000:]
    )


def test_snakemake_plans_the_full_profile_from_its_configfile(tmp_path):
    text = _snakemake(tmp_path, "-n", "--configfile", str(ROOT / "configs" / "digits_full.yaml")).stdout
    p = load_params(ROOT / "configs" / "digits_full.yaml")
    n = len(p.pipeline.seeds)
    searches = Counter(f"search_{dag.search_kind(r)}" for r in p.pipeline.runs if resolve_run(r).arch_from is None)
    want = Counter(
        {
            **{k: v * n for k, v in searches.items()},
            "retrain": len(p.pipeline.runs) * n,
            "evaluate": len(p.pipeline.runs) * n,
            "alternative": len(dag.alternative_runs(p)) * n,
            "teacher": 1,
            "evaluate_teacher": 1,
            "report": 1,
            "all": 1,
        }
    )
    assert _planned(text) == want, text[-3000:]
    assert len(FULL_RUNS) == 14 and want["search_cell_lrnas"] == 3 * n  # lrnas, lrnas_10k, lrnas_15k
    # the gradient cell searches: darts, rnas, rnas_adv, rnas_cl_cell, the three dsrna variants
    assert want["alternative"] == 7 * n


@pytest.mark.slow
def test_snakemake_config_overrides_validate_and_reach_the_commands(project):
    p = _tiny()
    one = _planned(_snakemake(project, "-n").stdout)
    two = _planned(_snakemake(project, "-n", "--config", "pipeline={seeds: [0, 1]}").stdout)
    assert two["retrain"] == 2 * one["retrain"] == 4 and two["evaluate"] == 4 and two["teacher"] == 1
    for bad, key in (
        ("evaluate={n_examples: 0}", "n_examples"),
        ("pipeline={runs: [darts, nosuch]}", "nosuch"),
        ("data={val_fraction: 0.95}", "val_fraction"),
    ):
        out = _snakemake(project, "-n", "--config", bad, ok=False)
        assert out.returncode != 0 and key in out.stdout + out.stderr, bad
    # the file the commands read holds exactly the merged, validated config, under its digest
    shutil.rmtree(project / "results", ignore_errors=True)
    other = project / "other.yaml"
    other.write_text(yaml.safe_dump({"evaluate": {"n_examples": 12}}))
    out = _snakemake(
        project,
        "-n",
        "-p",
        "--configfile",
        str(other),
        "--config",
        "tracking={enabled: false}",
        "pipeline={seeds: [3]}",
    )
    written = list((project / "results" / ".params").glob("*.yaml"))
    assert len(written) == 1 and 'rnas teacher --params "$RNAS_WORKFLOW_PARAMS"' in out.stdout
    q = json.loads(json.dumps(p))
    q["evaluate"]["n_examples"], q["tracking"]["enabled"], q["pipeline"]["seeds"] = 12, False, [3]
    expected = project / "expected.yaml"
    expected.write_text(yaml.safe_dump(q, sort_keys=False))
    assert load_params(written[0]) == load_params(expected)
    _snakemake(
        project, "-n", "--configfile", str(other), "--config", "tracking={enabled: false}", "pipeline={seeds: [3]}"
    )
    assert list((project / "results" / ".params").glob("*.yaml")) == written  # the same params, the same file


def test_stages_run_in_order_of_their_priority(tmp_path):
    """Every job carries its stage's priority (rnas.dag.STAGE_PRIORITY): among ready jobs the
    teacher goes first, then searches, retraining, evaluation, so no search is left to start
    when only evaluations remain (its chain would then run alone at the end)."""
    p = _tiny(("darts", "rnas_cl"))
    _write_params(tmp_path, p)
    out = _snakemake(tmp_path, "-n").stdout
    seen = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if m and m[1] != "all":
            stage = "search" if m[1].startswith("search_") else m[1].replace("evaluate_teacher", "evaluate")
            priority = re.search(r"priority: (\d+)", block)
            seen.setdefault(stage, set()).add(int(priority[1]) if priority else 0)
    assert seen == {stage: {dag.STAGE_PRIORITY[stage]} for stage in seen}
    assert set(seen) == {"teacher", "search", "retrain", "evaluate", "report"}
    order = dag.STAGE_PRIORITY
    assert order["teacher"] > order["search"] > order["retrain"] > order["evaluate"] >= order["report"]


def test_slurm_profile_sizes_every_cluster_rule(project):
    rules = set(_snakemake(project, "--list-rules").stdout.split())
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert set(profile["set-resources"]) == rules - {"all", "report"}  # the local ones
    for rule in (ROOT / "workflow" / "rules").glob("*.smk"):
        assert "mem_mb" not in rule.read_text() and "runtime=" not in rule.read_text(), rule


def test_every_report_item_has_its_own_caption():
    captions = ROOT / "workflow" / "report"
    p = load_params(ROOT / "configs" / "digits_full.yaml")
    for png in paths.report_plots(p):
        assert dag.plot_caption(png, captions) != "plot.rst", f"add workflow/report/{png.stem}.rst"
    for files in dag.SEARCH_FILES.values():
        for name in files:
            if name.endswith(".png"):
                assert (captions / name.replace(".png", ".rst")).is_file(), name
    assert (captions / "workflow.rst").is_file() and (captions / "report.rst").is_file()


# --------------------------------------------------------------------------------------------
# Both runners


@pytest.mark.slow
def test_both_runners_plan_the_same_jobs(tmp_path):
    p = _tiny(("darts", "random", "lrnas", "lrnas_10k", "rnas_cl", "rnas_cl_nokd", "rnas_cl_cell"))
    p["pipeline"]["seeds"] = [0, 1]
    p["pipeline"]["alternative_cells"] = True  # darts and rnas_cl_cell: an alternative job per seed
    _write_params(tmp_path, p)
    snake = _snakemake_jobs(_snakemake(tmp_path, "-n").stdout)
    (tmp_path / "dvc.yaml").write_text(dag.render_dvc_yaml(load_params(tmp_path / "params.yaml"), root=tmp_path))
    _dvc_init(tmp_path)
    names = _dvc(tmp_path, "stage", "list", "--name-only").stdout.split()
    assert _dvc_jobs(names) == snake
    # teacher (+eval), 6 searches (lrnas_10k's selects from lrnas's), 7 retrain + evaluate, 2 alternatives, report
    assert len(snake) == 2 + 6 * 2 + 7 * 2 * 2 + 2 * 2 + 1
    assert {("alternative", "darts", 1), ("alternative", "rnas_cl_cell", 0)} <= snake
    # a fresh project: dvc status lists every stage, a dry run writes nothing
    status = _changed_stages(_dvc(tmp_path, "status").stdout)
    assert {
        "teacher",
        "evaluate_teacher",
        "search_darts@1",
        "retrain_rnas_cl_nokd@0",
        "evaluate@random-1",
        "report",
    } <= status
    dry = _dvc(tmp_path, "repro", "--dry", "teacher").stdout
    assert "Running stage 'teacher'" in dry and "rnas teacher" in dry
    assert not (tmp_path / "results" / "digits").exists()


@pytest.mark.slow
def test_editing_a_module_reruns_exactly_what_executes_it_with_snakemake(tmp_path):
    p = _tiny(("darts", "random", "lrnas"))
    proj, env = _code_project(tmp_path / "proj", p)
    _snakemake(proj, "--cores", "1", **env)
    assert "Nothing to be done" in _snakemake(proj, "-n", **env).stdout

    def plan_after_touching(module: str) -> Counter:
        """Edit the module (Snakemake compares the checksums of small inputs newer than the outputs,
        so a bare `touch` re-runs nothing), plan, and restore it."""
        text = (proj / module).read_text()
        (proj / module).write_text(text + "\n# edited\n")
        try:
            return _planned(_snakemake(proj, "-n", **env).stdout)
        finally:
            (proj / module).write_text(text)

    assert plan_after_touching("rnas/search/methods/lrnas.py") == Counter(
        {"search_cell_lrnas": 1, "retrain": 1, "evaluate": 1, "report": 1, "all": 1}
    )
    assert plan_after_touching("rnas/report/table.py") == Counter({"report": 1, "all": 1})
    assert plan_after_touching("rnas/evaluation/attacks.py")["evaluate_teacher"] == 1  # the teacher's too
    everything = plan_after_touching("rnas/config.py")
    assert everything["teacher"] == 1 and everything["retrain"] == 3 and everything["search_cell"] == 1
    assert "Nothing to be done" in _snakemake(proj, "-n", **env).stdout


@pytest.mark.slow
def test_editing_a_module_reruns_exactly_what_executes_it_with_dvc(tmp_path):
    p = _tiny(("random", "lrnas"))  # two runs: dvc costs ~4 s a stage
    proj, env = _code_project(tmp_path / "proj", p)
    _run([sys.executable, "-m", "rnas.cli", "dvc-yaml", "--out", "dvc.yaml"], cwd=proj, **env)
    (proj / ".gitignore").write_text("calls.log\n")
    _dvc_init(proj, scm=True, **env)
    _dvc(proj, "repro", **env)
    _git_commit(proj, "pipeline")
    assert "Data and pipelines are up to date" in _dvc(proj, "status", **env).stdout
    lrnas = proj / "rnas" / "search" / "methods" / "lrnas.py"
    text = lrnas.read_text()
    lrnas.write_text(text + "\n# edited\n")
    # the report executes no method's code: only the search is changed (the rest follows its outputs)
    assert _changed_stages(_dvc(proj, "status", **env).stdout) == {"search_lrnas@0"}
    lrnas.write_text(text)
    # the metrics are in git: a changed eval.json shows in `dvc metrics diff` against the commit
    (proj / "results" / "digits" / "random" / "seed0" / "eval.json").write_text('{"clean_acc": 0.75}\n')
    diff = _dvc(proj, "metrics", "diff", "HEAD", **env).stdout
    assert "clean_acc" in diff and "0.75" in diff and "random/seed0/eval.json" in diff
    _run(["git", "checkout", "-q", "--", "results"], cwd=proj)
    # a second seed through dvc's own templating: no new dvc.yaml, the new stages run
    (proj / "calls.log").unlink()
    out = _dvc(proj, "exp", "run", "-S", "pipeline.seeds=[0,1]", **env)
    calls = set((proj / "calls.log").read_text().splitlines())
    assert {"search random 1", "retrain lrnas 1", "evaluate random 1", "report teacher 0"} <= calls, out.stdout
    assert not any(line.endswith(" 0") and not line.startswith(("report", "evaluate teacher")) for line in calls)
    # an added run needs a new dvc.yaml: the run stops instead of running the old DAG
    out = _dvc(proj, "exp", "run", "-S", "pipeline.runs=[random,lrnas,dsrna_cb]", ok=False, **env)
    assert out.returncode != 0 and "rnas dvc-yaml --params params.yaml --out dvc.yaml" in out.stdout + out.stderr
    assert "dsrna_cb" not in (proj / "calls.log").read_text()


# --------------------------------------------------------------------------------------------
# The real pipeline


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_with_both_runners(project, tmp_path_factory):
    _snakemake(project, "--cores", "2")
    results = project / "results" / "digits"
    report = (project / "results" / "report.md").read_text()
    for run in ("teacher", "darts", "random"):
        assert f"\n| {run} " in report, report[:3000]  # a table row per run
    params = load_params(project / "params.yaml")
    for run in ("darts", "random"):
        ev = json.loads((results / run / "seed0" / "eval.json").read_text())
        for key in ("clean_acc", "fgsm_acc", "pgd20_acc", "robust_acc", "epsilon", "params", "macs", "n_examples"):
            assert key in ev, key
        for key in ("clean_acc", "fgsm_acc", "pgd20_acc", "autoattack_acc", "robust_acc"):
            if ev.get(key) is not None:  # an attack left out of evaluate.attacks records None
                assert 0.0 <= ev[key] <= ev["clean_acc"] + 1e-12 <= 1.0 + 1e-12, key
        assert ev["n_examples"] == 16
        # per-example results beside eval.json, agreeing with its accuracies
        from rnas.evaluation.flags import read_flags

        flags, _ = read_flags(results / run / "seed0" / "flags.json")
        assert flags["clean"].mean() == pytest.approx(ev["clean_acc"])
        assert flags["robust"].mean() == pytest.approx(ev["robust_acc"])
        # every file in the run folder is declared by the stage that wrote it
        declared = {Path(f).name for f in dag.search_outputs(params, run, 0)} | {
            "model.pt",
            "train.json",
            "eval.json",
            "flags.json",
        }
        assert {f.name for f in (results / run / "seed0").iterdir()} == declared, run
    assert "### Claims" in report and "`darts` is more robust than a random architecture" in report
    # every job ran in a worker of the invocation's fork server (rnas/forkserver.py), which is gone
    job_logs = list((project / "logs").rglob("*.log"))
    assert job_logs and all("rnas forkserver worker" in f.read_text() for f in job_logs), job_logs
    assert not _servers_in(project)
    assert "### Did the searches decide?" in report
    # MLflow store: one run per stage invocation, all FINISHED, tagged
    db = sqlite3.connect(project / "mlflow.db")
    statuses = db.execute("select status from runs").fetchall()
    db.close()
    assert len(statuses) >= 1 + 1 + 2 * 3  # teacher, teacher eval, 2 runs x (search, retrain, evaluate)
    assert {s for (s,) in statuses} == {"FINISHED"}
    # a Snakemake report with the plots and the HTML report as captioned items
    _snakemake(project, "--report", "report.zip")
    assert (project / "report.zip").stat().st_size > 10_000
    # second run: nothing to do (cached)
    again = _snakemake(project, "--cores", "2")
    assert "Nothing to be done" in again.stdout + again.stderr
    # an added run: its three jobs and the report (whose outputs gain a cell drawing) are planned
    added = project / "added.yaml"
    added.write_text(yaml.safe_dump({"pipeline": {"runs": ["darts", "random", "dsrna_jacobian"]}}))
    planned = _planned(_snakemake(project, "-n", "--configfile", str(added)).stdout)
    assert planned == Counter({"search_cell": 1, "retrain": 1, "evaluate": 1, "report": 1, "all": 1}), planned

    # dvc repro of one run's chain in a fresh copy produces the same files (the other stages are
    # the same commands; tests/test_workflow_kill.py and the editing test run dvc on whole DAGs)
    other = tmp_path_factory.mktemp("dvc")
    _write_params(other, yaml.safe_load((project / "params.yaml").read_text()))
    (other / "dvc.yaml").write_text(dag.render_dvc_yaml(load_params(other / "params.yaml"), root=other))
    _dvc_init(other)
    ran = _dvc(other, "repro", "evaluate@darts-0").stdout
    assert {"search_darts@0", "retrain_darts@0", "evaluate@darts-0"} <= set(re.findall(r"Running stage '([^']+)'", ran))
    for rel in ("darts/seed0/genotype.json", "darts/seed0/eval.json", "darts/seed0/flags.json"):
        a = json.loads((results / rel).read_text())
        b = json.loads((other / "results" / "digits" / rel).read_text())
        if rel.endswith("eval.json"):  # wall-clock timings differ between any two runs
            a = {k: v for k, v in a.items() if not k.endswith("_seconds")}
            b = {k: v for k, v in b.items() if not k.endswith("_seconds")}
        assert a == b, rel
    again = _dvc(other, "repro", "evaluate@darts-0")
    assert "Running stage" not in again.stdout, again.stdout[-1500:]
    # a changed evaluation param: of the chain, only the evaluation is out of date
    p = yaml.safe_load((other / "params.yaml").read_text())
    p["evaluate"]["n_examples"] = 12
    _write_params(other, p)
    status = _changed_stages(_dvc(other, "status", "--with-deps", "evaluate@darts-0").stdout)
    assert status == {"evaluate@darts-0"}, status
