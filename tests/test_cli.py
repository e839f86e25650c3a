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
