import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from charlm.cli import cli

TINY = ["--hidden-size", "24", "--embedding-dim", "8", "--batch-size", "4", "--seq-len", "16",
        "--max-steps", "20", "--eval-every", "10"]


def run(*args, ok=True):
    result = CliRunner().invoke(cli, list(map(str, args)))
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def trained(text_file, tmp_path):
    out = tmp_path / "run"
    result = run("train", "--data", text_file, "--out", out, "--json", "--sample-every", "10",
                 *TINY)
    return out, last_json(result)


def test_train_sample_eval_export(trained, tmp_path):
    out, info = trained
    assert set(info) >= {"checkpoint", "best_checkpoint", "val_loss", "val_bpc", "steps", "params",
                         "train_chars_per_s"}
    assert info["steps"] == 20 and info["train_chars_per_s"] > 0
    assert "temperature 0.8" in (out / "samples.txt").read_text()

    a = last_json(run("sample", out / "best.ckpt", "--seed", 3, "--length", 40,
                      "--num-samples", 2, "--prompt", "the", "--json"))
    assert len(a["samples"]) == 2 and all(s.startswith("the") and len(s) == 43
                                          for s in a["samples"])
    assert a["chars_per_s"] > 0

    ev = last_json(run("eval", out / "best.ckpt", "--json"))
    assert ev["split"] == "val" and abs(ev["loss"] - info["val_loss"]) < 1e-6
    assert ev["bpc"] == pytest.approx(ev["loss"] / 0.6931471805599453)

    run("export", out / "best.ckpt", tmp_path / "exported")
    assert {p.name for p in (tmp_path / "exported").iterdir()} >= \
        {"model.safetensors", "config.json"}
    b = last_json(run("sample", tmp_path / "exported", "--seed", 3, "--length", 40,
                      "--num-samples", 2, "--prompt", "the", "--json"))
    assert b["samples"] == a["samples"]  # same seed, same text, from checkpoint or export
    ev2 = last_json(run("eval", tmp_path / "exported", "--json", "--data",
                        json.loads((out / "run.json").read_text())["config"]["data"][0],
                        "--split", "val"))
    assert ev2["loss"] == pytest.approx(ev["loss"], abs=1e-6)


def test_streaming_sample_prints_text(trained):
    out, _ = trained
    result = run("sample", out / "best.ckpt", "--prompt", "a", "--length", 30, "--seed", 1)
    assert result.output.startswith("a") and result.output.endswith("\n")
    assert len(result.output) == 1 + 30 + 1  # the prompt, 30 characters, one newline
    streamed = result.output[:-1]
    assert streamed == last_json(run("sample", out / "best.ckpt", "--prompt", "a", "--length", 30,
                                     "--seed", 1, "--json"))["samples"][0]


def test_eval_on_new_text_reports_unknown_characters(trained, tmp_path):
    out, _ = trained
    new = tmp_path / "new.txt"
    new.write_text("the cat sat on the mat § and ran away ¶\n")
    ev = last_json(run("eval", out / "best.ckpt", "--data", new, "--json"))
    assert ev["split"] == "all" and ev["unknown_chars"] == 2 and set(ev["unknown"]) == {"§", "¶"}


def no_traceback(result, message):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert message in result.output


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"), (b"caf\xe9\n", "offset 3"), (b"short text\n", "fewer than one batch")])
def test_bad_corpus_is_one_clear_sentence(tmp_path, content, message):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    no_traceback(run("train", "--data", p, "--out", tmp_path / "r", ok=False), message)


def test_missing_checkpoint_and_bad_flags(tmp_path, trained):
    out, _ = trained
    no_traceback(run("sample", tmp_path / "nope.ckpt", ok=False), "no such checkpoint")
    no_traceback(run("eval", tmp_path / "nope.ckpt", ok=False), "no such checkpoint")
    no_traceback(run("sample", out / "best.ckpt", "--prompt", "€", ok=False), "'€'")
    no_traceback(run("sample", out / "best.ckpt", "--top-p", "0", ok=False), "--top-p")
    no_traceback(run("sample", out / "best.ckpt", "--length", "-3", ok=False), "--length")
    no_traceback(run("train", "--cell", "nope", "--data", out / "run.json", "--out", tmp_path / "x",
                     ok=False), "choose one of")
    not_ckpt = tmp_path / "fake.ckpt"
    not_ckpt.write_text("hello")
    no_traceback(run("sample", not_ckpt, ok=False), "not a readable charlm checkpoint")


def test_data_info_and_prepare(text_file):
    info = last_json(run("data", "info", text_file, "--json"))
    assert info["chars"] == len(text_file.read_text()) and info["splits"]["val"] > 0
    assert "cached at" in run("data", "prepare", text_file).output


def test_data_get_without_network_is_a_clear_error(tmp_path):
    no_traceback(run("data", "get", "../etc", "--dir", tmp_path, ok=False), "unknown corpus")


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "charlm", "--version"], capture_output=True,
                         text=True, check=True)
    from importlib.metadata import version

    import charlm
    assert out.stdout == f"charlm, version {charlm.__version__}\n"
    assert charlm.__version__ == version("charlm")


def test_sample_stats_against_training_text(trained):
    out, _ = trained
    result = last_json(run("sample", out / "best.ckpt", "--length", 200, "--seed", 2, "--stats",
                           "--json"))
    stats = result["stats"]
    assert set(stats) >= {"known_words", "distinct_1", "distinct_2", "novelty_8", "loops",
                          "loops_training"}
    assert all(0.0 <= stats[k] <= 1.0 for k in ("known_words", "novelty_8", "loops"))
    # without --json the same figures go to stderr, one line
    said = run("sample", out / "best.ckpt", "--length", 200, "--seed", 2, "--stats").stderr
    assert f"loops {stats['loops']:.1%} (training text {stats['loops_training']:.1%})" in said
