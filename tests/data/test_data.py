import json
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm.data.corpus import StepBatches, TrainStreams, eval_batches, load_corpus, split_bounds
from charlm.errors import CharlmError


def test_line_breaks_and_exact_text_survive(tmp_path):
    text = "first line\n\n  indented\tthird\nno newline at end"
    (tmp_path / "a.txt").write_bytes(text.encode())
    corpus = load_corpus([str(tmp_path / "a.txt")])
    assert corpus.vocab.decode(corpus.ids) == text


def test_windows_line_endings_read_as_newlines(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one\r\ntwo\r\n")  # documented: universal newlines
    corpus = load_corpus([str(tmp_path / "a.txt")])
    assert corpus.vocab.decode(corpus.ids) == "one\ntwo\n"


def test_several_sources_directory_and_glob(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.txt").write_text("one\n")
    (tmp_path / "d" / "2.txt").write_text("two")
    (tmp_path / "d" / "blob.bin").write_bytes(b"\0\1\2binary")
    (tmp_path / "x.md").write_text("three\n")
    joined = load_corpus([str(tmp_path / "d"), str(tmp_path / "x.md")])
    assert joined.vocab.decode(joined.ids) == "one\ntwo\nthree\n"  # binary file skipped
    globbed = load_corpus([str(tmp_path / "d" / "*.txt")])
    assert globbed.vocab.decode(globbed.ids) == "one\ntwo"


def test_save_to_disk_dataset(tmp_path):
    import datasets
    datasets.Dataset.from_dict({"body": ["hello", "world\n", "!"]}).save_to_disk(tmp_path / "ds")
    corpus = load_corpus([str(tmp_path / "ds")], text_column="body")
    assert corpus.vocab.decode(corpus.ids) == "hello\nworld\n!"
    with pytest.raises(CharlmError, match="no column 'text'"):
        load_corpus([str(tmp_path / "ds")])


def test_second_load_comes_from_the_cache(text_file, monkeypatch):
    first = load_corpus([str(text_file)])
    import charlm.data.corpus as data
    monkeypatch.setattr(data, "encode_sources", lambda *a, **k: pytest.fail("encoded twice"))
    second = load_corpus([str(text_file)])
    assert isinstance(second.ids, np.memmap) and second.ids.mode == "r"  # mapped, not read
    assert Path(second.ids.filename) == Path(second.meta["cache"])
    assert np.array_equal(first.ids, second.ids)
    assert (first.meta["from_cache"], second.meta["from_cache"]) == (False, True)


def test_corrupt_cache_is_detected_and_rebuilt(text_file):
    corpus = load_corpus([str(text_file)])
    cache = corpus.meta["cache"]
    raw = bytearray(open(cache, "rb").read())
    raw[-1] ^= 0xFF  # flip the last id
    open(cache, "wb").write(bytes(raw))
    again = load_corpus([str(text_file)])
    assert again.vocab.decode(again.ids) == text_file.read_text()
    with open(cache, "r+b") as f:  # truncate
        f.truncate(200)
    rebuilt = load_corpus([str(text_file)])
    assert rebuilt.vocab.decode(rebuilt.ids) == text_file.read_text()


def test_vocab_given_skips_and_counts_unknown(tmp_path):
    from charlm.data.vocab import CharVocab
    p = tmp_path / "t.txt"
    p.write_text("abcxxd")
    corpus = load_corpus([str(p)], vocab=CharVocab("abcd"))
    assert corpus.vocab.decode(corpus.ids) == "abcd"
    assert corpus.meta["unknown"] == {"x": 2}


def test_split_sizes_match_nanogpt():
    n = 1_115_394
    b = split_bounds(n, 0.1, 0.0)
    assert b["train"] == (0, int(n * 0.9)) and b["val"] == (int(n * 0.9), n)
    b = split_bounds(1000, 0.1, 0.05)
    assert b == {"train": (0, 850), "val": (850, 950), "test": (950, 1000)}
    with pytest.raises(CharlmError, match="val_fraction"):
        split_bounds(10, 0.01, 0.0)  # leaves val with 0 characters
    assert split_bounds(100, 0.02, 0.0)["val"] == (98, 100)  # 2 characters are enough
    with pytest.raises(CharlmError, match="test_fraction 0.01 leaves the test split with 1"):
        split_bounds(100, 0.1, 0.01)
    with pytest.raises(CharlmError, match="leave some text"):
        split_bounds(10, 0.5, 0.5)


def test_window_k_plus_1_continues_window_k():
    ids = np.arange(1000) % 251
    s = TrainStreams(ids.astype(np.int64), batch_size=4, seq_len=10)
    x0, y0, reset0 = s.batch(0)
    x1, y1, reset1 = s.batch(1)
    assert reset0 == (0, 1, 2, 3) and reset1 == ()   # every row starts cold, then none
    assert x0.shape == (4, 10)
    assert (y0[:, :-1] == x0[:, 1:]).all()           # targets are the next characters
    assert (x1[:, 0] == y0[:, -1]).all()             # the next window picks up where it ended
    assert (x0[1, 0] - x0[0, 0]) % 251 == s.stream_len % 251  # rows are far-apart streams
    assert s.batch(s.windows_per_epoch)[2] == reset0  # a new epoch resets the state


def test_with_restart_every_r_each_stream_starts_cold_once_in_r_windows_in_turn():
    ids = np.arange(10_000, dtype=np.int64)
    s = TrainStreams(ids, batch_size=4, seq_len=10, restart_every=8)
    cold = {k: s.batch(k)[2] for k in range(1, 17)}
    for row in range(4):  # once in every 8 windows, 8 windows apart
        at = [k for k, rows in cold.items() if row in rows]
        assert len(at) == 2 and at[1] - at[0] == 8, (row, at)
    assert max(len(rows) for rows in cold.values()) == 1  # in turn: never two at once here
    assert s.batch(0)[2] == (0, 1, 2, 3)  # an epoch's first window: all of them
    # under DDP each process restarts its own streams when one process would have
    split = [TrainStreams(ids, batch_size=2, seq_len=10, restart_every=8, rank=r, world=2)
             for r in range(2)]
    for k in range(1, 17):
        together = [2 * r + i for r in range(2) for i in split[r].batch(k)[2]]
        assert together == list(cold[k]), k
    assert TrainStreams(ids, 4, 10, restart_every=0).batch(5)[2] == ()


def test_stream_batching_never_duplicates_and_reports_tail():
    ids = np.arange(10_007, dtype=np.int64)
    s = TrainStreams(ids, batch_size=3, seq_len=7)
    seen = np.concatenate([s.batch(k)[0].reshape(-1).numpy() for k in range(s.windows_per_epoch)])
    assert len(np.unique(seen)) == len(seen)          # no character fed twice in an epoch
    assert len(ids) - len(seen) == s.tail              # what is not fed is the reported tail
    assert s.tail < 3 * 7 + 3 + 1


def test_ddp_ranks_own_disjoint_streams():
    ids = np.arange(5000, dtype=np.int64)
    r0 = TrainStreams(ids, 2, 8, rank=0, world=2).batch(3)[0]
    r1 = TrainStreams(ids, 2, 8, rank=1, world=2).batch(3)[0]
    single = TrainStreams(ids, 4, 8).batch(3)[0]
    assert np.array_equal(np.concatenate([r0, r1]), single)


def test_shifted_windows_move_each_epochs_cut_and_keep_the_streams():
    ids = np.arange(10_000, dtype=np.int64)
    plain = TrainStreams(ids, batch_size=4, seq_len=10)
    s = TrainStreams(ids, batch_size=4, seq_len=10, window="shifted", seed=3)
    assert s.stream_len == plain.stream_len == 2499
    assert (plain.windows_per_epoch, s.windows_per_epoch) == (249, 249)  # 9 of the 9-char tail
    # one window fewer where the streams divide into windows exactly
    exact = np.arange(4 * 250 + 1, dtype=np.int64)  # streams of 250: 25 windows each, no tail
    assert TrainStreams(exact, 4, 10).windows_per_epoch == 25
    assert TrainStreams(exact, 4, 10, window="shifted").windows_per_epoch == 24
    shifts = [s.shift(e) for e in range(20)]
    assert all(0 <= v < 10 for v in shifts) and len(set(shifts)) > 3  # cuts differ by epoch
    assert plain.shift(5) == 0  # plain streams never move
    n = s.windows_per_epoch
    for epoch in range(3):
        x0, _, reset0 = s.batch(epoch * n)
        assert reset0 == (0, 1, 2, 3)  # an epoch starts cold, as with plain streams
        assert np.array_equal(x0[:, 0].numpy(), np.arange(4) * 2499 + s.shift(epoch))
        x1, _, reset1 = s.batch(epoch * n + 1)
        assert reset1 == () and (x1[:, 0] == x0[:, -1] + 1).all()  # then each row continues


def test_mixed_windows_turn_to_the_streams_when_two_thirds_of_the_budget_are_spent():
    ids = np.arange(10_000, dtype=np.int64)
    plain = TrainStreams(ids, 4, 10)
    rand = TrainStreams(ids, 4, 10, window="random", seed=3)
    mixed = TrainStreams(ids, 4, 10, window="mixed", seed=3)
    assert mixed.windows_per_epoch == plain.windows_per_epoch
    # with no budget to measure progress by, the windows stay random
    assert np.array_equal(mixed.batch(500)[0], rand.batch(500)[0]) and mixed.streams_from is None
    mixed.progress = lambda step: step / 30
    for step in range(20):
        x, _, restart = mixed.batch(step)
        assert np.array_equal(x, rand.batch(step)[0]) and restart == (0, 1, 2, 3)
    assert mixed.streams_from is None
    x, _, restart = mixed.batch(20)  # 20 / 30: the streams from their first window, all cold
    assert mixed.streams_from == 20 and restart == (0, 1, 2, 3)
    assert np.array_equal(x, plain.batch(0)[0])
    x, _, restart = mixed.batch(21)
    assert np.array_equal(x, plain.batch(1)[0]) and restart == ()
    mixed.progress = lambda step: 1.0  # the switch, once made, stays where it was made
    assert np.array_equal(mixed.batch(25)[0], plain.batch(5)[0]) and mixed.streams_from == 20
    assert np.array_equal(mixed.batch(3)[0], rand.batch(3)[0])
    resumed = TrainStreams(ids, 4, 10, window="mixed", seed=3)  # told the switch, no clock
    resumed.streams_from = 20
    assert np.array_equal(resumed.batch(22)[0], plain.batch(2)[0])
    assert np.array_equal(resumed.batch(19)[0], rand.batch(19)[0])


def test_random_windows_are_reproducible():
    ids = np.arange(5000, dtype=np.int64)
    a = TrainStreams(ids, 4, 8, window="random", seed=3)
    b = TrainStreams(ids, 4, 8, window="random", seed=3)
    assert np.array_equal(a.batch(17)[0], b.batch(17)[0])
    assert not np.array_equal(a.batch(17)[0], a.batch(18)[0])


@pytest.mark.parametrize("n,world", [(50, 1), (5000, 1), (5000, 3), (20000, 2)])
def test_full_pass_scores_every_character_after_the_first_once(n, world):
    ids = np.arange(n, dtype=np.int64)
    targets = []
    for rank in range(world):
        for _, y, _ in eval_batches(ids, seq_len=16, rank=rank, world=world):
            targets.append(y[y >= 0].numpy())
    assert sorted(np.concatenate(targets).tolist()) == list(range(1, n))


def test_too_short_corpus_says_how_long_it_must_be():
    with pytest.raises(CharlmError, match="fewer than one batch needs"):
        TrainStreams(np.arange(100), batch_size=16, seq_len=128)


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"  \n\t \n", "only whitespace"),
    (b"caf\xe9 au lait\n", "byte 0xe9 at offset 3"),
    (b"\x00\x01binary\x00", "binary"),
])
def test_bad_files_get_a_clear_message(tmp_path, content, message):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(CharlmError, match=message):
        load_corpus([str(p)])


def test_other_encodings_with_flag(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes("café\n".encode("latin-1"))
    assert load_corpus([str(p)], encoding="latin-1").vocab.decode(
        load_corpus([str(p)], encoding="latin-1").ids) == "café\n"


def test_missing_sources(tmp_path):
    with pytest.raises(CharlmError, match="no such file"):
        load_corpus([str(tmp_path / "nope.txt")])
    with pytest.raises(CharlmError, match="matches no files"):
        load_corpus([str(tmp_path / "*.nothing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharlmError, match="no text files"):
        load_corpus([str(tmp_path / "empty")])
    with pytest.raises(CharlmError, match="dataset name"):
        load_corpus(["hf:../../etc"])


def test_builtin_stdlib_corpus_is_deterministic():
    from charlm.data.sources import stdlib_files
    files = stdlib_files()
    assert files == sorted(files) and len(files) > 100
    assert not any("test" in f.parts[:-1] for f in files)


def test_meta_is_plain_json(text_file):
    corpus = load_corpus([str(text_file)])
    assert json.loads(json.dumps(corpus.meta)) == corpus.meta
    assert corpus.meta["chars"] == len(corpus.ids) and corpus.meta["vocab"] == corpus.vocab.chars


def test_a_runs_batches_are_as_long_as_the_whole_run_from_any_start():
    # A resumed trainer counts the `start` steps done as done and ends the pass after the rest;
    # an open-ended run has no length, which the trainer reads as "no end to the pass".
    assert len(StepBatches(None, 0, 10)) == len(StepBatches(None, 7, 10)) == 10
    with pytest.raises(TypeError) as e:
        len(StepBatches(None, 3, None))
    assert str(e.value) == "an open-ended run has no length"


def test_a_full_pass_reads_up_to_16_streams_and_a_short_split_in_one():
    seq_len = 4
    for n, streams in [(16 * 8 * seq_len * 2, 16), (8 * seq_len * 3, 3), (8 * seq_len - 1, 1)]:
        ids = np.arange(n) % 7
        batches = list(eval_batches(ids, seq_len))  # the defaults: one process reads it all
        assert {x.shape[0] for x, _, _ in batches} == {streams}, n
        scored = sum(int((y != -100).sum()) for _, y, _ in batches)
        assert scored == n - 1, n  # every character after the first, once


# --- what the data.corpus mutation run showed no test would notice

def test_the_cache_key_holds_the_vocabulary_and_the_encoding(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("caf\u00e9 ab\n", encoding="utf-8")
    plain = load_corpus([str(p)])
    from charlm.data.vocab import CharVocab
    given = load_corpus([str(p)], vocab=CharVocab(list("ba\n")))  # another vocabulary: other ids
    assert given.vocab.chars == ["\n", "a", "b"] and given.meta["from_cache"] is False
    assert given.vocab.decode(given.ids) == "aab\n"  # "caf\u00e9 ab": the rest skipped
    as_latin = load_corpus([str(p)], encoding="latin-1")  # the same bytes, read otherwise
    assert as_latin.meta["from_cache"] is False and len(as_latin.ids) == len(plain.ids) + 1
    assert len({Path(c.meta["cache"]).parent for c in (plain, given, as_latin)}) == 3


def test_the_cache_lives_in_charlm_cache_or_home(tmp_path, monkeypatch):
    from charlm.data.corpus import cache_root
    monkeypatch.setenv("CHARLM_CACHE", str(tmp_path / "here"))
    assert cache_root() == tmp_path / "here"
    monkeypatch.delenv("CHARLM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "charlm"


def test_a_fresh_and_a_cached_load_say_the_same_about_themselves(text_file):
    from charlm.data.corpus import CACHE_FORMAT
    fresh = load_corpus([str(text_file)], encoding="utf-8")
    cached = load_corpus([str(text_file)], encoding="utf-8")
    assert isinstance(fresh.ids, np.memmap) and fresh.ids.mode == "r"  # mapped, not read
    for corpus in (fresh, cached):
        meta = corpus.meta
        assert (meta["format"], meta["encoding"]) == (CACHE_FORMAT, "utf-8")
        assert meta["fingerprint"] == Path(meta["cache"]).parent.name  # compare keys on it
    assert {k: v for k, v in fresh.meta.items() if k != "from_cache"} == \
        {k: v for k, v in cached.meta.items() if k != "from_cache"}


def test_a_corpus_longer_than_one_encoding_chunk_is_read_from_the_cache_next_time(tmp_path):
    from charlm.data import corpus as data
    p = tmp_path / "long.txt"
    p.write_text(("abcdefghij\n" * (data.ENCODE_CHUNK // 11 + 1000)), encoding="utf-8")
    first = load_corpus([str(p)])
    assert len(first.ids) > data.ENCODE_CHUNK and first.meta["from_cache"] is False
    assert load_corpus([str(p)]).meta["from_cache"] is True  # its checksum covers every chunk


@pytest.mark.parametrize("val, test, message", [
    (1.0, 0.0, "`val_fraction` must be in [0, 1), not 1.0"),
    (-0.1, 0.0, "`val_fraction` must be in [0, 1), not -0.1"),
    (0.1, 1.5, "`test_fraction` must be in [0, 1), not 1.5"),
    (0.5, 0.5, "`val_fraction` plus `test_fraction` must leave some text to train on"),
    (0.01, 0.0, "`val_fraction` 0.01 leaves the val split with 1 characters of 100; use a "
                "larger fraction or more text"),
])
def test_split_refusals_word_for_word(val, test, message):
    with pytest.raises(CharlmError) as e:
        split_bounds(100, val, test)
    assert e.value.template == message


def test_train_stream_refusals_word_for_word():
    with pytest.raises(CharlmError) as e:
        TrainStreams(np.arange(100), batch_size=4, seq_len=32, window="sliding")
    assert e.value.template == ("`window` must be one of stream, shifted, random, mixed, "
                                "not 'sliding'")
    with pytest.raises(CharlmError) as e:
        TrainStreams(np.arange(100), batch_size=4, seq_len=32, world=2)
    assert e.value.template == (
        "the training split has 100 characters, fewer than one batch needs (257 = batch size 4 "
        "x 2 process(es) x seq len 32 + 1); use more text or a smaller `batch_size` / `seq_len`")
    TrainStreams(np.arange(41), batch_size=4, seq_len=10)  # one window of 10 in each stream
    with pytest.raises(CharlmError) as e:  # but no room to move it
        TrainStreams(np.arange(41), batch_size=4, seq_len=10, window="shifted")
    assert e.value.template == (
        "the training split has 41 characters, fewer than one batch needs (77 = batch size 4 "
        "x 1 process(es) x (2 x seq len 10 - 1) + 1); use more text or a smaller `batch_size` / "
        "`seq_len`")


def test_step_batches_are_the_streams_batches_for_steps_start_to_stop():
    import itertools
    streams = TrainStreams(np.arange(1000) % 50, batch_size=2, seq_len=8)
    got = list(itertools.islice(StepBatches(streams, 3, 6), 10))  # a runaway loop stops at 10
    assert len(got) == 3
    for step, (x, y, reset) in zip(range(3, 6), got):
        want = streams.batch(step)
        assert torch.equal(x, want[0]) and torch.equal(y, want[1]) and reset == want[2]
    open_ended = list(itertools.islice(StepBatches(streams, 0, None), 5))
    assert len(open_ended) == 5 and torch.equal(open_ended[4][0], streams.batch(4)[0])


def test_a_full_pass_resets_the_state_at_its_first_window_only_and_has_no_empty_window():
    from charlm.data.corpus import IGNORE
    ids = np.arange(993) % 7  # 992 targets: 62 windows of 16 exactly
    for streams in (1, 4):
        windows = list(eval_batches(ids, 16, max_streams=streams))
        flags = [reset for _, _, reset in windows]
        assert flags[0] is True and not any(flags[1:]), streams
        assert all((y != IGNORE).any() for _, y, _ in windows), streams  # no padding-only one
    assert len(list(eval_batches(ids, 16, max_streams=1))) == 62


def test_encoding_reads_the_code_points_back_one_bounded_chunk_at_a_time(tmp_path, monkeypatch):
    from charlm.data import corpus as data
    calls = []
    fromfile = np.fromfile

    def spy(*args, **kwargs):
        calls.append(kwargs.get("count", -1))
        return fromfile(*args, **kwargs)

    monkeypatch.setattr(data, "ENCODE_CHUNK", 333)
    monkeypatch.setattr(np, "fromfile", spy)
    text = "".join(chr(32 + (i * 7) % 90) for i in range(5000)) + "\n"
    (tmp_path / "t.txt").write_text(text)
    corpus = load_corpus([str(tmp_path / "t.txt")])
    assert corpus.vocab.decode(corpus.ids) == text
    assert calls == [333] * 16  # ceil(5001 / 333) reads, none of the whole file


def test_a_scratch_file_that_cannot_be_made_is_the_error_reported(tmp_path, monkeypatch):
    import builtins

    from charlm.data import corpus as data

    def refuse(path, *args, **kwargs):
        if "codepoints.tmp" in str(path) and "w" in (args[0] if args else kwargs.get("mode", "")):
            raise OSError(28, "No space left on device")
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(data, "open", refuse, raising=False)
    (tmp_path / "t.txt").write_text("some text\n")
    with pytest.raises(OSError) as e:
        load_corpus([str(tmp_path / "t.txt")])
    assert e.value.errno == 28 and "No space left" in str(e.value)


def test_a_saved_dataset_dict_is_read_from_its_train_split_unless_told(tmp_path):
    import datasets
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["from train"]}),
                          "test": datasets.Dataset.from_dict({"text": ["from test"]})}
                         ).save_to_disk(tmp_path / "dd")
    train = load_corpus([str(tmp_path / "dd")])
    test = load_corpus([str(tmp_path / "dd")], split="test")
    assert (train.vocab.decode(train.ids), test.vocab.decode(test.ids)) == ("from train",
                                                                             "from test")
