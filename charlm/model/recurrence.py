"""The tanh RNN's recurrence with a hand-written backward pass, for training on the CPU.

torch's CPU ``nn.RNN`` records every time step in autograd, so the backward pass of a window
walks several graph nodes per character. The recurrence below is one autograd node per layer: the
forward loop keeps each step's h, and the backward loop runs back-propagation through time
itself,

    a_t = W_hh h_{t-1} + (W_ih x_t + b_ih + b_hh)          h_t = tanh(a_t)
    ∂L/∂a_t = (∂L/∂h_t from above + ∂L/∂h_t through h_{t+1}) ⊙ (1 − h_t²)
    ∂L/∂h_{t-1} through the recurrence = W_hhᵀ ∂L/∂a_t
    ∂L/∂W_hh = Σ_t ∂L/∂a_t h_{t-1}ᵀ   (one matrix product over every step at the end)

with the input projection of every step computed at once outside it, so autograd still owns
W_ih, the biases, dropout between layers and everything below the first layer. It computes what
``nn.RNN`` computes (the tests compare both, gradients included, in float64); the parameters, their
names and the checkpoints are ``nn.RNN``'s own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Recurrence(torch.autograd.Function):
    """h_t = tanh(xw_t + h_{t-1} W_hhᵀ) for t = 1..T: (T, B, H) inputs → (T, B, H) states."""

    @staticmethod
    def forward(ctx, xw: Tensor, h0: Tensor, w_hh: Tensor) -> Tensor:
        out = torch.empty_like(xw)
        h, w_t = h0, w_hh.t()
        for t in range(xw.shape[0]):
            h = torch.addmm(xw[t], h, w_t, out=out[t]).tanh_()
        ctx.save_for_backward(h0, w_hh, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        h0, w_hh, out = ctx.saved_tensors
        grad_a = torch.empty_like(out)
        slope = 1 - out * out  # tanh' at every step, at once
        grad_h = torch.zeros_like(h0)  # ∂L/∂h_t through h_{t+1}
        for t in range(out.shape[0] - 1, -1, -1):
            torch.mul(grad_out[t] + grad_h, slope[t], out=grad_a[t])
            grad_h = grad_a[t] @ w_hh
        before = torch.cat([h0[None], out[:-1]])  # h_{t-1} for every t
        grad_w = grad_a.flatten(0, 1).t() @ before.flatten(0, 1)
        return grad_a, grad_h, grad_w


class TanhRNN(nn.RNN):
    """``nn.RNN`` (tanh, batch-first, with biases) that trains through ``_Recurrence`` on the CPU.

    Where autograd is not recording, on another device, under autocast or with packed sequences
    or ReLU, it is ``nn.RNN`` exactly (evaluation and sampling take that path).
    """

    def forward(self, x, hx=None):
        if not self._own_path(x):
            return super().forward(x, hx)
        if hx is None:
            hx = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)
        layer_in, last = x, []
        for k in range(self.num_layers):
            if k and self.dropout:
                layer_in = F.dropout(layer_in, self.dropout, self.training)
            w_ih, w_hh, b_ih, b_hh = (getattr(self, f"{n}_l{k}")
                                      for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            xw = F.linear(layer_in, w_ih, b_ih) + b_hh  # (B, T, H): every step's input at once
            layer_in = _Recurrence.apply(xw.transpose(0, 1).contiguous(), hx[k], w_hh
                                         ).transpose(0, 1)
            last.append(layer_in[:, -1])
        return layer_in, torch.stack(last)

    def _own_path(self, x) -> bool:
        return (isinstance(x, Tensor) and torch.is_grad_enabled() and x.device.type == "cpu"
                and x.dim() == 3 and self.batch_first and self.bias
                and self.nonlinearity == "tanh" and not self.bidirectional
                and self.proj_size == 0 and x.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled("cpu")
                and (x.requires_grad or any(p.requires_grad for p in self.parameters())))
