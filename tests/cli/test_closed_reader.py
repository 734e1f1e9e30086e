"""A reader that goes away (`charlm ... | head`) ends a command quietly, whichever command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("closed"), "the cat sat on the mat. " * 60)


@pytest.mark.parametrize("args", [
    ["sample", "CKPT", "--num-samples", "3"], ["sample", "CKPT", "--json"],
    ["eval", "CKPT", "--data", "CORPUS"], ["inspect", "CKPT", "--text", "CORPUS", "--chars", "200"],
])  # one sample streamed to `| head -c 100`: tests/cli/test_streaming.py
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
