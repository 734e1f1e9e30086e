"""Does the model write or copy? Sample statistics against the training text, by temperature.

    .venv/bin/python benchmarks/sample_quality.py CHECKPOINT [--samples 8] [--length 500]
                                                  [--prompt TEXT] [--seed 0]
    .venv/bin/python benchmarks/sample_quality.py --smoke   # a tiny model trained 2 steps on the
                                                            # README: checks the script

For each temperature: the share of generated words found in the training text, distinct word
unigrams/bigrams, novelty (generated 8-character sequences that never occur in training), and
loops: the share of samples with one character 40 times or more in a row, against the same share
in windows of the training text as long as the samples (a young model sampled cold loops on a
corpus's commonest character, on code into lines of spaces).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from charlm.generation.checkpoint import load
from charlm.generation.evaluation import run_corpus, run_split
from charlm.generation.sampling import SampleSettings, generate
from charlm.lab.textstats import LOOP_RUN, TrainingText

TEMPERATURES = (0.5, 0.8, 1.0, 1.2)
README = Path(__file__).resolve().parents[1] / "README.md"  # --smoke's training text


def smoke_checkpoint(folder: Path) -> str:
    """A tiny LSTM trained for 2 steps on the README: a checkpoint that records its data."""
    from charlm.training.fit import TrainConfig, fit  # training's imports only where it trains
    results = fit(TrainConfig(data=[str(README)], hidden_size=16, embedding_dim=8, seq_len=16,
                              batch_size=4, max_steps=2, eval_every=0, precision="32-true",
                              accelerator="cpu", devices=1, progress=False,
                              out=str(folder / "run")))
    return results["checkpoint"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="", help="every sample starts from it (default: none)")
    parser.add_argument("--smoke", action="store_true",
                        help="no CHECKPOINT: a tiny model trained 2 steps, short samples")
    args = parser.parse_args()
    if args.smoke:  # the folder goes when the process ends
        tmp = tempfile.TemporaryDirectory()
        args.checkpoint = smoke_checkpoint(Path(tmp.name))
        args.samples, args.length = 2, 60
    if not args.checkpoint:
        parser.error("give a CHECKPOINT (or --smoke)")
    model, vocab, info = load(args.checkpoint)
    train = run_split(run_corpus(info, vocab), info, "train")
    index = TrainingText(np.asarray(train), vocab)
    rows = []
    for t in TEMPERATURES:
        texts = generate(model, vocab, args.prompt, args.length, SampleSettings(temperature=t),
                         num_samples=args.samples, seed=args.seed)
        row = {"figure": "sample_stats", "temperature": t, "prompt": args.prompt,
               **index.stats(texts)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n| temperature | known words | distinct-1 | distinct-2 | novel 8-grams | "
          f"loops (a run of {LOOP_RUN}) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['temperature']} | {r['known_words']:.1%} | {r['distinct_1']:.2f} | "
              f"{r['distinct_2']:.2f} | {r['novelty_8']:.1%} | {r['loops']:.1%} |")
    print(f"| training text | | | | | {rows[-1]['loops_training']:.1%} |")


if __name__ == "__main__":
    main()
