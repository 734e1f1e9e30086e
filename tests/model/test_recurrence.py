"""The tanh RNN's hand-written backward pass (charlm.model.recurrence.TanhRNN) against nn.RNN."""

import pytest
import torch
from torch import nn

from charlm.model import ModelConfig, build_cell
from charlm.model.cells import to_explicit
from charlm.model.recurrence import TanhRNN


def twins(layers: int, dropout: float = 0.0) -> tuple[nn.RNN, TanhRNN]:
    torch.manual_seed(0)
    plain = nn.RNN(5, 7, layers, batch_first=True, dropout=dropout).double()
    fast = TanhRNN(5, 7, layers, batch_first=True, dropout=dropout).double()
    fast.load_state_dict(plain.state_dict())
    return plain, fast


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("with_h0", [True, False])
def test_outputs_state_and_every_gradient_equal_nn_rnn(layers, with_h0):
    plain, fast = twins(layers)
    x = torch.randn(4, 13, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(layers, 4, 7, dtype=torch.float64, requires_grad=True) if with_h0 else None
    out_p, h_p = plain(x, h0)
    out_f, h_f = fast(x, h0)
    assert out_f.grad_fn is not None and "Recurrence" in str(out_f.grad_fn.next_functions)
    torch.testing.assert_close(out_f, out_p, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_f, h_p, rtol=0, atol=1e-12)
    g_out, g_h = torch.randn_like(out_p), torch.randn_like(h_p)  # from the outputs and the state
    wrt = [x] + ([h0] if with_h0 else [])
    grads_p = torch.autograd.grad((out_p * g_out).sum() + (h_p * g_h).sum(),
                                  wrt + list(plain.parameters()))
    grads_f = torch.autograd.grad((out_f * g_out).sum() + (h_f * g_h).sum(),
                                  wrt + list(fast.parameters()))
    for a, b in zip(grads_f, grads_p):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gradcheck_of_the_recurrence():
    _, fast = twins(2)
    x = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: fast(x, h)[0], (x, h0))


def test_dropout_between_layers_only_while_training():
    _, fast = twins(2, dropout=0.5)
    x = torch.randn(3, 9, 5, dtype=torch.float64, requires_grad=True)
    plain_eval = nn.RNN(5, 7, 2, batch_first=True).double()
    plain_eval.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast.eval()(x)[0], plain_eval(x)[0])  # eval: none
    fast.train()
    torch.manual_seed(3)
    a = fast(x)[0]
    torch.manual_seed(3)
    torch.testing.assert_close(fast(x)[0], a)  # dropout drawn from torch's generator
    assert not torch.allclose(a, plain_eval(x)[0])  # and applied


def test_dropout_falls_on_each_lower_layers_output_at_its_rate():
    """nn.RNN's rule: between layers only (not on the input), at probability ``dropout``."""
    _, fast = twins(2, dropout=0.3)
    fast.train()
    lower, upper = nn.RNN(5, 7, batch_first=True).double(), nn.RNN(7, 7, batch_first=True).double()
    lower.load_state_dict({k: v for k, v in fast.state_dict().items()
                           if k.endswith("_l0")})
    upper.load_state_dict({k.replace("_l1", "_l0"): v for k, v in fast.state_dict().items()
                           if k.endswith("_l1")})
    x = torch.randn(3, 9, 5, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    got = fast(x)[0]
    torch.manual_seed(5)
    want = upper(torch.nn.functional.dropout(lower(x)[0], 0.3, True))[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


OTHER_CASES = {  # what the hand-written path does not take on: nn.RNN's own, to the bit
    "relu": (dict(nonlinearity="relu"), (3, 9, 5), torch.float64),
    "no bias": (dict(bias=False), (3, 9, 5), torch.float64),
    "time first": (dict(batch_first=False), (9, 3, 5), torch.float64),
    "bidirectional": (dict(bidirectional=True), (3, 9, 5), torch.float64),
    "unbatched": ({}, (9, 5), torch.float64),
    "bf16": ({}, (3, 9, 5), torch.bfloat16),
}


@pytest.mark.parametrize("case", sorted(OTHER_CASES))
def test_other_rnns_and_inputs_keep_torchs_path(case):
    settings, shape, dtype = OTHER_CASES[case]
    settings = {"batch_first": True, **settings}
    torch.manual_seed(0)
    plain = nn.RNN(5, 7, 2, **settings).to(dtype)
    fast = TanhRNN(5, 7, 2, **settings).to(dtype)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    assert torch.equal(fast(x)[0], plain(x)[0])


def test_packed_sequences_and_autocast_keep_torchs_path():
    plain, fast = (m.float() for m in twins(2))
    x = torch.randn(3, 9, 5, requires_grad=True)
    packed = nn.utils.rnn.pack_padded_sequence(x, [9, 6, 2], batch_first=True)
    assert torch.equal(fast(packed)[0].data, plain(packed)[0].data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(x)[0], plain(x)[0])


def test_where_autograd_is_off_it_is_nn_rnn():
    plain, fast = twins(2)
    x = torch.randn(3, 9, 5, dtype=torch.float64)
    with torch.no_grad():
        out, _ = fast(x)
    assert out.grad_fn is None
    torch.testing.assert_close(out, plain(x)[0].detach())


def test_the_registry_rnn_is_a_tanh_rnn_with_nn_rnn_weights():
    config = ModelConfig(vocab_size=10, cell="rnn", hidden_size=8, num_layers=2, embedding_dim=4)
    rnn = build_cell(config)
    assert isinstance(rnn, TanhRNN) and isinstance(rnn, nn.RNN)
    assert set(rnn.state_dict()) == set(nn.RNN(4, 8, 2, batch_first=True).state_dict())
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(to_explicit(rnn)(x)[0], rnn(x)[0], rtol=1e-5, atol=1e-6)


def test_weights_swapped_in_by_functional_call_are_used():
    """--weight-drop runs the cell through torch.func.functional_call with masked W_hh."""
    plain, fast = twins(2)
    x = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    swapped = {n: p * 0.5 if n.startswith("weight_hh") else p for n, p in plain.named_parameters()}
    out = torch.func.functional_call(fast, swapped, (x,))[0]
    torch.testing.assert_close(out, torch.func.functional_call(plain, swapped, (x,))[0])
    assert not torch.allclose(out, fast(x)[0])
