"""The note's GRU and the layer-normalised LSTM against hand-written references of their equations.

torch has no fused twin of either, so each is checked against the equations written out here step
by step, in float64, with gates well away from 0 and 1 (in particular r is never ≡ 1, where the
place of the reset gate would stop mattering), two layers, a random initial state, and non-trivial
layer-norm gains and shifts.
"""

import pytest
import torch

from charlm.model.cells import LayerNormLSTM, NoteGRU

B, T, I, H, L = 3, 5, 4, 6, 2


pytestmark = pytest.mark.usefixtures("float64")


def sigmoid(a):
    return 1 / (1 + torch.exp(-a))


def weights(net, k):
    return (getattr(net, f"weight_ih_l{k}"), getattr(net, f"weight_hh_l{k}"),
            getattr(net, f"bias_ih_l{k}"), getattr(net, f"bias_hh_l{k}"))


def blocks(v, n):
    """Rows of a torch-layout weight or bias, cut into its n gate blocks of H rows."""
    return [v[j * H:(j + 1) * H] for j in range(n)]


def note_gru_reference(net, x, h0, reset_before_matmul=True):
    """z = σ(W_z·[h, x] + b_z), r = σ(W_r·[h, x] + b_r),
    h̃ = tanh(W_in x + b_in + W_hn (r * h) + b_hn), h' = (1 − z) h + z h̃.
    With reset_before_matmul=False, torch's r * (W_hn h + b_hn) instead."""
    hs, inp = [h0[k] for k in range(L)], x
    for k in range(L):
        w_ih, w_hh, b_ih, b_hh = weights(net, k)
        (wir, wiz, win), (whr, whz, whn) = blocks(w_ih, 3), blocks(w_hh, 3)
        (bir, biz, bin_), (bhr, bhz, bhn) = blocks(b_ih, 3), blocks(b_hh, 3)
        h, outs = hs[k], []
        for t in range(T):
            xt = inp[:, t]
            r = sigmoid(xt @ wir.T + bir + h @ whr.T + bhr)
            z = sigmoid(xt @ wiz.T + biz + h @ whz.T + bhz)
            if reset_before_matmul:
                h_tilde = torch.tanh(xt @ win.T + bin_ + (r * h) @ whn.T + bhn)
            else:
                h_tilde = torch.tanh(xt @ win.T + bin_ + r * (h @ whn.T + bhn))
            h = (1 - z) * h + z * h_tilde
            outs.append(h)
        hs[k], inp = h, torch.stack(outs, 1)
    return inp, torch.stack(hs)


def note_gru():
    net = NoteGRU(I, H, L, 0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3)  # gates away from 0.5 (and from 1), so every term shows
    return net


def test_note_gru_computes_the_notes_equations():
    net = note_gru()
    x, h0 = torch.randn(B, T, I), torch.randn(L, B, H)
    out, h_final = net(x, h0)
    ref_out, ref_h = note_gru_reference(net, x, h0)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_final, ref_h, rtol=0, atol=1e-12)
    # the step API and the trace say the same
    state, steps = h0, []
    for t in range(T):
        h, state = net.step(x[:, t], state)
        steps.append(h)
    torch.testing.assert_close(torch.stack(steps, 1), ref_out, rtol=0, atol=1e-12)
    r = net.trace(x, h0)["r"]
    assert r.min() < 0.2 and r.max() < 0.999  # r far from ≡ 1: where it acts matters


def test_the_reference_tells_where_the_reset_gate_acts():
    # torch's r * (W_hn h + b_hn) in place of the note's W_hn (r * h) + b_hn must not pass
    net = note_gru()
    x, h0 = torch.randn(B, T, I), torch.randn(L, B, H)
    note, _ = note_gru_reference(net, x, h0, reset_before_matmul=True)
    after, _ = note_gru_reference(net, x, h0, reset_before_matmul=False)
    assert (note - after).abs().max() > 1e-2
    assert (net(x, h0)[0] - after).abs().max() > 1e-2


def layer_norm(v, ln):
    """(v − mean) / √(var + eps) · gain + shift, over the last dimension (biased variance)."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def ln_lstm_reference(net, x, h0, c0):
    """a = LN_x(W_ih x) + LN_h(W_hh h) + b_ih + b_hh, cut i, f, g, o; C' = f C + i g;
    h' = o tanh(LN_c(C'))."""
    hs, cs, inp = [h0[k] for k in range(L)], [c0[k] for k in range(L)], x
    for k in range(L):
        w_ih, w_hh, b_ih, b_hh = weights(net, k)
        ln_x, ln_h, ln_c = net.norms[k]
        h, c, outs = hs[k], cs[k], []
        for t in range(T):
            a = layer_norm(inp[:, t] @ w_ih.T, ln_x) + layer_norm(h @ w_hh.T, ln_h) + b_ih + b_hh
            a_i, a_f, a_g, a_o = (a[:, j * H:(j + 1) * H] for j in range(4))
            i, f, g, o = sigmoid(a_i), sigmoid(a_f), torch.tanh(a_g), sigmoid(a_o)
            c = f * c + i * g
            h = o * torch.tanh(layer_norm(c, ln_c))
            outs.append(h)
        hs[k], cs[k], inp = h, c, torch.stack(outs, 1)
    return inp, (torch.stack(hs), torch.stack(cs))


def test_layer_norm_lstm_computes_its_equations():
    net = LayerNormLSTM(I, H, L, 0.0)
    with torch.no_grad():  # gains and shifts other than 1 and 0, so their place is checked too
        for norm in net.norms:
            for ln in norm:
                ln.weight.uniform_(0.5, 2.0)
                ln.bias.uniform_(-0.5, 0.5)
    x, h0, c0 = torch.randn(B, T, I), torch.randn(L, B, H), torch.randn(L, B, H)
    out, (h, c) = net(x, (h0, c0))
    ref_out, (ref_h, ref_c) = ln_lstm_reference(net, x, h0, c0)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, ref_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, ref_c, rtol=0, atol=1e-12)  # the state carries C, not LN_c(C)
    state, steps = (h0, c0), []
    for t in range(T):
        h_t, state = net.step(x[:, t], state)
        steps.append(h_t)
    torch.testing.assert_close(torch.stack(steps, 1), ref_out, rtol=0, atol=1e-12)


def test_layer_norm_keeps_the_gates_scale_whatever_the_weights_grow_to():
    # the property the layer norm exists for: scaling W_ih and W_hh changes nothing (up to eps)
    net = LayerNormLSTM(I, H, L, 0.0)
    x, h0, c0 = torch.randn(B, T, I), torch.randn(L, B, H), torch.randn(L, B, H)
    out, _ = net(x, (h0, c0))
    with torch.no_grad():
        for k in range(L):
            getattr(net, f"weight_ih_l{k}").mul_(50)
            getattr(net, f"weight_hh_l{k}").mul_(50)
    scaled, _ = net(x, (h0, c0))
    torch.testing.assert_close(scaled, out, rtol=0, atol=1e-3)
