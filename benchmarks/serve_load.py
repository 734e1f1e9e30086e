"""charlm serve under load: aggregate characters per second, time to first character, memory.

    .venv/bin/python benchmarks/serve_load.py CHECKPOINT [--length 500] [--clients 1,8,32]
    .venv/bin/python benchmarks/serve_load.py CHECKPOINT --tree /tmp/old --tree .  # two versions
    .venv/bin/python benchmarks/serve_load.py --smoke        # a tiny random model, a few seconds
    .venv/bin/python benchmarks/serve_load.py CHECKPOINT --worker   # no HTTP: the model worker

Starts ``charlm serve CHECKPOINT`` in its own process on 127.0.0.1 and, for each client count N,
opens N concurrent streaming completions of ``--length`` characters and measures:

  chars/s  N x length over the wall time from the first request to the last [DONE], against
           ``charlm sample --num-samples N --json`` (generate() with num_samples=N) of the same
           length in its own process; the ratio is server / generate. Each of ``--rounds``
           rounds runs ``charlm sample`` and then every server once; the ratio reported is the
           median of the rounds' ratios, with their range (on a shared machine one round says
           little: the same code moves by a third from one minute to the next).
  ttfc     time to the first character of a short prompt: median and p95 over the N clients of
           every round (at 1 client: over --ttfc-repeats requests one after another).
  memory   each server's peak resident memory (VmHWM) after the runs, and its RSS at start.

``--tree PATH`` (repeatable) serves from the charlm source in PATH instead of the installed one,
started with PATH as its working directory so that Python imports that copy first (a
PYTHONPATH would lose to the working directory's own charlm); the script checks which copy
each server imports. Several trees are measured in the same rounds, so their ratios compare.

Each client either opens a new connection for its request (``Connection: close``: the
connections' setup falls in the measured window) or sends it on a connection it already holds, as
a pooling client such as OpenAI's keeps one open between requests (``kept``: the connections are
opened, untimed, just before the round; HTTP/1.1 keep-alive). ``--connections both`` (the
default) measures both ways in every round.

The clients run in this process, so they share the CPU with the server; on a shared machine the
figures move with the other load (the load average is printed with them).

``--worker`` leaves HTTP out: for each N, the server's Batcher alone serves N jobs in this process,
run in the main thread (as ``charlm serve`` runs it) and in a thread of its own (as in tests and
``create_app``'s default), each against ``generate()`` with num_samples=N, interleaved, best of
``--repeats``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charlm.data.vocab import CharVocab
from charlm.generation.checkpoint import ExportedModel
from charlm.model import CharRNN, ModelConfig

PROMPT = "ROMEO:\n"


def check_tree(tree: str) -> None:
    """Stop unless Python started in ``tree`` imports the charlm in it."""
    found = subprocess.run([sys.executable, "-c", "import charlm; print(charlm.__file__)"],
                           cwd=tree, capture_output=True, text=True).stdout.strip()
    if not found.startswith(str(Path(tree).resolve()) + os.sep):
        sys.exit(f"{tree} does not hold the charlm that Python imports there ({found})")


def start_server(checkpoint: str, max_batch: int, tree: str | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """``charlm serve`` on a free port, from the charlm in ``tree`` (None: the one this Python
    imports; see ``check_tree``) → (process, address)."""
    proc = subprocess.Popen([sys.executable, "-m", "charlm", "serve", checkpoint, "--port", "0",
                             "--max-batch", str(max_batch), "--max-tokens", "100000"],
                            stderr=subprocess.PIPE, text=True, cwd=tree)
    line = proc.stderr.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
    if not found:
        proc.kill()
        sys.exit(f"charlm serve did not start: {line}")
    return proc, found.group(1)


def memory_kib(pid: int, field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
LAST_CHUNK = b"\r\n0\r\n\r\n"  # the end of a chunked response, after the stream's [DONE] event


def host_port(url: str) -> tuple[str, int]:
    host, port = url.rsplit("/", 1)[1].split(":")
    return host, int(port)


async def stream_one(url: str, name: str, length: int, seed: int,
                     kept: Connection | None = None) -> tuple[float, int]:
    """One streamed completion → (seconds to its first character, characters received), on a
    new connection that the server closes at the end, or on ``kept``, which stays open.

    A bare HTTP/1.1 client on asyncio streams: the request goes out in one write (a client that
    writes headers and body apart can wait 40 ms on Nagle's algorithm, which would be measured as
    the server's), and reading costs little CPU beside the server's."""
    host, port = host_port(url)
    body = json.dumps({"model": name, "prompt": PROMPT, "max_tokens": length, "temperature": 0.8,
                       "seed": seed, "stream": True}).encode()
    t0, first, got, done = time.perf_counter(), None, 0, False
    reader, writer = kept or await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n%s\r\n%s"
                 % (host.encode(), len(body), b"" if kept else b"Connection: close\r\n", body))
    status = await reader.readline()
    assert b" 200 " in status, status
    # Read in large blocks and parse only the SSE "data: ..." lines: the clients share the
    # server's two cores, so what they spend on reading is taken from the server being measured.
    # A new connection ends when the server closes it, a kept one with the response's last chunk.
    rest = tail = b""
    while block := await reader.read(1 << 16):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.startswith(b"data: {"):
                n = sum(len(c["text"]) for c in json.loads(line[6:])["choices"])
                if n and first is None:
                    first = time.perf_counter() - t0
                got += n
            done = done or line.startswith(b"data: [DONE]")
        tail = (tail + block)[-len(LAST_CHUNK):]
        if kept and done and tail == LAST_CHUNK:
            break
    if not kept:
        writer.close()
    return first, got


async def run_clients(url: str, name: str, clients: int, length: int, kept: bool = False) -> dict:
    """N concurrent streams → aggregate chars/s and the time-to-first-character of each;
    ``kept``: each on a connection opened (untimed) before the round."""
    conns = ([await asyncio.open_connection(*host_port(url)) for _ in range(clients)] if kept
             else [None] * clients)
    try:
        await stream_one(url, name, 10, 0, conns[0])  # warm: the first forward
        t0 = time.perf_counter()
        results = await asyncio.gather(*[stream_one(url, name, length, i, conn)
                                         for i, conn in enumerate(conns)])
        wall = time.perf_counter() - t0
    finally:
        for conn in conns:
            if conn:
                conn[1].close()
    firsts, chars = [r[0] for r in results], sum(r[1] for r in results)
    assert chars == clients * length, (chars, clients * length)
    return {"chars_per_s": chars / wall, "firsts": firsts}


async def sequential_ttfc(url: str, name: str, repeats: int, kept: bool) -> list[float]:
    conn = await asyncio.open_connection(*host_port(url)) if kept else None
    try:
        return [(await stream_one(url, name, 5, i, conn))[0] for i in range(repeats)]
    finally:
        if conn:
            conn[1].close()


def generate_rate(checkpoint: str, clients: int, length: int) -> float:
    """chars/s of ``charlm sample --num-samples N --json`` (generate() with num_samples=N, timed
    around the generation only), in its own process like the server."""
    out = subprocess.run([sys.executable, "-m", "charlm", "sample", checkpoint, "--prompt", PROMPT,
                          "--length", str(length), "--num-samples", str(clients), "--seed", "1",
                          "--temperature", "0.8", "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["chars_per_s"]


def worker_rates(checkpoint: str, clients: int, length: int, repeats: int) -> dict:
    """chars/s of generate() and of the Batcher in the main thread and in its own thread (no
    HTTP), in this process, interleaved, best of ``repeats`` each."""
    import threading

    from charlm.generation.checkpoint import load
    from charlm.generation.sampling import SampleSettings, generate
    from charlm.serve.app import SEND_EVERY
    from charlm.serve.batcher import Batcher, Job
    model, vocab, _ = load(checkpoint)
    prompt_ids = vocab.encode(PROMPT).tolist()

    def batcher(own_thread: bool) -> float:
        done, left = threading.Event(), [clients]

        def sink(pieces) -> None:  # on the worker's thread
            if any(p.finish_reason for p in pieces):
                left[0] -= 1
                if not left[0]:
                    done.set()
                    if not own_thread:
                        b.close()  # run() returns after this turn
        b = Batcher(model, vocab, max_batch=max(64, clients), thread=own_thread,
                    hand_every=SEND_EVERY)  # as the server hands over
        t0 = time.perf_counter()
        for i in range(clients):
            b.submit(Job(prompt_ids, SampleSettings(0.8), length, 1, i, sink=sink))
        if own_thread:
            done.wait()
        else:
            b.run()
        seconds = time.perf_counter() - t0
        b.close()
        return clients * length / seconds

    def generated() -> float:
        t0 = time.perf_counter()
        generate(model, vocab, PROMPT, length, SampleSettings(0.8), clients, seed=1)
        return clients * length / (time.perf_counter() - t0)

    best = {"generate": 0.0, "main_thread": 0.0, "own_thread": 0.0}
    for _ in range(repeats):
        best["generate"] = max(best["generate"], generated())
        best["main_thread"] = max(best["main_thread"], batcher(False))
        best["own_thread"] = max(best["own_thread"], batcher(True))
    return best


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def smoke_checkpoint(folder: Path) -> str:
    """A tiny random LSTM as an export folder (speed, not text, is measured)."""
    vocab = CharVocab.from_text(PROMPT + "abcdefghijklmnopqrstuvwxyz .,\n")
    exported = ExportedModel(ModelConfig(vocab_size=len(vocab), hidden_size=32).to_dict(),
                             vocab.chars)
    exported.model.load_state_dict(CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=32))
                                   .state_dict())
    exported.save_pretrained(str(folder))
    return str(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("--length", type=int, default=500)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--ttfc-repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds of charlm sample and every server, alternated (default 5)")
    p.add_argument("--tree", action="append",
                   help="serve from the charlm source in this folder (repeat to compare)")
    p.add_argument("--connections", choices=["new", "kept", "both"], default="both",
                   help="a new connection per request, one kept open from before the round "
                        "(as a pooling client keeps it), or both in every round (default)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for the server and charlm sample alike (default: torch's)")
    p.add_argument("--worker", action="store_true",
                   help="no HTTP: the Batcher in the main thread and in its own, against generate")
    p.add_argument("--repeats", type=int, default=5, help="--worker: best of this many runs")
    p.add_argument("--smoke", action="store_true", help="tiny random model, short runs")
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    if args.smoke:
        args.checkpoint = smoke_checkpoint(Path(tmp.name) / "smoke")
        args.length, args.clients, args.ttfc_repeats = 50, "1", 3  # 1: the ttfc path too
        args.rounds = 1
    if not args.checkpoint:
        p.error("give a CHECKPOINT (or --smoke)")
    counts = [int(c) for c in args.clients.split(",")]
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the subprocesses inherit it
    if args.worker or args.smoke:
        print(f"{'rows':>5} {'generate ch/s':>14} {'main thread':>12} {'ratio':>6} "
              f"{'own thread':>11} {'ratio':>6}")
        for n in counts if args.worker else [2]:
            r = worker_rates(args.checkpoint, n, args.length, 1 if args.smoke else args.repeats)
            print(json.dumps({"rows": n, "length": args.length, **r}), flush=True)
            print(f"{n:>5} {r['generate']:>14,.0f} {r['main_thread']:>12,.0f} "
                  f"{r['main_thread'] / r['generate']:>6.2f} {r['own_thread']:>11,.0f} "
                  f"{r['own_thread'] / r['generate']:>6.2f}")
        if args.worker:
            return
    checkpoint = str(Path(args.checkpoint).resolve())  # the trees' servers start elsewhere
    trees = args.tree or [None]
    names = [Path(t).resolve().name if t else "installed" for t in trees]
    modes = ["new", "kept"] if args.connections == "both" else [args.connections]
    for tree in args.tree or []:
        check_tree(tree)
    servers = [start_server(checkpoint, max(counts), tree) for tree in trees]
    try:
        name = json.loads(__import__("urllib.request").request.urlopen(servers[0][1] +
                          "/v1/models").read())["data"][0]["id"]
        start_rss = [memory_kib(proc.pid, "VmRSS") for proc, _ in servers]
        rows = []
        runs = [(k, mode) for k in range(len(servers)) for mode in modes]
        for n in counts:
            bases, served = [], {run: [] for run in runs}
            for i in range(args.rounds):
                # each round: charlm sample, then every server each way, so that all of them
                # meet the same minutes of a shared machine; every other round in reverse, so
                # that none is always first after charlm sample
                bases.append(generate_rate(checkpoint, n, args.length))
                for k, mode in runs[::-1] if i % 2 else runs:
                    served[k, mode].append(asyncio.run(
                        run_clients(servers[k][1], name, n, args.length, mode == "kept")))
            for k, mode in runs:
                url = servers[k][1]
                ratios = [r["chars_per_s"] / b for r, b in zip(served[k, mode], bases)]
                firsts = (asyncio.run(sequential_ttfc(url, name, args.ttfc_repeats,
                                                      mode == "kept")) if n == 1
                          else [f for r in served[k, mode] for f in r["firsts"]])
                row = {"server": names[k], "connections": mode, "clients": n,
                       "length": args.length, "rounds": args.rounds,
                       "server_chars_per_s": statistics.median(r["chars_per_s"]
                                                               for r in served[k, mode]),
                       "generate_chars_per_s": statistics.median(bases),
                       "ratio": statistics.median(ratios), "ratio_min": min(ratios),
                       "ratio_max": max(ratios), "ratios": [round(r, 3) for r in ratios],
                       "ttfc_median_ms": 1000 * statistics.median(firsts),
                       "ttfc_p95_ms": 1000 * pct(firsts, 0.95), "load_avg": os.getloadavg()[0]}
                rows.append(row)
                print(json.dumps(row), flush=True)
        peaks = [memory_kib(proc.pid, "VmHWM") for proc, _ in servers]
        for k in range(len(servers)):
            print(json.dumps({"server": names[k], "server_start_rss_mib": start_rss[k] / 1024,
                              "server_peak_mib": peaks[k] / 1024,
                              "omp_num_threads": os.environ.get("OMP_NUM_THREADS",
                                                                "torch default")}))
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(10)
    print(f"\n{'server':>12} {'conn':>5} {'clients':>7} {'server ch/s':>12} {'generate ch/s':>14} "
          f"{'ratio':>6} {'range':>10} {'ttfc med ms':>12} {'ttfc p95 ms':>12}")
    for r in rows:
        print(f"{r['server']:>12} {r['connections']:>5} {r['clients']:>7} "
              f"{r['server_chars_per_s']:>12,.0f} "
              f"{r['generate_chars_per_s']:>14,.0f} {r['ratio']:>6.2f} "
              f"{r['ratio_min']:>4.2f}-{r['ratio_max']:<4.2f} {r['ttfc_median_ms']:>12.1f} "
              f"{r['ttfc_p95_ms']:>12.1f}")
    for k in range(len(servers)):
        print(f"{names[k]} memory: {start_rss[k] / 1024:.0f} MiB at start, "
              f"peak {peaks[k] / 1024:.0f} MiB")
    print("(chars/s: medians over the rounds; ratio: the median of the rounds' ratios)")

if __name__ == "__main__":
    main()
