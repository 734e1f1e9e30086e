"""The metrics, defined once: nats per character over a full pass, bpc, perplexity.

``loss`` is the mean cross-entropy in nats over every predicted character of a split, read in one
pass with the hidden state carried; ``bpc = loss / ln 2``; ``perplexity = exp(loss)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from charlm.data.corpus import IGNORE, eval_batches
from charlm.model import CharRNN, State, detach_state

LN2 = math.log(2.0)


def sequence_loss(model: CharRNN, x: Tensor, y: Tensor,
                  state: State | None) -> tuple[Tensor, Tensor, State]:
    """Summed cross-entropy (nats) over the scored targets of a window, their count, new state."""
    logits, state = model(x, state)  # (B, T, V)
    return *scored_loss(logits, y), state


def scored_loss(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy (nats) of logits (B, T, V) over the scored targets y, their count."""
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
    return loss_sum, (y != IGNORE).sum()


def summarize(loss_sum: float, count: int) -> dict:
    """loss (nats/char), bpc, perplexity and chars from a summed loss and a count."""
    loss = loss_sum / max(count, 1)
    return {"loss": loss, "bpc": loss / LN2, "perplexity": math.exp(min(loss, 700.0)),
            "chars": int(count)}


@torch.no_grad()
def loss_sums(model: CharRNN, batches: Iterable[tuple[Tensor, Tensor, bool]],
              device: torch.device | str = "cpu") -> tuple[float, int]:
    """Run the model over windows with the state carried; summed loss and scored characters."""
    was_training = model.training
    model.eval()
    total, count, state = torch.zeros((), dtype=torch.float64, device=device), 0, None
    for x, y, reset in batches:
        if reset:
            state = None
        loss_sum, n, state = sequence_loss(model, x.to(device), y.to(device), state)
        state = detach_state(state)
        total += loss_sum.double()
        count += int(n)
    model.train(was_training)
    return float(total), count


def evaluate(model: CharRNN, ids: np.ndarray, seq_len: int = 256, *, rank: int = 0,
             world: int = 1, device: torch.device | str = "cpu",
             reduce: Callable[[Tensor], Tensor] | None = None) -> dict:
    """Full-pass metrics of ``model`` on ``ids``; ``reduce`` sums over processes under DDP."""
    total, count = loss_sums(model, eval_batches(ids, seq_len, rank=rank, world=world), device)
    if reduce is not None:
        sums = reduce(torch.tensor([total, float(count)], dtype=torch.float64, device=device))
        total, count = float(sums[0]), int(sums[1])
    return summarize(total, count)
