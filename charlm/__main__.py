"""``python -m charlm`` runs the command-line interface."""

from .cli import cli

cli()
