"""A reader that goes away (`charlm ... | head`) ends a command quietly, whichever command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from charlm.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("closed")
    corpus = root / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 60, encoding="utf-8")
    fit(TrainConfig(data=[str(corpus)], hidden_size=8, embedding_dim=4, seq_len=8, batch_size=2,
                    max_steps=2, eval_every=0, precision="32-true", progress=False,
                    out=str(root / "run")))
    return root / "run" / "best.ckpt", corpus


@pytest.mark.parametrize("args", [
    ["sample", "CKPT", "--num-samples", "3"], ["sample", "CKPT", "--json"],
    ["eval", "CKPT", "--data", "CORPUS"], ["inspect", "CKPT", "--text", "CORPUS", "--chars", "200"],
])  # one sample streamed to `| head -c 100`: tests/test_streaming.py
def test_a_closed_stdout_is_no_error(ckpt, args):
    path, corpus = ckpt
    args = [{"CKPT": str(path), "CORPUS": str(corpus)}.get(a, a) for a in args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "charlm", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the first line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Error" not in err.decode() and "Traceback" not in \
        err.decode(), err.decode()
