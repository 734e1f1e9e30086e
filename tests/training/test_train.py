import json
import math
import sys
import time
import warnings

import pytest
import torch
from conftest import conditional_entropy
from lightning.pytorch.callbacks import Callback

from charlm import load
from charlm.errors import CharlmError
from charlm.training.fit import ProgressBar, TrainConfig, fit
from charlm.training.lightning_module import CharDataModule
from charlm.training.run_folder import Validation

TINY = dict(hidden_size=32, embedding_dim=16, batch_size=8, seq_len=32, lr=1e-2, warmup_steps=5,
            progress=False)


MEMORY_LOSS = 1.0  # nats/char; memory_text: ~0.52 with memory, >= 1.2 with 3 characters of context


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_loss_falls_below_what_a_model_without_memory_can_reach(cell, memory_file, tmp_path):
    # The copy task: a model that sees only the last 3 characters (a stateless one sees 1) cannot
    # go below the text's conditional entropy at that order; a recurrent model can.
    text = memory_file.read_text()
    assert conditional_entropy(text, 1) > conditional_entropy(text, 3) > MEMORY_LOSS + 0.2
    results = fit(TrainConfig(data=[str(memory_file)], cell=cell, max_steps=150, eval_every=0,
                              out=str(tmp_path / "run"), **TINY))
    assert results["val_loss"] < MEMORY_LOSS, results["val_loss"]
    run = tmp_path / "run"
    for name in ("best.ckpt", "last.ckpt", "metrics.csv", "run.json"):
        assert (run / name).exists(), name
    assert json.loads((run / "run.json").read_text())["results"]["steps"] == 150


def test_checkpoint_is_plain_data(text_file, tmp_path):
    fit(TrainConfig(data=[str(text_file)], max_steps=5, out=str(tmp_path / "r"), **TINY))
    ckpt = torch.load(tmp_path / "r" / "last.ckpt", weights_only=True)  # never runs code
    assert ckpt["hyper_parameters"]["vocab"] and ckpt["global_step"] == 5
    model, vocab, info = load(tmp_path / "r" / "best.ckpt")
    assert next(model.parameters()).device.type == "cpu" and len(vocab) > 5


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("window", ["stream", "shifted", "random", "mixed"])
def test_resume_equals_an_uninterrupted_run(text_file, tmp_path, monkeypatch, window):
    settings = dict(data=[str(text_file)], max_steps=24, eval_every=8, num_layers=2, dropout=0.1,
                    window=window, **TINY)
    whole = fit(TrainConfig(out=str(tmp_path / "whole"), **settings))

    original = Validation.validate
    dying = True

    def validate_then_die(self, trainer, module, step):
        original(self, trainer, module, step)
        if step == 16 and dying:
            raise Interrupted

    monkeypatch.setattr(Validation, "validate", validate_then_die)
    with pytest.raises(Interrupted):
        fit(TrainConfig(out=str(tmp_path / "split"), **settings))
    dying = False
    resumed = fit(TrainConfig(out=str(tmp_path / "split"), resume=True, **settings))

    a = torch.load(tmp_path / "whole" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_loss"] == whole["val_loss"] and resumed["steps"] == 24
    import csv
    with open(tmp_path / "split" / "metrics.csv") as f:  # the log spans both sessions
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["val_loss"]]
    assert steps == [8, 16, 24]


def test_mixed_windows_keep_their_switch_in_the_checkpoint(text_file, tmp_path):
    # A timed run switches by its clock, which a resumed run cannot replay: the step it
    # switched at travels in the checkpoint. Here the first session's budget of 12 steps
    # switches at step 8; resumed with 24, its own progress would not switch before 16.
    settings = dict(data=[str(text_file)], eval_every=6, window="mixed", out=str(tmp_path / "r"),
                    **TINY)
    first = fit(TrainConfig(max_steps=12, **settings))
    assert first["streams_from_step"] == 8
    ckpt = torch.load(tmp_path / "r" / "last.ckpt", weights_only=True)
    assert ckpt["CharDataModule"] == {"streams_from": 8}
    resumed = fit(TrainConfig(max_steps=24, resume=True, **settings))
    assert resumed["steps"] == 24 and resumed["streams_from_step"] == 8
    plain = fit(TrainConfig(max_steps=24, **{**settings, "out": str(tmp_path / "plain")}))
    assert plain["streams_from_step"] == 16


def test_refuses_to_overwrite_a_run_and_needs_a_run_to_resume(text_file, tmp_path):
    out = str(tmp_path / "r")
    with pytest.raises(CharlmError, match="no .*last.ckpt"):
        fit(TrainConfig(data=[str(text_file)], out=out, resume=True, max_steps=2, **TINY))
    fit(TrainConfig(data=[str(text_file)], out=out, max_steps=2, **TINY))
    with pytest.raises(CharlmError, match="already holds a run"):
        fit(TrainConfig(data=[str(text_file)], out=out, max_steps=2, **TINY))


def test_test_split_is_reported(text_file, tmp_path):
    results = fit(TrainConfig(data=[str(text_file)], max_steps=5, test_fraction=0.1,
                              out=str(tmp_path / "r"), **TINY))
    assert results["test_bpc"] == pytest.approx(results["test_loss"] / math.log(2))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_explicit_cells_train_to_the_same_result(cell, text_file, tmp_path):
    # float32: the default (auto) is bf16 on CPUs that have it, where the two differ by rounding
    results = {impl: fit(TrainConfig(data=[str(text_file)], cell=cell, impl=impl, max_steps=10,
                                     precision="32-true", out=str(tmp_path / impl), **TINY))
               for impl in ("fused", "explicit")}
    assert results["explicit"]["val_loss"] == pytest.approx(results["fused"]["val_loss"], abs=2e-4)
    fused, _, _ = load(tmp_path / "fused" / "last.ckpt")
    explicit, _, _ = load(tmp_path / "explicit" / "last.ckpt")
    assert explicit.config.impl == "explicit"
    for (name, a), (_, b) in zip(fused.state_dict().items(), explicit.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-3), name  # same parameter names, nearly same values


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "gru-note", "lstm-ln"])
def test_explicit_cells_train_in_bf16(cell, text_file, tmp_path):
    # bf16 autocast hands the cells bf16 projections next to a float32 state; every cell must
    # take both (the auto precision picks bf16 on CPUs with AMX or AVX512-BF16)
    results = fit(TrainConfig(data=[str(text_file)], cell=cell, impl="explicit", max_steps=4,
                              precision="bf16-mixed", out=str(tmp_path / "r"),
                              **{**TINY, "num_layers": 2}))
    assert math.isfinite(results["val_loss"]) and results["steps"] == 4
    model, _, _ = load(tmp_path / "r" / "best.ckpt")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed: weights stay fp32


@pytest.mark.parametrize("cell", ["gru-note", "lstm-ln"])
def test_explicit_only_cells_learn_what_needs_memory(cell, memory_file, tmp_path):
    results = fit(TrainConfig(data=[str(memory_file)], cell=cell, max_steps=150, eval_every=0,
                              out=str(tmp_path / "r"), **TINY))
    assert results["val_loss"] < MEMORY_LOSS < conditional_entropy(memory_file.read_text(), 3)


def test_train_metrics_are_logged_on_the_steps_the_logger_writes(text_file, tmp_path):
    # self.log runs only on those steps (it costs ~0.5 ms a call); none of them may go missing
    import csv
    fit(TrainConfig(data=[str(text_file)], max_steps=30, eval_every=0, out=str(tmp_path / "r"),
                    **TINY))
    with open(tmp_path / "r" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train_loss"]]
    assert [int(r["step"]) for r in rows] == [9, 19, 29]
    assert all(math.isfinite(float(r["train_loss"])) and float(r["bpc"]) > 0 for r in rows)


class HostReads(Callback):
    """Counts Tensor.item() calls (the host reading a value back) made in each training step:
    on a GPU each one makes the host wait for the device. The optimiser's are left out: it
    reads its step counts, which stay on the CPU whatever the device."""

    def __init__(self):
        self.per_step: dict[int, int] = {}
        self.calls = 0
        self.shown: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx > 0:
            self.per_step[batch_idx - 1] = self.calls
        self.calls = 0

    def on_train_end(self, trainer, pl_module):
        self.shown = ProgressBar().get_metrics(trainer, pl_module)


def test_steps_read_nothing_back_from_the_device_but_on_logging_steps(text_file, tmp_path,
                                                                     monkeypatch):
    # Lightning reads every prog_bar metric back to the host after every step; on a GPU that
    # was three waits for the device a step. The bar now reads the module's figures itself.
    reads = HostReads()
    item = torch.Tensor.item

    def counted(self):
        if not sys._getframe(1).f_globals["__name__"].startswith("torch.optim"):
            reads.calls += 1
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    fit(TrainConfig(data=[str(text_file)], max_steps=40, eval_every=15, sample_every=0,
                    out=str(tmp_path / "r"), **TINY), callbacks=[reads])
    reading = sorted(step for step, n in reads.per_step.items() if n)
    assert len(reads.per_step) == 39
    # The logger's steps read (so the count works), and no others, after validation too
    assert reading and set(reading) <= {9, 19, 29}, reads.per_step
    assert set(reads.shown) >= {"train_loss", "bpc", "chars/s", "val_bpc"}, reads.shown
    assert reads.shown["bpc"] == pytest.approx(reads.shown["train_loss"] / math.log(2))


def test_the_run_clock_stops_before_lightning_tears_down(text_file, tmp_path, monkeypatch):
    # Teardown (on a GPU: the model and optimiser state back to the CPU, CUDA's cache emptied)
    # is not training: it must not lower the train chars/s that a run reports.
    from lightning.pytorch.strategies import SingleDeviceStrategy
    seen = {}
    teardown = SingleDeviceStrategy.teardown

    def slow_teardown(self):
        seen["before"] = self.lightning_module.tick()
        time.sleep(0.3)
        seen["after"] = self.lightning_module.tick()
        teardown(self)

    monkeypatch.setattr(SingleDeviceStrategy, "teardown", slow_teardown)
    results = fit(TrainConfig(data=[str(text_file)], max_steps=5, out=str(tmp_path / "r"), **TINY))
    assert seen["after"] == seen["before"] == results["elapsed_s"]


def build_callbacks_in(order: str, monkeypatch) -> None:
    """Make ``fit`` hand the Trainer its callbacks as built or in reverse order."""
    import charlm.training.fit as fit_module
    build = fit_module._trainer

    def reordered(config, decision, callbacks):
        return build(config, decision, callbacks[::-1] if order == "reversed" else callbacks)

    monkeypatch.setattr(fit_module, "_trainer", reordered)


@pytest.mark.parametrize("order", ["as built", "reversed"])
def test_a_time_budget_that_runs_out_during_an_evaluation_ends_the_run_there(
        text_file, tmp_path, monkeypatch, order):
    # The evaluation at step 4 is due every 4 steps and the budget runs out while it runs: the
    # run ends at step 4, held by last.ckpt, not one step later with a second evaluation.
    from charlm.training.lightning_module import CharLM
    from charlm.training.run_folder import Validation
    build_callbacks_in(order, monkeypatch)
    out_of_time, validate, tick = [False], Validation.validate, CharLM.tick

    def slow_validate(self, trainer, pl_module, step):
        validate(self, trainer, pl_module, step)
        out_of_time[0] = step == 4

    monkeypatch.setattr(Validation, "validate", slow_validate)
    monkeypatch.setattr(CharLM, "tick", lambda self: 1e9 if out_of_time[0] else tick(self))
    results = fit(TrainConfig(data=[str(text_file)], max_time=30, eval_every=4,
                              out=str(tmp_path / "r"), **TINY))
    assert results["steps"] == 4 and [r["step"] for r in results["history"]] == [4]
    assert torch.load(tmp_path / "r" / "last.ckpt", weights_only=True)["global_step"] == 4


@pytest.mark.parametrize("order", ["as built", "reversed"])
def test_the_callbacks_do_the_same_in_any_order(text_file, tmp_path, monkeypatch, order):
    # A signal during step 8, where an evaluation is due: in either order the evaluation at 8 is
    # done and held by last.ckpt, the run stops there, and the resumed run ends as one that was
    # never stopped (final evaluation at the last step, same weights).
    import os
    import signal

    from charlm.training.interrupt import Interrupted
    from charlm.training.lightning_module import CharLM

    settings = dict(data=[str(text_file)], max_steps=20, eval_every=8, **TINY)
    whole = fit(TrainConfig(out=str(tmp_path / "whole"), **settings))
    build_callbacks_in(order, monkeypatch)
    step = CharLM.training_step

    signal_in = {8}

    def signal_in_step(self, batch, batch_idx):
        if self.global_step + 1 in signal_in and not self.trainer.ckpt_path:
            os.kill(os.getpid(), signal.SIGINT)  # handled by GracefulStop: it only sets a flag
        return step(self, batch, batch_idx)

    monkeypatch.setattr(CharLM, "training_step", signal_in_step)
    out = tmp_path / "split"
    with pytest.raises(Interrupted, match="interrupted at step 8"):
        fit(TrainConfig(out=str(out), **settings))
    saved = torch.load(out / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 8
    assert [r["step"] for r in saved["callbacks"]["RunFolder"]["history"]] == [8]
    resumed = fit(TrainConfig(out=str(out), resume=True, **settings))
    assert [r["step"] for r in resumed["history"]] == [8, 16, 20] == \
        [r["step"] for r in whole["history"]]
    assert resumed["val_loss"] == whole["val_loss"]
    a = torch.load(tmp_path / "whole" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(out / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    signal_in = {20}  # at the last step the run ends as it would have, results and all
    ended = fit(TrainConfig(out=str(tmp_path / "ended"), **settings))
    assert ended["val_loss"] == whole["val_loss"] and ended["steps"] == 20


def test_resuming_a_finished_run_with_the_same_step_count_changes_nothing(text_file, tmp_path):
    settings = dict(data=[str(text_file)], max_steps=6, eval_every=3, out=str(tmp_path / "r"),
                    **TINY)
    first = fit(TrainConfig(**settings))
    before = (tmp_path / "r" / "best.ckpt").read_bytes()
    again = fit(TrainConfig(resume=True, **settings))
    assert again["steps"] == 6 and again["history"] == first["history"]
    assert again["val_loss"] == first["val_loss"]
    assert (tmp_path / "r" / "best.ckpt").read_bytes() == before


def test_restart_every_below_zero_is_refused():
    with pytest.raises(CharlmError, match="restart_every must be >= 0, not -1"):
        TrainConfig(restart_every=-1)


def test_restart_every_reaches_the_training_streams(text_file, tmp_path):
    # every window from zero (1) trains differently from state carried all epoch (0), and the
    # setting is recorded with the run
    losses = {}
    for every in (0, 1):
        out = tmp_path / str(every)
        losses[every] = fit(TrainConfig(data=[str(text_file)], max_steps=12, eval_every=0,
                                        out=str(out), restart_every=every, **TINY))["val_loss"]
        assert json.loads((out / "run.json").read_text())["data"]["restart_every"] == every
    assert losses[0] != losses[1], losses


def test_only_the_batch_tensors_travel_to_the_device_and_lightning_has_nothing_to_say(
        text_file, tmp_path):
    x, y, restart = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), (1,)
    moved = CharDataModule(None, batch_size=2, seq_len=3).transfer_batch_to_device(
        (x, y, restart), torch.device("cpu"), 0)
    assert moved[0] is x and moved[1] is y and moved[2] is restart
    with warnings.catch_warnings(record=True) as caught:  # one hook, where Lightning wants it
        warnings.simplefilter("always")
        fit(TrainConfig(data=[str(text_file)], max_steps=3, out=str(tmp_path / "r"), **TINY))
    assert not [w for w in caught if "transfer_batch_to_device" in str(w.message)]


class _Clocked:
    """What Validation reads of a module and a trainer: time set aside, the run's clock, and a
    broadcast that is the identity (one process)."""

    def __init__(self, aside_s: float, tick_s: float):
        self.aside_s, self.tick_s, self.is_global_zero = aside_s, tick_s, True
        self.strategy = self

    def tick(self) -> float:
        return self.tick_s

    def broadcast(self, obj):
        return obj


@pytest.mark.parametrize(("share", "aside_s", "last", "validates"), [
    (0.1, 1.5, False, False),  # 15 % of the run so far went to validation: put off
    (0.1, 0.5, False, True),   # 5 %: on time
    (0.1, 1.5, True, True),    # the last step is always evaluated
    (None, 9.0, False, True),  # no share (a cadence given, or no time budget): every due step
])
def test_a_timed_run_puts_validation_off_while_it_has_taken_its_share(share, aside_s, last,
                                                                      validates, capsys):
    class End:
        def is_last(self, trainer, pl_module, step):
            return last

        def ran_out_during(self, trainer, pl_module, step):
            return False

    done = []
    v = Validation(None, 500, None, End(), progress=True, share=share)
    v.validate = lambda trainer, pl_module, step: done.append(step)
    clock = _Clocked(aside_s, 10.0)
    trainer = type("T", (), {"global_step": 1000, "strategy": clock, "is_global_zero": True})()
    v.on_train_batch_end(trainer, clock, None, None, 0)
    assert done == ([1000] if validates else [])
    assert v.put_off == (0 if validates else 1)
    said = capsys.readouterr()
    assert ("validation put off, as it has taken 15%" in said.out + said.err) == (not validates)


@pytest.mark.parametrize(("eval_every", "max_time", "every", "share"), [
    (None, 2.5, 500, 0.1), (None, None, 500, None), (200, 2.5, 200, None), (0, 2.5, 0, None)])
def test_only_the_default_cadence_of_a_timed_run_gives_way(tmp_path, eval_every, max_time,
                                                          every, share):
    from charlm.training.fit import RunCallbacks
    config = TrainConfig(data=["x"], eval_every=eval_every, max_time=max_time,
                         out=str(tmp_path / "r"))
    validation = RunCallbacks(config, None).validation
    assert (validation.eval_every, validation.share) == (every, share)


def test_a_timed_run_keeps_time_for_its_last_evaluation(text_file, tmp_path, monkeypatch):
    """--max-time counts validation, the last one included: the run stops training early by
    what the latest evaluation took, and its schedule reaches its end there."""
    import charlm.training.fit as fit_module
    from charlm.training.lightning_module import CharLM
    evaluate = CharLM.evaluate_split

    def slow(self, ids, seq_len):
        time.sleep(0.6)
        return evaluate(self, ids, seq_len)

    monkeypatch.setattr(CharLM, "evaluate_split", slow)
    monkeypatch.setattr(fit_module, "EVAL_EVERY", 20)  # the default cadence, sooner
    out = tmp_path / "r"
    results = fit(TrainConfig(data=[str(text_file)], max_time=0.05, out=str(out), **TINY))
    # evaluated at step 20, then put off (over a tenth of the run), then at the end: 3 s in all,
    # not 3 s of training and 0.6 s more
    assert [r["step"] for r in results["history"]][0] == 20 and len(results["history"]) == 2
    assert 3.0 - 0.7 <= results["elapsed_s"] < 3.0 + 0.45  # without the reserve: 3.6
    last_lr = torch.load(out / "last.ckpt", weights_only=True)["optimizer_states"][0][
        "param_groups"][0]["lr"]
    assert last_lr < 0.02 * TINY["lr"]  # the cosine ran to its end before the last evaluation
