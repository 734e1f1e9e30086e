import pytest
import torch
from conftest import ReluRNN

from charlm.model import (
    CharRNN,
    ModelConfig,
    cell_names,
    detach_state,
    hidden_size_for_params,
    register_cell,
)

N, T, E, H, V = 2, 3, 4, 5, 6


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_forward_backward_and_carried_state(cell, layers):
    model = CharRNN(ModelConfig(V, cell, H, layers, E))
    ids = torch.randint(0, V, (N, T))
    logits, state = model(ids)
    assert logits.shape == (N, T, V)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # feeding two halves with the carried state equals feeding the whole sequence
    whole, _ = model(torch.cat([ids, ids], 1))
    _, s1 = model(ids)
    second, _ = model(ids, detach_state(s1))
    assert torch.allclose(whole[:, T:], second, atol=1e-6)


def test_unknown_cell_lists_valid_names():
    with pytest.raises(ValueError, match="choose one of: .*gru.*lstm.*rnn"):
        ModelConfig(V, "mamba")


def test_register_a_new_cell_without_touching_charlm():
    register_cell("relu-rnn", ReluRNN)  # a user's own cell: nn.RNN's calling convention
    assert "relu-rnn" in cell_names()
    model = CharRNN(ModelConfig(V, "relu-rnn", H, 2, E))
    assert model(torch.randint(0, V, (N, T)))[0].shape == (N, T, V)


def test_lstm_forget_gate_bias_starts_at_one():
    model = CharRNN(ModelConfig(V, "lstm", H, 1, E))
    b = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    assert torch.allclose(b[H:2 * H], torch.ones(H))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_params_solver_is_close(cell):
    base = ModelConfig(65, cell, 1, 2, 64)
    h = hidden_size_for_params(base, 250_000)
    n = CharRNN(ModelConfig(65, cell, h, 2, 64)).num_params()
    assert abs(n - 250_000) / 250_000 < 0.02


def test_bad_config_names_the_flag():
    with pytest.raises(ValueError, match="^hidden_size must be at least 1"):
        ModelConfig(V, "lstm", 0)
    with pytest.raises(ValueError, match="^dropout must be in"):
        ModelConfig(V, "lstm", 4, dropout=1.5)
