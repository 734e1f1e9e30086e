"""``charlm serve``: a checkpoint behind an OpenAI-compatible completions API and a web page.

``create_app`` builds the ASGI app (Starlette); ``bind`` and ``run`` put it on a port with
uvicorn. Needs the serve extra: ``pip install 'charlm[serve]'``.
"""

from __future__ import annotations

import errno
import gc
import socket
import threading
from pathlib import Path

from charlm.errors import CharlmError
from charlm.process import sigterm_as_ctrl_c
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
    """Serve ``app`` on the bound ``sock`` with uvicorn until interrupted.

    An app made with ``worker_thread=False`` has its model worker run here, in the main thread,
    with the event loop in a second thread: torch's steps run faster in the main thread
    (docs/serving.md). Ctrl-C stops both.
    """
    import uvicorn
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    # Everything loaded so far (torch, the model, the web stack) lives as long as the server:
    # frozen, the collector's full passes skip it, and each pass stops the model's steps
    # (holding the GIL) for a fraction of the time (docs/serving.md)
    gc.collect()
    gc.freeze()
    batcher = app.state.server.batcher
    if batcher.has_thread:
        server.run(sockets=[sock])
        return

    def serve_then_stop_worker():
        try:
            server.run(sockets=[sock])
        finally:  # however the server ends, the worker must not wait for jobs forever
            batcher.close()

    loop = threading.Thread(target=serve_then_stop_worker, name="charlm-event-loop", daemon=True)
    loop.start()
    try:
        with sigterm_as_ctrl_c():  # uvicorn cannot take signals outside the main thread
            batcher.run()  # returns when the app shuts down (its lifespan closes the batcher)
    finally:  # Ctrl-C: the worker has ended every stream, so the server stops at once
        batcher.close()
        server.should_exit = True
        loop.join(10)
