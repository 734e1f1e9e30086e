"""``charlm serve``: a checkpoint behind the OpenAI-style completions API and a web page."""

from __future__ import annotations

import sys

import click

from charlm.cli.common import (
    user_errors,
)
from charlm.errors import CharlmError


@click.command()
@click.argument("checkpoint")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, reachable by others).")
@click.option("--port", default=8000, show_default=True, help="0: any free port.")
@click.option("--api-key", envvar="CHARLM_API_KEY", default=None,
              help="Require Authorization: Bearer KEY on every API request [env CHARLM_API_KEY].")
@click.option("--name", default=None, help="The model's name in the API [default: the run folder].")
@click.option("--max-batch", default=64, show_default=True,
              help="Rows generated together (a request with n choices takes n rows).")
@click.option("--max-queue", default=256, show_default=True,
              help="Requests that may wait for rows; beyond it the server answers 503.")
@click.option("--max-tokens", default=2048, show_default=True, help="Most characters per choice.")
@click.option("--max-n", default=16, show_default=True, help="Most choices per request.")
@click.option("--max-prompt", default=4096, show_default=True,
              help="Longest prompt, in characters.")
@user_errors
def serve(checkpoint, host, port, api_key, name, max_batch, max_queue, max_tokens, max_n,
          max_prompt):
    """Serve a checkpoint: an OpenAI-compatible completions API and a web page at /."""
    try:
        from charlm import serve as serving
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("starlette", "uvicorn", "anyio", "h11"):
            raise
        raise CharlmError("charlm serve needs the serve extra: "
                          "pip install 'charlm[serve]'") from None
    from charlm.generation.checkpoint import load
    from charlm.model import is_recurrent
    for flag, value, least in [("--max-batch", max_batch, 1), ("--max-n", max_n, 1),
                               ("--max-prompt", max_prompt, 1), ("--max-queue", max_queue, 0),
                               ("--max-tokens", max_tokens, 1)]:
        if value < least:
            raise CharlmError(f"{flag} must be at least {least}, not {value}")
    model, vocab, _ = load(checkpoint)
    if not is_recurrent(model.config.cell):  # rows share one state tensor per layer
        raise CharlmError(f"charlm serve takes recurrent models; {checkpoint} is a "
                          f"{model.config.cell} (generate from it with charlm sample)")
    name = name or serving.model_name(checkpoint)
    limits = serving.Limits(max_tokens, min(max_n, max_batch), max_prompt, max_batch, max_queue)
    sock = serving.bind(host, port)
    app = serving.create_app(model, vocab, name, limits, api_key, worker_thread=False)
    where = f"http://{'[' + host + ']' if ':' in host else host}:{sock.getsockname()[1]}"
    # The model worker (main thread) and the event loop (a second one) share the GIL; a short
    # switch interval keeps either from waiting the default 5 ms for the other
    sys.setswitchinterval(0.0005)
    click.echo(f"serving {name} at {where}/ (API at {where}/v1"
               f"{', key required' if api_key else ''}); Ctrl-C stops", err=True)
    serving.run(app, sock)
