"""Many processes: the full-pass validation loss is exact under DDP (sums of loss and counts are
reduced across ranks), and ``charlm train --strategy ddp --devices 2`` trains with two processes,
one of which writes the run folder and reports; rank 0 decides whether a validation is put off."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import markov_text

from charlm.generation.metrics import evaluate
from charlm.model import CharRNN, ModelConfig

SPLIT_SIZES = (300, 5000, 9000)  # one eval stream (rank 1 gets none), 2 streams, 4 streams
SEQ_LEN = 64


def fixed_model_and_ids() -> tuple[CharRNN, np.ndarray]:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(12, "lstm", 16, 2, 8)).eval()
    ids = np.random.default_rng(0).integers(0, 12, size=max(SPLIT_SIZES)).astype(np.uint8)
    return model, ids


def _eval_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, ids = fixed_model_and_ids()

        def reduce(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t)
            return t

        results = [evaluate(model, ids[:n], SEQ_LEN, rank=rank, world=world, reduce=reduce)
                   for n in SPLIT_SIZES]
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_evaluate_under_two_gloo_processes_equals_one_process(tmp_path):
    out = tmp_path / "ddp.json"
    mp.spawn(_eval_worker, args=(2, str(tmp_path / "pg"), str(out)), nprocs=2, join=True)
    ddp = json.loads(out.read_text())
    model, ids = fixed_model_and_ids()
    for n, got in zip(SPLIT_SIZES, ddp):
        single = evaluate(model, ids[:n], SEQ_LEN)
        assert got["chars"] == single["chars"] == n - 1  # every character after the first, once
        assert got["loss"] == pytest.approx(single["loss"], rel=1e-6)


def test_charlm_train_ddp_two_cpu_processes(tmp_path):
    from charlm.generation.evaluation import evaluate_checkpoint
    text = tmp_path / "text.txt"
    text.write_text(markov_text(100_000))  # val split of 10,000: 4 eval streams, 2 per rank
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "charlm", "train", "--data", str(text), "--hidden-size", "16",
         "--embedding-dim", "8", "--seq-len", "32", "--batch-size", "4", "--max-steps", "2",
         "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu", "--out", str(run),
         "--json"], env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in done.stderr  # a second process trained
    json_lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1, done.stdout  # one report, from rank 0
    result = json.loads(json_lines[0])
    assert result["steps"] == 2
    assert {"last.ckpt", "best.ckpt", "run.json", "metrics.csv"} <= {p.name for p in run.iterdir()}
    assert not (run / "run.lock").exists()
    # the logged val loss (reduced over both ranks) is the one-process full pass of the checkpoint
    single = evaluate_checkpoint(result["best_checkpoint"], [])
    assert single["chars"] == 9999
    assert result["val_loss"] == pytest.approx(single["loss"], rel=1e-6)


def test_ctrl_c_under_ddp_stops_every_rank_at_one_saved_step_that_resumes(tmp_path):
    """A Ctrl-C reaches every process of the group; rank 0's decides, at a step all ranks share
    (charlm.training.interrupt.RankZeroDecides), the step is saved, and --resume goes on from it."""
    import signal
    import time
    text = tmp_path / "text.txt"
    text.write_text(markov_text(100_000))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    args = [sys.executable, "-m", "charlm", "train", "--data", str(text), "--hidden-size", "16",
            "--embedding-dim", "8", "--seq-len", "32", "--batch-size", "4", "--eval-every", "20",
            "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu", "--out", str(run),
            "--json"]
    proc = subprocess.Popen([*args, "--max-steps", "100000"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own group, as a terminal's job is
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.ckpt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    errors = [line for line in (out + err).splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, err[-3000:]  # rank 0 says it; rank 1 stopped at the same step
    assert errors[0].startswith("Error: interrupted at step ")
    assert errors[0].endswith("; resume with --resume")
    step = int(errors[0].split("interrupted at step ")[1].split(";")[0])
    saved = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == step > 20
    assert not (run / "run.lock").exists()

    done = subprocess.run([*args, "--max-steps", str(step + 4), "--resume"], env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads([line for line in done.stdout.splitlines()
                       if line.startswith("{")][-1])["steps"] == step + 4


def _put_off_worker(rank: int, world: int, init_file: str, out: str) -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy

    from charlm.training.run_folder import Validation
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        decided = []
        for busy_rank in (0, 1):  # the rank whose validation has taken half of its run so far
            end = SimpleNamespace(is_last=lambda *a: False, ran_out_during=lambda *a: False)
            v = Validation(None, 500, None, end, share=0.1)
            v.validate = lambda *a: decided.append("validated")
            aside = 5.0 if rank == busy_rank else 0.0
            module = SimpleNamespace(aside_s=aside, tick=lambda: 10.0)
            trainer = SimpleNamespace(global_step=1000, strategy=DDPStrategy(),
                                      is_global_zero=rank == 0)
            v.on_train_batch_end(trainer, module, None, None, 0)
            decided.append(f"put off {v.put_off}")
        Path(f"{out}.{rank}").write_text(json.dumps(decided))
    finally:
        dist.destroy_process_group()


def test_rank_zero_decides_whether_a_validation_is_put_off(tmp_path):
    """Every rank evaluates together (the loss is reduced across them), so where the ranks'
    clocks differ, rank 0's decides for all."""
    out = tmp_path / "decided"
    mp.spawn(_put_off_worker, args=(2, str(tmp_path / "pg"), str(out)), nprocs=2, join=True)
    expected = ["put off 1", "validated", "put off 0"]  # rank 0 busy: off; rank 1 busy: on
    assert [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)] == [expected] * 2
