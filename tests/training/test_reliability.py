"""Issue #7: bad input, interruption and hostile files never cost a user their work.

Interruption: SIGKILL at several moments (subprocesses), Ctrl-C / SIGTERM (real signals to this
process), two runs on one folder, a NaN loss, a full disk. Bad input and hostile files: each gets
one clear "Error: ..." line and a non-zero exit, never a traceback, and a crafted pickle never runs.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charlm.cli import cli
from charlm.data.corpus import load_corpus
from charlm.errors import CharlmError
from charlm.training.fit import TrainConfig, fit
from charlm.training.lightning_module import CharLM, LossWatch
from charlm.training.runlock import LOCK_NAME, RunLock, is_rank_zero

SIZES = {"hidden_size": 16, "embedding_dim": 8, "batch_size": 4, "seq_len": 16}
ARGS = ["--hidden-size", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-len", "16"]


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def one_error(result, *fragments):
    """Exit code != 0, exactly one line "Error: ...", which holds every fragment; no traceback."""
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def step_of(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


# --- SIGKILL at several moments, then --resume: the same weights as an uninterrupted run ----------

# A fresh Python process that imports charlm once, then forks one new process per `charlm train`
# run (importing torch and Lightning takes seconds; a fork takes milliseconds). Each run is the
# real CLI in its own process, and is SIGKILLed either from outside (the test kills its pid) or
# from inside at an exact moment: "step:N" in the middle of step N (after its forward pass,
# before the optimiser step), "write:N" half-way through writing the N-th last.ckpt into its
# temporary file, "rename:N" with the N-th checkpoint whole in its temporary file, not yet renamed.
FORKER = r'''
import json, os, signal, sys, traceback
import charlm.cli, charlm.training.lightning_module, charlm.training.fit  # the slow imports, once
import lightning.fabric.plugins.io.torch_io as torch_io


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def arm(what, n):
    n, calls = int(n), []
    if what == "step":
        step = charlm.training.lightning_module.CharLM.training_step
        def training_step(self, batch, batch_idx):
            loss = step(self, batch, batch_idx)
            if self.global_step == n:
                die()
            return loss
        charlm.training.lightning_module.CharLM.training_step = training_step
    elif what == "write":
        import io, torch
        save = torch_io._atomic_save
        def half_then_die(checkpoint, path):
            calls.append(path)
            if len(calls) == n:
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                with open(path, "wb") as f:
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                die()
            save(checkpoint, path)
        torch_io._atomic_save = half_then_die
    elif what == "rename":
        replace = os.replace
        def die_before_rename(src, dst, *args, **kwargs):
            if str(dst).endswith("last.ckpt"):
                calls.append(dst)
                if len(calls) == n:
                    die()
            return replace(src, dst, *args, **kwargs)
        os.replace = die_before_rename


def child(job):
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout.reconfigure(line_buffering=True)
    if job["kill"]:
        arm(*job["kill"].split(":"))
    try:
        charlm.cli.cli(job["args"], prog_name="charlm")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(job)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
'''


class Forker:
    """Runs `charlm train ...` in new processes, forked from one that imported charlm once."""

    def __init__(self, folder: Path):
        env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
        self.folder, self.runs = folder, 0
        self.process = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)

    def start(self, args: list, kill: str | None = None) -> tuple[int, Path]:
        """Start a run; (its pid, the file that receives its stdout and stderr)."""
        self.runs += 1
        log = self.folder / f"run{self.runs}.log"
        job = {"args": ["train", *map(str, args)], "kill": kill, "log": str(log)}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["pid"], log

    def wait(self) -> int:
        """The exit code of the run started last (negative: killed by that signal)."""
        line = self.process.stdout.readline()
        assert line, "the forking process died"
        return json.loads(line)["code"]

    def run(self, args: list, kill: str | None = None) -> tuple[int, str]:
        _, log = self.start(args, kill)
        code = self.wait()
        return code, log.read_text()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def wait_for_line(log: Path, prefix: str, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and any(line.startswith(prefix) for line in log.read_text().splitlines()):
            return True
        time.sleep(0.005)
    return False


KILL_SETTINGS = dict(max_steps=24, eval_every=6, num_layers=2, dropout=0.1, **SIZES)


def kill_args(text_file, window, out):
    return ["--data", text_file, "--max-steps", "24", "--eval-every", "6", "--num-layers", "2",
            "--dropout", "0.1", "--window", window, *ARGS, "--out", out]


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def chain_stream(forker, text_file, out):
    """Killed writing the 2nd checkpoint; resumed and killed from outside; resumed to the end."""
    args = kill_args(text_file, "stream", out)
    code, output = forker.run(args, kill="write:2")
    assert code == -signal.SIGKILL, output
    assert step_of(out / "last.ckpt") == 6  # the previous whole file, not the half-written one
    assert (out / "last.ckpt.tmp").exists()  # a stale temporary: resuming must not mind it

    pid, log = forker.start([*args, "--resume"])
    assert wait_for_line(log, "step 12:"), log.read_text()  # validated and saved step 12
    os.kill(pid, signal.SIGKILL)  # from outside, wherever the run happens to be
    assert forker.wait() in (-signal.SIGKILL, 0), log.read_text()  # 0: it finished first
    assert step_of(out / "last.ckpt") >= 12

    code, output = forker.run([*args, "--resume", "--json"])
    assert code == 0, output
    return last_json(output)


def chain_mixed(forker, text_file, out):
    """Killed before any checkpoint (nothing to resume: start again); killed between writing
    the 3rd checkpoint and renaming it; resumed to the end. Mixed windows read random windows
    to step 16, so the kills fall in that part and the resumed run turns to the streams."""
    args = kill_args(text_file, "mixed", out)
    code, output = forker.run(args, kill="step:3")
    assert code == -signal.SIGKILL, output
    assert not (out / "last.ckpt").exists()
    code, output = forker.run([*args, "--resume"])
    assert code == 1 and "there is no" in output and "resume from" in output, output

    code, output = forker.run(args, kill="rename:3")
    assert code == -signal.SIGKILL, output
    assert step_of(out / "last.ckpt") == 12 and step_of(out / "last.ckpt.tmp") == 18

    code, output = forker.run([*args, "--resume", "--json"])
    assert code == 0, output
    return last_json(output)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(text_file, tmp_path):
    chains = {"stream": chain_stream, "mixed": chain_mixed}
    forker = Forker(tmp_path)  # starts importing while the uninterrupted runs train
    try:
        for window, chain in chains.items():
            whole = fit(TrainConfig(data=[str(text_file)], out=str(tmp_path / f"whole-{window}"),
                                    window=window, progress=False, **KILL_SETTINGS))
            killed, reference = tmp_path / f"killed-{window}", tmp_path / f"whole-{window}"
            resumed = chain(forker, text_file, killed)
            assert resumed["steps"] == 24
            assert resumed["val_loss"] == whole["val_loss"], window  # bitwise
            assert same_weights(killed / "last.ckpt", reference / "last.ckpt"), window
            assert same_weights(killed / "best.ckpt", reference / "best.ckpt"), window
            assert not (killed / LOCK_NAME).exists()
    finally:
        forker.close()


# --- Ctrl-C and SIGTERM: a checkpoint at the end of the step, one sentence, exact resume ----------

SIGNAL_SETTINGS = dict(max_steps=16, eval_every=6, num_layers=2, dropout=0.1, lr=1e-2, **SIZES)
SIGNAL_ARGS = ["--max-steps", "16", "--eval-every", "6", "--num-layers", "2", "--dropout", "0.1",
               "--lr", "0.01", *ARGS, "--json"]


@pytest.fixture
def raise_on_unhandled_sigterm():
    """Should GracefulStop fail to take SIGTERM over, fail the test rather than end pytest."""
    def unexpected(signum, frame):
        raise RuntimeError("SIGTERM reached the default handler")
    previous = signal.signal(signal.SIGTERM, unexpected)
    yield
    signal.signal(signal.SIGTERM, previous)


def signal_during_steps(monkeypatch, signum, steps, times=1):
    """Send ``signum`` to this process ``times`` times during each step in ``steps``."""
    original = CharLM.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        if self.global_step in steps:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return loss

    monkeypatch.setattr(CharLM, "training_step", training_step)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_save_a_checkpoint_that_resumes_exactly(
        signum, text_file, tmp_path, monkeypatch, raise_on_unhandled_sigterm):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite itself runs in background
    whole = fit(TrainConfig(data=[str(text_file)], out=str(tmp_path / "whole"), progress=False,
                            **SIGNAL_SETTINGS))
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        signal_during_steps(m, signum, {9})  # the 10th step: step 10 is saved, not an eval step
        result = run("train", "--data", text_file, "--out", out, *SIGNAL_ARGS)
    one_error(result, "interrupted at step 10; resume with --resume")
    assert result.exit_code == 1 and step_of(out / "last.ckpt") == 10
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back
    assert not (out / LOCK_NAME).exists()

    resumed = run("train", "--data", text_file, "--out", out, "--resume", *SIGNAL_ARGS)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["val_loss"] == whole["val_loss"]
    assert same_weights(out / "last.ckpt", tmp_path / "whole" / "last.ckpt")


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(text_file, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    signal_during_steps(monkeypatch, signal.SIGINT, {8}, times=2)
    result = run("train", "--data", text_file, "--out", out, *SIGNAL_ARGS)
    one_error(result, "interrupted at step", "before it was saved", "resume with --resume")
    assert step_of(out / "last.ckpt") == 6  # the eval checkpoint before, whole
    assert signal.getsignal(signal.SIGINT) is before


class FakeDDP:
    """A trainer of ``world`` ranks as rank 0 sees it: broadcast returns what rank 0 sent."""

    def __init__(self, world: int):
        self.world_size, self.broadcasts = world, []
        self.strategy = self

    def broadcast(self, obj, src=0):
        self.broadcasts.append(obj)
        return obj


@pytest.mark.parametrize("step_s, gap", [(0.01, 50), (0.0001, 100), (2.0, 1)],
                         ids=["10 ms steps", "fast steps", "slow steps"])
def test_under_ddp_rank_zero_is_asked_about_twice_a_second_at_the_same_steps(monkeypatch, step_s,
                                                                              gap):
    """The stop question is a collective under DDP (a host wait for the GPU with NCCL): it is
    asked about every half second of steps, never more than every step nor less than every 100,
    and a Ctrl-C is seen at the next question. In one process it is asked every step, free."""
    from charlm.training import interrupt
    clock = {"now": 0.0}
    monkeypatch.setattr(interrupt.time, "monotonic", lambda: clock["now"])
    asked, flag = [], {"stop": False}

    def answer():
        asked.append(step)
        return flag["stop"]

    ddp, says = FakeDDP(2), interrupt.RankZeroDecides(period_s=0.5, max_gap=100)
    for step in range(400):
        clock["now"] = step * step_s
        flag["stop"] = step >= 260  # Ctrl-C during step 260
        if says(ddp, step, answer):
            break
    assert asked[:2] == [0, 1] and all(b - a == gap for a, b in zip(asked[1:], asked[2:]))
    assert ddp.broadcasts == [(False, 1)] + [(s >= 260, s + gap) for s in asked[1:]]
    assert step == asked[-1] and 260 <= step < 260 + gap  # seen at the first question after it

    one, asked, flag["stop"] = FakeDDP(1), [], False
    says = interrupt.RankZeroDecides()
    for step in range(5):
        assert not says(one, step, answer)
    assert asked == [0, 1, 2, 3, 4] and one.broadcasts == []


# --- two runs on one folder -----------------------------------------------------------------------

def test_a_second_run_on_the_same_folder_refuses(text_file, tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        assert (out / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        result = run("train", "--data", text_file, "--out", out, "--max-steps", "2", *ARGS)
        one_error(result, f"another charlm run (pid {os.getpid()}) is training in {out}")
        assert not (out / "last.ckpt").exists()
    assert not out.exists()  # the lock made the folder, and took it away again
    resumed_nothing = run("train", "--data", text_file, "--out", tmp_path / "new", "--resume")
    one_error(resumed_nothing, "there is no")
    assert not (tmp_path / "new").exists()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_stale_lock_from_a_dead_run_is_taken_over(text_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{dead_pid()} {socket.gethostname()}\n")
    fit(TrainConfig(data=[str(text_file)], out=str(out), max_steps=2, progress=False, **SIZES))
    assert (out / "last.ckpt").exists() and not (out / LOCK_NAME).exists()


def test_without_flock_the_pid_in_the_lock_decides(tmp_path, monkeypatch):
    from charlm.training import runlock
    monkeypatch.setattr(runlock, "try_flock", lambda fd: None)  # a file system without locks
    out = tmp_path / "run"
    out.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (out / LOCK_NAME).write_text(f"{alive.pid} {socket.gethostname()}\n")
        with pytest.raises(CharlmError, match=f"pid {alive.pid}"):
            RunLock(out).acquire()
    finally:
        alive.kill()
        alive.wait()
    (out / LOCK_NAME).write_text(f"{dead_pid()} {socket.gethostname()}\n")
    with RunLock(out):
        assert (out / LOCK_NAME).read_text().split()[0] == str(os.getpid())


@pytest.mark.parametrize("variable", ["RANK", "LOCAL_RANK", "NODE_RANK"])
def test_under_ddp_only_rank_zero_takes_the_lock(tmp_path, monkeypatch, variable):
    out = tmp_path / "run"
    with RunLock(out):  # rank 0 holds it
        monkeypatch.setenv(variable, "1")
        assert not is_rank_zero()
        with RunLock(out):  # another rank of the same run: no refusal, no second lock
            pass
        monkeypatch.setenv(variable, "0")
        assert is_rank_zero()
        with pytest.raises(CharlmError, match="another charlm run"):
            RunLock(out).acquire()


# --- a NaN loss, a full disk ----------------------------------------------------------------------

def test_a_nan_loss_stops_with_the_step_and_leaves_best_ckpt_untouched(text_file, tmp_path,
                                                                        monkeypatch):
    original = CharLM.training_step

    def nan_at_step_5(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == 5 else loss

    monkeypatch.setattr(CharLM, "training_step", nan_at_step_5)
    out = tmp_path / "run"
    result = run("train", "--data", text_file, "--out", out, "--max-steps", "12",
                 "--eval-every", "4", *ARGS, "--json")
    one_error(result, "the training loss became nan at step 6", "best.ckpt is untouched")
    assert result.exit_code == 1
    assert step_of(out / "best.ckpt") == 4 and step_of(out / "last.ckpt") == 4
    assert all(torch.isfinite(w).all() for w in weights(out / "best.ckpt").values())


@pytest.mark.parametrize("target", ["last.ckpt", "best.ckpt"])
def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(text_file, tmp_path,
                                                                       monkeypatch, target):
    import shutil

    from lightning.fabric.plugins.io import torch_io
    calls = []

    def full_on_second_write(write):
        def fail(*args):
            path = Path(args[-1])
            if path.name == f"{target}.tmp":
                calls.append(path)
                if len(calls) == 2:
                    path.write_bytes(b"half a checkpoint")
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return write(*args)
        return fail

    if target == "last.ckpt":
        monkeypatch.setattr(torch_io, "_atomic_save", full_on_second_write(torch_io._atomic_save))
    else:
        monkeypatch.setattr(shutil, "copyfile", full_on_second_write(shutil.copyfile))
    out = tmp_path / "run"
    result = run("train", "--data", text_file, "--out", out, "--max-steps", "8",
                 "--eval-every", "4", "--lr", "0.01", *ARGS, "--json")
    one_error(result, f"could not write {out / target}: no space left on the device",
              f"the previous {target}")
    assert step_of(out / target) == 4  # the previous whole file
    assert not (out / f"{target}.tmp").exists()
    assert not (out / LOCK_NAME).exists()


def test_a_full_disk_while_caching_data_is_one_sentence(text_file, monkeypatch):
    from charlm.data import corpus as data

    def full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(data, "atomic_write_bytes", full)
    one_error(run("data", "prepare", text_file), "no space left on the device while writing",
              "meta.json")


def test_a_run_folder_that_is_a_file_is_one_sentence(text_file, tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    for out in (taken, taken / "run"):
        one_error(run("train", "--data", text_file, "--out", out, "--max-steps", "1", *ARGS),
                  f"{out} (or a folder above it) is a file where a folder is needed")
    assert taken.read_text() == "keep me"


# --- resuming with other options, a corrupt data cache, stale temporaries -------------------------

def test_resume_with_other_model_options_is_refused_clearly(text_file, tmp_path):
    out = tmp_path / "run"
    fit(TrainConfig(data=[str(text_file)], out=str(out), max_steps=2, progress=False, **SIZES))
    result = run("train", "--data", text_file, "--out", out, "--resume", "--max-steps", "4",
                 "--hidden-size", "24", "--embedding-dim", "8", "--batch-size", "4",
                 "--seq-len", "16")
    one_error(result, "was trained with hidden_size=16", "pass the options")


def test_a_garbled_cache_meta_is_rebuilt_not_trusted(text_file):
    corpus = load_corpus([str(text_file)])
    meta = Path(corpus.meta["cache"]).with_name("meta.json")
    for garbage in (b"{not json", json.dumps({"chars": 3, "crc32": 1, "vocab": ["a"]}).encode()):
        meta.write_bytes(garbage)
        again = load_corpus([str(text_file)])
        assert again.vocab.decode(again.ids) == text_file.read_text()


def test_stale_cache_temporaries_of_dead_runs_are_swept(tmp_path):
    from charlm.atomic import sweep_stale_temporaries
    dead, live = dead_pid(), os.getppid()
    names = [f"codepoints.tmp{dead}", f"ids.tmp{dead}.npy", f"meta.json.tmp{live}", "ids.npy"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    sweep_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.npy", f"meta.json.tmp{live}"]


# --- bad input on the command line: one "Error:" line each ----------------------------------------

@pytest.mark.parametrize("name,content,fragment", [
    ("ws.txt", b"  \n\t\n", "only whitespace"),
    ("empty", None, "holds no text files"),  # a directory without text files
    ("*.nothing", None, "matches no files"),
    ("b.bin", b"\x00\x01\x02x", "binary"),
    ("latin.txt", b"abc\n" * 50 + b"caf\xe9",
     "byte 0xe9 at offset 203 does not decode; pass --encoding"),
])
def test_bad_corpus_on_the_command_line(tmp_path, name, content, fragment):
    source = tmp_path / name
    if content is not None:
        source.write_bytes(content)
    elif name == "empty":
        source.mkdir()
    one_error(run("train", "--data", source, "--out", tmp_path / "r", *ARGS), fragment)
    one_error(run("data", "info", source), fragment)


@pytest.mark.parametrize("flags,fragment", [
    (["--val-fraction", "0.0001"], "leaves the val split with"),
    (["--val-fraction", "0"], "--val-fraction must be above 0"),
    (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
    (["--val-fraction", "0.5", "--test-fraction", "0.5"], "must leave some text to train on"),
    (["--test-fraction", "-0.1"], "--test-fraction must be in [0, 1)"),
])
def test_split_fractions_that_leave_a_split_empty(tmp_path, flags, fragment):
    p = tmp_path / "small.txt"
    p.write_text("abcdefghij" * 300)
    one_error(run("train", "--data", p, "--out", tmp_path / "r", *ARGS, *flags), fragment)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """One tiny trained run, shared by the checkpoint tests (they only read it)."""
    from conftest import markov_text
    root = tmp_path_factory.mktemp("ckpt")
    (root / "corpus.txt").write_text(markov_text(3000))
    with pytest.MonkeyPatch.context() as m:  # the autouse cache fixture is per test
        m.setenv("CHARLM_CACHE", str(tmp_path_factory.getbasetemp() / "charlm-cache"))
        fit(TrainConfig(data=[str(root / "corpus.txt")], out=str(root / "run"), max_steps=2,
                        progress=False, **SIZES))
    return root / "run" / "best.ckpt"


def test_sampling_flags(checkpoint):
    assert run("sample", checkpoint, "--prompt", "the", "--length", 0).stdout == "the\n"
    greedy = [run("sample", checkpoint, "--prompt", "the", "--length", 20, "--temperature", 0)
              .stdout for _ in range(2)]
    assert greedy[0] == greedy[1] and len(greedy[0]) == 24  # no seed, yet the same: argmax
    for flags, fragment in [(["--temperature", "-0.5"],
                             "--temperature must be a finite number >= 0"),
                            (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
                            (["--top-p", "-0.1"], "--top-p must be in (0, 1]"),
                            (["--top-k", "0"], "--top-k must be at least 1"),
                            (["--num-samples", "0"], "--num-samples must be at least 1"),
                            (["--prompt", "the ☃"], "never saw: '☃'")]:
        one_error(run("sample", checkpoint, *flags), fragment)


def damaged(checkpoint, tmp_path, name, change):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    change(ckpt)
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def bad_checkpoints(checkpoint, tmp_path):
    """(path, what the error says) for each kind of broken checkpoint."""
    raw = checkpoint.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")

    def drop_a_char(c):
        c["hyper_parameters"]["vocab"] = c["hyper_parameters"]["vocab"][:-1]

    def unsort(c):
        c["hyper_parameters"]["vocab"] = c["hyper_parameters"]["vocab"][::-1]

    return [
        (tmp_path / "truncated.ckpt", "not a readable charlm checkpoint (truncated"),
        (tmp_path / "other.ckpt", "is not a charlm checkpoint"),
        (damaged(checkpoint, tmp_path, "newer.ckpt",
                 lambda c: c["charlm"].update(format=99, version="9.0")),
         "written by a newer charlm (9.0); upgrade charlm"),
        (damaged(checkpoint, tmp_path, "vocab.ckpt", drop_a_char),
         "outputs but the vocabulary"),
        (damaged(checkpoint, tmp_path, "unsorted.ckpt", unsort), "damaged vocabulary"),
        (tmp_path / "notes", "is a directory but neither a charlm export"),
    ]


def test_broken_checkpoints_are_refused_by_sample_eval_and_export(checkpoint, tmp_path):
    for path, fragment in bad_checkpoints(checkpoint, tmp_path):
        one_error(run("sample", path, "--length", 5), fragment)
        one_error(run("eval", path, "--data", checkpoint.parent / "run.json"), fragment)
        one_error(run("export", path, tmp_path / "export"), fragment)
        assert not (tmp_path / "export").exists()


# --- hostile files --------------------------------------------------------------------------------

class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def hostile(checkpoint, path, marker):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["charlm"]["note"] = Payload(marker)
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(checkpoint, tmp_path):
    # The payload is real: opened the unsafe way, it runs.
    proof = tmp_path / "proof"
    torch.load(hostile(checkpoint, tmp_path / "proof.ckpt", proof), weights_only=False)
    assert proof.exists()

    marker = tmp_path / "pwned"
    path = hostile(checkpoint, tmp_path / "evil.ckpt", marker)
    refused = "was refused: it holds something other than plain data"
    one_error(run("sample", path), refused)
    one_error(run("eval", path, "--data", checkpoint.parent / "run.json"), refused)
    one_error(run("export", path, tmp_path / "export"), refused)
    out = tmp_path / "run"
    out.mkdir()
    hostile(checkpoint, out / "last.ckpt", marker)
    one_error(run("train", "--data", checkpoint.parent / "run.json", "--out", out, "--resume",
                  *ARGS), refused)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["hf:../x", "hf:a/../../x", "hf:/etc/passwd", "hf:~/x",
                                  "hf:..\\..\\x", "hf:a//b", "hf:./x", "hf:a/."])
def test_an_hf_name_cannot_escape_to_local_paths(name):
    one_error(run("data", "info", name), "is not a Hugging Face dataset name")


@pytest.mark.parametrize("name", ["../../evil", "/tmp/evil", "tinyshakespeare/../../evil", ".."])
def test_data_get_cannot_escape_the_data_folder(tmp_path, name):
    inside = tmp_path / "a" / "data"
    one_error(run("data", "get", name, "--dir", inside), "unknown corpus")
    assert not (tmp_path / "a").exists() and not (tmp_path / "evil").exists()


def test_cache_ids_are_never_trusted_when_their_checksum_fails(text_file):
    corpus = load_corpus([str(text_file)])
    cache = Path(corpus.meta["cache"])
    ids = np.load(cache)
    ids[len(ids) // 2] = (ids[len(ids) // 2] + 1) % len(corpus.vocab)  # a valid id, wrong text
    np.save(cache, ids)
    again = load_corpus([str(text_file)])
    assert again.vocab.decode(again.ids) == text_file.read_text()


def test_on_a_gpu_the_nan_check_waits_for_the_next_save_and_names_the_first_bad_step():
    # The device path (no host sync per step), exercised with CPU tensors: nothing is raised
    # while steps go by, and the check before a save names the first non-finite step and loss.
    watch = LossWatch()
    watch.check()  # nothing watched yet
    for step, loss in enumerate([2.0, 1.5, float("inf"), float("nan"), 1.0], start=1):
        watch(torch.tensor(loss), step, lazy=True)
    with pytest.raises(CharlmError, match="the training loss became inf at step 3; best.ckpt"):
        watch.check()
    fine = LossWatch()
    for step in range(1, 4):
        fine(torch.tensor(1.0), step, lazy=True)
    fine.check()
