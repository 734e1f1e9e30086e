"""Explicit recurrent cells: the lecture note's RNN, LSTM and GRU equations as readable modules.

Each class is a drop-in replacement for torch's fused ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` built
with ``batch_first=True``: the same constructor (input, hidden, layers, dropout), the same call
``module(x, state) -> (out, state)`` and the *same parameter names, shapes and row layout*, so
``explicit.load_state_dict(fused.state_dict())`` (and the reverse) is the whole weight mapping.
For layer k, torch stacks the note's per-gate matrices row-wise, G blocks of H rows each:

    weight_ih_l{k}  (G·H, I)   the x_t columns of the note's W·[h_{t-1}, x_t]  (I = H above layer 0)
    weight_hh_l{k}  (G·H, H)   the h_{t-1} columns
    bias_ih_l{k}, bias_hh_l{k}  (G·H,)   two biases; only their sum b matters (except GRU's n block)

    RNN   G=1   [W_xh]                    and weight_hh = W_hh
    LSTM  G=4   [W_i; W_f; W_C; W_o]      torch's order i, f, g, o (the note lists i, f, o, g)
    GRU   G=3   [W_r; W_z; W_n]

e.g. the note's W_f·[h_{t-1}, x_t] + b_f = weight_hh[H:2H] h + weight_ih[H:2H] x +
(bias_ih + bias_hh)[H:2H].

Speed: each layer projects its whole input sequence with one matmul, (B, T, G·H), then loops over
time with one ``h @ W_hh.T`` per step. ``step`` runs one time step (two addmm per layer) for fast
batch-1 generation; ``trace`` returns every gate's activations for inspection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charlm.model.charrnn import State, build_cell
from charlm.model.recurrence import TanhRNN
from charlm.model.registry import cell, register_cell

LayerState = tuple[Tensor, ...]  # one layer's state: (h,) or (h, c), each (B, H)


# --- the note's equations, one function each; a_* are pre-activations W·[h_{t-1}, x_t] + b, (B, H)

def rnn_hidden(a: Tensor) -> Tensor:
    """h_t = tanh(W_hh h_{t-1} + W_xh x_t + b)."""
    return torch.tanh(a)


def input_gate(a_i: Tensor) -> Tensor:
    """i_t = σ(W_i·[h_{t-1}, x_t] + b_i): whether to write to the cell."""
    return torch.sigmoid(a_i)


def forget_gate(a_f: Tensor) -> Tensor:
    """f_t = σ(W_f·[h_{t-1}, x_t] + b_f): whether to erase the cell."""
    return torch.sigmoid(a_f)


def gate_gate(a_g: Tensor) -> Tensor:
    """g_t = C̃_t = tanh(W_C·[h_{t-1}, x_t] + b_C): what to write to the cell."""
    return torch.tanh(a_g)


def output_gate(a_o: Tensor) -> Tensor:
    """o_t = σ(W_o·[h_{t-1}, x_t] + b_o): how much of the cell to reveal."""
    return torch.sigmoid(a_o)


def cell_state(f: Tensor, c_prev: Tensor, i: Tensor, g: Tensor) -> Tensor:
    """C_t = f_t * C_{t-1} + i_t * C̃_t."""
    return torch.addcmul(f * c_prev, i, g)


def lstm_hidden(o: Tensor, c: Tensor) -> Tensor:
    """h_t = o_t * tanh(C_t)."""
    return o * torch.tanh(c)


def reset_gate(a_r: Tensor) -> Tensor:
    """r_t = σ(W_r·[h_{t-1}, x_t] + b_r): how much of h_{t-1} the candidate may see."""
    return torch.sigmoid(a_r)


def update_gate(a_z: Tensor) -> Tensor:
    """z_t = σ(W_z·[h_{t-1}, x_t] + b_z): how to mix h_{t-1} with the candidate."""
    return torch.sigmoid(a_z)


def candidate(x_n: Tensor, r: Tensor, h_n: Tensor) -> Tensor:
    """torch's n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn)): r gates *after* W_hn."""
    return torch.tanh(torch.addcmul(x_n, r, h_n))


def gru_hidden(z: Tensor, n: Tensor, h_prev: Tensor) -> Tensor:
    """torch's h_t = (1 − z_t) * n_t + z_t * h_{t-1}: z keeps the old state."""
    return torch.lerp(n, h_prev, z)  # n + z (h − n), one kernel


def note_candidate(x_n: Tensor, rh_n: Tensor) -> Tensor:
    """The note's h̃_t = tanh(W·[r_t * h_{t-1}, x_t]), given rh_n = W_hn (r_t * h_{t-1}) + b_hn."""
    return torch.tanh(x_n + rh_n)


def note_gru_hidden(z: Tensor, h_prev: Tensor, h_tilde: Tensor) -> Tensor:
    """The note's h_t = (1 − z_t) * h_{t-1} + z_t * h̃_t: z takes the candidate."""
    return torch.lerp(h_prev, h_tilde, z)


# --- the modules

class ExplicitCell(nn.Module):
    """torch's parameter layout and calling convention, with the layer and time loops written out.

    Besides ``forward``, ``step`` and ``trace``, a cell offers the pieces one step is made of, for
    code that steps it faster than ``step`` by doing some of the work once (sampling's table of
    every character's layer-0 projection):

        layer_weights(k)                  layer k's (W_ih, W_hh, b_ih, b_hh)
        project(x, W_ih, b_ih, b_hh)      the input's share of every gate, (..., G·H)
        step_gates(gx, s, W_hh, b_hh)     one layer, one step: gates and new state by name
        split_state(state, like)          the model's (L, B, H) state → per-layer states
        join_state(layers)                per-layer states → the model's state

    A layer's new state is ``tuple(gates[k] for k in state_keys)`` and its output ``gates["h"]``.
    """

    gate_blocks = 1                            # G: blocks of H rows in each weight
    state_keys: tuple[str, ...] = ("h",)       # what a layer carries from step to step
    steps_by_weights = True  # project and step_gates need only the four weights (fast sampling)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.dropout, self.batch_first = num_layers, float(dropout), True
        rows = self.gate_blocks * hidden_size
        # per layer (weight_ih, weight_hh, bias_ih, bias_hh): saves f-strings per step
        self._names = []
        for k in range(num_layers):
            cols = input_size if k == 0 else hidden_size
            names = tuple(f"{w}_l{k}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for name, shape in zip(names, ((rows, cols), (rows, hidden_size), (rows,), (rows,))):
                self.register_parameter(name, nn.Parameter(torch.empty(shape)))
            self._names.append(names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's initialisation: every weight and bias ~ U(−1/√H, 1/√H)."""
        bound = self.hidden_size ** -0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"dropout={self.dropout}, batch_first=True")

    def layer_weights(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Layer k's (weight_ih, weight_hh, bias_ih, bias_hh)."""
        return tuple(self._parameters[n] for n in self._names[k])  # type: ignore[return-value]

    def project(self, x: Tensor, w_ih: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
        """The input's share of every gate's pre-activation, x W_ih^T + b_ih, for all steps at
        once."""
        return F.linear(x, w_ih, b_ih)

    def step_gates(self, gx: Tensor, s: LayerState, w_hh: Tensor,
                   b_hh: Tensor) -> dict[str, Tensor]:
        """One layer, one step: gx (B, G·H) and the layer's state → its gates and new state."""
        raise NotImplementedError

    def _project_layer(self, k: int, x: Tensor) -> Tensor:
        """Layer k's ``project`` with its own weights."""
        w_ih, _, b_ih, b_hh = self.layer_weights(k)
        return self.project(x, w_ih, b_ih, b_hh)

    def _step_layer(self, k: int, gx: Tensor, s: LayerState) -> dict[str, Tensor]:
        """Layer k's ``step_gates`` with its own weights."""
        _, w_hh, _, b_hh = self.layer_weights(k)
        return self.step_gates(gx, s, w_hh, b_hh)

    def split_state(self, state: State | None, x: Tensor) -> list[LayerState]:
        """The model's state (None: zeros shaped for the batch of ``x``) → per-layer states."""
        if state is None:
            zeros = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)  # (L, B, H)
            state = tuple(zeros for _ in self.state_keys)
        elif isinstance(state, Tensor):
            state = (state,)
        return list(zip(*(s.unbind(0) for s in state)))

    def join_state(self, layers: list[LayerState]) -> State:
        """Per-layer states → the model's state, each part (L, B, H)."""
        packed = tuple(torch.stack(parts) for parts in zip(*layers))  # each (L, B, H)
        return packed if len(packed) > 1 else packed[0]

    def _between_layers(self, h: Tensor, k: int) -> Tensor:
        # torch drops the output of every layer but the last, only while training
        if self.training and self.dropout > 0 and k < self.num_layers - 1:
            return F.dropout(h, self.dropout, training=True)
        return h

    def _run(self, x: Tensor, state: State | None) -> tuple[list[list[dict]], list[LayerState]]:
        layer_states, per_layer_gates = self.split_state(state, x), []
        for k in range(self.num_layers):
            gx = self._project_layer(k, x)  # (B, T, G·H): every step in one matmul
            s, steps = _as_dtype(layer_states[k], gx.dtype), []
            for t in range(x.shape[1]):
                gates = self._step_layer(k, gx[:, t], s)
                s = tuple(gates[key] for key in self.state_keys)
                steps.append(gates)
            layer_states[k] = s
            per_layer_gates.append(steps)
            x = self._between_layers(torch.stack([g["h"] for g in steps], 1), k)  # (B, T, H)
        return per_layer_gates, layer_states

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """x (B, T, I) → out (B, T, H), the top layer's h at every step, and the final state."""
        per_layer_gates, layer_states = self._run(x, state)
        return torch.stack([g["h"] for g in per_layer_gates[-1]], 1), self.join_state(layer_states)

    def step(self, x_t: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """One time step: x_t (B, I) → the top layer's h (B, H) and the new state."""
        layer_states = self.split_state(state, x_t)
        for k in range(self.num_layers):
            gx = self._project_layer(k, x_t)
            gates = self._step_layer(k, gx, _as_dtype(layer_states[k], gx.dtype))
            layer_states[k] = tuple(gates[key] for key in self.state_keys)
            x_t = self._between_layers(gates["h"], k)
        return x_t, self.join_state(layer_states)

    def trace(self, x: Tensor, state: State | None = None) -> dict[str, Tensor]:
        """Every gate's activation at every layer and step: name → (L, B, T, H)."""
        per_layer_gates, _ = self._run(x, state)
        return {key: torch.stack([torch.stack([g[key] for g in steps], 1)
                                  for steps in per_layer_gates])
                for key in per_layer_gates[0][0]}


def _as_dtype(s: LayerState, dtype: torch.dtype) -> LayerState:
    """The state in the dtype the step computes in: under bf16 autocast the matmuls give bf16,
    and a float32 state from outside (zeros, a carried state) must join them (lerp will not mix)."""
    return tuple(t.to(dtype) for t in s)


class _SummedBias(ExplicitCell):
    """Cells whose two biases only ever appear summed: fold b_hh into the input projection."""

    def project(self, x: Tensor, w_ih: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
        return F.linear(x, w_ih, b_ih + b_hh)  # so each step needs just one addmm for h


class ExplicitRNN(_SummedBias):
    """The note's Elman RNN, h_t = tanh(W_hh h_{t-1} + W_xh x_t + b); drop-in for ``nn.RNN``."""

    def step_gates(self, gx: Tensor, s: LayerState, w_hh: Tensor,
                   b_hh: Tensor) -> dict[str, Tensor]:
        (h,) = s
        return {"h": rnn_hidden(torch.addmm(gx, h, w_hh.t()))}  # (B, H)


class ExplicitLSTM(_SummedBias):
    """The note's LSTM, gates in torch's row order i, f, g, o; drop-in for ``nn.LSTM``.

    State is ``(h, c)``; ``trace`` gives i, f, g, o, c, h.
    """

    gate_blocks, state_keys = 4, ("h", "c")

    def step_gates(self, gx: Tensor, s: LayerState, w_hh: Tensor,
                   b_hh: Tensor) -> dict[str, Tensor]:
        h, c = s
        a_i, a_f, a_g, a_o = torch.addmm(gx, h, w_hh.t()).chunk(4, 1)  # each (B, H)
        i, f, g, o = input_gate(a_i), forget_gate(a_f), gate_gate(a_g), output_gate(a_o)
        c = cell_state(f, c, i, g)
        return {"i": i, "f": f, "g": g, "o": o, "c": c, "h": lstm_hidden(o, c)}


class ExplicitGRU(ExplicitCell):
    """torch's GRU (rows r, z, n), a variant of the note's; drop-in for ``nn.GRU``.

    n_t = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h_t = (1 − z) * n_t + z * h_{t-1}.
    ``trace`` gives r, z, n, h.
    """

    gate_blocks = 3

    def step_gates(self, gx: Tensor, s: LayerState, w_hh: Tensor,
                   b_hh: Tensor) -> dict[str, Tensor]:
        (h,) = s
        gh = torch.addmm(b_hh, h, w_hh.t())  # (B, 3H): r gates after W_hn, so one matmul serves all
        x_r, x_z, x_n = gx.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r, z = reset_gate(x_r + h_r), update_gate(x_z + h_z)
        n = candidate(x_n, r, h_n)
        return {"r": r, "z": z, "n": n, "h": gru_hidden(z, n, h)}


class NoteGRU(ExplicitCell):
    """The note's GRU (Cho et al. 2014), in torch's GRU parameter layout (rows r, z, n).

        z_t = σ(W_z·[h_{t-1}, x_t]),  r_t = σ(W_r·[h_{t-1}, x_t])
        h̃_t = tanh(W·[r_t * h_{t-1}, x_t]),  h_t = (1 − z_t) * h_{t-1} + z_t * h̃_t

    It differs from torch's ``nn.GRU`` in two places:

    1. Where r acts. Here r scales h *before* the recurrent matmul, W_hn (r * h) + b_hn; torch
       scales the product, r * (W_hn h + b_hn). So the candidate needs its own matmul each step
       (torch reuses one W_hh h for all three gates), and b_hn is not gated by r. With r ≡ 1 the
       two agree.
    2. What z keeps. Here z takes the candidate and 1 − z keeps h_{t-1}; torch swaps them.
       Since 1 − σ(a) = σ(−a), negating the z rows of the weights and biases swaps them back.

    The same weights therefore give a different model: a torch GRU's state_dict loads, but does
    not compute the same function. ``trace`` gives r, z, n (= h̃), h.
    """

    gate_blocks = 3

    def step_gates(self, gx: Tensor, s: LayerState, w_hh: Tensor,
                   b_hh: Tensor) -> dict[str, Tensor]:
        (h,) = s
        hs = self.hidden_size
        x_r, x_z, x_n = gx.chunk(3, 1)
        h_r, h_z = torch.addmm(b_hh[:2 * hs], h, w_hh[:2 * hs].t()).chunk(2, 1)  # (B, H) each
        r, z = reset_gate(x_r + h_r), update_gate(x_z + h_z)
        rh_n = torch.addmm(b_hh[2 * hs:], r * h, w_hh[2 * hs:].t())  # W_hn (r * h) + b_hn, (B, H)
        h_tilde = note_candidate(x_n, rh_n)
        return {"r": r, "z": z, "n": h_tilde, "h": note_gru_hidden(z, h, h_tilde)}


class LayerNormLSTM(ExplicitLSTM):
    """The note's LSTM with layer normalisation (Ba, Kiros and Hinton 2016); explicit only.

        a_t = LN_x(W_ih x_t) + LN_h(W_hh h_{t-1}) + b     (i, f, g, o blocks of a_t as in the note)
        C_t = f_t * C_{t-1} + i_t * g_t,   h_t = o_t * tanh(LN_c(C_t))

    Each normalisation has its own gain and shift (``norms.{k}`` of layer k, sizes 4H, 4H, H),
    so the gates' inputs keep the same scale whatever the weights grow to. The weights have
    nn.LSTM's names and layout; the extra parameters mean no fused kernel computes it, so it
    trains at the explicit cells' speed.
    """

    steps_by_weights = False  # the norms are per layer: sampling steps it through forward

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        g = self.gate_blocks * hidden_size
        self.norms = nn.ModuleList(
            nn.ModuleList([nn.LayerNorm(g), nn.LayerNorm(g), nn.LayerNorm(hidden_size)])
            for _ in range(num_layers))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for norm in getattr(self, "norms", ()):  # absent while the base constructor runs
            for ln in norm:
                ln.reset_parameters()

    def _project_layer(self, k: int, x: Tensor) -> Tensor:
        w_ih, _, b_ih, b_hh = self.layer_weights(k)
        return self.norms[k][0](F.linear(x, w_ih)) + (b_ih + b_hh)

    def _step_layer(self, k: int, gx: Tensor, s: LayerState) -> dict[str, Tensor]:
        _, w_hh, _, _ = self.layer_weights(k)
        _, ln_h, ln_c = self.norms[k]
        h, c = s
        a_i, a_f, a_g, a_o = (gx + ln_h(h @ w_hh.t())).chunk(4, 1)  # each (B, H)
        i, f, g, o = input_gate(a_i), forget_gate(a_f), gate_gate(a_g), output_gate(a_o)
        c = cell_state(f, c, i, g)
        return {"i": i, "f": f, "g": g, "o": o, "c": c, "h": lstm_hidden(o, ln_c(c))}


# --- converting between torch's fused modules and these

_EXPLICIT: dict[type[nn.RNNBase], type[ExplicitCell]] = {
    nn.RNN: ExplicitRNN, nn.LSTM: ExplicitLSTM, nn.GRU: ExplicitGRU}
_FUSED = {ExplicitRNN: TanhRNN, ExplicitLSTM: nn.LSTM, ExplicitGRU: nn.GRU}


def _copy_into(src: nn.Module, dst: nn.Module) -> nn.Module:
    p = next(src.parameters())
    # same names: no mapping
    dst.to(device=p.device, dtype=p.dtype).load_state_dict(src.state_dict())
    return dst.train(src.training)


def to_explicit(fused: nn.RNNBase) -> ExplicitCell:
    """An explicit module computing the same function as a batch-first torch RNN/LSTM/GRU."""
    kind = next((e for f, e in _EXPLICIT.items() if isinstance(fused, f)), None)
    if kind is None or not fused.batch_first or fused.bidirectional or not fused.bias \
            or fused.proj_size or getattr(fused, "nonlinearity", "tanh") != "tanh":
        raise ValueError(f"no explicit equivalent of {fused!r}: need a uni-directional, "
                         "batch-first nn.RNN (tanh), nn.LSTM (no proj_size) or nn.GRU with biases")
    return _copy_into(fused, kind(fused.input_size, fused.hidden_size, fused.num_layers,
                                  fused.dropout))


def explicit_twin(model: nn.Module) -> ExplicitCell | None:
    """The explicit cell computing what ``model.rnn`` computes, on its weights, in eval mode;
    None where there is none (a plug-in cell that is not a torch RNN, the transformer).

    A model built explicit is its own twin; a registered cell's explicit form shares the fused
    module's weights (no copy); any other batch-first torch RNN gets a copy of its weights.
    """
    rnn = model.rnn
    if isinstance(rnn, ExplicitCell):
        return rnn
    try:
        with torch.device("meta"):  # no memory, no random initialisation: the weights come next
            twin = build_cell(model.config, impl="explicit")
        twin.load_state_dict(rnn.state_dict(), assign=True)  # shares the fused weights
        if isinstance(twin, ExplicitCell):
            return twin.eval()
    except (ValueError, AttributeError, RuntimeError):
        pass
    if isinstance(rnn, nn.RNNBase):
        try:
            return to_explicit(rnn).eval()
        except ValueError:
            return None
    return None


def to_fused(explicit: ExplicitCell) -> nn.RNNBase:
    """torch's fused batch-first module with the same weights as an explicit one."""
    kind = _FUSED.get(type(explicit))
    if kind is None:
        raise TypeError(f"{type(explicit).__name__} has no fused torch equivalent")
    dropout = explicit.dropout if explicit.num_layers > 1 else 0.0  # torch warns on 1 layer
    return _copy_into(explicit, kind(explicit.input_size, explicit.hidden_size,
                                     explicit.num_layers, batch_first=True, dropout=dropout))


# --- registration: the explicit twins of torch's fused cells, and the note's variants on their own

for _name, _kind in (("rnn", ExplicitRNN), ("lstm", ExplicitLSTM), ("gru", ExplicitGRU)):
    _fused = cell(_name)
    register_cell(_name, _fused.fused, explicit=_kind, lstm_gates=_fused.lstm_gates)
register_cell("gru-note", None, explicit=NoteGRU)  # explicit only
register_cell("lstm-ln", None, explicit=LayerNormLSTM, lstm_gates=True)

__all__ = ["ExplicitCell", "explicit_twin", "ExplicitGRU", "ExplicitLSTM", "ExplicitRNN",
           "LayerNormLSTM", "NoteGRU", "to_explicit", "to_fused"]
