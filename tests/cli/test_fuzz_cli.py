"""A CLI fuzzer: every command, flags drawn from hostile values, never a traceback.

Each case runs one ``charlm`` command in this process with some flags replaced by hostile values
(zero, negative, NaN, inf, huge, empty, non-UTF-8 paths, paths under /proc, a file where a folder
is expected, missing files, directories, checkpoints cut short or with bytes changed inside the
zip, another tool's .pt file) and asserts what a user may expect of any input:

- the exit code is 0, or 1 or 2 with stderr's last line starting ``Error:`` (click's usage lines
  may come before it), and no traceback;
- the files it was given are untouched, and a run folder holds no half-written file.

Legal but huge requests are not errors: a case that is still running after a few seconds is
stopped (SIGALRM) and counts as accepted. Tests run as root, so a read-only folder protects
nothing: unwritable places are under /proc, or a file stands where a folder should be.

``make test`` runs a fast profile (a fixed set of cases, well under a minute); ``make fuzz``
sets ``CHARLM_FUZZ_EXAMPLES`` for a long random one (docs/reliability.md has its results).
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlm.cli import cli

EXAMPLES = int(os.environ.get("CHARLM_FUZZ_EXAMPLES", "0"))
PROFILE = dict(max_examples=EXAMPLES or 60, deadline=None, derandomize=not EXAMPLES,
               database=None, suppress_health_check=list(HealthCheck))
CASE_SECONDS = 4.0  # a case still running after this is a legal request that takes long

NUMBERS = ["0", "-1", "nan", "inf", "-inf", "1e308", "", "1e-300", "2.5", "abc", "99999999999"]
COUNTS = ["0", "-3", "1", "2", "1000000000", "", "x", "1.5"]


class Stopped(Exception):
    """A case that ran past CASE_SECONDS (a legal request that takes long)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The files every case may be pointed at, some good and many hostile."""
    root = tmp_path_factory.mktemp("fuzz")
    ckpt, corpus = tiny_run(root, "the cat sat on the mat. " * 60)
    blob = ckpt.read_bytes()
    files = {"corpus": corpus, "ckpt": ckpt, "dir": root, "missing": root / "nope.ckpt",
             "proc": Path("/proc/charlm-fuzz/x"), "proc_file": Path("/proc/self/status"),
             "file_as_dir": corpus / "sub", "empty": root / "empty.txt",
             "binary": root / "binary.bin", "latin1": root / "latin1.txt",
             "other_pt": root / "other.pt", "tensor_pt": root / "tensor.pt",
             "non_utf8": Path(os.fsdecode(bytes(root / "caf") + b"\xe9.txt"))}
    files["empty"].write_bytes(b"")
    files["binary"].write_bytes(bytes(range(256)) * 8)
    files["latin1"].write_bytes("café crème ".encode("latin-1") * 50)
    torch.save({"model": {"w": torch.zeros(3)}, "epoch": 3}, files["other_pt"])
    torch.save(torch.arange(10), files["tensor_pt"])
    files["non_utf8"].write_bytes(b"hello world " * 50)
    for cut in (1, 100, len(blob) // 2, len(blob) - 1):
        files[f"cut_{cut}"] = root / f"cut_{cut}.ckpt"
        files[f"cut_{cut}"].write_bytes(blob[:cut])
    nan = torch.load(ckpt, map_location="cpu", weights_only=True)
    next(iter(nan["state_dict"].values())).fill_(float("nan"))
    files["nan_weights"] = root / "nan.ckpt"
    torch.save(nan, files["nan_weights"])
    for name, flip in corrupted_members(blob).items():
        files[name] = root / f"{name}.ckpt"
        files[name].write_bytes(flip)
    export = root / "export"
    assert CliRunner().invoke(cli, ["export", str(ckpt), str(export)]).exit_code == 0
    files["export"] = export
    (root / "outs").mkdir()
    return root, files


def corrupted_members(blob: bytes) -> dict[str, bytes]:
    """The checkpoint with bytes changed inside each kind of member of its zip."""
    out = {}
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        infos = z.infolist()
    for kind, info in (("pickle", next(i for i in infos if i.filename.endswith("data.pkl"))),
                       ("tensor", next(i for i in infos if "/data/" in i.filename))):
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        changed = bytearray(blob)
        for k in range(min(info.compress_size, 16)):
            changed[start + k] ^= 0x5A
        out[f"flip_{kind}"] = bytes(changed)
    return out


def digest(files: dict) -> dict:
    """What every given file holds now (directories by their listing)."""
    out = {}
    for name, path in files.items():
        p = Path(path)
        if p.is_file() and not str(p).startswith("/proc"):
            out[name] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir() and name == "export":
            out[name] = sorted((q.name, q.stat().st_size) for q in p.iterdir())
    return out


def paths(files: dict, *names: str):
    return st.sampled_from([str(files[n]) for n in names])


def pool(*values):
    return st.sampled_from([str(v) for v in values])


def commands(root: Path, files: dict):
    """One strategy per command: (argv, the run folder it may write or None)."""
    ckpts = paths(files, "ckpt", "export", "missing", "dir", "other_pt", "tensor_pt", "empty",
                  "binary", "nan_weights", *[n for n in files if n.startswith(("cut_",
                                                                                     "flip_"))])
    sources = paths(files, "corpus", "missing", "empty", "binary", "latin1", "dir", "proc",
                    "proc_file", "non_utf8", "file_as_dir")
    outs = st.sampled_from(["fresh", str(files["proc"]), str(files["file_as_dir"]),
                            str(files["corpus"]), str(files["dir"] / "outs")])
    numbers, counts = st.sampled_from(NUMBERS), st.sampled_from(COUNTS)
    train_flags = {"--data": sources, "--hidden-size": counts, "--num-layers": counts,
                   "--embedding-dim": counts, "--seq-len": counts, "--batch-size": counts,
                   "--lr": numbers, "--dropout": numbers, "--weight-drop": numbers,
                   "--weight-decay": numbers, "--grad-clip": numbers, "--max-steps": counts,
                   "--max-time": numbers, "--val-fraction": numbers, "--test-fraction": numbers,
                   "--eval-every": counts, "--warmup-steps": counts, "--cell":
                   pool("lstm", "gru", "rnn", "nope", ""), "--precision":
                   pool("32-true", "bf16-mixed", "auto", "64", "fast"), "--encoding":
                   pool("utf-8", "latin-1", "nope")}
    sample_flags = {"--length": counts, "--temperature": numbers, "--top-k": counts,
                    "--top-p": numbers, "--num-samples": counts, "--seed": counts,
                    "--prompt": pool("the", "", "\u2603", "\x00", "q" * 3000),
                    "--max-kept-chars": counts}
    eval_flags = {"--data": sources, "--seq-len": counts, "--split":
                  pool("val", "test", "all", "train", "nope")}
    inspect_flags = {"--text": sources, "--chars": counts, "--layer": counts, "--top": counts}
    base_train = ["--data", str(files["corpus"]), "--hidden-size", "8", "--embedding-dim", "4",
                  "--seq-len", "8", "--batch-size", "2", "--max-steps", "2", "--eval-every", "0",
                  "--precision", "32-true"]
    return {
        "train": (["train", *base_train], train_flags, outs),
        "sample": (["sample", "CKPT", "--length", "20"], sample_flags, None),
        "sample-json": (["sample", "CKPT", "--length", "20", "--json"], sample_flags, None),
        "eval": (["eval", "CKPT"], eval_flags, None),
        "export": (["export", "CKPT", "OUT"], {}, outs),
        "data-info": (["data", "info", str(files["corpus"])], {"--val-fraction": numbers,
                                                              "--test-fraction": numbers}, None),
        "data-prepare": (["data", "prepare", "SOURCE"], {"--encoding": pool("utf-8", "nope")},
                         None),
        "compare": (["compare", "CKPT", "--data", str(files["corpus"]), "--out", "OUT",
                     "--in-process", "--probe-k", "4", "--probe-windows", "2"],
                    {"--probe-k": counts, "--probe-windows": counts, "--seeds": counts}, outs),
        "visualize": (["visualize", "CKPT", "--text", str(files["corpus"]), "--chars", "200",
                       "--out", "PAGE"], inspect_flags, outs),
        "inspect": (["inspect", "CKPT", "--text", str(files["corpus"]), "--chars", "200"],
                    inspect_flags, None),
    }, ckpts, sources


@st.composite
def case(draw, root: Path, files: dict):
    table, ckpts, sources = commands(root, files)
    name = draw(st.sampled_from(sorted(table)))
    argv, flags, outs = table[name]
    argv = list(argv)
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=3, unique=True)) if flags \
        else []
    for flag in chosen:
        value = draw(flags[flag])
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    out = None
    if "CKPT" in argv:
        argv[argv.index("CKPT")] = draw(ckpts)
    if "SOURCE" in argv:
        argv[argv.index("SOURCE")] = draw(sources)
    if outs is not None:
        where = draw(outs)
        out = str(root / "outs" / f"o{draw(st.integers(0, 10**9))}") if where == "fresh" \
            else where
        if name == "train":
            argv += ["--out", out]
        elif name == "visualize":
            argv[argv.index("PAGE")] = out + ".html" if where == "fresh" else out
        else:
            argv[argv.index("OUT")] = out
    return name, argv, out


def invoke(argv: list[str]):
    """Run one case in this process; a case past CASE_SECONDS is stopped (accepted)."""
    def stop(signum, frame):
        raise Stopped

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        return CliRunner().invoke(cli, argv)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(result, argv: list[str]) -> None:
    """Exit 0, or 1/2 with one Error: line last on stderr; never a traceback."""
    said = f"charlm {' '.join(argv)}\n{result.output}"
    if isinstance(result.exception, Stopped):
        return  # a legal request still running: accepted
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback
        trace = "".join(traceback.format_exception(result.exception))
        raise AssertionError(f"traceback for {said}\n{trace}")
    assert result.exit_code in (0, 1, 2), said
    assert "Traceback" not in result.output, said
    if result.exit_code:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("Error:"), said


def half_written(out: str | None) -> list[str]:
    """Temporary files left in a run folder (a write that did not finish)."""
    if out is None or not Path(out).is_dir() or str(out).startswith("/proc"):
        return []
    return [str(p) for p in Path(out).rglob("*") if ".tmp" in p.name]


def test_the_cli_survives_hostile_flags_and_files(world):
    root, files = world
    before = digest(files)
    seen = []

    @settings(**PROFILE)
    @given(case(root, files))
    def one(drawn):
        name, argv, out = drawn
        result = invoke(argv)
        check(result, argv)
        if not isinstance(result.exception, Stopped):
            assert not half_written(out), f"charlm {' '.join(argv)} left {half_written(out)}"
        seen.append((name, None if isinstance(result.exception, Stopped) else result.exit_code))

    one()
    assert digest(files) == before  # nothing given was changed
    assert len(seen) >= PROFILE["max_examples"]
    by = {}
    for name, code in seen:
        by.setdefault(name, {}).setdefault(code, 0)
        by[name][code] += 1
    print(f"\nfuzzed {len(seen)} cases (command: {{exit code: cases}}, None: stopped): {by}")


@pytest.mark.parametrize("argv", [
    ["train", "--lr", "0"], ["train", "--lr", "-1"], ["train", "--lr", "nan"],
    ["train", "--max-time", "nan"], ["train", "--val-fraction", "0.6", "--test-fraction", "0.5"],
    ["train", "--val-fraction", "nan"],
    ["train", "--out", "/proc/forbidden", "--max-steps", "1"],
    ["sample", "CKPT", "--temperature", "nan"], ["sample", "CKPT", "--temperature", "inf"],
    ["sample", "CKPT", "--top-p", "nan"], ["sample", "NAN"], ["eval", "CKPT", "--seq-len", "0"],
    ["train", "--hidden-size", "1000000000"],
    ["sample", "CKPT", "--length", "100000000", "--num-samples", "100000"],
    ["sample", "CKPT", "--length", "1000", "--num-samples", "100", "--json",
     "--max-kept-chars", "1000"],
])
def test_what_the_fuzzer_found_is_one_sentence(world, argv):
    root, files = world
    named = {"CKPT": str(files["ckpt"]), "NAN": str(files["nan_weights"])}
    argv = [named.get(a, a) for a in argv]
    if argv[0] == "train":
        defaults = {"--data": str(files["corpus"]), "--hidden-size": "8", "--seq-len": "8",
                    "--max-steps": "2", "--out": str(root / "outs" / "found")}
        argv += [x for flag, value in defaults.items() if flag not in argv for x in (flag, value)]
    result = invoke(argv)
    check(result, argv)
    assert result.exit_code == 1, result.output


def test_a_tiny_temperature_or_top_p_is_greedy_not_a_crash(world):
    _, files = world
    greedy = invoke(["sample", str(files["ckpt"]), "--greedy", "--length", "30"])
    for flag in ("--temperature", "--top-p"):  # 1e-300 is 0 in float32
        result = invoke(["sample", str(files["ckpt"]), flag, "1e-300", "--length", "30"])
        assert result.exit_code == 0 and result.stdout == greedy.stdout, flag


def test_a_path_that_is_not_utf8_is_printed_not_a_crash(world):
    _, files = world
    result = invoke(["inspect", str(files["ckpt"]), "--text", str(files["non_utf8"]),
                     "--chars", "200"])
    check(result, ["inspect"])
    assert result.exit_code == 0
    missing = invoke(["sample", str(files["non_utf8"]) + ".ckpt"])
    check(missing, ["sample"])
    assert missing.exit_code == 1 and "caf" in missing.stderr
