"""What the CLI's successful runs do, checked against the library or an independent computation:
sampling flags, export of every cell kind, the training budget and optimiser flags, data sources
(directory, glob, a local hf: dataset), hostile checkpoints in the lab commands, eval's loss."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import markov_text

from charlm import load
from charlm.cli import cli
from charlm.errors import CharlmError
from charlm.generation.sampling import SampleSettings, generate
from charlm.training.fit import TrainConfig, fit
from charlm.training.lightning_module import CharLM, OptimConfig
from charlm.training.optimizer import is_fused

SIZES = dict(hidden_size=16, embedding_dim=8, batch_size=4, seq_len=16, progress=False,
             precision="32-true")
ARGS = ["--hidden-size", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-len", "16",
        "--precision", "32-true"]


def run(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("behaviour")
    (root / "corpus.txt").write_text(markov_text(6000))
    with pytest.MonkeyPatch.context() as m:  # the autouse cache fixture is per test
        m.setenv("CHARLM_CACHE", str(tmp_path_factory.getbasetemp() / "charlm-cache"))
        fit(TrainConfig(data=[str(root / "corpus.txt")], out=str(root / "run"), max_steps=80,
                        lr=2e-2, eval_every=0, **SIZES))
    return root / "run" / "best.ckpt"


def cli_sample(checkpoint, *flags):
    return last_json(run("sample", checkpoint, "--prompt", "the", "--length", 40, "--json",
                         *flags))["samples"][0]


# --- sampling flags -------------------------------------------------------------------------------

def test_greedy_flags_all_give_the_argmax_text(checkpoint):
    model, vocab, _ = load(checkpoint)
    argmax = generate(model, vocab, "the", 40, SampleSettings(greedy=True))[0]
    assert len(set(argmax[3:])) > 1  # a text that says something about the model
    for flags in (["--greedy"], ["--greedy", "--seed", "3"], ["--temperature", "0"],
                  ["--top-k", "1", "--seed", "4"], ["--top-p", "0.000001", "--seed", "5"]):
        assert cli_sample(checkpoint, *flags) == argmax, flags


@pytest.mark.parametrize("flags,settings", [
    (["--top-k", "3"], SampleSettings(0.8, top_k=3)),
    (["--top-p", "0.6"], SampleSettings(0.8, top_p=0.6)),
    (["--top-k", "4", "--top-p", "0.9", "--temperature", "1.3"],
     SampleSettings(1.3, top_k=4, top_p=0.9)),
])
def test_top_k_and_top_p_reach_the_sampler(checkpoint, flags, settings):
    model, vocab, _ = load(checkpoint)
    text = cli_sample(checkpoint, *flags, "--seed", "11")
    assert text == generate(model, vocab, "the", 40, settings, seed=11)[0]
    assert text != generate(model, vocab, "the", 40, SampleSettings(0.8), seed=11)[0]


# --- export of every kind of model ----------------------------------------------------------------

@pytest.mark.parametrize("cell,impl", [("lstm", "explicit"), ("gru", "explicit"),
                                       ("gru-note", "auto"), ("lstm-ln", "auto")])
def test_export_of_explicit_and_explicit_only_models(cell, impl, text_file, tmp_path):
    fit(TrainConfig(data=[str(text_file)], cell=cell, impl=impl, num_layers=2, max_steps=3,
                    out=str(tmp_path / "run"), **SIZES))
    ckpt = tmp_path / "run" / "best.ckpt"
    run("export", ckpt, tmp_path / "export")
    a, vocab_a, _ = load(ckpt)
    b, vocab_b, info = load(tmp_path / "export")
    assert b.config == a.config and b.config.impl == "explicit" and vocab_a == vocab_b
    assert info["step"] == 3
    ids = torch.from_numpy(vocab_a.encode("the cat sat").astype(np.int64))[None]
    torch.testing.assert_close(b(ids)[0], a(ids)[0], rtol=0, atol=0)
    flags = ["--seed", "2", "--length", "30", "--json"]
    assert last_json(run("sample", tmp_path / "export", *flags)) ["samples"] == \
        last_json(run("sample", ckpt, *flags))["samples"]


# --- schedule, budget and optimiser flags ---------------------------------------------------------

def test_warm_up_then_cosine_decay_to_the_floor():
    o = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1, total_steps=20)
    assert [o.lr_at(s, 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert o.lr_at(4, 0.0) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert o.lr_at(10, 0.0) == pytest.approx(0.55)  # halfway: half-way between 1 and the floor
    assert o.lr_at(20, 0.0) == pytest.approx(0.1) and o.lr_at(99, 0.0) == pytest.approx(0.1)
    lrs = [o.lr_at(s, 0.0) for s in range(3, 21)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # falls at every step after the warm-up
    timed = OptimConfig(lr=2.0, max_time_s=100.0)  # the wall-clock budget drives it alike
    assert timed.lr_at(0, 50.0) == pytest.approx(1.0) and timed.lr_at(0, 100.0) == pytest.approx(0)
    both = OptimConfig(lr=2.0, total_steps=10, max_time_s=100.0)  # whichever is further along
    assert both.lr_at(5, 10.0) == pytest.approx(1.0) and both.lr_at(1, 50.0) == pytest.approx(1.0)
    assert OptimConfig(lr=0.3, schedule="constant", total_steps=10).lr_at(9, 0.0) == 0.3
    assert OptimConfig(lr=0.3, warmup_steps=2, schedule="constant").lr_at(0, 0.0) == 0.15


def test_linear_decay_falls_in_a_straight_line_to_the_floor():
    o = OptimConfig(lr=1.0, warmup_steps=2, min_lr_ratio=0.2, schedule="linear", total_steps=12)
    assert [o.lr_at(s, 0.0) for s in range(2)] == [0.5, 1.0]
    assert [o.lr_at(s, 0.0) for s in (3, 6, 9, 12, 50)] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.2])
    timed = OptimConfig(lr=2.0, schedule="linear", max_time_s=100.0)
    assert [timed.lr_at(0, t) for t in (0.0, 25.0, 100.0)] == pytest.approx([2.0, 1.5, 0.0])
    with pytest.raises(CharlmError, match="cosine, linear, constant"):
        OptimConfig(schedule="step")


# bf16-mixed with the GRU: oneDNN has no bf16 LSTM on a CPU without AVX512
@pytest.mark.parametrize(("precision", "cell"), [("32-true", "lstm"), ("bf16-mixed", "gru")])
def test_training_uses_the_schedule_and_clips_gradients(text_file, tmp_path, precision, cell):
    """The optimiser is fused on the CPU, and clips in either precision (Lightning's
    mixed-precision plugin refuses to clip for a fused optimiser itself)."""
    from lightning.pytorch.callbacks import Callback

    class Seen(Callback):
        def __init__(self):
            self.lrs, self.norms, self.fused = [], [], set()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            optimizer = trainer.optimizers[0]
            self.lrs.append(optimizer.param_groups[0]["lr"])
            self.fused |= {is_fused(optimizer)} | {g["fused"] for g in optimizer.param_groups}
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g.float()) for g in grads]))))

    runs = {}
    for clip in (0.05, 0.0):
        seen = Seen()
        fit(TrainConfig(data=[str(text_file)], max_steps=8, warmup_steps=3, lr=0.02,
                        grad_clip=clip, eval_every=0, out=str(tmp_path / f"clip{clip}"),
                        **{**SIZES, "precision": precision, "cell": cell}),
            callbacks=[seen])
        runs[clip] = seen
    expected = OptimConfig(lr=0.02, warmup_steps=3, total_steps=8)
    assert runs[0.05].lrs == pytest.approx([expected.lr_at(s, 0.0) for s in range(8)])
    assert max(runs[0.05].norms) <= 0.05 * (1 + 1e-4)  # clipped to the total norm asked for
    assert min(runs[0.0].norms) > 0.1                   # 0 turns clipping off
    assert runs[0.05].fused == runs[0.0].fused == {True}


@pytest.mark.parametrize(("strategy", "scaler", "fused"), [
    ("single", None, True), ("ddp", None, True), ("single", "a GradScaler", False),
    ("another", None, False)])
def test_the_optimiser_is_fused_only_where_clipping_sees_whole_unscaled_gradients(
        strategy, scaler, fused):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
    strategies = {"single": SingleDeviceStrategy("cpu"), "ddp": DDPStrategy(), "another": object()}
    lm = CharLM(model=dict(vocab_size=5, cell="lstm", hidden_size=4, embedding_dim=3),
                optim=dict(lr=0.1), vocab=list("abcde"))
    lm.trainer = SimpleNamespace(strategy=strategies[strategy],
                                 precision_plugin=SimpleNamespace(scaler=scaler))
    assert is_fused(lm.configure_optimizers()) == fused


def test_the_optimiser_is_unfused_where_torch_refuses_the_fused_kernel(monkeypatch):
    made = []

    class Picky(torch.optim.AdamW):  # as torch does on a device it has no fused AdamW for
        def __init__(self, params, **kw):
            made.append(kw.get("fused"))
            if kw.get("fused"):
                raise RuntimeError("`fused=True` requires all the params to be ... of supported "
                                   "devices")
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", Picky)
    lm = CharLM(model=dict(vocab_size=5, cell="lstm", hidden_size=4, embedding_dim=3),
                optim=dict(lr=0.1, weight_decay=0.5), vocab=list("abcde"))
    opt = lm.configure_optimizers()
    assert made == [True, None] and not is_fused(opt)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(lm.parameters()))
    monkeypatch.undo()
    assert is_fused(lm.configure_optimizers())  # on the CPU, torch has the fused kernel


def test_weight_decay_shrinks_the_matrices_and_nothing_else():
    lm = CharLM(model=dict(vocab_size=5, cell="lstm", hidden_size=4, embedding_dim=3),
                optim=dict(lr=0.1, weight_decay=0.5), vocab=list("abcde"))
    opt = lm.configure_optimizers()
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    for p in lm.parameters():
        p.grad = torch.zeros_like(p)  # Adam's own step is then 0: only the decay moves weights
    opt.step()
    for name, p in lm.named_parameters():
        decays = p.dim() >= 2 and "embedding" not in name
        expected = before[name] * (1 - 0.1 * 0.5) if decays else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7, msg=name)
    assert {n for n, p in lm.named_parameters() if p.dim() >= 2 and "embedding" not in n} == {
        "model.rnn.weight_ih_l0", "model.rnn.weight_hh_l0", "model.head.weight"}


def test_weight_decay_flag_reaches_the_optimiser(text_file, tmp_path):
    run("train", "--data", text_file, "--out", tmp_path / "r", "--max-steps", 2,
        "--weight-decay", "0.25", *ARGS)
    ckpt = torch.load(tmp_path / "r" / "last.ckpt", weights_only=True)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.25]


def test_schedule_flag_reaches_the_run(text_file, tmp_path):
    run("train", "--data", text_file, "--out", tmp_path / "r", "--max-steps", 4, "--lr", "0.01",
        "--schedule", "linear", "--eval-every", 0, *ARGS)
    ckpt = torch.load(tmp_path / "r" / "last.ckpt", weights_only=True)
    # the last step's rate: a quarter of the budget left on the line (a cosine leaves 0.146)
    assert [g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]] == pytest.approx(
        [0.0025, 0.0025])
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["schedule"] == "linear"


def steps_per_epoch(n_chars, batch=4, seq_len=16, val=0.1, shifted=False):
    train = int(n_chars * (1 - val))
    return ((train - 1) // batch - (seq_len - 1 if shifted else 0)) // seq_len


def test_window_flag_reaches_the_run(text_file, tmp_path):
    info = last_json(run("train", "--data", text_file, "--out", tmp_path / "r", "--max-epochs", 2,
                         "--window", "shifted", "--eval-every", 0, "--json", *ARGS))
    per_epoch = steps_per_epoch(len(text_file.read_text()), shifted=True)
    assert per_epoch < steps_per_epoch(len(text_file.read_text()))  # the room kept for the shift
    assert info["steps"] == 2 * per_epoch and info["epochs"] == 2.0
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["window"] == "shifted"


def test_max_epochs_runs_exactly_that_many_epochs(text_file, tmp_path):
    info = last_json(run("train", "--data", text_file, "--out", tmp_path / "r", "--max-epochs", 2,
                         "--eval-every", 0, "--json", *ARGS))
    assert info["steps"] == 2 * steps_per_epoch(len(text_file.read_text()))
    assert info["epochs"] == 2.0


def test_max_time_stops_the_run_on_the_clock(text_file, tmp_path):
    info = last_json(run("train", "--data", text_file, "--out", tmp_path / "r", "--max-time", 0.02,
                         "--eval-every", 0, "--json", *ARGS))  # 1.2 s, and no step budget
    assert 0 < info["steps"] < 10 * steps_per_epoch(len(text_file.read_text()))
    assert info["epochs"] == round(info["steps"] / steps_per_epoch(len(text_file.read_text())), 3)
    assert 1.2 <= info["elapsed_s"] < 1.2 + 10


# --- data sources through the CLI -----------------------------------------------------------------

def test_train_on_a_directory_and_on_a_glob(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(markov_text(3000, seed=1) + "\n")
    (folder / "b.txt").write_text(markov_text(3000, seed=2).upper() + "\n")  # letters only b has
    (folder / "c.md").write_text("zzz\n")
    for spec, files in ((folder, ["a.txt", "b.txt", "c.md"]),
                        (folder / "*.txt", ["a.txt", "b.txt"])):
        out = tmp_path / f"run{len(files)}"
        run("train", "--data", spec, "--out", out, "--max-steps", 2, *ARGS)
        model, vocab, info = load(out / "best.ckpt")
        text = "".join((folder / f).read_text() for f in files)
        assert vocab.chars == sorted(set(text))  # every file read, and only those
        assert info["data"]["sources"] == [str(spec)]
        ev = last_json(run("eval", out / "best.ckpt", "--split", "all", "--json"))
        assert ev["chars"] == len(text) - 1


def test_a_local_hf_dataset_end_to_end_without_streaming(tmp_path, monkeypatch):
    import datasets
    rows = [markov_text(400, seed=s) for s in range(12)]
    monkeypatch.chdir(tmp_path)
    datasets.Dataset.from_dict({"body": rows}).to_parquet("owner/corpus/data/train.parquet")
    datasets.Dataset.from_dict({"body": rows}).save_to_disk(tmp_path / "saved")
    calls, load_dataset = [], datasets.load_dataset

    def spy(*args, **kwargs):
        calls.append(kwargs.get("streaming"))
        return load_dataset(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    info = last_json(run("data", "info", "hf:owner/corpus", "--text-column", "body", "--json"))
    assert calls == [False]  # downloaded whole (prepared as Arrow), not streamed
    saved = last_json(run("data", "info", tmp_path / "saved", "--text-column", "body", "--json"))
    assert info["chars"] == saved["chars"] == sum(map(len, rows)) + len(rows) - 1
    assert info["vocab"] == saved["vocab"]
    run("train", "--data", "hf:owner/corpus", "--text-column", "body", "--out", tmp_path / "r",
        "--max-steps", 3, *ARGS)
    ev = last_json(run("eval", tmp_path / "r" / "best.ckpt", "--text-column", "body", "--json"))
    assert ev["split"] == "val" and math.isfinite(ev["loss"])
    assert ev["chars"] == info["splits"]["val"] - 1


def test_eval_rereads_the_training_data_the_way_training_read_it(tmp_path, monkeypatch):
    """The checkpoint records how its sources were read (column, encoding, split), so eval of
    the run's own data reads them the same way; what is given on the command line wins."""
    import datasets
    monkeypatch.chdir(tmp_path)
    rows = [markov_text(400, seed=s) for s in range(12)]
    datasets.Dataset.from_dict({"body": rows}).save_to_disk(tmp_path / "saved")
    run("train", "--data", tmp_path / "saved", "--text-column", "body", "--out", tmp_path / "r",
        "--max-steps", 2, *ARGS)
    ev = last_json(run("eval", tmp_path / "r" / "best.ckpt", "--json"))
    assert ev["split"] == "val" and ev["chars"] > 0
    assert last_json(run("eval", tmp_path / "r" / "best.ckpt", "--json", "--text-column",
                         "body"))["loss"] == ev["loss"]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café olé ".encode("latin-1") * 300)
    run("train", "--data", latin, "--encoding", "latin-1", "--out", tmp_path / "l",
        "--max-steps", 2, *ARGS)
    assert last_json(run("eval", tmp_path / "l" / "best.ckpt", "--json"))["chars"] > 0


# --- hostile checkpoints in the lab commands ------------------------------------------------------

class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_a_hostile_checkpoint_is_refused_by_visualize_inspect_and_compare(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    marker = tmp_path / "pwned"
    ckpt["charlm"]["note"] = Payload(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat\n")
    refused = "was refused: it holds something other than plain data"
    for args in (["visualize", evil, "--text", text, "--out", tmp_path / "page.html"],
                 ["inspect", evil, "--text", text],
                 ["compare", evil, "--data", checkpoint.parent.parent / "corpus.txt",
                  "--out", tmp_path / "cmp", "--in-process"]):
        result = run(*args, ok=False)
        assert result.exit_code == 1 and refused in result.output, (args[0], result.output)
        assert "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "page.html").exists()


# --- eval, computed without charlm.generation.metrics ---------------------------------------------

def test_eval_loss_equals_cross_entropy_computed_in_one_pass(checkpoint):
    model, vocab, info = load(checkpoint)
    text = (checkpoint.parent.parent / "corpus.txt").read_text()
    ids = torch.tensor(vocab.encode(text).astype(np.int64))
    val = ids[int(len(ids) * 0.9):]  # the run's default split: the last tenth
    with torch.no_grad():
        logits, _ = model(val[None, :-1])  # one sequence, one pass, no windows
        loss = float(F.cross_entropy(logits[0].double(), val[1:]))
    ev = last_json(run("eval", checkpoint, "--json"))
    assert ev["chars"] == len(val) - 1
    assert ev["loss"] == pytest.approx(loss, abs=1e-5)
    assert ev["bpc"] == pytest.approx(loss / math.log(2), abs=1e-5)
    assert ev["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    with torch.no_grad():  # --split all: the whole text
        all_logits, _ = model(ids[None, :-1])
        whole = float(F.cross_entropy(all_logits[0].double(), ids[1:]))
    ev_all = last_json(run("eval", checkpoint, "--split", "all", "--seq-len", 4096, "--json"))
    assert ev_all["loss"] == pytest.approx(whole, abs=1e-5)
