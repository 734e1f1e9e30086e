"""How much slower the explicit cells (the lecture note's equations, one step at a time) train
than the fused torch kernels, through charlm's real training path, interleaved in one process.

    .venv/bin/python benchmarks/explicit_cells.py [--steps 40] [--repeats 2]
    .venv/bin/python benchmarks/explicit_cells.py --smoke    # a tiny model, a few steps: checks it
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from charlm.training.environment import prepare_process
from charlm.training.fit import TrainConfig, fit

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
README = Path(__file__).resolve().parents[1] / "README.md"  # --smoke's corpus
MODEL = f"1x{TrainConfig.hidden_size}, batch 16 x {TrainConfig.seq_len}"  # TrainConfig's model
SMOKE = {"hidden_size": 16, "embedding_dim": 8, "seq_len": 16, "batch_size": 4}  # --smoke's model


def chars_per_s(data: str, cell: str, impl: str, steps: int, sizes: dict | None = None) -> float:
    """Training chars/s through fit; ``sizes`` overrides the model's and the batch's sizes."""
    sizes = {"batch_size": 16, **(sizes or {})}
    with tempfile.TemporaryDirectory() as out:
        return fit(TrainConfig(data=[data], cell=cell, impl=impl, max_steps=steps, eval_every=0,
                               precision="32-true", out=out + "/run", progress=False,
                               **sizes))["train_chars_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHAKESPEARE))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cells", default="rnn,lstm,gru,gru-note,lstm-ln")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny model, a few steps, one fused and one explicit-only cell")
    args = parser.parse_args()
    sizes, model = None, MODEL
    if args.smoke:
        args.steps, args.repeats, args.cells, sizes = 2, 1, "lstm,lstm-ln", SMOKE
        model = "1x{hidden_size}, batch {batch_size} x {seq_len}".format(**SMOKE)
        if args.data == parser.get_default("data"):
            args.data = str(README)
    prepare_process()  # as charlm train does before it trains
    rows = []
    for cell in args.cells.split(","):
        runs = {"fused": [], "explicit": []}
        for _ in range(args.repeats):
            for impl in runs:
                if cell in ("gru-note", "lstm-ln") and impl == "fused":
                    continue  # explicit only: the note's GRU, the layer-normalised LSTM
                runs[impl].append(chars_per_s(args.data, cell, impl, args.steps, sizes))
        row = {"figure": "explicit_vs_fused", "cell": cell, "model": model,
               "fused": round(statistics.median(runs["fused"])) if runs["fused"] else None,
               "explicit": round(statistics.median(runs["explicit"]))}
        if row["fused"]:
            row["slowdown"] = round(row["fused"] / row["explicit"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{'cell':<10}{'fused chars/s':>15}{'explicit chars/s':>18}{'slowdown':>10}")
    for r in rows:
        print(f"{r['cell']:<10}{r['fused'] or '-':>15}{r['explicit']:>18}"
              f"{str(r.get('slowdown', '-')) + 'x':>10}")


if __name__ == "__main__":
    main()
