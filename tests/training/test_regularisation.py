"""Regularisers and initialisation (--weight-drop, --dropout, --init) and named presets."""

import json

import pytest
import torch
from click.testing import CliRunner

from charlm.cli import cli
from charlm.model import CharRNN, ModelConfig
from charlm.training import presets

V, E, H = 11, 8, 12


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_weight_drop_masks_recurrent_weights_only_while_training(impl):
    torch.manual_seed(0)
    plain = CharRNN(ModelConfig(V, "lstm", H, 2, E, impl=impl))
    dropped = CharRNN(ModelConfig(V, "lstm", H, 2, E, impl=impl, weight_drop=0.5))
    dropped.load_state_dict(plain.state_dict())
    ids = torch.randint(0, V, (3, 9))
    plain.eval(), dropped.eval()
    assert torch.equal(plain(ids)[0], dropped(ids)[0])  # evaluation: the full weights
    dropped.train()
    a, b = dropped(ids)[0], dropped(ids)[0]
    assert not torch.allclose(a, b)  # a fresh mask each call
    a.sum().backward()
    grads = {n: p.grad for n, p in dropped.rnn.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    # the mask zeroes whole entries of W_hh: their gradient is exactly zero, about half of them
    zero = (grads["weight_hh_l0"] == 0).float().mean().item()
    assert 0.3 < zero < 0.7
    assert (grads["weight_ih_l0"] == 0).float().mean().item() < 0.05  # input weights untouched
    assert dropped.rnn.weight_hh_l0.data.equal(plain.rnn.weight_hh_l0.data)  # weights not changed


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_weight_drop_zero_is_the_plain_forward(impl):
    # No reseeding between the calls: with weight_drop 0 (and dropout 0) training draws nothing,
    # so two calls from different RNG states agree, and equal the layers composed by hand.
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(V, "gru", H, 2, E, impl=impl)).train()
    ids = torch.randint(0, V, (2, 5))
    a, b = model(ids)[0], model(ids)[0]
    assert torch.equal(a, b)
    by_hand = model.head(model.rnn(model.embedding(ids))[0])
    torch.testing.assert_close(a, by_hand, rtol=0, atol=1e-6)
    dropped = CharRNN(ModelConfig(V, "gru", H, 2, E, impl=impl, weight_drop=0.5)).train()
    dropped.load_state_dict(model.state_dict())
    assert not torch.allclose(dropped(ids)[0], a)  # the comparison can see a mask


@pytest.mark.parametrize("cell,blocks", [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_orthogonal_init_makes_each_gate_block_orthogonal(cell, blocks):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(V, cell, H, 2, E, init="orthogonal"))
    for k in range(2):
        w = getattr(model.rnn, f"weight_hh_l{k}").detach()
        assert w.shape == (blocks * H, H)
        for block in w.split(H):
            assert torch.allclose(block @ block.T, torch.eye(H), atol=1e-5)
    if cell == "lstm":  # the forget-gate bias of 1 survives the orthogonal init
        assert torch.all(model.rnn.bias_ih_l0[H:2 * H] == 1)


@pytest.mark.parametrize("cell,impl", [("rnn", "fused"), ("lstm", "fused"), ("gru", "fused"),
                                       ("lstm", "explicit")])
def test_fan_in_init_scales_input_weights_by_their_inputs_only(cell, impl):
    E_, H_ = 4, 100  # torch's bound 1/√H = 0.1; fan-in's for the first layer 1/√E = 0.5
    torch.manual_seed(0)
    plain = CharRNN(ModelConfig(V, cell, H_, 2, E_, impl=impl))
    torch.manual_seed(0)
    fan_in = CharRNN(ModelConfig(V, cell, H_, 2, E_, impl=impl, init="fan-in"))
    first = fan_in.rnn.weight_ih_l0.detach()
    assert first.abs().max() <= 0.5 and first.abs().max() > 0.45  # drawn across U(±1/√E)
    assert abs(first.std().item() - 0.5 / 3 ** 0.5) < 0.03
    second = fan_in.rnn.weight_ih_l1.detach()  # fed by H units: torch's own bound again
    assert 0.09 < second.abs().max() <= 0.1
    for name, p in plain.rnn.named_parameters():  # the rest as torch draws it
        if not name.startswith("weight_ih"):
            assert torch.equal(p, dict(fan_in.rnn.named_parameters())[name]), name
    if cell == "lstm":  # the forget-gate bias of 1 as with any init
        assert torch.all(fan_in.rnn.bias_ih_l0[H_:2 * H_] == 1)


def test_the_init_flag_offers_every_init():
    from charlm.model.charrnn import INITS
    for command in ("train", "compare"):
        help_text = CliRunner().invoke(cli, [command, "--help"]).output
        assert f"--init [{'|'.join(INITS)}]" in help_text


@pytest.mark.parametrize("kwargs,message", [
    ({"weight_drop": 1.0}, "^weight_drop must be in"),
    ({"weight_drop": -0.1}, "^weight_drop must be in"),
    ({"init": "xavier"}, "^init must be one of"),
])
def test_bad_regulariser_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(V, "lstm", H, **kwargs)


def test_preset_fills_what_the_user_did_not_give():
    options = {"hidden_size": 256, "dropout": 0.0, "lr": 4e-3, "accelerator": "cpu",
               "precision": "32-true", "max_time": None}
    out = presets.apply(options, "shakespeare", given={"lr"})
    recipe = presets.PRESETS["shakespeare"].options
    assert out["hidden_size"] == recipe["hidden_size"] and out["dropout"] == recipe["dropout"]
    assert out["lr"] == 4e-3  # given on the command line: the user's value wins
    assert out["precision"] == "auto"  # resolved by fit() for the machine it runs on
    assert presets.apply(options, None, set()) == options
    assert presets.apply(options, "quick", set())["restart_every"] == 8  # pinned, as measured
    f32 = presets.apply(options, "shakespeare", given={"lr", "dropout"}, float32=True)
    assert (f32["hidden_size"], f32["batch_size"], f32["weight_drop"], f32["weight_decay"]) == \
        (384, 16, 0.2, 0.3)
    assert (f32["activation_reg"], f32["temporal_reg"]) == (2.0, 1.0)
    main = presets.apply(options, "shakespeare", given=set())
    assert (main["activation_reg"], main["temporal_reg"]) == (2.0, 1.0)  # in both recipes
    off = presets.apply({**options, "activation_reg": 0.0}, "shakespeare", {"activation_reg"})
    assert off["activation_reg"] == 0.0 and off["temporal_reg"] == 1.0  # given: off, as asked
    assert f32["dropout"] == 0.0 and f32["lr"] == 4e-3  # given: the user's values still win
    assert f32["num_layers"] == recipe["num_layers"] == 2  # the rest is the main recipe
    assert presets.apply(options, "quick", set(), float32=True) == \
        presets.apply(options, "quick", set())  # no float32 recipe: the same settings


AMX = {"amx_bf16": True, "avx512_bf16": True, "avx512_f": True, "architecture": "x86_64"}
AVX512_BF16 = {"avx512_bf16": True, "avx512_f": True, "architecture": "x86_64"}
AVX512 = {"avx512_f": True, "avx2": True, "architecture": "x86_64"}
AVX2 = {"avx2": True, "architecture": "x86_64"}
SILENT = {"architecture": "aarch64"}  # reports nothing: auto would measure


@pytest.mark.parametrize("precision, accelerator, caps, cuda, float32", [
    ("auto", "cpu", AMX, None, False),
    ("auto", "cpu", AVX512_BF16, None, False),
    ("auto", "cpu", AVX512, None, True),
    ("auto", "auto", AVX2, None, True),
    ("auto", "cpu", SILENT, None, False),  # unknown: the main recipe, measured where it is
    ("auto", "gpu", AVX2, (8, 0), False),  # an Ampere GPU: the CPU's flags do not matter
    ("auto", "gpu", AMX, (7, 5), True),
    ("32-true", "cpu", AMX, None, True),  # asked for: float32 whatever the hardware
    ("bf16-mixed", "cpu", AVX2, None, False),
    ("16-mixed", "gpu", AVX2, (7, 5), False),
])
def test_the_float32_recipe_follows_the_precision_the_run_will_train_in(
        precision, accelerator, caps, cuda, float32):
    assert presets.trains_in_float32(precision, accelerator, caps, cuda) is float32
    with pytest.raises(presets.CharlmError, match="unknown preset 'nope'; choose one of"):
        presets.preset("nope")


def test_preset_through_the_cli(text_file, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "--preset", "shakespeare", "--data", str(text_file), "--hidden-size", "16",
        "--num-layers", "1", "--batch-size", "4", "--seq-len", "16", "--max-steps", "3",
        "--max-time", "5", "--precision", "32-true", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "preset shakespeare: in float32 (where bf16 is not native)" in result.stderr
    run = json.loads((out / "run.json").read_text())
    shakespeare = presets.PRESETS["shakespeare"]
    recipe = {**shakespeare.options, **shakespeare.float32}  # float32 was asked for
    assert run["config"]["hidden_size"] == 16 and run["config"]["max_steps"] == 3  # given
    assert run["model"]["weight_drop"] == recipe["weight_drop"]  # from the preset
    assert run["model"]["dropout"] == recipe["dropout"]
    assert run["config"]["weight_decay"] == recipe["weight_decay"] > 0
    assert run["config"]["activation_reg"] == recipe["activation_reg"] > 0
    assert run["config"]["temporal_reg"] == recipe["temporal_reg"] > 0
    assert run["config"]["batch_size"] == 4 and run["config"]["lr"] == recipe["lr"]
    assert run["config"]["restart_every"] == 0  # the recipe as measured, not train's default
    assert run["model"]["dropout"] == 0.2 != shakespeare.options["dropout"]
    bad = CliRunner().invoke(cli, ["train", "--preset", "nope", "--data", str(text_file)])
    assert bad.exit_code != 0 and "Invalid value for '--preset'" in bad.output
    bad = CliRunner().invoke(cli, ["train", "--weight-drop", "1.5", "--data", str(text_file),
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--weight-drop must be in [0, 1)" in bad.output
    assert "Traceback" not in bad.output


def test_layer_norm_lstm_backpropagates_steps_and_samples():
    from charlm.data.vocab import CharVocab
    from charlm.generation import sampling
    from charlm.model import cells
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(V, "lstm-ln", H, 2, E))
    assert isinstance(model.rnn, cells.LayerNormLSTM) and model.config.impl == "explicit"
    assert torch.all(model.rnn.bias_ih_l1[H:2 * H] == 1)  # forget-gate bias, as for the LSTM
    ids = torch.randint(0, V, (3, 10))
    logits, state = model(ids)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.rnn.norms[1][2].weight.grad.abs().sum() > 0
    # the carried state continues the sequence exactly, and one step equals forward
    whole, _ = model(torch.cat([ids, ids], 1))
    second, _ = model(ids, state)
    assert torch.allclose(whole[:, 10:], second, atol=1e-5)
    with torch.no_grad():
        x = model.embedding(ids)
        h, s = model.rnn.step(x[:, 0])
        out, s2 = model.rnn(x[:, :1])
        assert torch.allclose(h, out[:, 0], atol=1e-6)
    # what it computes is checked against its equations in test_reference_cells.py
    trace = model.rnn.trace(x)
    assert set(trace) == {"i", "f", "g", "o", "c", "h"} and trace["h"].shape == (2, 3, 10, H)
    # sampling steps it through forward (no table of per-character projections)
    assert sampling.stepping_cell(model) is None
    vocab = CharVocab([chr(97 + i) for i in range(V)])
    a = sampling.generate(model.eval(), vocab, "abc", 20, seed=3)
    assert a == sampling.generate(model, vocab, "abc", 20, seed=3) and len(a[0]) == 3 + 20


def test_layer_norm_lstm_checkpoint_round_trip(text_file, tmp_path):
    from charlm import load
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "--cell", "lstm-ln", "--data", str(text_file), "--hidden-size", "16",
        "--num-layers", "2", "--batch-size", "4", "--seq-len", "16", "--max-steps", "6",
        "--dropout", "0.1", "--weight-drop", "0.2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    # the JSON line, whatever a library warns after it (the output holds stderr as well)
    results = json.loads(next(line for line in reversed(result.output.splitlines())
                              if line.startswith("{")))
    model, vocab, _ = load(results["best_checkpoint"])
    assert model.config.cell == "lstm-ln" and len(model.rnn.norms) == 2
    sample = CliRunner().invoke(cli, ["sample", results["best_checkpoint"], "--length", "30",
                                      "--json"])
    assert sample.exit_code == 0 and len(json.loads(sample.output)["samples"][0]) == 30


@pytest.mark.parametrize("float32", [False, True])
@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_is_a_valid_training_configuration(name, float32):
    from charlm.training.fit import TrainConfig
    options = presets.apply({"accelerator": "cpu"}, name, given=set(), float32=float32)
    config = TrainConfig(data=["x.txt"], **options)
    assert config.model_config(65).cell == options["cell"]
    assert config.precision == "auto" and config.max_time > 0


def test_resume_keeps_the_batch_the_run_started_with(text_file, tmp_path):
    from charlm.training.fit import TrainConfig, fit
    settings = dict(data=[str(text_file)], hidden_size=16, embedding_dim=8, seq_len=16,
                    precision="32-true", progress=False, out=str(tmp_path / "run"))
    fit(TrainConfig(max_steps=2, batch_size=4, **settings))
    # the default batch would be 8 in float32: an auto batch takes the checkpoint's instead
    resumed = fit(TrainConfig(max_steps=4, resume=True, **settings))
    assert resumed["batch_size"] == 4 and resumed["steps"] == 4
    with pytest.raises(presets.CharlmError, match="was trained with batch_size 4; resume it"):
        fit(TrainConfig(max_steps=6, resume=True, batch_size=8, **settings))


def test_forward_with_outputs_is_forward_and_shows_what_the_head_reads():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(V, "lstm", H, 2, E, dropout=0.5)).eval()
    ids = torch.randint(0, V, (3, 7))
    logits, state, out, dropped = model.forward_with_outputs(ids)
    plain_logits, plain_state = model(ids)
    assert torch.equal(logits, plain_logits) and all(map(torch.equal, state, plain_state))
    assert torch.equal(out, dropped) and out.shape == (3, 7, H)  # evaluation drops nothing
    assert torch.equal(out, model.rnn(model.embedding(ids))[0])  # the top layer's outputs
    model.train()
    logits, _, out, dropped = model.forward_with_outputs(ids)
    zeros = dropped == 0
    assert 0.3 < zeros.float().mean() < 0.7
    torch.testing.assert_close(dropped[~zeros], out[~zeros] * 2)  # kept ones scaled by 1/(1-p)
    torch.testing.assert_close(model.head(dropped), logits)


def test_the_activation_penalty_is_ar_on_the_dropped_outputs_plus_tar_on_their_change():
    from charlm.training.lightning_module import OptimConfig
    out = torch.tensor([[[1.0, 2.0], [3.0, 5.0], [4.0, 5.0]]])  # (B 1, T 3, H 2)
    dropped = torch.tensor([[[0.0, 4.0], [6.0, 0.0], [8.0, 10.0]]])
    # AR: the mean of dropped² = 216 / 6 = 36; TAR: the changes (2, 3), (1, 0): 14 / 4 = 3.5
    assert OptimConfig(activation_reg=2.0).activation_penalty(out, dropped) == 72.0
    assert OptimConfig(temporal_reg=3.0).activation_penalty(out, dropped) == 10.5
    both = OptimConfig(activation_reg=2.0, temporal_reg=3.0)
    assert both.activation_penalty(out, dropped) == 82.5
    assert both.activation_penalty(out[:, :1], dropped[:, :1]) == 16.0  # one step: no change
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(presets.CharlmError, match="activation_reg must be a finite"):
            OptimConfig(activation_reg=bad)
    with pytest.raises(presets.CharlmError, match="temporal_reg must be a finite"):
        OptimConfig(temporal_reg=-0.5)


def test_a_training_step_minimises_the_penalty_but_logs_the_cross_entropy(recwarn):
    from charlm.generation.metrics import sequence_loss
    from charlm.training.lightning_module import CharLM
    torch.manual_seed(0)
    model = ModelConfig(V, "lstm", H, 1, E).to_dict()
    vocab = list("abcdefghijk")
    lm = CharLM(model, {"activation_reg": 2.0, "temporal_reg": 1.0}, vocab)
    plain = CharLM(model, {}, vocab)
    plain.load_state_dict(lm.state_dict())
    x, y = torch.randint(0, V, (3, 9)), torch.randint(0, V, (3, 9))
    every_row = torch.arange(3)  # every row starts from a zero state
    loss = lm.training_step((x, y, every_row), 0)
    loss_sum, count, _ = sequence_loss(lm.model, x, y, None)
    cross_entropy = loss_sum / count
    out = lm.model.rnn(lm.model.embedding(x))[0]
    penalty = 2.0 * out.pow(2).mean() + 1.0 * (out[:, 1:] - out[:, :-1]).pow(2).mean()
    assert penalty > 0.01
    torch.testing.assert_close(loss, cross_entropy + penalty)
    torch.testing.assert_close(lm.shown["train_loss"], cross_entropy.detach())
    torch.testing.assert_close(plain.training_step((x, y, every_row), 0), cross_entropy)


def test_the_flags_reach_the_run_and_shrink_what_they_penalise(text_file, tmp_path):
    from charlm.generation.checkpoint import load
    ids = torch.tensor([list(range(V)) * 3])

    def trained(name: str, *flags: str) -> tuple[float, float, dict]:
        result = CliRunner().invoke(cli, [
            "train", "--data", str(text_file), "--hidden-size", "16", "--embedding-dim", "8",
            "--batch-size", "4", "--seq-len", "16", "--max-steps", "40", "--eval-every", "0",
            "--precision", "32-true", "--out", str(tmp_path / name), *flags])
        assert result.exit_code == 0, result.output
        model, _, info = load(tmp_path / name / "last.ckpt")
        out = model.rnn(model.embedding(ids % len(model.embedding.weight)))[0].detach()
        return out.pow(2).mean().item(), (out[:, 1:] - out[:, :-1]).pow(2).mean().item(), info

    size, change, info = trained("plain")
    assert info["optim"]["activation_reg"] == info["optim"]["temporal_reg"] == 0
    ar_size, _, info = trained("ar", "--activation-reg", "20")
    assert info["optim"]["activation_reg"] == 20 and ar_size < 0.5 * size
    _, tar_change, info = trained("tar", "--temporal-reg", "20")
    assert info["optim"]["temporal_reg"] == 20 and tar_change < 0.5 * change
    bad = CliRunner().invoke(cli, ["train", "--temporal-reg", "-1", "--data", str(text_file),
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--temporal-reg must be >= 0, not -1.0" in bad.output
    assert "Traceback" not in bad.output
