"""Named presets for ``charlm train --preset NAME``: measured settings for a job, as flag values.

A preset fills in the flags a user did not give; a flag on the command line always wins, so
``--preset shakespeare --max-time 10`` is the same recipe on a shorter budget. Each preset's
values and the runs that chose them are in README.md ("Results").

``precision: NATIVE_BF16`` means bf16-mixed where the hardware computes bf16 natively (a CUDA
GPU that supports it; a CPU with AVX512-BF16 or AMX, where oneDNN's bf16 LSTM trains a 2x512
model about 1.9x faster than float32), else 32-true: on other CPUs bf16 is emulated and slower.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CharlmError

NATIVE_BF16 = "bf16-mixed where native"


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    options: dict  # TrainConfig field → value


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("quick",
           "1x384 LSTM, batch 16, two and a half minutes: the most a small corpus gives in a "
           "short budget on 2 CPU cores (bf16 where native)",
           {"cell": "lstm", "hidden_size": 384, "num_layers": 1, "batch_size": 16,
            "seq_len": 128, "lr": 4e-3, "precision": NATIVE_BF16, "max_time": 2.5}),
    Preset("shakespeare",
           "2x512 LSTM, dropout 0.25 and DropConnect 0.25 on the recurrent weights, batch 32, "
           "an hour: a small corpus such as Tiny Shakespeare on 2 CPU cores",
           {"cell": "lstm", "hidden_size": 512, "num_layers": 2, "embedding_dim": 64,
            "dropout": 0.25, "weight_drop": 0.25, "batch_size": 32, "seq_len": 128, "lr": 3e-3,
            "precision": NATIVE_BF16, "max_time": 60.0, "eval_every": 500}),
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
    options = {**options, **{k: v for k, v in preset(name).options.items() if k not in given}}
    if options.get("precision") == NATIVE_BF16:
        options["precision"] = "bf16-mixed" if native_bf16(options.get("accelerator", "auto")) \
            else "32-true"
    return options


def native_bf16(accelerator: str) -> bool:
    """Whether training on ``accelerator`` (cpu, gpu, cuda or auto) would run bf16 natively."""
    import torch
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if accelerator not in ("cpu", "auto"):
        return False  # mps, tpu, ...: keep the safe default
    try:  # oneDNN's own check for AVX512-BF16 / AMX (a private op: absent means no)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
