"""One training run per run folder: ``OUT/run.lock`` holds the pid of the process training there.

Two ``charlm train`` runs pointed at the same ``--out`` would overwrite each other's checkpoints, so
the first takes the lock and the second refuses with one clear sentence. The lock is an OS file
lock (``flock``) on run.lock, so it dies with its process: a run killed with SIGKILL leaves the file
behind, and the next run simply takes it over. Where the file system has no ``flock`` (Windows,
some network mounts) the pid written in the file is checked instead, and a lock whose process is
gone is taken over the same way.

Under DDP every rank runs ``fit``; only global rank 0 takes the lock (the other ranks are its
helpers and must not refuse). The rank comes from the launcher's environment, as Lightning reads it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Self

from charlm.errors import CharlmError
from charlm.process import pid_alive

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = "run.lock"
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 of a distributed launch, or not part of one."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "0").strip() or "0"
        if value.isdigit() and int(value) != 0:
            return False
    return True


class RunLock:
    """``with RunLock(out):`` holds OUT/run.lock for the duration, or raises CharlmError."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created_folder = False

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (rank 0 only); refuse when a live process holds it."""
        if not is_rank_zero() or self._fd is not None:
            return
        self._created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                held = try_flock(fd)
                holder = _holder(fd)
                if held is False or (held is None and holder and _alive(holder)):
                    raise CharlmError(f"another charlm run ({_describe(holder)}) is training in "
                                      f"{self.folder}; wait for it to finish, or choose another "
                                      f"`out`")
                if _same_file(fd, self.path):  # not unlinked by its last holder meanwhile
                    break
            except BaseException:
                os.close(fd)
                self._forget_folder()
                raise
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Remove run.lock and let go of it (unlink first, so a waiting run re-checks)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        self._forget_folder()

    def _forget_folder(self) -> None:
        if self._created_folder:  # a refused or failed run leaves no empty folder behind
            try:
                self.folder.rmdir()
            except OSError:
                pass


def try_flock(fd: int) -> bool | None:
    """True: we hold the lock; False: another process does; None: no flock here."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: a file system without locks
        return None


def _holder(fd: int) -> tuple[int, str] | None:
    """(pid, host) written in the lock file, or None."""
    try:
        pid, host = os.pread(fd, 512, 0).decode("utf-8", "replace").split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(holder: tuple[int, str]) -> bool:
    pid, host = holder
    if host != socket.gethostname():
        return True  # another machine's pid cannot be checked from here
    return pid != os.getpid() and pid_alive(pid)


def _describe(holder: tuple[int, str] | None) -> str:
    if holder is None:
        return "pid unknown"
    pid, host = holder
    return f"pid {pid}" if host == socket.gethostname() else f"pid {pid} on {host}"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
