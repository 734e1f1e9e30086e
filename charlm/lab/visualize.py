"""``charlm visualize``: the page and the gate plot of what ``charlm.lab.inspection`` found.

    Inspection ──▶ PAGE.html (self-contained, ``charlm.lab.page``) + PAGE_gates.png
"""


from __future__ import annotations

from pathlib import Path

from charlm.atomic import atomic_write_bytes
from charlm.errors import CharlmError
from charlm.lab.figures import png_bytes
from charlm.lab.inspection import Inspection, inspect_checkpoint
from charlm.lab.page import render_page
from charlm.lab.units import (
    GateStats,
)


def plot_gates(stats: list[GateStats], path: Path | None = None) -> bytes:
    """The paper's scatter: per layer, each unit's fraction of time left- vs right-saturated,
    one colour per gate. Returns the PNG and writes it to ``path`` when given."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    layers = sorted({s.layer for s in stats})
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for s in (s for s in stats if s.layer == layer):
            ax.scatter(s.left, s.right, s=12, alpha=0.6, label=s.name)
        ax.plot([0, 1], [1, 0], color="0.7", lw=0.8)  # no unit can be beyond left + right = 1
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=f"layer {layer}",
               xlabel="fraction left-saturated (< 0.1)")
        ax.set_aspect("equal")
    axes[0][0].set_ylabel("fraction right-saturated (> 0.9)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    png = png_bytes(fig)
    if path is not None:
        atomic_write_bytes(Path(path), png)
    return png


def gates_png_path(page: Path) -> Path:
    """Where the gate plot goes: next to the page, ``PAGE_gates.png``."""
    return page.with_name(page.stem + "_gates.png")


def visualize(checkpoint: str, out: str | Path, *, units: list[int] | None = None,
              layer: int | None = None, **inspect_options) -> tuple[Inspection, Path, Path | None]:
    """Write the self-contained page (and the gate plot next to it); return what was found."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise CharlmError(f"`out` must name an .html file, not {out}")
    if not out.parent.is_dir():
        raise CharlmError(f"`out`: the folder {out.parent} does not exist")
    insp = inspect_checkpoint(checkpoint, layer=layer, **inspect_options)
    bad = [u for u in units or () if not 0 <= u < insp.acts.hidden_size]
    if bad:
        raise CharlmError(f"`units`: the model has units 0..{insp.acts.hidden_size - 1} per layer, "
                          f"so {', '.join(map(str, bad))} do not exist")
    png_path = gates_png_path(out) if insp.stats else None
    png = plot_gates(insp.stats, png_path) if png_path else None
    shown_layer = insp.acts.layers[-1] if layer is None else layer
    atomic_write_bytes(out, render_page(insp, units or [], shown_layer, png).encode("utf-8"))
    return insp, out, png_path


__all__ = ["gates_png_path", "plot_gates", "visualize"]
