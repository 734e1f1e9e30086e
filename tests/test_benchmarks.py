"""Every benchmark's ``--smoke`` run: each script in benchmarks/ (found by globbing, so a new one
without ``--smoke`` fails here) runs tiny, on the CPU, offline, in its own process, and prints its
figures as JSON lines. Benchmarks reach charlm through its public names only.

A smoke run is mostly imports (torch, Lightning) in a few processes, so the runs are started
together, two at a time, as the first of them is asked for; each test waits for its own."""

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
TIMEOUT_S = 300  # a hung script fails; a smoke takes seconds
WORKERS = min(2, os.cpu_count() or 1)


def test_every_script_is_found():
    assert "train_throughput.py" in SCRIPTS


def smoke(script: str, folder: Path) -> subprocess.CompletedProcess:
    """``benchmarks/SCRIPT --smoke``: offline, no GPU, one thread, its temporary files and caches
    in ``folder``, this checkout's charlm first on the path (its own children inherit it all)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": path, "TMPDIR": str(folder), "CHARLM_CACHE": str(folder / "charlm"),
           "HF_HOME": str(folder / "hf-home"), "HF_DATASETS_CACHE": str(folder / "hf-datasets")}
    return subprocess.run([sys.executable, f"benchmarks/{script}", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


@pytest.fixture(scope="session")
def smoke_runs(request, tmp_path_factory) -> Iterator[dict[str, Future]]:
    """The smoke run of every script whose test was selected, started in test order."""
    scripts = [item.callspec.params["script"] for item in request.session.items
               if getattr(item, "originalname", None) == "test_smoke_run"]
    base = tmp_path_factory.mktemp("smoke")
    pool = ThreadPoolExecutor(WORKERS)
    try:
        yield {s: pool.submit(smoke, s, base / Path(s).stem) for s in scripts}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a running one ends by its timeout


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_run(script: str, smoke_runs: dict[str, Future]):
    done = smoke_runs[script].result()
    assert done.returncode == 0, f"{script} --smoke failed:\n{done.stderr[-4000:]}"
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert rows, f"{script} --smoke printed no JSON line:\n{done.stdout[-2000:]}"
    assert all(isinstance(r, dict) and "error" not in r for r in rows), done.stdout[-2000:]


@pytest.mark.parametrize("script", SCRIPTS)
def test_usage_names_smoke(script: str):
    doc = ast.get_docstring(ast.parse((ROOT / "benchmarks" / script).read_text())) or ""
    assert "--smoke" in doc, f"{script}'s docstring does not show its --smoke run"


def private_names(text: str) -> list[str]:
    """charlm's private names that a script uses, in its code strings (a child's code) too:
    ``from charlm.x import _y``, ``import charlm._x``, and ``m._y`` / ``m.z._y`` where ``m`` is
    bound to charlm or to a name imported from it. Attributes of objects that charlm returns are
    not seen."""
    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    found, bound = [], set()
    for module, names in re.findall(
            r"^\s*from\s+(charlm[\w.]*)\s+import\s+(\([^)]*\)|[^\n#]+)", text, re.M):
        imported = [n.split() for n in re.sub(r"#[^\n]*", "", names).strip("()").split(",")
                    if n.strip()]  # [name] or [name, "as", alias]
        found += [module] if any(private(n) for n in module.split(".")) else []
        found += [f"{module}.{n[0]}" for n in imported if private(n[0])]
        bound |= {n[-1] for n in imported}
    for module, alias in re.findall(r"^\s*import\s+(charlm[\w.]*)(?:\s+as\s+(\w+))?", text, re.M):
        found += [module] if any(private(n) for n in module.split(".")) else []
        bound.add(alias or "charlm")
    for name in sorted(bound):
        found += re.findall(rf"(?<![\w.]){re.escape(name)}(?:\.\w+)*\._(?!_)\w+", text)
    return found


def test_private_names_are_seen():
    text = ("from charlm.data.corpus import _encode, load_corpus\n"
            "import charlm.data.corpus as data\nfrom charlm.model import cells\n"
            "data._encode = x\ncells.ExplicitCell._run\nfrom torch import _x\ntorch._dynamo\n")
    assert private_names(text) == ["charlm.data.corpus._encode", "cells.ExplicitCell._run",
                                   "data._encode"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_private_charlm_names(script: str):
    assert private_names((ROOT / "benchmarks" / script).read_text()) == []
