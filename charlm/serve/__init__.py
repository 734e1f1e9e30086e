"""``charlm serve``: a checkpoint behind an OpenAI-compatible completions API and a web page.

``create_app`` builds the ASGI app (Starlette); ``bind`` and ``run`` put it on a port with
uvicorn. Needs the serve extra: ``pip install 'charlm[serve]'``.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from charlm.errors import CharlmError
from charlm.serve.api import Limits
from charlm.serve.app import create_app

__all__ = ["Limits", "create_app", "bind", "run", "model_name"]


def model_name(checkpoint: str | Path) -> str:
    """The name clients use for a checkpoint: its run folder (or export folder)."""
    path = Path(checkpoint).resolve()
    return path.name if path.is_dir() else path.parent.name or path.stem


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one sentence saying why not (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        why = ("is already in use" if e.errno == errno.EADDRINUSE else
               "needs more privileges" if e.errno == errno.EACCES else
               f"cannot be used ({e.strerror})")
        raise CharlmError(f"port {port} on {host} {why}") from None
    return sock


def run(app, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve ``app`` on the bound ``sock`` with uvicorn until interrupted."""
    import uvicorn
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[sock])
