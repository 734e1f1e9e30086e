"""The run folder: validation, checkpoints, samples and logs of one training run.

    OUT/best.ckpt     the weights with the lowest validation loss
    OUT/last.ckpt     exact resume (weights, optimiser, step, carried state, RNG, clock)
    OUT/metrics.csv   train loss every 10 steps, val loss at every evaluation (kept across resumes)
    OUT/samples.txt   samples every --sample-every steps
    OUT/run.json      config and results (written by charlm.training.fit.fit)

Every file is written whole or not at all (charlm.atomic).
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from charlm.atomic import commit_file, temporary_for
from charlm.errors import CharlmError
from charlm.generation.sampling import SampleSettings, generate
from charlm.training.config import TrainConfig
from charlm.training.interrupt import RankZeroDecides
from charlm.training.lightning_module import CharDataModule, CharLM
from charlm.training.saving import atomic_copy, atomic_save


def _refuse_non_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise CharlmError(f"the training loss became {loss} at step {step}; best.ckpt is "
                          f"untouched (try a lower `lr` or `grad_clip`)")


class RunFolder(Callback):
    """Validation, checkpoints, samples and the time budget, every so many steps and at the end."""

    def __init__(self, out: Path, dm: CharDataModule, config: TrainConfig, total_steps: int | None):
        self.out, self.dm, self.config, self.total_steps = out, dm, config, total_steps
        self.best_val_loss = float("inf")
        self.best_step = -1
        self.last_eval_step = -1
        self.history: list[dict] = []
        self._bad: tuple | None = None  # (first non-finite step or -1, its loss): see watch_loss
        self._out_of_time = RankZeroDecides()

    def state_dict(self) -> dict:
        return {"best_val_loss": self.best_val_loss, "best_step": self.best_step,
                "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.best_val_loss = state["best_val_loss"]
        self.best_step = state["best_step"]
        self.history = state.get("history", [])

    def on_train_batch_end(self, trainer, pl_module: CharLM, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        self.watch_loss(outputs["loss"] if isinstance(outputs, dict) else outputs, step)
        out_of_time = False
        if self.config.max_time is not None:  # rank 0's clock decides, so all ranks stop together
            out_of_time = self._out_of_time(
                trainer, step, lambda: pl_module.tick() >= self.config.max_time * 60)
        final = out_of_time or (self.total_steps is not None and step >= self.total_steps)
        if out_of_time:
            trainer.should_stop = True
        sample_now = bool(self.config.sample_every) and step % self.config.sample_every == 0
        validate_now = final or (bool(self.config.eval_every)
                                 and step % self.config.eval_every == 0)
        if sample_now or validate_now:
            self.check_loss()  # before anything is written from these weights
        if sample_now:
            self.write_samples(trainer, pl_module, step)
        if validate_now:
            self.validate(trainer, pl_module, step)

    def watch_loss(self, loss: torch.Tensor, step: int, lazy: bool | None = None) -> None:
        """Stop on a non-finite training loss before anything is saved from it. On the CPU the
        check is immediate; on a GPU, reading the loss every step would make the host wait for
        the device, so the first bad step is kept on the device and read by ``check_loss``."""
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

    def check_loss(self) -> None:
        """Raise if a training loss kept on the device (see ``watch_loss``) was not finite."""
        if self._bad is not None and int(self._bad[0]) >= 0:
            _refuse_non_finite(float(self._bad[1]), int(self._bad[0]))

    def on_train_end(self, trainer, pl_module: CharLM) -> None:
        # A run that stopped for another reason (end of epochs) still validates and saves.
        if self.last_eval_step != trainer.global_step:
            self.check_loss()
            self.validate(trainer, pl_module, trainer.global_step)

    def validate(self, trainer, pl_module: CharLM, step: int) -> None:
        t0 = time.perf_counter()
        try:
            self._validate(trainer, pl_module, step)
        finally:
            pl_module.aside_s += time.perf_counter() - t0

    def _validate(self, trainer, pl_module: CharLM, step: int) -> None:
        val = pl_module.evaluate_split(self.dm.splits["val"], self.dm.eval_seq_len)
        self.last_eval_step = step
        record = {"step": step, "elapsed_s": round(pl_module.tick(), 2),
                  "val_loss": val["loss"], "val_bpc": val["bpc"]}
        self.history.append(record)
        for logger in trainer.loggers:
            logger.log_metrics({"val_loss": val["loss"], "val_bpc": val["bpc"],
                                "elapsed_s": record["elapsed_s"]}, step=step)
        pl_module.log("val_bpc", val["bpc"], logger=False, rank_zero_only=True)
        pl_module.shown["val_bpc"] = val["bpc"]
        improved = val["loss"] < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step = val["loss"], step
        atomic_save(trainer, self.out / "last.ckpt")
        if improved and trainer.is_global_zero:
            atomic_copy(self.out / "last.ckpt", self.out / "best.ckpt")
        if trainer.is_global_zero and self.config.progress:
            _say(trainer, f"step {step}: val loss {val['loss']:.4f} nats, {val['bpc']:.4f} bpc"
                          f"{' (best)' if improved else ''}")

    def write_samples(self, trainer, pl_module: CharLM, step: int) -> None:
        if not trainer.is_global_zero:
            return
        t0 = time.perf_counter()
        try:
            self._write_samples(trainer, pl_module, step)
        finally:
            pl_module.aside_s += time.perf_counter() - t0

    def _write_samples(self, trainer, pl_module: CharLM, step: int) -> None:
        model = pl_module.model
        lines = [f"=== step {step} ==="]
        for temperature in (0.5, 0.8, 1.0):
            text = generate(model, pl_module.vocab, "", 200, SampleSettings(temperature),
                            seed=step)[0]
            lines.append(f"--- temperature {temperature} ---\n{text}")
        model.train()
        block = "\n".join(lines) + "\n"
        with open(self.out / "samples.txt", "a", encoding="utf-8") as f:
            f.write(block)
        if self.config.progress:
            _say(trainer, block)


def _say(trainer, text: str) -> None:
    from tqdm.auto import tqdm
    tqdm.write(text)


def loggers(out: Path) -> list:
    """metrics.csv always; TensorBoard logs in OUT/tensorboard when tensorboard is installed."""
    loggers = [CSVLogger(out, name="", version="")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lightning.pytorch.loggers import TensorBoardLogger
        loggers.append(TensorBoardLogger(out, name="tensorboard", version=""))
    return loggers


def set_aside_metrics(out: Path) -> Path | None:
    """Lightning's CSVLogger deletes an existing metrics.csv; keep it to merge after the run."""
    metrics = out / "metrics.csv"
    if not metrics.exists():
        return None
    kept = out / "metrics.resumed.csv"
    if kept.exists():  # an earlier resume was interrupted before merging: merge that first
        merge_metrics(metrics, kept, None)
    os.replace(metrics, kept)
    return kept


def merge_metrics(metrics: Path, previous: Path, upto: int | None) -> None:
    """metrics.csv = the earlier session's rows up to the resumed step + this session's rows."""
    with open(previous, newline="") as f:
        old = list(csv.DictReader(f))
    new = []
    if metrics.exists():
        with open(metrics, newline="") as f:
            new = list(csv.DictReader(f))
    rows = [r for r in old if upto is None or int(r["step"]) <= upto] + new
    fields = sorted({k for r in rows for k in r})
    with temporary_for(metrics) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    commit_file(tmp, metrics)
    previous.unlink()
