"""OpenMP settings for a small LSTM's training step, on an idle machine and next to one busy
process: torch's default (2 threads, spinning waiters), OMP_WAIT_POLICY=PASSIVE, a short
GOMP_SPINCOUNT, and one thread. Each setting runs in a fresh process (OpenMP reads its settings
when it starts), interleaved.

    .venv/bin/python benchmarks/omp_wait.py [--repeats 2]
    .venv/bin/python benchmarks/omp_wait.py --smoke     # a tiny LSTM, one setting: checks it

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
import sys, time, torch
from torch import nn
hidden, batch, seq, steps = map(int, sys.argv[1:5])
emb, lstm, head = nn.Embedding(65, 64), nn.LSTM(64, hidden, batch_first=True), nn.Linear(hidden, 65)
params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
opt = torch.optim.AdamW(params, 1e-3)
x = torch.randint(0, 65, (batch, seq))
def step():
    out, _ = lstm(emb(x)); head(out).logsumexp(-1).mean().backward(); opt.step(); opt.zero_grad()
step(); step()
t = time.perf_counter()
for _ in range(steps):
    step()
print(batch * seq * steps / (time.perf_counter() - t))
"""
SIZES = (256, 16, 128, 10)  # the LSTM's hidden size, batch, sequence length, timed steps
SMOKE_SIZES = (16, 4, 16, 3)
SETTINGS = {"default": {}, "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
            "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
            "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"}}


def chars_per_s(extra: dict, sizes: tuple = SIZES) -> float:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, sizes)], env={**env, **extra},
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(repeats: int, settings: dict = SETTINGS, sizes: tuple = SIZES) -> dict:
    runs = {name: [] for name in settings}
    for _ in range(repeats):
        for name, extra in settings.items():
            runs[name].append(chars_per_s(extra, sizes))
    return {name: round(statistics.median(v)) for name, v in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny LSTM, a few steps, one setting, once")
    args = parser.parse_args()
    settings, sizes = SETTINGS, SIZES
    if args.smoke:
        args.repeats, sizes = 1, SMOKE_SIZES
        settings = {k: SETTINGS[k] for k in ("OMP_NUM_THREADS=1",)}
    figure = f"lstm_1x{sizes[0]}_train_chars_per_s"
    rows = [{"figure": figure, "machine": "idle", "load_avg_1min": round(os.getloadavg()[0], 2),
             **measure(args.repeats, settings, sizes)}]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one competing process
    try:
        rows.append({"figure": figure, "machine": "one busy process",
                     "load_avg_1min": round(os.getloadavg()[0], 2),
                     **measure(args.repeats, settings, sizes)})
    finally:
        busy.kill()
    for row in rows:
        print(json.dumps(row))
    print(f"\n{'setting':<26}" + "".join(f"{r['machine']:>18}" for r in rows))
    for name in settings:
        print(f"{name:<26}" + "".join(f"{r[name]:>18,}" for r in rows))


if __name__ == "__main__":
    main()
