"""Generation speed: charlm.generation.sampling.generate against the ways one could write it \
instead.

    .venv/bin/python benchmarks/sample_speed.py [--repeats 3] [--threads 1]
        [--only length,context,plain]
    .venv/bin/python benchmarks/sample_speed.py --smoke   # tiny models, short texts: checks it

Three figures, each on randomly initialised models (speed does not depend on training):

  length   chars/s of generate() at batch 1 and at num_samples 64, for 100- and 10,000-character
           outputs, per cell: carrying the state, a character costs the same however much text
           came before it (the 10,000-char rate should be at least 0.9 x the 100-char rate).
  context  what carrying the state buys: generate() against a naive generator that re-feeds the
           whole prefix through the same RNN each step, and against nanoGPT-style sampling from a
           small causal transformer of about the same parameter count that recomputes its whole
           context (up to block size 256, no KV cache) each step; at 100 and 1,000 characters.
  plain    batch-1 generate() against a plain per-character loop over the fused torch module
           (model.rnn called with T=1, state carried), for each cell at 2x128 and 2x512.

Prints one JSON line per figure, then a table. The machine may be shared, so every comparison is
measured as interleaved runs in one process, and rates are given twice: ``chars_per_s`` by the wall
clock and ``cpu_chars_per_s`` by this process's CPU time, which other processes' load disturbs far
less (with --threads 1 the two agree on an idle machine). Ratios are taken on CPU time; each line
also carries the load average when it was measured.

The plain loop's speed depends on the C library: the fused CPU kernel re-lays the weights into a
fresh buffer on every call, and glibc's malloc, as it comes, returns that buffer to the system
after each call, so the next call page-faults it back in (about 2,000 faults a call for 2x512).
``--malloc kept`` runs the whole process with charlm's training setting (charlm.training.allocator),
which keeps freed memory; charlm's own steps allocate nothing that large.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from charlm.data.vocab import CharVocab
from charlm.generation.sampling import SampleSettings, generate
from charlm.model import CharRNN, ModelConfig
from charlm.training.allocator import keep_freed_memory

VOCAB = CharVocab([chr(c) for c in range(32, 127)] + ["\n", "\t"])  # 97 symbols, like source code
CELLS = ("rnn", "lstm", "gru")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def make_rnn(cell: str, hidden: int, layers: int = 2) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(len(VOCAB), cell, hidden, layers, 64)).eval()


class Clock:
    """Characters and seconds (wall and CPU) accumulated over calls of one generator."""

    def __init__(self, fn, chars: int):
        self.fn, self.chars = fn, chars
        self.total_chars, self.wall_s, self.cpu_s = 0, 0.0, 0.0

    def run(self, times: int = 1) -> None:
        for _ in range(times):
            w0, c0 = time.perf_counter(), time.process_time()
            self.fn()
            self.wall_s += time.perf_counter() - w0
            self.cpu_s += time.process_time() - c0
            self.total_chars += self.chars

    @property
    def wall_rate(self) -> float:
        return self.total_chars / self.wall_s

    @property
    def cpu_rate(self) -> float:
        return self.total_chars / self.cpu_s


def charlm_fn(model: CharRNN, length: int, num_samples: int = 1):
    return lambda: generate(model, VOCAB, "", length, SampleSettings(), num_samples, seed=0)


# --- the alternatives --------------------------------------------------------------------------

@torch.inference_mode()
def plain_loop(model: CharRNN, length: int) -> list[int]:
    """A per-character loop over the fused torch module: T=1 per call, state carried."""
    g = torch.Generator().manual_seed(0)
    x, state, out = torch.tensor([[VOCAB.index["\n"]]]), None, []
    for _ in range(length):
        h, state = model.rnn(model.embedding(x), state)          # (1, 1, H)
        probs = torch.softmax(model.head(h[:, -1]), dim=-1)      # (1, V)
        x = torch.multinomial(probs, 1, generator=g)             # (1, 1)
        out.append(x)
    return out


@torch.inference_mode()
def refeed_loop(model: nn.Module, length: int, block: int | None = None) -> list[int]:
    """Re-feed the whole prefix (cropped to ``block``) every step: no carried state, no cache."""
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[VOCAB.index["\n"]]])
    for _ in range(length):
        context = ids if block is None else ids[:, -block:]
        logits = model(context)
        logits = logits[0] if isinstance(logits, tuple) else logits  # CharRNN returns a state too
        probs = torch.softmax(logits[:, -1], dim=-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], dim=1)
    return ids[0].tolist()


class Block(nn.Module):
    """nanoGPT's transformer block: pre-norm causal self-attention and a 4x MLP."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, D/heads)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A nanoGPT-shaped character transformer: token + position embeddings, blocks, head."""

    def __init__(self, vocab: int, d: int, layers: int = 4, heads: int = 4, block: int = 256):
        super().__init__()
        self.block = block
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.Sequential(*(Block(d, heads) for _ in range(layers)))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.size(1), device=ids.device))  # (B, T, d)
        return self.head(self.ln(self.blocks(x)))  # (B, T, V)


def gpt_like(params: int, layers: int = 4, heads: int = 4, block: int = 256,
             max_width: int = 1024) -> TinyGPT:
    """The TinyGPT whose parameter count is closest to ``params`` (width a multiple of heads, at
    most ``max_width``)."""
    def count(d: int) -> int:
        return sum(p.numel() for p in TinyGPT(len(VOCAB), d, layers, heads, block).parameters())
    d = min(range(heads, max_width + 1, heads), key=lambda d: abs(count(d) - params))
    torch.manual_seed(0)
    return TinyGPT(len(VOCAB), d, layers, heads, block).eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the figures -------------------------------------------------------------------------------

def interleaved(clocks: dict[str, Clock], repeats: int,
                times: dict[str, int] | None = None) -> None:
    """Run every clock ``repeats`` rounds, round-robin, so load drift hits all of them alike."""
    for _ in range(repeats):
        for name, clock in clocks.items():
            clock.run((times or {}).get(name, 1))


def rates(prefix: str, clock: Clock) -> dict:
    return {f"{prefix}chars_per_s": round(clock.wall_rate, 1),
            f"{prefix}cpu_chars_per_s": round(clock.cpu_rate, 1)}


def length_figures(repeats: int, hidden: int, short_len: int = 100,
                   long_len: int = 10_000) -> list[dict]:
    rows = []
    for cell in CELLS:
        model = make_rnn(cell, hidden)
        for batch in (1, 64):
            short, long = Clock(charlm_fn(model, short_len, batch), short_len * batch), \
                Clock(charlm_fn(model, long_len, batch), long_len * batch)
            generate(model, VOCAB, "", 20, num_samples=batch, seed=0)  # warm-up
            # the 100-char run is repeated so both sides time about as many characters
            interleaved({"short": short, "long": long}, repeats, {"short": 20})
            rows.append({"figure": "sample_length", "cell": cell, "layers": 2, "hidden": hidden,
                         "num_samples": batch, "short_len": short_len, "long_len": long_len,
                         **rates("short_", short), **rates("long_", long),
                         "long_over_short": round(long.cpu_rate / short.cpu_rate, 3),
                         "long_over_short_wall": round(long.wall_rate / short.wall_rate, 3),
                         "threads": torch.get_num_threads(), "loadavg": load()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def context_figures(repeats: int, hidden: int, lengths: tuple[int, ...] = (100, 1000),
                    max_width: int = 1024) -> list[dict]:
    rnn = make_rnn("lstm", hidden)
    gpt = gpt_like(n_params(rnn), max_width=max_width)
    rows = []
    for length in lengths:
        clocks = {"charlm": Clock(charlm_fn(rnn, length), length),
                  "rnn_refeed": Clock(lambda n=length: refeed_loop(rnn, n), length),
                  "gpt_full_context": Clock(lambda n=length: refeed_loop(gpt, n, gpt.block),
                                            length)}
        interleaved(clocks, repeats if length <= 100 else 1,  # the naive ones get slow
                    {"charlm": 5})
        row = {"figure": "sample_context", "length": length, "rnn": f"lstm 2x{hidden}",
               "rnn_params": n_params(rnn), "gpt_params": n_params(gpt), "gpt_block": gpt.block,
               **{k: v for name, c in clocks.items() for k, v in rates(name + "_", c).items()},
               "charlm_over_rnn_refeed": round(clocks["charlm"].cpu_rate
                                               / clocks["rnn_refeed"].cpu_rate, 1),
               "charlm_over_gpt": round(clocks["charlm"].cpu_rate
                                        / clocks["gpt_full_context"].cpu_rate, 1),
               "threads": torch.get_num_threads(), "loadavg": load()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def plain_figures(repeats: int, length: int, kept: bool,
                  hiddens: tuple[int, ...] = (128, 512)) -> list[dict]:
    rows = []
    for hidden in hiddens:
        for cell in CELLS:
            model = make_rnn(cell, hidden)
            n = length if hidden <= 128 else length // 2
            plain_loop(model, 20), generate(model, VOCAB, "", 20, seed=0)  # warm-up
            ours = Clock(charlm_fn(model, n), n)
            plain = Clock(lambda m=model, n=n: plain_loop(m, n), n)
            interleaved({"charlm": ours, "plain": plain}, repeats)
            row = {"figure": "sample_vs_plain", "cell": cell, "layers": 2, "hidden": hidden,
                   "chars": n, **rates("charlm_", ours), **rates("plain_", plain),
                   "ratio": round(ours.cpu_rate / plain.cpu_rate, 2),
                   "ratio_wall": round(ours.wall_rate / plain.wall_rate, 2), "malloc_kept": kept,
                   "threads": torch.get_num_threads(), "loadavg": load()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def table(rows: list[dict]) -> None:
    """The figures again, readable (chars/s by CPU time; wall-clock ratios in the JSON lines)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["figure"], []).append(r)
    if "sample_length" in by:
        first = by["sample_length"][0]
        short, long = f"{first['short_len']:,} chars", f"{first['long_len']:,} chars"
        print(f"\n{'cell':<6}{'B':>4}{short:>12}{long:>14}{'ratio':>8}{'load':>7}"
              "   (chars/s by CPU time)")
        for r in by["sample_length"]:
            print(f"{r['cell']:<6}{r['num_samples']:>4}{r['short_cpu_chars_per_s']:>12,.0f}"
                  f"{r['long_cpu_chars_per_s']:>14,.0f}{r['long_over_short']:>8.3f}{r['loadavg']:>7}")
    if "sample_context" in by:
        print(f"\n{'length':>7}{'charlm':>10}{'RNN re-feed':>13}{'GPT full ctx':>14}"
              f"{'x re-feed':>11}{'x GPT':>8}{'load':>7}   (chars/s by CPU time, batch 1)")
        for r in by["sample_context"]:
            print(f"{r['length']:>7}{r['charlm_cpu_chars_per_s']:>10,.0f}"
                  f"{r['rnn_refeed_cpu_chars_per_s']:>13,.1f}"
                  f"{r['gpt_full_context_cpu_chars_per_s']:>14,.1f}{r['charlm_over_rnn_refeed']:>11}"
                  f"{r['charlm_over_gpt']:>8}{r['loadavg']:>7}")
        r = by["sample_context"][0]
        print(f"  ({r['rnn']}: {r['rnn_params']:,} parameters; "
              f"GPT 4 layers, block {r['gpt_block']}: {r['gpt_params']:,})")
    if "sample_vs_plain" in by:
        print(f"\n{'model':<12}{'charlm':>10}{'plain loop':>12}{'ratio':>8}{'wall ratio':>12}"
              f"{'load':>7}   (chars/s by CPU time, batch 1)")
        for r in by["sample_vs_plain"]:
            print(f"{r['cell']} 2x{r['hidden']:<6}{r['charlm_cpu_chars_per_s']:>10,.0f}"
                  f"{r['plain_cpu_chars_per_s']:>12,.0f}{r['ratio']:>8.2f}{r['ratio_wall']:>12.2f}"
                  f"{r['loadavg']:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for batch-1 steps)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size for length/context")
    parser.add_argument("--plain-length", type=int, default=2000)
    parser.add_argument("--only", default="length,context,plain")
    parser.add_argument("--malloc", default="system", choices=("system", "kept"),
                        help="glibc malloc as it comes, or keeping freed memory")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models, short texts, once: checks the script")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kept = args.malloc == "kept" and keep_freed_memory()
    only = set(args.only.split(","))
    # the sizes: (short, long), the context lengths, the GPT's widest, the plain loop's models
    lengths, context, max_width, hiddens = (100, 10_000), (100, 1000), 1024, (128, 512)
    if args.smoke:
        args.repeats, args.hidden, args.plain_length = 1, 16, 40
        lengths, context, max_width, hiddens = (10, 100), (10, 30), 64, (16,)
    rows = []
    if "length" in only:
        rows += length_figures(args.repeats, args.hidden, *lengths)
    if "context" in only:
        rows += context_figures(args.repeats, args.hidden, context, max_width)
    if "plain" in only:
        rows += plain_figures(args.repeats, args.plain_length, kept, hiddens)
    table(rows)


if __name__ == "__main__":
    main()
