"""What keeping freed memory (charlm.training.allocator) does for a CPU training step: \
the plain PyTorch
loop of train_throughput.py with glibc's malloc as it comes and with charlm's settings, each in
a fresh process (the settings last for the life of a process), interleaved.

    .venv/bin/python benchmarks/allocator.py [--repeats 3] [--steps 20] [--configs lstm:128:2:64]
    .venv/bin/python benchmarks/allocator.py --smoke     # a tiny model, a few steps: checks it

Prints one JSON line per config and a table: training chars/s, minor page faults per step (a
fault is the kernel handing the process a fresh 4 KiB page) and the process's peak resident
memory. Configs are cell:hidden:layers:batch[:bf16], 128 characters a row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAKESPEARE = HERE.parents[1] / "shared" / "data" / "tinyshakespeare.txt"
README = HERE.parent / "README.md"  # --smoke's corpus: small, and always there
# the four configs at batch 64, and the default `charlm train` (1x384, batch 16, bf16)
CONFIGS = "lstm:128:2:64,lstm:512:2:64,gru:256:2:64,rnn:256:2:64,lstm:384:1:16:bf16"
SETTINGS = {"glibc default": {"CHARLM_MALLOC": "system"}, "charlm (kept)": {}}

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {here!r})
from charlm.training.allocator import keep_freed_memory
from charlm.data.corpus import load_corpus
from train_throughput import plain_loop
cell, hidden, layers, batch, steps, precision = {args!r}
kept = keep_freed_memory()  # a no-op under CHARLM_MALLOC=system
ids = load_corpus([{data!r}]).split(0.1, 0.0)["train"]
plain_loop(ids, cell, hidden, layers, batch, 128, 2, precision=precision)  # warm-up
usage = lambda: resource.getrusage(resource.RUSAGE_SELF)
before = usage().ru_minflt
rate = plain_loop(ids, cell, hidden, layers, batch, 128, steps, precision=precision)
print(json.dumps({{"kept": kept, "chars_per_s": rate,
                  "faults_per_step": (usage().ru_minflt - before) / steps,
                  "peak_rss_mb": usage().ru_maxrss / 1024}}))
"""


def child(config: tuple, data: str, env: dict) -> dict:
    code = CHILD.format(here=str(HERE), args=config, data=data)
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse(spec: str, steps: int) -> tuple:
    cell, hidden, layers, batch, *rest = spec.split(":")
    precision = "bf16-mixed" if rest == ["bf16"] else "32-true"
    scale = 0.25 if int(hidden) >= 512 else 1.0  # the big model's steps take ~1 s
    return cell, int(hidden), int(layers), int(batch), max(3, int(steps * scale)), precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHAKESPEARE))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=CONFIGS)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, a few steps, once")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.repeats, args.configs = 3, 1, "lstm:16:1:4"
        if args.data == parser.get_default("data"):
            args.data = str(README)
    rows = []
    for spec in args.configs.split(","):
        config = parse(spec, args.steps)
        runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            for name, env in SETTINGS.items():
                runs[name].append(child(config, args.data, env))
        row = {"figure": "allocator", "config": spec, "steps": config[4],
               "load_avg_1min": round(os.getloadavg()[0], 2)}
        for name, key in (("glibc default", "system"), ("charlm (kept)", "kept")):
            for field in ("chars_per_s", "faults_per_step", "peak_rss_mb"):
                row[f"{key}_{field}"] = round(statistics.median(r[field] for r in runs[name]))
            row[f"{key}_runs_chars_per_s"] = [round(r["chars_per_s"]) for r in runs[name]]
        row["speedup"] = round(statistics.median(
            k["chars_per_s"] / s["chars_per_s"]
            for k, s in zip(runs["charlm (kept)"], runs["glibc default"])), 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{'config':<22}{'chars/s glibc':>14}{'kept':>9}{'speed-up':>10}"
          f"{'faults/step':>13}{'kept':>7}{'peak MB':>9}{'kept':>7}")
    for r in rows:
        print(f"{r['config']:<22}{r['system_chars_per_s']:>14,}{r['kept_chars_per_s']:>9,}"
              f"{r['speedup']:>10.3f}{r['system_faults_per_step']:>13,}"
              f"{r['kept_faults_per_step']:>7,}{r['system_peak_rss_mb']:>9,}"
              f"{r['kept_peak_rss_mb']:>7,}")


if __name__ == "__main__":
    main()
