"""charlm.training.allocator: a training process keeps the memory a step frees, so the next step
does not page-fault it back in. Measured in child processes, since the setting is process-wide."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from charlm.training.allocator import glibc

pytestmark = pytest.mark.skipif(glibc() is None, reason="the malloc settings are glibc's")

SIZES_MIB = (16, 32, 64)  # the large buffers of a "step", allocated, touched and freed
PAGES = sum(SIZES_MIB) * 2**20 // 4096  # touched by one step

# After whatever the child did first, a few steps settle the heap; the page faults of the next
# ones tell whether the memory a step frees went back to the system. The median step is what
# counts: the kernel may fault an odd step's pages for reasons of its own (NUMA balancing,
# compaction, memory pressure from a neighbour), which says nothing about malloc.
CHILD = """
import resource, sys, torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    buffers = [torch.ones(mib * 2**18) for mib in {sizes}]  # float32: 2**18 elements a MiB
{setup}
for _ in range(5):
    step()
counts = []
for _ in range(7):
    before = faults()
    step()
    counts.append(faults() - before)
print(sorted(counts)[len(counts) // 2])
"""

FIT = """
from charlm.training.environment import prepare_process
from charlm.training.fit import TrainConfig, fit
{prepare}
fit(TrainConfig(data=[{data!r}], hidden_size=16, embedding_dim=8, batch_size=4, seq_len=16,
                max_steps=2, progress=False, out={out!r}))
"""


def refaults(setup: str, env: dict | None = None) -> int:
    code = CHILD.format(setup=setup, sizes=SIZES_MIB)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def always_huge_pages() -> bool:
    """With transparent huge pages always on, even glibc's default faults 2 MiB at a time."""
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and "[always]" in path.read_text()


def test_freed_memory_is_kept_for_the_next_allocation():
    kept = refaults("from charlm.training.allocator import keep_freed_memory\n"
                    "assert keep_freed_memory()")
    assert kept < PAGES // 100, kept
    if not always_huge_pages():
        assert refaults("") > PAGES // 2  # glibc's default unmaps it: a fault per page


def test_a_training_process_keeps_freed_memory_unless_told_not_to(text_file, tmp_path):
    """``charlm train`` prepares its process before fit; fit alone leaves malloc as it was."""
    def run(name, prepare, env=None):
        setup = FIT.format(data=str(text_file), out=str(tmp_path / name),
                           prepare="prepare_process()" if prepare else "")
        return refaults(setup, env)

    assert run("a", prepare=True) < PAGES // 100
    if not always_huge_pages():
        assert run("b", prepare=True, env={"CHARLM_MALLOC": "system"}) > PAGES // 2
        assert run("c", prepare=False) > PAGES // 2  # no side effect of a library call


def test_system_malloc_on_request(monkeypatch):
    from charlm.training.allocator import keep_freed_memory
    monkeypatch.setenv("CHARLM_MALLOC", "system")
    assert keep_freed_memory() is False


def test_charlm_train_prepares_its_process(text_file, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from charlm.cli import cli
    from charlm.training import environment
    calls = []
    monkeypatch.setattr(environment, "prepare_process", lambda: calls.append(1) or True)
    result = CliRunner().invoke(cli, ["train", "--data", str(text_file), "--hidden-size", "8",
                                      "--max-steps", "1", "--batch-size", "2",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert calls == [1]
