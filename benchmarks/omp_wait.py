"""OMP_WAIT_POLICY=PASSIVE (charlm's default) against OpenMP's spinning default, on the training
step of a small LSTM, each in a fresh process (the policy is read when OpenMP starts),
interleaved. Run it on an idle machine and on a busy one.

    .venv/bin/python benchmarks/omp_wait.py [--repeats 3]
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
from charlm.model import CharRNN, ModelConfig
m = CharRNN(ModelConfig(65, "lstm", 256, 1, 64))
opt = torch.optim.AdamW(m.parameters(), 1e-3)
x = torch.randint(0, 65, (16, 128))
def step():
    logits, _ = m(x); logits.logsumexp(-1).mean().backward(); opt.step(); opt.zero_grad()
step(); step()
t = time.perf_counter()
for _ in range(10):
    step()
print(16 * 128 * 10 / (time.perf_counter() - t))
"""


def run(policy: str) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = {"PASSIVE": [], "ACTIVE": []}
    for _ in range(args.repeats):
        for policy in results:
            results[policy].append(run(policy))
    row = {"figure": "omp_wait_policy_chars_per_s", "model": "lstm 1x256, batch 16x128",
           "load_avg_1min": round(load, 2),
           **{p: round(statistics.median(v)) for p, v in results.items()}}
    row["passive_over_active"] = round(row["PASSIVE"] / row["ACTIVE"], 3)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
