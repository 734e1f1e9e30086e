"""Small behaviours that mutation testing (docs/mutation.md) showed no test would notice breaking.

Each test names the mutants it kills; where a survivor changes nothing observable, it is listed in
docs/mutation.md instead of being tested here.
"""

import re

import numpy as np
import pytest

from charlm.data.vocab import CharVocab, codepoints, id_dtype, printable

# --- vocab ----------------------------------------------------------------------------------------

def test_id_dtype_is_the_smallest_that_holds_every_id():
    assert [id_dtype(n) for n in (1, 256, 257, 65536, 65537)] == [
        np.uint8, np.uint8, np.uint16, np.uint16, np.int32]


def test_a_lone_surrogate_is_a_character_like_any_other():
    # text decoded with errors="surrogateescape", or a JSON prompt with "\ud800", holds them
    assert codepoints("a\ud800").tolist() == [97, 0xD800]
    vocab = CharVocab.from_text("a\udcff")
    assert vocab.decode(vocab.encode("\udcffa")) == "\udcffa"


def test_printable_shows_space_and_control_characters_readably():
    assert printable(" ") == "␠"
    assert printable("a") == "a" and printable("é") == "é"
    assert printable("\n") == "\\n" and printable("\x00") == "\\x00" and printable("\t") == "\\t"


def test_vocabularies_are_equal_only_with_the_same_characters():
    assert CharVocab("ab") == CharVocab("ba")
    assert CharVocab("ab") != CharVocab("abc") and CharVocab("ab") != ["a", "b"]


def test_lookup_gives_int32_ids_and_unknown_for_characters_past_the_table():
    vocab = CharVocab("ac")
    ids = vocab.lookup(np.array([97, 98, 99, 100, 0x1F600], dtype=np.uint32))
    assert ids.dtype == np.int32 and ids.tolist() == [0, -1, 1, -1, -1]


def test_decode_takes_an_empty_list_and_any_integer_array():
    vocab = CharVocab("abc")
    assert vocab.decode([]) == ""
    assert vocab.decode(np.array([2, 0], dtype=np.uint8)) == "ca"


def test_describe_is_the_characters_then_how_many_more():
    assert CharVocab("ba ").describe() == "␠ab"
    assert CharVocab("abcde").describe(limit=5) == "abcde"
    assert CharVocab("abcdef").describe(limit=4) == "abcd … (+2)"


def test_an_unknown_character_error_names_the_first_ten():
    vocab = CharVocab("a")
    unknown = "bcdefghijkl"  # eleven
    with pytest.raises(ValueError) as e:
        vocab.encode("a" + unknown)
    named = re.findall(r"'(.)'", str(e.value))
    assert named == list(unknown[:10])
    assert str(e.value).endswith("'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k'")


def test_describe_stops_at_200_characters_by_default():
    many = CharVocab(chr(0x100 + i) for i in range(201))
    assert many.describe().endswith(" … (+1)") and len(many.describe()) == 200 + len(" … (+1)")
    assert not CharVocab(chr(0x100 + i) for i in range(200)).describe().endswith(")")


def test_a_vocabulary_refuses_nothing_and_strings_with_a_reason():
    with pytest.raises(ValueError, match="^a vocabulary needs at least one character$"):
        CharVocab([])
    with pytest.raises(ValueError, match="^a vocabulary holds single characters only$"):
        CharVocab(["ab", "c"])


# --- metrics --------------------------------------------------------------------------------------

def test_summarize_divides_by_the_count_and_caps_perplexity_short_of_overflow():
    import math

    from charlm.generation.metrics import summarize
    one = summarize(3.0, 1)
    assert one == {"loss": 3.0, "bpc": 3.0 / math.log(2), "perplexity": math.exp(3.0), "chars": 1}
    assert summarize(0.0, 0)["loss"] == 0.0 and summarize(0.0, 0)["chars"] == 0
    assert summarize(800.0, 1)["perplexity"] == math.exp(700.0)  # exp(800) would overflow


def test_evaluate_reads_windows_of_256_by_default_and_passes_the_device_on(monkeypatch):
    import torch

    from charlm.generation import metrics
    from charlm.model import CharRNN, ModelConfig
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(7, "gru", 8, 1, 4))
    ids = np.random.default_rng(0).integers(0, 7, 4100)  # 2 streams at 256, 1 at 257
    assert metrics.evaluate(model, ids) == metrics.evaluate(model, ids, 256)
    assert metrics.evaluate(model, ids)["loss"] != metrics.evaluate(model, ids, 257)["loss"]
    seen, loss_sums = [], metrics.loss_sums
    monkeypatch.setattr(metrics, "loss_sums",
                        lambda m, b, device: seen.append(device) or loss_sums(m, b, device))
    metrics.evaluate(model, ids, device="cpu")
    assert seen == ["cpu"]


def test_evaluate_split_over_two_ranks_sums_to_the_single_process_value():
    # What DDP does (tests/training/test_ddp.py runs it for real, in subprocesses): each rank scores
    # its own streams and ``reduce`` sums (loss, count) over the ranks.
    import pytest
    import torch

    from charlm.generation import metrics
    from charlm.model import CharRNN, ModelConfig
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(7, "lstm", 8, 1, 4))
    ids = np.random.default_rng(1).integers(0, 7, 20000)
    single = metrics.evaluate(model, ids, 64)
    sent = []

    def keep(t):
        sent.append(t.clone())
        return t

    metrics.evaluate(model, ids, 64, rank=1, world=2, reduce=keep)
    (other,) = sent
    assert other.dtype == torch.float64 and other.shape == (2,)
    both = metrics.evaluate(model, ids, 64, rank=0, world=2, reduce=lambda t: t + other)
    assert both["chars"] == single["chars"] == len(ids) - 1
    assert both["loss"] == pytest.approx(single["loss"], rel=1e-6, abs=0)  # float32 windows
    assert 0 < other[1] < len(ids) - 1  # rank 1 scored a part, not all, of the characters


def test_sequence_loss_ignores_the_burn_in_targets():
    # (ignore_index=IGNORE is also torch's default, -100: dropping it is equivalent; this pins
    # that the constant stays the one the loss skips)
    from charlm.data.corpus import IGNORE
    assert IGNORE == -100


# --- evaluation -----------------------------------------------------------------------------------

def test_run_split_cuts_with_the_runs_own_fractions():
    from charlm.data.corpus import Corpus
    from charlm.errors import CharlmError
    from charlm.generation.evaluation import run_split
    corpus = Corpus(np.arange(100), CharVocab("a"))
    info = {"data": {"val_fraction": 0.2, "test_fraction": 0.1}}
    assert run_split(corpus, info, "train").tolist() == list(range(70))
    assert run_split(corpus, info, "val").tolist() == list(range(70, 90))
    assert run_split(corpus, info, "test").tolist() == list(range(90, 100))
    assert run_split(corpus, info, "all").tolist() == list(range(100))
    only_val = {"data": {"val_fraction": 0.3}}  # test_fraction defaults to 0
    assert run_split(corpus, only_val, "val").tolist() == list(range(70, 100))
    for unrecorded in ({}, {"data": None}):  # the defaults: --val-fraction 0.1, no test split
        assert run_split(corpus, unrecorded, "val").tolist() == list(range(90, 100))
        with pytest.raises(CharlmError, match="^the test split is empty for this run; use "
                                              "split all or another$"):
            run_split(corpus, unrecorded, "test")
    short = Corpus(np.arange(20), CharVocab("a"))
    assert len(run_split(short, {}, "val")) == 2  # two characters are enough to score one


def test_run_corpus_needs_recorded_or_given_data():
    from charlm.errors import CharlmError
    from charlm.generation.evaluation import run_corpus
    with pytest.raises(CharlmError, match="^this model does not record its training data; "
                                          "pass data$"):
        run_corpus({"data": {}}, CharVocab("a"))


def test_evaluate_checkpoint_passes_its_defaults_and_options_on(monkeypatch):
    from charlm.data.corpus import Corpus
    from charlm.generation import evaluation
    calls = {}
    monkeypatch.setattr(evaluation, "load", lambda path: ("model", CharVocab("ab"), {"data": {}}))

    def load_corpus(sources, **options):
        calls["corpus"] = (sources, options)
        return Corpus(np.zeros(50, dtype=np.uint8), CharVocab("ab"), {})

    def evaluate(model, ids, seq_len):
        calls["evaluate"] = (model, len(ids), seq_len)
        return {"loss": 1.0}

    monkeypatch.setattr(evaluation, "load_corpus", load_corpus)
    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    assert evaluation.evaluate_checkpoint("x.ckpt", ["t.txt"]) == {"loss": 1.0, "split": "val"}
    assert calls["corpus"][1] == {"vocab": CharVocab("ab"), "encoding": "utf-8",
                                  "text_column": "text", "split": "train", "streaming": False}
    assert calls["evaluate"] == ("model", 5, 256)
    evaluation.evaluate_checkpoint("x.ckpt", ["t.txt"], "all", seq_len=7, encoding="latin-1",
                                   text_column="body", hf_split="test", streaming=True)
    assert calls["corpus"][1] == {"vocab": CharVocab("ab"), "encoding": "latin-1",
                                  "text_column": "body", "split": "test", "streaming": True}
    assert calls["evaluate"] == ("model", 50, 7)


# --- checkpoint -----------------------------------------------------------------------------------

def test_load_reports_what_is_known_and_export_keeps_it(text_file, tmp_path):
    from charlm import load
    from charlm.errors import CharlmError
    from charlm.generation.checkpoint import export
    from charlm.training.fit import TrainConfig, fit
    fit(TrainConfig(data=[str(text_file)], max_steps=2, hidden_size=8, embedding_dim=4,
                    batch_size=2, seq_len=8, progress=False, out=str(tmp_path / "r")))
    ckpt = tmp_path / "r" / "best.ckpt"
    _, _, info = load(ckpt)
    assert info["path"] == str(ckpt) and info["step"] == 2
    assert info["data"]["sources"] == [str(text_file)] and info["optim"]["lr"] > 0
    assert set(info["charlm"]) == {"version", "torch", "elapsed_s"}
    out = export(ckpt, tmp_path / "e")
    _, _, exported = load(out)
    assert exported["path"] == str(out) and exported["step"] == 2
    assert exported["data"] == info["data"]
    export(ckpt, out)  # an export may be overwritten
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(CharlmError, match="^.*notes exists and is not an export; choose an empty "
                                          "or new folder$"):
        export(ckpt, tmp_path / "notes")
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine"
