"""The ``rnas`` command: every subcommand parses, and a stage starts without importing what
it does not use (each Snakemake job is a fresh process, so start-up is paid ~45 times a run)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rnas.cli import COMMANDS, build_parser, requested_command


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser(command).parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert f"rnas {command}" in capsys.readouterr().out


def test_requested_command_is_the_first_word():
    assert requested_command(["-v", "search", "--run", "darts"]) == "search"
    assert requested_command(["--help"]) is None
    assert requested_command(["no-such-command"]) is None


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_a_stage_imports_only_its_own_module():
    loaded = _modules_after("from rnas.cli import build_parser; build_parser('search')")
    assert "rnas.stages.search" in loaded
    for other in ("rnas.stages.report", "rnas.stages.evaluate", "rnas.report.build", "pyautoattack"):
        assert other not in loaded, other


def test_deterministic_runtime_without_importing_inductor():
    code = (
        "import torch; from rnas.runtime import setup_runtime; setup_runtime(1, True, 'cpu')\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
        "assert not torch.utils.deterministic.fill_uninitialized_memory"  # no NaN-fill of new tensors
    )
    loaded = _modules_after(code)
    assert "torch._inductor" not in loaded


def test_forkserver_commands_do_not_import_torch(tmp_path):
    """`rnas forkserver stop` (and start) run in their own process at the start and end of every
    pipeline run: the CLI's error handling must not pull in torch for them (~2 s each)."""
    code = (
        "from rnas.cli import main\n"
        f"assert main(['forkserver', 'stop', '--socket', {str(tmp_path / 'none' / 'sock')!r}]) == 0"
    )
    assert "torch" not in _modules_after(code)


def test_user_errors_exit_with_one_line_and_others_raise(monkeypatch, capsys):
    """Known errors print one line (params: exit 2; a missing dataset, a corrupt checkpoint, ...:
    exit 1); anything else keeps its traceback."""
    import rnas.cli as cli
    from rnas.checkpoint import CheckpointError
    from rnas.config import ParamsError
    from rnas.data import DatasetNotFoundError

    module = cli.command_module("validate-params")
    for error, code in (
        (ParamsError("evaluate.epsilon: 2.0 not in [0.0, 1.0]"), 2),
        (CheckpointError("model.pt is corrupt"), 1),
        (DatasetNotFoundError("no dataset under data/"), 1),
    ):

        def run(args, error=error):
            raise error

        monkeypatch.setattr(module, "run", run)
        assert cli.run_command(["validate-params", "params.yaml"]) == code
        err = capsys.readouterr().err
        assert str(error) in err and "Traceback" not in err
    monkeypatch.setattr(module, "run", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.run_command(["validate-params", "params.yaml"])
