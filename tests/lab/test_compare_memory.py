"""charlm compare on a task only memory solves: the gated cells must come out ahead of the RNN.

Each line is a letter, a run of ``DELAY`` dashes, a bar and the first letter again: ``a----…|a``.
Predicting the copy needs the letter from ``DELAY + 1`` characters back, and the line's end needs
the dashes counted, a long way for a gradient to travel through a tanh recurrence (the lecture
note's vanishing gradient). A cell that remembers pays only for the first letter of each line:
2 bits in ``DELAY + 4`` characters.
"""

import math
import random

import pytest
from test_compare import PROBE

from charlm.lab.compare import run_compare
from charlm.lab.compare_config import CompareConfig
from charlm.training.fit import TrainConfig

DELAY = 24
LINE = DELAY + 4  # letter, dashes, bar, letter, newline
REMEMBERED = 2 / LINE   # bpc with the letter recalled: only the first letter is a surprise
FORGOTTEN = 4 / LINE    # bpc with the line counted but the letter guessed among four


def recall_text(lines: int = 1500, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(f"{x}{'-' * DELAY}|{x}\n" for x in (rng.choice("abcd") for _ in range(lines)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recall")
    text = folder / "recall.txt"
    text.write_text(recall_text(), encoding="utf-8")
    train = TrainConfig(data=[str(text)], max_steps=800, eval_every=200, embedding_dim=8,
                        batch_size=16, seq_len=64, lr=1e-2, weight_decay=0.0,
                        precision="32-true", progress=False)
    config = CompareConfig(train=train, cells=["rnn", "lstm", "gru"], hidden_size=32, seeds=2,
                           out=str(folder / "cmp"), isolate=False, measure=PROBE,
                           ngram_max_order=4, progress=False)
    return run_compare(config)


def test_the_text_is_what_the_bounds_assume():
    text = recall_text(lines=3)
    assert text == "d------------------------|d\nd------------------------|d\n" \
                   "a------------------------|a\n"
    assert len(text) == 3 * LINE and math.isclose(REMEMBERED, 1 / 14)


def test_gated_cells_remember_and_the_rnn_does_not(results):
    bpc = {s["cell"]: s["val_bpc_mean"] for s in results["summary"]}
    assert bpc["gru"] < FORGOTTEN and bpc["lstm"] < bpc["rnn"] - 0.1
    assert bpc["rnn"] > FORGOTTEN  # not even the letter guessed with the line counted
    beyond_noise = {(c["a"], c["b"]): c for c in results["comparisons"]}
    for gated in ("lstm", "gru"):
        c = beyond_noise["rnn", gated]
        assert c["delta_bpc"] < 0 and c["within_noise"] is False, c
    report = (results["settings"]["out"] + "/report.md")
    text = open(report, encoding="utf-8").read()
    assert "lstm − rnn" in text and "larger than seed noise" in text
