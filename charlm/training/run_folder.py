"""The run folder's callbacks, one per job: the end of the run, validation and checkpoints,
samples; and its logs.

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
import os
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from charlm.atomic import commit_file, temporary_for
from charlm.generation.sampling import SampleSettings, generate
from charlm.training.interrupt import RankZeroDecides
from charlm.training.lightning_module import CharDataModule, CharLM
from charlm.training.saving import atomic_copy, atomic_save


class Checkpoints:
    """last.ckpt and best.ckpt. Not a callback: the callbacks that save (validation, a graceful
    stop) share one, so a step is saved once however they are ordered."""

    def __init__(self, out: Path):
        self.out = out
        self.saved_step = -1  # the step last.ckpt was last saved at in this session

    def save_last(self, trainer, pl_module: CharLM) -> None:
        pl_module.check_loss()  # a run whose loss went non-finite is never saved
        with pl_module.set_aside():
            atomic_save(trainer, self.out / "last.ckpt")
        self.saved_step = trainer.global_step

    def keep_as_best(self, trainer, pl_module: CharLM) -> None:
        """best.ckpt = last.ckpt, just saved."""
        if trainer.is_global_zero:
            with pl_module.set_aside():
                atomic_copy(self.out / "last.ckpt", self.out / "best.ckpt")


class RunEnd(Callback):
    """Ends the run at its step count (``total_steps``, None for none) or when rank 0's clock
    passes the time budget.

    Other callbacks ask ``is_last(step)`` to do their end-of-run work at the last step; the
    answer is decided once per step (one collective under DDP), so it is the same whoever asks
    first, and whatever the order of the callbacks.
    """

    def __init__(self, total_steps: int | None, max_time_s: float | None):
        self.total_steps, self.max_time_s = total_steps, max_time_s
        self._out_of_time = RankZeroDecides()
        self._decided: tuple[int, bool] = (-1, False)  # (step, is it the last)

    def is_last(self, trainer, pl_module: CharLM, step: int) -> bool:
        if self._decided[0] != step:
            last = self.total_steps is not None and step >= self.total_steps
            if self.max_time_s is not None:  # every rank asks, so all ranks stop together
                last = self._time_is_up(trainer, pl_module, step) or last
            self._decided = (step, last)
        return self._decided[1]

    def ran_out_during(self, trainer, pl_module: CharLM, step: int) -> bool:
        """Asked again after an evaluation at ``step`` that was not its last: where the time
        budget ran out during it, ``step`` becomes the last, so the run does not take one more
        step only to evaluate again. (Under DDP the question waits for its next collective:
        the answer stays no until then, on every rank.)"""
        if self._decided == (step, False) and self.max_time_s is not None:
            self._decided = (step, self._time_is_up(trainer, pl_module, step))
        return self._decided == (step, True)

    def _time_is_up(self, trainer, pl_module: CharLM, step: int) -> bool:
        return self._out_of_time(
            trainer, step, lambda: pl_module.tick() + pl_module.reserve_s >= self.max_time_s)

    def on_train_epoch_end(self, trainer, pl_module: CharLM) -> None:
        # The loader's one pass ends at the last step, so a pass that ends ends the run (a
        # finished run resumed with the same step count has no step left to take).
        trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module: CharLM, outputs, batch, batch_idx) -> None:
        if self.is_last(trainer, pl_module, trainer.global_step):
            trainer.should_stop = True


class Validation(Callback):
    """A full pass over the val split every ``eval_every`` steps and at the last step; after
    each, last.ckpt, and best.ckpt when the loss is the lowest so far.

    With ``share``, an evaluation before the last is put off while the run's time set aside
    (validation and checkpoints) already exceeds that share of the run so far: in a timed run
    the budget then goes to training, and the last step is still evaluated.
    """

    def __init__(self, dm: CharDataModule, eval_every: int, checkpoints: Checkpoints,
                 run_end: RunEnd, progress: bool = False, share: float | None = None):
        self.dm, self.eval_every, self.progress, self.share = dm, eval_every, progress, share
        self.put_off = 0  # evaluations put off so far (this session)
        self.checkpoints, self.run_end = checkpoints, run_end
        self.best_val_loss = float("inf")
        self.best_step = -1
        self.history: list[dict] = []

    @property
    def state_key(self) -> str:
        return "RunFolder"  # the key checkpoints have kept this state under from the start

    def state_dict(self) -> dict:
        return {"best_val_loss": self.best_val_loss, "best_step": self.best_step,
                "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.best_val_loss = state["best_val_loss"]
        self.best_step = state["best_step"]
        self.history = state.get("history", [])

    def on_train_batch_end(self, trainer, pl_module: CharLM, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        last = self.run_end.is_last(trainer, pl_module, step)
        due = bool(self.eval_every) and step % self.eval_every == 0
        if last or (due and not self._puts_off(trainer, pl_module, step)):
            self.validate(trainer, pl_module, step)
        if not last and self.run_end.ran_out_during(trainer, pl_module, step):
            trainer.should_stop = True  # whether RunEnd has been asked at this step or not

    def _puts_off(self, trainer, pl_module: CharLM, step: int) -> bool:
        """Whether the evaluation due at ``step`` gives its time to training (rank 0 decides, so
        every rank evaluates together)."""
        if self.share is None:
            return False
        later = trainer.strategy.broadcast(pl_module.aside_s > self.share * pl_module.tick())
        if later and trainer.is_global_zero and self.progress and not self.put_off:
            _say(f"step {step}: validation put off, as it has taken "
                 f"{pl_module.aside_s / pl_module.tick():.0%} of the run so far (at the default "
                 f"cadence it takes at most {self.share:.0%} of a time budget; the last step is "
                 f"still evaluated)")
        self.put_off += later
        return later

    def validate(self, trainer, pl_module: CharLM, step: int) -> None:
        pl_module.check_loss()  # before anything is written from these weights
        started = pl_module.tick()
        with pl_module.set_aside():
            val = pl_module.evaluate_split(self.dm.splits["val"], self.dm.eval_seq_len)
        record = {"step": step, "elapsed_s": round(pl_module.tick(), 2),
                  "val_loss": val["loss"], "val_bpc": val["bpc"]}
        self.history.append(record)
        for logger in trainer.loggers:
            logger.log_metrics({"val_loss": val["loss"], "val_bpc": val["bpc"],
                                "elapsed_s": record["elapsed_s"]}, step=step)
        pl_module.log("val_bpc", val["bpc"], logger=False, rank_zero_only=True)
        pl_module.show("val_bpc", val["bpc"])
        improved = val["loss"] < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step = val["loss"], step
        self.checkpoints.save_last(trainer, pl_module)  # holds this evaluation in its history
        if improved:
            self.checkpoints.keep_as_best(trainer, pl_module)
        pl_module.reserve_s = pl_module.tick() - started  # what the last evaluation will take
        if trainer.is_global_zero and self.progress:
            _say(f"step {step}: val loss {val['loss']:.4f} nats, {val['bpc']:.4f} bpc"
                 f"{' (best)' if improved else ''}")


class Samples(Callback):
    """Samples at temperatures 0.5, 0.8 and 1.0 appended to samples.txt every ``every`` steps."""

    def __init__(self, out: Path, every: int, progress: bool = False):
        self.out, self.every, self.progress = out, every, progress

    def on_train_batch_end(self, trainer, pl_module: CharLM, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not (self.every and step % self.every == 0 and trainer.is_global_zero):
            return
        pl_module.check_loss()
        with pl_module.set_aside():
            block = self.write(pl_module, step)
        if self.progress:
            _say(block)

    def write(self, pl_module: CharLM, step: int) -> str:
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
        return block


def _say(text: str) -> None:
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
