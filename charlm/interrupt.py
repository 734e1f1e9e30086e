"""Ctrl-C and SIGTERM during training: finish the step, save last.ckpt, stop with one sentence.

What Lightning 2.6 does on its own is not enough for an exact resume. Ctrl-C raises
KeyboardInterrupt wherever the program happens to be (perhaps half-way through an optimiser step);
Lightning then calls ``on_exception`` and ``sys.exit(1)`` without a checkpoint. On SIGTERM it
raises ``SIGTERMException`` (a SystemExit with exit code 0) after the step, again without a
checkpoint (trainer/call.py, connectors/signal_connector.py, loops/training_epoch_loop.py).

``GracefulStop`` replaces both handlers while the training loop runs: a signal only sets a flag.
At the end of the step, where weights, optimiser, carried hidden state, RNG and data position
all belong to the same step, last.ckpt is saved atomically (unless validation just saved it) and
the run stops with ``Interrupted``: "interrupted at step N; resume with --resume". Under DDP rank
0's flag is broadcast, so every rank stops at the same step. A second Ctrl-C stops at once,
without saving; last.ckpt is then the previous one, whole.
"""

from __future__ import annotations

import signal
import threading

from lightning.pytorch.callbacks import Callback

from .errors import CharlmError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(CharlmError):
    """Training stopped on a signal after saving a checkpoint it resumes from exactly."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}; resume with --resume")
        self.step = step


class GracefulStop(Callback):
    """Turns SIGINT/SIGTERM into a checkpoint at the end of the current step, then a clean stop.

    Place it after ``RunFolder`` in the callbacks, so an evaluation step has saved already.
    """

    def __init__(self, run_folder):
        self.run_folder = run_folder
        self.requested: str | None = None  # the name of the signal received, if any
        self._previous: dict[int, object] = {}

    # -- handlers, installed only while the training loop runs ------------------------------------
    def _handle(self, signum: int, frame) -> None:
        if self.requested == "SIGINT" and signum == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.requested = self.requested or signal.Signals(signum).name

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled in the main thread
        for sig in SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous = {}

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning registered its own SIGTERM handler (Trainer._run), which this replaces;
        # Lightning puts the handlers from before fit() back in its teardown.
        self.requested = None
        self._install()

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    # -- the stop, at a step boundary ------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        stop = bool(trainer.strategy.broadcast(self.requested is not None, src=0))
        if not stop:
            return
        step = trainer.global_step
        folder = self.run_folder
        if trainer.should_stop or (folder.total_steps is not None and step >= folder.total_steps):
            return  # this was the last step anyway: the run ends normally, results and all
        if folder.last_eval_step != step:
            from .runfolder import atomic_save
            folder.check_loss()  # a run whose loss went NaN is never saved
            atomic_save(trainer, folder.out / "last.ckpt")
        raise Interrupted(step)
