"""The plots of ``charlm compare``: learning curves, gradient flow, gate saturation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from charlm.atomic import atomic_write_bytes
from charlm.lab.figures import png_bytes
from charlm.lab.units import SIGMOID_GATES


def counted(n: int, noun: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def seeds(n: int) -> str:
    return counted(n, "seed")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def groups(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs by cell (the seeds of one cell together); a checkpoint trained elsewhere alone."""
    out: dict[str, list[dict]] = {}
    for r in runs:
        key = (r.get("group") or r["cell"]) if r.get("seed") is not None else r["label"]
        out.setdefault(key, []).append(r)
    return out


def learning_curves(results: dict, path: Path) -> None:
    """Val bpc against steps and against seconds; a line per cell (mean), a band over seeds."""
    plt = _pyplot()
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, (name, runs) in enumerate(groups(results["runs"]).items()):
        histories = [r["history"] for r in runs if r.get("history")]
        if not histories:
            continue  # a checkpoint trained elsewhere has no curve here
        colour = f"C{i}"
        steps = [[h["step"] for h in hist] for hist in histories]
        if all(s == steps[0] for s in steps):  # a step budget: the seeds share the x values
            bpc = np.array([[h["val_bpc"] for h in hist] for hist in histories])  # (seeds, points)
            secs = np.array([[h["elapsed_s"] for h in hist] for hist in histories]).mean(0)
            for ax, x in ((by_step, steps[0]), (by_time, secs)):
                ax.plot(x, bpc.mean(0), color=colour, label=f"{name} ({seeds(len(histories))})")
                if len(histories) > 1:
                    ax.fill_between(x, bpc.min(0), bpc.max(0), color=colour, alpha=0.2)
        else:  # a time budget: each seed has its own steps, drawn on its own
            for j, hist in enumerate(histories):
                label = f"{name} ({seeds(len(histories))})" if j == 0 else None
                y = [h["val_bpc"] for h in hist]
                by_step.plot([h["step"] for h in hist], y, color=colour, alpha=0.7, label=label)
                by_time.plot([h["elapsed_s"] for h in hist], y, color=colour, alpha=0.7)
    ngram = results["ngram"]
    for ax in (by_step, by_time):
        ax.axhline(ngram["val_bpc"], color="grey", linestyle=":",
                   label=f"n-gram KN order {ngram['order']}" if ax is by_step else None)
        ax.grid(alpha=0.3)
    by_step.set(xlabel="step", ylabel="val bpc (full pass)", title="against steps")
    by_time.set(xlabel="seconds of the run (validation included)", title="against wall clock")
    by_step.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_bytes(path, png_bytes(fig))


def _geometric_mean(rows: list[list[float]]) -> np.ndarray:
    # norms span many orders of magnitude across windows and seeds: average their logs
    return np.exp(np.log(np.maximum(np.asarray(rows, dtype=float), 1e-38)).mean(0))


def gradient_flow_plot(results: dict, path: Path) -> None:
    """‖∂L_t/∂h_{t−k}‖ / ‖∂L_t/∂h_t‖ against k on a log axis: dashed at init, solid trained."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, runs) in enumerate(groups(results["runs"]).items()):
        if not runs[0].get("grad_norms"):
            continue  # a transformer has no recurrent state to send a gradient through
        for key, style, when in (("grad_norms_init", "--", "init"), ("grad_norms", "-", "trained")):
            norms = _geometric_mean([r[key] for r in runs])
            ax.semilogy(np.arange(len(norms)), norms / norms[0], linestyle=style, color=f"C{i}",
                        label=f"{name} {when}")
    ax.axhline(0.1, color="grey", linestyle=":", label="1/10 of k = 0 (decay k)")
    ax.set(xlabel="k (steps back)",
           ylabel=r"$\|\partial L_t / \partial h_{t-k}\|$ relative to k = 0",
           title="Gradient flow through time")
    ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-12))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    atomic_write_bytes(path, png_bytes(fig))


def gate_saturation_plot(results: dict, path: Path) -> bool:
    """The 2015 paper's scatter, per gated cell and layer (the first run of each cell): each unit
    of each gate at (fraction of steps left-saturated, fraction right-saturated). False, and no
    file, when no run has gates."""
    panels = [(name, layer, [g for g in runs[0]["gates"] if g["layer"] == layer])
              for name, runs in groups(results["runs"]).items() if runs[0].get("gates")
              for layer in sorted({g["layer"] for g in runs[0]["gates"]})]
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.6), squeeze=False,
                             sharey=True)
    for ax, (name, layer, gates) in zip(axes[0], panels, strict=True):
        for g in gates:
            name_of = f"{g['gate']} ({SIGMOID_GATES[g['gate']]})"
            ax.scatter(g["left"], g["right"], s=9, alpha=0.6, label=name_of,
                       color=GATE_COLOURS.get(g["gate"]))
        ax.plot([0, 1], [1, 0], color="grey", linewidth=0.6, linestyle=":")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{name}, layer {layer}",
               xlabel="fraction left-saturated (< 0.1)")
        ax.legend(fontsize=7, loc="upper right")
    axes[0][0].set_ylabel("fraction right-saturated (> 0.9)")
    fig.tight_layout()
    atomic_write_bytes(path, png_bytes(fig))
    return True


def grid_plot(results: dict, path: Path) -> None:
    """Val bpc against parameters (log axis), a line per cell and depth, a band over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    rows = [r for r in results["summary"] if r["num_layers"] is not None]
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    depths = sorted({r["num_layers"] for r in rows})
    for cell, layers in dict.fromkeys((r["cell"], r["num_layers"]) for r in rows):
        line = sorted((r for r in rows if (r["cell"], r["num_layers"]) == (cell, layers)),
                      key=lambda r: r["params"])
        x = [r["params"] for r in line]
        ax.plot(x, [r["val_bpc_mean"] for r in line], marker="o",
                linestyle=("-", "--", ":", "-.")[depths.index(layers) % 4],
                color=f"C{cells.index(cell)}", label=f"{cell}, {counted(layers, 'layer')}")
        ax.fill_between(x, [r["val_bpc_min"] for r in line], [r["val_bpc_max"] for r in line],
                        color=f"C{cells.index(cell)}", alpha=0.15, linewidth=0)
    ax.axhline(results["ngram"]["val_bpc"], color="grey", linestyle=":",
               label=f"{results['ngram']['order']}-gram baseline")
    ax.set_xscale("log")
    ax.set(xlabel="parameters", ylabel="val bpc (full pass)",
           title=f"Cells by size and depth ({seeds(results['settings']['seeds'])})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_bytes(path, png_bytes(fig))


GATE_COLOURS = {"i": "C0", "f": "C1", "o": "C2", "r": "C3", "z": "C4"}

__all__ = ["counted", "gate_saturation_plot", "gradient_flow_plot", "grid_plot", "groups",
           "learning_curves", "seeds"]
