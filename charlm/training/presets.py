"""Named presets for ``charlm train --preset NAME``: measured settings for a job, as flag values.

A preset fills in the flags a user did not give; a flag on the command line always wins, so
``--preset shakespeare --max-time 10`` is the same recipe on a shorter budget. Each preset's
values and the runs that chose them are in docs/results.md.

``precision: auto`` and ``batch_size: None`` are decided by ``charlm.training.precision``:
bf16-mixed where this machine computes bf16 natively, else 32-true; the batch that is fast here.
"""

from __future__ import annotations

from dataclasses import dataclass

from charlm.errors import CharlmError


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    options: dict  # TrainConfig field → value


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("quick",
           "1x384 LSTM, two and a half minutes: the defaults, pinned (precision and batch "
           "chosen for this machine)",
           {"cell": "lstm", "hidden_size": 384, "num_layers": 1, "embedding_dim": 64,
            "batch_size": None, "seq_len": 128, "window": "stream", "restart_every": 8,
            "lr": 6e-3, "weight_decay": 0.1, "grad_clip": 5.0, "precision": "auto",
            "max_time": 2.5, "eval_every": 500}),
    Preset("shakespeare",
           "2x512 LSTM, dropout 0.25, DropConnect 0.25 on the recurrent weights, weight decay "
           "0.1, batch 32, an hour: a small corpus such as Tiny Shakespeare on 2 CPU cores",
           {"cell": "lstm", "hidden_size": 512, "num_layers": 2, "embedding_dim": 64,
            "dropout": 0.25, "weight_drop": 0.25, "weight_decay": 0.1, "batch_size": 32,
            "seq_len": 128, "window": "stream", "lr": 3e-3, "grad_clip": 5.0,
            "precision": "auto", "max_time": 60.0, "eval_every": 500,
            # its hours were measured with the state restarted at an epoch's start only; a
            # model trained this long samples well from a cold start without more restarts
            "restart_every": 0}),
)}


def preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is the user's mistake, said in one sentence."""
    if name not in PRESETS:
        raise CharlmError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def apply(options: dict, name: str | None, given: set[str]) -> dict:
    """``options`` with the preset's values for every key the user did not give."""
    if name is None:
        return options
    return {**options, **{k: v for k, v in preset(name).options.items() if k not in given}}

