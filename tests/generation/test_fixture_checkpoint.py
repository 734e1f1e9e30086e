"""A run folder written by charlm 0.1.0 (tests/generation/fixtures/run-0.1.0) keeps working: load,
sample, eval, export and resume it. Checkpoints users already have must outlive any refactoring."""

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

import charlm
from charlm.cli import cli

FIXTURES = Path(__file__).parent / "fixtures"
RUN, CORPUS = FIXTURES / "run-0.1.0", FIXTURES / "corpus.txt"
FLAGS = ["--hidden-size", "8", "--embedding-dim", "4", "--seq-len", "16", "--batch-size", "2",
         "--precision", "32-true"]


def run(*args):
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 0, result.output
    return result


def test_the_old_checkpoint_loads_samples_evals_and_exports(tmp_path):
    model, vocab, info = charlm.load(RUN / "best.ckpt")
    assert info["step"] == 4 and len(vocab) == model.config.vocab_size
    text = json.loads(run("sample", RUN / "best.ckpt", "--length", "40", "--seed", "1",
                          "--json").stdout)["samples"][0]
    assert len(text) == 40 and set(text) <= set(vocab.chars)
    scored = json.loads(run("eval", RUN / "best.ckpt", "--data", CORPUS, "--json").stdout)
    recorded = json.loads((RUN / "run.json").read_text())["results"]["val_loss"]
    val = json.loads(run("eval", RUN / "best.ckpt", "--data", CORPUS, "--split", "val",
                         "--json").stdout)
    assert abs(val["loss"] - recorded) < 1e-4 and scored["chars"] > val["chars"]
    run("export", RUN / "best.ckpt", tmp_path / "export")
    again = json.loads(run("sample", tmp_path / "export", "--length", "40", "--seed", "1",
                           "--json").stdout)["samples"][0]
    assert again == text


def test_the_old_run_resumes(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(RUN, folder)
    out = json.loads(run("train", "--data", CORPUS, *FLAGS, "--max-steps", "6",
                         "--eval-every", "2", "--out", folder, "--resume", "--json")
                     .stdout.splitlines()[-1])
    assert out["steps"] == 6 and out["batch_size"] == 2


def test_the_old_run_counts_a_setting_it_predates_at_its_default(tmp_path):
    """The 0.1.0 checkpoint has no head_size (it had a linear head): resuming it with another
    head is one sentence, not a state dict that fails to load."""
    folder = tmp_path / "run"
    shutil.copytree(RUN, folder)
    result = CliRunner().invoke(cli, list(map(str, [
        "train", "--data", CORPUS, *FLAGS, "--head-size", "8", "--max-steps", "6",
        "--out", folder, "--resume"])))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "was trained with head_size=0; pass the options" in result.output
