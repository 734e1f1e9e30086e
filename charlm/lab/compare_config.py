"""CompareConfig: what a comparison trains (the shared settings, the cells, their size, the
seeds)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from charlm.errors import CharlmError
from charlm.lab.compare_runs import MeasureSettings
from charlm.model import cell_names
from charlm.training.config import TrainConfig
from charlm.training.precision import on_accelerator

# The default comparison (docs/results.md, "The default comparison"): at 500k parameters the
# best cell passes the 7-gram on Tiny Shakespeare within the half hour (at 250k the GRU passed
# it only after 2,100 steps).
# A budget in steps, the same for every cell, so that seed noise is the seeds' and not the
# machine's: 3 cells x 2 seeds, two runs at a time, take about half an hour on 2 CPU cores. The
# report ranks the cells at equal wall clock as well.
DEFAULT_PARAMS = 500_000
DEFAULT_STEPS = 1200
DEFAULT_SEEDS = 2
DEFAULT_BATCH = 32  # at batch 8 a step costs the cells very different times (docs/results.md)
DEFAULT_LR = 6e-3   # charlm train's; the same for every cell
# Without a warm-up the 500k RNN's first steps at that rate blow up and it never recovers
# (docs/results.md): a twentieth of a step budget, at most this many steps.
DEFAULT_WARMUP = 60
# The warm-up is the plain RNN's: the gated cells train stably from their first step, and the
# LSTM ends a warm-up's run far behind its run without one (docs/results.md). By default these
# cells go without it, unless a warm-up is given for every cell (`--warmup-steps`).
UNWARMED_CELLS = ("lstm", "gru")
# Input weights drawn for their own fan-in, not the hidden size (ModelConfig.init).
DEFAULT_INIT = "fan-in"
# Settings that may differ between an earlier session's run and this one without changing it.
NOT_COMPARED = ("out", "resume", "progress")
# What a per-cell recipe may set (`--recipe lstm:lr=1.2e-2`): the optimiser's settings, which the
# literature tunes per cell. The data, batches, budget and sizes stay the same for every cell.
RECIPE_KEYS = {"lr": float, "warmup_steps": int, "weight_decay": float, "grad_clip": float}


@dataclass
class CompareConfig:
    """A comparison: the shared training settings, the cells, how to size them, how many seeds."""

    train: TrainConfig = field(  # float32: gradient norms 64 steps back need its range
        default_factory=lambda: TrainConfig(progress=False, precision="32-true",
                                              batch_size=DEFAULT_BATCH, lr=DEFAULT_LR,
                                              weight_decay=0.0, warmup_steps=DEFAULT_WARMUP,
                                              init=DEFAULT_INIT, restart_every=0))
    cells: list[str] = field(default_factory=lambda: ["rnn", "lstm", "gru"])
    checkpoints: list[str] = field(default_factory=list)  # trained elsewhere: evaluated only
    params: int | list[int] | None = None  # match every cell to this many parameters (a list:
    hidden_size: int | None = None   # a grid of sizes)... or give every cell this hidden size
    layers: list[int] | None = None  # depths to train, a grid with params (None: the train's)
    seeds: int = DEFAULT_SEEDS
    # per cell, optimiser settings that differ from ``train``'s: {"lstm": {"lr": 0.012}}; None:
    # compare's defaults (``default_recipes``), {}: none, every cell on ``train``'s
    recipes: dict[str, dict[str, float | int]] | None = None
    out: str = "checkpoints/compare"
    resume: bool = False             # continue unfinished runs from last.ckpt (else restart them)
    isolate: bool = True             # each training run in its own process (honest peak memory)
    jobs: int | None = None          # runs trained at once (None: one per CPU core, see below)
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
        if self.jobs is not None and self.jobs < 1:
            raise CharlmError(f"`jobs` must be at least 1, not {self.jobs}")
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
        if self.recipes is None:
            self.recipes = default_recipes(self.cells, {}, self.train.warmup_steps)
        self._check_recipes()
        if self.train.max_steps is None and self.train.max_time is None:
            self.train = replace(self.train, max_steps=DEFAULT_STEPS,
                                 eval_every=default_eval_every(DEFAULT_STEPS))
        # the budget is steps or time, the same for every cell
        self.train = replace(self.train, max_epochs=None)

    def _check_recipes(self) -> None:
        for cell, recipe in self.recipes.items():
            if cell not in self.cells:
                raise CharlmError(f"`recipe` names {cell!r}, which is not among the cells "
                                  f"compared ({', '.join(self.cells) or 'none'})")
            unknown = sorted(set(recipe) - set(RECIPE_KEYS))
            if unknown:
                raise CharlmError(f"`recipe` for {cell} sets {unknown[0]!r}; a recipe sets "
                                  f"{', '.join(RECIPE_KEYS)}")
            try:
                self.train_for(cell)  # a value TrainConfig refuses (a negative lr) says so now
            except CharlmError as e:
                raise CharlmError(f"`recipe` for {cell}: {e.template}") from None

    def train_for(self, cell: str) -> TrainConfig:
        """The shared training settings with ``cell``'s own recipe applied."""
        return replace(self.train, **self.recipes.get(cell, {}))

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

    def parallel_runs(self, runs: int) -> int:
        """How many of ``runs`` train at once. On a CPU, one per core by default: a recurrent
        step's threads wait on each other at every time step, so one-thread runs side by side
        train more characters than one run with every core (docs/results.md). On a GPU, one.
        Runs in this process (``isolate`` off) go one by one."""
        if not self.isolate or runs <= 1:
            return 1
        if self.jobs is not None:
            return min(self.jobs, runs)
        if on_accelerator(self.train.accelerator):
            return 1
        return max(1, min(runs, torch.get_num_threads()))

    @staticmethod
    def threads_per_run(jobs: int) -> int:
        """This process's threads shared out between ``jobs`` runs at once."""
        return max(1, torch.get_num_threads() // jobs)

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


def parse_recipe(text: str) -> tuple[str, str, float | int]:
    """'lstm:lr=1.2e-2' → ('lstm', 'lr', 0.012); 'rnn:warmup-steps=60' → ('rnn', 'warmup_steps',
    60) (one sentence otherwise)."""
    cell, _, setting = text.partition(":")
    key, _, value = setting.partition("=")
    key = key.strip().replace("-", "_")
    if not cell.strip() or key not in RECIPE_KEYS or not value.strip():
        raise CharlmError(f"`recipe`: {text!r} is not CELL:SETTING=VALUE with SETTING one of "
                          f"{', '.join(k.replace('_', '-') for k in RECIPE_KEYS)} (e.g. "
                          f"lstm:lr=1.2e-2)")
    try:
        return cell.strip(), key, RECIPE_KEYS[key](value.strip())
    except ValueError:
        raise CharlmError(f"`recipe`: {value.strip()!r} is not a valid {key.replace('_', '-')} "
                          f"in {text!r}") from None


def parse_recipes(texts: list[str]) -> dict[str, dict[str, float | int]]:
    """Repeated --recipe values gathered per cell (a setting given twice for a cell refuses)."""
    recipes: dict[str, dict[str, float | int]] = {}
    for text in texts:
        cell, key, value = parse_recipe(text)
        if key in recipes.setdefault(cell, {}):
            raise CharlmError(f"`recipe` sets {key.replace('_', '-')} for {cell} twice")
        recipes[cell][key] = value
    return recipes


def default_recipes(cells: list[str], recipes: dict[str, dict],
                    warmup_steps: int) -> dict[str, dict]:
    """``recipes`` over compare's default ones for ``cells`` where the shared settings warm up:
    the gated cells without the warm-up (``UNWARMED_CELLS``). A cell's own recipe wins where it
    sets the warm-up too."""
    out = {c: {"warmup_steps": 0} for c in cells if c in UNWARMED_CELLS and warmup_steps}
    for c, recipe in recipes.items():
        out[c] = {**out.get(c, {}), **recipe}
    return out


def default_warmup(max_steps: int | None) -> int:
    """Compare's warm-up: a twentieth of a step budget, at most ``DEFAULT_WARMUP`` steps."""
    return min(DEFAULT_WARMUP, max_steps // 20) if max_steps else DEFAULT_WARMUP


def default_eval_every(max_steps: int | None) -> int:
    """About ten validation points per run, so the learning curves have a shape."""
    return max(1, max_steps // 10) if max_steps else 100
