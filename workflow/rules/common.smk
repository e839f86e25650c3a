# Shared set-up: the params file, its validation (JSON schema, then the typed loader, which
# refuses bad values before any job starts), the MLflow store, and path patterns from rnas.paths.
import os
import shlex

from snakemake.utils import validate

from rnas import paths
from rnas.config import load_params, params_hash
from rnas.pipeline import stage_keys
from rnas.runs import resolve_run

PARAMS_FILE = os.environ.get("RNAS_PARAMS", "params.yaml")


configfile: PARAMS_FILE


validate(config, "../schemas/params.schema.json")
P = load_params(PARAMS_FILE)
RNAS = "rnas"
PFLAG = f"--params {shlex.quote(PARAMS_FILE)}"
DS_DIR = str(paths.dataset_dir(P))
LOGS = f"logs/{P.data.dataset}"
REPORT = str(paths.report_md(P))
TEACHER_MODEL = str(paths.teacher_model(P))
RUNS = list(P.pipeline.runs)
SEEDS = list(P.pipeline.seeds)
SPECS = {run: resolve_run(run) for run in RUNS}
CELL_RUNS = [r for r, s in SPECS.items() if s.space == "cell" and s.arch_from is None]
WIDTH_RUNS = [r for r, s in SPECS.items() if s.space == "width" and s.arch_from is None]


def run_regex(runs):
    return "|".join(sorted(runs, key=len, reverse=True)) or "(?!x)x"


wildcard_constraints:
    seed=r"\d+",
    run=run_regex(RUNS),


def key_hash(stage, run=None):
    return params_hash(P, stage_keys(stage, run))


def arch_of(run, seed):
    spec = SPECS[run]
    return str(paths.arch_file(P, spec.arch_from or run, int(seed)))


def teacher_dep(run):
    return [TEACHER_MODEL] if SPECS[run].needs_teacher else []


# The MLflow store is created once, before parallel jobs; one parent run per invocation holds
# the stage runs as children (rnas pipeline-run).
onstart:
    if P.tracking.enabled:
        shell(f"{RNAS} init-store {PFLAG} && {RNAS} pipeline-run start {PFLAG}")


onsuccess:
    if P.tracking.enabled:
        shell(f"{RNAS} pipeline-run end {PFLAG} --status FINISHED")


onerror:
    if P.tracking.enabled:
        shell(f"{RNAS} pipeline-run end {PFLAG} --status FAILED")
