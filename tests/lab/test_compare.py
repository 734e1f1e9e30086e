"""charlm compare: the harness end to end, parameter matching, baseline, gradient probe, resume."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charlm.cli import cli
from charlm.data.corpus import load_corpus
from charlm.errors import CharlmError
from charlm.lab import compare as compare_module
from charlm.lab import compare_report
from charlm.lab.compare import hidden_sizes, ngram_baseline, run_compare
from charlm.lab.compare_config import CompareConfig
from charlm.lab.compare_runs import MeasureSettings, proc_status_mb
from charlm.lab.gradient_flow import decay_k, gradient_flow, steps_per_decade
from charlm.model import CharRNN, ModelConfig
from charlm.training.fit import TrainConfig, fit

TINY = dict(embedding_dim=8, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=5, progress=False)
PROBE = MeasureSettings(probe_k=16, probe_windows=8, probe_warmup=16, sample_length=40)
CLI_TINY = ["--embedding-dim", "8", "--batch-size", "4", "--seq-len", "16", "--lr", "0.01",
            "--warmup-steps", "5", "--max-steps", "20", "--eval-every", "10", "--probe-k", "16",
            "--probe-windows", "8", "--in-process"]


def tiny_compare(text_file, out, **overrides) -> CompareConfig:
    train = TrainConfig(data=[str(text_file)], max_steps=12, eval_every=6, **TINY)
    settings = dict(train=train, cells=["rnn", "gru"], params=2000, seeds=1, out=str(out),
                    isolate=False, measure=PROBE, ngram_max_order=3, progress=False)
    return CompareConfig(**{**settings, **overrides})


def run(*args, ok=True):
    result = CliRunner().invoke(cli, ["compare", *map(str, args)])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_all_cells_two_seeds_write_every_output(text_file, tmp_path):
    out = tmp_path / "cmp"
    result = run("--data", text_file, "--cells", "rnn,lstm,gru", "--params", 3000, "--seeds", 2,
                 "--out", out, "--json", *CLI_TINY)
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert "| lstm |" in result.stdout and "n-gram KN" in result.stdout  # the table, then JSON
    for name in ("report.md", "results.json", "learning_curves.png", "gradient_flow.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(line["runs"]) == 6 and {r["seed"] for r in line["runs"]} == {1337, 1338}
    for r in line["runs"]:
        assert {"cell", "seed", "params", "hidden_size", "val_loss", "val_bpc",
                "train_chars_per_s", "sample_chars_per_s", "grad_decay_k", "wall_s"} <= set(r)
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2))
        assert (out / "runs" / f"{r['cell']}-s{r['seed']}" / "run.json").exists()
    summary = {s["cell"]: s for s in line["summary"]}
    assert set(summary) == {"rnn", "lstm", "gru"}
    for s in summary.values():
        bpcs = [r["val_bpc"] for r in line["runs"] if r["cell"] == s["cell"]]
        assert s["val_bpc_mean"] == pytest.approx(np.mean(bpcs))
        assert s["val_bpc_std"] == pytest.approx(np.std(bpcs, ddof=1))
    assert line["ngram"]["order"] >= 1 and line["ngram"]["val_bpc"] > 0
    assert len(line["comparisons"]) == 3
    report = (out / "report.md").read_text()
    assert "does not beat the order" in report or "beats the order" in report
    assert "## Equal steps and equal wall clock" in report and "at step 20:" in report
    assert all(("still falling" in v or "levelled off" in v)
               for v in (s["verdict"] for s in line["summary"]))
    assert "within seed noise when" in report and "1..N−1" in report
    curves = json.loads((out / "results.json").read_text())["runs"][0]["history"]
    assert [h["step"] for h in curves] == [10, 20]
    # gate saturation, per gated cell, layer and gate, averaged over the two seeds
    assert {(g["group"], g["gate"]) for g in line["gates"]} == \
        {("lstm", "i"), ("lstm", "f"), ("lstm", "o"), ("gru", "r"), ("gru", "z")}
    for g in line["gates"]:
        assert 0 <= g["left"] <= 1 and 0 <= g["right"] <= 1 and g["runs"] == 2
        assert 0 <= g["mostly_left"] <= g["units"] and 0 <= g["mostly_right"] <= g["units"]
    assert (out / "gate_saturation.png").stat().st_size > 0
    assert "## Gate saturation" in report and "![gate saturation](gate_saturation.png)" in report


def test_parameter_matching_is_within_a_few_percent(text_file, tmp_path):
    config = tiny_compare(text_file, tmp_path, cells=["rnn", "lstm", "gru"], params=20_000)
    sizes = hidden_sizes(config, vocab_size=30)
    assert len({h for h, _ in sizes.values()}) == 3  # gated cells get smaller hidden sizes
    assert set(sizes) == {(cell, 20_000, 1) for cell in ("rnn", "lstm", "gru")}
    for (cell, _, _), (hidden, count) in sizes.items():
        assert abs(count - 20_000) / 20_000 < 0.03, (cell, hidden, count)
        assert count == CharRNN(ModelConfig(30, cell, hidden, embedding_dim=8)).num_params()
    grid = hidden_sizes(tiny_compare(text_file, tmp_path, cells=["lstm"], params=[5000, 20_000],
                                     layers=[1, 2]), vocab_size=30)
    assert set(grid) == {("lstm", p, n) for p in (5000, 20_000) for n in (1, 2)}
    for (cell, target, layers), (hidden, count) in grid.items():
        assert abs(count - target) / target < 0.05, (target, layers, count)
        assert count == CharRNN(ModelConfig(30, cell, hidden, layers, 8)).num_params()
    assert grid["lstm", 20_000, 2][0] < grid["lstm", 20_000, 1][0]  # depth costs width


def test_ngram_baseline_reaches_the_entropy_of_iid_text(tmp_path):
    probs = {"a": 0.5, "b": 0.25, "c": 0.125, "d": 0.125}  # entropy 1.75 bits exactly
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list(probs), size=60_000, p=list(probs.values())))
    path = tmp_path / "iid.txt"
    path.write_text(text)
    config = tiny_compare(path, tmp_path / "cmp", ngram_max_order=3)
    corpus = load_corpus([str(path)])
    ngram = ngram_baseline(config, corpus, tmp_path)
    assert ngram["val_bpc"] == pytest.approx(1.75, abs=0.02)
    assert ngram["val_bpc_by_order"]["1"] == pytest.approx(1.75, abs=0.02)


def rnn_with_recurrent_scale(scale: float) -> CharRNN:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(20, "rnn", 64, embedding_dim=16))
    with torch.no_grad():
        torch.nn.init.orthogonal_(model.rnn.weight_hh_l0)
        model.rnn.weight_hh_l0.mul_(scale)
    return model


def test_gradient_vanishes_faster_with_small_recurrent_weights():
    ids = np.random.default_rng(0).integers(0, 20, 3000)
    small = gradient_flow(rnn_with_recurrent_scale(0.3), ids, max_k=32, windows=16, warmup=32)
    large = gradient_flow(rnn_with_recurrent_scale(1.0), ids, max_k=32, windows=16, warmup=32)
    assert small.shape == (33,) and np.all(small >= 0)
    assert decay_k(small) < decay_k(large)
    assert steps_per_decade(small) < steps_per_decade(large)
    assert decay_k(np.array([1.0, 0.5, 0.2])) == 3  # never below 1/10: K + 1


@pytest.mark.parametrize("cell", ["lstm", "gru-note"])
def test_probe_runs_on_every_kind_of_state(cell):
    model = CharRNN(ModelConfig(12, cell, 16, num_layers=2, embedding_dim=8))
    norms = gradient_flow(model, np.arange(400) % 12, max_k=8, windows=4, warmup=8)
    assert norms.shape == (9,) and norms[0] > 0 and np.isfinite(norms).all()


def test_rerun_skips_finished_runs_and_restarts_or_resumes_unfinished(text_file, tmp_path,
                                                                      monkeypatch):
    first = run_compare(tiny_compare(text_file, tmp_path / "cmp"))
    calls = []
    real = compare_module.train_and_measure

    def counting(spec, run_dir, report=None):
        calls.append(spec["label"])
        return real(spec, run_dir, report)

    monkeypatch.setattr(compare_module, "train_and_measure", counting)
    again = run_compare(tiny_compare(text_file, tmp_path / "cmp"))
    assert calls == []
    assert [r["val_bpc"] for r in again["runs"]] == [r["val_bpc"] for r in first["runs"]]

    # An interrupted run (checkpoints but no results) is resumed with resume=True...
    gru = tmp_path / "cmp" / "runs" / "gru-s1337"
    (gru / "run.json").unlink()
    resumed = run_compare(tiny_compare(text_file, tmp_path / "cmp", resume=True))
    assert calls == ["gru-s1337"] and resumed["runs"][1]["steps"] == 12
    assert resumed["runs"][1]["val_bpc"] == first["runs"][1]["val_bpc"]
    # ...and restarted from scratch without it; a run trained but not measured is only measured.
    (gru / "run.json").unlink()
    (gru / "best.ckpt").unlink()
    restarted = run_compare(tiny_compare(text_file, tmp_path / "cmp"))
    assert calls == ["gru-s1337"] * 2 and (gru / "best.ckpt").exists()
    assert restarted["runs"][1]["val_bpc"] == pytest.approx(first["runs"][1]["val_bpc"], rel=1e-4)
    record = json.loads((gru / "run.json").read_text())
    del record["compare"]
    (gru / "run.json").write_text(json.dumps(record))
    mtime = (gru / "last.ckpt").stat().st_mtime_ns
    run_compare(tiny_compare(text_file, tmp_path / "cmp"))
    assert calls == ["gru-s1337"] * 3 and (gru / "last.ckpt").stat().st_mtime_ns == mtime

    with pytest.raises(CharlmError, match="trained with lr=0.01"):
        run_compare(tiny_compare(text_file, tmp_path / "cmp",
                                 train=TrainConfig(data=[str(text_file)], max_steps=12,
                                                   eval_every=6, **{**TINY, "lr": 0.02})))


def test_checkpoints_are_compared_on_the_same_split(text_file, tmp_path):
    ckpt = tmp_path / "elsewhere"
    fit(TrainConfig(data=[str(text_file)], cell="lstm", hidden_size=16, max_steps=10,
                    out=str(ckpt), **TINY))
    out = tmp_path / "cmp"
    result = run(ckpt / "best.ckpt", "--data", text_file, "--out", out, "--json",
                 "--probe-k", 16, "--probe-windows", 4)
    line = json.loads(result.stdout.strip().splitlines()[-1])
    (r,) = line["runs"]
    assert r["cell"] == "lstm" and r["label"] == "elsewhere/best.ckpt" and r["steps"] == 10
    expected = json.loads((ckpt / "run.json").read_text())["results"]["val_bpc"]
    assert r["val_bpc"] == pytest.approx(expected, rel=1e-5)  # the same split, the same metric
    assert r["grad_decay_k"] >= 1 and (out / "gradient_flow.png").exists()


def test_isolated_run_reports_its_own_peak_memory(text_file, tmp_path):
    ballast = b"x" * (600 << 20)  # resident in this process only: the run must not count it
    results = run_compare(tiny_compare(text_file, tmp_path / "cmp", cells=["rnn"], isolate=True))
    (r,) = results["runs"]
    assert r["peak_rss_mb"] >= r["rss_before_train_mb"] > 10
    here = proc_status_mb("VmRSS")
    if here is not None:  # Linux: a child exec'ed from this process must not report its memory
        assert here > len(ballast) / 2**20 and r["peak_rss_mb"] < here - 300
    assert "peak RSS MB" in compare_report.summary_table(results)
    assert "VmHWM" in (tmp_path / "cmp" / "report.md").read_text()


def test_user_mistakes_are_one_sentence(text_file, tmp_path):
    result = run("--data", text_file, "--cells", "rnn,bogus", "--out", tmp_path, ok=False)
    assert result.exit_code == 1 and "unknown cell 'bogus'" in result.output
    assert "Traceback" not in result.output
    result = run("--data", text_file, "--params", 100, "--hidden-size", 8, ok=False)
    assert result.exit_code == 1 and "not both" in result.output
    result = run(tmp_path / "missing.ckpt", "--data", text_file, "--out", tmp_path, ok=False)
    assert result.exit_code == 1 and "no such checkpoint" in result.output
    for args, said in ((["--params", "2x"], "--params: '2x' is not a count like 250000"),
                       (["--params", "2.5"], "--params: '2.5' is not a whole number"),
                       (["--params", "2k,2000"], "--params names a value twice"),
                       (["--num-layers", "1,a"], "--num-layers: '1,a' is not a list"),
                       (["--num-layers", "1,0"], "--layers must be at least 1, not 0")):
        result = run("--data", text_file, "--out", tmp_path, *args, ok=False)
        assert result.exit_code == 1 and said in result.stderr, (args, result.output)
        assert "Traceback" not in result.output


def test_a_grid_of_sizes_and_depths_compares_cells_at_each(text_file, tmp_path):
    out = tmp_path / "grid"
    args = ["--data", text_file, "--cells", "rnn,gru", "--params", "2k,5k", "--num-layers", "1,2",
            "--out", out, "--json", *CLI_TINY[:-5], "--max-steps", "6", "--eval-every", "3",
            "--probe-k", "8", "--probe-windows", "4", "--in-process", "--seeds", "1"]
    line = json.loads(run(*args).stdout.strip().splitlines()[-1])
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == sorted(f"{c}-{p}-L{n}-s1337" for c in ("rnn", "gru") for p in ("2k", "5k")
                           for n in (1, 2))
    rows = {(r["cell"], r["target_params"], r["num_layers"]): r for r in line["summary"]}
    assert set(rows) == {(c, p, n) for c in ("rnn", "gru") for p in (2000, 5000) for n in (1, 2)}
    for (cell, target, _), row in rows.items():
        assert abs(row["params"] - target) / target < 0.05 and row["group"].startswith(cell)
    for r in line["runs"]:  # each run at its own depth
        run_json = json.loads((out / "runs" / f"{r['group'].replace(' ', '-')}-s1337" /
                               "run.json").read_text())
        assert run_json["model"]["num_layers"] == r["num_layers"]
    # cells compared only at the same size and depth: rnn against gru, four times
    assert sorted((c["a"], c["b"]) for c in line["comparisons"]) == sorted(
        (f"rnn {p} L{n}", f"gru {p} L{n}") for p in ("2k", "5k") for n in (1, 2))
    report = (out / "report.md").read_text()
    assert "## Grid" in report and "| gru | 2 | " in report and "2,000 params" in report
    assert (out / "grid.png").stat().st_size > 0
    again = run(*args)  # finished runs are read back, not trained again
    assert json.loads(again.stdout.strip().splitlines()[-1])["summary"] == line["summary"]


def test_an_interrupted_run_says_how_to_go_on(text_file, tmp_path, monkeypatch):
    from charlm.training.interrupt import Interrupted

    def interrupted(spec, run_dir, report=None):
        raise Interrupted(5)

    monkeypatch.setattr(compare_module, "train_and_measure", interrupted)
    with pytest.raises(CharlmError, match="interrupted during rnn-s1337; run the same command"):
        run_compare(tiny_compare(text_file, tmp_path / "cmp"))


@pytest.mark.parametrize("cell, bias, expected", [
    ("lstm", {"i": -20.0, "f": 20.0, "o": 0.0}, {"i": (1, 0), "f": (0, 1), "o": (0, 0)}),
    ("gru", {"r": 20.0, "z": -20.0}, {"r": (0, 1), "z": (1, 0)})])
def test_gate_use_counts_the_steps_each_gate_is_shut_or_open(cell, bias, expected):
    # Biases that pin each gate shut (sigmoid < 0.1) or open (> 0.9) at every step, and one at the
    # middle (o = sigmoid(0) = 0.5 with zero weights): the fractions are exactly 1 or 0.
    from charlm.data.vocab import CharVocab
    from charlm.lab.compare_runs import gate_use
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=4, cell=cell, hidden_size=6, embedding_dim=3,
                                num_layers=2))
    order = {"lstm": "ifgo", "gru": "rzn"}[cell]
    with torch.no_grad():
        for layer in range(2):
            for name in (f"weight_ih_l{layer}", f"weight_hh_l{layer}", f"bias_hh_l{layer}"):
                getattr(model.rnn, name).zero_()
            b = getattr(model.rnn, f"bias_ih_l{layer}").view(len(order), 6)
            b.zero_()
            for gate, value in bias.items():
                b[order.index(gate)] = value
    vocab = CharVocab(list("abcd"))
    used = gate_use(model, vocab, np.arange(40) % 4, chars=30)
    assert used["gate_chars"] == 30 and len(used["gates"]) == 2 * len(bias)
    for g in used["gates"]:
        assert len(g["left"]) == 6
        assert (set(g["left"]), set(g["right"])) == ({expected[g["gate"]][0]},
                                                     {expected[g["gate"]][1]}), g
    rnn = CharRNN(ModelConfig(vocab_size=4, cell="rnn", hidden_size=6, embedding_dim=3))
    assert gate_use(rnn, vocab, np.arange(40) % 4, chars=30) == {}


def test_a_transformer_is_compared_as_the_reference_trained_or_as_a_checkpoint(text_file,
                                                                             tmp_path):
    out = tmp_path / "cmp"
    result = run("--data", text_file, "--cells", "gru,transformer", "--params", 3000,
                 "--seeds", 1, "--out", out, "--json", *CLI_TINY)
    line = json.loads(result.stdout.strip().splitlines()[-1])
    runs = {r["cell"]: r for r in line["runs"]}
    assert abs(runs["transformer"]["params"] - 3000) / 3000 < 0.05  # width solved like a cell's
    assert runs["transformer"]["val_bpc"] > 0 and runs["transformer"]["sample_chars_per_s"] > 0
    assert "grad_decay_k" not in runs["transformer"] and "grad_decay_k" in runs["gru"]
    assert {g["group"] for g in line["gates"]} == {"gru"}
    assert {(c["a"], c["b"]) for c in line["comparisons"]} == {("gru", "transformer")}
    report = (out / "report.md").read_text()
    assert "**transformer** is the reference" in report and "| transformer | 3," in report
    # a transformer trained elsewhere, scored on the same split
    ckpt = out / "runs" / "transformer-s1337" / "best.ckpt"
    again = run(ckpt, "--data", text_file, "--out", tmp_path / "again", "--json", *CLI_TINY)
    scored = json.loads(again.stdout.strip().splitlines()[-1])["runs"][0]
    assert scored["val_bpc"] == pytest.approx(runs["transformer"]["val_bpc"], abs=1e-6)


def history(points):
    return [{"step": st, "elapsed_s": t, "val_bpc": b, "val_loss": b * math.log(2)}
            for st, t, b in points]


def test_late_fall_reads_the_last_quarter_of_the_steps():
    h = history([(100, 1, 3.0), (200, 2, 2.5), (400, 4, 2.0)])
    assert compare_report.late_fall(h) == pytest.approx(0.25)  # 2.25 at step 300, then 2.0
    assert compare_report.late_fall(h[:1]) is None


def test_rankings_at_equal_steps_and_equal_time_and_where_curves_cross():
    # fast: 10 steps a second, learns slowly per step; slow: 2 steps a second, better per step,
    # and behind until step 200, where the curves cross
    fast = history([(100, 10, 3.0), (200, 20, 2.6), (400, 40, 2.3), (800, 80, 2.1)])
    slow = history([(100, 50, 3.2), (200, 100, 2.5), (300, 150, 2.2), (400, 200, 2.0)])
    runs = [{"cell": c, "group": c, "seed": seed, "history": h, "num_layers": 1,
             "target_params": 1000} for c, h in (("fast", fast), ("slow", slow))
            for seed in (1, 2)]
    summary = [{"group": c, "num_layers": 1, "target_params": 1000,
                "train_chars_per_s_mean": v} for c, v in (("fast", 5000.0), ("slow", 1000.0))]
    [r] = compare_report.rankings(runs, summary)
    assert (r["step"], r["seconds"]) == (400, 80)
    assert r["by_steps"] == ["slow", "fast"] and r["by_time"] == ["fast", "slow"]
    assert r["bpc_at_time"] == pytest.approx({"fast": 2.1, "slow": 2.78})  # 80 s: 3/5 of the way
    assert [(c["between_steps"], c["ahead_after"]) for c in r["crossings"]] == [([100, 200],
                                                                                "slow")]
    text = "\n".join(compare_report.rankings_text([r]))
    assert "at step 400: slow 2.000, fast 2.300; at 80 s: fast 2.100, slow 2.780" in text
    assert "The orders differ" in text and "fast 5,000, slow 1,000" in text
    assert "cross between steps 100 and 200; slow is ahead after" in text
    runs[0]["history"] = runs[1]["history"] = fast[:1]  # fast stopped before slow's first eval
    [r] = compare_report.rankings(runs, summary)
    assert r["by_time"] == [] and "no time at which every cell had been evaluated" in \
        "\n".join(compare_report.rankings_text([r]))


@pytest.mark.parametrize("delta, fall, said", [
    (0.3, 0.2, "still falling at the end (0.200 bpc"),
    (0.3, 0.001, "a longer budget alone is unlikely to close the gap"),
    (-0.3, 0.001, "beats the order-3 n-gram baseline (2.000 bpc) by 0.300 bpc after 10 steps. "
                  "Its val bpc had levelled off (+0.001 bpc"),
    (0.3, None, "Short runs may not beat it")])
def test_a_verdict_says_whether_the_cell_was_still_learning(delta, fall, said):
    row = {"group": "lstm", "runs": 1, "val_bpc_std": 0.0, "vs_ngram_bpc": delta,
           "late_fall_bpc": fall}
    assert said in compare_report.verdict(row, {"order": 3, "val_bpc": 2.0}, "10 steps")


def test_report_text_cannot_inject_markup():
    from charlm.lab.compare_report import fenced, md
    assert md("<script>alert(1)</script> | x") == "&lt;script&gt;alert(1)&lt;/script&gt; \\| x"
    block = fenced("a ``` b ```` c")
    assert block[0] == block[-1] == "`````"  # longer than any backtick run inside


def test_the_report_says_when_the_ngram_order_is_the_highest_tried(text_file, tmp_path):
    results = run_compare(tiny_compare(text_file, tmp_path / "cmp", cells=["rnn"]))
    ngram = results["ngram"]
    assert sorted(map(int, ngram["val_bpc_by_order"])) == [1, 2, 3]  # ngram_max_order 3
    for order, said in ((3, True), (2, False)):
        results["ngram"] = {**ngram, "order": order}
        text = compare_report.report(results)
        assert (f"order {order} chosen on val (the highest order tried" in text) is said
        assert f"order {order} chosen on val" in text


def test_a_recipe_gives_one_cell_its_own_optimiser_settings(text_file, tmp_path):
    out = tmp_path / "cmp"
    result = run("--data", text_file, "--cells", "rnn,gru", "--hidden-size", 8, "--seeds", 1,
                 "--out", out, "--recipe", "gru:lr=0.02", "--recipe", "gru:warmup-steps=0",
                 *CLI_TINY)
    config = {cell: json.loads((out / "runs" / f"{cell}-s1337" / "run.json").read_text())["config"]
              for cell in ("rnn", "gru")}
    assert (config["rnn"]["lr"], config["rnn"]["warmup_steps"]) == (0.01, 5)  # the shared ones
    assert (config["gru"]["lr"], config["gru"]["warmup_steps"]) == (0.02, 0)
    assert config["rnn"]["max_steps"] == config["gru"]["max_steps"] == 20  # the budget is shared
    report = (out / "report.md").read_text()
    assert "Per-cell recipes, in place of the settings above for that cell: gru lr 0.02, " \
           "warm-up 0" in report and "batches (in the same order) and budget for every" in report
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["recipes"] == {"gru": {"lr": 0.02, "warmup_steps": 0}}
    # Another recipe is another comparison: the finished run is not passed off as this one's.
    result = run("--data", text_file, "--cells", "rnn,gru", "--hidden-size", 8, "--seeds", 1,
                 "--out", out, "--recipe", "gru:lr=0.03", *CLI_TINY, ok=False)
    assert result.exit_code == 1 and "gru-s1337 was trained with lr=0.02, not 0.03" in result.stderr
    # Without a recipe the report keeps its words.
    plain = run_compare(tiny_compare(text_file, tmp_path / "plain", recipes={}))
    text = (tmp_path / "plain" / "report.md").read_text()
    assert plain["settings"]["recipes"] == {} and "Per-cell" not in text
    assert "batches (in the same order) and optimiser for every cell" in text


def test_by_default_the_gated_cells_go_without_the_rnns_warm_up(text_file, tmp_path):
    no_warmup = [a for a in CLI_TINY if a not in ("--warmup-steps", "5")]

    def configs(out, *flags):
        run("--data", text_file, "--cells", "rnn,lstm,gru", "--hidden-size", 8, "--seeds", 1,
            "--out", out, *flags, *no_warmup)
        return {cell: json.loads((out / "runs" / f"{cell}-s1337" / "run.json").read_text())
                ["config"] for cell in ("rnn", "lstm", "gru")}, (out / "report.md").read_text()

    config, report = configs(tmp_path / "default", "--recipe", "gru:lr=0.02")
    assert [config[c]["warmup_steps"] for c in ("rnn", "lstm", "gru")] == [1, 0, 0]  # 20 steps
    assert config["gru"]["lr"] == 0.02 and config["lstm"]["lr"] == 0.01  # a recipe adds to it
    assert {config[c]["init"] for c in config} == {"fan-in"}
    assert "init fan-in" in report
    assert "for that cell: lstm warm-up 0; gru warm-up 0, lr 0.02 (the ranking then compares " \
           "cell and recipe together). The warm-up is there for the plain RNN" in report
    # A warm-up given is every cell's, and a cell's own recipe wins over the default.
    config, report = configs(tmp_path / "shared", "--warmup-steps", 3, "--recipe",
                             "lstm:warmup-steps=2", "--init", "default")
    assert [config[c]["warmup_steps"] for c in ("rnn", "lstm", "gru")] == [3, 2, 3]
    assert {config[c]["init"] for c in config} == {"default"}
    assert "warm-up is there for" not in report  # no cell goes without one


def test_compare_config_has_the_same_default_recipes_as_the_cli():
    warm = TrainConfig(warmup_steps=10)
    assert CompareConfig(train=warm, cells=["rnn", "lstm", "transformer"]).recipes == \
        {"lstm": {"warmup_steps": 0}}
    assert CompareConfig(train=warm, cells=["rnn", "gru"], recipes={}).recipes == {}  # none
    assert CompareConfig(train=TrainConfig(warmup_steps=0), cells=["lstm"]).recipes == {}
    assert CompareConfig().train.init == "fan-in" and CompareConfig().recipes == \
        {"lstm": {"warmup_steps": 0}, "gru": {"warmup_steps": 0}}


@pytest.mark.parametrize("recipe, said", [
    ("gru:lr=abc", "--recipe: 'abc' is not a valid lr in 'gru:lr=abc'"),
    ("gru:warmup-steps=2.5", "'2.5' is not a valid warmup-steps"),
    ("gru:dropout=0.1", "is not CELL:SETTING=VALUE with SETTING one of lr, warmup-steps, "
                        "weight-decay, grad-clip"),
    ("gru", "'gru' is not CELL:SETTING=VALUE"),
    (":lr=1", "':lr=1' is not CELL:SETTING=VALUE"),
    ("lstm:lr=0.01", "--recipe names 'lstm', which is not among the cells compared (rnn, gru)"),
    ("gru:lr=-1", "--recipe for gru: --lr must be positive, not -1.0"),
    ("gru:grad-clip=-1", "--recipe for gru: --grad-clip must be >= 0"),
])
def test_a_bad_recipe_is_one_sentence_before_anything_trains(text_file, tmp_path, recipe, said):
    result = run("--data", text_file, "--cells", "rnn,gru", "--out", tmp_path / "cmp",
                 "--recipe", recipe, *CLI_TINY, ok=False)
    assert result.exit_code == 1 and said in result.stderr, result.output
    assert "Traceback" not in result.output and not (tmp_path / "cmp").exists()


def test_a_recipe_setting_given_twice_refuses():
    from charlm.lab.compare_config import parse_recipes
    assert parse_recipes(["lstm:lr=1e-2", "lstm:weight-decay=0.1", "rnn:lr=3e-3"]) == \
        {"lstm": {"lr": 0.01, "weight_decay": 0.1}, "rnn": {"lr": 0.003}}
    with pytest.raises(CharlmError, match="sets lr for lstm twice"):
        parse_recipes(["lstm:lr=1e-2", "lstm:lr=2e-2"])
