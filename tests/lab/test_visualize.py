"""charlm visualize / inspect: traced units, the finder, gate statistics, and the page itself."""

import json
import random
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import no_alert
from click.testing import CliRunner
from torch import nn

from charlm.cli import cli
from charlm.data.vocab import CharVocab, printable
from charlm.generation.checkpoint import ExportedModel
from charlm.lab.inspection import read_text
from charlm.lab.page import script_json
from charlm.lab.units import find_units, gate_saturation, text_features, trace_text
from charlm.lab.visualize import plot_gates, visualize
from charlm.model import CharRNN, ModelConfig, register_cell

CELLS = ["rnn", "lstm", "gru", "gru-note"]
PAYLOAD = ('He said "<script>window.__pwned = 1; alert(1)</script>" & left.\n'
           '<img src=x onerror="window.__pwned = 2"> a & b\n')


def quoted_text(n: int = 1500, seed: int = 0) -> str:
    """Words, some phrases in double quotes, lines of a few words: never an empty quote."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "ran", "home", "dog"]
    out: list[str] = []
    while sum(map(len, out)) < n:
        phrase = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        out.append(f'"{phrase}"' if rng.random() < 0.4 else phrase)
        out.append("\n" if rng.random() < 0.2 else " ")
    return "".join(out)


def tiny_model(vocab: CharVocab, cell: str = "lstm", layers: int = 1, hidden: int = 6,
               seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size=len(vocab), cell=cell, hidden_size=hidden,
                               num_layers=layers, embedding_dim=4)).eval()


def export(model: CharRNN, vocab: CharVocab, folder: Path) -> Path:
    """A loadable checkpoint folder without training (the pickle-free export format)."""
    exported = ExportedModel(model.config.to_dict(), vocab.chars)
    exported.model.load_state_dict(model.state_dict())
    exported.save_pretrained(str(folder))
    return folder


def test_text_features_by_hand():
    f = text_features('x "ab" (c[d])\n  e\n')
    assert f["inside quotes"].tolist() == [0, 0, 1, 1, 1] + [0] * 13
    assert f["position in line"].tolist() == [*range(1, 14), 0, 1, 2, 3, 0]
    assert f["bracket depth"].tolist() == [0] * 7 + [1, 1, 2, 2, 1] + [0] * 6
    assert f["indentation"].tolist() == [0] * 14 + [1, 2, 2, 0]
    assert np.flatnonzero(f["inside a word"]).tolist() == [0, 3, 4, 8, 10, 16]
    assert np.flatnonzero(f["after a newline"]).tolist() == [13, 17]
    assert text_features(")) (")["bracket depth"].tolist() == [0, 0, 0, 1]  # never below 0


@pytest.mark.parametrize("cell", CELLS)
def test_trace_is_the_model_and_carries_state_across_chunks(cell):
    text = quoted_text(120)
    vocab = CharVocab.from_text(text)
    model = tiny_model(vocab, cell, layers=2)
    acts = trace_text(model, vocab, text, chunk=7)  # many chunk boundaries
    ids = torch.as_tensor(vocab.encode(text).astype(np.int64))[None]
    with torch.no_grad():
        out, _ = model.rnn(model.embedding(ids))
        logits, _ = model(ids)
    assert acts.layers == [0, 1] and acts.series["h"].shape == (2, len(text), 6)
    np.testing.assert_allclose(acts.layer("h", 1), out[0].numpy(), atol=1e-5)
    assert (acts.top_ids[:, 0] == logits[0].argmax(-1).numpy()).all()
    top = logits[0].softmax(-1).topk(5, -1).values.numpy()
    np.testing.assert_allclose(acts.top_probs, top, atol=1e-6)
    assert set(acts.unit_kinds()) == ({"tanh(c)", "h"} if cell == "lstm" else {"h"})
    assert set(acts.gates()) == {"lstm": {"i", "f", "o"}, "rnn": set()}.get(cell, {"r", "z"})


def planted_quote_lstm(vocab: CharVocab, hidden: int = 6, k: float = 20.0) -> CharRNN:
    """An LSTM whose unit 0 flips its cell between +1 and -1 on every double quote.

    Embedding dim 0 is 1 for '"' only. On a quote the forget gate closes and the input gate
    opens; g = tanh(-20 h + 10) writes the opposite sign of the current h (and +1 from a zero
    state). Elsewhere f = 1, i = 0: the cell keeps its value. Other units stay random.
    """
    m = tiny_model(vocab, "lstm", hidden=hidden, seed=1)
    i, f, g, o = (b * hidden for b in range(4))  # unit 0's row in each gate block
    with torch.no_grad():
        m.embedding.weight[:, 0] = 0.0
        m.embedding.weight[vocab.index['"'], 0] = 1.0
        for row in (i, f, g, o):
            m.rnn.weight_ih_l0[row] = 0.0
            m.rnn.weight_hh_l0[row] = 0.0
            m.rnn.bias_hh_l0[row] = 0.0
        m.rnn.weight_ih_l0[i, 0], m.rnn.bias_ih_l0[i] = 2 * k, -k   # i = σ(k (2q - 1))
        m.rnn.weight_ih_l0[f, 0], m.rnn.bias_ih_l0[f] = -2 * k, k   # f = σ(k (1 - 2q))
        m.rnn.weight_hh_l0[g, 0], m.rnn.bias_ih_l0[g] = -20.0, 10.0  # g = tanh(-20 h + 10)
        m.rnn.bias_ih_l0[o] = k                                       # o = 1
    return m


def test_finder_recovers_a_planted_inside_quotes_unit():
    text = quoted_text()
    vocab = CharVocab.from_text(text)
    acts = trace_text(planted_quote_lstm(vocab), vocab, text)
    matches, absent = find_units(acts, top=3)
    quotes = [m for m in matches if m.feature == "inside quotes"]
    assert quotes[0].unit == 0 and quotes[0].layer == 0 and quotes[0].r > 0.9, quotes
    assert {"bracket depth", "indentation"} <= set(absent)  # no brackets, no indentation here
    # the finder's other features still rank real units
    assert all(abs(m.r) <= 1 + 1e-9 for m in matches)


@pytest.mark.parametrize("cell, gate, bias_block", [("lstm", "f", 1), ("gru", "z", 1)])
def test_gate_with_huge_bias_is_right_saturated(cell, gate, bias_block):
    text = quoted_text(400)
    vocab = CharVocab.from_text(text)
    m = tiny_model(vocab, cell, layers=2)
    h = m.config.hidden_size
    with torch.no_grad():
        m.rnn.bias_ih_l1[bias_block * h:(bias_block + 1) * h] = 50.0  # layer 1 only
        m.rnn.bias_ih_l1[:h] = -50.0  # LSTM i / GRU r: left-saturated
    stats = {(s.layer, s.gate): s for s in gate_saturation(trace_text(m, vocab, text))}
    assert stats[1, gate].right.mean() == 1.0 and stats[1, gate].left.mean() == 0.0
    first = "i" if cell == "lstm" else "r"
    assert stats[1, first].left.mean() == 1.0
    assert stats[0, gate].right.mean() < 0.9  # the untouched layer is not
    assert stats[1, gate].right.shape == (h,)
    assert plot_gates(list(stats.values())).startswith(b"\x89PNG")


def test_cell_without_explicit_twin_falls_back_to_top_h():
    class Wrapped(nn.Module):  # a plugged-in cell that is not a torch RNN: nothing to trace
        def __init__(self, i, h, layers, dropout):
            super().__init__()
            self.inner = nn.GRU(i, h, layers, batch_first=True)

        def forward(self, x, state=None):
            return self.inner(x, state)

    register_cell("wrapped", Wrapped)  # the tests' conftest removes it afterwards
    text = quoted_text(200)
    vocab = CharVocab.from_text(text)
    m = tiny_model(vocab, "wrapped", layers=2)
    acts = trace_text(m, vocab, text, chunk=50)
    with torch.no_grad():
        out, _ = m.rnn(m.embedding(torch.as_tensor(vocab.encode(text).astype(np.int64))[None]))
    assert acts.layers == [1] and set(acts.series) == {"h"}
    np.testing.assert_allclose(acts.layer("h", 1), out[0].numpy(), atol=1e-6)
    assert "no explicit implementation" in acts.notes[0] and gate_saturation(acts) == []
    assert find_units(acts)[0]


def test_unknown_characters_are_skipped_with_a_message(tmp_path):
    vocab = CharVocab("abc ")
    p = tmp_path / "t.txt"
    p.write_text("aéb c\u00f6" + "abc" * 10, encoding="utf-8")
    text, source, note = read_text(vocab, text_file=str(p), chars=4)
    assert text == "ab c" and source == str(p)
    assert "skipped 1 characters" in note and "é ×1" in note  # ö lies past the 4 kept characters
    with pytest.raises(Exception, match="exactly one"):
        read_text(vocab, text_file=str(p), data=["x"])


class _Page(HTMLParser):
    """Collects what the escaping test needs: script elements, handler attributes, #text's text."""

    def __init__(self):
        super().__init__()
        self.scripts, self.handlers, self.text, self._in_text, self._depth = [], [], [], False, 0

    def handle_starttag(self, tag, attrs):
        self.handlers += [(tag, k) for k, _ in attrs if k.startswith("on")]
        if tag == "script":
            self.scripts.append(dict(attrs))
        if self._in_text:
            self._depth += 1
        if dict(attrs).get("id") == "text":
            self._in_text, self._depth = True, 0

    def handle_endtag(self, tag):
        if self._in_text:
            if self._depth == 0:
                self._in_text = False
            self._depth -= 1

    def handle_data(self, data):
        if self._in_text:
            self.text.append(data)


@pytest.fixture
def page(tmp_path):
    """A page written by visualize from a checkpoint folder whose very name is markup."""
    text = PAYLOAD + quoted_text(300)
    vocab = CharVocab.from_text(text)
    ckpt = export(tiny_model(vocab, "lstm"), vocab, tmp_path / "run<script>alert(1)")
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    insp, out, _ = visualize(str(ckpt), tmp_path / "page.html",
                             text_file=str(tmp_path / "corpus.txt"))
    return out, text, insp


def test_page_shows_markup_as_text_and_runs_only_its_own_script(page):
    out, text, _ = page
    html = out.read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(html)
    assert "".join(parsed.text) == text.replace("\n", "\u21b5\n")  # every character, as text
    assert [s.get("type") for s in parsed.scripts] == ["application/json", None]
    assert parsed.handlers == [] and html.count("</script>") == 2
    assert "&lt;script&gt;alert(1)" in html and "<script>alert" not in html
    assert "<img src=x" not in html and "http://" not in html and "https://" not in html
    data = json.loads(html.split('id="charlm-data">')[1].split("</script>")[0])
    assert len(data["ids"]) == len(text) and len(data["top_ids"][0]) == 5
    assert (out.parent / "page_gates.png").read_bytes().startswith(b"\x89PNG")


def test_script_json_cannot_close_its_script_element():
    obj = {"s": "</script><script>alert(1)</script><!-- & \u2028"}
    safe = script_json(obj)
    assert not set("<>&") & set(safe) and json.loads(safe) == obj


def test_page_in_a_real_browser_hover_shows_predictions(page, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    out, text, insp = page
    k = text.index("cat")  # hover the 'c' of the first "cat"
    labels = [printable(insp.vocab.chars[i]) for i in insp.acts.top_ids[k]]  # as the page shows
    percents = [f"{round(p * 1000) / 10:.1f}%" for p in insp.acts.top_probs[k]]

    browser.get(out.as_uri())
    js = browser.execute_script
    assert js("return document.readyState") == "complete"
    assert js("return document.getElementById('tip').style.display") != "block"
    el = js(f"const el = document.getElementById('text').children[{k}];"
            f" el.scrollIntoView({{block: 'center'}}); return el;")
    ActionChains(browser).move_to_element(el).perform()
    tip = js("return document.getElementById('tip').innerText")
    shown = js("return getComputedStyle(document.getElementById('tip')).display")
    safe, title, scripts, shown_text = js(
        "return [window.__pwned === undefined, document.title, document.scripts.length,"
        " document.getElementById('text').textContent]")
    assert shown == "block" and f"#{k} c" in tip
    for label, percent in zip(labels, percents):
        assert f"  {label} {percent}" in tip, (label, percent, tip)
    assert safe and scripts == 2 and no_alert(browser)
    assert title.startswith("charlm: inside ") and "<script>alert(1)" in title  # as text
    assert '"<script>window.__pwned = 1; alert(1)</script>"' in shown_text


def test_cli_visualize_and_inspect(tmp_path):
    text = quoted_text(600)
    vocab = CharVocab.from_text(text)
    ckpt = export(tiny_model(vocab, "gru", layers=2), vocab, tmp_path / "ckpt")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\u00e9" + text, encoding="utf-8")  # one character the model lacks

    runner = CliRunner()
    r = runner.invoke(cli, ["visualize", str(ckpt), "--text", str(corpus), "--units", "1,3",
                            "--chars", "500", "--out", str(tmp_path / "v.html")])
    assert r.exit_code == 0, r.output
    assert "inside quotes" in r.output and "z (update)" in r.output and "skipped 1" in r.output
    html = (tmp_path / "v.html").read_text(encoding="utf-8")
    assert (tmp_path / "v_gates.png").exists() and "skipped 1 characters" in html
    assert '<option value="0" selected>layer 1 h[1]</option>' in html  # opens on --units

    r = runner.invoke(cli, ["inspect", str(ckpt), "--data", str(corpus), "--json", "--layer", "0"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["cell"] == "gru" and {u["layer"] for u in info["units"]} == {0}
    assert {g["gate"] for g in info["gates"]} == {"r", "z"}
    assert len(info["gates"][0]["left_per_unit"]) == 6

    for args, message in [([], "exactly one"), (["--text", str(corpus), "--layer", "2"], "--layer"),
                          (["--text", str(corpus), "--units", "6"], "--units"),
                          (["--text", str(corpus), "--units", "x"], "unit numbers")]:
        r = runner.invoke(cli, ["visualize", str(ckpt), *args, "--out", str(tmp_path / "e.html")])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, r.output
