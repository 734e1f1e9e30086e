"""Properties that hold for any input (hypothesis): text survives encoding; splitting and batching
neither drop nor repeat a character beyond the documented tail; sampling stays in the vocabulary."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from charlm.data.corpus import TrainStreams, eval_batches, load_corpus, split_bounds
from charlm.data.vocab import CharVocab
from charlm.errors import CharlmError
from charlm.generation.sampling import SampleSettings, generate
from charlm.model import CharRNN, ModelConfig

QUICK = settings(max_examples=60, deadline=None)

# Any Unicode, with the hard cases mixed in on purpose: astral characters, combining marks,
# NUL, a byte-order mark, a zero-width joiner and line breaks.
HARD = ["\x00", "\n", "\u0301", "\u20dd", "e\u0301", "\U0001F600", "\U0001F469\u200d\U0001F4BB",
        "\U0010FFFF", "\U00020000", "\ufeff", "\u200d"]
unicode_text = st.lists(st.one_of(
    st.characters(blacklist_categories=("Cs",)),                       # anything but surrogates
    st.characters(min_codepoint=0x10000, blacklist_categories=("Cs",)),  # astral planes
    st.characters(whitelist_categories=("Mn", "Mc", "Me")),             # combining marks
    st.sampled_from(HARD)), min_size=1, max_size=80).map("".join)


@given(unicode_text, unicode_text)
@QUICK
def test_vocab_round_trips_any_unicode(text, other):
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text and len(ids) == len(text)
    assert ids.dtype == vocab.dtype and int(ids.max()) < len(vocab)
    assert CharVocab(vocab.to_dict()["chars"]) == vocab  # plain data, the same vocabulary
    unknown = set(other) - set(text)
    assert set(vocab.unknown_chars(other)) == unknown
    if unknown:
        with pytest.raises(ValueError):
            vocab.encode(other)


@given(unicode_text.filter(lambda t: "\x00" not in t and "\r" not in t and t.strip()))
@settings(max_examples=8, deadline=None)
def test_a_text_file_comes_back_exactly_from_the_cache(text):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.txt"
        p.write_bytes(text.encode("utf-8"))
        corpus = load_corpus([str(p)])
        assert corpus.vocab.decode(corpus.ids) == text


@given(st.integers(0, 10**7), st.floats(0, 0.999), st.floats(0, 0.999))
@settings(max_examples=200, deadline=None)
def test_splits_cover_the_corpus_once_in_order_or_say_why_not(n, val, test):
    # Properties, not the implementation's arithmetic: each split is its fraction of n to within
    # one character; a split asked for gets at least 2 characters or the call says which flag.
    try:
        bounds = split_bounds(n, val, test)
    except CharlmError as e:
        message = str(e)
        if val + test >= 1:
            assert "leave some text to train on" in message
        else:  # refused only where a split asked for could fall below 2 characters
            setting = "val_fraction" if message.startswith("val") else "test_fraction"
            assert message.startswith(setting)
            assert (val if setting == "val_fraction" else test) * n < 3
        return
    assert val + test < 1
    assert list(bounds) == ["train", "val", "test"]
    (a0, a1), (b0, b1), (c0, c1) = bounds.values()
    assert a0 == 0 and a1 == b0 and b1 == c0 and c1 == n  # contiguous, in order, [0, n) once
    sizes = {"train": a1 - a0, "val": b1 - b0, "test": c1 - c0}
    for name, frac in (("train", 1 - val - test), ("val", val), ("test", test)):
        assert abs(sizes[name] - frac * n) <= 1 + 1e-6 * n, (name, sizes, frac)
        if name != "train" and frac > 0:
            assert sizes[name] >= 2
    if test == 0:
        assert sizes["test"] == 0


@given(st.integers(4, 10**7), st.floats(0, 0.999), st.floats(0, 0.999))
@settings(max_examples=200, deadline=None)
def test_splits_are_refused_only_when_a_split_would_be_tiny(n, val, test):
    assume(val + test < 1 and (val == 0 or val * n >= 3.5) and (test == 0 or test * n >= 3.5))
    split_bounds(n, val, test)  # no refusal


@given(st.integers(2, 3000), st.integers(1, 5), st.integers(1, 40), st.integers(1, 3))
@QUICK
def test_stream_batches_feed_every_character_once_but_the_tail(n, batch_size, seq_len, world):
    ids = np.arange(n)  # each character is its own position
    if (n - 1) // (batch_size * world) < seq_len:
        with pytest.raises(CharlmError, match="fewer than one batch"):
            TrainStreams(ids, batch_size, seq_len, world=world)
        return
    fed = []
    for rank in range(world):
        streams = TrainStreams(ids, batch_size, seq_len, rank=rank, world=world)
        rows = [streams.batch(k) for k in range(streams.windows_per_epoch)]
        for k, (x, y, reset) in enumerate(rows):
            assert x.shape == y.shape == (batch_size, seq_len)
            assert reset == (tuple(range(batch_size)) if k == 0 else ())  # every row, then none
            assert torch.equal(y, x + 1)  # the target is always the next character
            fed.append(x.flatten().numpy())
        for row in torch.cat([x for x, _, _ in rows], dim=1):  # each row: one contiguous stream
            assert torch.equal(row, torch.arange(int(row[0]), int(row[0]) + len(row)))
    fed = np.concatenate(fed)
    assert len(np.unique(fed)) == len(fed)  # nothing repeated
    assert n - len(fed) == streams.tail  # and nothing dropped but the documented tail
    assert streams.batch(streams.windows_per_epoch)[0].equal(streams.batch(0)[0])  # next epoch


@given(st.integers(2, 3000), st.integers(1, 5), st.integers(1, 40), st.integers(1, 3),
       st.integers(0, 50))
@QUICK
def test_shifted_streams_feed_each_epoch_contiguously_once_inside_the_text(n, batch_size, seq_len,
                                                                           world, epoch):
    ids = np.arange(n)
    assume((n - 1) // (batch_size * world) >= 2 * seq_len - 1)
    fed = []
    for rank in range(world):
        streams = TrainStreams(ids, batch_size, seq_len, window="shifted", seed=5, rank=rank,
                               world=world)
        first = epoch * streams.windows_per_epoch
        rows = [streams.batch(first + k) for k in range(streams.windows_per_epoch)]
        for k, (x, y, reset) in enumerate(rows):
            assert reset == (tuple(range(batch_size)) if k == 0 else ())
            assert torch.equal(y, x + 1) and int(y.max()) < n
            fed.append(x.flatten().numpy())
        for b, row in enumerate(torch.cat([x for x, _, _ in rows], dim=1)):
            start = (rank * batch_size + b) * streams.stream_len + streams.shift(epoch)
            assert torch.equal(row, torch.arange(start, start + len(row)))
    fed = np.concatenate(fed)
    assert len(np.unique(fed)) == len(fed) == n - streams.tail


@given(st.integers(2, 3000), st.integers(1, 5), st.integers(1, 40), st.integers(0, 10**6))
@QUICK
def test_random_windows_stay_inside_and_predict_the_next_character(n, batch_size, seq_len, step):
    assume((n - 1) // batch_size >= seq_len)
    streams = TrainStreams(np.arange(n), batch_size, seq_len, window="random", seed=7)
    x, y, reset = streams.batch(step)
    assert reset == tuple(range(batch_size))  # no window continues another: every row cold
    assert torch.equal(y, x + 1) and int(x.min()) >= 0 and int(y.max()) < n
    assert torch.equal(streams.batch(step)[0], x)  # a pure function of the step


@given(st.integers(0, 3000), st.integers(1, 64), st.integers(1, 20), st.integers(1, 4))
@QUICK
def test_a_full_pass_scores_every_character_after_the_first_exactly_once(n, seq_len, streams,
                                                                          world):
    ids = np.arange(n)
    targets = []
    for rank in range(world):
        for x, y, _ in eval_batches(ids, seq_len, max_streams=streams, rank=rank, world=world):
            scored = y >= 0
            assert torch.equal(x[scored], y[scored] - 1)  # in the context of its predecessor
            targets.append(y[scored].numpy())
    got = np.sort(np.concatenate(targets)) if targets else np.zeros(0, dtype=np.int64)
    assert got.tolist() == list(range(1, n))


CHARS = list("ab \n\U0001F600\u0301")
VOCAB = CharVocab(CHARS)
torch.manual_seed(0)
MODELS = {cell: CharRNN(ModelConfig(len(VOCAB), cell, hidden_size=5, embedding_dim=4)).eval()
          for cell in ("rnn", "lstm", "gru")}


@given(cell=st.sampled_from(sorted(MODELS)),
       prompt=st.lists(st.sampled_from(CHARS), max_size=5).map("".join),
       length=st.integers(0, 12), num_samples=st.integers(1, 3),
       temperature=st.sampled_from([0.0, 1e-45, 1e-30, 1e-6]) | st.floats(1e-3, 5.0),
       top_k=st.none() | st.integers(1, len(CHARS) + 2),
       top_p=st.none() | st.floats(1e-6, 1.0), greedy=st.booleans(), seed=st.integers(0, 2**31))
@QUICK
def test_sampling_returns_only_vocab_characters_of_the_requested_length(
        cell, prompt, length, num_samples, temperature, top_k, top_p, greedy, seed):
    settings_ = SampleSettings(temperature, top_k, top_p, greedy)
    texts = generate(MODELS[cell], VOCAB, prompt, length, settings_, num_samples, seed)
    assert len(texts) == num_samples
    for text in texts:
        assert text.startswith(prompt) and len(text) == len(prompt) + length
        assert set(text) <= set(CHARS)
