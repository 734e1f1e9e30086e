"""CompareConfig: what a comparison trains (the shared settings, the cells, their size, the
seeds)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from charlm.errors import CharlmError
from charlm.lab.compare_runs import MeasureSettings
from charlm.model import cell_names
from charlm.training.config import TrainConfig

DEFAULT_PARAMS = 250_000
# With no budget given, each run trains for this many minutes of its clock, the same for every
# cell: 3 cells x 2 seeds then fit in about half an hour on 2 CPU cores, whatever the machine's
# speed (a step count would not), and the report ranks the cells at equal steps as well.
DEFAULT_MINUTES = 4.0
DEFAULT_SEEDS = 2
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
    params: int | list[int] | None = None  # match every cell to this many parameters (a list:
    hidden_size: int | None = None   # a grid of sizes)... or give every cell this hidden size
    layers: list[int] | None = None  # depths to train, a grid with params (None: the train's)
    seeds: int = DEFAULT_SEEDS
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
        sizes = self.targets
        for name, values in (("params", sizes), ("layers", self.layers or [1])):
            if not values or any(v is not None and v < 1 for v in values):
                raise CharlmError(f"`{name}` must be at least 1, not {min(values or [0])}")
            if len(set(values)) != len(values):
                raise CharlmError(f"`{name}` names a value twice")
        self.params = sizes[0] if len(sizes) == 1 else sizes
        self.layers = list(self.layers or [self.train.num_layers])
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
                             max_time=DEFAULT_MINUTES if no_budget else self.train.max_time)

    @property
    def grid(self) -> bool:
        """Whether more than one size or depth is trained (then runs are named by both)."""
        return isinstance(self.params, list) or len(self.layers) > 1

    @property
    def targets(self) -> list[int | None]:
        """The parameter targets (None: sized by ``hidden_size``)."""
        return self.params if isinstance(self.params, list) else [self.params]

    @property
    def variants(self) -> list[tuple[int | None, int]]:
        """Every (parameter target or None, depth) each cell is trained at."""
        return [(p, layers) for layers in self.layers for p in self.targets]

    def group(self, cell: str, params: int | None, layers: int) -> str:
        """The name a cell's runs at one size and depth are reported under."""
        if not self.grid:
            return cell
        return f"{cell} {short_count(params) if params else 'h' + str(self.hidden_size)} L{layers}"

    def run_name(self, cell: str, params: int | None, layers: int, seed: int) -> str:
        """The run's folder under OUT/runs."""
        return self.group(cell, params, layers).replace(" ", "-") + f"-s{seed}"

    @property
    def budget(self) -> tuple[int, str]:
        """The per-run budget in the unit the progress bars count (steps, else whole seconds)."""
        t = self.train
        return (t.max_steps, "step") if t.max_steps else (max(1, round(t.max_time * 60)), "s")


def short_count(n: int) -> str:
    """250000 → '250k', 1000000 → '1M', 2500 → '2.5k'."""
    for scale, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= scale:
            return f"{n / scale:g}{suffix}"
    return str(n)


def parse_count(text: str) -> int:
    """'250k' → 250000, '1M' → 1000000, '3000' → 3000 (one sentence otherwise)."""
    t = text.strip()
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:].lower(), 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise CharlmError(f"`params`: {text!r} is not a count like 250000, 250k or 1M") from None
    if value != int(value):
        raise CharlmError(f"`params`: {text!r} is not a whole number of parameters")
    return int(value)


def parse_layers(text: str) -> list[int]:
    """'1,2' → [1, 2] (one sentence otherwise)."""
    try:
        layers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        layers = []
    if not layers:
        raise CharlmError(f"`num_layers`: {text!r} is not a list of layer counts like 1,2")
    return layers


def default_eval_every(max_steps: int | None) -> int:
    """About ten validation points per run, so the learning curves have a shape."""
    return max(1, max_steps // 10) if max_steps else 100
