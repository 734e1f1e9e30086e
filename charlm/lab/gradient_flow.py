"""How far back the gradient reaches: ||∂L_t/∂h_{t−k}|| against k, vanishing gradients made visible.

The lecture note's claim is that the plain RNN's gradient vanishes through time while the gated
cells' additive updates (LSTM's C_t = f·C_{t−1} + i·C̃_t, GRU's h_t = (1−z)·h_{t−1} + z·h̃_t) let it
through. This module measures it on a model and a text:

    window:  [ warm-up (no grad) ........ | t−K ... t−1  t ] → loss L_t on the character after t
                      state burned in ───▶ h_{t−K} ... h_t   (the state of every step is kept)
    norms[k] = mean over windows of ||∂L_t / ∂h_{t−k}||      (h of every layer, per window)

Windows run as one batch: rows are independent and the loss is summed over rows, so row b's
gradient is exactly the gradient of row b's own loss. The model is stepped one character at a time
through ``model.rnn(x[:, t:t+1], state)``, which every registered cell supports, and the loss is
read from the top layer of the *state* (not the ``out`` tensor), so that h_t itself is in the graph.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from charlm.errors import CharlmError
from charlm.model import CharRNN, detach_state, state_hidden


def window_starts(n: int, span: int, windows: int) -> np.ndarray:
    """``windows`` start positions spread evenly over ``n`` ids, each leaving ``span`` ids."""
    if n < span:
        raise CharlmError(f"the gradient-flow probe needs {span} characters per window and the "
                          f"split has {n}; use a smaller `probe_k` or more text")
    return np.linspace(0, n - span, num=windows).round().astype(np.int64)


def gradient_flow(model: CharRNN, ids: np.ndarray, max_k: int = 64, windows: int = 32,
                  warmup: int = 128) -> np.ndarray:
    """Mean ||∂L_t/∂h_{t−k}|| for k = 0..max_k over ``windows`` windows of ``ids``: (max_k + 1,).

    ``warmup`` characters are read first without gradients, so h_{t−K} is a realistic state rather
    than zeros. Dropout is off (eval mode); the model's mode is restored afterwards.
    """
    if max_k < 0 or windows < 1:
        raise CharlmError(f"the probe needs max_k >= 0 and windows >= 1, not {max_k}, {windows}")
    warmup = max(0, min(warmup, len(ids) - max_k - 2))  # a short split gets a shorter warm-up
    span = warmup + max_k + 2  # + the last input's target
    starts = window_starts(len(ids), span, windows)
    device = next(model.parameters()).device
    rows = np.asarray(ids)[starts[:, None] + np.arange(span)]  # (W, span)
    x = torch.from_numpy(rows.astype(np.int64)).to(device)  # (W, span)
    was_training = model.training
    model.eval()
    # cuDNN's fused RNN refuses backward in eval mode; the probe needs no cuDNN speed.
    with torch.backends.cudnn.flags(enabled=False):
        with torch.no_grad():
            state = model.rnn(model.embedding(x[:, :warmup]), None)[1] if warmup else None
        state = detach_state(state)
        hidden = []  # h_{t−K} ... h_t, each (L, W, H), all in one graph
        for t in range(warmup, warmup + max_k + 1):
            _, state = model.rnn(model.embedding(x[:, t:t + 1]), state)  # (W, 1, E) → state
            hidden.append(state_hidden(state))
        top = hidden[-1][-1]  # (W, H): the top layer's h_t, what the head reads
        loss = F.cross_entropy(model.head(top).float(), x[:, -1], reduction="sum")
        grads = torch.autograd.grad(loss, hidden, allow_unused=True)
    model.train(was_training)
    # per step, the norm of each window's gradient over layers × hidden: (W,)
    norms = [torch.zeros(len(starts), device=device) if g is None
             else g.transpose(0, 1).flatten(1).norm(dim=1) for g in grads]
    return torch.stack(norms[::-1]).mean(dim=1).double().cpu().numpy()  # index k: h_{t−k}


def decay_k(norms: np.ndarray, ratio: float = 0.1) -> int:
    """The first k with norms[k] < ratio · norms[0]; ``len(norms)`` (> K) when there is none."""
    below = np.flatnonzero(np.asarray(norms) < ratio * norms[0])
    return int(below[0]) if len(below) else len(norms)


def steps_per_decade(norms: np.ndarray) -> float | None:
    """Steps back for the norm to fall tenfold, from a least-squares line through log10 norms[1:].

    ``decay_k`` measures against k = 0, the direct path through the output layer; this slope
    measures the recurrence alone. None when the norm does not fall at all.
    """
    k = np.arange(1, len(norms))
    norms = np.asarray(norms[1:], dtype=float)
    keep = norms > 0  # a norm that underflowed to 0 has no logarithm
    if keep.sum() < 2:
        return 1.0 if len(norms) else None  # it fell to 0 within a step or two
    slope = np.polyfit(k[keep], np.log10(norms[keep]), 1)[0]
    return float(-1.0 / slope) if slope < 0 else None


def format_decay(k: int, max_k: int) -> str:
    """``decay_k`` for a table: the number, or ">K" when the norm never fell that far."""
    return f">{max_k}" if k > max_k else str(k)


__all__ = ["decay_k", "format_decay", "gradient_flow", "steps_per_decade", "window_starts"]
