"""What ``charlm compare`` concludes and writes: seed statistics, the noise rule, tables, report.

The noise rule: two cells' mean val bpc differ by Δ; with standard deviations s_a, s_b over n_a, n_b
seeds, Δ is *within seed noise* when |Δ| < 2·sqrt(s_a²/n_a + s_b²/n_b), two standard errors of the
difference (about a 95% band). With two seeds a standard deviation is itself a rough estimate, so
the rule is a screen, not a test; with one seed there is no estimate and nothing is claimed.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from charlm.atomic import atomic_write_bytes
from charlm.lab import compare_plots
from charlm.lab.compare_config import CompareConfig
from charlm.lab.compare_plots import counted, seeds
from charlm.lab.compare_runs import SAMPLE_REPEATS
from charlm.lab.gradient_flow import format_decay
from charlm.lab.units import SIGMOID_GATES
from charlm.model import is_recurrent

NOISE_RULE = ("Δ is within seed noise when |Δ| < 2·sqrt(sd_a²/n_a + sd_b²/n_b) (two standard "
              "errors of the difference of means; with 2 seeds the sd is itself rough, so this "
              "is a screen, not a test; with 1 seed nothing is claimed)")
_LEAN = ("history", "grad_norms", "grad_norms_init", "sample", "gates")  # kept out of the JSON line


def _stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _mean(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return float(np.mean(values)) if len(values) == len(runs) else None


def summarise(runs: list[dict], ngram: dict, config: CompareConfig) -> dict:
    """Per-cell means ± sd over seeds, pairwise noise verdicts, the baseline verdicts and notes."""
    summary = []
    for name, rs in compare_plots.groups(runs).items():
        bpc_mean, bpc_sd = _stats([r["val_bpc"] for r in rs])
        row = {"cell": rs[0]["cell"], "group": name, "runs": len(rs), "params": rs[0]["params"],
               "target_params": rs[0].get("target_params"), "num_layers": rs[0].get("num_layers"),
               "hidden_size": rs[0]["hidden_size"], "impl": rs[0].get("impl"),
               "val_bpc_mean": bpc_mean, "val_bpc_std": bpc_sd,
               "val_bpc_min": min(r["val_bpc"] for r in rs),
               "val_bpc_max": max(r["val_bpc"] for r in rs),
               "grad_decay_k": [r.get("grad_decay_k") for r in rs],
               "grad_decay_k_init": [r.get("grad_decay_k_init") for r in rs]}
        for key in ("val_loss", "test_bpc", "train_chars_per_s", "sample_chars_per_s", "wall_s",
                    "peak_rss_mb", "grad_ratio_K", "grad_steps_per_decade",
                    "grad_steps_per_decade_init"):
            row[f"{key}_mean"] = _mean(rs, key)
        if row["test_bpc_mean"] is not None:
            row["test_bpc_std"] = _stats([r["test_bpc"] for r in rs])[1]
        row["vs_ngram_bpc"] = bpc_mean - ngram["val_bpc"]
        falls = [f for f in (late_fall(r.get("history") or []) for r in rs) if f is not None]
        row["late_fall_bpc"] = float(np.mean(falls)) if falls else None
        row["verdict"] = verdict(row, ngram, _budget_words(config, rs[0]))
        summary.append(row)
    return {"settings": _settings(config), "ngram": ngram, "summary": summary,
            "comparisons": _comparisons(summary), "runs": runs, "noise_rule": NOISE_RULE,
            "rankings": rankings(runs, summary)}


# -- convergence and rankings ---------------------------------------------------------------------

STILL_FALLING_BPC = 0.01  # a fall over the last quarter of the run larger than this is "falling"


def late_fall(history: list[dict]) -> float | None:
    """How far val bpc fell over the last quarter of a run's steps (the last evaluation against
    the interpolated value three quarters in); None with fewer than two evaluations."""
    if len(history) < 2:
        return None
    steps = [h["step"] for h in history]
    bpc = [h["val_bpc"] for h in history]
    return float(np.interp(0.75 * steps[-1], steps, bpc) - bpc[-1])


def _convergence_words(fall: float | None, behind: bool) -> str:
    if fall is None:
        return ""
    if fall > STILL_FALLING_BPC:
        return (f" Its val bpc was still falling at the end ({fall:.3f} bpc over the last quarter "
                f"of its steps): a longer budget would lower it.")
    return (f" Its val bpc had levelled off ({fall:+.3f} bpc over the last quarter of its steps, "
            f"within {STILL_FALLING_BPC})" + (
                ": a longer budget alone is unlikely to close the gap; a larger model, another "
                "learning rate or more data might." if behind else
                ": this is about where these settings take it."))


def _at(runs: list[dict], key: str, x: float) -> float | None:
    """The mean over runs of val bpc at ``x`` steps or seconds, interpolated between evaluations
    (None where a run has no evaluation at or before ``x``)."""
    values = []
    for r in runs:
        h = r.get("history") or []
        xs = [e[key] for e in h]
        if not xs or x < xs[0]:
            return None
        values.append(float(np.interp(x, xs, [e["val_bpc"] for e in h])))
    return float(np.mean(values))


def rankings(runs: list[dict], summary: list[dict]) -> list[dict]:
    """For each size and depth, the cells ranked at equal steps and at equal wall clock (the
    most steps and seconds every cell reached), and where two cells' step curves cross."""
    out = []
    trained = [row for row in summary if row["num_layers"] is not None]
    by_group = compare_plots.groups(runs)
    for variant in dict.fromkeys((row["target_params"], row["num_layers"]) for row in trained):
        rows = [row for row in trained if (row["target_params"], row["num_layers"]) == variant]
        curves = {row["group"]: [r for r in by_group[row["group"]] if r.get("history")]
                  for row in rows}
        curves = {g: rs for g, rs in curves.items() if rs}
        if len(curves) < 2:
            continue
        step = min(r["history"][-1]["step"] for rs in curves.values() for r in rs)
        second = min(r["history"][-1]["elapsed_s"] for rs in curves.values() for r in rs)
        at_step = {g: _at(rs, "step", step) for g, rs in curves.items()}
        at_time = {g: _at(rs, "elapsed_s", second) for g, rs in curves.items()}
        if any(v is None for v in at_time.values()):  # a cell not yet evaluated by then
            at_time = {}
        speed = {row["group"]: row["train_chars_per_s_mean"] for row in rows}
        out.append({"target_params": variant[0], "num_layers": variant[1],
                    "step": step, "seconds": second,
                    "by_steps": _ranked(at_step), "by_time": _ranked(at_time),
                    "bpc_at_step": at_step, "bpc_at_time": at_time,
                    "train_chars_per_s": speed, "crossings": _crossings(curves)})
    return out


def _ranked(values: dict[str, float | None]) -> list[str]:
    return sorted((g for g, v in values.items() if v is not None), key=lambda g: values[g])


def _crossings(curves: dict[str, list[dict]]) -> list[dict]:
    """Pairs of cells whose mean val bpc changes order between evaluations at common steps."""
    common = sorted(set.intersection(*({e["step"] for e in r["history"]}
                                       for rs in curves.values() for r in rs)))
    mean = {g: [_at(rs, "step", s) for s in common] for g, rs in curves.items()}
    found = []
    names = list(curves)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for k in range(1, len(common)):
                before = mean[a][k - 1] - mean[b][k - 1]
                after = mean[a][k] - mean[b][k]
                if before * after < 0:
                    found.append({"a": a, "b": b, "between_steps": [common[k - 1], common[k]],
                                  "ahead_after": a if after < 0 else b})
    return found


def _comparisons(summary: list[dict]) -> list[dict]:
    out = []
    for i, a in enumerate(summary):
        for b in summary[i + 1:]:
            if not _same_size(a, b):
                continue
            delta = b["val_bpc_mean"] - a["val_bpc_mean"]
            noise = 2 * math.sqrt(a["val_bpc_std"] ** 2 / a["runs"]
                                  + b["val_bpc_std"] ** 2 / b["runs"])
            within = None if min(a["runs"], b["runs"]) < 2 else abs(delta) < noise
            out.append({"a": a["group"], "b": b["group"], "delta_bpc": delta, "noise_bpc": noise,
                        "within_noise": within})
    return out


def _same_size(a: dict, b: dict) -> bool:
    """Whether two rows are compared with each other: cells of a grid at the same size and depth
    (a checkpoint trained elsewhere is compared with every row)."""
    if a["num_layers"] is None or b["num_layers"] is None:
        return True
    return (a["target_params"], a["num_layers"]) == (b["target_params"], b["num_layers"])


def verdict(row: dict, ngram: dict, budget: str) -> str:
    """One plain sentence on where a cell stands against the n-gram baseline."""
    delta, n = row["vs_ngram_bpc"], row["runs"]
    noise = 2 * row["val_bpc_std"] / math.sqrt(n) if n > 1 else 0.0
    base = f"the order-{ngram['order']} n-gram baseline ({ngram['val_bpc']:.3f} bpc)"
    fall = row.get("late_fall_bpc")
    if n > 1 and abs(delta) < noise:
        return (f"{md(row['group'])} is level with {base} within seed noise after {budget}."
                + _convergence_words(fall, True))
    if delta < 0:
        return (f"{md(row['group'])} beats {base} by {-delta:.3f} bpc after {budget}."
                + _convergence_words(fall, False))
    why = _convergence_words(fall, True) or (
        " Short runs may not beat it; give it a longer budget to see what the cell can do.")
    return f"{md(row['group'])} does not beat {base}: it is {delta:.3f} bpc worse after {budget}." \
        + why


def _budget_words(config: CompareConfig, run: dict) -> str:
    if run.get("seed") is None:  # a checkpoint trained elsewhere
        return f"its own training ({run.get('steps')} steps)"
    t = config.train
    return f"{t.max_steps} steps" if t.max_steps else f"{t.max_time:g} minutes"


def _jobs_words(s: dict) -> str:
    jobs = s.get("jobs", 1)
    if jobs == 1:
        return ""
    return (f" {jobs} runs trained at a time, {counted(s['threads_per_run'], 'thread')} each, so "
            f"each run's speed is measured beside the others'.")


_RECIPE_WORDS = {"lr": "lr", "warmup_steps": "warm-up", "weight_decay": "weight decay",
                 "grad_clip": "grad clip"}


def _recipe_words(recipes: dict, warmup_steps: int) -> str:
    """The report's sentence on per-cell recipes (empty without any)."""
    if not recipes:
        return ""
    each = "; ".join(f"{md(cell)} " + ", ".join(f"{_RECIPE_WORDS[k]} {v}" for k, v in r.items())
                     for cell, r in recipes.items())
    why = (" The warm-up is there for the plain RNN, whose first steps at the full rate can blow "
           "up; the gated cells train stably without one."
           if warmup_steps and any(r.get("warmup_steps") == 0 for r in recipes.values()) else "")
    return (f" Per-cell recipes, in place of the settings above for that cell: {each} (the "
            f"ranking then compares cell and recipe together).{why}")


def _settings(config: CompareConfig) -> dict:
    shared = {k: v for k, v in asdict(config.train).items()
              if k not in ("cell", "hidden_size", "seed", "out", "resume", "progress")}
    return {"train": shared, "cells": config.cells, "checkpoints": config.checkpoints,
            "params": config.params, "hidden_size": config.hidden_size, "seeds": config.seeds,
            "layers": config.layers, "targets": config.targets, "grid": config.grid,
            "recipes": config.recipes,
            "first_seed": config.train.seed, "isolated": config.isolate,
            "jobs": config.jobs or 1, "threads_per_run": config.threads_per_run(config.jobs or 1),
            "measure": asdict(config.measure), "out": config.out}


# -- tables --------------------------------------------------------------------------------------

def md(text: object) -> str:
    """User-given text (file names, labels, prompts) made inert in markdown: no HTML, no table
    breaks, however a viewer renders the report."""
    return html.escape(str(text), quote=False).replace("|", "\\|")


def fenced(text: str) -> list[str]:
    """A code block that ``text`` cannot close: its fence is longer than any backtick run in it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, text, fence]


def _fmt(value, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _table(columns: list[tuple[str, object]], rows: list[dict]) -> list[str]:
    """Markdown lines for ``rows``; each column is (header, row → text)."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    return lines


def summary_table(results: dict) -> str:
    """The markdown table: one row per cell (mean ± sd over seeds) and the n-gram baseline."""
    summary, ngram = results["summary"], results["ngram"]
    k = results["settings"]["measure"]["probe_k"]

    def decays(s: dict, key: str) -> str:
        return "/".join(format_decay(d, k) for d in s[key] if d is not None) or "–"

    columns = [
        ("cell", lambda s: md(s["group"])), ("params", lambda s: f"{s['params']:,}"),
        ("hidden", lambda s: str(s["hidden_size"])), ("seeds", lambda s: str(s["runs"])),
        ("val bpc (mean ± sd)", _bpc),
        ("val loss (nats)", lambda s: _fmt(s["val_loss_mean"], ".4f")),
        ("test bpc", lambda s: _fmt(s["test_bpc_mean"])),
        ("train chars/s", lambda s: _fmt(s["train_chars_per_s_mean"], ",.0f")),
        ("sample chars/s", lambda s: _fmt(s["sample_chars_per_s_mean"], ",.0f")),
        ("wall s", lambda s: _fmt(s["wall_s_mean"], ".1f")),
        ("peak RSS MB", lambda s: _fmt(s["peak_rss_mb_mean"], ",.0f")),
        (f"grad decay k, init → trained (K={k})",
         lambda s: f"{decays(s, 'grad_decay_k_init')} → {decays(s, 'grad_decay_k')}"),
        ("steps per 10× grad fall, init → trained",
         lambda s: f"{_fmt(s['grad_steps_per_decade_init_mean'], '.1f')} → "
                   f"{_fmt(s['grad_steps_per_decade_mean'], '.1f')}")]
    absent = {"test bpc": "test_bpc_mean", "peak RSS MB": "peak_rss_mb_mean"}
    columns = [(h, f) for h, f in columns  # no empty test or memory column
               if h not in absent or any(s[absent[h]] is not None for s in summary)]
    lines = _table(columns, summary)
    baseline = {"cell": f"n-gram KN (order {ngram['order']})",
                "val bpc (mean ± sd)": f"{ngram['val_bpc']:.3f}",
                "val loss (nats)": f"{ngram['val_loss']:.4f}",
                "test bpc": _fmt(ngram.get("test_bpc"))}
    lines.append("| " + " | ".join(baseline.get(h, "–") for h, _ in columns) + " |")
    return "\n".join(lines)


def runs_table(results: dict) -> str:
    """Every run on its own row."""
    k = results["settings"]["measure"]["probe_k"]
    columns = [
        ("run", lambda r: md(r["label"])), ("cell", lambda r: md(r["cell"])),
        ("params", lambda r: f"{r['params']:,}"), ("hidden", lambda r: str(r["hidden_size"])),
        ("steps", lambda r: str(r.get("steps"))), ("val loss", lambda r: f"{r['val_loss']:.4f}"),
        ("val bpc", lambda r: f"{r['val_bpc']:.3f}"),
        ("test bpc", lambda r: _fmt(r.get("test_bpc"))),
        ("train chars/s", lambda r: _fmt(r.get("train_chars_per_s"), ",.0f")),
        ("sample chars/s", lambda r: _fmt(r.get("sample_chars_per_s"), ",.0f")),
        ("wall s", lambda r: _fmt(r.get("wall_s"), ".1f")),
        ("peak RSS MB", lambda r: _fmt(r.get("peak_rss_mb"), ",.0f")),
        ("RSS before training MB", lambda r: _fmt(r.get("rss_before_train_mb"), ",.0f")),
        ("decay k init", lambda r: _decay(r.get("grad_decay_k_init"), k)),
        ("decay k", lambda r: _decay(r.get("grad_decay_k"), k)),
        (f"‖∂‖ at k={k} / k=0", lambda r: _fmt(r.get("grad_ratio_K"), ".1e"))]
    return "\n".join(_table(columns, results["runs"]))


def gate_rows(results: dict) -> list[dict]:
    """Per gated cell, layer and gate: the mean over units (and seeds) of the fraction of steps
    left- and right-saturated, and how many units are saturated that way most of the time."""
    rows = []
    for name, runs in compare_plots.groups(results["runs"]).items():
        measured = [r["gates"] for r in runs if r.get("gates")]
        for i, g in enumerate(measured[0] if measured else []):
            per_run = [m[i] for m in measured]
            rows.append({"group": name, "layer": g["layer"], "gate": g["gate"],
                         "left": float(np.mean([np.mean(x["left"]) for x in per_run])),
                         "right": float(np.mean([np.mean(x["right"]) for x in per_run])),
                         "mostly_left": float(np.mean([np.sum(np.asarray(x["left"]) > 0.5)
                                                       for x in per_run])),
                         "mostly_right": float(np.mean([np.sum(np.asarray(x["right"]) > 0.5)
                                                        for x in per_run])),
                         "units": len(g["left"]), "runs": len(per_run)})
    return rows


def gates_table(results: dict) -> str:
    columns = [("cell", lambda r: md(r["group"])), ("layer", lambda r: str(r["layer"])),
               ("gate", lambda r: f"{r['gate']} ({SIGMOID_GATES[r['gate']]})"),
               ("left-saturated", lambda r: f"{r['left']:.3f}"),
               ("right-saturated", lambda r: f"{r['right']:.3f}"),
               ("units mostly left", lambda r: f"{r['mostly_left']:g} of {r['units']}"),
               ("units mostly right", lambda r: f"{r['mostly_right']:g} of {r['units']}")]
    return "\n".join(_table(columns, gate_rows(results)))


def _gates_section(results: dict, plotted: bool) -> list[str]:
    rows = gate_rows(results)
    if not rows:
        return []
    chars = next(r.get("gate_chars") for r in results["runs"] if r.get("gates"))
    runs = {r["group"]: r["runs"] for r in rows}
    averaged = ("mean over units and the " + seeds(max(runs.values())) + " of each cell"
                if max(runs.values()) > 1 else "mean over units")
    return ["## Gate saturation", "",
            *(["![gate saturation](gate_saturation.png)", ""] if plotted else []),
            (f"How each sigmoid gate is used, read on the first {chars:,} val characters: the "
             f"fraction of steps at which it is left-saturated (< 0.1, nearly shut) or "
             f"right-saturated (> 0.9, nearly open), {averaged}; a unit is *mostly* left or "
             f"right when it is saturated that way more than half the time. The figure puts "
             f"every unit of the first run of each cell at (left, right), as Karpathy, Johnson & "
             f"Fei-Fei (2015) do; units near neither axis use the gate's middle range. A cell "
             f"without gates (the plain RNN) has no row."), "", gates_table(results), ""]


def _depths(layers: list[int]) -> str:
    return counted(layers[0], "layer") if len(layers) == 1 else \
        f"{' / '.join(map(str, layers))} layers"


def grid_table(results: dict) -> str:
    """Val bpc per cell and depth (rows) and parameter target (columns): mean ± sd over seeds."""
    rows = [r for r in results["summary"] if r["num_layers"] is not None]
    targets = sorted({r["target_params"] for r in rows}, key=lambda p: p or 0)
    lines = ["| cell | layers | " + " | ".join(
        f"{p:,} params" if p else "val bpc" for p in targets) + " |",
             "|" + "---|" * (2 + len(targets))]
    for cell, layers in dict.fromkeys((r["cell"], r["num_layers"]) for r in rows):
        found = {r["target_params"]: r for r in rows
                 if (r["cell"], r["num_layers"]) == (cell, layers)}
        lines.append(f"| {md(cell)} | {layers} | " + " | ".join(
            _bpc(found[p]) if p in found else "–" for p in targets) + " |")
    return "\n".join(lines)


def _bpc(row: dict) -> str:
    """Mean val bpc, ± the sd over seeds (none from one run)."""
    return f"{row['val_bpc_mean']:.3f}" + (f" ± {row['val_bpc_std']:.3f}" if row["runs"] > 1
                                           else "")


def _decay(k: int | None, max_k: int) -> str:
    return "–" if k is None else format_decay(k, max_k)  # – : no recurrent state to probe


def json_line(results: dict) -> dict:
    """The object ``--json`` prints: runs without their long arrays, the summary, the baseline."""
    return {"runs": [{k: v for k, v in r.items() if k not in _LEAN} for r in results["runs"]],
            "summary": results["summary"], "comparisons": results["comparisons"],
            "gates": gate_rows(results),
            "ngram": {k: v for k, v in results["ngram"].items() if k != "val_bpc_by_order"},
            "out": results["settings"]["out"]}


# -- files ---------------------------------------------------------------------------------------

def write_outputs(results: dict, out: Path) -> None:
    """results.json, the two plots and report.md in ``out``."""
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=2).encode())
    compare_plots.learning_curves(results, out / "learning_curves.png")
    compare_plots.gradient_flow_plot(results, out / "gradient_flow.png")
    plotted = compare_plots.gate_saturation_plot(results, out / "gate_saturation.png")
    if results["settings"].get("grid"):
        compare_plots.grid_plot(results, out / "grid.png")
    atomic_write_bytes(out / "report.md", report(results, plotted).encode())


def report(results: dict, gates_plotted: bool = False) -> str:
    """The whole report as markdown."""
    s, ngram, m = results["settings"], results["ngram"], results["settings"]["measure"]
    t, k = s["train"], m["probe_k"]
    sizing = (f"hidden size solved per cell for {' / '.join(f'{p:,}' for p in s['targets'])} "
              f"parameters (exact counts below)"
              if s["params"] else f"hidden size {s['hidden_size']} for every cell")
    budget = f"{t['max_steps']} steps" if t["max_steps"] else f"{t['max_time']:g} minutes"
    data = (f"Data: {md(', '.join(t['data']) or 'stdlib')} (val fraction {t['val_fraction']}, test "
            f"fraction {t['test_fraction']}).")
    settings = data + (
        f" Cells: {md(', '.join(s['cells']))}; {sizing}; "
        f"{_depths(s.get('layers') or [t['num_layers']])}, embedding {t['embedding_dim']}, dropout "
        f"{t['dropout']}, impl {t['impl']}, init {t.get('init', 'default')}. Every run: {budget}, "
        f"batch {t['batch_size']} × seq {t['seq_len']}, lr {t['lr']} ({t['schedule']}, warm-up "
        f"{t['warmup_steps']}), grad clip {t['grad_clip']}, window {t['window']}, "
        f"{seeds(s['seeds'])} from {s['first_seed']}."
        f"{_recipe_words(s.get('recipes') or {}, t['warmup_steps'])} Same corpus, splits, "
        f"vocabulary, batches (in the same order) and "
        f"{'budget' if s.get('recipes') else 'optimiser'} for every cell; "
        f"runs go seed by seed through every cell, so a machine that slows down hurts all cells "
        f"alike." + _jobs_words(s))
    if not s["cells"]:
        settings = data
    if s["checkpoints"]:
        settings += (f" Checkpoints trained elsewhere, evaluated on the same split with their own "
                     f"vocabularies: {md(', '.join(s['checkpoints']))}.")
    tried = [int(k) for k in ngram.get("val_bpc_by_order") or {}]
    ceiling = (" (the highest order tried: a higher one may score lower still)"
               if tried and ngram["order"] == max(tried) else "")
    baseline = (
        f"Interpolated modified Kneser–Ney, order {ngram['order']} chosen on val{ceiling}: "
        f"{ngram['val_bpc']:.3f} val bpc. The n-gram scores every val character including the "
        f"first; the neural full pass scores characters 1..N−1 (one character in N, negligible).")
    flow = (
        f"‖∂L_t/∂h_{{t−k}}‖ for k = 0…{k}, averaged over {m['probe_windows']} windows of the val "
        f"split after a {m['probe_warmup']}-character warm-up; dashed: at initialisation, solid: "
        f"trained. *Decay k* is the first k where the norm falls below 1/10 of its k = 0 value "
        f"(\">{k}\": never within {k} steps). k = 0 is the direct path through the output layer, "
        f"so a cell can drop at k = 1 before its recurrence matters; *steps per 10× grad fall* "
        f"reads the recurrence alone, from a straight line through log10 ‖∂‖ over k = 1…{k} "
        f"(larger: the gradient reaches further back; –: it does not fall).")
    references = [r for r in results["runs"] if not is_recurrent(r["cell"])]
    if references:
        r = references[0]
        settings += (
            f" **{md(r['cell'])}** is the reference a recurrent cell is held to, as the n-gram "
            f"is: a small causal transformer in nanoGPT's shape (pre-norm blocks, causal "
            f"self-attention, learned positions), width {r['hidden_size']} for "
            f"{r['params']:,} parameters, trained on fresh windows (no state carried) and "
            f"scored by the same full pass, attending to at most "
            f"{counted(s['train']['context'] or s['train']['seq_len'], 'character')} of "
            f"history. It "
            f"has no recurrent state, so no gradient flow through time and no gates.")
    impls = {row["group"]: row["impl"] for row in results["summary"]}
    if len(set(impls.values())) > 1:
        settings += (" Implementations differ (" + ", ".join(f"{g}: {i}" for g, i in impls.items())
                     + "): the speed columns compare implementations as much as cells.")
    grid = ["## Grid", "", "![grid](grid.png)", "",
            ("Val bpc of every cell at every size and depth (mean ± sd over seeds); the figure "
             "puts each at its exact parameter count, with a band over the seeds. Cells are "
             "compared with each other at the same size and depth."), "",
            grid_table(results), ""] if s.get("grid") else []
    parts = [
        "# charlm compare", "", settings, "", summary_table(results), "", *grid,
        "## Against the n-gram baseline", "", baseline, "",
        *[f"- {row['verdict']}" for row in results["summary"]], "",
        "## Between cells", "", f"Rule: {results['noise_rule']}.", "",
        *[_comparison_line(c) for c in results["comparisons"]], "",
        *rankings_text(results.get("rankings") or []),
        "## Learning curves", "", "![learning curves](learning_curves.png)", "",
        ("Val bpc of a full pass over the val split, against steps and against seconds of the "
         "run's clock (validation included); bands span the seeds."), "",
        "## Gradient flow", "", "![gradient flow](gradient_flow.png)", "", flow, "",
        *_gates_section(results, gates_plotted),
        "## Runs", "", runs_table(results), "", _measures_note(s), "",
        "## Samples", "",
        f"Temperature {m['temperature']}, prompt {md(repr(m['prompt']))}, the first run of each "
        f"cell.", ""]
    seen = set()
    for r in results["runs"]:
        if r.get("sample") is not None and (r.get("seed") is None or r["cell"] not in seen):
            seen.add(r["cell"])
            parts += [f"**{md(r['label'])}**", "", *fenced(r["sample"][:400]), ""]
    parts += [f"Note on {md(r['label'])}: {md(r['note'])}." for r in results["runs"]
              if r.get("note")]
    return "\n".join(parts) + "\n"


def rankings_text(rankings: list[dict]) -> list[str]:
    if not rankings:
        return []
    lines = ["## Equal steps and equal wall clock", "",
             ("Each cell's mean val bpc where every cell had trained as many steps, and as many "
              "seconds of its clock (validation included), interpolated between evaluations; "
              "best first."), ""]
    for r in rankings:
        head = "" if len(rankings) == 1 else \
            f"{r['target_params']:,} parameters, {counted(r['num_layers'], 'layer')}: "
        steps = ", ".join(f"{md(g)} {r['bpc_at_step'][g]:.3f}" for g in r["by_steps"])
        time_ = ", ".join(f"{md(g)} {r['bpc_at_time'][g]:.3f}" for g in r["by_time"])
        when = f"{r['seconds']:.{0 if r['seconds'] >= 10 else 1}f} s"
        time_ = f"at {when}: {time_}" if time_ else (
            f"no time at which every cell had been evaluated (the fastest stopped at {when})")
        lines.append(f"- {head}at step {r['step']:,}: {steps}; {time_}.")
        if r["by_time"] and r["by_steps"] != r["by_time"]:
            speeds = ", ".join(f"{md(g)} {v:,.0f}" for g, v in r["train_chars_per_s"].items()
                               if v is not None)
            lines.append(f"  The orders differ because the cells train at different speeds "
                         f"(train chars/s: {speeds}): in the same time a cheaper step buys more "
                         f"steps. That is the speed of each kernel on this machine, not a "
                         f"property of the cell's equations.")
        for c in r["crossings"]:
            lines.append(f"  The curves of {md(c['a'])} and {md(c['b'])} cross between steps "
                         f"{c['between_steps'][0]:,} and {c['between_steps'][1]:,}; "
                         f"{md(c['ahead_after'])} is ahead after.")
    return [*lines, ""]


def _comparison_line(c: dict) -> str:
    said = {None: "one seed each: no noise estimate", True: "within seed noise",
               False: "larger than seed noise"}[c["within_noise"]]
    return (f"- {md(c['b'])} − {md(c['a'])}: Δ = {c['delta_bpc']:+.3f} bpc, noise band "
            f"{c['noise_bpc']:.3f}: {said}.")


def _measures_note(s: dict) -> str:
    m = s["measure"]
    speed = (f"Train chars/s: training characters over the time spent in training steps "
             f"(validation excluded). Sample chars/s: {m['sample_length']} characters at batch 1 "
             f"on the CPU at temperature {m['temperature']}, the best of {SAMPLE_REPEATS} timings, "
             f"in the run's process after training. Wall s: the run's clock, validation included. ")
    return speed + _memory_note(s)


def _memory_note(s: dict) -> str:
    if not s["isolated"]:
        return "Peak memory: not measured (the runs shared one process)."
    return ("Peak RSS: the largest resident memory of each run's own training process up to the "
            "end of training (VmHWM in /proc/self/status; ru_maxrss where there is no /proc). It "
            "includes the Python, torch and Lightning runtime, shown as *RSS before training* "
            "(resident memory when training starts); when the two are close, the model's own "
            "memory is lost under the runtime's and the cells do not differ in memory at this "
            "size. On a GPU, run.json also records peak_cuda_mb "
            "(torch.cuda.max_memory_allocated), the model's own footprint.")


__all__ = ["NOISE_RULE", "json_line", "report", "runs_table", "summarise", "summary_table",
           "write_outputs"]
