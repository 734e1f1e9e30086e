"""The transformer reference: its K/V cache equals recomputation, its full-pass eval equals a
direct computation, and it trains, samples and exports through the same commands as the cells."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from charlm.cli import cli
from charlm.generation.metrics import evaluate
from charlm.model import CharRNN, ModelConfig
from charlm.model.transformer import default_heads

V, CONTEXT = 7, 8


def model(context: int = CONTEXT, layers: int = 2) -> CharRNN:
    torch.manual_seed(0)
    config = ModelConfig(V, "transformer", 16, layers, 6, extra={"heads": 2, "context": context})
    return CharRNN(config).double().eval()


def step_by_step(m: CharRNN, ids: torch.Tensor) -> torch.Tensor:
    state, outs = None, []
    for t in range(ids.size(1)):
        logits, state = m(ids[:, t:t + 1], state)
        outs.append(logits)
    return torch.cat(outs, 1)


def test_the_cache_equals_recomputing_the_window():
    m, ids = model(), torch.randint(V, (3, 20))
    stepped = step_by_step(m, ids)
    # within the context: exactly a full forward of everything so far
    full, _ = m(ids[:, :CONTEXT], None)
    torch.testing.assert_close(stepped[:, :CONTEXT], full)
    # past it: the window restarts from its last CONTEXT // 2 characters when full, so the
    # character at t is read with the window that began at the last restart
    start = 0
    for t in range(ids.size(1)):
        if t - start == CONTEXT:
            start = t - CONTEXT // 2
        window, _ = m(ids[:, start:t + 1], None)  # a fresh forward, positions from 0
        torch.testing.assert_close(stepped[:, t], window[:, -1], msg=f"position {t}")


def test_one_call_equals_many_and_the_cache_stays_bounded():
    m, ids = model(), torch.randint(V, (2, 37))
    whole, state = m(ids, None)
    torch.testing.assert_close(step_by_step(m, ids), whole)
    k, v, seen = state
    assert k.shape[3] <= CONTEXT and seen.shape[2] <= CONTEXT


def test_full_pass_eval_equals_a_direct_computation_on_a_short_text():
    m = model(context=64, layers=1)
    ids = np.random.default_rng(0).integers(0, V, 50)
    logits, _ = m(torch.from_numpy(ids[None, :-1]), None)
    direct = F.cross_entropy(logits[0], torch.from_numpy(ids[1:])).item()
    # (the metric sums the loss in float32, so agreement is to float32 precision)
    assert evaluate(m, ids, seq_len=16)["loss"] == pytest.approx(direct, rel=1e-6)


def test_training_reads_every_window_fresh():
    m = model().train()
    x = torch.randint(V, (2, 6))
    _, state = m.eval()(torch.randint(V, (2, 5)), None)
    m.train()
    with_state, after = m(x, state)
    torch.testing.assert_close(with_state, m(x, None)[0])
    assert after[2].shape[2] == 6  # the state it returns holds only this window


def test_default_heads_divide_the_width():
    for width in (1, 16, 63, 64, 100, 128, 213, 384, 512):
        h = default_heads(width)
        assert width % h == 0 and (h == 1 or width // h >= 64)
    assert default_heads(384) == 6 and default_heads(512) == 8


def test_train_sample_eval_and_export_a_transformer(text_file, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    trained = runner.invoke(cli, ["train", "--cell", "transformer", "--data", str(text_file),
                                  "--hidden-size", "16", "--num-layers", "1", "--heads", "2",
                                  "--seq-len", "16", "--batch-size", "4", "--max-steps", "30",
                                  "--precision", "32-true", "--out", str(out), "--json"])
    assert trained.exit_code == 0, trained.output
    result = json.loads(trained.stdout.splitlines()[-1])
    assert result["val_loss"] < np.log(len(set(text_file.read_text())))  # below uniform
    model_ = json.loads((out / "run.json").read_text())["model"]
    assert model_["extra"] == {"heads": 2, "context": 16}
    sample = runner.invoke(cli, ["sample", str(out / "best.ckpt"), "--length", "40", "--seed",
                                 "2", "--json"])
    text = json.loads(sample.stdout)["samples"][0]
    assert sample.exit_code == 0 and len(text) == 40
    assert runner.invoke(cli, ["export", str(out / "best.ckpt"), str(tmp_path / "x")]).exit_code \
        == 0
    again = runner.invoke(cli, ["sample", str(tmp_path / "x"), "--length", "40", "--seed", "2",
                                "--json"])
    assert json.loads(again.stdout)["samples"][0] == text
    scored = runner.invoke(cli, ["eval", str(out / "best.ckpt"), "--json"])
    assert json.loads(scored.stdout)["loss"] == pytest.approx(result["val_loss"], rel=1e-4)


@pytest.mark.parametrize("flags, said", [(["--heads", "3"], "multiple of its heads 3"),
                                         (["--context", "1"], "context must be at least 2")])
def test_a_transformer_that_cannot_be_built_is_one_sentence(text_file, tmp_path, flags, said):
    result = CliRunner().invoke(cli, ["train", "--cell", "transformer", "--hidden-size", "16",
                                      "--data", str(text_file), "--max-steps", "1",
                                      "--out", str(tmp_path / "r"), *flags])
    assert result.exit_code == 1 and said in result.stderr and "Traceback" not in result.output


def test_the_tools_that_read_recurrent_units_refuse_it_in_one_sentence(text_file, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    assert runner.invoke(cli, ["train", "--cell", "transformer", "--data", str(text_file),
                               "--hidden-size", "16", "--seq-len", "16", "--max-steps", "2",
                               "--precision", "32-true", "--out", str(out)]).exit_code == 0
    ckpt = str(out / "best.ckpt")
    for args in (["inspect", ckpt, "--text", str(text_file)],
                 ["visualize", ckpt, "--text", str(text_file), "--out", str(tmp_path / "p.html")]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and "transformer" in result.stderr, (args, result.output)
        assert isinstance(result.exception, SystemExit)
    assert not (tmp_path / "p.html").exists()


def test_serve_refuses_it_in_one_sentence(tmp_path):
    from charlm.generation.checkpoint import ExportedModel
    exported = ExportedModel({"vocab_size": 3, "cell": "transformer", "hidden_size": 8,
                              "num_layers": 1, "embedding_dim": 4,
                              "extra": {"heads": 1, "context": 8}}, ["\n", "a", "b"], info={})
    exported.save_pretrained(str(tmp_path / "x"))
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "x"), "--port", "0"])
    assert result.exit_code == 1 and "takes recurrent models" in result.stderr
