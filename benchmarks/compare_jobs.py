"""Why `charlm compare` trains its runs side by side on a CPU, one thread each: a run's training
step with every core's threads, with one thread, and as many one-thread runs as there are cores
at once (each in its own process, as compare starts them), per cell, at compare's sizes.

    .venv/bin/python benchmarks/compare_jobs.py [--params 500000] [--batch 32] [--seconds 6]
    .venv/bin/python benchmarks/compare_jobs.py --smoke     # a tiny model, one cell: checks it

Prints one JSON line per cell: chars/s of one run with all threads, of one run with one thread,
the summed chars/s of the side-by-side runs, and ``side_by_side_gain``, that sum over the first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

CHILD = r"""
import json, sys, time, torch
import torch.nn.functional as F
from charlm.model import CharRNN, ModelConfig, detach_state, hidden_size_for_params
cell, (params, batch, threads), seconds = sys.argv[1], map(int, sys.argv[2:5]), float(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
config = ModelConfig(vocab_size=65, cell=cell)
hidden = hidden_size_for_params(config, params)
model = CharRNN(ModelConfig(vocab_size=65, cell=cell, hidden_size=hidden))
opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
ids = torch.randint(0, 65, (batch, 129))
state = None
def step():
    global state
    logits, new = model(ids[:, :-1], state)
    state = detach_state(new)
    loss = F.cross_entropy(logits.reshape(-1, 65), ids[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
for _ in range(2):
    step()
start, steps = time.perf_counter(), 0
while time.perf_counter() - start < seconds:
    step()
    steps += 1
rate = steps * batch * 128 / (time.perf_counter() - start)
print(json.dumps({"hidden": hidden, "chars_per_s": rate}))
"""


def run_together(cell: str, params: int, batch: int, threads: int, seconds: float,
                 processes: int) -> list[dict]:
    """``processes`` runs started at once, each with ``threads`` threads; their figures."""
    argv = [sys.executable, "-c", CHILD, cell, str(params), str(batch), str(threads),
            str(seconds)]
    children = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
                for _ in range(processes)]
    results = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"a benchmark process failed (exit {child.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="rnn,lstm,gru")
    parser.add_argument("--params", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--smoke", action="store_true")
    a = parser.parse_args()
    if a.smoke:
        a.cells, a.params, a.batch, a.seconds = "lstm", 5000, 4, 0.5
    cores = torch.get_num_threads()  # what compare shares out: one run per core
    for cell in a.cells.split(","):
        (alone,) = run_together(cell, a.params, a.batch, cores, a.seconds, 1)
        (one_thread,) = run_together(cell, a.params, a.batch, 1, a.seconds, 1)
        side = run_together(cell, a.params, a.batch, 1, a.seconds, max(1, cores))
        total = sum(r["chars_per_s"] for r in side)
        print(json.dumps({
            "cell": cell, "params": a.params, "hidden": alone["hidden"], "batch": a.batch,
            "cores": cores, "one_run_all_threads": round(alone["chars_per_s"]),
            "one_run_one_thread": round(one_thread["chars_per_s"]),
            "side_by_side_runs": len(side), "side_by_side_total": round(total),
            "side_by_side_gain": round(total / alone["chars_per_s"], 3)}), flush=True)


if __name__ == "__main__":
    main()
