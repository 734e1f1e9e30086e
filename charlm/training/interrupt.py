"""Ctrl-C and SIGTERM during training: finish the step, save last.ckpt, stop with one sentence.

What Lightning 2.6 does on its own is not enough for an exact resume. Ctrl-C raises
KeyboardInterrupt wherever the program happens to be (perhaps half-way through an optimiser step);
Lightning then calls ``on_exception`` and ``sys.exit(1)`` without a checkpoint. On SIGTERM it
raises ``SIGTERMException`` (a SystemExit with exit code 0) after the step, again without a
checkpoint (trainer/call.py, connectors/signal_connector.py, loops/training_epoch_loop.py).

``GracefulStop`` replaces both handlers while the training loop runs: a signal only sets a flag.
At the end of the step, where weights, optimiser, carried hidden state, RNG and data position
all belong to the same step, last.ckpt is saved atomically (unless validation just saved it), the
trainer stops, and ``fit`` raises ``Interrupted``: "interrupted at step N; resume with --resume".
Under DDP rank
0's flag is broadcast (``RankZeroDecides``), so every rank stops at the same step. A second Ctrl-C
stops at once, without saving; last.ckpt is then the previous one, whole.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

from lightning.pytorch.callbacks import Callback

from charlm.errors import CharlmError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(CharlmError):
    """Training stopped on a signal after saving a checkpoint it resumes from exactly."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}; resume with `resume`")
        self.step = step


class RankZeroDecides:
    """Rank 0's answer to a yes/no question (stop now?), the same on every rank, asked at the end
    of a step.

    In one process the answer is rank 0's own, every step, at no cost. Under DDP each question is
    a collective, and with NCCL a wait for the GPU on the host, which a step that queues its
    kernels ahead cannot afford. So it is asked about every ``period_s`` seconds of rank 0's
    clock: with each answer rank 0 sends the step of the next question, so every rank asks at
    the same steps. A Ctrl-C or the end of ``--max-time`` is then seen within about ``period_s``
    or one step, whichever is longer.
    """

    def __init__(self, period_s: float = 0.5, max_gap: int = 100):
        self.period_s, self.max_gap = period_s, max_gap
        self.next_step = 0                          # ask at the first step seen
        self._asked: tuple[float, int] | None = None  # rank 0's (clock, step) at the last question

    def __call__(self, trainer, step: int, answer: Callable[[], bool]) -> bool:
        if trainer.world_size == 1:
            return answer()
        if step < self.next_step:
            return False
        now = time.monotonic()
        gap = 1
        if self._asked is not None and step > self._asked[1]:
            per_step = (now - self._asked[0]) / (step - self._asked[1])
            gap = max(1, min(self.max_gap, round(self.period_s / per_step))) if per_step > 0 \
                else self.max_gap
        self._asked = (now, step)
        said, self.next_step = trainer.strategy.broadcast((bool(answer()), step + gap), src=0)
        return bool(said)


class GracefulStop(Callback):
    """Turns SIGINT/SIGTERM into a checkpoint at the end of the current step, then a clean stop.

    At the end of the step where the signal is seen, last.ckpt is saved (unless an evaluation at
    that step saved it: ``Checkpoints`` keeps one save per step whichever callback runs first)
    and the trainer is told to stop; ``stopped_at`` is that step, and the caller raises
    ``Interrupted`` once ``trainer.fit`` has returned. A signal at the run's last step changes
    nothing: the run ends normally, results and all.
    """

    def __init__(self, checkpoints, run_end):
        self.checkpoints, self.run_end = checkpoints, run_end
        self.requested: str | None = None  # the name of the signal received, if any
        self.stopped_at: int | None = None
        self._previous: dict[int, object] = {}
        self._stop_now = RankZeroDecides()

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
        self.requested, self.stopped_at = None, None
        self._install()

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    # -- the stop, at a step boundary ------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.stopped_at is not None or self.run_end.is_last(trainer, pl_module, step):
            return
        if not self._stop_now(trainer, step, lambda: self.requested is not None):
            return
        if self.checkpoints.saved_step != step:
            self.checkpoints.save_last(trainer, pl_module)
        self.stopped_at = step
        trainer.should_stop = True
