"""The one exception type for mistakes a user can make (bad files, flags, checkpoints)."""


class CharlmError(Exception):
    """A user-facing error: the CLI prints its message as one sentence and exits non-zero."""
