"""Processes: whether one is still alive (how a run lock or a temporary file tells a live writer
from a dead one), and SIGTERM taken as Ctrl-C (part of the base every layer may import)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to another user
        return True
    return True


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within: SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does, so whatever a
    Ctrl-C cleans up (child processes, open streams) is cleaned up on ``kill`` too. Python's own
    default ends the process at once, leaving its children running. Elsewhere than in the main
    thread, nothing changes (only it can take signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ctrl_c(signum, frame):
    raise KeyboardInterrupt
