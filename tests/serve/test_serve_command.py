"""charlm serve as a command: its errors, and a bounded load test against it in its own process."""

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("starlette",
                    reason="charlm serve needs the serve extra (pip install -e '.[serve]')")

from test_serve import KEY, checkpoint, health, tiny  # noqa: E402,F401  (shared fixtures)

from charlm.cli import cli  # noqa: E402
from charlm.serve import bind  # noqa: E402

# --- the command

def test_serve_command_port_in_use_and_missing_extra(checkpoint, monkeypatch):
    runner = CliRunner()
    taken = bind("127.0.0.1", 0)
    try:
        r = runner.invoke(cli, ["serve", str(checkpoint), "--port", str(taken.getsockname()[1])])
    finally:
        taken.close()
    assert r.exit_code == 1 and "is already in use" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(cli, ["serve", str(checkpoint), "--max-batch", "0"])
    assert r.exit_code == 1 and "--max-batch must be at least 1" in r.output
    import charlm
    for name in [m for m in sys.modules if m.startswith("charlm.serve")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(charlm, "serve")
    for name in [m for m in sys.modules if m.split(".")[0] in ("starlette", "uvicorn")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    r = runner.invoke(cli, ["serve", str(checkpoint)])
    assert r.exit_code == 1 and r.output.strip() == (
        "Error: charlm serve needs the serve extra: pip install 'charlm[serve]'")


def start_server(checkpoint, *args, env=None) -> tuple[subprocess.Popen, str]:
    """``charlm serve`` in its own process on a free port → (process, address)."""
    proc = subprocess.Popen([sys.executable, "-m", "charlm", "serve", str(checkpoint), "--port",
                             "0", *args], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, preexec_fn=_ctrl_c_as_in_a_terminal)
    line = proc.stderr.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
    if not found:
        proc.kill()
        raise AssertionError(f"charlm serve did not start: {line}{proc.stderr.read()}")
    return proc, found.group(1)


def _ctrl_c_as_in_a_terminal() -> None:
    """A suite started in the background (`make test &`) passes SIGINT on ignored, and Python
    then leaves it ignored: the server would never see Ctrl-C."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def rss_kib(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


async def _client(session, url: str, kind: str, i: int) -> tuple[str, object]:
    """One load-test client: a good request (streamed or not), one that leaves, or a bad body."""
    headers = {"Authorization": f"Bearer {KEY}"}
    length, n = 100 + 37 * (i % 9), 1 + i % 3
    body = {"model": "tiny", "prompt": "the cat"[: i % 8], "max_tokens": length, "n": n,
            "seed": i, "temperature": 0.5 + (i % 5) / 4, "stream": kind != "plain"}
    if kind == "bad":
        raw = [b"{oops", b'{"model": "tiny", "prompt": "\xc3\xa9"}', b'{"model": "tiny", "n": 99}',
               b'{"model": "nope"}'][i % 4]
        async with session.post(url, data=raw, headers=headers) as r:
            return kind, (r.status, await r.json())
    async with session.post(url, json=body, headers=headers) as r:
        if kind == "plain":
            return kind, (r.status, [len(c["text"]) for c in (await r.json())["choices"]],
                          length, n)
        got = [0] * n
        async for line in r.content:
            if line.startswith(b"data: {"):
                for c in json.loads(line[6:])["choices"]:
                    got[c["index"]] += len(c["text"])
            if kind == "leave" and sum(got) > 20:
                return kind, None  # the connection closes with the session's context
        return kind, (r.status, got, length, n)


def test_load_64_clients_some_leaving_some_bad(checkpoint):
    """64 concurrent clients against `charlm serve` (max 16 rows, so most of them queue): every
    good request gets all its characters, bad ones get 4xx, the server keeps its memory."""
    aiohttp = pytest.importorskip("aiohttp")
    proc, url = start_server(checkpoint, "--max-batch", "16", "--max-tokens", "500",
                             env={"CHARLM_API_KEY": KEY})
    kinds = ["stream"] * 32 + ["plain"] * 16 + ["leave"] * 8 + ["bad"] * 8

    async def health_while_busy(s) -> tuple[float, dict]:
        """The slowest of five /health answers while busy, and the fullest batch they saw (one
        look can fall between a turn dropping its finished rows and the next admitting more)."""
        await asyncio.sleep(0.5)
        slowest, fullest = 0.0, {"active_rows": -1}
        for _ in range(5):
            t0 = time.monotonic()
            async with s.get(url + "/health", headers={"Authorization": f"Bearer {KEY}"}) as r:
                seen = await r.json()
            slowest = max(slowest, time.monotonic() - t0)
            fullest = max(fullest, seen, key=lambda h: h["active_rows"])
            await asyncio.sleep(0.02)
        return slowest, fullest

    async def wave():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=50)) as s:
            return await asyncio.gather(health_while_busy(s),
                                        *[_client(s, url + "/v1/completions", k, i)
                                          for i, k in enumerate(kinds)])

    try:
        for k in range(2):  # warm up, then measure memory across a second and a third wave
            asyncio.run(asyncio.wait_for(wave(), 55))
            if k == 0:
                base = rss_kib(proc.pid)
        t0 = time.monotonic()
        (seconds, busy), *results = asyncio.run(asyncio.wait_for(wave(), 55))
        assert time.monotonic() - t0 < 55
        assert busy["active_rows"] >= 14 and busy["waiting"] > 0 and seconds < 1.0, (seconds, busy)
        for kind, result in results:
            if kind == "bad":
                assert 400 <= result[0] < 500 and set(result[1]["error"]) == {
                    "message", "type", "param", "code"}
            elif kind != "leave":
                status, got, length, n = result
                assert status == 200 and got == [length] * n, result
        time.sleep(0.3)
        state = health(url)
        assert (state["active_rows"], state["waiting"]) == (0, 0)
        assert rss_kib(proc.pid) < base + 40_000, "memory grew across waves"
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


def test_ctrl_c_ends_open_streams_and_stops_at_once(checkpoint):
    """The model runs in the main thread: Ctrl-C there must still end every open stream with a
    last event that says why, and stop the server in a moment, with one line and no traceback."""
    import signal
    import urllib.request
    proc, url = start_server(checkpoint, "--max-tokens", "1000000")
    try:
        r = urllib.request.urlopen(urllib.request.Request(
            url + "/v1/completions", json.dumps({"model": "tiny", "prompt": "the",
                                                 "max_tokens": 1000000, "stream": True}).encode(),
            {"Content-Type": "application/json"}), timeout=10)
        assert r.read(200)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rest = r.read().decode()  # returns once the server has ended the stream
        assert time.monotonic() - t0 < 3
        # the interpreter's own exit (torch's threads) takes a second or more on a loaded machine
        assert proc.wait(60) == 1
        err = proc.stderr.read()
        assert err.strip() == "Error: interrupted" and "Traceback" not in err, err
        last = json.loads(rest.strip().split("\n\n")[-1][len("data: "):])
        assert last["error"]["message"] == "the server is stopping", rest[-300:]
    finally:
        proc.kill()
        proc.wait(10)
