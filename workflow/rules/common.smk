# Shared set-up. The params are Snakemake's config: the params file (params.yaml, or RNAS_PARAMS),
# any --configfile merged over it and --config. They are validated twice before any job starts
# (the JSON schema, then the typed loader, which names the key and the allowed range) and
# written to <results>/.params/<digest>.yaml, which every command reads ($RNAS_WORKFLOW_PARAMS).
# A stage re-runs when the params keys it reads change (params: h) or a source file it executes
# changes (input: code, rnas.dag.code_inputs); not when another key or the file name changes.
import os
import shlex
import subprocess

from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

from rnas import dag, forkserver, paths
from rnas.config import ParamsError, params_from_dict, params_hash
from rnas.pipeline import stage_keys


configfile: os.environ.get("RNAS_PARAMS", "params.yaml")


update_config(config, dag.yaml_typed(dict(workflow.config_settings.config)))  # --config as YAML means it
validate(config, "../schemas/params.schema.json")
try:
    P = params_from_dict(config)
except ParamsError as err:
    raise WorkflowError(f"invalid params: {err}") from None
DS_DIR = str(paths.dataset_dir(P))
LOGS = f"logs/{P.data.dataset}"
REPORT = str(paths.report_md(P))
TEACHER_MODEL = str(paths.teacher_model(P))
SEARCHED = dag.searches(P)
GPUS = 1 if P.pipeline.device == "cuda" else 0  # the SLURM executor turns it into --gpus
RETRIES = 2  # the resumable stages continue from their last checkpoint (preemption, a lost node)
ENV = "../envs/rnas.yaml"


wildcard_constraints:
    seed=r"\d+",
    run=dag.wildcard_regex(P.pipeline.runs),


# Named by its digest, the file never changes once written; a job's environment names it (not a
# rule's params, so another params file name re-runs nothing). Remote jobs parse this again.
PARAMS_TEXT = dag.params_text(config)
PARAMS = str(dag.params_file(P, PARAMS_TEXT))
dag.write_if_changed(PARAMS, PARAMS_TEXT)
os.environ["RNAS_WORKFLOW_PARAMS"] = PARAMS


envvars:
    "RNAS_WORKFLOW_PARAMS",


# A local invocation on the CPU runs its jobs' `rnas` commands in workers of one fork server, which
# imports torch, MLflow & co. once instead of once per job (~10 s each; rnas/forkserver.py). It is
# started here, watches this process and is stopped at the end. RNAS_FORKSERVER=off runs every job
# in its own process; a value already set (`rnas forkserver exec -- snakemake ...`) is used as it
# is. Not with pipeline.device cuda or auto: CUDA must not meet a fork, and GPU jobs are long.
FORKSERVER = None
if not os.environ.get(forkserver.ENV, "").strip() and P.pipeline.device == "cpu":
    FORKSERVER = forkserver.default_socket()
    os.environ[forkserver.ENV] = FORKSERVER


def start_forkserver():
    if FORKSERVER and workflow.local_exec:
        shell(f"rnas forkserver start --socket {shlex.quote(FORKSERVER)} --watch-pid {os.getpid()}")


def stop_forkserver():
    if FORKSERVER and workflow.local_exec:
        shell(f"rnas forkserver stop --socket {shlex.quote(FORKSERVER)}")


# The MLflow store is created once, before parallel jobs; one parent run per invocation holds
# the stage runs as children (rnas pipeline-run). A fresh store's SQLite migrations (~4 s) run in
# their own process while the fork server imports torch & co. (~4.5 s): both cores at once.
# Snakemake re-selects jobs on every finished job and, besides, once per --max-jobs-per-timespan
# window (default 100/1s); each round stats every input of every ready job (the code files
# included) and starts a timer thread. Locally the job events are all the scheduler needs, and
# the once-a-second rounds cost ~24 of Snakemake's ~47 s of CPU in a 10-minute `make run`
# (measured from /proc, session 24). A local invocation that keeps the default window gets one
# minute instead (set here: the settings exist once the workflow executes, and the scheduler's
# rate limiter reads them on every round); the timers still pending at the end are cancelled
# (rnas.dag.cancel_timers), so Snakemake exits at once. Any other window given is kept.
onstart:
    if workflow.local_exec:
        dag.widen_rate_window(workflow)
    store = None
    if P.tracking.enabled:
        store = subprocess.Popen(["rnas", "init-store", "--params", PARAMS], env={**os.environ, forkserver.ENV: "off"})
    try:
        start_forkserver()
    finally:
        if store is not None and store.wait() != 0:
            raise WorkflowError(f"rnas init-store --params {PARAMS} failed (exit {store.returncode})")
    if store is not None:
        shell(f"rnas pipeline-run start --params {shlex.quote(PARAMS)}")


onsuccess:
    if P.tracking.enabled:
        shell(f"rnas pipeline-run end --params {shlex.quote(PARAMS)} --status FINISHED")
    stop_forkserver()
    dag.cancel_timers()


onerror:
    if P.tracking.enabled:
        shell(f"rnas pipeline-run end --params {shlex.quote(PARAMS)} --status FAILED")
    stop_forkserver()
    dag.cancel_timers()
