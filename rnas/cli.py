"""The ``rnas`` command: one subcommand per stage (a registry, not an if-chain)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # foolbox imports GitPython

# subcommand -> (module under rnas.stages, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate-params": ("validate", "check a params file (exit 0 valid, 2 invalid)"),
    "init-store": ("store", "create the MLflow store before parallel jobs"),
    "teacher": ("teacher", "train the robust teacher"),
    "search": ("search", "search an architecture for one run and seed"),
    "retrain": ("retrain", "retrain a found architecture adversarially"),
    "evaluate": ("evaluate", "attack a trained model, write eval.json"),
    "alternative": ("alternative", "retrain and evaluate the cell an undecided search chose before its final one"),
    "certify": ("certify", "certified accuracy at ε (IBP / CROWN bounds) of a trained model"),
    "report": ("report", "compare every run in results/report.md and report.html, with plots"),
    "compare": ("compare", "print the comparison table from the MLflow store"),
    "pipeline-run": ("pipeline_run", "start/end the MLflow parent run of a pipeline invocation"),
    "arch": ("arch", "parameter count / MACs of an architecture file"),
    "dvc-yaml": ("dvcyaml", "write dvc.yaml for a params file, or --check that it is up to date"),
    "params-schema": ("schema", "write the JSON schema of params files"),
    "forkserver": ("rnas.forkserver", "run the stage commands of a pipeline run in workers of one preloaded process"),
}
# Commands that run in their own process even when a fork server is up (rnas.forkserver): quick
# ones that never import torch, and the server's own.
OWN_PROCESS = frozenset({"validate-params", "dvc-yaml", "params-schema", "forkserver"})


def command_module(name: str):
    module = COMMANDS[name][0]
    return importlib.import_module(module if module.startswith("rnas.") else f"rnas.stages.{module}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``command``, only that subcommand's stage module is imported for
    its arguments (the others keep their help line), so a stage does not pay for importing
    every other stage (matplotlib, AutoAttack, ...) at start-up."""
    parser = argparse.ArgumentParser(prog="rnas", description="Robust neural architecture search pipeline")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if command is None or name == command:
            command_module(name).add_arguments(p)
    return parser


def requested_command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (its first non-option word), if it is a known one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    """``rnas ARGV``: in a worker of the fork server named by ``RNAS_FORKSERVER`` when one answers
    (the same command, directory, environment and streams), else in this process."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = requested_command(argv)
    if command is not None and command not in OWN_PROCESS:
        from rnas.forkserver import run_remote

        code = run_remote(argv)
        if code is not None:
            return code
    return run_command(argv)


def run_command(argv: list[str]) -> int:
    """Parse ``argv`` and run the command in this process."""
    args = build_parser(requested_command(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    from rnas.signals import Terminated, install_sigterm_handler

    install_sigterm_handler()
    module = command_module(args.command)
    try:
        return module.run(args)
    except Terminated:
        print(f"rnas {args.command}: terminated by SIGTERM", file=sys.stderr)
        return 143
    except Exception as err:
        if _is_error(err, "rnas.config", "ParamsError"):
            print(f"rnas: invalid params: {err}", file=sys.stderr)
            return 2
        if any(_is_error(err, module_name, name) for module_name, name in USER_ERRORS):
            print(f"rnas {args.command}: {err}", file=sys.stderr)
            return 1
        raise


#: Errors a command reports in one line (exit 1) instead of a traceback: (module, class). They are
#: looked up when one is raised, in the modules loaded by then (an error of a module that was
#: never imported cannot have been raised), so a light command (``rnas forkserver stop``) does not
#: import torch for them: 2 s of a 2.2 s ``rnas forkserver stop`` before, at the end of every run.
USER_ERRORS = (
    ("rnas.data", "DatasetNotFoundError"),
    ("rnas.checkpoint", "CheckpointError"),
    ("rnas.space.genotype", "GenotypeError"),
    ("rnas.distill", "DistillationError"),
    ("rnas.training.trainer", "NonFiniteLossError"),
    ("rnas.search.base", "SharedSearchError"),
)


def _is_error(err: BaseException, module_name: str, name: str) -> bool:
    module = sys.modules.get(module_name)
    return module is not None and isinstance(err, getattr(module, name))


if __name__ == "__main__":
    sys.exit(main())
