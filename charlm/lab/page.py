"""The self-contained HTML page of ``charlm visualize``: text coloured by one unit at a time.

Like the figures of Karpathy's "The Unreasonable Effectiveness of Recurrent Neural Networks" (and
Karpathy, Johnson & Fei-Fei 2015): every character's background is the chosen unit's activation
after reading it, −1 red … 0 white … +1 blue. Hovering a character shows the model's five likeliest
next characters, computed here in Python and embedded as JSON.

Safety: the page fetches nothing (inline CSS, JS and a data: image only) and shows untrusted text.
Every piece of text in markup goes through ``html.escape`` (the text itself is one ``<span>``
per character, which alone keeps a tag from forming across characters); the JSON sits in a
non-executing ``<script type="application/json">`` with ``<``, ``>`` and ``&`` written as \\u
escapes, so no ``</script>`` can end it early; and a Content-Security-Policy lets only the page's
own script run (by its sha256), so even a missed escape could not execute an injected script or
handler.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from dataclasses import dataclass, field

import numpy as np

from charlm.data.vocab import printable
from charlm.lab.inspection import Inspection
from charlm.lab.units import Activations

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.meta { color: #555; } .note { background: #fff4d6; border-left: 4px solid #e0a800;
  padding: .4em .7em; margin: .5em 0; }
.controls { position: sticky; top: 0; background: #fff; padding: .5em 0; \
border-bottom: 1px solid #ddd; }
.legend { display: inline-block; width: 10em; height: .9em; vertical-align: middle; margin: 0 .3em;
  background: linear-gradient(to right, rgb(235,50,40), #fff, rgb(40,110,255)); \
border: 1px solid #ccc; }
#text { font: 13px/1.6 ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap;
  word-break: break-all; margin-top: 1em; }
#text span { cursor: default; } #text span:hover { outline: 1px solid #000; }
#tip { position: absolute; display: none; pointer-events: none; background: #fff; \
border: 1px solid #999;
  box-shadow: 0 2px 8px rgba(0,0,0,.25); padding: .4em .6em; font: 12px/1.4 ui-monospace, monospace;
  white-space: pre; z-index: 10; }
#tip .actual { font-weight: bold; }
table { border-collapse: collapse; font-size: 13px; } \
td, th { padding: .15em .7em; text-align: right; }
th { border-bottom: 1px solid #999; } td:first-child, th:first-child { text-align: left; }
tr[data-k] { cursor: pointer; } tr[data-k]:hover { background: #eef; }
img { max-width: 100%; }
"""

# The page's only script: it reads the embedded JSON and writes with textContent, never innerHTML.
_JS = """
"use strict";
const D = JSON.parse(document.getElementById("charlm-data").textContent);
const spans = document.getElementById("text").children;
const pick = document.getElementById("unit"), tip = document.getElementById("tip");
let current = D.series[0];
function colour(v) {  // -1 red, 0 white, +1 blue, as alpha over the white page
  const a = Math.min(1, Math.abs(v)).toFixed(2);
  return v >= 0 ? `rgba(40,110,255,${a})` : `rgba(235,50,40,${a})`;
}
function show(k) {
  current = D.series[k];
  for (let i = 0; i < spans.length; i++) \
spans[i].style.backgroundColor = colour(current.values[i] / 100);
  document.getElementById("shown").textContent = current.label;
}
function line(text, cls) {
  const div = document.createElement("div");
  div.textContent = text;
  if (cls) div.className = cls;
  tip.appendChild(div);
}
function explain(i) {  // what the model expects after character i
  tip.replaceChildren();
  const v = current.values[i] / 100;
  line(`#${i} ${D.labels[D.ids[i]]}   ${current.label} = ${v >= 0 ? "+" : ""}${v.toFixed(2)}`);
  line("next character:");
  const next = i + 1 < D.ids.length ? D.ids[i + 1] : -1;
  D.top_ids[i].forEach((id, j) => line(`  ${D.labels[id]} ${(D.top_p[i][j] / 10).toFixed(1)}%` +
                                        (id === next ? "  \\u2190 actual" : ""), \
id === next ? "actual" : ""));
  if (next >= 0 && !D.top_ids[i].includes(next)) \
line(`  actual: ${D.labels[next]} (not in the top ${D.top_ids[i].length})`);
}
const text = document.getElementById("text");
text.addEventListener("mouseover", (e) => {
  const i = Array.prototype.indexOf.call(spans, e.target);
  if (i < 0) return;
  explain(i);
  tip.style.display = "block";
});
text.addEventListener("mousemove", (e) => {
  tip.style.left = Math.min(e.pageX + 14, \
window.scrollX + window.innerWidth - tip.offsetWidth - 8) + "px";
  tip.style.top = (e.pageY + 18) + "px";
});
text.addEventListener("mouseleave", () => { tip.style.display = "none"; });
pick.addEventListener("change", () => show(Number(pick.value)));
document.querySelectorAll("tr[data-k]").forEach((tr) => tr.addEventListener("click", () => {
  pick.value = tr.dataset.k;
  show(Number(tr.dataset.k));
}));
show(Number(pick.value));
"""

_ARROW = "\u21b5"  # shown for a newline, which then breaks the line as in the text


def script_json(obj: object) -> str:
    """JSON that is safe inside a <script> element: no <, > or & can close or open a tag."""
    return (json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _char_span(ch: str) -> str:
    if ch == "\n":
        return f"<span>{_ARROW}\n</span>"
    if ch != "\t" and not ch.isprintable():
        return f"<span>{html.escape(printable(ch))}</span>"  # a control character, made visible
    return f"<span>{html.escape(ch)}</span>"


@dataclass
class _Choices:
    """The activations the page embeds and the selector's options over them."""

    series: list[dict] = field(default_factory=list)              # label, values (T,) in ±100
    index: dict[tuple, int] = field(default_factory=dict)          # (layer, kind, unit) → series
    options: list[tuple[str, str, int]] = field(default_factory=list)  # group, text, series
    start: int = 0                                                 # the option the page opens on

    def add(self, acts: Activations, key: tuple[int, str, int], group: str, text: str) -> None:
        layer, kind, unit = key
        if key not in self.index:
            self.index[key] = len(self.series)
            values = np.round(acts.layer(kind, layer)[:, unit] * 100).astype(int)  # (T,)
            self.series.append({"label": f"layer {layer} {kind}[{unit}]",
                                "values": values.tolist()})
        self.options.append((group, text, self.index[key]))


def _choices(insp: Inspection, units: list[int], layer: int) -> _Choices:
    """Requested units first (the page opens on them), then the finder's units per feature
    (without a request, the page opens on the strongest of them)."""
    acts, c = insp.acts, _Choices()
    for unit in units:
        for kind in acts.unit_kinds():
            c.add(acts, (layer, kind, unit), "chosen units", f"layer {layer} {kind}[{unit}]")
    strongest = max(insp.matches, key=lambda m: abs(m.r), default=None)
    for m in insp.matches:
        if m is strongest and not units:
            c.start = len(c.options)
        c.add(acts, (m.layer, m.kind, m.unit), m.feature, f"{m.label}   r = {m.r:+.3f}")
    if not c.options:  # nothing requested and no feature varies: show the first unit
        c.add(acts, (acts.layers[-1], acts.unit_kinds()[-1], 0), "units", "first unit")
    return c


def _select(c: _Choices) -> str:
    parts, group = [], None
    for n, (g, text, k) in enumerate(c.options):
        if g != group:
            parts.append(("</optgroup>" if group is not None else "")
                         + f'<optgroup label="{html.escape(g)}">')
            group = g
        selected = " selected" if n == c.start else ""
        parts.append(f'<option value="{k}"{selected}>{html.escape(text)}</option>')
    return '<select id="unit">' + "".join(parts) + "</optgroup></select>"


def _finder_table(insp: Inspection, c: _Choices) -> str:
    rows = "".join(
        f'<tr data-k="{c.index[m.layer, m.kind, m.unit]}"><td>{html.escape(m.feature)}</td>'
        f"<td>{m.layer}</td><td>{html.escape(m.kind)}</td><td>{m.unit}</td>"
        f"<td>{m.r:+.3f}</td></tr>" for m in insp.matches)
    rows += "".join(f'<tr><td>{html.escape(a)}</td><td colspan="4">constant over this text'
                    f"</td></tr>" for a in insp.absent)
    return ("<table><tr><th>feature</th><th>layer</th><th>kind</th><th>unit</th>"
            f"<th>Pearson r</th></tr>{rows}</table>")


def _gates_table(insp: Inspection, png: bytes | None) -> str:
    if not insp.stats:
        return '<p class="meta">No sigmoid gates to measure (the plain RNN has none).</p>'
    rows = "".join(
        f"<tr><td>{s.layer}</td><td>{html.escape(s.name)}</td><td>{s.left.mean():.3f}</td>"
        f"<td>{s.right.mean():.3f}</td><td>{int((s.left > .5).sum())}</td>"
        f"<td>{int((s.right > .5).sum())}</td></tr>" for s in insp.stats)
    img = (f'<p><img alt="per-unit gate saturation" src="data:image/png;base64,'
           f'{base64.b64encode(png).decode()}"></p>' if png else "")
    return ("<table><tr><th>layer</th><th>gate</th><th>left &lt; 0.1</th><th>right &gt; 0.9</th>"
            "<th>units mostly left</th><th>units mostly right</th></tr>"
            f"{rows}</table>{img}")


def render_page(insp: Inspection, units: list[int], layer: int, png: bytes | None) -> str:
    """The whole page as one string: markup, inline CSS, embedded data and the one script."""
    acts, cfg, esc = insp.acts, insp.config, html.escape
    choices = _choices(insp, units, layer)
    data = {"series": choices.series, "labels": [printable(c) for c in insp.vocab.chars],
            "ids": insp.vocab.encode(acts.text).astype(int).tolist(),
            "top_ids": acts.top_ids.tolist(),
            "top_p": np.round(acts.top_probs * 1000).astype(int).tolist()}  # in 0.1 %
    digest = base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
           f"script-src 'sha256-{digest}'")
    notes = "".join(f'<div class="note">{esc(n)}</div>' for n in insp.notes)
    text = "".join(_char_span(c) for c in acts.text)
    layers = f"{cfg.num_layers} layer{'' if cfg.num_layers == 1 else 's'}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>charlm: inside {esc(insp.checkpoint)}</title>
<style>{_CSS}</style></head><body>
<h1>Inside {esc(insp.checkpoint)}</h1>
<p class="meta">{esc(cfg.cell)} cell, {layers} of {cfg.hidden_size} units,
vocabulary of {len(insp.vocab)} characters; {len(acts.text):,} characters of {esc(insp.source)},
read from a zero state.</p>{notes}
<div class="controls">unit {_select(choices)} <span class="meta">showing <b id="shown"></b>:
&minus;1<span class="legend"></span>+1 &middot; hover a character for the next-character
predictions</span></div>
<div id="text">{text}</div><div id="tip"></div>
<h2>Units that track features of the text</h2>
<p class="meta">Pearson correlation of each unit's activation (tanh(c) or h) with a feature, over
the text above; the strongest per feature. Click a row to show that unit.</p>
{_finder_table(insp, choices)}
<h2>Gate saturation</h2>
<p class="meta">Fraction of characters at which a gate is left-saturated (&lt; 0.1) or
right-saturated (&gt; 0.9), mean over units, as in Karpathy, Johnson &amp; Fei-Fei 2015.</p>
{_gates_table(insp, png)}
<script type="application/json" id="charlm-data">{script_json(data)}</script>
<script>{_JS}</script>
</body></html>
"""


__all__ = ["render_page", "script_json"]
