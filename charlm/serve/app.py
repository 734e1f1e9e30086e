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
import time
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from charlm.data.vocab import CharVocab
from charlm.model import CharRNN
from charlm.serve import api
from charlm.serve.api import ApiError, Completion, Limits
from charlm.serve.batcher import Batcher, Job, Piece, QueueFull

MAX_BODY = 1 << 20  # bytes: far above the longest prompt a server allows
SEND_EVERY = 0.02  # seconds between a stream's sends (50 a second: smooth to a reader's eye)
WAKE_EVERY = 0.005  # seconds between the worker's hand-overs of pieces to the event loop


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


class Server:
    """One model behind the API: its batcher, its name, its limits and its key."""

    def __init__(self, model: CharRNN, vocab: CharVocab, name: str, limits: Limits,
                 api_key: str | None = None):
        self.vocab, self.name, self.limits, self.api_key = vocab, name, limits, api_key or None
        self.batcher = Batcher(model, vocab, limits.max_batch, limits.max_queue, self._deliver)
        self.created = int(time.time())
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[Job, list[Piece]]] = []  # pieces not yet handed to the loop
        self._woken = 0.0

    def _deliver(self, batch: list[tuple[Job, list[Piece]]]) -> None:
        """From the worker: each turn's pieces, handed to the event loop at most every WAKE_EVERY
        (a first character or a finish at once), since every wake-up costs both threads the GIL
        (a job submitted without an inbox gets its own sink, on the worker's thread)."""
        for job, pieces in batch:
            if job.inbox is None:
                job.sink(pieces)
        self._pending += [b for b in batch if b[0].inbox is not None]
        now = time.monotonic()
        urgent = any(p.first or p.finish_reason for _, pieces in batch for p in pieces)
        if self._pending and (urgent or now - self._woken >= WAKE_EVERY):
            pending, self._pending, self._woken = self._pending, [], now
            with contextlib.suppress(RuntimeError, AttributeError):  # the loop has closed
                self.loop.call_soon_threadsafe(_put_all, pending)

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
        return JSONResponse({"status": "ok", "model": self.name, **self.batcher.stats()})

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
        queue: asyncio.Queue[list[Piece]] = asyncio.Queue()
        loop = self.loop = asyncio.get_running_loop()

        def sink(pieces: list[Piece]) -> None:  # runs on the worker thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                loop.call_soon_threadsafe(queue.put_nowait, pieces)

        job = Job(c.prompt_ids, c.settings, c.max_tokens, c.n, c.seed, c.stop, c.logprobs, sink,
                  inbox=queue)
        try:
            self.batcher.submit(job)
        except QueueFull:
            raise ApiError(503, "the server is busy (every row and the queue are full); retry "
                                "shortly", None, "server_busy", "server_error") from None
        if c.stream:
            return StreamingResponse(self._stream(job, queue, c), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            return JSONResponse(await self._collect(queue, c))
        finally:
            self.batcher.cancel(job)  # a no-op once it finished; frees rows if we were cancelled

    async def _collect(self, queue: asyncio.Queue, c: Completion) -> dict:
        """Wait for every choice to finish → one completion."""
        texts, lps, finish = [""] * c.n, [[] for _ in range(c.n)], [None] * c.n
        while None in finish:
            for p in await queue.get():
                _raise_if_failed(p)
                texts[p.index] += p.text
                lps[p.index] += p.logprobs
                finish[p.index] = p.finish_reason or finish[p.index]
        choices = [api.choice(i, texts[i], api.logprobs_block(lps[i], 0)
                              if c.logprobs is not None else None, finish[i])
                   for i in range(c.n)]
        return api.envelope(api.completion_id(), self.name, choices,
                            api.usage(c.prompt, sum(map(len, texts))))

    async def _stream(self, job: Job, queue: asyncio.Queue, c: Completion):
        """Server-sent events: a chunk per choice per send, holding the characters written since
        the last send (a character or a small group), then [DONE]."""
        cid, sent, left = api.completion_id(), [0] * c.n, c.n
        loop, last = asyncio.get_running_loop(), float("-inf")
        try:
            while left:
                pieces = await queue.get()
                # at most one send per SEND_EVERY: the first character goes out at once, later
                # ones in small groups, so 32 streams cost the event loop (and the GIL) little
                wait = SEND_EVERY - (loop.time() - last)
                if wait > 0:
                    await asyncio.sleep(wait)
                while not queue.empty():
                    pieces += queue.get_nowait()
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
                last = loop.time()
            if c.include_usage:
                yield _sse(api.envelope(cid, self.name, [], api.usage(c.prompt, sum(sent))))
            yield "data: [DONE]\n\n"
        finally:
            self.batcher.cancel(job)  # a client that left frees its rows at the next turn


def _put_all(batch: list[tuple[Job, list[Piece]]]) -> None:
    for job, pieces in batch:
        job.inbox.put_nowait(pieces)


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
               limits: Limits | None = None, api_key: str | None = None) -> Starlette:
    """The ASGI app serving ``model`` as ``name``; its batcher stops when the app shuts down."""
    server = Server(model, vocab, name, limits or Limits(), api_key)

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
