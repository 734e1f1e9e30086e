"""CharLM, the LightningModule that trains a CharRNN, and the DataModule that feeds it.

The plain ``nn.Module`` (charlm.model) knows nothing of Lightning. Here: one shared step for
training and evaluation, the hidden state carried across windows and detached (stateful
truncated BPTT; Lightning 2 has no automatic TBPTT), AdamW with warm-up and cosine decay driven
by whichever budget (steps or wall-clock) runs out first.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor

from charlm.data.corpus import StepBatches, TrainStreams, eval_batches, load_corpus
from charlm.data.vocab import CharVocab
from charlm.errors import CharlmError
from charlm.generation import metrics
from charlm.generation.checkpoint import CHECKPOINT_FORMAT
from charlm.model import (
    CharRNN,
    ModelConfig,
    State,
    detach_state,
    map_state,
    restart_rows,
)
from charlm.training.optimizer import adamw, is_fused
from charlm.version import __version__


def _refuse_non_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise CharlmError(f"the training loss became {loss} at step {step}; best.ckpt is "
                          f"untouched (try a lower `lr` or `grad_clip`)")


class LossWatch:
    """Refuses a non-finite training loss before anything is saved from it.

    On the CPU the check is immediate. On a GPU, reading the loss every step would make the
    host wait for the device, so the first bad step is kept on the device and read by ``check``,
    which whatever writes a file from the weights calls first.
    """

    def __init__(self) -> None:
        self._bad: tuple[Tensor, Tensor] | None = None  # (first non-finite step or -1, its loss)

    def __call__(self, loss: Tensor, step: int, lazy: bool | None = None) -> None:
        loss = loss.detach()
        if lazy is None:
            lazy = loss.device.type != "cpu"
        if not lazy:
            _refuse_non_finite(float(loss), step)
            return
        if self._bad is None:
            self._bad = (torch.full((), -1, device=loss.device), torch.zeros_like(loss))
        first, value = self._bad
        bad = ~torch.isfinite(loss) & (first < 0)
        self._bad = (torch.where(bad, step, first), torch.where(bad, loss, value))

    def check(self) -> None:
        """Raise if a loss kept on the device was not finite."""
        if self._bad is not None and int(self._bad[0]) >= 0:
            _refuse_non_finite(float(self._bad[1]), int(self._bad[0]))


SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """Optimiser and schedule; the budget decides how far along the schedule a step is."""

    lr: float = 4e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    schedule: str = "cosine"  # "cosine" | "linear" | "constant"
    # AR and TAR (Merity et al. 2017, AWD-LSTM): penalties on the top layer's outputs, their
    # size after dropout and their change from one step to the next; 0 turns each off
    activation_reg: float = 0.0
    temporal_reg: float = 0.0
    total_steps: int | None = None   # the step budget, when there is one
    max_time_s: float | None = None  # the wall-clock budget, when there is one

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise CharlmError(f"`lr` must be positive, not {self.lr}")
        for name in ("activation_reg", "temporal_reg"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise CharlmError(f"`{name}` must be a finite number >= 0, not {value}")
        if self.schedule not in SCHEDULES:
            raise CharlmError(f"`schedule` must be one of {', '.join(SCHEDULES)}, "
                              f"not {self.schedule!r}")

    def progress(self, step: int, elapsed_s: float, reserve_s: float = 0.0) -> float:
        """How far along its budget the run is, 0 to 1: the further of steps and time (0 for a
        run with neither). ``reserve_s`` of a time budget are kept for the last evaluation, so
        the time for training ends that much sooner."""
        progress = 0.0
        if self.total_steps:
            progress = max(progress, step / self.total_steps)
        if self.max_time_s:
            progress = max(progress, elapsed_s / max(self.max_time_s - reserve_s, 1e-9))
        return min(progress, 1.0)

    def activation_penalty(self, out: Tensor, dropped: Tensor) -> Tensor:
        """AR on the dropped outputs (B, T, H) plus TAR on the undropped ones' step-to-step
        change: the mean square of each, times its weight."""
        penalty = self.activation_reg * dropped.float().pow(2).mean()
        if out.size(1) > 1:  # a one-character window has no change to penalise
            penalty = penalty + self.temporal_reg * (out[:, 1:] - out[:, :-1]).float().pow(2).mean()
        return penalty

    def lr_at(self, step: int, elapsed_s: float, reserve_s: float = 0.0) -> float:
        """Linear warm-up, then cosine or linear decay to min_lr_ratio × lr over the budget."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        progress = self.progress(step, elapsed_s, reserve_s)
        if self.schedule == "linear":
            left = 1.0 - progress
        else:
            left = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * left)


class CharLM(L.LightningModule):
    """Trains a CharRNN with stateful truncated BPTT; checkpoints hold only plain data."""

    def __init__(self, model: dict, optim: dict, vocab: list[str], data: dict | None = None):
        super().__init__()
        self.save_hyperparameters()  # plain dicts: load_from_checkpoint needs nothing else
        self.model = CharRNN(ModelConfig(**model))
        self.optim = OptimConfig(**optim)
        self.vocab = CharVocab(vocab)
        self.carried: State | None = None  # the training state carried from window to window
        self.elapsed_s = 0.0       # wall-clock of the run so far, validation included
        self.aside_s = 0.0         # of which validation, samples and checkpoints
        # kept of a time budget for the last evaluation: what the latest one took, so that a
        # run with --max-time ends within it, its last evaluation included
        self.reserve_s = 0.0
        self.train_chars = 0
        self._clock: float | None = None
        # What the progress bar shows, kept as they are (a loss stays on the device) and read
        # only when the bar redraws: see progress_metrics.
        self.shown: dict[str, Tensor | float] = {}
        self.watch_loss = LossWatch()

    # -- the one step ---------------------------------------------------------------------
    def _shared_step(self, x: Tensor, y: Tensor, state: State | None):
        return metrics.sequence_loss(self.model, x, y, state)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y, restart = batch  # restart: rows whose state starts from zero (all: none carried)
        self.carried = None if len(restart) == len(x) else restart_rows(self.carried, restart)
        penalty = None
        if self.optim.activation_reg or self.optim.temporal_reg:
            logits, state, out, dropped = self.model.forward_with_outputs(x, self.carried)
            loss_sum, count = metrics.scored_loss(logits, y)
            penalty = self.optim.activation_penalty(out, dropped)
        else:
            loss_sum, count, state = self._shared_step(x, y, self.carried)
        self.carried = detach_state(state)
        loss = loss_sum / count
        if self.logs_this_step():  # the cross-entropy alone, comparable with validation's
            self.log("train_loss", loss)
            self.log("bpc", loss / metrics.LN2)
            self.shown["train_loss"] = loss.detach()
        return loss if penalty is None else loss + penalty

    def on_before_backward(self, loss: Tensor) -> None:
        self.watch_loss(loss, self.global_step + 1)  # the step this one becomes

    def logs_this_step(self) -> bool:
        """Whether the loggers write this step (Lightning's rule: every log_every_n_steps-th
        step). Only then is self.log worth its cost, which is a noticeable share of a small
        model's step.

        Nothing is logged with ``prog_bar=True``: Lightning reads every progress-bar metric back
        to the host after every step, and on a GPU each read makes the host wait for the device
        (``benchmarks/gpu.py --only syncs`` counts the waits; docs/results.md has the figures)."""
        every = self.trainer.log_every_n_steps if self._trainer else 1
        return every > 0 and (self.global_step + 1) % every == 0

    @torch.no_grad()
    def evaluate_split(self, ids: np.ndarray, seq_len: int) -> dict:
        """Full-pass loss over a split, summed over every process (exact under DDP)."""
        world = self.trainer.world_size if self._trainer else 1
        rank = self.trainer.global_rank if self._trainer else 0
        reduce = (lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")) if world > 1 else None
        return metrics.evaluate(self.model, ids, seq_len, rank=rank, world=world,
                                device=self.device, reduce=reduce)

    # -- optimiser, schedule, clocks -----------------------------------------------------------
    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2 and "embedding" not in n]
        rest = [p for n, p in self.named_parameters()
                if not (p.dim() >= 2 and "embedding" not in n)]
        return adamw([{"params": decay, "weight_decay": self.optim.weight_decay},
                      {"params": rest, "weight_decay": 0.0}],
                     lr=self.optim.lr, betas=(0.9, 0.999), fused=self._may_fuse())

    def _may_fuse(self) -> bool:
        """Whether the optimiser may be fused here: where every gradient it reads is whole and
        unscaled when ``configure_gradient_clipping`` clips it. A GradScaler (16-mixed) unscales
        gradients before clipping only for an unfused optimiser, and a sharding strategy holds
        only part of each; one device or DDP, without a scaler, is what charlm runs."""
        if not self._trainer:
            return True
        whole = isinstance(self.trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        return whole and getattr(self.trainer.precision_plugin, "scaler", None) is None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        if not is_fused(optimizer):
            super().configure_gradient_clipping(optimizer, gradient_clip_val,
                                                gradient_clip_algorithm)
            return
        # Lightning's mixed-precision plugin refuses to clip for any fused optimiser, lest a
        # GradScaler's gradients be clipped still scaled; charlm fuses only where there is no
        # scaler (_may_fuse), so these are the true gradients, clipped by their norm as Lightning
        # would (fit sets no other algorithm).
        if gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    def on_train_start(self) -> None:
        self._clock = time.monotonic() - self.elapsed_s

    def on_train_end(self) -> None:
        # The run's clock stops here (after the last validation and checkpoint, which the
        # callbacks' on_train_end ran). Lightning's teardown that follows moves the model and
        # the optimiser's state back to the CPU and empties CUDA's cache: that is not training.
        self.tick()
        self._clock = None

    def tick(self) -> float:
        """Seconds of this run so far (resumed runs continue their clock)."""
        if self._clock is not None:
            self.elapsed_s = time.monotonic() - self._clock
        return self.elapsed_s

    @contextmanager
    def set_aside(self):
        """Time spent inside is not training time (validation, samples, checkpoints)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.aside_s += time.perf_counter() - t0

    def check_loss(self) -> None:
        """Raise before anything is written from weights a non-finite loss produced."""
        self.watch_loss.check()

    def show(self, name: str, value: Tensor | float) -> None:
        """A figure for the progress bar, read only when it redraws."""
        self.shown[name] = value

    @property
    def train_s(self) -> float:
        """Training time: the run's wall-clock less validation, samples and checkpoints
        (data loading and Lightning's own overhead count as training)."""
        return self.tick() - self.aside_s

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        lr = self.optim.lr_at(self.global_step, self.tick(), self.reserve_s)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.train_chars += batch[0].numel() * (self.trainer.world_size if self._trainer else 1)

    def progress_metrics(self) -> dict[str, float]:
        """The progress bar's figures. Reading the training loss waits for the device, so this
        is called only when the bar redraws."""
        shown = {}
        if "train_loss" in self.shown:
            loss = float(self.shown["train_loss"])
            shown.update({"train_loss": loss, "bpc": loss / metrics.LN2})
        if self.train_s > 0:
            shown["chars/s"] = self.train_chars / self.train_s
        if "val_bpc" in self.shown:
            shown["val_bpc"] = float(self.shown["val_bpc"])
        return shown

    # -- checkpoints: plain data only, so torch.load(weights_only=True) opens them ----------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["charlm"] = {
            "format": CHECKPOINT_FORMAT,
            "version": __version__,
            "torch": str(torch.__version__),
            "elapsed_s": self.tick(), "aside_s": self.aside_s, "train_chars": self.train_chars,
            "carried": detach_state(self.carried),
            "cpu_rng": torch.get_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get("charlm", {})
        self.elapsed_s = info.get("elapsed_s", 0.0)
        self.aside_s = info.get("aside_s", 0.0)
        self.train_chars = info.get("train_chars", 0)
        self.carried = info.get("carried")
        if info.get("cpu_rng") is not None:
            torch.set_rng_state(info["cpu_rng"])

    def on_fit_start(self) -> None:
        if self.carried is not None:  # a resumed state travels to the training device
            self.carried = map_state(lambda t: t.to(self.device), self.carried)


class CharDataModule(L.LightningDataModule):
    """Loads (or encodes once) the corpus, splits it, and serves training steps from a position.

    The batch of step s is a pure function of s, and the loader starts at the trainer's global
    step, so a resumed run reads exactly the batches an uninterrupted one would have.
    """

    def __init__(self, sources: list[str] | None, *, batch_size: int, seq_len: int,
                 val_fraction: float = 0.1, test_fraction: float = 0.0, window: str = "stream",
                 seed: int = 0, eval_seq_len: int = 256, corpus_options: dict | None = None,
                 max_steps: int | None = None, restart_every: int = 0):
        super().__init__()
        self.restart_every = restart_every
        self.sources, self.batch_size, self.seq_len = sources, batch_size, seq_len
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.window, self.seed, self.eval_seq_len = window, seed, eval_seq_len
        self.corpus_options = corpus_options or {}
        self.max_steps = max_steps
        self.corpus = None
        self.splits: dict[str, np.ndarray] = {}
        self.streams: TrainStreams | None = None

    def load(self) -> None:
        """Encode or open the cached corpus and cut the splits (idempotent)."""
        if self.corpus is None:
            self.corpus = load_corpus(self.sources, **self.corpus_options)
            self.splits = self.corpus.split(self.val_fraction, self.test_fraction)

    def make_streams(self, rank: int = 0, world: int = 1) -> TrainStreams:
        self.load()
        return TrainStreams(self.splits["train"], self.batch_size, self.seq_len, self.window,
                            self.seed, rank, world, self.restart_every)

    def setup(self, stage: str) -> None:
        self.load()
        self.streams = self.make_streams(self.trainer.global_rank, self.trainer.world_size)

    # Saved in checkpoints (Lightning calls these after setup): where mixed windows turned to
    # the streams. Each process decides that by its own clock, as it does its learning rate.
    def state_dict(self) -> dict:
        return {"streams_from": self.streams.streams_from if self.streams else None}

    def load_state_dict(self, state: dict) -> None:
        if self.streams is not None:
            self.streams.streams_from = state.get("streams_from")

    def train_dataloader(self):
        # Called after a checkpoint is restored, so global_step is the resumed position.
        # Its own generator: creating the iterator must not draw from the global RNG, which
        # drives dropout and is restored on resume.
        start = self.trainer.global_step
        module = self.trainer.lightning_module
        self.streams.progress = lambda step: module.optim.progress(step, module.tick(),
                                                                   module.reserve_s)
        return torch.utils.data.DataLoader(StepBatches(self.streams, start, self.max_steps),
                                           batch_size=None, generator=torch.Generator())

    def val_batches(self, rank: int = 0, world: int = 1):
        return eval_batches(self.splits["val"], self.eval_seq_len, rank=rank, world=world)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        # Only the two tensors travel. Lightning's own transfer walks the restart tuple int by
        # int, every step: host time a GPU step waits for.
        x, y, restart = batch
        return *super().transfer_batch_to_device((x, y), device, dataloader_idx), restart


__all__ = ["CharLM", "CharDataModule", "OptimConfig"]
