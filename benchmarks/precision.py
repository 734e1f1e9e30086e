"""Is ``--precision auto`` the fast choice on this machine? Both precisions timed through charlm.

    .venv/bin/python benchmarks/precision.py [--steps 150] [--repeats 3] [--cell lstm] [--data FILE]
        [--smoke]

For the default model (1x384 LSTM, seq 128; ``--cell`` for another cell of that width) and each
batch auto may choose (8, 16), runs ``charlm train``'s own path (``fit``, no validation) in float32
and in bf16-mixed, alternately, and reports the training chars/s of each. Then it asks charlm what
``auto`` picks here (the precision and the batch, from ``charlm.training.precision``) and whether
that choice trains within 5 % of the fastest precision at the chosen batch. Every line names the CPU
and its bf16 flags (AMX, AVX512-BF16): a figure from one kind of CPU does not stand for the other. A
precision this CPU has no kernel for (oneDNN's bf16 LSTM without AVX512) counts as 0 chars/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charlm.data.corpus import load_corpus  # noqa: E402
from charlm.errors import CharlmError  # noqa: E402
from charlm.training.environment import prepare_process  # noqa: E402
from charlm.training.fit import TrainConfig, decide_precision, fit  # noqa: E402
from charlm.training.precision import cpu_kind  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def rate(data: str, cell: str, precision: str, batch: int, steps: int, hidden: int) -> float:
    """Training chars/s of charlm's own path, validation left out; 0 where it cannot run here."""
    with tempfile.TemporaryDirectory() as out:
        try:
            return fit(TrainConfig(data=[data], cell=cell, hidden_size=hidden, batch_size=batch,
                                   max_steps=steps, eval_every=0, precision=precision,
                                   accelerator="cpu", devices=1, progress=False,
                                   out=out + "/run"))["train_chars_per_s"]
        except CharlmError as e:
            print(f"{precision}, batch {batch}: {e}", file=sys.stderr)
            return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHAKESPEARE))
    parser.add_argument("--steps", type=int, default=150)
    # three: with two, one slow run on a shared machine can flip the verdict (docs/results.md)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, a few steps")
    args = parser.parse_args()
    prepare_process()  # as charlm train does before it trains
    hidden, steps = (32, 5) if args.smoke else (384, args.steps)
    if args.smoke:
        args.repeats = 1
        if args.data == parser.get_default("data") or not Path(args.data).exists():
            args.data = str(ROOT / "README.md")  # a small corpus: checks the code, not the speed
    kind = cpu_kind()
    vocab = len(load_corpus([args.data]).vocab)
    config = TrainConfig(data=[args.data], cell=args.cell, hidden_size=hidden, accelerator="cpu")
    auto = decide_precision(config, config.model_config(vocab))
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):  # alternating, so drift on a shared machine hits both alike
        for batch in (8, 16):
            for precision in ("32-true", "bf16-mixed"):
                rates.setdefault((precision, batch), []).append(
                    rate(args.data, args.cell, precision, batch, steps, hidden))
    for (precision, batch), runs in rates.items():
        print(json.dumps({"figure": "train_chars_per_s", "precision": precision, "batch": batch,
                          "median": round(statistics.median(runs)), "runs": [round(r) for r in
                                                                              runs],
                          "steps": steps, "cell": args.cell, "hidden": hidden, "cpu": kind}),
              flush=True)
    at_batch = {p: statistics.median(rates[(p, auto.batch_size)])
                for p in ("32-true", "bf16-mixed")}
    fastest = max(at_batch, key=at_batch.get)
    within = at_batch[auto.precision] >= 0.95 * at_batch[fastest]
    print(json.dumps({"figure": "auto", "precision": auto.precision, "batch": auto.batch_size,
                      "why": auto.line(), "fastest_precision": fastest,
                      "auto_over_fastest": round(at_batch[auto.precision] / at_batch[fastest], 3),
                      "within_5_percent": within, "cpu": kind}), flush=True)


if __name__ == "__main__":
    main()
