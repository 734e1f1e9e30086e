"""The explicit cells compute exactly what torch's fused modules compute, and the note's GRU
doesn't."""

import pytest
import torch
from torch import nn

from charlm import model
from charlm.model import CharRNN, ModelConfig, cells
from charlm.model.cells import (
    ExplicitGRU,
    ExplicitLSTM,
    ExplicitRNN,
    NoteGRU,
    to_explicit,
    to_fused,
)

B, T, I, H = 2, 3, 4, 5
FUSED = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
SIGMOID_GATES = {"i", "f", "o", "r", "z"}
TANH_GATES = {"g", "n", "h"}


pytestmark = pytest.mark.usefixtures("float64")


def random_state(cell: str, layers: int) -> model.State:
    h = torch.randn(layers, B, H)
    return (h, torch.randn(layers, B, H)) if cell == "lstm" else h


def fused_and_explicit(cell: str, layers: int) -> tuple[nn.Module, nn.Module]:
    fused = FUSED[cell](I, H, layers, batch_first=True)
    return fused, to_explicit(fused)


def states(state: model.State) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", sorted(FUSED))
def test_explicit_matches_fused_outputs_states_and_gradients(cell, layers):
    fused, explicit = fused_and_explicit(cell, layers)
    x = torch.randn(B, T, I, requires_grad=True)
    state = model.map_state(lambda s: s.requires_grad_(), random_state(cell, layers))
    # a loss that weighs every output and every final-state entry differently
    w_out = torch.randn(B, T, H)
    w_state = [torch.randn(layers, B, H) for _ in states(state)]

    def run(module):
        out, final = module(x, state)
        loss = (out * w_out).sum() + sum((s * w).sum() for s, w in zip(states(final), w_state))
        grads = torch.autograd.grad(loss, [x, *states(state), *module.parameters()])
        return out, states(final), grads

    (out_f, final_f, grads_f), (out_e, final_e, grads_e) = run(fused), run(explicit)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in explicit.named_parameters()]
    torch.testing.assert_close(out_e, out_f, rtol=0, atol=1e-10)
    for a, b in zip(final_e, final_f, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for a, b in zip(grads_e, grads_f, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", sorted(FUSED))
def test_round_trip_keeps_the_state_dict(cell, layers):
    fused = FUSED[cell](I, H, layers, batch_first=True)
    back = to_fused(to_explicit(fused))
    assert isinstance(back, type(fused)) and back.batch_first  # the rnn comes back a TanhRNN
    original, returned = fused.state_dict(), back.state_dict()
    assert list(original) == list(returned)
    assert all(torch.equal(original[k], returned[k]) for k in original)


def test_conversion_refuses_what_it_cannot_mirror():
    need = ("need a uni-directional, batch-first nn.RNN (tanh), nn.LSTM (no proj_size) or "
            "nn.GRU with biases")
    for fused in [nn.LSTM(I, H), nn.GRU(I, H, batch_first=True, bidirectional=True),
                  nn.LSTM(I, H, batch_first=True, bias=False),
                  nn.LSTM(I, H, batch_first=True, proj_size=2),
                  nn.RNN(I, H, batch_first=True, nonlinearity="relu")]:
        with pytest.raises(ValueError) as refused:
            to_explicit(fused)
        assert str(refused.value) == f"no explicit equivalent of {fused!r}: {need}"
    with pytest.raises(TypeError, match="NoteGRU"):
        to_fused(NoteGRU(I, H, 1, 0.0))


@pytest.mark.parametrize("cell", sorted(FUSED))
def test_conversion_keeps_dropout_dtype_and_mode(cell):
    """Both ways: dropout between stacked layers (none asked of one layer, where torch warns),
    the weights' dtype (here float32 under a float64 default), train or eval mode."""
    import warnings
    fused = FUSED[cell](I, H, 2, batch_first=True, dropout=0.3, dtype=torch.float32).eval()
    explicit = to_explicit(fused)
    assert explicit.dropout == 0.3 and not explicit.training
    assert {p.dtype for p in explicit.parameters()} == {torch.float32}
    back = to_fused(explicit.train())
    assert back.dropout == 0.3 and back.training
    assert {p.dtype for p in back.parameters()} == {torch.float32}
    one = type(explicit)(I, H, 1, 0.3)  # dropout with nothing to drop between
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a 1-layer module is given dropout
        assert to_fused(one).dropout == 0.0


@pytest.mark.parametrize("kind", [ExplicitRNN, ExplicitLSTM, ExplicitGRU, NoteGRU],
                         ids=lambda k: k.__name__)
def test_a_step_under_bf16_autocast_takes_a_float32_state(kind):
    """Under autocast the step's matmuls give bf16; a float32 state from outside joins them."""
    net = kind(I, H, 2, 0.0).float()
    x_t = torch.randn(B, I, dtype=torch.float32)
    state = model.map_state(lambda s: s.float(), random_state("lstm" if kind is ExplicitLSTM
                                                              else "rnn", 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, new = net.step(x_t, state)
    want, _ = net.step(x_t, state)  # float32
    assert h.dtype == torch.bfloat16 and torch.isfinite(h).all()
    torch.testing.assert_close(h.float(), want, rtol=0, atol=0.05)


EXPLICIT = [ExplicitRNN, ExplicitLSTM, ExplicitGRU, NoteGRU]


@pytest.mark.parametrize("kind", EXPLICIT, ids=lambda k: k.__name__)
def test_step_equals_forward(kind):
    net = kind(I, H, 2, 0.0)
    x = torch.randn(B, T, I)
    out, final = net(x)
    # one step is forward with T=1 ...
    h1, state1 = net.step(x[:, 0])
    out1, final1 = net(x[:, :1])
    torch.testing.assert_close(h1, out1[:, 0], rtol=0, atol=1e-12)
    for a, b in zip(states(state1), states(final1), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # ... and T steps, carrying the state, are forward over T
    state, hs = None, []
    for t in range(T):
        h, state = net.step(x[:, t], state)
        hs.append(h)
    torch.testing.assert_close(torch.stack(hs, 1), out, rtol=0, atol=1e-12)
    for a, b in zip(states(state), states(final), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layers, steps", [(2, T), (1, 1)])
@pytest.mark.parametrize("kind, keys", [
    (ExplicitRNN, {"h"}), (ExplicitLSTM, {"i", "f", "g", "o", "c", "h"}),
    (ExplicitGRU, {"r", "z", "n", "h"}), (NoteGRU, {"r", "z", "n", "h"})],
    ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_trace_gives_every_gate(kind, keys, layers, steps):
    net = kind(I, H, layers, 0.0)
    x = torch.randn(B, steps, I)
    # traced from a given state, one a tanh could have written
    state = model.map_state(torch.tanh, random_state("lstm" if "c" in keys else "rnn", layers))
    gates = net.trace(x, state)
    out, final = net(x, state)
    assert set(gates) == keys
    for name, value in gates.items():
        assert value.shape == (layers, B, steps, H), name
        if name in SIGMOID_GATES:
            assert ((value > 0) & (value < 1)).all(), name
        if name in TANH_GATES:
            assert ((value > -1) & (value < 1)).all(), name
    torch.testing.assert_close(gates["h"][-1], out, rtol=0, atol=0)  # top layer's h is the output
    torch.testing.assert_close(gates["h"][:, :, -1], states(final)[0], rtol=0, atol=0)
    if kind is ExplicitLSTM:
        torch.testing.assert_close(gates["c"][:, :, -1], final[1], rtol=0, atol=0)
        torch.testing.assert_close(gates["h"], gates["o"] * torch.tanh(gates["c"]))


def test_dropout_only_between_layers_and_only_in_training():
    x = torch.randn(B, T, I)
    one, two = ExplicitLSTM(I, H, 1, 0.3).train(), ExplicitLSTM(I, H, 2, 0.3).train()
    torch.testing.assert_close(one(x)[0], one.eval()(x)[0])  # nothing to drop between
    # the two layers run by hand: dropout on layer 0's output only, from the same RNG state
    bottom, top = ExplicitLSTM(I, H, 1, 0.0), ExplicitLSTM(H, H, 1, 0.0)
    bottom.load_state_dict({k: v for k, v in two.state_dict().items() if k.endswith("_l0")})
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in two.state_dict().items()
                         if k.endswith("_l1")})
    torch.manual_seed(5)
    trained = two.train()(x)[0]
    torch.manual_seed(5)
    mid = torch.nn.functional.dropout(bottom(x)[0], 0.3, training=True)
    torch.testing.assert_close(trained, top(mid)[0], rtol=0, atol=1e-12)
    assert not torch.allclose(trained, two.eval()(x)[0])
    # one step in training drops the same between the layers, and never the top layer's output
    torch.manual_seed(5)
    h_step, _ = two.train().step(x[:, 0])
    torch.manual_seed(5)
    torch.testing.assert_close(h_step, two(x[:, :1])[0][:, 0], rtol=0, atol=1e-12)
    # evaluation drops nothing: the same weights without dropout give the same output
    plain = ExplicitLSTM(I, H, 2, 0.0)
    plain.load_state_dict(two.state_dict())
    torch.testing.assert_close(two.eval()(x)[0], plain(x)[0], rtol=0, atol=0)


def test_explicit_cells_default_to_one_layer_no_dropout_and_reset_their_norms():
    net = cells.LayerNormLSTM(I, H)
    assert (net.num_layers, net.dropout) == (1, 0.0)
    gru = ExplicitGRU(I, H)
    assert (gru.num_layers, gru.dropout, gru.batch_first) == (1, 0.0, True)  # as torch's reads
    assert cells.LayerNormLSTM(I, H, 2, 0.3).dropout == 0.3
    for p in net.norms.parameters():
        p.data.fill_(3.0)
    net.reset_parameters()  # the norms too, back to what a new module starts with
    fresh = cells.LayerNormLSTM(I, H)
    assert all(torch.equal(a, b) for a, b in zip(net.norms.parameters(),
                                                 fresh.norms.parameters(), strict=True))


@pytest.mark.parametrize("cell", sorted(FUSED))
def test_a_registered_cells_twin_shares_the_fused_weights(cell):
    m = CharRNN(ModelConfig(vocab_size=7, cell=cell, hidden_size=H, num_layers=2,
                            embedding_dim=I))
    twin = cells.explicit_twin(m)
    assert isinstance(twin, cells.ExplicitCell) and not twin.training
    fused = dict(m.rnn.named_parameters())
    assert all(p.data_ptr() == fused[n].data_ptr() for n, p in twin.named_parameters())


def test_a_user_cell_that_is_a_plain_torch_gru_gets_a_copied_twin():
    from charlm.model import register_cell
    register_cell("plain-torch-gru", lambda i, h, layers, dropout: nn.GRU(i, h, layers,
                                                                           batch_first=True))
    m = CharRNN(ModelConfig(vocab_size=7, cell="plain-torch-gru", hidden_size=H, num_layers=2,
                            embedding_dim=I))
    twin = cells.explicit_twin(m)  # no explicit form registered: a copy of its weights
    assert isinstance(twin, ExplicitGRU)
    assert twin.weight_hh_l1.data_ptr() != m.rnn.weight_hh_l1.data_ptr()
    x, h0 = torch.randn(B, T, I), torch.randn(2, B, H)
    torch.testing.assert_close(twin(x, h0)[0], m.rnn(x, h0)[0], rtol=0, atol=1e-10)


# --- the note's GRU against torch's: the same weights, two differences


def torch_gru_and_note_gru(flip_z: bool, open_r: bool, layers: int = 2):
    """torch's GRU and a NoteGRU loaded from its weights, optionally undoing each difference."""
    torch_gru = nn.GRU(I, H, layers, batch_first=True)
    with torch.no_grad():
        for name, p in torch_gru.named_parameters():
            p.mul_(3)  # larger weights: gates away from 0.5, so the differences show clearly
            if open_r and name.startswith("bias_ih"):
                p[:H] = 1e4  # r = σ(1e4 + …) == 1.0 exactly: the reset gate never resets
    note = NoteGRU(I, H, layers, 0.0)
    note.load_state_dict(torch_gru.state_dict())  # same layout, loads as is
    if flip_z:
        with torch.no_grad():
            for p in note.parameters():
                p[H:2 * H].neg_()  # note's z = σ(−a) = 1 − torch's z: the mixing roles swap back
    return torch_gru, note


@pytest.mark.parametrize("flip_z, open_r", [(False, False), (True, False), (False, True)])
def test_note_gru_differs_from_torch_gru_while_any_difference_remains(flip_z, open_r):
    torch_gru, note = torch_gru_and_note_gru(flip_z, open_r)
    x, h0 = torch.randn(B, T, I), torch.randn(2, B, H)
    difference = (note(x, h0)[0] - torch_gru(x, h0)[0]).abs().max()
    assert difference > 1e-2


def test_note_gru_equals_torch_gru_once_both_differences_are_undone():
    # r ≡ 1 makes r * (W_hn h + b_hn) (torch) equal W_hn (r * h) + b_hn (note), whatever b_hn is;
    # negated z rows make the note's "z takes the candidate" torch's "z keeps h".
    torch_gru, note = torch_gru_and_note_gru(flip_z=True, open_r=True)
    assert torch_gru.bias_hh_l0[2 * H:].abs().min() > 0  # b_hn is left non-zero on purpose
    x, h0 = torch.randn(B, T, I), torch.randn(2, B, H)
    out_t, h_t = torch_gru(x, h0)
    out_n, h_n = note(x, h0)
    torch.testing.assert_close(out_n, out_t, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, h_t, rtol=0, atol=1e-12)
    gates = note.trace(x, h0)
    assert (gates["r"] == 1).all()


# --- the cells inside the character model


@pytest.mark.parametrize("cell", [c for c in model.cell_names()
                                  if model.cell(c).explicit is not None])
def test_explicit_char_rnn_trains_for_every_cell(cell):
    net = CharRNN(ModelConfig(vocab_size=7, cell=cell, hidden_size=5, num_layers=2,
                              embedding_dim=4, impl="explicit"))
    ids = torch.randint(0, 7, (B, T))
    logits, state = net(ids)
    assert logits.shape == (B, T, 7)
    logits2, _ = net(ids, model.detach_state(state))  # a carried state is accepted back
    torch.nn.functional.cross_entropy((logits + logits2).reshape(-1, 7), ids.reshape(-1)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    # and it trains: fifty Adam steps on one batch fit it far better than at the start
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x, y = ids, ids.roll(-1, 1)

    def loss():
        return torch.nn.functional.cross_entropy(net(x)[0].reshape(-1, 7), y.reshape(-1))

    first = loss().item()
    for _ in range(50):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * first


def test_gru_note_is_registered_as_explicit_only():
    assert "gru-note" in model.cell_names()
    assert model.cell("gru-note").fused is None and model.cell("gru-note").explicit is NoteGRU
    assert all(model.cell(c).explicit is getattr(cells, k) for c, k in
               (("rnn", "ExplicitRNN"), ("lstm", "ExplicitLSTM"), ("gru", "ExplicitGRU")))


@pytest.mark.parametrize("cell", sorted(FUSED))
def test_fused_checkpoint_loads_into_explicit_model(cell):
    config = {"vocab_size": 7, "cell": cell, "hidden_size": 5, "num_layers": 2, "embedding_dim": 4}
    fused = CharRNN(ModelConfig(**config, impl="fused")).eval()
    explicit = CharRNN(ModelConfig(**config, impl="explicit")).eval()
    explicit.load_state_dict(fused.state_dict())
    ids = torch.randint(0, 7, (B, T))
    torch.testing.assert_close(explicit(ids)[0], fused(ids)[0], rtol=0, atol=1e-10)
