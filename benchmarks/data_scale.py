"""Data at scale: encoding speed, peak memory and cached start-up of load_corpus on big corpora.

    .venv/bin/python benchmarks/data_scale.py [--sizes 25,50,100] [--layout file|dir] [--keep DIR]
    .venv/bin/python benchmarks/data_scale.py --smoke    # one 0.1 MB corpus: checks the script

Builds text corpora on the fly in a temporary folder: the standard library's sources (about
12 MB) repeated with a different line prefix per copy, up to each size, as one big file
(``--layout file``, the hard case: a single 100 MB document) or as a folder of files. For each
size, in fresh subprocesses with a fresh cache (CHARLM_CACHE, HF_DATASETS_CACHE):

  cold   load_corpus encodes: MB/s of text (target >= 30 MB/s on 2 cores); peak memory,
         sampled every 5 ms as the process's anonymous RSS (heap: what must stay flat as the
         corpus grows) and as VmHWM (everything resident, file-backed mmap pages included)
  warm   a second process from the cache: seconds from calling load_corpus to TrainStreams
         batch(0) ready (target < 1 s), and how many bytes it read through read() (the text
         must not be read again: the fingerprint is each file's path, size and mtime)

Prints one JSON line per figure, then a table. Each line carries the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

COLD = r"""
import json, os, sys, threading, time
from pathlib import Path

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0

peak = {"anon": 0}
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak["anon"] = max(peak["anon"], status("RssAnon"))
        time.sleep(0.005)

from charlm.data.corpus import load_corpus
import datasets, numpy, torch  # everything a run imports anyway, before the baseline
base_anon, base_hwm = status("RssAnon"), status("VmHWM")
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
corpus = load_corpus(sys.argv[1:])
seconds = time.perf_counter() - t0
stop.set()
print(json.dumps({"seconds": seconds, "chars": len(corpus.ids), "vocab": len(corpus.vocab),
                  "base_anon": base_anon, "peak_anon": max(peak["anon"], status("RssAnon")),
                  "base_hwm": base_hwm, "hwm": status("VmHWM")}))
"""

WARM = r"""
import json, sys, time
from pathlib import Path
from charlm.data.corpus import TrainStreams, load_corpus
import datasets, numpy, torch

def rchar():
    return int(Path("/proc/self/io").read_text().split("rchar:")[1].split()[0])

r0, t0 = rchar(), time.perf_counter()
corpus = load_corpus(sys.argv[1:])
streams = TrainStreams(corpus.split(0.1, 0.0)["train"], batch_size=64, seq_len=128)
x, y, reset = streams.batch(0)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "bytes_read": rchar() - r0,
                  "encoded_again": not corpus.meta["from_cache"], "batch_shape": list(x.shape)}))
"""


def load() -> float:
    return round(os.getloadavg()[0], 2)


def stdlib_texts(limit: int | None = None) -> list[str]:
    """The built-in corpus's files (the first ``limit`` of them), as text."""
    from charlm.data.sources import stdlib_files
    return [f.read_text(encoding="utf-8", errors="replace") for f in stdlib_files()[:limit]]


def build(folder: Path, megabytes: float, layout: str, texts: list[str]) -> tuple[list[str], int]:
    """Write a corpus of about ``megabytes`` MB: copies of ``texts``, each with its own line
    prefix (so the copies differ). Returns the --data values and the size in bytes."""
    target, written, copy = int(megabytes * 1_000_000), 0, 0
    path = folder / (f"corpus_{megabytes}mb" + (".txt" if layout == "file" else ""))
    if layout == "dir":
        path.mkdir()
    with open(path, "w", encoding="utf-8") if layout == "file" else nullcontext() as out:
        while written < target:
            prefix = f"{copy:03d}| "
            for i, text in enumerate(texts):
                chunk = prefix + text.replace("\n", "\n" + prefix)
                if layout == "file":
                    out.write(chunk)
                else:
                    (path / f"c{copy:03d}_{i:04d}.txt").write_text(chunk, encoding="utf-8")
                written += len(chunk.encode("utf-8"))
                if written >= target:
                    break
            copy += 1
    return [str(path)], written


def child(code: str, data: list[str], cache: Path) -> dict:
    env = {**os.environ, "CHARLM_CACHE": str(cache / "charlm"),
           "HF_DATASETS_CACHE": str(cache / "hf"), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", code, *data], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25,50,100", help="corpus sizes in MB")
    parser.add_argument("--layout", choices=("file", "dir"), default="file")
    parser.add_argument("--keep", help="build the corpora here and keep them (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true",
                        help="one 0.1 MB corpus from a few stdlib files: checks the script")
    args = parser.parse_args()
    if args.smoke:
        texts, sizes = stdlib_texts(limit=20), [0.1]
    else:
        texts, sizes = stdlib_texts(), [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for mb in sizes:
            data, size = build(folder, mb, args.layout, texts)
            cache = Path(tmp) / f"cache_{mb}"
            cold = child(COLD, data, cache)
            cold_load = load()
            warm = child(WARM, data, cache)
            row = {"figure": "data_scale", "layout": args.layout, "megabytes": round(size / 1e6, 1),
                   "chars": cold["chars"], "vocab": cold["vocab"],
                   "encode_s": round(cold["seconds"], 2),
                   "encode_mb_per_s": round(size / 1e6 / cold["seconds"], 1),
                   "peak_anon_mb": round(cold["peak_anon"] / 1e6, 1),
                   "anon_growth_mb": round((cold["peak_anon"] - cold["base_anon"]) / 1e6, 1),
                   "vmhwm_mb": round(cold["hwm"] / 1e6, 1),
                   "hwm_growth_mb": round((cold["hwm"] - cold["base_hwm"]) / 1e6, 1),
                   "cold_loadavg": cold_load,
                   "warm_start_s": round(warm["seconds"], 3),
                   "warm_bytes_read": warm["bytes_read"],
                   "warm_encoded_again": warm["encoded_again"],
                   "warm_loadavg": load()}
            print(json.dumps(row), flush=True)
            rows.append(row)
            for d in data:  # the next size is built fresh; keep the disk use down
                if not args.keep:
                    p = Path(d)
                    if p.is_file():
                        p.unlink()
    print(f"\n{'MB':>6}{'encode s':>10}{'MB/s':>7}{'heap peak':>11}{'+heap':>7}{'VmHWM':>8}"
          f"{'+HWM':>7}{'load':>6}{'warm s':>8}{'read':>9}{'load':>6}   (memory in MB)")
    for r in rows:
        print(f"{r['megabytes']:>6}{r['encode_s']:>10}{r['encode_mb_per_s']:>7}"
              f"{r['peak_anon_mb']:>11}{r['anon_growth_mb']:>7}{r['vmhwm_mb']:>8}"
              f"{r['hwm_growth_mb']:>7}{r['cold_loadavg']:>6}{r['warm_start_s']:>8}"
              f"{r['warm_bytes_read']:>9,}{r['warm_loadavg']:>6}")


if __name__ == "__main__":
    main()
