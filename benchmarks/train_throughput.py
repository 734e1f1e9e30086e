"""Training throughput: charlm's real path (Lightning, DataModule, callbacks) vs a plain PyTorch
loop on the same model and batches, interleaved in one process.

    .venv/bin/python benchmarks/train_throughput.py [--steps 60] [--repeats 3] [--data FILE]
        [--precision 32-true|bf16-mixed|auto] [--plain-fused]
    .venv/bin/python benchmarks/train_throughput.py --smoke   # a tiny model, 5 steps: checks it

``--precision auto`` is what a user gets with no precision flag: charlm decides
(charlm.training.precision), and the plain loop runs in both precisions, its faster one being the
baseline of each pair. The plain loop takes the AdamW that ``torch.optim.AdamW(params)`` gives
(on the CPU, an update tensor by tensor); charlm trains with torch's fused AdamW, so the ratio
counts that in. ``--plain-fused`` gives the plain loop the fused one too, leaving Lightning's cost.

Prints one JSON line per figure, then a table. The ratio charlm/plain is what matters: the
machine is shared, so absolute chars/s move from minute to minute; the two runs of each pair
are measured back to back.

charlm's training keeps the memory a step frees (charlm.training.allocator) for the rest of the
process, so the plain loop would run with glibc's default settings only until charlm's first run.
Both sides therefore run with charlm's settings from the start (``--malloc kept``), and the ratio is
Lightning's cost alone; ``--malloc system`` runs both with glibc's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from charlm.data.corpus import TrainStreams, load_corpus
from charlm.model import CharRNN, ModelConfig, detach_state
from charlm.training.environment import prepare_process
from charlm.training.fit import TrainConfig, fit
from charlm.training.precision import cpu_kind

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
README = Path(__file__).resolve().parents[1] / "README.md"  # --smoke's corpus
CONFIGS = [  # (cell, hidden, layers, steps scale): batch 64 x 128 chars as the issue asks
    ("lstm", 128, 2, 1.0), ("lstm", 512, 2, 0.25), ("gru", 256, 2, 0.5), ("rnn", 256, 2, 1.0)]


GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # weight blocks per layer (i, f, g, o for the LSTM)


def model_flops_per_char(cell: str, hidden: int, layers: int, vocab: int, emb: int = 64) -> float:
    """Training FLOPs per character: the matmuls of the forward pass (2 per multiply-add: input and
    recurrent weights of every layer, and the output head), times 3 for forward plus backward
    (the backward pass does two matmuls of the same size per forward one). Element-wise gate
    arithmetic is left out, as is usual for model FLOP utilisation."""
    g = GATES[cell]
    recurrent = sum(2 * g * hidden * ((emb if k == 0 else hidden) + hidden) for k in range(layers))
    return 3 * (recurrent + 2 * hidden * vocab)


def matmul_peak(batch: int, seq: int, cell: str, hidden: int, repeats: int = 5) -> float:
    """fp32 FLOP/s of the largest matmul the step does, (B·T, H) @ (H, G·H), at this thread count:
    the ceiling the step's own shapes could reach."""
    a = torch.randn(batch * seq, hidden)
    w = torch.randn(hidden, GATES[cell] * hidden)
    a @ w  # warm up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ w
        best = max(best, 2 * a.shape[0] * a.shape[1] * w.shape[1] / (time.perf_counter() - t0))
    return best


def plain_loop(ids, cell, hidden, layers, batch, seq, steps, lr=2e-3, device="cpu",
               precision="32-true", on_step=None, impl="auto", prepare=None,
               fused=False) -> float:
    """A 30-line PyTorch loop: stateful TBPTT, AdamW, clipping. Returns chars/s.
    ``on_step(step)``, if given, is called as each step starts (a profiler's or a clock's hook);
    ``prepare(model)``, if given, returns the module to train in its place (torch.compile's);
    ``fused``: torch's fused AdamW, as charlm trains, instead of the default a plain loop gets."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(int(ids.max()) + 1, cell, hidden, layers, 64, impl=impl)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0,
                            fused=fused or None)
    if prepare is not None:
        model = prepare(model)
    streams = TrainStreams(ids, batch, seq)
    state = None
    t0 = time.perf_counter()
    for step in range(steps):
        if on_step is not None:
            on_step(step)
        x, y, reset = streams.batch(step)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if reset:
            state = None
        with torch.autocast(torch.device(device).type, torch.bfloat16,
                            enabled=precision == "bf16-mixed"):
            logits, state = model(x, state)
        state = detach_state(state)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return batch * seq * steps / (time.perf_counter() - t0)


class StepHook(Callback):
    """Calls ``hook(step)`` as each of charlm's training steps starts: plain_loop's ``on_step``
    for charlm's run (a profiler's, a clock's or a sync counter's hook)."""

    def __init__(self, hook):
        self.hook = hook

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.hook(batch_idx)


def charlm_run(data, cell, hidden, layers, batch, seq, steps, accelerator="cpu",
               precision="32-true", callbacks=()) -> float:
    """charlm's training path as a user runs it, with ``callbacks`` added (StepHooks); chars/s."""
    with tempfile.TemporaryDirectory() as out:
        results = fit(TrainConfig(data=[data], cell=cell, hidden_size=hidden, num_layers=layers,
                                  batch_size=batch, seq_len=seq, max_steps=steps, eval_every=0,
                                  out=out + "/run", progress=False, lr=2e-3,
                                  accelerator=accelerator, devices=1, precision=precision),
                      callbacks=list(callbacks))
    return results["train_chars_per_s"]


def plain_rate(ids, cell, hidden, layers, batch, seq_len, steps, device, precision,
               fused=False) -> float:
    """The plain loop's chars/s in ``precision``; 0 where this machine has no kernel for it
    (oneDNN's bf16 LSTM without AVX512), so the other precision counts as the faster one."""
    try:
        return plain_loop(ids, cell, hidden, layers, batch, seq_len, steps, device=device,
                          precision=precision, fused=fused)
    except RuntimeError:
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHAKESPEARE))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--precision", default="32-true",
                        choices=("32-true", "bf16-mixed", "auto"),
                        help="auto: charlm's own choice against the plain loop's faster precision")
    parser.add_argument("--configs", default=None,
                        help="Only these, e.g. lstm:256:1,gru:256:2 (cell:hidden:layers).")
    parser.add_argument("--malloc", default="kept", choices=("kept", "system"),
                        help="charlm's malloc settings for both sides, or glibc's defaults")
    parser.add_argument("--plain-fused", action="store_true",
                        help="the plain loop with torch's fused AdamW, as charlm's: the ratio is "
                             "then Lightning's cost alone (default: the AdamW a plain loop gets)")
    parser.add_argument("--smoke", action="store_true",
                        help="one tiny model, batch 4 x 16, 5 steps, once: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.configs, args.steps, args.repeats, args.batch_size, args.seq_len = \
            "lstm:16:1", 5, 1, 4, 16
        if args.data == parser.get_default("data"):
            args.data = str(README)
    if args.malloc == "system":
        os.environ["CHARLM_MALLOC"] = "system"  # so prepare_process leaves malloc alone too
    kept = prepare_process()  # what charlm train does before it trains, for both sides
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    corpus = load_corpus([args.data])
    ids = corpus.split(0.1, 0.0)["train"]
    rows = []
    configs = CONFIGS if not args.configs else [
        (c, int(h), int(n), 1.0) for c, h, n in (x.split(":") for x in args.configs.split(","))]
    for cell, hidden, layers, scale in configs:
        steps = max(5, int(args.steps * scale))
        plain, ours = [], []
        sides = ("32-true", "bf16-mixed") if args.precision == "auto" else (args.precision,)
        for _ in range(args.repeats):  # interleaved pairs, so drift hits both alike
            plain.append(max(plain_rate(ids, cell, hidden, layers, args.batch_size, args.seq_len,
                                        steps, device, side, args.plain_fused)
                             for side in sides))
            ours.append(charlm_run(args.data, cell, hidden, layers, args.batch_size, args.seq_len,
                                   steps, accelerator=args.accelerator, precision=args.precision))
        row = {"figure": "train_chars_per_s", "cell": cell, "hidden": hidden, "layers": layers,
               "batch": args.batch_size, "seq_len": args.seq_len, "steps": steps,
               "accelerator": args.accelerator, "precision": args.precision,
               "plain_fused": args.plain_fused,
               "threads": torch.get_num_threads(), "malloc_kept": kept, "cpu": cpu_kind(),
               "plain": round(statistics.median(plain)), "charlm": round(statistics.median(ours)),
               "ratio": round(statistics.median(o / p for o, p in zip(ours, plain)), 3),
               "pair_ratios": [round(o / p, 3) for o, p in zip(ours, plain)]}
        flops = model_flops_per_char(cell, hidden, layers, int(ids.max()) + 1)
        peak = matmul_peak(args.batch_size, args.seq_len, cell, hidden)
        row.update({"model_gflop_per_s": round(row["charlm"] * flops / 1e9, 2),
                    "matmul_peak_gflop_per_s": round(peak / 1e9, 1),
                    "mfu": round(row["charlm"] * flops / peak, 3)})
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{'config':<14}{'plain chars/s':>15}{'charlm chars/s':>16}{'ratio':>8}{'MFU':>7}")
    for r in rows:
        print(f"{r['cell']} {r['layers']}x{r['hidden']:<7}{r['plain']:>15,}{r['charlm']:>16,}"
              f"{r['ratio']:>8.3f}{r['mfu']:>7.2f}")


if __name__ == "__main__":
    main()
