"""One run of ``charlm compare``: train a cell, then measure it the way every other run is measured.

Every run, trained here or elsewhere, goes through the same ``measure``: gradient flow at
initialisation and after training, generation speed at batch 1 and a sample from the same prompt.
A training run can execute in its own process (``python -m charlm.lab.compare_runs RUN_DIR``), so
its peak memory is its own and a crash cannot take the comparison down; it then reports its progress
to the parent as JSON lines on stdout and writes everything else to RUN_DIR/train.log.

    RUN_DIR/spec.json   what to do (written by the parent)
    RUN_DIR/run.json    fit()'s record, plus a "compare" section once the run is measured
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from charlm.atomic import atomic_write_bytes
from charlm.data.corpus import load_corpus
from charlm.data.vocab import CharVocab
from charlm.errors import CharlmError
from charlm.generation.checkpoint import load
from charlm.generation.sampling import SampleSettings, generate
from charlm.lab.gradient_flow import decay_k, gradient_flow, steps_per_decade
from charlm.lab.units import gate_saturation, trace_text
from charlm.model import CharRNN, ModelConfig, is_recurrent
from charlm.training.environment import prepare_process
from charlm.training.fit import TrainConfig, fit

Progress = Callable[[int, float], None]  # (step, elapsed seconds)
SAMPLE_REPEATS = 5  # generation speed is the best of this many timings


@dataclass
class MeasureSettings:
    """How every run is measured after training (the same for all of them)."""

    probe_k: int = 64
    probe_windows: int = 64
    probe_warmup: int = 128
    prompt: str = ""
    sample_length: int = 500
    temperature: float = 0.8
    seed: int = 0
    gate_chars: int = 2000  # val characters read to measure how the gates saturate


def measure(model: CharRNN, vocab: CharVocab, val_ids: np.ndarray, settings: MeasureSettings,
            init_seed: int) -> dict:
    """Gradient flow (trained, and a fresh model of the same config) for a recurrent cell, gate
    saturation for a gated one, and for every model its sample speed and a sample."""
    model = model.cpu().eval()
    s = settings
    sample_s = float("inf")
    for _ in range(SAMPLE_REPEATS):  # the best: other work on the machine only ever slows it
        t0 = time.perf_counter()
        text = generate(model, vocab, s.prompt, s.sample_length, SampleSettings(s.temperature),
                        seed=s.seed)[0]
        sample_s = min(sample_s, time.perf_counter() - t0)
    flow = flow_through_time(model, val_ids, s, init_seed) \
        if is_recurrent(model.config.cell) else {}
    return {**flow, "sample_chars_per_s": s.sample_length / max(sample_s, 1e-9), "sample": text,
            **gate_use(model, vocab, val_ids, s.gate_chars)}


def flow_through_time(model: CharRNN, val_ids: np.ndarray, s: MeasureSettings,
                      init_seed: int) -> dict:
    """‖∂L_t/∂h_{t−k}‖ of the trained model and of a fresh one its seed would draw."""
    norms = gradient_flow(model, val_ids, s.probe_k, s.probe_windows, s.probe_warmup)
    torch.manual_seed(init_seed)  # the initialisation the run's seed draws
    fresh = CharRNN(ModelConfig(**model.config.to_dict()))
    norms_init = gradient_flow(fresh, val_ids, s.probe_k, s.probe_windows, s.probe_warmup)
    return {"grad_norms": norms.tolist(), "grad_norms_init": norms_init.tolist(),
            "grad_decay_k": decay_k(norms), "grad_decay_k_init": decay_k(norms_init),
            "grad_ratio_K": float(norms[-1] / norms[0]) if norms[0] > 0 else 0.0,
            "grad_steps_per_decade": steps_per_decade(norms),
            "grad_steps_per_decade_init": steps_per_decade(norms_init)}


def gate_use(model: CharRNN, vocab: CharVocab, val_ids: np.ndarray, chars: int) -> dict:
    """How the model's sigmoid gates saturate on the first ``chars`` val characters: per layer
    and gate, each unit's fraction of steps left (< 0.1) and right (> 0.9) of the middle, as
    ``charlm inspect`` and the 2015 paper count them. Nothing for a cell without gates."""
    text = vocab.decode(val_ids[:chars])
    if len(text) < 2:
        return {}
    stats = gate_saturation(trace_text(model, vocab, text))
    if not stats:
        return {}
    return {"gates": [{"layer": g.layer, "gate": g.gate, "left": g.left.round(4).tolist(),
                       "right": g.right.round(4).tolist()} for g in stats],
            "gate_chars": len(text)}


class ReportProgress(Callback):
    """Tells ``report(step, elapsed_s)`` after every training step."""

    def __init__(self, report: Progress):
        self.report = report

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.report(trainer.global_step, pl_module.tick())


def proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (Linux) in MiB, None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far.

    Linux: VmHWM, the high-water mark of this process's own memory map. Not ru_maxrss: a child
    started by fork/vfork + exec inherits in ru_maxrss the parent's RSS at exec time, so every run
    would report the (larger) parent's memory.
    """
    hwm = proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1 / 1024 ** 2 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, else KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def train_and_measure(spec: dict, run_dir: Path, report: Progress | None = None) -> dict:
    """Train the run ``spec`` describes in ``run_dir`` (unless trained already), then measure it."""
    run_json = run_dir / "run.json"
    config = TrainConfig(**{**spec["train"], "out": str(run_dir), "progress": False})
    memory: dict = {}
    if not spec.get("trained"):
        resume = spec.get("resume", False) and (run_dir / "last.ckpt").exists()
        config.resume = resume
        if spec.get("isolated"):
            memory["rss_before_train_mb"] = proc_status_mb("VmRSS")  # python, torch, lightning
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        fit(config, callbacks=[ReportProgress(report)] if report else None)
        if spec.get("isolated"):  # a high-water mark is only the run's own in its own process
            memory["peak_rss_mb"] = _peak_rss_mb()
        if torch.cuda.is_available():
            memory["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 1024 ** 2
    record = json.loads(run_json.read_text())
    results = record["results"]
    model, vocab, _ = load(run_dir / "best.ckpt")  # the checkpoint whose val loss is reported
    corpus = load_corpus(config.data or None, encoding=config.encoding, split=config.split,
                         text_column=config.text_column, streaming=config.streaming)
    val_ids = corpus.split(config.val_fraction, config.test_fraction)["val"]
    measured = measure(model, vocab, val_ids, MeasureSettings(**spec["measure"]), config.seed)
    record["compare"] = {
        "label": spec["label"], "cell": config.cell, "seed": config.seed, "impl": model.config.impl,
        "params": model.num_params(), "hidden_size": model.config.hidden_size,
        "val_loss": results["val_loss"], "val_bpc": results["val_bpc"],
        **{k: results[k] for k in ("test_loss", "test_bpc") if k in results},
        "steps": results["steps"], "best_step": results["best_step"],
        "train_chars_per_s": results["train_chars_per_s"], "wall_s": results["elapsed_s"],
        "history": results["history"], **memory, **measured}
    atomic_write_bytes(run_json, json.dumps(record, indent=2).encode())
    return record["compare"]


class LiveRuns:
    """The child processes training now, so that all of them can be stopped at once (from another
    thread than the ones waiting on them); once stopped, a child that starts is stopped at once."""

    def __init__(self) -> None:
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def add(self, child: subprocess.Popen) -> None:
        with self._lock:
            self._children.add(child)
            if self._stopped:
                child.terminate()

    def discard(self, child: subprocess.Popen) -> None:
        with self._lock:
            self._children.discard(child)

    def stop(self) -> None:
        """SIGTERM to every child: each saves its step and stops, as on Ctrl-C."""
        with self._lock:
            self._stopped = True
            for child in self._children:
                child.terminate()


def run_isolated(spec: dict, run_dir: Path, report: Progress | None = None,
                 children: LiveRuns | None = None) -> dict:
    """``train_and_measure`` in a child process; its CharlmError comes back as one. ``children``
    holds the child while it runs."""
    atomic_write_bytes(run_dir / "spec.json",
                       json.dumps({**spec, "isolated": True}, indent=2).encode())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children = children or LiveRuns()
    with open(run_dir / "train.log", "ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "charlm.lab.compare_runs", str(run_dir)],
                                 stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        children.add(child)
        error = None
        try:
            for line in child.stdout:  # one JSON object per line; anything else is ignored
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(message, dict):
                    continue
                if "step" in message and report:
                    report(message["step"], message["elapsed_s"])
                error = message.get("error", error)
        except BaseException:  # Ctrl-C or an error here: the child must not train on alone
            child.terminate()
            raise
        finally:
            code = child.wait()
            children.discard(child)
    if error:
        raise CharlmError(error)
    if code != 0:
        raise RuntimeError(f"the run in {run_dir} failed (exit {code}); "
                           f"see {run_dir / 'train.log'}")
    return json.loads((run_dir / "run.json").read_text())["compare"]


def _child(run_dir: Path) -> int:
    """Entry point of the child process: train, measure, report on stdout."""
    spec = json.loads((run_dir / "spec.json").read_text())
    prepare_process()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    last = [0.0]

    def report(step: int, elapsed: float) -> None:
        now = time.monotonic()
        if now - last[0] > 0.2:  # a few lines a second is plenty for a progress bar
            last[0] = now
            print(json.dumps({"step": step, "elapsed_s": elapsed}), flush=True)

    try:
        train_and_measure(spec, run_dir, report)
    except CharlmError as e:
        print(json.dumps({"error": e.template}), flush=True)  # the parent names the flags
        return 1
    print(json.dumps({"done": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
