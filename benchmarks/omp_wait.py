"""OpenMP settings for a small LSTM's training step, on an idle machine and next to one busy
process: torch's default (2 threads, spinning waiters), OMP_WAIT_POLICY=PASSIVE, a short
GOMP_SPINCOUNT, and one thread. Each setting runs in a fresh process (OpenMP reads its settings
when it starts), interleaved.

    .venv/bin/python benchmarks/omp_wait.py [--repeats 2]

charlm leaves OpenMP at torch's defaults, the fastest on an idle machine; this is the evidence
behind the README's advice to use OMP_NUM_THREADS=1 when other work shares the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import time, torch
from torch import nn
emb, lstm, head = nn.Embedding(65, 64), nn.LSTM(64, 256, batch_first=True), nn.Linear(256, 65)
params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
opt = torch.optim.AdamW(params, 1e-3)
x = torch.randint(0, 65, (16, 128))
def step():
    out, _ = lstm(emb(x)); head(out).logsumexp(-1).mean().backward(); opt.step(); opt.zero_grad()
step(); step()
t = time.perf_counter()
for _ in range(10):
    step()
print(16 * 128 * 10 / (time.perf_counter() - t))
"""
SETTINGS = {"default": {}, "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
            "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
            "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"}}


def chars_per_s(extra: dict) -> float:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", CHILD], env={**env, **extra}, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(repeats: int) -> dict:
    runs = {name: [] for name in SETTINGS}
    for _ in range(repeats):
        for name, extra in SETTINGS.items():
            runs[name].append(chars_per_s(extra))
    return {name: round(statistics.median(v)) for name, v in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = [{"figure": "lstm_1x256_train_chars_per_s", "machine": "idle",
             "load_avg_1min": round(os.getloadavg()[0], 2), **measure(args.repeats)}]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one competing process
    try:
        rows.append({"figure": "lstm_1x256_train_chars_per_s", "machine": "one busy process",
                     "load_avg_1min": round(os.getloadavg()[0], 2), **measure(args.repeats)})
    finally:
        busy.kill()
    for row in rows:
        print(json.dumps(row))
    print(f"\n{'setting':<26}" + "".join(f"{r['machine']:>18}" for r in rows))
    for name in SETTINGS:
        print(f"{name:<26}" + "".join(f"{r[name]:>18,}" for r in rows))


if __name__ == "__main__":
    main()
