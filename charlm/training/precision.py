"""``--precision auto`` and the default batch: chosen from what this machine really does.

bf16 pays only where the hardware computes it: a CPU with AMX or AVX512-BF16 (oneDNN runs bf16
matmuls natively), a CUDA GPU of compute capability 8.0 or newer. A CPU with AVX512 but without
AVX512-BF16 *emulates* bf16 and trains several times slower than in float32, although
oneDNN's own ``_is_mkldnn_bf16_supported()`` says yes there. So the decision reads the CPU's
capabilities (``torch.cpu.get_capabilities()``) and, where they cannot tell (another
architecture, a torch without the call), times a few training steps in both precisions.

The default batch is measured too: doubling the batch from 8 to 16 pays in a fixed time budget
only where it nearly doubles the characters per second (the steps per second stay, each step
sees twice the text); where it does not, batch 8 takes twice the optimiser steps and ends lower.
Measurements are cached per machine, torch version and model shape, so only a run's first
start on a machine pays for them (well under two seconds).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from charlm.atomic import atomic_write_bytes
from charlm.errors import CharlmError
from charlm.generation.metrics import sequence_loss
from charlm.training.optimizer import adamw

SMALL_BATCH, LARGE_BATCH = 8, 16
# Batch 16 must give this many times batch 8's chars/s to win in a fixed budget: at 2x the
# steps per second are equal and every step sees twice the text; at 1x batch 8 makes twice
# the steps. Between the two, the fixed-budget runs of docs/results.md put the break-even near
# 1.5x, where the two batches end alike; 1.6 keeps batch 8 where it is a tie.
LARGE_BATCH_GAIN = 1.6
MEASURE_BUDGET_S = 1.5  # all the timed steps of one decision together, warm-ups included
# What a timed step is, in the cache's keys: a change to it (2: the optimiser fused, as in
# training) makes every machine measure again rather than reuse rates of another step.
TIMED_STEP = 2


@dataclass(frozen=True)
class Decision:
    """A precision and a batch with the one-line reason for each (what run.json records)."""

    precision: str
    batch_size: int
    precision_reason: str
    batch_reason: str

    def line(self) -> str:
        """What a run prints: the choice and why, in one line."""
        return (f"precision: {self.precision}, batch {self.batch_size} "
                f"(auto: {self.precision_reason}; {self.batch_reason})")

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_kind(capabilities: dict | None = None) -> dict:
    """The CPU's name and the flags that decide bf16 (for figures that say where they ran)."""
    caps = capabilities if capabilities is not None else cpu_capabilities()
    return {"cpu": _cpu_name(), "arch": platform.machine(),
            "amx_bf16": bool(caps.get("amx_bf16")), "avx512_bf16": bool(caps.get("avx512_bf16")),
            "avx512": bool(caps.get("avx512_f")), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def cpu_bf16(capabilities: dict) -> tuple[bool | None, str]:
    """Whether this CPU computes bf16 natively, from its reported capabilities; None: unknown."""
    if capabilities.get("amx_bf16"):
        return True, "AMX computes bf16 natively"
    if capabilities.get("avx512_bf16"):
        return True, "AVX512-BF16 computes bf16 natively"
    if capabilities.get("architecture", platform.machine()) in ("x86_64", "AMD64", "i386"):
        if capabilities.get("avx512_f"):
            return False, "AVX512 without AVX512-BF16 emulates bf16 (slower than float32)"
        if capabilities.get("avx2") or capabilities.get("avx"):
            return False, "no AVX512-BF16 or AMX: bf16 would be emulated (slower than float32)"
    return None, "the CPU does not report its bf16 support"


def cuda_bf16(capability: tuple[int, int]) -> tuple[bool, str]:
    """Whether a CUDA device of compute ``capability`` has bf16 tensor cores (8.0, Ampere, on)."""
    major, minor = capability
    if major >= 8:
        return True, f"the GPU (compute capability {major}.{minor}) computes bf16 natively"
    return False, f"the GPU (compute capability {major}.{minor}) has no bf16 tensor cores"


def on_cuda(accelerator: str) -> bool:
    """Whether ``accelerator`` (cpu, gpu, cuda or auto) trains on a CUDA device."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def on_accelerator(accelerator: str) -> bool:
    """Whether ``accelerator`` trains on a device other than the CPU (CUDA, Apple's MPS, ...)."""
    if accelerator == "auto":
        mps = getattr(torch.backends, "mps", None)
        return torch.cuda.is_available() or bool(mps and mps.is_available())
    return accelerator != "cpu"


# [(precision, batch), ...] → training chars/s of each, measured side by side
Measure = Callable[[list[tuple[str, int]]], list[float]]


def decide(precision: str, batch_size: int | None, accelerator: str, *,
           measure: Measure | None = None, capabilities: dict | None = None,
           cuda_capability: tuple[int, int] | None = None,
           no_bf16: Callable[[], str | None] | None = None, cell: str = "model") -> Decision:
    """The run's precision and batch: given values pass through; ``auto`` and a missing batch
    are decided from the hardware's report, and from ``measure`` where the report cannot tell
    (``measure`` None: no measurement, the safe float32 and batch 8).

    ``no_bf16()`` says why the ``cell`` cannot train in bf16 on this CPU (None: it can; see
    ``bf16_failure``): bf16 asked for is then refused, and ``auto`` takes float32 instead.
    """
    reason = "given"
    if precision == "auto":
        precision, reason = _auto_precision(accelerator, measure, capabilities, cuda_capability)
    if precision.startswith("bf16") and not on_cuda(accelerator) and no_bf16 is not None:
        failure = no_bf16()
        if failure and reason == "given":
            raise CharlmError(f"this CPU cannot train the {cell} cell in bf16 ({failure}); use "
                              f"`precision` 32-true")
        if failure:
            precision = "32-true"
            reason = f"{reason}, but oneDNN has no bf16 kernel for the {cell} on this CPU"
    if batch_size is not None:
        return Decision(precision, batch_size, reason, "batch given")
    if measure is None or on_cuda(accelerator):
        # No measurement here (a GPU, a distributed run): the batch the precision usually wants.
        batch = LARGE_BATCH if precision.startswith("bf16") else SMALL_BATCH
        return Decision(precision, batch, reason, "default batch for the precision")
    small, large = measure([(precision, SMALL_BATCH), (precision, LARGE_BATCH)])
    gain = large / small if small > 0 else 0.0
    batch = LARGE_BATCH if gain >= LARGE_BATCH_GAIN else SMALL_BATCH
    why = (f"batch {LARGE_BATCH} measured {gain:.2f}x the chars/s of batch {SMALL_BATCH}"
           f"{'' if batch == LARGE_BATCH else ', not enough to pay for half the steps'}")
    return Decision(precision, batch, reason, why)


def reported_bf16(accelerator: str, capabilities: dict | None = None,
                  cuda_capability: tuple[int, int] | None = None) -> tuple[bool | None, str]:
    """Whether the hardware ``accelerator`` trains on says it computes bf16 natively, and why;
    None where it does not say (``auto`` then measures). Nothing is measured here."""
    if on_cuda(accelerator):
        if cuda_capability is None:
            if not torch.cuda.is_available():
                return False, "no CUDA device is available"
            cuda_capability = torch.cuda.get_device_capability()
        return cuda_bf16(cuda_capability)
    if accelerator in ("cpu", "auto"):
        return cpu_bf16(capabilities if capabilities is not None else cpu_capabilities())
    return False, f"float32 is the safe default on {accelerator}"


def _auto_precision(accelerator: str, measure: Measure | None, capabilities: dict | None,
                    cuda_capability: tuple[int, int] | None) -> tuple[str, str]:
    native, why = reported_bf16(accelerator, capabilities, cuda_capability)
    if native is None:
        if measure is None:
            return "32-true", f"{why}, and was not measured"
        bf16, fp32 = measure([("bf16-mixed", SMALL_BATCH), ("32-true", SMALL_BATCH)])
        native = bf16 > fp32
        why = (f"measured bf16 {bf16:,.0f} against float32 {fp32:,.0f} chars/s at batch "
               f"{SMALL_BATCH}")
    return ("bf16-mixed" if native else "32-true"), why


def bf16_failure(model: torch.nn.Module, vocab_size: int) -> str | None:
    """Why a training step of ``model`` cannot run under the CPU's bf16 autocast here; None if it
    can. oneDNN builds its fused LSTM's bf16 kernels only on CPUs with AVX512, and elsewhere
    refuses at the first step, so a step on three characters tells before a run starts."""
    ids = torch.randint(vocab_size, (1, 3))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_sum, _, _ = sequence_loss(model, ids[:, :-1], ids[:, 1:], None)
        loss_sum.backward()
    except RuntimeError as e:
        return str(e).split(". ")[0].strip()
    finally:
        model.zero_grad(set_to_none=True)
    return None


def cpu_capabilities() -> dict:
    """What torch says this CPU can do (``torch.cpu.get_capabilities()``); {} where it cannot."""
    try:
        return dict(torch.cpu.get_capabilities())
    except (AttributeError, RuntimeError):
        return {}


def _cpu_name() -> str:
    """The CPU's model name, with its family and model numbers where Linux reports them: a
    virtual machine's name alone ("AMD EPYC") does not tell one generation from another."""
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        fields = {}
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


# -- measuring --------------------------------------------------------------------------------

def step_timer(build: Callable[[], torch.nn.Module], vocab_size: int, seq_len: int,
               cache: Path | None, key: dict, budget_s: float = MEASURE_BUDGET_S,
               keep: bool = True) -> Measure:
    """A ``Measure`` that times training steps of ``build()``'s model on random ids, on the CPU,
    remembering every answer in ``cache`` (a JSON file) under ``key`` + precision + batch
    (with ``keep`` false, answers already there are used and new ones are not written).

    The settings asked for together are timed in turns, one step each round, so a burst of
    other work on a shared machine slows them alike; each gets the fastest of its steps after
    a warm-up. All of it within ``budget_s`` (at most four settings per decision).
    """
    def measure(asked: list[tuple[str, int]]) -> list[float]:
        names = {(p, b): json.dumps({**key, "step": TIMED_STEP, "precision": p, "batch": b},
                                    sort_keys=True)
                 for p, b in asked}
        known = _read_cache(cache)
        todo = [setting for setting, name in names.items() if name not in known]
        if todo:
            rates = _time_steps(build, vocab_size, seq_len, todo, budget_s * len(todo) / 4)
            known = {**_read_cache(cache), **{names[s]: r for s, r in zip(todo, rates)}}
            if keep:
                _write_cache(cache, known)
        return [float(known[names[setting]]) for setting in asked]

    return measure


def _time_steps(build: Callable[[], torch.nn.Module], vocab_size: int, seq_len: int,
                settings: list[tuple[str, int]], budget_s: float) -> list[float]:
    """Training chars/s of each (precision, batch): forward, loss and backward, in turns."""
    torch.manual_seed(0)
    runs = []
    for p, b in settings:
        model = build().train()
        runs.append((model, adamw(model.parameters(), lr=1e-4),
                     torch.randint(vocab_size, (b, seq_len + 1)), p.startswith("bf16")))

    def step(model, optimizer, ids, bf16) -> float:
        """One whole training step: its optimiser update costs the same at any batch, so it
        counts in what a larger batch gains."""
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss_sum, count, _ = sequence_loss(model, ids[:, :-1], ids[:, 1:], None)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    failed = set()
    for k, run in enumerate(runs):  # the first step builds oneDNN's kernels
        try:
            step(*run)
        except RuntimeError:  # a precision this CPU has no kernel for: 0 chars/s
            failed.add(k)
    fastest, t_end = [float("inf")] * len(runs), time.perf_counter() + budget_s
    for i in range(50):
        for k, run in enumerate(runs):
            if k not in failed:
                fastest[k] = min(fastest[k], step(*run))
        if time.perf_counter() > t_end and i >= 2:
            break
    return [ids.size(0) * seq_len / t for (_, _, ids, _), t in zip(runs, fastest)]


def _read_cache(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        known = json.loads(path.read_text())
        return known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path | None, known: dict) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(known, indent=1).encode())
    except OSError:  # a read-only cache costs the next run another measurement, nothing more
        pass


def machine_key() -> dict:
    """What a cached measurement is valid for: this CPU, torch version and thread count."""
    kind = cpu_kind()
    return {k: kind[k] for k in ("cpu", "arch", "torch", "threads", "amx_bf16", "avx512_bf16")}


def measurement_off() -> bool:
    """``CHARLM_MEASURE=0`` skips timing (float32/batch 8 where the report cannot tell)."""
    return os.environ.get("CHARLM_MEASURE", "1") == "0"
