"""GPU check and speed: training chars/s at fp32 and bf16-mixed, Lightning vs a plain loop,
sampling chars/s, and that a GPU-trained (bf16) checkpoint trains, evaluates and loads on the CPU.

    python benchmarks/gpu.py [--steps 200] [--repeats 2] [--data FILE] # on a machine with CUDA
    python benchmarks/gpu.py --smoke                                   # the same code, tiny, on CPU

One prepared script for a GPU session (about 3-5 minutes on one H100). It needs a CUDA build of
torch and charlm's dependencies (lightning, datasets, click, tqdm) in the Python that runs it.
Sections, each printing one JSON line per figure:

  env      torch, CUDA, cuDNN, device name
  check    a 50-step bf16-mixed run on the GPU: finite val loss, the checkpoint opens on the CPU,
           samples come from the GPU model, and a seeded sample on the GPU follows the CPU's
           (the same CPU draws: how many characters agree before rounding parts them)
  syncs    host-device synchronisations per training step, charlm against the plain loop
           (torch.cuda.set_sync_debug_mode), each with the line that caused it
  train    LSTM 2x512 and 3x1024, batch 64 x 128: charlm (Lightning) and the plain loop of
           benchmarks/train_throughput.py on the same device, fp32 and bf16-mixed, interleaved
  sample   generate() chars/s at batch 1 and 64, with the explicit cell's step (the CPU's fast
           path) and with the fused cuDNN module one character per call (what generate() uses on
           a GPU), and a plain cuDNN loop
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import charlm
from charlm.data.corpus import load_corpus
from charlm.generation import sampling
from charlm.model import CharRNN, ModelConfig
from charlm.model.cells import explicit_twin
from charlm.training.environment import prepare_process
from charlm.training.fit import TrainConfig, fit
from charlm.training.precision import bf16_failure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import README, SHAKESPEARE, StepHook, charlm_run, plain_loop


def emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def env_row(device: str) -> dict:
    row = {"figure": "env", "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": device}
    if device == "cuda":
        row.update(name=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version(),
                   bf16=torch.cuda.is_bf16_supported())
    return emit(row)


def check_row(data: str, accelerator: str, device: str, hidden: int, steps: int,
              precision: str = "bf16-mixed") -> dict:
    """Train briefly in bf16-mixed (or ``precision``) on the device; the checkpoint must open on
    the CPU."""
    with tempfile.TemporaryDirectory() as out:
        results = fit(TrainConfig(data=[data], cell="lstm", hidden_size=hidden, num_layers=2,
                                  batch_size=32, seq_len=64, max_steps=steps, eval_every=0,
                                  sample_every=steps, accelerator=accelerator, devices=1,
                                  precision=precision, out=out + "/run", progress=False))
        model, vocab, _ = charlm.load(results["checkpoint"])  # on the CPU, whatever trained it
        loaded_on = str(next(model.parameters()).device)
        cpu_sample = sampling.generate(model, vocab, "", 50, seed=0)[0]
        samples = (Path(out) / "run" / "samples.txt").read_text()
        # the same seed on the device: the same CPU draws, so the texts part only where the
        # device's logits round a draw across a boundary
        device_sample = sampling.generate(model.to(device), vocab, "", 50, seed=0)[0]
    same = next((i for i, (a, b) in enumerate(zip(cpu_sample, device_sample)) if a != b),
                min(len(cpu_sample), len(device_sample)))
    return emit({"figure": "check", "precision": precision, "steps": results["steps"],
                 "val_loss": results["val_loss"], "finite": math.isfinite(results["val_loss"]),
                 "params_device": loaded_on,
                 "samples_written_during_training": "temperature" in samples,
                 "cpu_sample_chars": len(cpu_sample),
                 "device_sample_same_chars_as_cpu": same})


def train_rows(data: str, ids, configs, precisions, accelerator: str, device: str, steps: int,
               repeats: int) -> list[dict]:
    rows = []
    for cell, hidden, layers in configs:
        for precision in precisions:
            plain, ours = [], []
            for _ in range(repeats):  # interleaved pairs
                plain.append(plain_loop(ids, cell, hidden, layers, 64, 128, steps,
                                        device=device, precision=precision))
                ours.append(charlm_run(data, cell, hidden, layers, 64, 128, steps,
                                       accelerator=accelerator, precision=precision))
            rows.append(emit({
                "figure": "train_chars_per_s", "device": device, "cell": cell, "hidden": hidden,
                "layers": layers, "precision": precision, "batch": 64, "seq_len": 128,
                "steps": steps, "plain": round(statistics.median(plain)),
                "charlm": round(statistics.median(ours)),
                "charlm_over_plain": round(statistics.median(o / p for o, p in zip(ours, plain)),
                                           3),
                "pair_ratios": [round(o / p, 3) for o, p in zip(ours, plain)]}))
    return rows


class SyncWatch:
    """A step hook that turns CUDA's sync warnings on for the steps between the first two and
    the last: the steady state, without set-up, the final validation or the checkpoint."""

    def __init__(self, steps: int, device: str):
        self.steps, self.device, self.watched = steps, device, 0

    def __call__(self, step: int) -> None:
        if self.device == "cuda" and step in (2, self.steps - 1):
            torch.cuda.set_sync_debug_mode("warn" if step == 2 else "default")
        if 2 <= step < self.steps - 1:
            self.watched += 1


def count_syncs(run, device: str) -> tuple[int, dict]:
    """Runs ``run`` and returns (steps watched, {"file:line": syncs}) of the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watched = run()
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("default")
    sites: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            site = f"{Path(w.filename).name}:{w.lineno}"
            sites[site] = sites.get(site, 0) + 1
    return watched, sites


def sync_rows(data: str, ids, accelerator: str, device: str, steps: int,
              hidden: int) -> list[dict]:
    """Host-device syncs a step: each one makes the host wait for the GPU to finish, so the
    host's own per-step work (Lightning's included) no longer overlaps the GPU's."""
    def ours():
        watch = SyncWatch(steps, device)
        charlm_run(data, "lstm", hidden, 2, 64, 128, steps, accelerator, precision="auto",
                   callbacks=[StepHook(watch)])
        return watch.watched

    def plain():  # the same steps watched: the model's set-up and the final wait are not
        watch = SyncWatch(steps, device)
        plain_loop(ids, "lstm", hidden, 2, 64, 128, steps, device=device, on_step=watch)
        return watch.watched

    rows = []
    for name, run in (("charlm", ours), ("plain", plain)):
        watched, sites = count_syncs(run, device)
        rows.append(emit({"figure": "syncs_per_step", "device": device, "run": name,
                          "steps_watched": watched,
                          "per_step": round(sum(sites.values()) / max(watched, 1), 3),
                          "sites": sites}))
    return rows


@torch.inference_mode()
def plain_sample(model: CharRNN, length: int, batch: int, device: str) -> None:
    """A plain per-character loop over the fused module: T=1 per call, state carried."""
    g = torch.Generator(device=device).manual_seed(0)
    x, state = torch.zeros(batch, 1, dtype=torch.long, device=device), None
    for _ in range(length):
        h, state = model.rnn(model.embedding(x), state)
        x = torch.multinomial(torch.softmax(model.head(h[:, -1]), -1), 1, generator=g)
    sync(device)


def sample_rows(vocab_size: int, configs, device: str, length: int, repeats: int) -> list[dict]:
    vocab = charlm.CharVocab([chr(32 + i) for i in range(vocab_size - 1)] + ["\n"])
    original = sampling.stepping_cell
    def fused_only(model):  # the fused module itself, T=1 per call (charlm's choice on a GPU)
        return None
    rows = []
    for cell, hidden, layers in configs:
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(len(vocab), cell, hidden, layers, 64)).to(device).eval()
        for batch in (1, 64):
            def ours(twin, model=model, batch=batch):
                def run():
                    sampling.stepping_cell = twin
                    try:
                        sampling.generate(model, vocab, "", length, num_samples=batch, seed=0)
                    finally:
                        sampling.stepping_cell = original
                return run
            fns = {"explicit_step": ours(explicit_twin), "fused_step": ours(fused_only),
                   "plain_loop": lambda m=model, b=batch: plain_sample(m, length, b, device)}
            for fn in fns.values():  # warm-up: cuDNN plans, allocator
                fn()
            times = {name: [] for name in fns}
            for _ in range(repeats):
                for name, fn in fns.items():
                    sync(device)
                    t0 = time.perf_counter()
                    fn()
                    sync(device)
                    times[name].append(time.perf_counter() - t0)
            rates = {f"{name}_chars_per_s": round(batch * length / statistics.median(t))
                     for name, t in times.items()}
            rows.append(emit({"figure": "sample_chars_per_s", "device": device, "cell": cell,
                              "hidden": hidden, "layers": layers, "num_samples": batch,
                              "length": length, **rates}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHAKESPEARE) if SHAKESPEARE.exists() else "stdlib")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sample-length", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on the CPU: checks the script")
    parser.add_argument("--only", default="check,train,syncs,sample")
    args = parser.parse_args()
    only = set(args.only.split(","))
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    if args.smoke:
        accelerator, device, steps, length = "cpu", "cpu", 3, 20
        configs = [("lstm", 32, 2)]
        args.repeats = 1
        if args.data == parser.get_default("data"):
            args.data = str(README)  # a small corpus: the smoke checks the code, not the speed
    elif torch.cuda.is_available():
        accelerator, device, steps, length = "gpu", "cuda", args.steps, args.sample_length
        configs = [("lstm", 512, 2), ("lstm", 1024, 3)]
    else:
        raise SystemExit("no CUDA device here (torch.cuda.is_available() is False); "
                         "run with --smoke to check the script on the CPU")
    precisions = ("32-true", "bf16-mixed")
    if args.smoke and bf16_failure(CharRNN(ModelConfig(8, "lstm", 16, 2, 8)), 8):
        precisions = ("32-true",)  # this CPU has no bf16 kernel for the LSTM (no AVX512)
    prepare_process()  # as charlm train does, for both sides
    env_row(device)
    corpus = load_corpus([args.data])
    ids = corpus.split(0.1, 0.0)["train"]
    rows = []
    if "check" in only:
        check_row(args.data, accelerator, device, 64 if not args.smoke else 16,
                  50 if not args.smoke else 3, precisions[-1])
    if "syncs" in only:
        rows += sync_rows(args.data, ids, accelerator, device, 8 if args.smoke else 40,
                          32 if args.smoke else 512)
    if "train" in only:
        rows += train_rows(args.data, ids, configs, precisions, accelerator, device, steps,
                           args.repeats)
    if "sample" in only:
        rows += sample_rows(len(corpus.vocab), configs, device, length, args.repeats)
    print(f"\n{'train':<12}{'precision':>12}{'plain chars/s':>15}{'charlm chars/s':>16}"
          f"{'ratio':>8}")
    for r in (r for r in rows if r["figure"] == "train_chars_per_s"):
        print(f"{r['cell']} {r['layers']}x{r['hidden']:<7}{r['precision']:>12}{r['plain']:>15,}"
              f"{r['charlm']:>16,}{r['charlm_over_plain']:>8.3f}")
    for r in (r for r in rows if r["figure"] == "syncs_per_step"):
        print(f"syncs a step, {r['run']}: {r['per_step']} over {r['steps_watched']} steps "
              f"{r['sites']}")
    print(f"\n{'sample':<12}{'B':>4}{'explicit step':>15}{'fused step':>12}{'plain loop':>12}"
          "   (chars/s)")
    for r in (r for r in rows if r["figure"] == "sample_chars_per_s"):
        print(f"{r['cell']} {r['layers']}x{r['hidden']:<7}{r['num_samples']:>4}"
              f"{r['explicit_step_chars_per_s']:>15,}{r['fused_step_chars_per_s']:>12,}"
              f"{r['plain_loop_chars_per_s']:>12,}")


if __name__ == "__main__":
    main()
