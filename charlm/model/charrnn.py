"""The character model: embedding → a registered cell's stack → dropout → head.

A state is what the stack carries between windows (``charlm.model.registry`` has its shapes);
every place that touches one goes through ``map_state``, so no caller branches on the cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from charlm.errors import SettingError
from charlm.model.registry import cell

State = Tensor | tuple[Tensor, ...]


def map_state(fn: Callable[[Tensor], Tensor], state: State | None) -> State | None:
    """Apply ``fn`` to every tensor of a state (a tensor or a tuple of tensors)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(fn(s) for s in state)
    return fn(state)


def detach_state(state: State | None) -> State | None:
    """Cut the graph behind a carried state (truncated BPTT)."""
    return map_state(Tensor.detach, state)


def restart_rows(state: State | None, rows: Sequence[int]) -> State | None:
    """``state`` with the given batch rows set to zero: those rows start again as at the first
    window. Every state keeps its batch in dimension 1 (a recurrent cell's (L, B, H))."""
    if state is None or not rows:
        return state
    device = state_hidden(state).device
    # Made on the host, pinned where the state is on a GPU, and copied without blocking: a
    # tensor built on the GPU from a list makes the host wait for the whole queued step first,
    # every step, where the host's own work should overlap the GPU's.
    on_cuda = device.type == "cuda"
    index = torch.tensor(list(rows), pin_memory=on_cuda).to(device, non_blocking=on_cuda)
    return map_state(lambda t: t.index_fill(1, index, 0), state)


def state_hidden(state: State) -> Tensor:
    """The hidden state h (L, B, H) of any cell's state (LSTM: the first of (h, c))."""
    return state[0] if isinstance(state, tuple) else state


IMPLS = ("auto", "fused", "explicit")
INITS = ("default", "orthogonal", "fan-in")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a CharRNN: plain data, stored in every checkpoint."""

    vocab_size: int
    cell: str = "lstm"
    hidden_size: int = 384
    num_layers: int = 1
    embedding_dim: int = 64
    dropout: float = 0.0
    impl: str = "auto"  # auto: fused where the cell has it, else explicit
    extra: dict = field(default_factory=dict)  # room for a plugged-in cell's own settings
    weight_drop: float = 0.0  # DropConnect on the recurrent weights while training
    init: str = "default"     # or "orthogonal" recurrent weights, or "fan-in" input weights
    # 0: a linear head over the vocabulary; N: a hidden layer N wide (GELU) before it, a "deep
    # output" (Pascanu et al. 2014). It works on every position at once, outside the recurrence,
    # so it adds capacity at a matrix product's full speed.
    head_size: int = 0

    def __post_init__(self) -> None:
        entry = cell(self.cell)  # raises with the list of valid names
        if self.impl not in IMPLS:
            raise SettingError(f"`impl` must be one of {', '.join(IMPLS)}, not {self.impl!r}")
        if self.impl == "auto":
            self.impl = "fused" if entry.fused is not None else "explicit"
        if self.impl == "fused" and entry.fused is None:
            raise SettingError(f"cell {self.cell!r} has no fused implementation; "
                               f"use `impl` explicit")
        if self.impl == "explicit" and entry.explicit is None:
            raise SettingError(f"cell {self.cell!r} has no explicit implementation; "
                               f"use `impl` fused")
        for flag, value in (("`hidden_size`", self.hidden_size), ("`num_layers`", self.num_layers),
                            ("`embedding_dim`", self.embedding_dim),
                            ("`vocab_size`", self.vocab_size)):
            if value < 1:
                raise SettingError(f"{flag} must be at least 1, not {value}")
        if self.head_size < 0:
            raise SettingError(f"`head_size` must be >= 0 (0: a linear head), not {self.head_size}")
        for flag, value in (("`dropout`", self.dropout), ("`weight_drop`", self.weight_drop)):
            if not 0.0 <= value < 1.0:
                raise SettingError(f"{flag} must be in [0, 1), not {value}")
        if self.init not in INITS:
            raise SettingError(f"`init` must be one of {', '.join(INITS)}, not {self.init!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def build_cell(config: ModelConfig, impl: str | None = None) -> nn.Module:
    """Build the recurrent stack of ``config`` in the given implementation."""
    entry = cell(config.cell)
    factory = entry.explicit if (impl or config.impl) == "explicit" else entry.fused
    if factory is None:
        raise SettingError(f"cell {config.cell!r} has no {impl or config.impl} implementation")
    try:  # a cell's own settings (the transformer's heads and context) come from ``extra``
        return factory(config.embedding_dim, config.hidden_size, config.num_layers,
                       config.dropout, **config.extra)
    except TypeError as e:
        raise SettingError(f"cell {config.cell!r} does not take the settings "
                         f"{', '.join(config.extra)}: {e}") from None


class CharRNN(nn.Module):
    """Embedding → recurrent stack → dropout → head over the vocabulary (linear, or with one
    hidden layer: ``head_size``).

    Regularisers, all off by default: ``dropout`` between stacked layers and before the head;
    ``weight_drop``, DropConnect on every hidden-to-hidden matrix (Merity et al. 2017, AWD-LSTM):
    one mask per training window, shared by every time step, so the fused kernels still run.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.rnn = build_cell(config)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size) if not config.head_size \
            else nn.Sequential(nn.Linear(config.hidden_size, config.head_size), nn.GELU(),
                               nn.Linear(config.head_size, config.vocab_size))
        self._init_weights()

    def _init_weights(self) -> None:
        if self.config.init == "fan-in":
            # torch draws every weight of a recurrent layer at U(±1/√H), so a first layer fed by
            # a 64-wide embedding starts with input weights far smaller than its inputs call
            # for; drawn at U(±1/√inputs) instead, the LSTM trains faster from its first steps
            # (docs/results.md). The recurrent weights keep torch's scale.
            for name, p in self.rnn.named_parameters():
                if name.startswith("weight_ih"):
                    bound = 1 / math.sqrt(p.shape[1])
                    with torch.no_grad():
                        p.uniform_(-bound, bound)
        if self.config.init == "orthogonal":  # each gate's H×H recurrent block: an orthogonal map
            h = self.config.hidden_size
            for name, p in self.rnn.named_parameters():
                if name.startswith("weight_hh"):
                    with torch.no_grad():
                        for block in p.split(h, 0):
                            nn.init.orthogonal_(block)
        # LSTM forget-gate bias 1 (Jozefowicz et al. 2015): the cell remembers by default.
        # torch lays LSTM gates out as (i, f, g, o), so f is the second quarter.
        if cell(self.config.cell).lstm_gates:
            h = self.config.hidden_size
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        p[h:2 * h].fill_(1.0)
                elif name.startswith("bias_hh"):
                    with torch.no_grad():
                        p[h:2 * h].zero_()

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) → logits (B, T, V) and the state after the last step."""
        out, state = self._recur(ids, state)
        return self.head(self.drop(out)), state  # (B, T, V)

    def forward_with_outputs(self, ids: Tensor, state: State | None = None
                             ) -> tuple[Tensor, State, Tensor, Tensor]:
        """``forward``, and the top layer's outputs (B, T, H) before and after the dropout
        that feeds the head: what activation regularisation (AR and TAR) penalises."""
        out, state = self._recur(ids, state)
        dropped = self.drop(out)
        return self.head(dropped), state, out, dropped

    def next_logits(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) → the logits of the character after the last one (B, V) and the state:
        what generation needs from a prompt, without the head's work on every earlier position."""
        out, state = self._recur(ids, state)
        return self.head(self.drop(out[:, -1])), state  # (B, V)

    def _recur(self, ids: Tensor, state: State | None) -> tuple[Tensor, State]:
        x = self.embedding(ids)                 # (B, T, E)
        if self.training and self.config.weight_drop > 0:
            return torch.func.functional_call(self.rnn, self._dropped_weights(), (x, state))
        return self.rnn(x, state)               # (B, T, H)

    def _dropped_weights(self) -> dict[str, Tensor]:
        """The recurrent stack's parameters with a fresh dropout mask on each W_hh."""
        p = self.config.weight_drop
        return {name: nn.functional.dropout(w, p) if name.startswith("weight_hh") else w
                for name, w in self.rnn.named_parameters()}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def hidden_size_for_params(config: ModelConfig, target: int) -> int:
    """The hidden size whose model has the parameter count closest to ``target``."""
    def count(h: int) -> int:
        return CharRNN(ModelConfig(**{**config.to_dict(), "hidden_size": h})).num_params()

    lo, hi = 1, 2
    while count(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # count grows with h: bisect for the crossing
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda h: abs(count(h) - target))


__all__ = ["CharRNN", "ModelConfig", "State", "build_cell", "detach_state",
           "hidden_size_for_params", "map_state", "state_hidden"]
