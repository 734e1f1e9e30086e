"""Generation in constant memory: what is streamed equals what is kept, and nothing is held."""

import gc
import json
import os
import subprocess
import sys
import weakref

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_run

from charlm.cli import cli
from charlm.data.vocab import CharVocab
from charlm.generation.sampling import SampleSettings, generate, generate_ids
from charlm.model import CharRNN, ModelConfig

VOCAB = CharVocab(list("\n abcdefgh"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(tiny_run(tmp_path_factory.mktemp("stream"), "a bad cab faced a decade. " * 80,
                        hidden=12)[0])


def model() -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(len(VOCAB), "lstm", 8, 1, 4)).eval()


def test_generate_ids_holds_no_step_it_has_yielded():
    refs, most = [], 0
    for t, nxt in enumerate(generate_ids(model(), VOCAB, "ab", 300, seed=1)):
        refs.append(weakref.ref(nxt))
        del nxt
        if t % 50 == 49:  # while generating: only the step being made may still be held
            gc.collect()
            most = max(most, sum(ref() is not None for ref in refs))
    assert most <= 1


def test_sample_i_is_the_same_text_alone_or_beside_others():
    m = model()
    alone = generate(m, VOCAB, "a", 60, num_samples=1, seed=5)
    three = generate(m, VOCAB, "a", 60, num_samples=3, seed=5)
    assert three[0] == alone[0] and len(set(three)) == 3
    assert generate(m, VOCAB, "a", 60, num_samples=3, seed=6)[0] != alone[0]


@pytest.mark.parametrize("settings", [{}, {"--top-k": "3"}, {"--top-p": "0.8"},
                                      {"--temperature": "1.3"}])
def test_streamed_samples_equal_the_kept_ones(ckpt, settings):
    flags = [x for kv in settings.items() for x in kv]
    args = ["sample", ckpt, "--length", "150", "--seed", "3", "--prompt", "a b", *flags]
    kept = json.loads(CliRunner().invoke(cli, [*args, "--num-samples", "3", "--json"])
                      .stdout.splitlines()[-1])["samples"]
    many = CliRunner().invoke(cli, [*args, "--num-samples", "3"])
    assert many.exit_code == 0, many.output
    blocks = many.stdout.split("--- sample ")[1:]
    assert [b.split(" ---\n", 1)[1][:-1] for b in blocks] == kept  # each ends with its newline
    one = CliRunner().invoke(cli, args)
    assert one.exit_code == 0 and one.stdout == kept[0] + "\n"


def test_a_reader_that_closes_early_is_not_an_error(ckpt):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "charlm", "sample", ckpt, "--length",
                             "200000", "--seed", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()  # `| head -c 100`
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err.decode() == "", err.decode()


def test_json_keeps_text_only_up_to_the_limit(ckpt):
    result = CliRunner().invoke(cli, ["sample", ckpt, "--length", "100", "--num-samples", "5",
                                      "--json", "--max-kept-chars", "400"])
    assert result.exit_code == 1 and "--max-kept-chars 400" in result.stderr
    ok = CliRunner().invoke(cli, ["sample", ckpt, "--length", "100", "--num-samples", "5",
                                  "--json", "--max-kept-chars", "500", "--seed", "1"])
    assert ok.exit_code == 0 and len(json.loads(ok.stdout)["samples"]) == 5


def test_tiny_and_huge_temperatures():
    from charlm.generation.sampling import pick
    logits = torch.tensor([[0.0, 3.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    assert pick(logits, SampleSettings(temperature=1e-300), g).tolist() == [1]  # greedy
    # a huge temperature flattens the distribution: every character is drawn
    drawn = {pick(logits, SampleSettings(temperature=1e30), g).item() for _ in range(200)}
    assert drawn == {0, 1, 2}
