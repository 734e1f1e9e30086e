"""The optimiser, built in one place for training runs and for the steps that ``precision`` times.

torch's AdamW updates the weights on the CPU in a loop over the parameter tensors, several small
kernels each, unless asked for its fused kernel: one pass over every tensor. A small model's
step feels the difference (docs/results.md, "One fused optimiser step"), so charlm asks for it
wherever torch has it for the parameters' device.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw(params: Iterable, lr: float, betas: tuple[float, float] = (0.9, 0.999),
          fused: bool = True) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors or param groups), fused where ``fused`` is asked for and
    torch has a fused kernel for their device; the unfused update otherwise."""
    params = list(params)  # read twice where the fused kernel is refused
    if fused:
        try:
            return torch.optim.AdamW(params, lr=lr, betas=betas, fused=True)
        except RuntimeError:  # a device torch has no fused AdamW for
            pass
    return torch.optim.AdamW(params, lr=lr, betas=betas)


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` was built to run fused: what Lightning's mixed-precision plugin reads
    to refuse clipping (kept even where a resumed checkpoint's groups run unfused)."""
    return bool(optimizer.defaults.get("fused"))


__all__ = ["adamw", "is_fused"]
