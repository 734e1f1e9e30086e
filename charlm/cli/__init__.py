"""The ``charlm`` command: thin click wrappers that parse, call the library, and print.

The top layer: it may import every other layer and nothing imports it. Each module holds one
family of commands (``train``, ``generate``, ``data``, ``serve``, ``lab``); ``common`` their shared
options and the wrapper that turns a user's mistake into one sentence and a non-zero exit.
Commands import the library inside their bodies, so ``charlm --help`` starts without torch.
"""

from __future__ import annotations

import sys

import click

from charlm.cli.data import data
from charlm.cli.generate import eval_, export, sample
from charlm.cli.lab import compare, inspect_, visualize
from charlm.cli.serve import serve
from charlm.cli.train import train
from charlm.version import __version__


@click.group()
@click.version_option(__version__, prog_name="charlm")
def cli():
    """Train character-level RNN, LSTM and GRU language models, generate text, compare cells."""
    # A path that is not valid UTF-8 reaches us as surrogates; print its bytes back as they were
    # (as ls does) instead of failing on them.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")



for _command in (train, sample, eval_, export, data, serve, compare, visualize, inspect_):
    cli.add_command(_command)


def main() -> None:  # pragma: no cover
    cli()
