"""The one family of exceptions for mistakes a user can make (bad files, settings, checkpoints).

A message names a setting by its field name in backquotes, as in "`hidden_size` must be at least
1, not 0": the library prints it as ``hidden_size``, and the CLI, which knows its flags, as
``--hidden-size``. So the library names no CLI flags, and a user of either reads the name they
typed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


class CharlmError(Exception):
    """A user-facing error: the CLI prints its message as one sentence and exits non-zero."""

    @property
    def template(self) -> str:
        """The message with its settings still marked (to pass it on, e.g. from a child process)."""
        return str(self.args[0]) if self.args else ""

    def render(self, name: Callable[[str], str] = lambda setting: setting) -> str:
        """The message with every marked setting named by ``name(field)``."""
        return SETTING.sub(lambda m: name(m.group(1)), self.template)

    def __str__(self) -> str:
        return self.render()


class SettingError(CharlmError, ValueError):
    """A setting given a value it cannot take (also a ValueError, as Python's own checks are)."""
