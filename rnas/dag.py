"""The pipeline's DAG for its two runners: what each stage reads and writes, which source files
it executes, and ``dvc.yaml`` written from the same data (docs/design.md §2).

Snakemake (``Snakefile``, ``workflow/rules/*.smk``) calls these functions when it parses the
workflow; ``rnas dvc-yaml`` writes ``dvc.yaml`` from them, and its ``--check`` (run by dvc's
report stage, and by a test for the committed file) refuses a ``dvc.yaml`` that no longer
matches. No stage imports this module, so editing it re-runs nothing; the params keys each
stage reads stay in :func:`rnas.pipeline.stage_keys`, which the stages use themselves.

**Code inputs.** A stage's inputs include every source file it executes: the ``rnas`` modules
its command imports (:func:`code_inputs`, found from the ``import`` statements, including those
inside functions, and the data files beside them, e.g. templates), so editing a module re-runs
exactly the stages that use it, under both runners. One rule keeps methods apart: a search
method's module (``rnas/search/methods/<m>.py``) and what only it imports are inputs of that
method's searches, never of another method's search, although the method registry
(``rnas/search/methods/__init__.py``) imports them all; no other stage imports the registry.
Parsing the workflow imports no torch (a test holds it so): it would cost seconds in every
Snakemake invocation, remote jobs' included, and every ``rnas dvc-yaml``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from rnas import paths
from rnas.config import Params
from rnas.io import atomic_write_text
from rnas.pipeline import stage_keys
from rnas.runs import has_alternative, resolve_run

PACKAGE = Path(__file__).resolve().parent
METHODS_PACKAGE = "rnas.search.methods"
DATA_SUFFIXES = frozenset(
    {
        ".html",
        ".htm",
        ".css",
        ".js",
        ".j2",
        ".jinja",
        ".jinja2",
        ".txt",
        ".json",
        ".yaml",
        ".yml",
        ".md",
        ".rst",
        ".csv",
    }
)
DEFAULT_PARAMS = "params.yaml"
STAGES = ("teacher", "search", "retrain", "evaluate", "alternative", "report")

# --------------------------------------------------------------------------------------------
# What each stage writes and reads

#: The files a search writes into its run folder, by kind of search (one Snakemake rule each).
SEARCH_FILES: dict[str, tuple[str, ...]] = {
    "cell": ("genotype.json", "search.json", "alphas.json"),  # DARTS-type bilevel searches
    "cell_random": ("genotype.json", "search.json"),  # no supernet, no α
    "cell_lrnas": ("genotype.json", "search.json", "alphas.json", "contributions.json", "contributions.png"),
    "cell_tutors": ("genotype.json", "search.json", "alphas.json", "tutors.json", "tutor_map.png"),  # RNAS-CL
    "width": ("architecture.json", "search.json", "tutors.json", "tutor_map.png"),  # RNAS-CL width space
}


def search_kind(run: str) -> str:
    """The key of :data:`SEARCH_FILES` for a run with a search of its own."""
    spec = resolve_run(run)
    if spec.method == "rnas_cl":
        return "width" if spec.space == "width" else "cell_tutors"
    return {"random": "cell_random", "lrnas": "cell_lrnas"}.get(spec.method, "cell")


def searches(params: Params) -> list[str]:
    """Runs with a search of their own (ablations reuse another run's architecture)."""
    return [run for run in params.pipeline.runs if resolve_run(run).arch_from is None]


def search_outputs(params: Params, run: str, seed: int) -> list[str]:
    """Every file the run's search writes (both runners declare exactly these)."""
    folder = paths.run_dir(params, run, seed)
    return [str(folder / name) for name in SEARCH_FILES[search_kind(run)]]


#: What a run that shares another run's search (``RunSpec.select_from``) reads of it.
SHARED_SEARCH_FILES = ("alphas.json", "contributions.json", "search.json", "genotype.json")


def search_inputs(params: Params, run: str, seed: int | str) -> list[str]:
    """The files a run's search reads: the teacher (distilling runs), the shared search's files
    (``RunSpec.select_from``)."""
    spec = resolve_run(run)
    out = [str(paths.distill_teacher(params))] if spec.needs_teacher else []
    if spec.select_from:
        out += [str(paths.run_dir(params, spec.select_from, seed) / name) for name in SHARED_SEARCH_FILES]
    return out


def retrain_inputs(params: Params, run: str, seed: int) -> list[str]:
    spec = resolve_run(run)
    deps = [str(paths.arch_file(params, run, seed))]
    if spec.distill:
        deps.append(str(paths.distill_teacher(params)))
        if spec.space == "cell":
            deps.append(str(paths.tutors_file(params, run, seed)))
    return deps


def alternative_runs(params: Params) -> list[str]:
    """Runs whose undecided searches get their alternative cell retrained and evaluated
    (``pipeline.alternative_cells``; :func:`rnas.runs.has_alternative`)."""
    if not params.pipeline.alternative_cells:
        return []
    return [run for run in params.pipeline.runs if has_alternative(run)]


def alternative_inputs(params: Params, run: str, seed: int) -> list[str]:
    """What ``rnas alternative`` reads: the search's files (its decision, per-epoch α, final cell)
    and what the run's retraining reads (the teacher and tutors of a distilled run)."""
    folder = paths.run_dir(params, run, seed)
    own = [str(folder / name) for name in ("search.json", "alphas.json")]
    return list(dict.fromkeys([*retrain_inputs(params, run, seed), *own]))


def eval_targets(params: Params) -> list[str]:
    out = [str(paths.eval_file(params, paths.TEACHER, 0))]
    for run in params.pipeline.runs:
        for seed in params.pipeline.seeds:
            out.append(str(paths.eval_file(params, run, seed)))
    return out


def report_inputs(params: Params) -> list[str]:
    """Every file the report reads (rnas.report.collect, claims, decisions): per run and seed
    ``eval.json``, ``flags.json``, ``train.json``; of the search that made its architecture the
    architecture file, ``search.json`` (own searches only), ``alphas.json`` and the PNGs it drew;
    the ``alternative`` folder of each run and seed that has one (:func:`alternative_runs`)."""
    out: list[str] = []
    alternatives = set(alternative_runs(params))
    for run, seed in [(paths.TEACHER, 0), *((r, s) for r in params.pipeline.runs for s in params.pipeline.seeds)]:
        out += [
            str(paths.eval_file(params, run, seed)),
            str(paths.flags_file(params, run, seed)),
            str(paths.train_log(params, run, seed)),
        ]
        if run == paths.TEACHER:
            continue
        if run in alternatives:
            out.append(str(paths.alternative_dir(params, run, seed)))
        source = paths.arch_source(run)
        read = {paths.arch_file(params, run, seed).name, "alphas.json"}
        for name in SEARCH_FILES[search_kind(source)]:
            if name in read or name.endswith(".png") or (name == "search.json" and source == run):
                out.append(str(paths.run_dir(params, source, seed) / name))
    return list(dict.fromkeys(out))


def report_outputs(params: Params) -> list[Path]:
    from rnas.report.curves import curve_files

    return [paths.report_md(params), paths.report_html(params), *paths.report_plots(params), *curve_files(params)]


def wildcard_regex(runs: list[str] | tuple[str, ...]) -> str:
    """A regex matching exactly these run names (longest first; none: matches nothing)."""
    return "|".join(sorted(runs, key=len, reverse=True)) or "(?!x)x"


def plot_caption(path: Path, captions: Path) -> str:
    """The caption file (in the folder ``captions``) of one of the report's PNGs: its own
    ``<name>.rst``, ``cells.rst`` for the cell drawings, else the generic ``plot.rst``."""
    name = "cells" if path.name.startswith("cell_") else path.stem
    return f"{name}.rst" if (captions / f"{name}.rst").is_file() else "plot.rst"


# --------------------------------------------------------------------------------------------
# Code inputs


@functools.cache
def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _known(name: str) -> str | None:
    """The module ``name`` refers to (its longest dotted prefix that is a module of the package)."""
    modules = _modules()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


@functools.cache
def _imports(module: str) -> frozenset[str]:
    """The package's modules that ``module`` imports anywhere in its source (functions included)."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(m for m in map(_known, names) if m)
    found.discard(module)
    return frozenset(found)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in _modules()]


def _closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += _parents(module)  # importing a.b.c runs a/__init__.py and a/b/__init__.py
        if module == METHODS_PACKAGE:  # the search stage adds its own method's module
            continue
        todo += _imports(module)
    return seen


@functools.cache
def method_modules() -> dict[str, str]:
    """Search method name -> its module, read from the registry's source (``METHODS = {...}``)
    without importing it (that would import every method, and torch)."""
    path = _modules()[METHODS_PACKAGE]
    tree = ast.parse(path.read_text(), str(path))
    where = {
        a.asname or a.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for a in node.names
    }
    for node in ast.walk(tree):
        target = getattr(node, "target", None) or (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "METHODS" and isinstance(node.value, ast.Dict):
            return {ast.literal_eval(k): where[v.id] for k, v in zip(node.value.keys, node.value.values)}
    raise RuntimeError(f"no METHODS = {{...}} registry found in {path}")


def _data_files(modules: set[str]) -> set[Path]:
    """Data files (templates, style sheets) in the folders of the packages among ``modules``
    and in their sub-folders that are not packages themselves."""
    out: set[Path] = set()
    for module in modules:
        path = _modules()[module]
        if path.name != "__init__.py":
            continue
        for file in path.parent.rglob("*"):
            if (
                file.is_file()
                and file.suffix in DATA_SUFFIXES
                and "__pycache__" not in file.parts
                and not any(
                    (d / "__init__.py").exists() for d in file.parents if d != path.parent and path.parent in d.parents
                )
            ):
                out.add(file)
    return out


def _stage_module(stage: str) -> str:
    from rnas.cli import COMMANDS

    return f"rnas.stages.{COMMANDS[stage][0]}"


@functools.cache
def _code_files(stage: str, method: str | None) -> tuple[Path, ...]:
    roots = ["rnas.cli", _stage_module(stage)]
    if method is not None:
        roots.append(method_modules()[method])
    modules = _closure(roots)
    return tuple(sorted({_modules()[m] for m in modules} | _data_files(modules)))


def code_inputs(stage: str, run: str | None = None, root: str | Path | None = None) -> list[str]:
    """The source files ``rnas <stage>`` executes (for a search: with the run's method), as paths
    relative to ``root`` (default: the working directory) when the package lies inside it, else
    absolute (a project folder elsewhere that runs the installed package)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    method = resolve_run(run).method if stage == "search" else None
    base = Path(root or os.getcwd()).resolve()
    out = []
    for file in _code_files(stage, method):
        out.append(file.relative_to(base).as_posix() if base in file.parents else str(file))
    return out


# --------------------------------------------------------------------------------------------
# The params file Snakemake passes to the commands


def params_file(params: Params, text: str) -> Path:
    """Where Snakemake writes the params it validated (``text``, :func:`params_text`) for the
    ``rnas`` commands: named by their digest, so two invocations with different params (even a
    dry run beside a running pipeline) never share a file, and a file never changes."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Path(params.pipeline.results) / ".params" / f"{digest}.yaml"


def yaml_typed(value: Any) -> Any:
    """``--config`` values as YAML means them: Snakemake reads a value nested in a mapping with
    YAML's BaseLoader (every scalar a string), so ``--config 'pipeline={seeds: [0, 1]}'`` would
    hold ``["0", "1"]``; this reads each such string as YAML (``""`` stays a string)."""
    if isinstance(value, dict):
        return {k: yaml_typed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [yaml_typed(v) for v in value]
    if isinstance(value, str):
        typed = yaml.safe_load(value) if value.strip() else value
        return value if typed is None and value.strip() not in ("~", "null", "Null", "NULL") else typed
    return value


def params_text(config: dict[str, Any]) -> str:
    """Snakemake's config (the params file, any ``--configfile`` merged over it, ``--config``) as
    a params file."""
    config = json.loads(json.dumps(config))  # plain dicts and lists for YAML
    return (
        "# The params of a Snakemake invocation (Snakemake's config: params.yaml or RNAS_PARAMS,\n"
        "# --configfile and --config merged), written by the workflow for the rnas commands.\n"
        + yaml.safe_dump(config, sort_keys=False, width=120)
    )


def write_if_changed(path: str | Path, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds it; True when it wrote."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_text(path, text, fsync=False)
    return True


# --------------------------------------------------------------------------------------------
# dvc.yaml

_SEED = 987_654_321  # stands for the seed in paths that dvc's templating fills in
_RUN = "__run__"  # stands for the run likewise


class _Template:
    """Turns concrete paths and values into dvc.yaml text: with ``params.yaml`` (dvc's own vars)
    ``${...}`` expressions over it, so ``dvc exp run -S`` changes them; with another params file
    its literal values (dvc would refuse its keys a second time as vars)."""

    def __init__(self, params: Params, params_file: str, root: Path):
        self.params, self.file, self.root = params, params_file, root
        self.templated = params_file == DEFAULT_PARAMS
        self.ds_dir, self.results = paths.dataset_dir(params), Path(params.pipeline.results)
        file = Path(params_file) if Path(params_file).is_absolute() else root / params_file
        self.raw = yaml.safe_load(file.read_text()) if file.is_file() else {}

    def seeds(self) -> Any:
        return "${pipeline.seeds}" if self.templated else list(self.params.pipeline.seeds)

    def path(self, path: Path | str, seed: str = "${item}", run: str = "") -> str:
        path = Path(path)
        text = path.as_posix()
        if self.templated:
            for base, expr in (
                (self.ds_dir, "${pipeline.results}/${data.dataset}"),
                (self.results, "${pipeline.results}"),
            ):
                if base == path or base in path.parents:
                    text = "/".join([expr, *path.relative_to(base).parts])
                    break
        return text.replace(f"seed{_SEED}", f"seed{seed}").replace(f"/{_RUN}/", f"/{run}/")

    def keys(self, stage: str, run: str | None = None) -> list[Any]:
        """The stage's params keys that the params file sets (dvc refuses a key the file lacks;
        one left to its default has no value there to track)."""
        ks = [k for k in stage_keys(stage, run) if _has_key(self.raw, k)]
        return ks if self.templated else [{self.file: ks}]

    def cmd(self, stage: str, *args: str) -> str:
        return " ".join(["rnas", stage, "--params", self.file, *args])

    def code(self, stage: str, run: str | None = None) -> list[str]:
        return code_inputs(stage, run, self.root)


def _has_key(data: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def dvc_yaml(params: Params, params_file: str = DEFAULT_PARAMS, root: str | Path | None = None) -> dict[str, Any]:
    """dvc.yaml for the given params: one stage group per run for the searches and retrainings
    (each run has its own params keys, code and inputs, which dvc's templating cannot look up by
    run name), ``foreach`` over ``pipeline.seeds`` in each, one ``matrix`` over the runs and
    ``pipeline.seeds`` for the evaluations, and paths and seeds as ``${...}`` over params.yaml.
    The runs are written out everywhere, so a changed ``pipeline.runs`` reaches only the report
    stage, whose check stops with what to do. ``root`` is the
    folder dvc.yaml goes in (code paths are relative to it; default: the working directory)."""
    t = _Template(params, params_file, Path(root or os.getcwd()).resolve())
    teacher_eval = {
        "outs": [{t.path(paths.flags_file(params, paths.TEACHER, 0)): {"cache": False}}],
        "metrics": [{t.path(paths.eval_file(params, paths.TEACHER, 0)): {"cache": False}}],
    }
    stages: dict[str, Any] = {
        "teacher": {
            "cmd": t.cmd("teacher"),
            "deps": t.code("teacher"),
            "params": t.keys("teacher"),
            "outs": [t.path(paths.teacher_model(params)), t.path(paths.train_log(params, paths.TEACHER, 0))],
        },
        "evaluate_teacher": {
            "cmd": t.cmd("evaluate", "--run", paths.TEACHER),
            "deps": [t.path(paths.teacher_model(params)), *t.code("evaluate")],
            "params": t.keys("evaluate"),
            **teacher_eval,
        },
    }
    for run in params.pipeline.runs:
        if resolve_run(run).arch_from is None:
            stages[f"search_{run}"] = {
                "foreach": t.seeds(),
                "do": {
                    "cmd": t.cmd("search", "--run", run, "--seed", "${item}"),
                    "deps": [t.path(p) for p in search_inputs(params, run, _SEED)] + t.code("search", run),
                    "params": t.keys("search", run),
                    "outs": [t.path(p) for p in search_outputs(params, run, _SEED)],
                },
            }
        stages[f"retrain_{run}"] = {
            "foreach": t.seeds(),
            "do": {
                "cmd": t.cmd("retrain", "--run", run, "--seed", "${item}"),
                "deps": [t.path(p) for p in retrain_inputs(params, run, _SEED)] + t.code("retrain"),
                "params": t.keys("retrain", run),
                "outs": [t.path(paths.model_file(params, run, _SEED)), t.path(paths.train_log(params, run, _SEED))],
            },
        }
    for run in alternative_runs(params):
        stages[f"alternative_{run}"] = {
            "foreach": t.seeds(),
            "do": {
                "cmd": t.cmd("alternative", "--run", run, "--seed", "${item}"),
                "deps": [t.path(p) for p in alternative_inputs(params, run, _SEED)] + t.code("alternative"),
                "params": t.keys("alternative", run),
                "outs": [t.path(paths.alternative_dir(params, run, _SEED))],
            },
        }
    item = {"seed": "${item.seed}", "run": "${item.run}"}
    stages["evaluate"] = {
        "matrix": {"run": list(params.pipeline.runs), "seed": t.seeds()},
        "cmd": t.cmd("evaluate", "--run", item["run"], "--seed", item["seed"]),
        "deps": [t.path(paths.model_file(params, _RUN, _SEED), **item), *t.code("evaluate")],
        "params": t.keys("evaluate"),
        "outs": [{t.path(paths.flags_file(params, _RUN, _SEED), **item): {"cache": False}}],
        "metrics": [{t.path(paths.eval_file(params, _RUN, _SEED), **item): {"cache": False}}],
    }
    # The report reads files of every run and seed: the dataset folder as one dependency keeps it
    # after all of them whatever pipeline.seeds says (dvc cannot list a file per seed here).
    stages["report"] = {
        "cmd": f"rnas dvc-yaml --params {params_file} --check dvc.yaml && {t.cmd('report')}",
        "deps": [t.path(paths.dataset_dir(params)), *t.code("report")],
        "params": t.keys("report"),
        "outs": [
            {t.path(p): {"cache": False}}
            for p in (paths.report_md(params), paths.report_html(params), paths.plots_dir(params))
        ],
    }
    return {"stages": stages, "plots": _plots(params, t)}


def _plots(params: Params, t: _Template) -> list[Any]:
    """Top-level ``plots:``: the report's curve files (series named run/seed, as written for the
    current runs and seeds) and its PNGs."""
    from rnas.report.curves import dvc_plots

    out = []
    for entry in dvc_plots(params):
        if isinstance(entry, str):
            out.append(t.path(entry))
            continue
        ((name, spec),) = entry.items()
        out.append({name: {**spec, "y": {t.path(f): series for f, series in spec["y"].items()}}})
    return out


def render_dvc_yaml(params: Params, params_file: str = DEFAULT_PARAMS, root: str | Path | None = None) -> str:
    header = (
        "# dvc's view of the pipeline (docs/design.md §2), written by `rnas dvc-yaml` from the params file,\n"
        "# the run registry and the code's imports; the report stage runs `rnas dvc-yaml --check` first.\n"
        "# Seeds, dataset and results folder are dvc templating over params.yaml (`dvc exp run -S\n"
        "# pipeline.seeds=[0,1]` needs no new file); after changing pipeline.runs or a module's imports,\n"
        "# run `rnas dvc-yaml --out dvc.yaml`.\n"
    )
    return header + yaml.safe_dump(dvc_yaml(params, params_file, root), sort_keys=False, width=120, allow_unicode=True)


def dvc_yaml_problems(path: str | Path, params: Params, params_file: str = DEFAULT_PARAMS) -> list[str]:
    """How the stages of the dvc.yaml at ``path`` differ from what the params and the code make
    now (empty: up to date). The ``plots:`` section is not compared: its series follow the
    seeds the file was written for, and a new seed's curves only wait for the next rewrite."""
    path = Path(path)
    if not path.is_file():
        return [f"{path} does not exist"]
    have = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    want = dvc_yaml(params, params_file, path.resolve().parent)["stages"]
    problems = [f"stage {name!r} is missing" for name in want if name not in have]
    problems += [f"stage {name!r} is not in the pipeline any more" for name in have if name not in want]
    problems += [f"stage {name!r} differs" for name in want if name in have and have[name] != want[name]]
    return problems


# --------------------------------------------------------------------------------------------
# Snakemake's scheduler on a local machine

#: Snakemake's default --max-jobs-per-timespan: (jobs, seconds)
DEFAULT_RATE_WINDOW = (100, 1.0)
#: what a local invocation that kept the default gets instead: (jobs, seconds)
LOCAL_RATE_WINDOW = (1000, 60.0)


#: Snakemake ``priority:`` of each stage's rules: among the jobs ready at a time, the earlier
#: stage runs first (the teacher first of all: RNAS-CL's searches wait for it). Snakemake breaks
#: ties between equal priorities arbitrarily; with every priority 0 it could start a search while
#: the other core had only retraining and evaluation left, and that search's chain then ran alone
#: at the end: in session 25's second `make run` a `darts` search started 621 s into a 699 s
#: run, and one core idled for 65 s (21 s in the first run, 29 s in session 24's last). With the
#: stages in order, the last jobs are evaluations: list scheduling of the measured job times
#: (200 random tie-breaks of each of two runs) gives a worst case 706 against 730 s and 690
#: against 709 s, the same median.
STAGE_PRIORITY: dict[str, int] = {
    "teacher": 3,
    "search": 2,
    "retrain": 1,
    "evaluate": 0,
    "alternative": 0,
    "report": 0,
}


def widen_rate_window(workflow: Any) -> bool:
    """Give a local Snakemake run the scheduling window :data:`LOCAL_RATE_WINDOW` when it kept the
    default :data:`DEFAULT_RATE_WINDOW`; True when it did.

    Snakemake's job scheduler re-selects jobs after every finished job and, with a job-rate
    limit (on by default, 100 submissions per second), once more per window: each such round
    stats every input of every ready job and starts a ``threading.Timer`` for the next. Locally
    the job events are all it needs; the rounds once a second cost about half of Snakemake's
    own CPU in a 10-minute ``make run`` on 2 cores. A window given on the command line (any other
    value) is kept; a Snakemake whose settings lack these fields is left alone."""
    settings = getattr(workflow, "scheduling_settings", None)
    limit = getattr(settings, "max_jobs_per_timespan", None)
    if limit is None or (getattr(limit, "max_jobs", None), getattr(limit, "timespan", None)) != DEFAULT_RATE_WINDOW:
        return False
    limit.max_jobs, limit.timespan = LOCAL_RATE_WINDOW
    return True


def cancel_timers() -> int:
    """Cancel the ``threading.Timer`` s still waiting in this process (the scheduler's re-selection
    timers, :func:`widen_rate_window`): after the last job there is nothing left to select, and a
    pending timer would keep Snakemake from exiting for up to a window. Returns how many."""
    import threading

    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()]
    for t in timers:
        t.cancel()
    return len(timers)
