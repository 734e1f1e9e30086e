import pytest
import torch
from conftest import ReluRNN

from charlm.errors import SettingError
from charlm.model import (
    CharRNN,
    ModelConfig,
    build_cell,
    cell_names,
    detach_state,
    hidden_size_for_params,
    register_cell,
    restart_rows,
    state_hidden,
    unregister_cell,
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


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "transformer"])
def test_next_logits_are_the_last_positions_logits_with_the_same_state(cell):
    """What a prompt gives generation: the logits after its last character and the state after
    it, as the full forward gives them (with a carried state too)."""
    model = CharRNN(ModelConfig(V, cell, 8, 2, E)).eval()
    ids, more = torch.randint(0, V, (N, T)), torch.randint(0, V, (N, 2))
    with torch.no_grad():
        logits, state = model(ids)
        last, last_state = model.next_logits(ids)
        assert last.shape == (N, V)
        assert torch.allclose(last, logits[:, -1], atol=1e-6)
        for a, b in zip(*(s if isinstance(s, tuple) else (s,) for s in (state, last_state))):
            assert torch.equal(a, b)
        assert torch.allclose(model.next_logits(more, state)[0], model(more, state)[0][:, -1],
                              atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "transformer"])
def test_a_head_size_puts_one_hidden_layer_between_the_stack_and_the_vocabulary(cell):
    """head_size N: hidden → N (GELU) → vocabulary on every position; 0 keeps the one linear
    layer. The hidden layer is a real non-linearity (not two linear maps that fold into one),
    and next_logits goes through it as forward does."""
    linear, deep = (CharRNN(ModelConfig(V, cell, 8, 1, E, head_size=k)) for k in (0, 12))
    assert isinstance(linear.head, torch.nn.Linear)
    assert deep.num_params() - linear.num_params() == 8 * 12 + 12 + 12 * V + V - (8 * V + V)
    assert [type(m) for m in deep.head] == [torch.nn.Linear, torch.nn.GELU, torch.nn.Linear]
    first, _, last = deep.head
    assert (first.in_features, first.out_features, last.out_features) == (8, 12, V)
    ids = torch.randint(0, V, (N, T))
    deep.eval()
    with torch.no_grad():
        logits, _ = deep(ids)
        assert torch.allclose(deep.next_logits(ids)[0], logits[:, -1], atol=1e-6)
        h = torch.randn(4, 8)
        assert not torch.allclose(deep.head(2 * h) - deep.head(torch.zeros(4, 8)),
                                  2 * (deep.head(h) - deep.head(torch.zeros(4, 8))), atol=1e-4)


def test_unknown_cell_lists_valid_names():
    with pytest.raises(ValueError, match="choose one of: .*gru.*lstm.*rnn"):
        ModelConfig(V, "mamba")


def test_register_a_new_cell_without_touching_charlm():
    register_cell("relu-rnn", ReluRNN)  # a user's own cell: nn.RNN's calling convention
    assert "relu-rnn" in cell_names()
    model = CharRNN(ModelConfig(V, "relu-rnn", H, 2, E))
    assert model(torch.randint(0, V, (N, T)))[0].shape == (N, T, V)


def test_lstm_forget_gate_bias_starts_at_one():
    model = CharRNN(ModelConfig(V, "lstm", H, 2, E))
    for k in (0, 1):
        b_ih, b_hh = getattr(model.rnn, f"bias_ih_l{k}"), getattr(model.rnn, f"bias_hh_l{k}")
        assert torch.equal(b_ih[H:2 * H], torch.ones(H)) and torch.equal(b_hh[H:2 * H],
                                                                          torch.zeros(H))
        # the other gates (i, g, o) keep torch's random start
        for rest in (b_ih[:H], b_ih[2 * H:], b_hh[:H], b_hh[2 * H:]):
            assert (rest.abs() > 0).all() and (rest.abs() < 1).all()


def test_impl_refusals_name_the_choices():
    with pytest.raises(SettingError) as e:
        ModelConfig(V, "lstm", H, impl="fast")
    assert str(e.value) == "impl must be one of auto, fused, explicit, not 'fast'"
    with pytest.raises(SettingError) as e:  # refused with the config, not later by the build
        ModelConfig(V, "gru-note", H, impl="fused")
    assert str(e.value) == "cell 'gru-note' has no fused implementation; use impl explicit"
    register_cell("fused-only-cell", ReluRNN)
    with pytest.raises(SettingError) as e:
        ModelConfig(V, "fused-only-cell", H, impl="explicit")
    assert str(e.value) == "cell 'fused-only-cell' has no explicit implementation; use impl fused"
    with pytest.raises(SettingError) as e:  # a build in the other form (as a twin would be)
        build_cell(ModelConfig(V, "fused-only-cell", H), impl="explicit")
    assert str(e.value) == "cell 'fused-only-cell' has no explicit implementation"


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_params_solver_is_close(cell):
    base = ModelConfig(65, cell, 1, 2, 64)
    h = hidden_size_for_params(base, 250_000)
    n = CharRNN(ModelConfig(65, cell, h, 2, 64)).num_params()
    assert abs(n - 250_000) / 250_000 < 0.02


def test_bad_config_names_the_flag():
    for settings, said in [
            (dict(vocab_size=V, hidden_size=0), "hidden_size must be at least 1, not 0"),
            (dict(vocab_size=V, num_layers=0), "num_layers must be at least 1, not 0"),
            (dict(vocab_size=V, embedding_dim=-1), "embedding_dim must be at least 1, not -1"),
            (dict(vocab_size=0), "vocab_size must be at least 1, not 0"),
            (dict(vocab_size=V, dropout=1.5), "dropout must be in [0, 1), not 1.5"),
            (dict(vocab_size=V, weight_drop=-0.1), "weight_drop must be in [0, 1), not -0.1"),
            (dict(vocab_size=V, init="zeros"),
             "init must be one of default, orthogonal, fan-in, not 'zeros'"),
            (dict(vocab_size=V, head_size=-1),
             "head_size must be >= 0 (0: a linear head), not -1")]:
        with pytest.raises(SettingError) as e:
            ModelConfig(cell="lstm", **settings)
        assert str(e.value) == said


def test_a_registered_cell_is_recurrent_with_its_own_layout_unless_told():
    from charlm.model.registry import cell
    register_cell("plain-user-cell", ReluRNN)
    c = cell("plain-user-cell")
    assert (c.name, c.fused, c.explicit, c.recurrent, c.lstm_gates) == \
        ("plain-user-cell", ReluRNN, None, True, False)
    register_cell("explicit-only-cell", None, ReluRNN, recurrent=False, lstm_gates=True)
    c = cell("explicit-only-cell")
    assert (c.fused, c.explicit, c.recurrent, c.lstm_gates) == (None, ReluRNN, False, True)
    with pytest.raises(ValueError, match="^cell 'nothing' needs at least one implementation$"):
        register_cell("nothing", None)
    assert "nothing" not in cell_names()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_dropout_goes_between_stacked_layers_only(cell):
    two = CharRNN(ModelConfig(V, cell, H, num_layers=2, embedding_dim=E, dropout=0.3))
    one = CharRNN(ModelConfig(V, cell, H, num_layers=1, embedding_dim=E, dropout=0.3))
    assert (two.rnn.dropout, one.rnn.dropout) == (0.3, 0.0)  # torch's has none after the top


def test_an_unknown_cell_lists_every_name_separated_by_commas():
    from charlm.model.registry import cell
    with pytest.raises(ValueError) as e:
        cell("mamba")
    assert str(e.value) == "unknown cell 'mamba'; choose one of: " + ", ".join(cell_names())


@pytest.mark.parametrize("cell, target", [("rnn", 5_000), ("lstm", 20_000), ("gru", 12_345),
                                          ("lstm", 1)])
def test_the_solver_returns_the_hidden_size_closest_to_the_target(cell, target):
    def count(h):
        return CharRNN(ModelConfig(V, cell, h, 1, E)).num_params()

    h = hidden_size_for_params(ModelConfig(V, cell, 1, 1, E), target)
    assert all(abs(count(h) - target) <= abs(count(other) - target)
               for other in (h - 1, h + 1) if other >= 1), (h, count(h))
    if target == 1:
        assert h == 1  # nothing smaller than one unit


def test_weight_drop_masks_each_recurrent_matrix_with_its_own_probability(monkeypatch):
    seen = []
    real = torch.nn.functional.dropout

    def spy(w, p=0.5, *args, **kwargs):
        seen.append((tuple(w.shape), p))
        return real(w, p, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "dropout", spy)
    model = CharRNN(ModelConfig(V, "lstm", H, 2, E, weight_drop=0.2)).train()
    model(torch.randint(0, V, (N, T)))
    weights = [call for call in seen if len(call[0]) == 2]  # the output dropout is 3-D
    assert weights == [((4 * H, H), 0.2)] * 2  # W_hh of both layers, no other weight


def test_state_hidden_is_h_of_any_cells_state():
    h, c = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert state_hidden((h, c)) is h  # an LSTM's (h, c)
    assert state_hidden(h) is h       # an RNN's or a GRU's h


def test_a_cells_own_settings_reach_its_factory_and_are_refused_by_one_that_takes_none():
    got = {}

    def factory(i, h, layers, dropout, **settings):
        got.update(settings)
        return ReluRNN(i, h, layers, dropout)

    register_cell("takes-settings", factory)
    build_cell(ModelConfig(V, "takes-settings", H, extra={"knob": 3, "dial": "x"}))
    assert got == {"knob": 3, "dial": "x"}
    with pytest.raises(SettingError) as e:
        build_cell(ModelConfig(V, "lstm", H, extra={"heads": 2, "context": 8}))
    assert str(e.value).startswith("cell 'lstm' does not take the settings heads, context: ")


def test_a_registered_cell_can_be_removed_and_an_unknown_one_is_refused():
    register_cell("for-a-while", ReluRNN)
    assert "for-a-while" in cell_names()
    unregister_cell("for-a-while")
    assert "for-a-while" not in cell_names()
    with pytest.raises(ValueError, match="unknown cell 'for-a-while'; choose one of: .*lstm"):
        unregister_cell("for-a-while")
    with pytest.raises(ValueError, match="unknown cell 'for-a-while'"):
        ModelConfig(V, "for-a-while")


def test_cells_registered_by_earlier_tests_are_gone():
    # relu-rnn and fused-only-cell were registered by tests above, in this file's order
    assert {"relu-rnn", "fused-only-cell", "plain-user-cell"}.isdisjoint(cell_names())
    assert {"rnn", "lstm", "gru", "gru-note", "lstm-ln", "transformer"} <= set(cell_names())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_restart_rows_zeroes_the_rows_named_and_keeps_the_rest(cell):
    torch.manual_seed(0)
    _, state = CharRNN(ModelConfig(V, cell, H, 2, E))(torch.randint(0, V, (4, T)))
    fresh = restart_rows(state, (1, 3))
    as_tuple = (lambda s: s) if cell == "lstm" else (lambda s: (s,))
    for old, new in zip(as_tuple(state), as_tuple(fresh)):
        assert torch.equal(new[:, [1, 3]], torch.zeros_like(new[:, [1, 3]]))
        assert torch.equal(new[:, [0, 2]], old[:, [0, 2]])
        assert old[:, [1, 3]].abs().sum() > 0  # the carried state itself is left alone
    assert restart_rows(state, ()) is state and restart_rows(None, (0,)) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_restart_rows_on_a_gpu_does_not_make_the_host_wait():
    # every training step restarts some rows (--restart-every): a wait there would cost each step
    model = CharRNN(ModelConfig(V, "lstm", H, 2, E)).cuda()
    _, state = model(torch.randint(0, V, (4, T), device="cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fresh = restart_rows(state, (0, 2))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert fresh[0][:, [0, 2]].abs().sum().item() == 0
    assert torch.equal(fresh[1][:, [1, 3]], state[1][:, [1, 3]])
