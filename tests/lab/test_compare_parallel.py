"""charlm compare trains several runs at once, each in its own process: the scheduler, its stops."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_compare import tiny_compare

from charlm.errors import CharlmError
from charlm.lab import compare as compare_module
from charlm.lab.compare import run_compare
from charlm.lab.compare_config import CompareConfig
from charlm.lab.compare_runs import LiveRuns
from charlm.training.fit import TrainConfig

TRAINING = threading.Lock()


class FakeRuns:
    """Stands in for run_isolated: each run takes ``seconds``; counts how many ran at once."""

    def __init__(self, real, seconds=0.3, fail=None):
        self.real, self.seconds, self.fail = real, seconds, fail
        self.lock = threading.Lock()
        self.active = self.most = 0
        self.started, self.threads = [], []

    def __call__(self, spec, run_dir, report=None, children=None):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.started.append(spec["label"])
            self.threads.append(spec["threads"])
        try:
            time.sleep(self.seconds)
            if spec["label"] == self.fail:
                raise CharlmError(f"{self.fail} went wrong")
            with TRAINING:  # one Lightning fit at a time in this process (seeds are global)
                return self.real(spec, run_dir, report)
        finally:
            with self.lock:
                self.active -= 1


def test_runs_train_jobs_at_a_time_and_come_back_in_order(text_file, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    fake = FakeRuns(compare_module.train_and_measure)
    monkeypatch.setattr(compare_module, "run_isolated", fake)
    config = tiny_compare(text_file, tmp_path / "cmp", cells=["rnn", "lstm", "gru"], seeds=2,
                          isolate=True, jobs=2)
    results = run_compare(config)
    assert fake.most == 2 and fake.threads == [2] * 6  # 4 threads shared by 2 runs
    assert [r["label"] for r in results["runs"]] == [
        f"{cell}-s{seed}" for seed in (1337, 1338) for cell in ("rnn", "lstm", "gru")]
    assert set(fake.started[:2]) == {"rnn-s1337", "lstm-s1337"}  # seed by seed, cell by cell
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "2 runs trained at a time, 2 threads each" in report
    assert results["settings"]["jobs"] == 2


def test_one_failed_run_stops_the_others_and_says_why(text_file, tmp_path, monkeypatch):
    fake = FakeRuns(compare_module.train_and_measure, fail="lstm-s1337")
    monkeypatch.setattr(compare_module, "run_isolated", fake)
    stopped = []
    monkeypatch.setattr(LiveRuns, "stop", lambda self: stopped.append(True))
    config = tiny_compare(text_file, tmp_path / "cmp", cells=["rnn", "lstm", "gru"], seeds=2,
                          isolate=True, jobs=2)
    with pytest.raises(CharlmError, match="lstm-s1337 went wrong"):
        run_compare(config)
    assert stopped and len(fake.started) < 6  # the runs not yet started never start


def test_ctrl_c_names_the_runs_in_progress(text_file, tmp_path, monkeypatch):
    fake = FakeRuns(compare_module.train_and_measure, seconds=1.0)
    monkeypatch.setattr(compare_module, "run_isolated", fake)
    stopped = []
    monkeypatch.setattr(LiveRuns, "stop", lambda self: stopped.append(True))

    def ctrl_c(futures, return_when):
        deadline = time.monotonic() + 30
        while len(fake.started) < 2 and time.monotonic() < deadline:  # both first runs started
            time.sleep(0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_module, "wait", ctrl_c)
    config = tiny_compare(text_file, tmp_path / "cmp", cells=["rnn", "lstm", "gru"], seeds=1,
                          isolate=True, jobs=2)
    with pytest.raises(CharlmError, match="interrupted during rnn-s1337, lstm-s1337; run the same"):
        run_compare(config)
    assert stopped and sorted(fake.started) == ["lstm-s1337", "rnn-s1337"]  # in either order


def test_two_runs_at_once_give_what_one_at_a_time_gives(text_file, tmp_path):
    one = run_compare(tiny_compare(text_file, tmp_path / "one", isolate=True, jobs=1))
    two = run_compare(tiny_compare(text_file, tmp_path / "two", isolate=True, jobs=2))
    assert two["settings"]["jobs"] == 2 and one["settings"]["jobs"] == 1
    for a, b in zip(one["runs"], two["runs"], strict=True):
        assert a["label"] == b["label"]
        assert b["val_bpc"] == pytest.approx(a["val_bpc"], rel=1e-4)
        assert b["peak_rss_mb"] > 10  # each in its own process


@pytest.mark.parametrize("settings, cores, runs, expected", [
    ({}, 2, 6, 2),                            # one run per core
    ({}, 16, 6, 6),                           # never more than there are runs
    ({}, 1, 6, 1),
    ({"jobs": 3}, 2, 6, 3),                   # asked for
    ({"jobs": 8}, 2, 6, 6),
    ({"isolate": False}, 4, 6, 1),            # runs in this process go one by one
    ({"accelerator": "gpu"}, 16, 6, 1),       # one GPU: one run
    ({"accelerator": "cpu"}, 4, 6, 4),
    ({}, 4, 1, 1),
])
def test_how_many_runs_train_at_once(settings, cores, runs, expected, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    accelerator = settings.pop("accelerator", "auto")
    config = CompareConfig(train=TrainConfig(accelerator=accelerator), **settings)
    assert config.parallel_runs(runs) == expected
    assert config.threads_per_run(expected) == max(1, cores // expected)


def test_a_gpu_found_by_auto_trains_one_run_at_a_time(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert CompareConfig().parallel_runs(6) == 1


def test_jobs_must_be_at_least_one():
    with pytest.raises(CharlmError, match="jobs must be at least 1, not 0"):
        CompareConfig(jobs=0)


def test_live_runs_stop_every_child_and_any_that_starts_after():
    children = LiveRuns()
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    first, second = subprocess.Popen(sleeper), subprocess.Popen(sleeper)
    children.add(first)
    children.add(second)
    children.discard(second)
    children.stop()
    assert first.wait(timeout=10) != 0
    assert second.poll() is None  # no longer held: left alone
    late = subprocess.Popen(sleeper)
    children.add(late)
    assert late.wait(timeout=10) != 0
    second.kill()
    second.wait()


def run_processes(out) -> list[int]:
    """The pids of the runs of the comparison in ``out`` still alive (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone
            continue
        if b"charlm.lab.compare_runs" in words and any(str(out).encode() in w for w in words):
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the runs in /proc")
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigterm_stops_the_runs_too(text_file, tmp_path, jobs):
    out = tmp_path / "cmp"
    command = [sys.executable, "-m", "charlm", "compare", "--data", str(text_file), "--cells",
               "rnn,gru", "--seeds", "1", "--max-steps", "1000000", "--hidden-size", "8",
               "--embedding-dim", "4", "--seq-len", "16", "--batch-size", "2", "--jobs", jobs,
               "--out", str(out)]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while len(run_processes(out)) < int(jobs):
        assert time.monotonic() < deadline and parent.poll() is None, "the runs never started"
        time.sleep(0.2)
    try:
        parent.send_signal(signal.SIGTERM)
        output, _ = parent.communicate(timeout=60)
        running = "rnn-s1337, gru-s1337" if jobs == "2" else "rnn-s1337"
        assert parent.returncode == 1 and f"interrupted during {running}; run the same" in output
        assert "Traceback" not in output
        while run_processes(out):  # each run saves its step and stops
            assert time.monotonic() < deadline + 60, "a run trains on after its comparison stopped"
            time.sleep(0.2)
    finally:  # whatever failed, no run is left training
        for pid in run_processes(out):
            os.kill(pid, signal.SIGKILL)
