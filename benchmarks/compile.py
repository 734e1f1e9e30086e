"""torch.compile on the CPU: does it raise training chars/s where per-step overhead dominates?

    .venv/bin/python benchmarks/compile.py [--steps 15] [--repeats 2] [--configs ...]
    .venv/bin/python benchmarks/compile.py --smoke      # tiny sizes: checks the script

``--backend`` is torch.compile's (inductor, its default); the smoke uses aot_eager, which traces
as inductor does but generates no C++ (a cold inductor compile alone takes half a minute).

The plain loop of train_throughput.py (batch 64 x 128, float32), eager against compiled,
interleaved pairs. Two ways to compile:

  model   torch.compile of the whole model. Dynamo declines a fused nn.RNN/LSTM/GRU ("Attempted
          to wrap RNN, GRU, or LSTM") and runs that frame eagerly: ``graphs`` counts what it did
          compile. With explicit cells the time loop is unrolled into one graph.
  cell    torch.compile of the explicit cells' one-step function, called once per step and layer

chars/s is the median step after the first three; ``compile_s`` is how much longer the first
step took than the eager run's first step. Inductor's cache is a fresh folder, so the first
pair's compile is a cold one, as a user's first run would be; later pairs hit that cache.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo.utils

from charlm.data.corpus import load_corpus
from charlm.model.cells import ExplicitCell
from charlm.training.allocator import keep_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import README, SHAKESPEARE, plain_loop

CONFIGS = ("lstm:128:2:fused:model,rnn:256:2:fused:model,gru:256:2:explicit:cell,"
           "gru:256:2:explicit:model")


def compile_model(model, backend: str = "inductor"):
    return torch.compile(model, backend=backend)


def compile_cells(model, backend: str = "inductor"):
    for m in model.modules():
        if isinstance(m, ExplicitCell):  # one layer's step, as the cell calls it
            m.step_gates = torch.compile(m.step_gates, backend=backend)
    return model


class StepTimes:
    """Each step's wall time, from one step's start to the next."""

    def __init__(self):
        self.t: list[float] = []

    def __call__(self, step: int) -> None:
        self.t.append(time.perf_counter())

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.t, self.t[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHAKESPEARE))
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default=CONFIGS,
                        help="cell:hidden:layers:impl:how, how being model or cell")
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="charlm-inductor-")
    keep_freed_memory()
    batch, seq, steps, configs = 64, 128, args.steps, args.configs
    if args.smoke:
        batch, seq, steps, configs = 4, 8, 6, "lstm:16:1:fused:model,gru:16:1:explicit:cell"
        args.repeats = 1
        if args.data == parser.get_default("data"):
            args.data = str(README)
        if args.backend == parser.get_default("backend"):
            args.backend = "aot_eager"
    ids = load_corpus([args.data]).split(0.1, 0.0)["train"]
    rows = []
    for spec in configs.split(","):
        cell, hidden, layers, impl, how = spec.split(":")
        prepare = functools.partial({"model": compile_model, "cell": compile_cells}[how],
                                    backend=args.backend)
        eager, compiled, compile_s = [], [], []
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        for _ in range(args.repeats):
            times = []
            for fn in (None, prepare):
                clock = StepTimes()
                plain_loop(ids, cell, int(hidden), int(layers), batch, seq, steps + 1,
                           impl=impl, on_step=clock, prepare=fn)
                times.append(clock.steps())
            torch._dynamo.reset()  # the next pair compiles again (from inductor's cache)
            eager.append(batch * seq / statistics.median(times[0][3:]))
            compiled.append(batch * seq / statistics.median(times[1][3:]))
            compile_s.append(times[1][0] - times[0][0])
        row = {"figure": "compile_chars_per_s", "cell": cell, "hidden": int(hidden),
               "layers": int(layers), "impl": impl, "compiled": how, "batch": batch,
               "seq_len": seq, "eager": round(statistics.median(eager)),
               "compiled_chars_per_s": round(statistics.median(compiled)),
               "pair_ratios": [round(c / e, 3) for c, e in zip(compiled, eager)],
               "compile_s": [round(s, 1) for s in compile_s],
               "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs}
        if args.backend != "inductor":
            row["backend"] = args.backend
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{'config':<28}{'eager':>9}{'compiled':>10}{'ratio':>8}{'graphs':>8}"
          "   compile s (cold, then cached)")
    for r in rows:
        name = f"{r['cell']} {r['layers']}x{r['hidden']} {r['impl']}, {r['compiled']}"
        ratio = statistics.median(r["pair_ratios"])
        print(f"{name:<28}{r['eager']:>9,}{r['compiled_chars_per_s']:>10,}{ratio:>8.2f}"
              f"{r['graphs']:>8}   {r['compile_s']}")


if __name__ == "__main__":
    main()
