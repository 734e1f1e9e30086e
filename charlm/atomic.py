"""Files written whole or not at all, and what to tell the user when the disk says no.

The recipe everywhere (checkpoints, the data cache, run.json): write a temporary file next to the
target, fsync it, ``os.replace`` it onto the target, fsync the directory so the rename itself
survives a power cut. A reader (or a run resumed after SIGKILL) sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from charlm.errors import CharlmError
from charlm.process import pid_alive

_TMP_PID = re.compile(r"\.tmp(\d+)")  # temporary files named with their writer's pid


def fsync_dir(directory: str | Path) -> None:
    """Make a rename in ``directory`` durable (not possible on every platform: then a no-op)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_error(path: str | Path, error: OSError) -> CharlmError:
    """The one sentence for a failed write of ``path``; the previous file is still whole."""
    name = Path(path).name
    if error.errno == errno.ENOSPC:
        why = "no space left on the device"
    elif error.errno == errno.EDQUOT:
        why = "the disk quota is exceeded"
    else:
        why = error.strerror or str(error) or type(error).__name__
    return CharlmError(f"could not write {path}: {why}; the previous {name}, if there was one, "
                       f"is intact")


def commit_file(tmp: Path, path: Path) -> None:
    """Make the fully written ``tmp`` become ``path``: fsync, rename, fsync the directory.

    On failure the temporary file is removed and the previous ``path`` is left as it was.
    """
    try:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from None
    fsync_dir(Path(path).parent)


@contextlib.contextmanager
def temporary_for(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to ``path`` for the caller to write; a failed write removes it and
    becomes one sentence. The caller commits it (``commit_file``) when it is whole."""
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file whole or not at all."""
    with temporary_for(path, f".tmp{os.getpid()}") as tmp:
        tmp.write_bytes(data)
    commit_file(tmp, path)


def sweep_stale_temporaries(directory: Path) -> None:
    """Delete ``*.tmp<pid>*`` files whose writer is dead (left by a killed run); keep live ones."""
    for path in directory.glob("*.tmp*"):
        match = _TMP_PID.search(path.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
