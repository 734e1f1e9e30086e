"""charlm serve: the API as a user's client sees it, the batcher's rows, limits, the page."""

import asyncio
import contextlib
import json
import math
import re
import threading
import time

import pytest
import torch

pytest.importorskip("starlette",
                    reason="charlm serve needs the serve extra (pip install -e '.[serve]')")
uvicorn = pytest.importorskip("uvicorn", reason="charlm serve needs the serve extra")

from browser import no_alert  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from charlm.data.vocab import CharVocab  # noqa: E402
from charlm.generation.checkpoint import ExportedModel  # noqa: E402
from charlm.generation.sampling import SampleSettings, generate  # noqa: E402
from charlm.model import CharRNN, ModelConfig  # noqa: E402
from charlm.serve import Limits, bind, create_app  # noqa: E402
from charlm.serve.batcher import Batcher, Job, PromptStates  # noqa: E402
from charlm.serve.stops import StopText  # noqa: E402

TEXT = "the cat sat on the mat and ran away home.\nA dog, quickly!\n"
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def tiny():
    """A small random LSTM and its vocabulary (behaviour, not quality, is under test)."""
    vocab = CharVocab.from_text(TEXT)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell="lstm", hidden_size=32,
                                num_layers=2, embedding_dim=8)).eval()
    return model, vocab


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    """The tiny model as an export folder, named 'tiny' (the name the API gives it)."""
    model, vocab = tiny
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    exported = ExportedModel(model.config.to_dict(), vocab.chars)
    exported.model.load_state_dict(model.state_dict())
    exported.save_pretrained(str(folder))
    return folder


@contextlib.contextmanager
def live(app):
    """``app`` under uvicorn on a free 127.0.0.1 port, in a thread; yields its address."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def keyed(tiny):
    """A live server with an API key (what the openai client and the page talk to)."""
    model, vocab = tiny
    with live(create_app(model, vocab, "tiny", Limits(max_tokens=50000), api_key=KEY)) as url:
        yield url


def post(client, **body):
    return client.post("/v1/completions", json={"model": "tiny", **body})


# --- the same text as charlm sample

SETTINGS = [({}, 1), ({}, 3), ({"top_k": 3}, 3), ({"top_p": 0.8, "temperature": 0.7}, 3),
            ({"top_k": 5, "top_p": 0.9, "temperature": 1.3}, 1), ({"greedy": True}, 2)]


@pytest.mark.parametrize("extra, n", SETTINGS)
def test_server_text_equals_generate(tiny, extra, n):
    model, vocab = tiny
    settings = SampleSettings(extra.get("temperature", 1.0), extra.get("top_k"),
                              extra.get("top_p"), extra.get("greedy", False))
    want = [t[len("the "):] for t in generate(model, vocab, "the ", 60, settings, n, seed=7)]
    with TestClient(create_app(model, vocab, "tiny")) as client:
        r = post(client, prompt="the ", max_tokens=60, n=n, seed=7, **extra)
        assert r.status_code == 200, r.text
        assert [c["text"] for c in r.json()["choices"]] == want
        assert r.json()["usage"] == {"prompt_tokens": 4, "completion_tokens": 60 * n,
                                     "total_tokens": 4 + 60 * n}
        streamed = [""] * n
        with client.stream("POST", "/v1/completions", json={
                "model": "tiny", "prompt": "the ", "max_tokens": 60, "n": n, "seed": 7,
                "stream": True, **extra}) as s:
            lines = [ln for ln in s.iter_lines() if ln]
        assert lines[-1] == "data: [DONE]"
        for line in lines[:-1]:
            for c in json.loads(line[len("data: "):])["choices"]:
                streamed[c["index"]] += c["text"]
        assert streamed == want


def test_empty_prompt_primes_with_a_newline_like_generate(tiny):
    model, vocab = tiny
    want = generate(model, vocab, "", 30, SampleSettings(0.9), 1, seed=3)
    with TestClient(create_app(model, vocab, "tiny")) as client:
        r = post(client, max_tokens=30, temperature=0.9, seed=3)
    assert [c["text"] for c in r.json()["choices"]] == want


class Texts:
    """Each batcher job's texts by key, collected from its sink on the worker's thread."""

    def __init__(self):
        self.texts, self._done = {}, threading.Semaphore(0)

    def sink(self, key, n):
        got, finished = [""] * n, set()

        def sink(pieces):
            for p in pieces:
                got[p.index] += p.text
                if p.finish_reason:
                    finished.add(p.index)
            if len(finished) == n and key not in self.texts:
                self.texts[key] = got
                self._done.release()
        return sink

    def wait(self, jobs: int) -> bool:
        return all(self._done.acquire(timeout=30) for _ in range(jobs))

    def __getitem__(self, key):
        return self.texts[key]


def test_rows_sharing_steps_do_not_change_each_other(tiny):
    """Requests with different settings join one batch at different steps; each gets exactly
    the text it gets alone, and the batch took fewer steps than the requests one after another."""
    model, vocab = tiny
    asks = [("the ", SampleSettings(1.0), 300, 1, 1),
            ("a dog", SampleSettings(0.7, top_k=4), 120, 2, 2),
            ("", SampleSettings(1.2, top_p=0.85), 200, 3, 3),
            ("cat", SampleSettings(greedy=True), 80, 1, 4)]
    batcher, texts = Batcher(model, vocab, max_batch=16), Texts()
    try:
        for k, (prompt, s, length, n, seed) in enumerate(asks):
            batcher.submit(Job(vocab.encode(prompt).tolist(), s, length, n, seed,
                               sink=texts.sink(k, n)))
            time.sleep(0.01)  # later requests join a batch already running
        assert texts.wait(len(asks))
        assert batcher.steps < sum(a[2] for a in asks)
    finally:
        batcher.close()
    for k, (prompt, s, length, n, seed) in enumerate(asks):
        alone = [t[len(prompt):] for t in generate(model, vocab, prompt, length, s, n, seed)]
        assert texts[k] == alone, k


def test_rows_read_in_blocks_hand_over_first_characters_finishes_and_ticks(tiny):
    """With ``hand_every``, plain rows keep their characters as each turn's ids until a read: a
    job's first characters go out in their own turn and a finished choice at once, the rest on
    the ticks. Rows joining, stopping, asking for logprobs and leaving between reads still get
    exactly their own texts, each row its own column."""
    model, vocab = tiny
    asks = {"plain": ("the ", SampleSettings(0.9), 150, 2, 1, None),
            "later": ("a dog", SampleSettings(0.7, top_k=4), 90, 1, 2, None),
            "stop": ("cat", SampleSettings(1.1), 120, 1, 3, None),
            "logprobs": ("the ", SampleSettings(1.0), 60, 1, 4, 2),
            "leaves": ("mat", SampleSettings(1.0), 10 ** 6, 1, 5, None),
            "short": ("", SampleSettings(greedy=True), 3, 1, 6, None)}
    alone = {key: [t[len(prompt):] for t in generate(model, vocab, prompt, length, s, n, seed)]
             for key, (prompt, s, length, n, seed, _) in asks.items() if key != "leaves"}
    stop = alone["stop"][0][40:43]  # occurs in the text: the choice ends before it
    alone["stop"] = [alone["stop"][0][:alone["stop"][0].index(stop)]]
    calls, texts, jobs = {key: [] for key in asks}, Texts(), {}

    def sink(key, n):
        collect = texts.sink(key, n)

        def both(pieces):
            calls[key].append(pieces)
            collect(pieces)
        return both
    batcher = Batcher(model, vocab, max_batch=16, hand_every=10 ** 6)  # one tick: the first turn
    try:
        for key, (prompt, s, length, n, seed, logprobs) in asks.items():
            jobs[key] = Job(vocab.encode(prompt).tolist(), s, length, n, seed,
                            [stop] if key == "stop" else [], logprobs, sink=sink(key, n))
            batcher.submit(jobs[key])
            time.sleep(0.01)  # later jobs join rows that hold unread characters
        time.sleep(0.02)
        batcher.cancel(jobs["leaves"])
        assert texts.wait(len(asks) - 1)
        deadline = time.monotonic() + 10
        while batcher.stats()["active_rows"]:  # the cancel is taken at a turn, before closing
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        batcher.close()
    for key in alone:
        assert texts[key] == alone[key], key
    for key in ("plain", "later", "logprobs", "short"):
        first, last = calls[key]  # first characters, then the rest with the finish
        assert [len(p.text) for p in first] == [1] * asks[key][3], key
        assert all(p.finish_reason == "length" for p in last), key
    assert [len(p.logprobs) for p in calls["logprobs"][0]] == [1]
    assert calls["stop"][-1][-1].finish_reason == "stop" and len(calls["stop"]) <= 2
    assert calls["leaves"] and not any(p.finish_reason for c in calls["leaves"] for p in c)

    # on short ticks a long choice is handed its characters between its first and its last
    batcher, texts, ticked = Batcher(model, vocab, hand_every=0.005), Texts(), []
    collect = texts.sink("long", 1)
    try:
        batcher.submit(Job([1], SampleSettings(), 3000, seed=7,
                           sink=lambda pieces: (ticked.append(pieces), collect(pieces))))
        assert texts.wait(1)
    finally:
        batcher.close()
    assert texts["long"] == [t[1:] for t in generate(model, vocab, vocab.chars[1], 3000,
                                                     SampleSettings(), 1, 7)]
    assert len(ticked) > 3 and all(len(p) == 1 for p in ticked)


def test_a_job_cancelled_between_joining_and_its_first_turn_leaves_the_others_alone(tiny):
    """A client that leaves while its rows are being primed: its rows go at the next turn, and
    the rows beside them keep their texts (no error for anyone)."""
    model, vocab = tiny
    texts, left = Texts(), []
    batcher = Batcher(model, vocab, max_batch=16, hand_every=10 ** 6)
    leaving = Job(vocab.encode("the cat").tolist(), SampleSettings(), 50, sink=left.append)
    hook = model.rnn.register_forward_hook(  # cancelled while its prompt is read
        lambda module, args, out: batcher.cancel(leaving) if args[0].shape[1] == 7 else None)
    started, stays = threading.Event(), texts.sink("stays", 1)

    def sink(pieces):
        started.set()
        stays(pieces)
    try:  # long enough to be running still when the other job joins, on any machine
        batcher.submit(Job(vocab.encode("the ").tolist(), SampleSettings(0.9), 3000, 1, 1,
                           sink=sink))
        assert started.wait(30)
        batcher.submit(leaving)
        assert texts.wait(1)
    finally:
        batcher.close()
        hook.remove()
    assert leaving.cancelled and not left
    assert texts["stays"] == [t[4:] for t in generate(model, vocab, "the ", 3000,
                                                       SampleSettings(0.9), 1, 1)]


def test_requests_that_arrive_together_start_in_one_forward(tiny):
    """Requests admitted in the same turn are primed together, one forward per prompt length
    reading each distinct prompt once, and each still gets exactly the text it gets alone."""
    model, vocab = tiny
    asks = [("the ", SampleSettings(0.9), 40, 2, 1),
            ("cat ", SampleSettings(0.7, top_k=5), 30, 1, 2),
            ("a dog", SampleSettings(1.1), 20, 1, 3),
            ("mat!", SampleSettings(greedy=True), 25, 1, 4)]
    forwards, held, release, texts = [], threading.Event(), threading.Event(), Texts()
    hook = model.rnn.register_forward_hook(
        lambda module, args, out: forwards.append(args[0].shape[:2]))
    batcher = Batcher(model, vocab, max_batch=16)
    try:
        batcher.submit(Job([0], SampleSettings(), 3,
                           sink=lambda pieces: (held.set(), release.wait(20))))
        assert held.wait(20)  # the worker is held inside the first job's first turn
        forwards.clear()
        for k, (prompt, s, length, n, seed) in enumerate(asks):
            batcher.submit(Job(vocab.encode(prompt).tolist(), s, length, n, seed,
                               sink=texts.sink(k, n)))
        release.set()
        assert texts.wait(len(asks))
    finally:
        batcher.close()
        hook.remove()
    # "a dog"; "the " (two rows, read once), "cat " and "mat!"
    assert sorted(tuple(f) for f in forwards) == [(1, 5), (3, 4)]
    for k, (prompt, s, length, n, seed) in enumerate(asks):
        alone = [t[len(prompt):] for t in generate(model, vocab, prompt, length, s, n, seed)]
        assert texts[k] == alone, k


def test_a_prompt_read_once_is_copied_for_later_requests_and_gives_their_own_texts(tiny):
    """A prompt primed in an earlier turn is not read again: later requests for it copy its
    state and still get exactly the text they get alone; the kept prompts stay within their
    bound, most recently used kept."""
    model, vocab = tiny
    forwards, texts = [], Texts()
    hook = model.rnn.register_forward_hook(
        lambda module, args, out: forwards.append(args[0].shape[:2]))
    batcher = Batcher(model, vocab, max_batch=16)
    asks = [("the ", SampleSettings(0.9), 30, 3, 1), ("the ", SampleSettings(0.5), 20, 2, 2),
            ("a cat", SampleSettings(1.2), 25, 1, 3), ("the ", SampleSettings(1.0), 10, 1, 4)]
    try:
        for k, (prompt, s, length, n, seed) in enumerate(asks):  # one after another
            batcher.submit(Job(vocab.encode(prompt).tolist(), s, length, n, seed,
                               sink=texts.sink(k, n)))
            assert texts.wait(1)
    finally:
        batcher.close()
        hook.remove()
    assert [tuple(f) for f in forwards] == [(1, 4), (1, 5)]  # "the " once, "a cat" once
    assert batcher.prompts.primed_rows == 2
    for k, (prompt, s, length, n, seed) in enumerate(asks):
        alone = [t[len(prompt):] for t in generate(model, vocab, prompt, length, s, n, seed)]
        assert texts[k] == alone, k

    kept = PromptStates(model, vocab, size=2)
    with torch.inference_mode():
        for ids in ([1], [2], [1], [3], [1], [2]):
            kept.rows([ids])
    assert kept.primed_rows == 4  # [1], [2], [3], then [2] again: [1] was used after [2]
    with torch.inference_mode():
        logits, (h, c) = kept.rows([[2], [5, 6], [2]])
        fresh_logits, (fresh_h, fresh_c) = model.next_logits(torch.tensor([[2]]))
    assert logits.shape == (3, len(vocab)) and h.shape == (2, 3, 32)
    assert torch.allclose(logits[2], fresh_logits[0]) and torch.equal(h[:, 0], h[:, 2])
    assert torch.allclose(c[:, 2], fresh_c[:, 0])


def test_an_inbox_wakes_its_reader_only_when_it_waits_for_what_came():
    """A stream's reader is woken by the first piece that arrives while it waits; a collecting
    reader (``take(math.inf)``) only by a finish (the worker's puts come from another thread)."""
    from charlm.serve.app import Inbox
    from charlm.serve.batcher import Piece

    async def scenario():
        loop = asyncio.get_running_loop()
        eager, collecting = Inbox(loop), Inbox(loop)
        reading = [asyncio.ensure_future(eager.take()),
                   asyncio.ensure_future(collecting.take(math.inf))]
        await asyncio.sleep(0.05)
        for inbox in (eager, collecting):
            _put_from_a_thread(inbox, [Piece(0, "a")])
        await asyncio.sleep(0.1)
        assert [t.done() for t in reading] == [True, False]
        assert [p.text for p in reading[0].result()] == ["a"]
        _put_from_a_thread(collecting, [Piece(0, "b", finish_reason="length")])
        got = await asyncio.wait_for(reading[1], 5)
        assert [(p.text, p.finish_reason) for p in got] == [("a", None), ("b", "length")]
        _put_from_a_thread(eager, [Piece(0, "c"), Piece(1, "d")])  # nobody waits: kept
        assert [p.text for p in await eager.take()] == ["c", "d"]

    asyncio.run(scenario())


def test_a_paced_stream_waits_its_turn_but_not_for_its_end():
    """``take(wait)`` holds pieces back until ``wait`` has passed, except a finish, which is
    handed over at once: a stream's pacing never delays the end of its completion."""
    from charlm.serve.app import Inbox
    from charlm.serve.batcher import Piece

    async def scenario():
        loop = asyncio.get_running_loop()
        inbox = Inbox(loop)
        t0 = loop.time()
        reading = asyncio.ensure_future(inbox.take(0.3))
        _put_from_a_thread(inbox, [Piece(0, "a")])
        got = await asyncio.wait_for(reading, 5)
        assert [p.text for p in got] == ["a"] and loop.time() - t0 >= 0.29  # held to its time
        t0 = loop.time()
        reading = asyncio.ensure_future(inbox.take(30))
        await asyncio.sleep(0.05)
        _put_from_a_thread(inbox, [Piece(0, "b")])
        await asyncio.sleep(0.1)
        assert not reading.done()  # a plain piece waits for the stream's next send
        _put_from_a_thread(inbox, [Piece(0, "c", finish_reason="stop")])
        got = await asyncio.wait_for(reading, 5)
        assert [p.text for p in got] == ["b", "c"] and loop.time() - t0 < 5  # not 30 s
        t0 = loop.time()
        reading = asyncio.ensure_future(inbox.take(0.05))  # nothing came in time: the first
        await asyncio.sleep(0.2)                          # piece after it goes at once
        _put_from_a_thread(inbox, [Piece(0, "d")])
        assert [p.text for p in await asyncio.wait_for(reading, 5)] == ["d"]

    asyncio.run(scenario())


def _put_from_a_thread(inbox, pieces):
    t = threading.Thread(target=inbox.put, args=(pieces,))
    t.start()
    t.join()


def test_many_streams_send_less_often_on_shared_ticks():
    from charlm.serve.app import (
        SEND_AT_MOST,
        SEND_EVERY,
        SENDS_PER_SECOND,
        send_every,
        until_next_send,
    )
    waits = [send_every(streams) for streams in (1, 4, 8, 16, 24, 500)]
    assert waits == [SEND_EVERY] * 3 + [2 * SEND_EVERY, 4 * SEND_EVERY, 4 * SEND_EVERY]
    assert waits[5] == SEND_AT_MOST == 0.08
    assert all(n / send_every(n) <= SENDS_PER_SECOND for n in range(1, 33))
    # streams asking at different moments of one tick wait for the same moment: its end
    for streams in (1, 16, 32):
        every = send_every(streams)
        ends = {round(now + until_next_send(now, streams), 9) for now in
                (100 * every + 1e-6, 100.3 * every, 100.999 * every)}
        assert ends == {round(101 * every, 9)}, (streams, ends)
        assert 0 < until_next_send(100.3 * every, streams) <= every


# --- stop, logprobs

def test_completion_ids_are_distinct_and_shaped_as_openai_s():
    from charlm.serve import api
    ids = {api.completion_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(re.fullmatch(r"cmpl-[0-9a-f]{24}", i) for i in ids)


def test_stop_text_holds_back_what_could_become_a_stop_string():
    stop = StopText(["cat", "mat!"])
    sent = [stop.feed(c)[0] for c in "the ma"]
    assert "".join(sent) == "the " and stop.held == "ma"  # "ma" may become "mat!"
    assert stop.feed("n")[:1] == ("man",)
    text, _, stopped = StopText(["cat"]).feed("c")
    assert (text, stopped) == ("", False)
    s = StopText(["cat"])
    assert [s.feed(c)[2] for c in "a cat"] == [False, False, False, False, True]


def test_stop_and_logprobs_in_a_response(tiny):
    model, vocab = tiny
    with TestClient(create_app(model, vocab, "tiny")) as client:
        full = post(client, prompt="the", max_tokens=200, seed=2).json()["choices"][0]["text"]
        stop = next(c for c in full[5:] if c != full[0])  # a character that occurs later on
        r = post(client, prompt="the", max_tokens=200, seed=2, stop=[stop], logprobs=3).json()
    c = r["choices"][0]
    assert c["text"] == full[:full.index(stop)] and c["finish_reason"] == "stop"
    lp = c["logprobs"]
    assert "".join(lp["tokens"]) == c["text"] and len(lp["top_logprobs"]) == len(c["text"])
    for lp_tok, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 3 and lp_tok <= 0 and max(top.values()) >= lp_tok - 1e-6
    assert lp["text_offset"] == list(range(len(c["text"])))


# --- bad input: one JSON error naming the field, never a 500

BAD = [({"model": "gpt-4"}, 404, "model"), ({"model": None}, 400, "model"),
       ({"best_of": 2}, 400, "best_of"), ({"echo": True}, 400, "echo"),
       ({"logit_bias": {"1": 5}}, 400, "logit_bias"), ({"suffix": "x"}, 400, "suffix"),
       ({"prompt": "the \u00e9\u4e16"}, 400, "prompt"), ({"max_tokens": 101}, 400, "max_tokens"),
       ({"n": 5}, 400, "n"), ({"prompt": "a" * 41}, 400, "prompt"),
       ({"max_tokens": -1}, 400, "max_tokens"),
       ({"temperature": "hot"}, 400, "temperature"), ({"top_p": 0}, 400, "top_p"),
       ({"top_k": 0}, 400, "top_k"), ({"seed": 1.5}, 400, "seed"), ({"stop": [1]}, 400, "stop"),
       ({"logprobs": 9}, 400, "logprobs"), ({"frobnicate": 1}, 400, "frobnicate"),
       ({"prompt": ["a", "b"]}, 400, "prompt"), ({"stream": "yes"}, 400, "stream")]


def test_bad_requests_get_an_error_naming_the_field(tiny):
    model, vocab = tiny
    limits = Limits(max_tokens=100, max_n=4, max_prompt=40)
    with TestClient(create_app(model, vocab, "tiny", limits), raise_server_exceptions=False) as c:
        for fields, status, param in BAD:
            r = c.post("/v1/completions", json={"model": "tiny", "prompt": "the", **fields})
            assert (r.status_code, r.json()["error"]["param"]) == (status, param), (fields, r.text)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": "the \u00e9\u4e16"})
        assert "'\u00e9', '\u4e16'" in r.json()["error"]["message"]
        for raw in [b"{not json", b"\xff\xfe", b"[1, 2]", b"", b'"text"', b"null", b"{" * 5000]:
            r = c.post("/v1/completions", content=raw)
            assert 400 <= r.status_code < 500 and "error" in r.json(), raw
        assert c.post("/v1/completions", content=b" " * (2 << 20)).status_code == 413
        assert c.get("/v1/nothing").status_code == 404 and \
            c.get("/v1/completions").status_code == 405
        assert post(c, prompt="the", max_tokens=5).status_code == 200  # and it goes on serving


def test_full_queue_answers_503_at_once(tiny):
    model, vocab = tiny
    app = create_app(model, vocab, "tiny", Limits(max_batch=1, max_queue=1))
    held, release = threading.Event(), threading.Event()
    with TestClient(app) as client:
        batcher = app.state.server.batcher
        holding = Job([0], SampleSettings(), 5, sink=lambda pieces: (held.set(), release.wait(20)))
        batcher.submit(holding)  # its first piece blocks the worker: the row stays taken
        assert held.wait(20)
        batcher.submit(Job([0], SampleSettings(), 5))  # waits: the queue is now full
        t0 = time.monotonic()
        r = post(client, prompt="the", max_tokens=5)
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
        assert time.monotonic() - t0 < 2
        release.set()
        while batcher.stats()["waiting"] or batcher.stats()["active_rows"]:
            time.sleep(0.01)
        assert post(client, prompt="the", max_tokens=5).status_code == 200


# --- as a user would: the official openai client against a live server

def test_openai_client(keyed, tiny):
    openai = pytest.importorskip("openai")
    model, vocab = tiny
    client = openai.OpenAI(base_url=f"{keyed}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    # long enough to outlast several of the stream's 20-ms ticks on a fast CPU (40 characters
    # of this model once came whole in one chunk)
    plain = client.completions.create(model="tiny", prompt="the ", max_tokens=2000, seed=11)
    assert len(plain.choices[0].text) == 2000 and plain.usage.completion_tokens == 2000
    streamed = client.completions.create(model="tiny", prompt="the ", max_tokens=2000, seed=11,
                                         stream=True)
    chunks = [c.choices[0].text for c in streamed if c.choices]
    assert len(chunks) >= 2 and "".join(chunks) == plain.choices[0].text
    three = [client.completions.create(model="tiny", prompt="a dog", max_tokens=50, n=3, seed=5,
                                       temperature=0.8, extra_body={"top_k": 6})
             for _ in range(2)]
    texts = [[c.text for c in r.choices] for r in three]
    assert texts[0] == texts[1] and len(set(texts[0])) == 3
    assert texts[0] == [t[5:] for t in generate(model, vocab, "a dog", 50,
                                                 SampleSettings(0.8, top_k=6), 3, 5)]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed}/v1", api_key="wrong", max_retries=0).completions.create(
            model="tiny", prompt="the", max_tokens=3)
    with pytest.raises(openai.BadRequestError, match="never saw"):
        client.completions.create(model="tiny", prompt="the \u20ac", max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="the", max_tokens=3)


def test_every_api_request_needs_the_key_but_the_page_does_not(keyed):
    import urllib.error
    import urllib.request
    for path in ["/health", "/v1/models"]:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(keyed + path, timeout=10)
        assert e.value.code == 401 and json.load(e.value)["error"]["code"] == "invalid_api_key"
    with urllib.request.urlopen(keyed + "/", timeout=10) as r:
        page = r.read().decode()
    assert r.status == 200 and '"needs_key": true' in page
    assert not re.search(r"(src|href)=\"?(https?:)?//", page)  # self-contained


def test_a_client_that_leaves_mid_stream_frees_its_row(keyed):
    import http.client
    host, port = keyed.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/v1/completions", json.dumps(
        {"model": "tiny", "prompt": "the", "max_tokens": 50000, "stream": True}),
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.read(200)
    assert (health(keyed)["active_rows"], health(keyed)["streams"]) == (1, 1)
    conn.sock.close()  # leave without a word
    conn.close()
    deadline = time.monotonic() + 5
    while health(keyed)["active_rows"] or health(keyed)["streams"]:
        assert time.monotonic() < deadline, "the row was not freed"
        time.sleep(0.02)


def health(url: str, key: str = KEY) -> dict:
    import urllib.request
    req = urllib.request.Request(url + "/health", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


# --- the page in a real browser

def test_page_streams_shades_and_stops(keyed, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(keyed + "/")
    find = browser.find_element
    assert find(By.ID, "keybox").is_displayed()  # the server has a key: the page asks for it
    find(By.ID, "key").send_keys(KEY)
    find(By.ID, "prompt").send_keys("the cat")
    length = find(By.ID, "length")
    length.clear()
    length.send_keys("50000")
    find(By.ID, "generate").click()
    count = "return document.querySelectorAll('#out span.c').length"
    WebDriverWait(browser, 20).until(lambda d: d.execute_script(count) > 20)
    assert find(By.ID, "stop").is_enabled() and not find(By.ID, "generate").is_enabled()
    find(By.ID, "stop").click()
    WebDriverWait(browser, 10).until(lambda d: "stopped" in find(By.ID, "status").text)
    stopped_at = browser.execute_script(count)
    time.sleep(0.3)
    assert browser.execute_script(count) == stopped_at < 50000  # nothing arrives after Stop
    assert find(By.ID, "generate").is_enabled() and no_alert(browser)
    first = find(By.CSS_SELECTOR, "#out span.c")
    shades = browser.execute_script(
        "return [...document.querySelectorAll('#out span.c')].map(s => s.style.background)")
    assert all(shades) and len(set(shades)) > 3  # each shaded by the probability it had
    ActionChains(browser).move_to_element(first).perform()
    tip_text = "return document.getElementById('tip').innerText"
    # the page fills the tip in its mouseover handler, which a loaded machine may run late
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(tip_text))
    tip = browser.execute_script(tip_text)
    assert tip.startswith("#0 ") and tip.count("%") == 6  # the character and 5 alternatives
    # a newline has no width of its own; the page gives it a mark, so its tip can be reached too
    browser.execute_script("addChars({tokens: ['\\n'], token_logprobs: [-0.5],"
                           " top_logprobs: [{'\\n': -0.5, 'a': -1.5}]})")
    newline = browser.find_elements(By.CSS_SELECTOR, "#out span.c")[-1]
    assert newline.rect["width"] > 0
    ActionChains(browser).move_to_element(newline).perform()
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(tip_text).startswith(
        f"#{stopped_at} \\n"))
    assert browser.execute_script("return document.querySelector('#out .prompt').textContent") \
        == "the cat"
    deadline = time.monotonic() + 5
    while health(keyed)["active_rows"]:  # Stop closed the stream: the row is free
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_closing_the_batcher_ends_active_and_waiting_jobs(tiny):
    model, vocab = tiny
    batcher, got = Batcher(model, vocab, max_batch=1), {}
    jobs = [Job([0], SampleSettings(), 10**7, sink=lambda pieces, k=k: got.setdefault(k, []).extend(
        pieces)) for k in ("active", "waiting")]
    for job in jobs:
        batcher.submit(job)
    deadline = time.monotonic() + 10
    while "active" not in got:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    batcher.close()
    for k in ("active", "waiting"):
        assert (got[k][-1].index, got[k][-1].text, got[k][-1].finish_reason) == (
            -1, "the server is stopping", "error"), k
    assert batcher.stats()["active_rows"] == batcher.stats()["waiting"] == 0
