"""Run the ``vqkit`` CLI in-process, as the tests drive it: a user's mistake must never show a traceback."""

from __future__ import annotations

from click.testing import CliRunner

from vqkit.cli.main import cli


def run(*args: str) -> tuple[int, str]:
    """``vqkit ARGS...`` -> (exit code, stdout + stderr). An unexpected exception fails the test with itself."""
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output
