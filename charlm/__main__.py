"""``python -m charlm`` runs the command-line interface."""

from charlm.cli import cli

cli()
