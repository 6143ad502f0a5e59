"""The repository's promises: .ci/run runs the README's test line verbatim; the CLI starts."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from dawnchorus.cli.app import app
from tests.conftest import REPO


def quick_start_lines() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_exactly_two_quick_start_lines() -> None:
    lines = quick_start_lines()
    assert len(lines) == 2, lines
    assert "pytest" in lines[1]


def test_ci_runs_the_readme_test_line_verbatim() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert quick_start_lines()[1] in ci


def test_cli_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ["synth", "data", "train", "augment-preview"]:
        assert command in result.output
