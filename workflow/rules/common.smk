# Shared set-up: the params file, its validation (JSON schema, then the typed loader, which
# refuses bad values before any job starts), the MLflow store, and path patterns from rnas.paths.
import os
import shlex

from snakemake.utils import validate

from rnas import paths
from rnas.config import load_params, params_hash
from rnas.pipeline import retrain_inputs, search_inputs, stage_keys
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
GPUS = 1 if P.pipeline.device == "cuda" else 0  # the SLURM executor turns it into --gpus
SEARCHED = [r for r, s in SPECS.items() if s.arch_from is None]
TUTOR_RUNS = [r for r in SEARCHED if SPECS[r].space == "cell" and SPECS[r].distill]  # + tutors.json
CELL_RUNS = [r for r in SEARCHED if SPECS[r].space == "cell" and r not in TUTOR_RUNS]
WIDTH_RUNS = [r for r in SEARCHED if SPECS[r].space == "width"]


def run_regex(runs):
    return "|".join(sorted(runs, key=len, reverse=True)) or "(?!x)x"


wildcard_constraints:
    seed=r"\d+",
    run=run_regex(RUNS),


def key_hash(stage, run=None):
    return params_hash(P, stage_keys(stage, run))




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
