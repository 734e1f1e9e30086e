"""Peak memory and batch-1 speed of ``charlm sample`` as the output grows.

    .venv/bin/python benchmarks/sample_memory.py [--lengths 10000,100000,1000000]
        [--baseline-tree DIR] [--checkpoint CKPT] [--smoke]

Each run is a fresh ``charlm sample CKPT --length N --seed 1 > /dev/null`` process; its peak RSS
comes from the kernel (``os.wait4``), so it counts everything the process ever held. Streaming
keeps memory flat: the figure at 1M characters should be within 50 MB of the one at 10k.

``--baseline-tree`` runs the same command from another checkout (e.g. the previous commit in a
``git worktree``) alternately with this one, at the longest length, so the two speeds come from
the same minute. Speeds are given by the wall clock and by the child's CPU time (user + system),
which other work on a shared machine disturbs less; the ratio is taken on CPU time.

Without ``--checkpoint`` a 1x384 LSTM over 83 symbols (the size of a War and Peace model) is
made with random weights: speed and memory do not depend on training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charlm.training.precision import cpu_kind  # noqa: E402


def make_checkpoint(folder: Path, hidden: int = 384, vocab_size: int = 83) -> Path:
    """A checkpoint of an untrained model, written through the library's own export."""
    import torch

    from charlm.generation.checkpoint import ExportedModel
    torch.manual_seed(0)
    chars = ["\n"] + [chr(c) for c in range(32, 32 + vocab_size - 1)]
    exported = ExportedModel({"vocab_size": len(chars), "cell": "lstm", "hidden_size": hidden,
                              "num_layers": 1, "embedding_dim": 64}, chars, info={})
    exported.save_pretrained(str(folder / "model"))
    return folder / "model"


def run(tree: Path, checkpoint: Path, length: int) -> dict:
    """One ``charlm sample`` process from ``tree``: peak RSS (MB), wall and CPU seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "charlm", "sample", str(checkpoint), "--length", str(length),
           "--seed", "1"]
    t0 = time.perf_counter()
    with open(os.devnull, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE, env=env, cwd=tree)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-500:]}")
    return {"length": length, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="10000,100000,1000000")
    parser.add_argument("--baseline-tree", type=Path, default=None)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny lengths (and a tiny model without --checkpoint): check it runs")
    args = parser.parse_args()
    lengths = [1000, 5000] if args.smoke else [int(n) for n in args.lengths.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or make_checkpoint(Path(tmp), hidden=32 if args.smoke else 384)
        rows = [run(ROOT, checkpoint, n) for n in lengths]
        for row in rows:
            print(json.dumps({"figure": "memory", **row}), flush=True)
        flat = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
        print(json.dumps({"figure": "growth", "from": lengths[0], "to": lengths[-1],
                          "peak_rss_growth_mb": round(flat, 1), "flat_within_50mb": flat <= 50,
                          "cpu": cpu_kind()["cpu"],
                          "load": round(os.getloadavg()[0], 2)}), flush=True)
        if args.baseline_tree is None:
            return
        ratios = []
        for _ in range(args.pairs):  # alternating: both sides see the same minute
            new, old = run(ROOT, checkpoint, lengths[-1]), run(args.baseline_tree, checkpoint,
                                                               lengths[-1])
            ratios.append(round(old["cpu_s"] / new["cpu_s"], 3))
            print(json.dumps({"figure": "speed", "new": new, "baseline": old,
                              "speed_ratio_cpu": ratios[-1],
                              "speed_ratio_wall": round(old["wall_s"] / new["wall_s"], 3)}),
                  flush=True)
        print(json.dumps({"figure": "speed_summary", "ratios_cpu": ratios,
                          "median": sorted(ratios)[len(ratios) // 2]}), flush=True)


if __name__ == "__main__":
    main()
