"""Does the model write or copy? Sample statistics against the training text, by temperature.

    .venv/bin/python benchmarks/sample_quality.py CHECKPOINT [--samples 8] [--length 500]

For each temperature: the share of generated words found in the training text, distinct word
unigrams/bigrams, and novelty (generated 8-character sequences that never occur in training).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from charlm.generation.checkpoint import load
from charlm.generation.evaluation import run_corpus, run_split
from charlm.generation.sampling import SampleSettings, generate
from charlm.lab.textstats import TrainingText

TEMPERATURES = (0.5, 0.8, 1.0, 1.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, vocab, info = load(args.checkpoint)
    train = run_split(run_corpus(info, vocab), info, "train")
    index = TrainingText(np.asarray(train), vocab)
    rows = []
    for t in TEMPERATURES:
        texts = generate(model, vocab, "", args.length, SampleSettings(temperature=t),
                         num_samples=args.samples, seed=args.seed)
        row = {"figure": "sample_stats", "temperature": t, **index.stats(texts)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| temperature | known words | distinct-1 | distinct-2 | novel 8-grams |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['temperature']} | {r['known_words']:.1%} | {r['distinct_1']:.2f} | "
              f"{r['distinct_2']:.2f} | {r['novelty_8']:.1%} |")


if __name__ == "__main__":
    main()
