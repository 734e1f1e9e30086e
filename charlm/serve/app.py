"""The ASGI app: the completions API, the models list, health, and the page at ``/``.

Handlers only check requests and shape answers; the Batcher's worker thread does the generating,
handing each turn's pieces to the request's asyncio queue (``call_soon_threadsafe``), so the event
loop stays free: /health answers while every row is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import threading
import time
from collections.abc import AsyncGenerator
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from charlm.data.vocab import CharVocab
from charlm.model import CharRNN
from charlm.serve import api
from charlm.serve.api import ApiError, Completion, Limits
from charlm.serve.batcher import Batcher, Job, Piece, QueueFull

MAX_BODY = 1 << 20  # bytes: far above the longest prompt a server allows
SEND_EVERY = 0.02  # seconds between a stream's sends (50 a second: smooth to a reader's eye)
# Every send costs the event loop, and so the worker beside it, the GIL and a core: with many
# streams each one sends less often, about SENDS_PER_SECOND sends in all (and at least every
# SEND_AT_MOST seconds, still a dozen updates a second to a reader's eye). Streams send on shared
# ticks, so the loop wakes once per tick for all of them, not once per stream.
SENDS_PER_SECOND = 400
SEND_AT_MOST = 0.08


def _error(e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), e.status, headers=headers)


async def _read_json(request: Request):
    """The body as JSON: too large → 413, not JSON → 400 (never a 500)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"the request body is over {MAX_BODY} bytes", None,
                           "body_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", None,
                       "invalid_json") from None


class Inbox:
    """One request's pieces, from the worker's thread to the request's coroutine.

    The worker appends each turn's pieces; the coroutine takes them with ``take(wait)`` once
    ``wait`` seconds have passed and there is one, or at once when a choice finishes, so a
    stream's pacing never holds back the end of a completion. The event loop is woken only for a
    coroutine that waits for what came: 32 streams cost the loop (and the GIL the worker needs)
    one wake-up per send, not one per character.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._pieces: list[Piece] = []
        self._finished = False  # a choice finished since the last take
        self._lock = threading.Lock()
        self._waiter: asyncio.Future | None = None
        self._any = False  # the waiting coroutine takes any piece (else only a finish wakes it)
        self.gone = False  # the client left: the reader stops waiting

    def put(self, pieces: list[Piece]) -> None:
        """From the worker's thread: keep ``pieces``; wake the coroutine where it waits for them."""
        finished = any(p.finish_reason for p in pieces)
        with self._lock:
            self._pieces += pieces
            self._finished |= finished
            waiter = self._waiter
            if waiter is None or not (finished or self._any):
                return
            self._waiter = None
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
            self.loop.call_soon_threadsafe(_wake, waiter)

    def leave(self) -> None:
        """From the event loop: the client left, so a waiting ``take`` returns at once."""
        self.gone = True
        with self._lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(waiter)

    async def take(self, wait: float = 0.0) -> list[Piece]:
        """Every piece kept since the last take, once there is one and ``wait`` seconds have
        passed, or as soon as a choice finishes (``math.inf``: only then); nothing once the
        client has gone."""
        until = self.loop.time() + wait
        while not self.gone:
            late = self.loop.time() >= until
            with self._lock:
                if self._pieces and (late or self._finished):
                    pieces, self._pieces, self._finished = self._pieces, [], False
                    return pieces
                waiter = self._waiter = self.loop.create_future()
                self._any = late
            timer = None if late or until == math.inf else self.loop.call_at(until, _wake, waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
        return []


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Server:
    """One model behind the API: its batcher, its name, its limits and its key."""

    def __init__(self, model: CharRNN, vocab: CharVocab, name: str, limits: Limits,
                 api_key: str | None = None, worker_thread: bool = True):
        self.vocab, self.name, self.limits, self.api_key = vocab, name, limits, api_key or None
        # rows hand their characters over on the streams' shortest tick, not every turn: no
        # stream sends more often, and a hand-over per row and turn was Python work on the
        # model's thread, which the steps wait for (docs/serving.md)
        self.batcher = Batcher(model, vocab, limits.max_batch, limits.max_queue, worker_thread,
                               hand_every=SEND_EVERY)
        self.created = int(time.time())
        self.streams = 0  # streams open now (each one sends less often when there are many)

    def check_key(self, request: Request) -> None:
        """With a key, every API request carries it as ``Authorization: Bearer KEY``."""
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 self.api_key.encode()):
            raise ApiError(401, "a valid API key is needed: send Authorization: Bearer KEY",
                           None, "invalid_api_key", "authentication_error")

    # --- routes

    async def page(self, request: Request) -> Response:
        """The web page (served without a key; it asks for one when the server has one)."""
        config = {"model": self.name, "needs_key": self.api_key is not None,
                  "max_tokens": self.limits.max_tokens}
        html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
        safe = json.dumps(config).replace("<", "\\u003c")
        return HTMLResponse(html.replace("/*CONFIG*/{}", safe))

    async def health(self, request: Request) -> Response:
        self.check_key(request)
        return JSONResponse({"status": "ok", "model": self.name, "streams": self.streams,
                             **self.batcher.stats()})

    async def models(self, request: Request) -> Response:
        self.check_key(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self.check_key(request)
        if request.path_params["name"] != self.name:
            raise ApiError(404, f"the model {request.path_params['name']!r} does not exist",
                           "model", "model_not_found")
        return JSONResponse(self._model_card())

    def _model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "charlm"}

    async def completions(self, request: Request) -> Response:
        self.check_key(request)
        c = api.parse_completion(await _read_json(request), self.name, self.vocab, self.limits)
        inbox = Inbox(asyncio.get_running_loop())
        job = Job(c.prompt_ids, c.settings, c.max_tokens, c.n, c.seed, c.stop, c.logprobs,
                  inbox.put)
        try:
            self.batcher.submit(job)
        except QueueFull:
            raise ApiError(503, "the server is busy (every row and the queue are full); retry "
                                "shortly", None, "server_busy", "server_error") from None
        if c.stream:
            return EventStream(self._stream(job, inbox, c), inbox)
        try:
            return JSONResponse(await self._collect(inbox, c))
        finally:
            self.batcher.cancel(job)  # a no-op once it finished; frees rows if we were cancelled

    async def _collect(self, inbox: Inbox, c: Completion) -> dict:
        """Wait for every choice to finish → one completion."""
        texts, lps, finish = [""] * c.n, [[] for _ in range(c.n)], [None] * c.n
        while None in finish:
            for p in await inbox.take(math.inf):
                _raise_if_failed(p)
                texts[p.index] += p.text
                lps[p.index] += p.logprobs
                finish[p.index] = p.finish_reason or finish[p.index]
        choices = [api.choice(i, texts[i], api.logprobs_block(lps[i], 0)
                              if c.logprobs is not None else None, finish[i])
                   for i in range(c.n)]
        return api.envelope(api.completion_id(), self.name, choices,
                            api.usage(c.prompt, sum(map(len, texts))))

    async def _stream(self, job: Job, inbox: Inbox, c: Completion):
        """Server-sent events: a chunk per choice per send, holding the characters written since
        the last send (a character or a small group), then [DONE]. The first character goes out
        as soon as it is written, later ones on the ticks of ``send_every`` (shared by every
        stream), and a choice's last ones as soon as it finishes."""
        cid, sent, left, wait = api.completion_id(), [0] * c.n, c.n, 0.0
        self.streams += 1
        try:
            while left:
                pieces = await inbox.take(wait)
                if inbox.gone:
                    return
                for index, text, entries, finish in _merge(pieces):
                    if index < 0:
                        yield _sse({"error": {"message": text, "type": "server_error",
                                              "param": None, "code": "internal_error"}})
                        return
                    lp = (api.logprobs_block(entries, sent[index]) if c.logprobs is not None
                          else None)
                    sent[index] += len(text)
                    left -= finish is not None
                    yield _sse(api.envelope(cid, self.name, [api.choice(index, text, lp, finish)]))
                wait = until_next_send(inbox.loop.time(), self.streams)
            if c.include_usage:
                yield _sse(api.envelope(cid, self.name, [], api.usage(c.prompt, sum(sent))))
            yield "data: [DONE]\n\n"
        finally:
            self.streams -= 1
            self.batcher.cancel(job)  # a client that left frees its rows at the next turn


class EventStream(Response):
    """Server-sent events from ``events`` until they end or the client leaves.

    Starlette's StreamingResponse watches for a client that leaves through an anyio task group
    per request (uvicorn announces ASGI 2.3), which was a large part of what taking a request in
    cost the event loop; here one plain task waits for the disconnect and tells the inbox, and
    the stream returns at its next wake-up (its ``finally`` frees the rows)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[str, None], inbox: Inbox):
        self.events, self.inbox = events, inbox
        self.status_code, self.background = 200, None
        self.init_headers({"Cache-Control": "no-cache"})

    async def __call__(self, scope, receive, send) -> None:
        async def watch() -> None:
            with contextlib.suppress(Exception):  # a receive that fails: gone as well
                while (await receive())["type"] != "http.disconnect":
                    pass
            self.inbox.leave()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event.encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await self.events.aclose()  # the stream's own ``finally``, where it did not end


def send_every(streams: int) -> float:
    """Seconds between one stream's sends: SEND_EVERY, doubled while the streams open would
    send more than SENDS_PER_SECOND in all, up to SEND_AT_MOST. Each value is a multiple of the
    shorter ones, so streams that chose theirs at different counts still meet on the same ticks."""
    every = SEND_EVERY
    while streams / every > SENDS_PER_SECOND and every * 2 <= SEND_AT_MOST:
        every *= 2
    return every


def until_next_send(now: float, streams: int) -> float:
    """Seconds from ``now`` (the event loop's clock) to the next tick of ``send_every``: every
    stream sends on the same ticks, so one wake-up of the loop serves them all (waking it for each
    stream at its own moment slowed the model's steps beside it: docs/serving.md)."""
    every = send_every(streams)
    return every - now % every


def _merge(pieces: list[Piece]):
    """Pieces of several turns → one (index, text, logprobs, finish) per choice, in order."""
    merged: dict[int, list] = {}
    for p in pieces:
        m = merged.setdefault(p.index, [p.index, "", [], None])
        m[1] += p.text
        m[2] += p.logprobs
        m[3] = p.finish_reason or m[3]
    return merged.values()


def _raise_if_failed(p: Piece) -> None:
    if p.index < 0:
        raise ApiError(500, p.text, None, "internal_error", "server_error")


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _error(ApiError(exc.status_code, str(exc.detail), None, code))


async def _api_error(request: Request, exc: ApiError) -> Response:
    return _error(exc)


async def _unexpected(request: Request, exc: Exception) -> Response:
    return _error(ApiError(500, f"internal error: {type(exc).__name__}", None, "internal_error",
                           "server_error"))


def create_app(model: CharRNN, vocab: CharVocab, name: str = "charlm",
               limits: Limits | None = None, api_key: str | None = None,
               worker_thread: bool = True) -> Starlette:
    """The ASGI app serving ``model`` as ``name``; its batcher stops when the app shuts down.

    ``worker_thread=False``: the batcher starts no thread of its own, and the caller runs
    ``app.state.server.batcher.run()`` (as ``serve.run`` does, in the main thread)."""
    server = Server(model, vocab, name, limits or Limits(), api_key, worker_thread)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.batcher.close()

    app = Starlette(
        routes=[Route("/", server.page), Route("/health", server.health),
                Route("/v1/models", server.models), Route("/v1/models/{name}", server.model),
                Route("/v1/completions", server.completions, methods=["POST"])],
        exception_handlers={HTTPException: _http_error, ApiError: _api_error,
                            Exception: _unexpected},
        lifespan=lifespan)
    app.state.server = server
    return app
