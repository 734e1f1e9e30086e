"""Generation: prime the state with the prompt once, then one step per new character.

The recipe, per step: last logits → temperature → top-k → top-p → softmax → draw one character
(or argmax when greedy / temperature 0) → feed the new character back with the carried state.
The cost of a character does not grow with the length of the text already written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from charlm.data.vocab import CharVocab
from charlm.errors import CharlmError
from charlm.model import CharRNN, State
from charlm.model.cells import ExplicitCell, explicit_twin


@dataclass
class SampleSettings:
    """How to pick each next character."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise CharlmError(f"`temperature` must be a finite number >= 0 (0 means greedy), "
                              f"not {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise CharlmError(f"`top_k` must be at least 1, not {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise CharlmError(f"`top_p` must be in (0, 1], not {self.top_p}")


def pick(logits: Tensor, s: SampleSettings,
         generators: Sequence[torch.Generator] | Sequence[RowDraws] | torch.Generator | None
         ) -> Tensor:
    """Choose the next id of every row from logits (B, V) → ids (B,).

    ``generators`` has one generator per row (row i's draws depend on its own generator only,
    not on the rows beside it; ``row_draws`` makes them cheaper to draw from, step after step),
    or is one generator (or None) for the whole batch.
    """
    if s.greedy or s.temperature < torch.finfo(torch.float32).tiny:
        return logits.argmax(dim=-1)  # a smaller temperature is 0 in float32: greedy
    logits = logits.float()
    if s.temperature != 1.0:
        # Top logit shifted to 0 first, so a tiny temperature sends the others to -inf and none
        # to +inf (softmax of +inf is nan); softmax does not mind the shift.
        logits = (logits - logits.max(dim=-1, keepdim=True).values) / s.temperature
    if s.top_k is not None and s.top_k < logits.size(-1):
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if s.top_p is not None and s.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop a character when the ones ranked above it already cover top_p (the first stays)
        drop = sorted_p.cumsum(dim=-1) - sorted_p >= s.top_p
        drop[:, 0] = False  # even where top_p rounds to 0 in float32
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    # Draw by inverse CDF: one uniform number per row, where torch.multinomial draws one per
    # character of the vocabulary, which dominates a small model's step. The first character
    # whose cumulative probability exceeds u * total never has probability zero. u <= 1 - 2^-23
    # keeps u * total below total (1 up to rounding) whatever the rounding, so the draw never runs
    # past the last character.
    cdf = probs.cumsum(dim=-1)  # (B, V)
    u = _uniform(cdf.shape[0], generators, cdf)  # (B, 1)
    u = u.mul_(1 - 2 ** -24).mul_(cdf[:, -1:])  # (B, 1)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)  # (B,)


def _uniform(rows: int, generators, like: Tensor) -> Tensor:
    """One uniform number per row (B, 1), row i from ``generators[i]`` where there is a list."""
    if generators is None or isinstance(generators, torch.Generator):
        return torch.rand(rows, 1, generator=generators, device=like.device, dtype=like.dtype)
    if len(generators) != rows:
        raise ValueError(f"{len(generators)} generators for {rows} rows")
    if isinstance(generators[0], RowDraws):  # float32 numbers, which is what pick draws against
        return torch.tensor([[row.next()] for row in generators], device=like.device,
                            dtype=like.dtype)
    return torch.cat([torch.rand(1, 1, generator=g, device=like.device, dtype=like.dtype)
                      for g in generators])


class RowDraws:
    """One row's uniform numbers from its own CPU generator, drawn a block at a time.

    torch's CPU generator fills a block one number after another, so these are the numbers, in
    the same order, that one ``torch.rand`` per step would give: a row's text does not change,
    and a step of B rows pops B numbers from lists instead of making B torch calls.
    """

    block, dtype = 64, torch.float32  # float32: what ``pick`` draws against

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self._left: list[float] = []

    def next(self) -> float:
        if not self._left:
            self._left = torch.rand(self.block, generator=self.generator,
                                    dtype=self.dtype).tolist()[::-1]
        return self._left.pop()


def row_draws(generators: list[torch.Generator]) -> list[RowDraws] | list[torch.Generator]:
    """``generators`` ready for ``pick``, one per row: CPU generators (``sample_generators``'s,
    whatever device the model is on) drawn a block at a time (``RowDraws``); any other as it is
    (a GPU generator's blocks are not the numbers its single draws give)."""
    if generators and generators[0].device.type == "cpu":
        return [RowDraws(g) for g in generators]
    return generators


def stepping_cell(model: CharRNN) -> ExplicitCell | None:
    """The explicit cell that ``Stepper`` steps through (the model's weights), or None where
    stepping the model's own module is as fast: a cell with no explicit form, one whose step
    needs more than its four weights, and a fused cell on a GPU, whose cuDNN kernel steps faster
    than the explicit cell's small kernels (benchmarks/gpu.py)."""
    if next(model.parameters()).device.type == "cuda" and not isinstance(model.rnn, ExplicitCell):
        return None
    twin = explicit_twin(model)
    return twin if twin is not None and twin.steps_by_weights else None


class Stepper:
    """One character at a time through ``model``, with what every step would redo done once.

    On the CPU, calling a fused nn.LSTM per character re-lays its weights every call; the explicit
    cells hold the same parameters (same names and layout) and step with two matmuls per layer.
    Layer 0's input share of every character, embedding → W_ih, is one (V, G·H) table, so a step
    starts with a row lookup instead of an embedding and a matmul. Between steps the state stays
    a list of per-layer states; ``pack`` gives the model's (L, B, H) layout back.
    """

    @torch.no_grad()
    def __init__(self, model: CharRNN):
        self.model, self.cell = model, stepping_cell(model)
        if self.cell is not None:
            self.layers = [self.cell.layer_weights(k) for k in range(self.cell.num_layers)]
            w_ih, _, b_ih, b_hh = self.layers[0]
            self.table = self.cell.project(model.embedding.weight, w_ih, b_ih, b_hh)  # (V, G·H)

    def unpack(self, state: State | None) -> list | State | None:
        """The model's state → the per-layer states that ``step`` carries (None: zeros)."""
        if self.cell is None or state is None:
            return state
        return self.cell.split_state(state, self.table)

    def pack(self, layers: list | State) -> State:
        """What ``step`` carries → the model's state layout."""
        return layers if self.cell is None else self.cell.join_state(layers)

    def step(self, ids: Tensor, layers: list | State | None) -> tuple[Tensor, list | State]:
        """ids (B,) and the unpacked state → logits (B, V) and the next unpacked state."""
        cell, model = self.cell, self.model
        if cell is None:  # a cell with no explicit twin: its own module, one step long
            out, state = model.rnn(model.embedding(ids)[:, None], layers)  # (B, 1, H)
            return model.head(out[:, 0]), state
        gx = self.table.index_select(0, ids)  # (B, G·H)
        if layers is None:
            layers = cell.split_state(None, gx)  # zeros, (B, H) per layer
        h = None  # the h (B, H) of the layer below, then of the top layer
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            if k:  # dropout between layers is off: generation runs in eval mode
                gx = cell.project(h, w_ih, b_ih, b_hh)  # (B, G·H)
            gates = cell.step_gates(gx, layers[k], w_hh, b_hh)
            layers[k] = tuple(gates[key] for key in cell.state_keys)
            h = gates["h"]
        return model.head(h), layers  # (B, V)

    def __call__(self, ids: Tensor, state: State | None) -> tuple[Tensor, State]:
        """One step on the model's own state layout: ids (B,), state → logits (B, V), state."""
        logits, layers = self.step(ids, self.unpack(state))
        return logits, self.pack(layers)


def prompt_ids(vocab: CharVocab, prompt: str) -> list[int]:
    """The prompt as ids; an unknown character is an error that names it."""
    missing = vocab.unknown_chars(prompt)
    if missing:
        names = ", ".join(repr(c) for c in missing[:10])
        raise CharlmError(f"the prompt has characters the model never saw: {names}")
    return vocab.encode(prompt).tolist()


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a request seeded with ``seed``: one rule for ``charlm
    sample --num-samples`` and the server's ``n``, so sample i is the same text whether it is drawn
    alone, beside others, or in a batch shared with other requests."""
    mixed = np.random.SeedSequence([seed % 2**64, index]).generate_state(1, np.uint64)[0]
    return int(mixed) % 2**63


def sample_generators(seed: int | None, num_samples: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by ``sample_seed`` (no seed: a fresh random one). On
    the CPU whatever the model's device, so a seed draws the same numbers on every machine."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0]) % 2**63
    return [torch.Generator().manual_seed(sample_seed(seed, i))
            for i in range(num_samples)]


def check_length(length: int, num_samples: int = 1) -> None:
    """A length and a sample count a user can ask for (one sentence otherwise)."""
    if length < 0:
        raise CharlmError(f"`length` must be at least 0, not {length}")
    if num_samples < 1:
        raise CharlmError(f"`num_samples` must be at least 1, not {num_samples}")


def prime(model: CharRNN, vocab: CharVocab, ids: list[int],
          num_samples: int = 1) -> tuple[Tensor, State]:
    """One forward of the prompt's ``ids`` for ``num_samples`` rows → the next character's
    logits (B, V) and the state. An empty prompt primes with a newline (the start of a line),
    which is not echoed. ``charlm sample`` and ``charlm serve`` start every sample here."""
    return prime_rows(model, vocab, [ids] * num_samples)


def prime_rows(model: CharRNN, vocab: CharVocab, rows: list[list[int]]) -> tuple[Tensor, State]:
    """``prime`` for several prompts of one length, one row each, in one forward (a server
    starts every request that arrived in the same turn together)."""
    device = next(model.parameters()).device
    start = [vocab.index.get("\n", 0)]
    x = torch.tensor([ids or start for ids in rows], device=device)  # (B, P)
    return model.next_logits(x, None)


@torch.inference_mode()
def generate_ids(model: CharRNN, vocab: CharVocab, prompt: str = "", length: int = 500,
                 settings: SampleSettings | None = None, num_samples: int = 1,
                 seed: int | None = None) -> Iterator[Tensor]:
    """Yield each step's new ids (B,), one step at a time, ``length`` steps, keeping nothing.

    Memory does not grow with ``length``: the state is carried and each step's ids are the
    caller's to keep or drop. Sample i draws from its own generator (``sample_seed``).
    """
    settings = settings or SampleSettings()
    check_length(length, num_samples)
    model.eval()
    # The draws come from CPU generators whatever the model's device, as the server's do: a
    # seed draws the same numbers for a model on a GPU (training's samples, the Python API) as
    # on the CPU, and a step of B rows there is one small copy instead of B generator launches.
    generators = row_draws(sample_generators(seed, num_samples))
    logits, state = prime(model, vocab, prompt_ids(vocab, prompt), num_samples)
    steps = Stepper(model)
    layers = steps.unpack(state)
    for t in range(length):
        nxt = pick(logits, settings, generators)  # (B,)
        yield nxt
        if t + 1 < length:
            logits, layers = steps.step(nxt, layers)


def generate_chars(model: CharRNN, vocab: CharVocab, prompt: str = "", length: int = 500,
                   settings: SampleSettings | None = None, num_samples: int = 1,
                   seed: int | None = None) -> Iterator[list[str]]:
    """Yield each step's new characters, one per sample, as they are drawn (streaming)."""
    chars = vocab.chars
    for nxt in generate_ids(model, vocab, prompt, length, settings, num_samples, seed):
        yield [chars[i] for i in nxt.tolist()]


def generate(model: CharRNN, vocab: CharVocab, prompt: str = "", length: int = 500,
             settings: SampleSettings | None = None, num_samples: int = 1, seed: int | None = None,
             on_chars: Callable[[list[str]], None] | None = None) -> list[str]:
    """Generate ``num_samples`` texts of ``length`` new characters after ``prompt`` (one batch).

    Returns prompt + continuation for each sample, so it keeps every character: to write long
    texts in constant memory, iterate ``generate_ids`` or ``generate_chars`` instead.
    ``on_chars`` receives each step's characters (one per sample). The same seed gives the same
    text.
    """
    steps = generate_ids(model, vocab, prompt, length, settings, num_samples, seed)
    picked = []  # one (B,) tensor per step
    for nxt in steps:
        picked.append(nxt)
        if on_chars is not None:
            on_chars([vocab.chars[i] for i in nxt.tolist()])
    if not picked:
        prompt_ids(vocab, prompt)  # still refuse an unknown character when nothing is drawn
        return [prompt] * num_samples
    out = torch.stack(picked, 1)  # (B, length)
    return [prompt + vocab.decode(row) for row in out.cpu().numpy()]
