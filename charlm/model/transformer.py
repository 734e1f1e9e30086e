"""A small causal transformer as a registered cell: the reference a recurrent cell is held to.

nanoGPT's shape, small: pre-norm blocks (LayerNorm → causal self-attention → residual,
LayerNorm → MLP → residual), learned positions, a final LayerNorm. It plugs in where a recurrent
stack does, ``module(x (B, T, E), state) -> (out (B, T, H), state)``, with ``hidden_size`` its
width, ``num_layers`` its blocks, and ``heads`` and ``context`` in ``ModelConfig.extra``.

The "state" is a key/value cache bounded by the context, so generation costs one position per
character instead of recomputing the window:

    state = (K, V, X)   K, V (L, B, heads, P, head_dim): every block's keys and values so far
                        X    (1, B, P, E): the inputs they came from, P <= context

Positions count from the start of the cached window. When the next input would not fit, the
window restarts from its last ``context // 2`` inputs, whose keys and values are recomputed at
their new positions: every character is predicted from at least ``context // 2`` and at most
``context`` characters before it (exactly what a full forward of those characters gives).

Training reads each window fresh (no state carried, as nanoGPT trains); evaluation carries the
cache, so a full pass over a split is a sliding window with up to ``context`` characters of
history.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charlm.model.registry import register_cell

State = tuple[Tensor, Tensor, Tensor]


def default_heads(width: int) -> int:
    """The most heads of at least 64 dimensions that divide ``width`` (at least one)."""
    return max([h for h in range(1, max(1, width // 64) + 1) if width % h == 0])


class Block(nn.Module):
    """One pre-norm block; attention over the cached keys/values and the new positions."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h (B, T, W), past (B, nh, P, hd) → h, and the keys/values (B, nh, P+T, hd)."""
        b, t, w = h.shape
        q, k, v = self.qkv(self.ln1(h)).split(w, dim=-1)  # (B, T, W) each
        q, k, v = (z.view(b, t, self.heads, w // self.heads).transpose(1, 2) for z in (q, k, v))
        k, v = torch.cat([past_k.to(k.dtype), k], 2), torch.cat([past_v.to(v.dtype), v], 2)
        p = past_k.size(2)
        # query i (position p+i) sees keys 0..p+i: ones below the shifted diagonal
        mask = torch.ones(t, p + t, dtype=torch.bool, device=h.device).tril(p)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hd)
        h = h + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, w)))
        return h + self.drop(self.mlp(self.ln2(h))), k, v


class CausalTransformer(nn.Module):
    """A stack of blocks with learned positions; the cell interface with a K/V-cache state."""

    def __init__(self, input_size: int, width: int, num_layers: int, dropout: float = 0.0, *,
                 heads: int, context: int):
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"the transformer's width {width} must be a multiple of its "
                             f"heads {heads}")
        if context < 2:
            raise ValueError(f"the transformer's context must be at least 2, not {context}")
        self.width, self.heads, self.context, self.num_layers = width, heads, context, num_layers
        self.inp = nn.Linear(input_size, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def empty(self, x: Tensor) -> State:
        """The cache of nothing read yet, for inputs like ``x`` (B, T, E)."""
        b, hd = x.size(0), self.width // self.heads
        kv = x.new_zeros(self.num_layers, b, self.heads, 0, hd)
        return kv, kv.clone(), x.new_zeros(1, b, 0, x.size(-1))

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """x (B, T, E) → out (B, T, W) and the cache after it; training starts fresh."""
        if state is None or self.training:
            state = self.empty(x)
        outs, start = [], 0
        while start < x.size(1):
            if state[2].size(2) == self.context:  # full: restart from the last half
                state = self._read(state[2][0, :, -(self.context // 2):], self.empty(x))[1]
            room = self.context - state[2].size(2)
            out, state = self._read(x[:, start:start + room], state)
            outs.append(out)
            start += room
        out = torch.cat(outs, 1) if outs else x.new_zeros(x.size(0), 0, self.width)
        return out, state

    def _read(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Append ``x`` (B, T, E), which fits in the context, to the cache ``state``."""
        ks, vs, seen = state
        p, t = seen.size(2), x.size(1)
        positions = torch.arange(p, p + t, device=x.device)
        h = self.drop(self.inp(x) + self.pos(positions))  # (B, T, W)
        new_k, new_v = [], []
        for block, past_k, past_v in zip(self.blocks, ks, vs):
            h, k, v = block(h, past_k, past_v)
            new_k.append(k)
            new_v.append(v)
        seen = torch.cat([seen, x[None].to(seen.dtype)], 2)
        return self.ln_f(h), (torch.stack(new_k), torch.stack(new_v), seen)


def build(input_size: int, hidden_size: int, num_layers: int, dropout: float, *,
          heads: int | None = None, context: int = 128) -> CausalTransformer:
    """The registry's factory: ``hidden_size`` is the width, ``num_layers`` the blocks."""
    return CausalTransformer(input_size, hidden_size, num_layers, dropout,
                             heads=heads or default_heads(hidden_size), context=context)


register_cell("transformer", build, recurrent=False)
