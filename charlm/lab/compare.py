"""The cell comparison harness: RNN, LSTM and GRU (any registered cell) trained and measured fairly.

Fair by construction: every run gets one shared ``TrainConfig`` (same corpus, splits, vocabulary,
optimiser, schedule and step or wall-clock budget) and changes only the cell, its hidden size and
the seed. With ``stream`` windows the batch of step s does not depend on the seed, so every run
reads the same batches in the same order (with ``random`` windows, every run of a seed does), and
seed s starts every cell from the same random state. Runs go seed by seed, each seed through every
cell, so a machine that slows down part-way hurts all cells alike; on a CPU they train side by
side, one per core with one thread each (``CompareConfig.parallel_runs``). A character n-gram model
(interpolated modified Kneser–Ney, order picked on val) on the same split gives every number its
context.

    OUT/runs/<cell>-s<seed>/   one run folder each (checkpoints, run.json); finished ones are reused
    OUT/ngram.json             the baseline, reused when the corpus and split are the same
    OUT/report.md, results.json, learning_curves.png, gradient_flow.png
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from charlm.atomic import atomic_write_bytes
from charlm.data.corpus import Corpus, load_corpus
from charlm.data.sources import absolute_spec
from charlm.errors import CharlmError
from charlm.generation.checkpoint import load
from charlm.generation.metrics import LN2, evaluate
from charlm.generation.sampling import prompt_ids
from charlm.lab import compare_report
from charlm.lab.compare_config import (
    NOT_COMPARED,
    CompareConfig,
    default_eval_every,
)
from charlm.lab.compare_runs import (
    LiveRuns,
    MeasureSettings,
    Progress,
    measure,
    run_isolated,
    train_and_measure,
)
from charlm.lab.gradient_flow import window_starts
from charlm.lab.ngram import fit_best_order
from charlm.model import CharRNN, ModelConfig, hidden_size_for_params
from charlm.training.fit import TrainConfig
from charlm.training.interrupt import Interrupted


def _model_config(c: CompareConfig, vocab_size: int, cell: str, hidden: int,
                  layers: int) -> ModelConfig:
    return replace(c.train, cell=cell, hidden_size=hidden,
                   num_layers=layers).model_config(vocab_size)


def hidden_sizes(c: CompareConfig, vocab_size: int) -> dict[tuple, tuple[int, int]]:
    """(cell, parameter target, depth) → (hidden size, exact parameter count), the hidden size
    matched to the target when there is one, for every variant of every cell."""
    sizes = {}
    for cell in c.cells:
        for params, layers in c.variants:
            hidden = c.hidden_size or hidden_size_for_params(
                _model_config(c, vocab_size, cell, 1, layers), params)
            model = CharRNN(_model_config(c, vocab_size, cell, hidden, layers))
            sizes[cell, params, layers] = (hidden, model.num_params())
    return sizes


def ngram_baseline(c: CompareConfig, corpus: Corpus, out: Path) -> dict:
    """The best-order Kneser–Ney model on the same split, computed once per corpus and split."""
    t = c.train
    key = {"fingerprint": corpus.meta.get("fingerprint"), "val_fraction": t.val_fraction,
           "test_fraction": t.test_fraction, "max_order": c.ngram_max_order}
    cached = out / "ngram.json"
    if cached.exists():
        saved = json.loads(cached.read_text())
        if saved.get("key") == key:
            return saved["ngram"]
    splits = corpus.split(t.val_fraction, t.test_fraction)
    train, val = np.asarray(splits["train"]), np.asarray(splits["val"])
    model, val_nats = fit_best_order(train, val, len(corpus.vocab),
                                     range(1, c.ngram_max_order + 1))
    result = {"order": model.order, "val_loss": val_nats[model.order],
              "val_bpc": val_nats[model.order] / LN2,
              "val_bpc_by_order": {str(k): v / LN2 for k, v in val_nats.items()}}
    if len(splits["test"]):
        result["test_loss"] = model.cross_entropy(np.asarray(splits["test"]))
        result["test_bpc"] = result["test_loss"] / LN2
    atomic_write_bytes(cached, json.dumps({"key": key, "ngram": result}, indent=2).encode())
    return result


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or cut short by an interruption
        return None


def _status(run_dir: Path, expected: dict) -> tuple[str, dict | None]:
    """("measured", results) | ("trained" | "partial" | "absent", None); refuses a changed run.

    A run's settings are in its run.json once trained, in its spec.json from the moment it starts.
    """
    record = _read_json(run_dir / "run.json") or {}
    spec = _read_json(run_dir / "spec.json") or {}
    recorded = record.get("config") or spec.get("train")
    for key, value in expected.items():
        if recorded and key not in NOT_COMPARED and recorded.get(key, value) != value:
            raise CharlmError(f"{run_dir} was trained with {key}={recorded.get(key)!r}, not "
                              f"{value!r}; use another `out` to compare different settings")
    if "compare" in record:
        return "measured", record["compare"]
    if "results" in record:
        return "trained", None  # only the measurements are missing
    return ("partial" if run_dir.exists() else "absent"), None


def _train_runs(c: CompareConfig, corpus: Corpus, out: Path, overall: tqdm) -> list[dict]:
    """Every cell × seed, seed by seed, ``c.parallel_runs`` at a time; a finished run is read back,
    not trained again."""
    sizes = hidden_sizes(c, len(corpus.vocab))
    planned: list[tuple[TrainConfig, Path, dict]] = []
    for seed in range(c.train.seed, c.train.seed + c.seeds):
        for params, layers in c.variants:
            for cell in c.cells:
                train = replace(c.train_for(cell), cell=cell, num_layers=layers,
                                hidden_size=sizes[cell, params, layers][0], seed=seed,
                                resume=False, progress=False)
                planned.append((train, out / "runs" / c.run_name(cell, params, layers, seed),
                                {"group": c.group(cell, params, layers),
                                 "target_params": params, "num_layers": layers}))
    jobs = c.parallel_runs(len(planned))
    threads = c.threads_per_run(jobs)
    bars, children = _Bars(c, overall, jobs), LiveRuns()

    def one(i: int) -> dict:
        train, run_dir, labels = planned[i]
        return {**_one_run(c, train, run_dir, bars, i, threads, children), **labels}

    if jobs == 1:
        return [one(i) for i in range(len(planned))]
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(one, i) for i in range(len(planned))]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        except KeyboardInterrupt:
            running = bars.running()
            _stop(futures, children)
            raise CharlmError(f"interrupted during {', '.join(running)}; run the same command "
                              f"again to skip the finished runs (with `resume` to continue "
                              f"unfinished ones from their last checkpoints)") from None
        failed = next((f for f in futures if f.done() and f.exception()), None)
        if failed is not None:
            _stop(futures, children)
            raise failed.exception()
        return [f.result() for f in futures]


def _stop(futures: list[Future], children: LiveRuns) -> None:
    """No run starts after this; the ones training are stopped (they save, as on Ctrl-C)."""
    for f in futures:
        f.cancel()
    children.stop()


class _Bars:
    """The overall bar and a bar per run in progress, one line for each of ``jobs`` slots."""

    def __init__(self, c: CompareConfig, overall: tqdm, jobs: int):
        self.c, self.overall = c, overall
        self.budget, self.unit = c.budget
        self.done: dict[int, int] = {}   # run index → budget units done
        self.names: dict[int, str] = {}  # the runs training now
        self.slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for position in range(1, jobs + 1):
            self.slots.put(position)
        self.lock = threading.Lock()

    def running(self) -> list[str]:
        with self.lock:
            return [self.names[i] for i in sorted(self.names)]

    def finished(self, index: int) -> None:
        self._advance(index, self.budget)

    def _advance(self, index: int, done: int) -> None:
        with self.lock:
            self.done[index] = done
            self.overall.update(sum(self.done.values()) - self.overall.n)

    @contextmanager
    def run(self, index: int, name: str) -> Iterator[Progress]:
        """A bar for run ``index`` while it trains; yields its ``report(step, elapsed)``."""
        slot = self.slots.get()
        with tqdm(total=self.budget, unit=self.unit, desc=name, leave=False, position=slot,
                  disable=not self.c.progress, bar_format=_bar_format(self.unit)) as bar:

            def report(step: int, elapsed: float) -> None:
                done = min(step if self.unit == "step" else int(elapsed), self.budget)
                bar.update(done - bar.n)  # whole seconds of a time budget
                self._advance(index, done)

            with self.lock:
                self.names[index] = name
            try:
                yield report
            finally:
                with self.lock:
                    del self.names[index]
                self.slots.put(slot)
        self.finished(index)


def _one_run(c: CompareConfig, train: TrainConfig, run_dir: Path, bars: _Bars, index: int,
             threads: int, children: LiveRuns) -> dict:
    train = replace(train, out=str(run_dir))
    status, record = _status(run_dir, asdict(train))
    if status == "measured":
        bars.finished(index)
        return record
    if status == "partial" and not c.resume:
        shutil.rmtree(run_dir)  # an interrupted run, restarted from scratch
    spec = {"label": run_dir.name, "train": asdict(train), "measure": asdict(c.measure),
            "resume": c.resume, "trained": status == "trained", "threads": threads}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "spec.json", json.dumps(spec, indent=2).encode())
    with bars.run(index, run_dir.name) as report:
        try:
            if c.isolate:
                return run_isolated(spec, run_dir, report, children)
            return train_and_measure(spec, run_dir, report)
        except (KeyboardInterrupt, Interrupted):
            raise CharlmError(f"interrupted during {run_dir.name}; run the same command again to "
                              f"skip the finished runs (with `resume` to continue {run_dir.name} "
                              f"from its last checkpoint)") from None


def _bar_format(unit: str) -> str | None:
    """A time budget's bar counts whole seconds of budget, without a rate (seconds per second
    says nothing); a step budget keeps tqdm's own, with steps per second."""
    if unit != "s":
        return None
    return ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s of budget "
            "[{elapsed}<{remaining}]")


def _checkpoint_run(path: str, c: CompareConfig, data: list[str]) -> dict:
    """Evaluate a checkpoint trained elsewhere on the comparison's split, and measure it."""
    model, vocab, info = load(path)
    t = c.train
    corpus = load_corpus(data, vocab=vocab, encoding=t.encoding, split=t.split,
                         text_column=t.text_column, streaming=t.streaming)
    splits = corpus.split(t.val_fraction, t.test_fraction)
    val = evaluate(model, splits["val"])
    record = {"label": str(Path(path).parent.name + "/" + Path(path).name), "checkpoint": path,
              "cell": model.config.cell, "seed": None, "impl": model.config.impl,
              "params": model.num_params(), "hidden_size": model.config.hidden_size,
              "val_loss": val["loss"], "val_bpc": val["bpc"], "steps": info.get("step")}
    if len(splits["test"]):
        test = evaluate(model, splits["test"])
        record.update(test_loss=test["loss"], test_bpc=test["bpc"])
    trained_on = info.get("data") or {}
    other_split = (trained_on.get("val_fraction"), trained_on.get("test_fraction")) != \
        (t.val_fraction, t.test_fraction)
    same_data = [absolute_spec(d) for d in trained_on.get("sources") or []] == \
        [absolute_spec(d) for d in data or ["stdlib"]]
    if trained_on and (other_split or not same_data):
        record["note"] = "trained on other data or splits: its val text may be text it trained on"
    if corpus.meta.get("unknown"):
        record["unknown_chars"] = sum(corpus.meta["unknown"].values())
    record.update(measure(model, vocab, splits["val"], c.measure, t.seed))
    return record


def _checkpoint_data(c: CompareConfig) -> list[str]:
    if c.train.data or c.cells:
        return c.train.data
    recorded = []
    for path in c.checkpoints:
        recorded.append((load(path)[2].get("data") or {}).get("sources"))
    if recorded and all(r == recorded[0] for r in recorded) and recorded[0]:
        return list(recorded[0])
    raise CharlmError("the checkpoints do not record the same training data; pass `data`")


def run_compare(c: CompareConfig) -> dict:
    """Train and measure every cell × seed (reusing finished runs), add checkpoints, write OUT."""
    out = Path(c.out)
    out.mkdir(parents=True, exist_ok=True)
    data = [absolute_spec(d) for d in _checkpoint_data(c)]  # the same from any directory
    t = replace(c.train, data=data)
    c = replace(c, train=t)
    corpus = load_corpus(data or None, encoding=t.encoding, split=t.split,
                         text_column=t.text_column, streaming=t.streaming)
    # Mistakes that would otherwise surface only after the first run has trained:
    val = corpus.split(t.val_fraction, t.test_fraction)["val"]  # a bad fraction
    prompt_ids(corpus.vocab, c.measure.prompt)  # a prompt character the text never has
    window_starts(len(val), c.measure.probe_k + 2, 1)  # a val split too short for the probe
    budget, unit = c.budget
    n_train = len(c.cells) * len(c.variants) * c.seeds
    c = replace(c, jobs=c.parallel_runs(n_train))  # as the report will say
    with tqdm(total=budget * n_train, unit=unit, desc="compare", position=0,
              disable=not c.progress or not n_train, bar_format=_bar_format(unit)) as overall:
        overall.set_postfix_str("n-gram baseline")
        ngram = ngram_baseline(c, corpus, out)
        overall.set_postfix_str("")
        runs = _train_runs(c, corpus, out, overall)
    runs += [_checkpoint_run(p, c, data) for p in c.checkpoints]
    results = compare_report.summarise(runs, ngram, c)
    compare_report.write_outputs(results, out)
    return results


__all__ = ["CompareConfig", "MeasureSettings", "default_eval_every", "hidden_sizes",
           "ngram_baseline", "run_compare"]
