"""Named presets for ``charlm train --preset NAME``: measured settings for a job, as flag values.

A preset fills in the flags a user did not give; a flag on the command line always wins, so
``--preset shakespeare --max-time 10`` is the same recipe on a shorter budget. Each preset's
values and the runs that chose them are in docs/results.md.

``precision: auto`` and ``batch_size: None`` are decided by ``charlm.training.precision``:
bf16-mixed where this machine computes bf16 natively, else 32-true; the batch that is fast here.
A preset may carry a float32 recipe: what changes where the run trains in float32 (given so, or
``auto`` on hardware that reports no native bf16), measured there, since float32 on such a CPU
gets about half the steps bf16 gets on one that has it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charlm.errors import CharlmError
from charlm.training.precision import reported_bf16


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    options: dict  # TrainConfig field → value
    float32: dict = field(default_factory=dict)  # what changes where the run trains in float32
    float32_summary: str = ""


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("quick",
           "1x384 LSTM, two and a half minutes: the defaults, pinned (precision and batch "
           "chosen for this machine)",
           {"cell": "lstm", "hidden_size": 384, "num_layers": 1, "embedding_dim": 64,
            "batch_size": None, "seq_len": 128, "window": "stream", "restart_every": 8,
            "lr": 6e-3, "weight_decay": 0.1, "grad_clip": 5.0, "precision": "auto",
            "max_time": 2.5}),
    Preset("shakespeare",
           "2x512 LSTM, dropout 0.25, DropConnect 0.25 on the recurrent weights, weight decay "
           "0.1, AR 2 and TAR 1, batch 32, an hour: a small corpus such as Tiny Shakespeare on "
           "2 CPU cores",
           {"cell": "lstm", "hidden_size": 512, "num_layers": 2, "embedding_dim": 64,
            "dropout": 0.25, "weight_drop": 0.25, "weight_decay": 0.1, "batch_size": 32,
            "seq_len": 128, "window": "stream", "lr": 3e-3, "grad_clip": 5.0,
            "precision": "auto", "max_time": 60.0,
            # AWD-LSTM's activation regularisers: ahead at every evaluation, in both recipes
            "activation_reg": 2.0, "temporal_reg": 1.0,
            # its hours were measured with the state restarted at an epoch's start only; a
            # model trained this long samples well from a cold start without more restarts
            "restart_every": 0},
           # float32 on a CPU without native bf16: a narrower model, 2.6x the steps of 2x512;
           # over an hour it is held back by overfitting more than by steps, hence the stronger
           # weight decay (docs/results.md)
           float32={"hidden_size": 384, "batch_size": 16, "dropout": 0.2, "weight_drop": 0.2,
                    "weight_decay": 0.3},
           float32_summary="in float32 (where bf16 is not native): 2x384, dropout and DropConnect "
                           "0.2, weight decay 0.3, batch 16"),
)}


def preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is the user's mistake, said in one sentence."""
    if name not in PRESETS:
        raise CharlmError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def trains_in_float32(precision: str, accelerator: str, capabilities: dict | None = None,
                      cuda_capability: tuple[int, int] | None = None) -> bool:
    """Whether a run asking for ``precision`` trains in float32: asked so, or ``auto`` where the
    hardware reports no native bf16 (where it does not say, auto measures, and a preset keeps
    its main recipe)."""
    if precision == "auto":
        return reported_bf16(accelerator, capabilities, cuda_capability)[0] is False
    return not precision.startswith(("bf16", "16", "transformer-engine"))


def apply(options: dict, name: str | None, given: set[str], float32: bool = False) -> dict:
    """``options`` with the preset's values for every key the user did not give; with
    ``float32``, its float32 recipe's values over those."""
    if name is None:
        return options
    recipe = {**preset(name).options, **(preset(name).float32 if float32 else {})}
    return {**options, **{k: v for k, v in recipe.items() if k not in given}}


def recipe_line(name: str, float32: bool) -> str:
    """What a run with preset ``name`` says it uses, in one line."""
    p = preset(name)
    if float32 and p.float32:
        return f"preset {name}: {p.float32_summary}"
    return f"preset {name}: {p.summary}"

