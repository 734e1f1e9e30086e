"""The cell registry: every recurrent stack (and the transformer reference) by name.

A cell is a name mapped to factories that build a multi-layer, batch-first module with torch's
calling convention, ``module(x, state) -> (out, state)``:

    x     (B, T, I)  inputs
    out   (B, T, H)  the top layer's hidden state at every step
    state            (L, B, H) tensor, or a tuple of them (LSTM's (h, c)); None means zeros

torch's fused RNN (``recurrence.TanhRNN``: nn.RNN, trained faster on the CPU), LSTM and GRU
register here; ``charlm.model.cells`` adds their explicit twins
and the note's own variants, ``charlm.model.transformer`` the reference. A plug-in registers the
same way (``charlm.register_cell``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from charlm.errors import CharlmError
from charlm.model.recurrence import TanhRNN

CellFactory = Callable[..., nn.Module]  # (input, hidden, layers, dropout, **extra) -> module


@dataclass(frozen=True)
class Cell:
    """One registered cell: its implementations and what kind of state it carries."""

    name: str
    fused: CellFactory | None  # the fast implementation
    explicit: CellFactory | None = None  # the same cell step by step, with the same parameters
    recurrent: bool = True  # a hidden state carried step to step (the transformer's is a cache)
    lstm_gates: bool = False  # torch's LSTM parameter layout (i, f, g, o): forget bias set to 1


_CELLS: dict[str, Cell] = {}


def register_cell(name: str, factory: CellFactory | None, explicit: CellFactory | None = None,
                  *, recurrent: bool = True, lstm_gates: bool = False) -> None:
    """Register (or replace) the cell ``name``: ``factory(input, hidden, layers, dropout)``.

    ``factory`` is the fast implementation; ``explicit`` optionally the same cell written out
    step by step with the same parameters (used by ``--impl explicit`` and fast sampling).
    ``recurrent`` False marks a module whose state is not a hidden state (the transformer's
    key/value cache): the tools that read hidden units and gates refuse it. ``lstm_gates``
    marks torch's LSTM parameter layout, whose forget-gate bias the model starts at 1.
    """
    if factory is None and explicit is None:
        raise ValueError(f"cell {name!r} needs at least one implementation")
    _CELLS[name] = Cell(name, factory, explicit, recurrent, lstm_gates)


def unregister_cell(name: str) -> None:
    """Remove the cell ``name`` (a cell registered for a while, as a notebook or a test does)."""
    cell(name)  # an unknown name is refused with the valid ones
    del _CELLS[name]


def cell(name: str) -> Cell:
    """The registered cell ``name``; an unknown name is refused with the valid ones."""
    if name not in _CELLS:
        raise UnknownCell(f"unknown cell {name!r}; choose one of: {', '.join(cell_names())}")
    return _CELLS[name]


def cell_names() -> list[str]:
    """Names of every registered cell."""
    return sorted(_CELLS)


def is_recurrent(name: str) -> bool:
    """Whether the cell ``name`` carries a hidden state (RNN, LSTM, GRU and their variants)."""
    return cell(name).recurrent


class UnknownCell(CharlmError, ValueError):
    """A cell name nobody registered."""


def _torch_rnn(kind: type[nn.RNNBase]) -> CellFactory:
    def build(input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
        return kind(input_size, hidden_size, num_layers, batch_first=True,
                    dropout=dropout if num_layers > 1 else 0.0)
    return build


register_cell("rnn", _torch_rnn(TanhRNN))  # nn.RNN, with a faster backward pass on the CPU
register_cell("lstm", _torch_rnn(nn.LSTM), lstm_gates=True)
register_cell("gru", _torch_rnn(nn.GRU))
