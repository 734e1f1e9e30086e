"""Generation: prime the state with the prompt once, then one step per new character.

The recipe, per step: last logits → temperature → top-k → top-p → softmax → multinomial
(or argmax when greedy / temperature 0) → feed the new character back with the carried state.
The cost of a character does not grow with the length of the text already written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import CharlmError
from .model import CharRNN, State, build_cell
from .vocab import CharVocab

Step = Callable[[Tensor, State], tuple[Tensor, State]]  # ids (B,) → logits (B, V), state


@dataclass
class SampleSettings:
    """How to pick each next character."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise CharlmError(f"--temperature must be >= 0 (0 means greedy), not {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise CharlmError(f"--top-k must be at least 1, not {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise CharlmError(f"--top-p must be in (0, 1], not {self.top_p}")


def pick(logits: Tensor, s: SampleSettings, generator: torch.Generator | None) -> Tensor:
    """Choose the next id of every row from logits (B, V) → ids (B,)."""
    if s.greedy or s.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / s.temperature
    if s.top_k is not None and s.top_k < logits.size(-1):
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if s.top_p is not None and s.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop a character when the ones ranked above it already cover top_p (the first stays)
        drop = sorted_p.cumsum(dim=-1) - sorted_p >= s.top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def stepper(model: CharRNN) -> Step:
    """One-character steps for ``model``: the explicit cell's matmuls where the cell has one.

    On the CPU, calling a fused nn.LSTM per character re-lays its weights every call; the explicit
    cells hold the same parameters (same names and layout) and step with two matmuls per layer.
    """
    rnn = model.rnn
    try:
        explicit = build_cell(model.config, impl="explicit")
        explicit.load_state_dict(model.rnn.state_dict())
        explicit.eval()
        rnn = explicit
    except (ValueError, AttributeError, RuntimeError):
        explicit = None

    def step(ids: Tensor, state: State) -> tuple[Tensor, State]:
        x = model.embedding(ids)  # (B, E)
        if explicit is not None and hasattr(explicit, "step"):
            h, state = explicit.step(x, state)  # (B, H)
        else:
            out, state = rnn(x[:, None], state)  # (B, 1, H)
            h = out[:, 0]
        return model.head(h), state  # (B, V)

    return step


def prompt_ids(vocab: CharVocab, prompt: str) -> list[int]:
    """The prompt as ids; an unknown character is an error that names it."""
    missing = vocab.unknown_chars(prompt)
    if missing:
        names = ", ".join(repr(c) for c in missing[:10])
        raise CharlmError(f"the prompt has characters the model never saw: {names}")
    return vocab.encode(prompt).tolist()


@torch.no_grad()
def generate(model: CharRNN, vocab: CharVocab, prompt: str = "", length: int = 500,
             settings: SampleSettings | None = None, num_samples: int = 1, seed: int | None = None,
             on_chars: Callable[[list[str]], None] | None = None) -> list[str]:
    """Generate ``num_samples`` texts of ``length`` new characters after ``prompt`` (one batch).

    Returns prompt + continuation for each sample. ``on_chars`` receives each step's characters
    (one per sample), for streaming to a terminal. The same seed gives the same text.
    """
    settings = settings or SampleSettings()
    if length < 0:
        raise CharlmError(f"--length must be at least 0, not {length}")
    if num_samples < 1:
        raise CharlmError(f"--num-samples must be at least 1, not {num_samples}")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(time.time_ns() % 2**63))
    # An empty prompt primes with a newline (the start of a line), which is not echoed.
    prime = prompt_ids(vocab, prompt) if prompt else [vocab.index.get("\n", 0)]
    ids = torch.tensor(prime, device=device).repeat(num_samples, 1)  # (B, P)
    logits, state = model(ids, None)  # prime once: (B, P, V)
    logits = logits[:, -1]            # (B, V)
    step = stepper(model)
    out = torch.empty(num_samples, length, dtype=torch.long, device=device)
    for t in range(length):
        nxt = pick(logits, settings, generator)  # (B,)
        out[:, t] = nxt
        if on_chars is not None:
            on_chars([vocab.chars[i] for i in nxt.tolist()])
        if t + 1 < length:
            logits, state = step(nxt, state)
    return [prompt + vocab.decode(row) for row in out.cpu().numpy()]
