"""Test set-up: offline, CPU, caches in a temporary folder, one thread (fast for tiny models)."""

import os

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)

from browser import browser  # noqa: E402,F401  (the one browser harness, for every page test)

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


# Under mutation testing (mutmut sets MUTANT_UNDER_TEST) a mutant's tests run until the first
# one fails: the slow training and CLI files go last, so a mutant the quick tests kill does not
# wait for them (the order of the others, and of every test in a normal run, is unchanged).
_SLOW_LAST = ("tests/training/test_train.py", "tests/cli/test_cli_behaviour.py")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MUTANT_UNDER_TEST"):
        items.sort(key=lambda item: item.nodeid.startswith(_SLOW_LAST))


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("CHARLM_CACHE", str(root / "charlm-cache"))
    monkeypatch.setenv("HF_HOME", str(root / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "hf-datasets"))


@pytest.fixture(autouse=True)
def _cells_registered_in_a_test_end_with_it():
    """A cell a test registers (or replaces) is gone after it, through the public registry."""
    from charlm.model import cell, cell_names, register_cell, unregister_cell
    before = {name: cell(name) for name in cell_names()}
    yield
    for name in cell_names():
        if name not in before:
            unregister_cell(name)
    for name, c in before.items():
        if name not in cell_names() or cell(name) is not c:
            register_cell(name, c.fused, c.explicit, recurrent=c.recurrent,
                          lstm_gates=c.lstm_gates)


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


def memory_text(n: int = 24000, seed: int = 0, span: int = 3, alphabet: str = "abcd") -> str:
    """A text only memory can learn: lines ``w|w`` of ``span`` random letters, copied after ``|``.

    Without memory, a model reading one character at a time sees the copy as fresh random letters:
    its best loss is the bigram conditional entropy (``conditional_entropy(text, 1)``, about
    1.69 nats here). A model that remembers the line so far pays only for the first ``span``
    letters: span·ln|alphabet| / (2·span + 2) ≈ 0.52 nats a character.
    """
    import random
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n:
        word = "".join(rng.choice(alphabet) for _ in range(span))
        lines.append(f"{word}|{word}\n")
        size += 2 * span + 2
    return "".join(lines)[:n]


def conditional_entropy(text: str, order: int) -> float:
    """H(next character | the ``order`` characters before it), in nats, counted on ``text``:
    the lowest loss a model that sees only that much context can reach on this text."""
    import math
    from collections import Counter
    joint = Counter(text[i:i + order + 1] for i in range(len(text) - order))
    context = Counter(text[i:i + order] for i in range(len(text) - order))
    total = sum(joint.values())
    return -sum(c / total * math.log(c / context[k[:-1]]) for k, c in joint.items())


@pytest.fixture
def memory_file(tmp_path) -> Path:
    p = tmp_path / "memory.txt"
    p.write_text(memory_text(), encoding="utf-8")
    return p


@pytest.fixture
def float64():
    """Float64 by default for the test (exact comparisons of cells), seed 0."""
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def tiny_run(root: Path, text: str, hidden: int = 8) -> tuple[Path, Path]:
    """A tiny model trained for a few steps on ``text`` under ``root``: (best.ckpt, corpus)."""
    from charlm.training.fit import TrainConfig, fit
    corpus = root / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    fit(TrainConfig(data=[str(corpus)], hidden_size=hidden, embedding_dim=4, seq_len=8,
                    batch_size=2, max_steps=3, eval_every=0, precision="32-true", progress=False,
                    out=str(root / "run")))
    return root / "run" / "best.ckpt", corpus


class ReluRNN(nn.Module):
    """A user's own cell, registered from outside charlm: nn.RNN's calling convention, with no
    explicit form for charlm to step through."""

    def __init__(self, i, h, layers, dropout):
        super().__init__()
        self.inner = nn.RNN(i, h, layers, batch_first=True, nonlinearity="relu")

    def forward(self, x, state=None):
        return self.inner(x, state)
