"""A look inside trained cells: per-character activations, a finder for interpretable units, gates.

    text ──vocab──▶ ids ──explicit twin's trace──▶ every gate, layer and step: kind → (L, T, H)
        ├─▶ finder: Pearson r of every unit's tanh(c) / h with simple features of the text
        └─▶ gates:  fraction of steps each sigmoid gate is left- (< 0.1) or right-saturated (> 0.9),
                    per unit, as in Karpathy, Johnson & Fei-Fei 2015, "Visualizing and
                    Understanding Recurrent Networks" (their figure 3)

The activations come from the explicit cells of ``cells.py`` (the lecture note's equations), which
compute the same function as the fused torch modules with the same parameters, so a trained
checkpoint is copied into its explicit twin and traced. A plugged-in cell without an explicit
implementation still shows the top layer's h, read from its own forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from charlm.data.vocab import CharVocab, codepoints
from charlm.errors import CharlmError
from charlm.model import CharRNN, State
from charlm.model.cells import explicit_twin

UNIT_KINDS = ("tanh(c)", "h")  # what the finder and the page look at (tanh(c) only for LSTMs)
SIGMOID_GATES = {"i": "input", "f": "forget", "o": "output", "r": "reset", "z": "update"}
LEFT, RIGHT = 0.1, 0.9  # the paper's saturation thresholds


@dataclass
class Activations:
    """What a model did on a text: its units at every character, and what it predicted next."""

    text: str
    series: dict[str, np.ndarray]  # kind ("tanh(c)", "h", or a gate "i", "f", ...) → (L', T, H)
    layers: list[int]              # the model layer of each row L' of a series
    top_ids: np.ndarray            # (T, K) the K likeliest next characters after each character
    top_probs: np.ndarray          # (T, K) their probabilities
    notes: list[str] = field(default_factory=list)  # what could not be read, said once

    @property
    def hidden_size(self) -> int:
        return self.series["h"].shape[2]

    def layer(self, kind: str, layer: int) -> np.ndarray:
        """One layer of one kind, (T, H)."""
        return self.series[kind][self.layers.index(layer)]

    def unit_kinds(self) -> list[str]:
        return [k for k in UNIT_KINDS if k in self.series]

    def gates(self) -> list[str]:
        return [k for k in SIGMOID_GATES if k in self.series]


def traceable(model: CharRNN) -> nn.Module | None:
    """The model's recurrent stack as a module with ``trace`` (its explicit twin where it is
    fused), or None if it has none."""
    rnn = model.rnn
    return rnn if callable(getattr(rnn, "trace", None)) else explicit_twin(model)


def _final_state(twin: nn.Module, trace: dict[str, Tensor]) -> State:
    # trace gives every step; the state to carry into the next chunk is its last one, (L, B, H)
    parts = tuple(trace[k][:, :, -1] for k in getattr(twin, "state_keys", ("h",)))
    return parts if len(parts) > 1 else parts[0]


def _kinds(trace: dict[str, Tensor]) -> dict[str, Tensor]:
    """The traced tensors the finder and gate statistics use, each (L, T, H) for batch row 0."""
    out = {}
    if "c" in trace:  # the paper colours text by tanh(c): c itself is unbounded
        out["tanh(c)"] = torch.tanh(trace["c"][:, 0])
    out["h"] = trace["h"][:, 0]
    out.update({g: trace[g][:, 0] for g in SIGMOID_GATES if g in trace})
    return out


@torch.no_grad()
def trace_text(model: CharRNN, vocab: CharVocab, text: str, top_k: int = 5,
               chunk: int = 1024) -> Activations:
    """Run ``model`` over ``text`` from a zero state and record every unit and its predictions."""
    if len(text) < 2:
        raise CharlmError("the text to inspect needs at least 2 characters")
    model.eval()
    ids = torch.as_tensor(vocab.encode(text).astype(np.int64))[None]  # (1, T)
    twin = traceable(model)
    notes = [] if twin is not None else [(
        f"cell {model.config.cell!r} has no explicit implementation, so only the top layer's h "
        f"(from the cell's own forward pass) is shown, and there are no gate statistics")]
    parts: dict[str, list[np.ndarray]] = {}
    top_ids, top_probs = [], []
    state = twin_state = None
    for a in range(0, ids.shape[1], chunk):  # chunks carry the state: memory does not grow with T
        x = ids[:, a:a + chunk]                                     # (1, t)
        logits, state = model(x, state)                             # (1, t, V)
        p, i = logits[0].softmax(-1).topk(min(top_k, len(vocab)), -1)  # (t, K)
        top_probs.append(p.numpy())
        top_ids.append(i.numpy())
        emb = model.embedding(x)                                    # (1, t, E)
        if twin is not None:
            trace = twin.trace(emb, twin_state)                     # name → (L, 1, t, H)
            twin_state = _final_state(twin, trace)
            kinds = _kinds(trace)
        else:
            out, twin_state = model.rnn(emb, twin_state)            # (1, t, H): top layer only
            kinds = {"h": out[0][None]}
        for k, v in kinds.items():
            parts.setdefault(k, []).append(v.float().numpy())
    series = {k: np.concatenate(v, axis=1) for k, v in parts.items()}  # (L, T, H)
    top = model.config.num_layers - 1
    layers = list(range(top + 1)) if twin is not None else [top]
    return Activations(text, series, layers, np.concatenate(top_ids), np.concatenate(top_probs),
                       notes)


# --- features of the text, one value per character: the state *after* reading that character

def text_features(text: str) -> dict[str, np.ndarray]:
    """Simple properties of each position of ``text`` that a unit might track."""
    cps = codepoints(text).astype(np.int64)
    idx = np.arange(len(cps))
    newline = cps == ord("\n")
    # chars since the last newline: 0 on the newline itself, 1 on a line's first character
    pos = idx - np.maximum.accumulate(np.where(newline, idx, -1))
    # bracket depth, never below 0 (text may start mid-expression): a walk reflected at zero,
    # S_t − min(0, min_{s≤t} S_s), is the vectorised max(0, depth + delta)
    delta = np.isin(cps, [ord(c) for c in "([{"]).astype(np.int64) \
        - np.isin(cps, [ord(c) for c in ")]}"])
    walk = np.cumsum(delta)
    depth = walk - np.minimum(0, np.minimum.accumulate(walk))
    # indentation: the leading spaces of the current line, as far as they have been read
    lines = text.split("\n")
    lead = np.array([len(line) - len(line.lstrip(" ")) for line in lines])
    line_of = np.cumsum(newline) - newline  # a newline belongs to the line it ends
    indent = np.minimum(pos, lead[line_of])
    return {
        "inside quotes": np.cumsum(cps == ord('"')) % 2,  # toggles on every "
        "position in line": pos,
        "bracket depth": depth,
        "indentation": indent,
        "inside a word": np.fromiter((c.isalnum() for c in text), bool, len(text)),
        "after a newline": newline,
    }


def correlations(acts: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Pearson r of every column of ``acts`` (T, U) with every column of ``feats`` (T, F): (U, F).

    NaN where either side is constant over the text (r is undefined there).
    """
    a = acts.astype(np.float64) - acts.mean(0)
    f = feats.astype(np.float64) - feats.mean(0)
    den = np.outer(np.sqrt((a * a).sum(0)), np.sqrt((f * f).sum(0)))  # (U, F)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (a.T @ f) / den
    r[den < 1e-12] = np.nan
    return r


@dataclass(frozen=True)
class UnitMatch:
    """One unit that tracks a feature: where it lives and how well (signed Pearson r)."""

    feature: str
    layer: int
    kind: str
    unit: int
    r: float

    @property
    def label(self) -> str:
        return f"layer {self.layer} {self.kind}[{self.unit}]"


def find_units(acts: Activations, top: int = 3,
               layers: list[int] | None = None) -> tuple[list[UnitMatch], list[str]]:
    """The ``top`` units per feature by |r|, and the features absent from (constant over) the
    text."""
    features = text_features(acts.text)
    names = list(features)
    feats = np.stack([features[n] for n in names], 1)                 # (T, F)
    r = {(layer, kind): correlations(acts.layer(kind, layer), feats)  # each (H, F)
         for kind in acts.unit_kinds() for layer in acts.layers
         if layers is None or layer in layers}
    matches, absent = [], []
    for j, name in enumerate(names):
        if np.ptp(feats[:, j]) == 0:
            absent.append(name)
            continue
        scored = [(abs(float(rs[u, j])), layer, kind, int(u)) for (layer, kind), rs in r.items()
                  for u in np.flatnonzero(~np.isnan(rs[:, j]))]
        for _, layer, kind, u in sorted(scored, key=lambda s: -s[0])[:top]:
            matches.append(UnitMatch(name, layer, kind, u, float(r[layer, kind][u, j])))
    return matches, absent


@dataclass
class GateStats:
    """How often one gate of one layer is saturated, per unit (fractions of the text's steps)."""

    layer: int
    gate: str
    left: np.ndarray   # (H,) fraction of steps with activation < 0.1
    right: np.ndarray  # (H,) fraction of steps with activation > 0.9

    @property
    def name(self) -> str:
        return f"{self.gate} ({SIGMOID_GATES[self.gate]})"


def gate_saturation(acts: Activations) -> list[GateStats]:
    """Left/right saturation of every sigmoid gate (LSTM i, f, o; GRU r, z) of every layer."""
    return [GateStats(layer, g, (acts.layer(g, layer) < LEFT).mean(0),
                      (acts.layer(g, layer) > RIGHT).mean(0))
            for layer in acts.layers for g in acts.gates()]


def units_table(matches: list[UnitMatch], absent: list[str]) -> str:
    """The finder's result as a plain-text table."""
    lines = [f"{'feature':<18}{'layer':>6}  {'kind':<8}{'unit':>5}{'r':>8}"]
    shown = None
    for m in matches:
        lines.append(f"{m.feature if m.feature != shown else '':<18}{m.layer:>6}  "
                     f"{m.kind:<8}{m.unit:>5}{m.r:>+8.3f}")
        shown = m.feature
    lines += [f"{name:<18}  (constant over this text: no correlation)" for name in absent]
    return "\n".join(lines)


def gates_table(stats: list[GateStats]) -> str:
    """Gate saturation as a plain-text table: means over units, and how many units lean each way."""
    lines = [(f"{'layer':<6}{'gate':<12}{'left <0.1':>10}{'right >0.9':>11}"
              f"{'units mostly left':>19}{'units mostly right':>20}")]
    for s in stats:
        lines.append(f"{s.layer:<6}{s.name:<12}{s.left.mean():>10.3f}{s.right.mean():>11.3f}"
                     f"{int((s.left > 0.5).sum()):>19}{int((s.right > 0.5).sum()):>20}")
    return "\n".join(lines)


__all__ = ["Activations", "GateStats", "UnitMatch", "correlations", "traceable", "find_units",
           "gate_saturation", "gates_table", "text_features", "trace_text",
           "units_table"]
