"""Test set-up: offline, CPU, caches in a temporary folder, one thread (fast for tiny models)."""

import os

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from browser import browser  # noqa: E402,F401  (the one browser harness, for every page test)

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("CHARLM_CACHE", str(root / "charlm-cache"))
    monkeypatch.setenv("HF_HOME", str(root / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "hf-datasets"))


@pytest.fixture
def shakespeare() -> Path:
    if not SHAKESPEARE.exists():
        pytest.skip(f"needs the Tiny Shakespeare corpus at {SHAKESPEARE} "
                    f"(get it with `charlm data get tinyshakespeare`)")
    return SHAKESPEARE


def markov_text(n: int = 20000, seed: int = 0) -> str:
    """A learnable text: words from a tiny grammar, so a model can beat the unigram entropy."""
    import random
    rng = random.Random(seed)
    words = ["the cat", "a dog", "sat on", "the mat", "and ran", "away\n", "quickly", "home."]
    out = []
    while sum(map(len, out)) < n:
        out.append(rng.choice(words))
    return " ".join(out)[:n]


@pytest.fixture
def text_file(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(markov_text(), encoding="utf-8")
    return p
