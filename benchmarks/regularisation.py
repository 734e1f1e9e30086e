"""Regularisation and training-recipe study: variants of a recipe at the same compute budget.

    .venv/bin/python benchmarks/regularisation.py --plan long  [--accelerator gpu] [--parallel 6]
    .venv/bin/python benchmarks/regularisation.py --plan quick [--only base,ortho]
    .venv/bin/python benchmarks/regularisation.py --plan long --smoke   # 1 tiny variant: checks it

A budget is what this project's 2-core CPU machine trains in a given wall time, in steps:
measured CPU chars/s of each architecture (the RATES table, with the command that measured it)
x the minutes. So a GPU can run the study at the CPU's step budget, and the CPU run of the winner
confirms it at the real wall time. Each variant is `charlm.training.fit.fit` in its own process,
with its own budget and cosine schedule over its steps, validated every `eval_every` steps on the
full val split. One JSON line per variant (best and last val loss, the curve), then a table.

Plans:
  long   the `--preset shakespeare` question: 2x512 LSTM and neighbours, 60 CPU minutes
  quick  the default's question: 1x256 LSTM, batch 8, 2.5 CPU minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
README = Path(__file__).resolve().parents[1] / "README.md"  # --smoke's corpus

# CPU training chars/s (float32) on this project's 2-core machine, validation excluded, measured
# one at a time on a quiet machine (load < 1): `charlm train --data tinyshakespeare.txt
# --max-steps 40 --eval-every 0 --dropout 0.2 --json` (its train_chars_per_s; 25-40 steps for the
# large models, 300 for 1x256) with the cell, sizes and batch of the key. The machine's speed
# drifts by ±25 % over a day, so a budget is a fair share, not a promise: (cell, hidden, layers,
# batch) → chars/s.
RATES = {("lstm", 512, 2, 32): 7992, ("lstm", 512, 2, 64): 8357, ("lstm", 512, 3, 32): 4978,
         ("lstm", 768, 2, 32): 4295, ("lstm", 256, 1, 8): 45561}
CPU_SHARE = 0.93  # of the wall time left for training steps once validation is paid for

BASE = {
    "long": {"cell": "lstm", "hidden_size": 512, "num_layers": 2, "batch_size": 32,
             "seq_len": 128, "lr": 3e-3, "dropout": 0.35, "eval_every": 250, "minutes": 60},
    "quick": {"cell": "lstm", "hidden_size": 256, "num_layers": 1, "batch_size": 8,
              "seq_len": 128, "lr": 4e-3, "dropout": 0.0, "eval_every": 500, "minutes": 2.5},
}
VARIANTS = {
    "long": {
        "d0.20": {"dropout": 0.2},
        "d0.35": {},
        "d0.50": {"dropout": 0.5},
        "d0.25+wdrop0.25": {"dropout": 0.25, "weight_drop": 0.25},
        "d0.35+wdrop0.2": {"weight_drop": 0.2},
        "d0.35+wd0.1": {"weight_decay": 0.1},
        "d0.35+ortho": {"init": "orthogonal"},
        "d0.35+lr2e-3": {"lr": 2e-3},
        "3x512+d0.35": {"num_layers": 3},
        "2x768+d0.5": {"hidden_size": 768, "dropout": 0.5},
    },
    "quick": {
        "base": {},
        "ortho": {"init": "orthogonal"},
        "lr6e-3": {"lr": 6e-3},
        "lr3e-3": {"lr": 3e-3},
        "warmup100+lr6e-3": {"warmup_steps": 100, "lr": 6e-3},
        "d0.1": {"dropout": 0.1},
        "wdrop0.1": {"weight_drop": 0.1},
        "clip1": {"grad_clip": 1.0},
    },
}


def budget_steps(cfg: dict) -> int:
    """The steps the CPU machine trains in cfg['minutes'] for this architecture and batch."""
    key = (cfg["cell"], cfg["hidden_size"], cfg["num_layers"], cfg["batch_size"])
    if key not in RATES:
        raise SystemExit(f"no measured CPU rate for {key}: measure it and add it to RATES")
    chars = RATES[key] * cfg["minutes"] * 60 * CPU_SHARE
    return int(chars // (cfg["batch_size"] * cfg["seq_len"]))


def run_one(cfg: dict, data: str, accelerator: str) -> dict:
    """Train one variant with charlm's own fit(); its results and validation curve."""
    import math
    import warnings
    warnings.filterwarnings("ignore")
    from lightning.pytorch.callbacks import Callback

    from charlm.training.environment import prepare_process
    from charlm.training.fit import TrainConfig, fit

    prepare_process()  # as charlm train does before it trains

    class Progress(Callback):  # each validation as it happens, on stderr: a cut-off run still tells
        def on_train_batch_end(self, trainer, *args) -> None:
            step = trainer.global_step
            if step % cfg["eval_every"] == 0 and "val_bpc" in trainer.callback_metrics:
                loss = float(trainer.callback_metrics["val_bpc"]) * math.log(2)
                print(json.dumps({"progress": cfg["name"], "step": step,
                                  "val_loss": round(loss, 4)}),
                      file=sys.stderr, flush=True)

    fields = {k: v for k, v in cfg.items() if k not in ("minutes", "steps", "name")}
    with tempfile.TemporaryDirectory() as out:
        fields.setdefault("precision", "32-true")  # the step budgets are float32 CPU rates
        r = fit(TrainConfig(data=[data], max_steps=cfg["steps"], out=out + "/run", progress=False,
                            accelerator=accelerator, devices=1, **fields), callbacks=[Progress()])
    curve = [(h["step"], round(h["val_loss"], 4)) for h in r["history"]]
    return {"figure": "variant", "name": cfg["name"], "accelerator": accelerator,
            "steps": r["steps"], "best_val_loss": round(r["val_loss"], 4),
            "best_step": r["best_step"], "last_val_loss": curve[-1][1], "params": r["params"],
            "train_chars_per_s": round(r["train_chars_per_s"]), "wall_s": round(r["elapsed_s"], 1),
            "config": {k: v for k, v in cfg.items() if k != "name"}, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", choices=sorted(VARIANTS), default="long")
    parser.add_argument("--only", default=None, help="Comma-separated variant names.")
    parser.add_argument("--data", default=str(SHAKESPEARE))
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--parallel", type=int, default=1, help="Variants run at once.")
    parser.add_argument("--scale", type=float, default=1.0, help="Fraction of each step budget.")
    parser.add_argument("--smoke", action="store_true", help="Tiny budgets: checks the script.")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process's variant
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(json.loads(args.one), args.data, args.accelerator)), flush=True)
        return
    names = args.only.split(",") if args.only else list(VARIANTS[args.plan])
    if args.smoke:
        if not args.only:
            names = names[:1]  # one variant in its own process: checks the script, not the plan
        if args.data == parser.get_default("data"):
            args.data = str(README)  # a small corpus: checks the code, not the recipe
    jobs = []
    for name in names:
        cfg = {**BASE[args.plan], **VARIANTS[args.plan][name], "name": name}
        cfg["steps"] = max(2, int(budget_steps(cfg) * args.scale))
        if args.smoke:
            cfg.update(steps=4, eval_every=2, hidden_size=16, seq_len=16)
        jobs.append(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows, running, t0 = [], [], time.time()
    while jobs or running:
        while jobs and len(running) < args.parallel:
            cfg = jobs.pop(0)
            cmd = [sys.executable, __file__, "--one", json.dumps(cfg), "--data", args.data,
                   "--accelerator", args.accelerator]
            running.append((cfg, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)))
        time.sleep(0.5)
        for cfg, proc in [r for r in running if r[1].poll() is not None]:
            running.remove((cfg, proc))
            out = proc.stdout.read().strip().splitlines()
            if proc.returncode or not out:
                row = {"figure": "variant", "name": cfg["name"], "error": proc.returncode}
            else:
                row = json.loads(out[-1])
            row["done_after_s"] = round(time.time() - t0)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'variant':<20}{'steps':>7}{'best val':>10}{'at step':>9}{'last val':>10}"
          f"{'chars/s':>10}")
    for r in sorted(rows, key=lambda r: r.get("best_val_loss", 99)):
        if "error" in r:
            print(f"{r['name']:<20}  failed (exit {r['error']})")
            continue
        print(f"{r['name']:<20}{r['steps']:>7}{r['best_val_loss']:>10.4f}{r['best_step']:>9}"
              f"{r['last_val_loss']:>10.4f}{r['train_chars_per_s']:>10,}")


if __name__ == "__main__":
    main()
