"""CompareConfig: what a comparison trains (the shared settings, the cells, their size, the
seeds)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from charlm.errors import CharlmError
from charlm.lab.compare_runs import MeasureSettings
from charlm.model import cell_names
from charlm.training.config import TrainConfig

DEFAULT_PARAMS = 250_000
DEFAULT_STEPS = 500
# Settings that may differ between an earlier session's run and this one without changing it.
NOT_COMPARED = ("out", "resume", "progress")


@dataclass
class CompareConfig:
    """A comparison: the shared training settings, the cells, how to size them, how many seeds."""

    train: TrainConfig = field(  # float32: gradient norms 64 steps back need its range
        default_factory=lambda: TrainConfig(progress=False, precision="32-true",
                                              batch_size=8, lr=4e-3, weight_decay=0.0))
    cells: list[str] = field(default_factory=lambda: ["rnn", "lstm", "gru"])
    checkpoints: list[str] = field(default_factory=list)  # trained elsewhere: evaluated only
    params: int | None = None        # match every cell to this many parameters...
    hidden_size: int | None = None   # ...or give every cell this hidden size
    seeds: int = 1
    out: str = "checkpoints/compare"
    resume: bool = False             # continue unfinished runs from last.ckpt (else restart them)
    isolate: bool = True             # each training run in its own process (honest peak memory)
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    ngram_max_order: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        self.checkpoints, self.out = [str(p) for p in self.checkpoints], str(self.out)
        if self.params is not None and self.hidden_size is not None:
            raise CharlmError("give `params` or `hidden_size`, not both")
        if self.params is None and self.hidden_size is None:
            self.params = DEFAULT_PARAMS
        if self.params is not None and self.params < 1:
            raise CharlmError(f"`params` must be at least 1, not {self.params}")
        if self.seeds < 1:
            raise CharlmError(f"`seeds` must be at least 1, not {self.seeds}")
        unknown = [c for c in self.cells if c not in cell_names()]
        if unknown:
            raise CharlmError(f"unknown cell {unknown[0]!r} in `cells`; choose from "
                              f"{', '.join(cell_names())}")
        if len(set(self.cells)) != len(self.cells):
            raise CharlmError("`cells` names a cell twice")
        if not self.cells and not self.checkpoints:
            raise CharlmError("nothing to compare: give `cells` or checkpoints")
        no_budget = self.train.max_steps is None and self.train.max_time is None
        # the budget is steps or time, the same for every cell
        self.train = replace(self.train, max_epochs=None,
                             max_steps=DEFAULT_STEPS if no_budget else self.train.max_steps)

    @property
    def budget(self) -> tuple[int, str]:
        """The per-run budget in the unit the progress bars count (steps, else whole seconds)."""
        t = self.train
        return (t.max_steps, "step") if t.max_steps else (max(1, round(t.max_time * 60)), "s")


def default_eval_every(max_steps: int | None) -> int:
    """About ten validation points per run, so the learning curves have a shape."""
    return max(1, max_steps // 10) if max_steps else 100
