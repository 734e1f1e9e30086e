"""fit(): a Lightning Trainer with charlm's run folder, no click here.

A run folder holds best.ckpt (lowest val loss), last.ckpt (exact resume), metrics.csv,
samples.txt and run.json. Validation is one full pass over the val split every ``eval_every``
steps (by default: every 500, fewer where they would take over a tenth of a time budget) and at
the end of the run; every checkpoint is written whole or not at all.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from charlm.atomic import atomic_write_bytes
from charlm.data.corpus import cache_root
from charlm.data.sources import absolute_spec
from charlm.data.vocab import printable
from charlm.errors import CharlmError
from charlm.generation.checkpoint import load, read_checkpoint
from charlm.generation.evaluation import READ_OPTIONS
from charlm.generation.metrics import LN2, evaluate
from charlm.model import CharRNN, ModelConfig
from charlm.training.config import DEFAULT_EPOCHS, EVAL_EVERY, VALIDATION_SHARE, TrainConfig
from charlm.training.interrupt import GracefulStop, Interrupted
from charlm.training.lightning_module import CharDataModule, CharLM, OptimConfig
from charlm.training.precision import (
    Decision,
    bf16_failure,
    cpu_kind,
    decide,
    machine_key,
    measurement_off,
    on_cuda,
    step_timer,
)
from charlm.training.run_folder import (
    Checkpoints,
    RunEnd,
    Samples,
    Validation,
    loggers,
    merge_metrics,
    set_aside_metrics,
)
from charlm.training.runlock import RunLock, is_rank_zero


def decide_precision(config: TrainConfig, model_config: ModelConfig,
                     resumed_batch: int | None = None, keep: bool = True) -> Decision:
    """The run's precision and batch size (``charlm.training.precision``): ``auto`` and an unset
    batch are decided from what this machine reports, and measured once where that cannot tell
    or where the batch is open (a new answer cached unless ``keep`` is false). Distributed and
    GPU runs take the report alone, so every rank decides the same."""
    single = (config.num_nodes == 1 and str(config.devices) in ("auto", "1")
              and config.strategy == "auto" and not on_cuda(config.accelerator))
    measure = None
    if single and not measurement_off():
        key = {**machine_key(), **model_config.to_dict(), "seq_len": config.seq_len}
        key.pop("impl", None)
        measure = step_timer(lambda: CharRNN(model_config), model_config.vocab_size,
                             config.seq_len, cache_root() / "machine.json", key, keep=keep)
    return decide(config.precision, config.batch_size or resumed_batch, config.accelerator,
                  measure=measure, cell=model_config.cell,
                  no_bf16=lambda: bf16_failure(CharRNN(model_config), model_config.vocab_size))


def _total_steps(config: TrainConfig, windows_per_epoch: int) -> int | None:
    if config.max_steps is not None:
        return config.max_steps
    if config.max_epochs is not None:
        return config.max_epochs * windows_per_epoch
    if config.max_time is not None:
        return None
    return DEFAULT_EPOCHS * windows_per_epoch


class ProgressBar(TQDMProgressBar):
    """Lightning's bar with the module's own figures (``CharLM.progress_metrics``), read when
    the bar redraws rather than at every step as Lightning reads ``prog_bar`` metrics."""

    def get_metrics(self, trainer, pl_module) -> dict:
        return {**super().get_metrics(trainer, pl_module), **pl_module.progress_metrics()}


def fit(config: TrainConfig, callbacks: list[Callback] | None = None) -> dict:
    """Train as ``config`` says; returns the results that also go to run.json.

    ``callbacks`` are added to the Trainer's (e.g. ``charlm compare``'s progress reporting).
    """
    with RunLock(config.out):  # a second run on the same --out refuses (charlm.training.runlock)
        return _fit(config, callbacks)


def _fit(config: TrainConfig, callbacks: list[Callback] | None = None) -> dict:
    out = Path(config.out)
    resumed = _resume_info(config, out / "last.ckpt")
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.seed, workers=True, verbose=False)
    dm = _data_module(config)
    model_config = config.model_config(len(dm.corpus.vocab))
    _check_same_model(resumed, model_config, out / "last.ckpt")
    decision, said = _decide(config, model_config, resumed)
    dm.batch_size = decision.batch_size
    run = RunCallbacks(config, dm)
    trainer = _trainer(config, decision, [*run.callbacks, *(callbacks or [])])
    # Lightning knows how many processes train once the Trainer exists; the streams are cut for
    # that many, and the run's length in steps follows from them.
    streams = dm.make_streams(0, trainer.world_size)
    dm.max_steps = run.end.total_steps = total = _total_steps(config, streams.windows_per_epoch)
    if config.progress and is_rank_zero():
        _report_data(dm.corpus, dm, streams, trainer.world_size)
        if said:
            print(said, flush=True)
    module = _lightning_module(config, model_config, dm, total)
    t0 = time.time()
    _train(trainer, module, dm, config, resumed)
    if run.stop.stopped_at is not None:
        raise Interrupted(run.stop.stopped_at)
    results = _results(run.validation, trainer, module, decision, out, time.time() - t0,
                       streams.windows_per_epoch)
    if config.window == "mixed":
        results["streams_from_step"] = dm.streams.streams_from
    if config.test_fraction and trainer.is_global_zero:
        results.update(_test_metrics(out / "best.ckpt", dm))
    if trainer.is_global_zero:
        record = {"config": asdict(config), "model": model_config.to_dict(),
                  "data": module.hparams["data"], "results": results}
        atomic_write_bytes(out / "run.json", json.dumps(record, indent=2).encode())
    return results


class RunCallbacks:
    """The run folder's callbacks, one per job (``charlm.training.run_folder``), and the
    Ctrl-C handling; they share the run's end and its checkpoints, so their order is free."""

    def __init__(self, config: TrainConfig, dm: CharDataModule):
        out = Path(config.out)
        checkpoints = Checkpoints(out)
        self.end = RunEnd(None, config.max_time * 60 if config.max_time is not None else None)
        timed_default = config.eval_every is None and config.max_time is not None
        self.validation = Validation(
            dm, EVAL_EVERY if config.eval_every is None else config.eval_every, checkpoints,
            self.end, config.progress, share=VALIDATION_SHARE if timed_default else None)
        self.stop = GracefulStop(checkpoints, self.end)
        self.callbacks = [self.end, self.validation,
                          Samples(out, config.sample_every, config.progress), self.stop]


def _results(validation: Validation, trainer: L.Trainer, module: CharLM, decision: Decision,
             out: Path, wall_s: float, windows_per_epoch: int) -> dict:
    return {
        "checkpoint": str(out / "last.ckpt"), "best_checkpoint": str(out / "best.ckpt"),
        "val_loss": validation.best_val_loss, "val_bpc": validation.best_val_loss / LN2,
        "best_step": validation.best_step, "steps": trainer.global_step,
        "validations_put_off": validation.put_off,  # to keep a time budget's for training
        # where in its epoch a streamed run ends moves its final figure (docs/results.md), so a
        # comparison of timed runs needs it
        "epochs": round(trainer.global_step / windows_per_epoch, 3),
        "params": module.model.num_params(), "precision": decision.precision,
        "batch_size": decision.batch_size, "auto": decision.to_dict(), "machine": cpu_kind(),
        "train_chars_per_s": module.train_chars / module.train_s if module.train_s else 0.0,
        "elapsed_s": module.elapsed_s, "wall_s_this_session": wall_s,
        "history": validation.history,
    }


def _resume_info(config: TrainConfig, last: Path) -> dict | None:
    """The model, step and batch of the run to resume (None: a new run), opened as plain data
    before Lightning opens it, so a crafted or broken file is one clear refusal."""
    if not config.resume:
        if last.exists():
            raise CharlmError(f"{last.parent} already holds a run; pass `resume` to continue it, "
                              f"or choose another `out`")
        return None
    if not last.exists():
        raise CharlmError(f"`resume`: there is no {last} to resume from")
    ckpt = read_checkpoint(last)
    hparams = ckpt["hyper_parameters"]
    resumed = {"model": hparams.get("model") or {}, "global_step": ckpt.get("global_step", 0),
               "batch_size": (hparams.get("data") or {}).get("batch_size")}
    if resumed["batch_size"] is not None and config.batch_size not in (None,
                                                                      resumed["batch_size"]):
        raise CharlmError(f"`resume`: {last} was trained with `batch_size` "
                          f"{resumed['batch_size']}; resume it with that batch size")
    return resumed


def _check_same_model(resumed: dict | None, model_config: ModelConfig, last: Path) -> None:
    if resumed is None:
        return
    # read through ModelConfig, so a setting newer than the checkpoint counts at its default
    recorded = ModelConfig(**resumed["model"]).to_dict()
    differ = {k: v for k, v in recorded.items()
              if k != "impl" and model_config.to_dict().get(k) != v}
    if differ:
        raise CharlmError(f"`resume`: {last} was trained with "
                          f"{', '.join(f'{k}={v!r}' for k, v in differ.items())}; pass the "
                          f"options and `data` it was trained with")


def _data_module(config: TrainConfig) -> CharDataModule:
    """The corpus read (and cached), split and ready to cut into streams."""
    dm = CharDataModule(config.data or None, batch_size=config.batch_size or 1,
                        seq_len=config.seq_len,
                        val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                        window=config.window, seed=config.seed,
                        restart_every=config.restart_every,
                        corpus_options={"encoding": config.encoding, "split": config.split,
                                        "text_column": config.text_column,
                                        "streaming": config.streaming})
    dm.load()
    return dm


def _decide(config: TrainConfig, model_config: ModelConfig,
            resumed: dict | None) -> tuple[Decision, str]:
    """The precision and batch, and the line a run prints about them ("" when both were given).
    A measurement taken while other work loads the machine is used but not cached: other work
    slows the settings unevenly, and a cached answer would outlive it."""
    load, t0 = os.getloadavg()[0], time.perf_counter()
    busy = load > (os.cpu_count() or 1) - 0.5
    decision = decide_precision(config, model_config, (resumed or {}).get("batch_size"),
                                keep=not busy)
    if config.precision != "auto" and config.batch_size is not None:
        return decision, ""
    return decision, decision.line() + _measured(time.perf_counter() - t0, load, busy)


def _lightning_module(config: TrainConfig, model_config: ModelConfig, dm: CharDataModule,
                      total: int | None) -> CharLM:
    optim = OptimConfig(lr=config.lr, weight_decay=config.weight_decay,
                        warmup_steps=config.warmup_steps, schedule=config.schedule,
                        activation_reg=config.activation_reg, temporal_reg=config.temporal_reg,
                        total_steps=total,
                        max_time_s=config.max_time * 60 if config.max_time else None)
    corpus = dm.corpus
    return CharLM(model_config.to_dict(), asdict(optim), corpus.vocab.chars,
                  data={"sources": [absolute_spec(d) for d in config.data or ["stdlib"]],
                        **{k: getattr(config, k) for k in READ_OPTIONS},
                        "fingerprint": corpus.meta.get("fingerprint"),
                        "val_fraction": config.val_fraction,
                        "test_fraction": config.test_fraction, "seq_len": config.seq_len,
                        "batch_size": dm.batch_size, "restart_every": config.restart_every})


def _trainer(config: TrainConfig, decision: Decision, callbacks: list[Callback]) -> L.Trainer:
    """The run ends when ``RunEnd`` says (its step count or time budget), not by Lightning's
    max_steps: the step count depends on the number of processes, which the Trainer decides."""
    if config.progress:
        callbacks.append(ProgressBar(refresh_rate=10))
    return L.Trainer(
        max_steps=-1, max_epochs=-1,
        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=config.grad_clip or None,
        logger=loggers(Path(config.out)), callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=config.progress,
        enable_model_summary=False, log_every_n_steps=10, use_distributed_sampler=False,
        deterministic=False, accelerator=config.accelerator, devices=config.devices,
        strategy=config.strategy, num_nodes=config.num_nodes, precision=decision.precision)


def _train(trainer: L.Trainer, module: CharLM, dm: CharDataModule, config: TrainConfig,
           resumed: dict | None) -> None:
    """trainer.fit, from last.ckpt when resuming; metrics.csv keeps the earlier session's rows."""
    out = Path(config.out)
    last = out / "last.ckpt"
    previous = set_aside_metrics(out) if config.resume else None
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if config.resume else None,
                    weights_only=True)
    except SystemExit:  # Lightning's ending for a Ctrl-C that GracefulStop did not get to handle
        saved = f"{last} holds the last saved step; resume with `resume`" if last.exists() \
            else "no checkpoint was saved yet"
        raise CharlmError(f"interrupted at step {trainer.global_step} before it was saved; "
                          f"{saved}") from None
    finally:
        if previous is not None and trainer.is_global_zero:
            merge_metrics(out / "metrics.csv", previous, (resumed or {}).get("global_step", 0))


def _measured(seconds: float, load: float, busy: bool) -> str:
    """What the run says of a fresh measurement: where it is kept, or that it ran on a busy
    machine and is not kept."""
    if seconds < 0.1:  # the cache answered
        return ""
    if busy:
        return (f" [measured in {seconds:.1f} s while the machine was busy (load {load:.1f} on "
                f"{os.cpu_count() or 1} cores), so not cached: a later run measures again]")
    return f" [measured in {seconds:.1f} s, cached in {cache_root() / 'machine.json'}]"


def _test_metrics(best: Path, dm: CharDataModule) -> dict:
    model, _, _ = load(best)
    test = evaluate(model, dm.splits["test"], dm.eval_seq_len)
    return {"test_loss": test["loss"], "test_bpc": test["bpc"]}


def _report_data(corpus, dm: CharDataModule, streams, world: int) -> None:
    """Tell the user what the data preparation did."""
    meta = corpus.meta
    lines = [f"data: {meta.get('sources', '?')}: {len(corpus.ids):,} characters, "
             f"vocab {len(corpus.vocab)}, cache {meta.get('cache')}",
             f"vocab: {corpus.vocab.describe()}",
             "splits: " + ", ".join(f"{k} {len(v):,}" for k, v in dm.splits.items() if len(v)),
             f"batches: {streams.batch_size * world} streams x {streams.seq_len} chars, "
             f"{streams.windows_per_epoch} steps per epoch, tail of {streams.tail:,} train "
             f"characters unused per epoch"]
    if meta.get("unknown"):
        lines.append("skipped characters outside the vocabulary: " +
                     ", ".join(f"{printable(c)}×{n}" for c, n in meta["unknown"].items()))
    print("\n".join(lines), flush=True)
