"""TrainConfig: every setting of a training run, checked when it is made."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from charlm.errors import CharlmError
from charlm.model import ModelConfig, build_cell

DEFAULT_EPOCHS = 10  # when no budget is given at all
EVAL_EVERY = 500         # the validation cadence where none is given
VALIDATION_SHARE = 0.1   # of a timed run, at most, for validation at that cadence


@dataclass
class TrainConfig:
    """Every setting of a training run (the CLI flags, one to one)."""

    data: list[str] = field(default_factory=list)
    cell: str = "lstm"
    hidden_size: int = 384
    num_layers: int = 1
    embedding_dim: int = 64
    head_size: int = 0  # 0: a linear head; N: an N-wide hidden layer before it
    dropout: float = 0.0
    weight_drop: float = 0.0
    activation_reg: float = 0.0  # AR: the top layer's dropped outputs, their mean square
    temporal_reg: float = 0.0    # TAR: their step-to-step change, its mean square
    init: str = "default"
    impl: str = "auto"
    heads: int | None = None    # transformer only: attention heads (None: width // 64 or so)
    context: int | None = None  # transformer only: characters attended to (None: seq_len)
    seq_len: int = 128
    batch_size: int | None = None  # None: what is fast on this machine (charlm.training.precision)
    lr: float = 6e-3  # with weight decay 0.1: the best of the 150-second runs (docs/results.md)
    weight_decay: float = 0.1
    warmup_steps: int = 0
    grad_clip: float = 5.0
    schedule: str = "cosine"
    max_steps: int | None = None
    max_epochs: int | None = None
    max_time: float | None = None  # minutes
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    seed: int = 1337
    out: str = "checkpoints/run"
    resume: bool = False
    # None: every EVAL_EVERY steps, and in a run with ``max_time`` an evaluation is put off while
    # validation has taken over VALIDATION_SHARE of the run so far (a large validation split
    # would otherwise spend the time budget on itself); N: every N steps, whatever they cost
    eval_every: int | None = None
    sample_every: int = 0
    window: str = "stream"
    # each stream's carried state starts again from zero every this many windows (staggered;
    # 0: only at an epoch's start), so a short run also learns to write from the zero state
    # that sampling starts from (docs/results.md, "Starting cold")
    restart_every: int = 8
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    # bf16-mixed where this machine computes it faster (charlm.training.precision)
    precision: str = "auto"
    encoding: str = "utf-8"
    text_column: str = "text"
    split: str = "train"
    streaming: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for flag, value in (("`lr`", self.lr), ("`weight_decay`", self.weight_decay),
                            ("`grad_clip`", self.grad_clip), ("`max_time`", self.max_time),
                            ("`val_fraction`", self.val_fraction),
                            ("`test_fraction`", self.test_fraction),
                            ("`dropout`", self.dropout), ("`weight_drop`", self.weight_drop),
                            ("`activation_reg`", self.activation_reg),
                            ("`temporal_reg`", self.temporal_reg)):
            if value is not None and not math.isfinite(value):
                raise CharlmError(f"{flag} must be a finite number, not {value}")
        if self.lr <= 0:
            raise CharlmError(f"`lr` must be positive, not {self.lr}")
        for flag, value in (("`weight_decay`", self.weight_decay), ("`grad_clip`", self.grad_clip),
                            ("`activation_reg`", self.activation_reg),
                            ("`temporal_reg`", self.temporal_reg),
                            ("`warmup_steps`", self.warmup_steps),
                            ("`restart_every`", self.restart_every)):
            if value < 0:
                raise CharlmError(f"{flag} must be >= 0, not {value}")
        for flag, value in (("`seq_len`", self.seq_len), ("`batch_size`", self.batch_size),
                            ("`num_nodes`", self.num_nodes)):
            if value is not None and value < 1:
                raise CharlmError(f"{flag} must be at least 1, not {value}")
        for flag, value in (("`max_steps`", self.max_steps), ("`max_epochs`", self.max_epochs)):
            if value is not None and value < 1:
                raise CharlmError(f"{flag} must be at least 1, not {value}")
        if self.max_time is not None and self.max_time <= 0:
            raise CharlmError(f"`max_time` must be a positive number of minutes, "
                              f"not {self.max_time}")
        if (self.eval_every is not None and self.eval_every < 0) or self.sample_every < 0:
            raise CharlmError("`eval_every` and `sample_every` must be >= 0 "
                              "(0 means only at the end)")
        if self.val_fraction <= 0:  # else the val loss would read 0 and best.ckpt be arbitrary
            raise CharlmError(f"`val_fraction` must be above 0, not {self.val_fraction}: training "
                              f"picks best.ckpt by the validation loss")

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The model these settings build; a cell's own settings are checked by building it
        on the meta device (no memory)."""
        extra = {"heads": self.heads, "context": self.context or self.seq_len} \
            if self.cell == "transformer" else {}
        try:
            config = ModelConfig(vocab_size, self.cell, self.hidden_size, self.num_layers,
                                 self.embedding_dim, self.dropout, self.impl, extra=extra,
                                 weight_drop=self.weight_drop, init=self.init,
                                 head_size=self.head_size)
            with torch.device("meta"):
                build_cell(config)
            return config
        except CharlmError:
            raise
        except ValueError as e:  # a plug-in cell's own check
            raise CharlmError(str(e)) from None
        except RuntimeError as e:  # sizes torch cannot even count (meta tensors hold no memory)
            raise CharlmError(f"a model of `hidden_size` {self.hidden_size} and `num_layers` "
                              f"{self.num_layers} is too large to build: "
                              f"{str(e).splitlines()[0][:120]}") from None
