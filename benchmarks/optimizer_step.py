"""What the fused AdamW saves in a whole training step: two copies of one model trained side by
side, step about, one with torch's default AdamW update (on the CPU, tensor by tensor), one with
the fused kernel charlm trains with (``charlm.training.optimizer.adamw``). Forward, loss,
backward, clipping and the update are timed together, so the figure is the share of a real step.

    .venv/bin/python benchmarks/optimizer_step.py [--configs lstm:384:1] [--batch-size 8]
        [--precision 32-true|bf16-mixed] [--steps 300] [--device cpu|cuda]
    .venv/bin/python benchmarks/optimizer_step.py --smoke   # a tiny model, a few steps

Prints one JSON line per model: the median step of each (ms), fused / default, and the CPU.
Interleaving the two makes a burst of other work on a shared machine slow both alike. On a GPU
(``--device cuda``: torch's default there is its multi-tensor update) each step ends in a
synchronisation, so the figure is the step's device time as the host waits for it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from charlm.model import CharRNN, ModelConfig
from charlm.training.optimizer import adamw, is_fused
from charlm.training.precision import cpu_kind


def step_time(model: CharRNN, optimizer: torch.optim.Optimizer, ids: torch.Tensor,
              bf16: bool) -> float:
    """Seconds of one training step on ``ids`` (B, T + 1), clipped at norm 5 as charlm does."""
    t0 = time.perf_counter()
    with torch.autocast(ids.device.type, torch.bfloat16, enabled=bf16):
        logits, _ = model(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), ids[:, 1:].reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    if ids.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(cell: str, hidden: int, layers: int, batch: int, seq_len: int, steps: int,
            precision: str, device: str = "cpu", vocab: int = 65) -> dict:
    torch.manual_seed(0)
    ids = torch.randint(vocab, (batch, seq_len + 1), device=device)
    runs = {}
    for fused in (False, True):
        model = CharRNN(ModelConfig(vocab, cell, hidden, layers)).to(device).train()
        optimizer = adamw(model.parameters(), lr=1e-3, fused=fused)
        assert is_fused(optimizer) == fused, "torch has no fused AdamW for this device"
        runs[fused] = (model, optimizer, [])
    warm = max(2, steps // 10)
    for i in range(warm + steps):
        for model, optimizer, times in runs.values():
            dt = step_time(model, optimizer, ids, precision == "bf16-mixed")
            if i >= warm:
                times.append(dt)
    default, fused = (statistics.median(runs[f][2]) for f in (False, True))
    return {"figure": "train_step_ms", "cell": cell, "hidden": hidden, "layers": layers,
            "batch": batch, "seq_len": seq_len, "precision": precision, "steps": steps,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "default_ms": round(default * 1e3, 3),
            "fused_ms": round(fused * 1e3, 3), "fused_over_default": round(fused / default, 3),
            "chars_per_s_default": round(batch * seq_len / default),
            "chars_per_s_fused": round(batch * seq_len / fused), "cpu": cpu_kind()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="lstm:384:1",
                        help="cell:hidden:layers, comma-separated (default: train's model)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--smoke", action="store_true", help="a tiny model, a few steps")
    args = parser.parse_args()
    if args.smoke:
        args.configs, args.batch_size, args.seq_len, args.steps = "lstm:16:1", 2, 8, 5
    for spec in args.configs.split(","):
        cell, hidden, layers = spec.split(":")
        print(json.dumps(compare(cell, int(hidden), int(layers), args.batch_size, args.seq_len,
                                 args.steps, args.precision, args.device)), flush=True)


if __name__ == "__main__":
    main()
