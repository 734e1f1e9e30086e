"""``charlm visualize`` and ``charlm inspect``: read a checkpoint's units on a text, report, draw.

    checkpoint + text ──trace──▶ Activations ──▶ finder table, gate-saturation table (printed)
                                             └─▶ PAGE.html (self-contained) + PAGE_gates.png

The analysis lives in ``inspect_units``, the HTML in ``visualize_page``; this module reads the
inputs (checking what a user typed), runs the analysis once and writes the files.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import load
from .data import load_corpus
from .errors import CharlmError
from .inspect_units import (
    Activations,
    GateStats,
    UnitMatch,
    find_units,
    gate_saturation,
    trace_text,
)
from .model import ModelConfig, is_recurrent
from .vocab import CharVocab, codepoints, printable


@dataclass
class Inspection:
    """Everything learnt about a checkpoint on one text."""

    checkpoint: str
    config: ModelConfig
    vocab: CharVocab
    source: str                # where the text came from, for reports
    acts: Activations
    matches: list[UnitMatch]   # the finder's best units per feature
    absent: list[str]          # features constant over the text
    stats: list[GateStats]     # saturation of every sigmoid gate, per layer
    notes: list[str]           # skipped characters, cells that could not be traced

    def to_json(self) -> dict:
        """Plain data for ``--json``: the finder's units and the gate statistics (per unit too)."""
        return {
            "checkpoint": self.checkpoint, "cell": self.config.cell, "chars": len(self.acts.text),
            "units": [{"feature": m.feature, "layer": m.layer, "kind": m.kind, "unit": m.unit,
                       "r": round(m.r, 4)} for m in self.matches],
            "absent_features": self.absent,
            "gates": [{"layer": s.layer, "gate": s.gate, "left": float(s.left.mean()),
                       "right": float(s.right.mean()), "left_per_unit": s.left.round(4).tolist(),
                       "right_per_unit": s.right.round(4).tolist()} for s in self.stats],
            "notes": self.notes,
        }


def known_text(text: str, vocab: CharVocab, limit: int) -> tuple[str, dict[str, int]]:
    """The first ``limit`` characters of ``text`` that the model knows, and what was skipped
    before the last of them (character → count)."""
    cps = codepoints(text)
    known = vocab.lookup(cps) >= 0
    kept = np.flatnonzero(known)[:limit]
    end = int(kept[-1]) + 1 if len(kept) else len(cps)
    cps, known = cps[:end], known[:end]
    skipped = {chr(c): int(n) for c, n in zip(*np.unique(cps[~known], return_counts=True))}
    return cps[known].tobytes().decode("utf-32-le", "surrogatepass"), skipped


def read_text(vocab: CharVocab, *, text_file: str | None = None, data: list[str] | None = None,
              chars: int = 2000, encoding: str = "utf-8",
              **corpus_options) -> tuple[str, str, str]:
    """The text to inspect, from a file (``--text``) or a corpus source (``--data``): the text,
    where it came from, and a message naming the characters outside the model's vocabulary that
    were skipped ("" when there were none)."""
    if bool(text_file) == bool(data):
        raise CharlmError("pass either --text FILE or --data SOURCE (exactly one)")
    if chars < 2:
        raise CharlmError(f"--chars must be at least 2, not {chars}")
    if text_file:
        try:
            raw = Path(text_file).read_text(encoding=encoding)
        except (FileNotFoundError, IsADirectoryError):
            raise CharlmError(f"no such text file: {text_file}") from None
        except (UnicodeDecodeError, LookupError) as e:
            raise CharlmError(f"{text_file} cannot be read as {encoding} text ({e}); "
                              f"pass the right --encoding") from None
        text, skipped = known_text(raw, vocab, chars)
        source = str(text_file)
    else:  # a corpus source skips unknown characters itself and counts them over all of it
        corpus = load_corpus(list(data or ()), vocab=vocab, encoding=encoding, **corpus_options)
        text = vocab.decode(corpus.ids[:chars])
        skipped, source = corpus.meta.get("unknown") or {}, corpus.meta.get("sources", "")
    if len(text) < 2:
        raise CharlmError(f"{source} has fewer than 2 characters that the model knows")
    if not skipped:
        return text, source, ""
    listed = ", ".join(f"{printable(c)} ×{n}" for c, n in sorted(skipped.items())[:20])
    more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
    return text, source, (f"skipped {sum(skipped.values()):,} characters of {source} outside the "
                          f"model's vocabulary: {listed}{more}")


def inspect_checkpoint(checkpoint: str, *, text_file: str | None = None,
                       data: list[str] | None = None, chars: int = 2000,
                       layer: int | None = None, top: int = 3,
                       **read_options) -> Inspection:
    """Trace ``checkpoint`` over the text, find interpretable units and measure its gates."""
    if top < 1:
        raise CharlmError(f"--top must be at least 1, not {top}")
    model, vocab, _ = load(checkpoint)
    if not is_recurrent(model.config.cell):
        raise CharlmError(f"{checkpoint} is a {model.config.cell}, which has no recurrent units "
                          f"or gates to inspect")
    text, source, skipped = read_text(vocab, text_file=text_file, data=data, chars=chars,
                                      **read_options)
    acts = trace_text(model, vocab, text)
    if layer is not None and layer not in acts.layers:
        raise CharlmError(f"--layer must be one of {', '.join(map(str, acts.layers))} for this "
                          f"model (0 is the first layer), not {layer}")
    matches, absent = find_units(acts, top, None if layer is None else [layer])
    notes = [n for n in (skipped, *acts.notes) if n]
    return Inspection(str(checkpoint), model.config, vocab, source, acts, matches, absent,
                      gate_saturation(acts), notes)


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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    if path is not None:
        Path(path).write_bytes(buf.getvalue())
    return buf.getvalue()


def gates_png_path(page: Path) -> Path:
    """Where the gate plot goes: next to the page, ``PAGE_gates.png``."""
    return page.with_name(page.stem + "_gates.png")


def visualize(checkpoint: str, out: str | Path, *, units: list[int] | None = None,
              layer: int | None = None, **inspect_options) -> tuple[Inspection, Path, Path | None]:
    """Write the self-contained page (and the gate plot next to it); return what was found."""
    from .visualize_page import render_page

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise CharlmError(f"--out must name an .html file, not {out}")
    if not out.parent.is_dir():
        raise CharlmError(f"--out: the folder {out.parent} does not exist")
    insp = inspect_checkpoint(checkpoint, layer=layer, **inspect_options)
    bad = [u for u in units or () if not 0 <= u < insp.acts.hidden_size]
    if bad:
        raise CharlmError(f"--units: the model has units 0..{insp.acts.hidden_size - 1} per layer, "
                          f"so {', '.join(map(str, bad))} do not exist")
    png_path = gates_png_path(out) if insp.stats else None
    png = plot_gates(insp.stats, png_path) if png_path else None
    shown_layer = insp.acts.layers[-1] if layer is None else layer
    out.write_text(render_page(insp, units or [], shown_layer, png), encoding="utf-8")
    return insp, out, png_path


__all__ = ["Inspection", "inspect_checkpoint", "known_text", "plot_gates", "read_text",
           "visualize"]
