"""``charlm inspect``: a checkpoint's units read on a text, what they track, how its gates saturate.

    checkpoint + text ──trace──▶ Activations ──▶ the finder's units, gate saturation (Inspection)

The analysis lives in ``charlm.lab.units``; this module reads the inputs (checking what a user
typed) and runs the analysis once. ``charlm.lab.visualize`` draws what it found.
"""


from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm.data.corpus import load_corpus
from charlm.data.vocab import CharVocab, codepoints, printable
from charlm.errors import CharlmError
from charlm.generation.checkpoint import load
from charlm.lab.units import (
    Activations,
    GateStats,
    UnitMatch,
    find_units,
    gate_saturation,
    trace_text,
)
from charlm.model import ModelConfig, is_recurrent


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
        raise CharlmError("pass either `text` FILE or `data` SOURCE (exactly one)")
    if chars < 2:
        raise CharlmError(f"`chars` must be at least 2, not {chars}")
    if text_file:
        try:
            raw = Path(text_file).read_text(encoding=encoding)
        except (FileNotFoundError, IsADirectoryError):
            raise CharlmError(f"no such text file: {text_file}") from None
        except (UnicodeDecodeError, LookupError) as e:
            raise CharlmError(f"{text_file} cannot be read as {encoding} text ({e}); "
                              f"pass the right `encoding`") from None
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
        raise CharlmError(f"`top` must be at least 1, not {top}")
    model, vocab, _ = load(checkpoint)
    if not is_recurrent(model.config.cell):
        raise CharlmError(f"{checkpoint} is a {model.config.cell}, which has no recurrent units "
                          f"or gates to inspect")
    text, source, skipped = read_text(vocab, text_file=text_file, data=data, chars=chars,
                                      **read_options)
    acts = trace_text(model, vocab, text)
    if layer is not None and layer not in acts.layers:
        raise CharlmError(f"`layer` must be one of {', '.join(map(str, acts.layers))} for this "
                          f"model (0 is the first layer), not {layer}")
    matches, absent = find_units(acts, top, None if layer is None else [layer])
    notes = [n for n in (skipped, *acts.notes) if n]
    return Inspection(str(checkpoint), model.config, vocab, source, acts, matches, absent,
                      gate_saturation(acts), notes)


__all__ = ["Inspection", "inspect_checkpoint", "known_text", "read_text"]
