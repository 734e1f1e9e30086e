"""The README's set-up section says what `make demo` runs: it must say what the Makefile runs."""

import re
from pathlib import Path

from click.testing import CliRunner

from charlm.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def demo_commands() -> list[str]:
    """The `charlm ...` lines of the Makefile's demo recipe, as a user would type them."""
    recipe = ROOT.joinpath("Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    return [re.sub(r"^\$\(BIN\)/", "", line.strip()) for line in recipe.splitlines()
            if line.strip().startswith("$(BIN)/charlm")]


def test_the_readme_quotes_the_demo_as_the_makefile_runs_it():
    readme = " ".join(ROOT.joinpath("README.md").read_text().split())
    commands = demo_commands()
    assert [c.split()[1] for c in commands] == ["train", "sample"]
    for command in commands:
        assert f"`{' '.join(command.split())}`" in readme, command


def test_the_demo_commands_are_valid_cli_calls():
    # --help after the options: click parses every option first, so a misspelt one fails here
    # without training anything.
    for command in demo_commands():
        args = [a.strip("'") for a in re.findall(r"'[^']*'|\S+", command)][1:]
        result = CliRunner().invoke(cli, args + ["--help"])
        assert result.exit_code == 0, (command, result.output)
