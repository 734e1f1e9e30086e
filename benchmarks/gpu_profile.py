"""Where a GPU training run's time goes, charlm against the plain loop: each whole run cut into
phases at synchronised steps (set-up before the first step, the first steps, the steady state,
the last steps and the end), steady-state chars/s, and a torch.profiler summary of a few steps.

    python benchmarks/gpu_profile.py [--data FILE] [--steps 300] [--configs lstm:512:2,lstm:1024:3]
    python benchmarks/gpu_profile.py --smoke        # the same code, tiny, on the CPU
    python benchmarks/gpu_profile.py --cpu --configs lstm:128:2 --steps 60   # a CPU's phases

Prints one JSON line per figure; the profiler tables go to --tables (a folder) when given.
The phases show where a whole run's charlm / plain ratio (benchmarks/gpu.py's figure) loses
what the steady state does not: each is the median over the pairs, in seconds a run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from charlm.data.corpus import load_corpus
from charlm.training.allocator import keep_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import README, SHAKESPEARE, StepHook, charlm_run, plain_loop


class Clock:
    """Synchronised times at the first step, at two later steps (the steady state between
    them), and, for charlm, when its run clock starts (``on_train_start``)."""

    def __init__(self, first: int, last: int, device: str):
        self.first, self.last, self.device, self.t = first, last, device, {}

    def stamp(self, key) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.t[key] = time.perf_counter()

    def __call__(self, step: int) -> None:
        if step in (0, self.first, self.last):
            self.stamp(step)

    def chars_per_s(self, chars_per_step: int) -> float:
        return (self.last - self.first) * chars_per_step / (self.t[self.last] - self.t[self.first])

    def phases(self, whole_s: float) -> dict:
        """The run's measured time (``whole_s``, from its own clock: charlm's run clock less
        validation and checkpoints, or the plain loop's) cut at the synchronised steps."""
        start = self.t.get("start", self.t[0])  # the plain loop's clock starts at its step 0
        setup = self.t[0] - start
        warm = self.t[self.first] - self.t[0]
        steady = self.t[self.last] - self.t[self.first]
        return {"whole": whole_s, "setup": setup, "first_steps": warm, "steady": steady,
                "last_steps_and_end": whole_s - setup - warm - steady}


class RunStart(Callback):
    """Stamps ``clock`` when charlm's run clock starts."""

    def __init__(self, clock: Clock):
        self.clock = clock

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.stamp("start")


LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel")


class Profile:
    """torch.profiler over steps [first, first + n)."""

    def __init__(self, first: int, n: int, device: str):
        self.first, self.n, self.device, self.prof, self.wall = first, n, device, None, 0.0
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        self.acts = acts

    def __call__(self, step: int) -> None:
        if step == self.first:
            self.prof = torch.profiler.profile(activities=self.acts)
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        elif step == self.first + self.n and self.prof is not None:
            if self.device == "cuda":
                torch.cuda.synchronize()
            self.wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)

    def summary(self) -> dict:
        events = self.prof.key_averages()
        # Each kernel's time once, on the operator that launched it ("Self CUDA" in the table);
        # the device-side events also hold record_function spans, which would count it twice.
        on_host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
        gpu = sum(e.self_device_time_total for e in on_host) / 1e3 / self.n
        launches = sum(e.count for e in on_host if e.key in LAUNCHES) / self.n
        cpu_ops = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
        return {"wall_ms_per_step": round(self.wall * 1e3 / self.n, 2),
                "gpu_busy_ms_per_step": round(gpu, 2),
                "kernel_launches_per_step": round(launches, 1),
                "top_cpu_ms_per_step": {e.key[:40]: round(e.self_cpu_time_total / 1e3 / self.n, 3)
                                        for e in cpu_ops}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHAKESPEARE))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default="lstm:512:2,lstm:1024:3")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--tables", default=None, help="Folder for the profiler's full tables.")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="Measure on the CPU instead.")
    args = parser.parse_args()
    keep_freed_memory()
    if args.smoke:
        device, accelerator, steps, configs = "cpu", "cpu", 8, [("lstm", 32, 2)]
        args.repeats = 1
        if args.data == parser.get_default("data"):
            args.data = str(README)  # a small corpus: the smoke checks the code, not the speed
    else:
        device, accelerator, steps = ("cpu", "cpu", args.steps) if args.cpu else \
            ("cuda", "gpu", args.steps)
        configs = [(c, int(h), int(n)) for c, h, n in
                   (x.split(":") for x in args.configs.split(","))]
    ids = load_corpus([args.data]).split(0.1, 0.0)["train"]
    first, last = steps // 5, steps - 2
    for cell, hidden, layers in configs:
        rates = {"plain": [], "charlm": []}
        whole = {"plain": [], "charlm": []}
        phases = {"plain": [], "charlm": []}
        chars = 64 * 128
        for _ in range(args.repeats):
            clock = Clock(first, last, device)
            rate = plain_loop(ids, cell, hidden, layers, 64, 128, steps, device=device,
                              precision=args.precision, on_step=clock)
            rates["plain"].append(clock.chars_per_s(chars))
            whole["plain"].append(rate)
            phases["plain"].append(clock.phases(steps * chars / rate))
            clock = Clock(first, last, device)
            rate = charlm_run(args.data, cell, hidden, layers, 64, 128, steps, accelerator,
                              args.precision, [StepHook(clock), RunStart(clock)])
            rates["charlm"].append(clock.chars_per_s(chars))
            whole["charlm"].append(rate)
            phases["charlm"].append(clock.phases(steps * chars / rate))
        config = {"device": device, "cell": cell, "hidden": hidden, "layers": layers,
                  "precision": args.precision}
        print(json.dumps({"figure": "steady_chars_per_s", **config, "steps": f"{first}-{last}",
                          **{k: round(statistics.median(v)) for k, v in rates.items()},
                          "pair_ratios": [round(o / p, 3) for o, p in
                                          zip(rates["charlm"], rates["plain"])]}), flush=True)
        print(json.dumps({"figure": "whole_run_chars_per_s", **config, "steps": steps,
                          **{k: round(statistics.median(v)) for k, v in whole.items()},
                          "pair_ratios": [round(o / p, 3) for o, p in
                                          zip(whole["charlm"], whole["plain"])]}), flush=True)
        for name, runs in phases.items():
            print(json.dumps({"figure": "run_phases_s", "run": name, **config,
                              "steps": f"0-{first}-{last}-{steps}",
                              **{k: round(statistics.median(r[k] for r in runs), 4)
                                 for k in runs[0]}}), flush=True)
        n = min(10, last - first - 1)
        for name in ("plain", "charlm"):
            prof = Profile(first, n, device)
            if name == "plain":
                plain_loop(ids, cell, hidden, layers, 64, 128, first + n + 1, device=device,
                           precision=args.precision, on_step=prof)
            else:
                charlm_run(args.data, cell, hidden, layers, 64, 128, first + n + 1, accelerator,
                           args.precision, [StepHook(prof)])
            print(json.dumps({"figure": "profile", "run": name, "cell": cell, "hidden": hidden,
                              "layers": layers, **prof.summary()}), flush=True)
            if args.tables:
                Path(args.tables).mkdir(parents=True, exist_ok=True)
                Path(args.tables, f"{name}_{layers}x{hidden}.txt").write_text(
                    prof.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))


if __name__ == "__main__":
    main()
