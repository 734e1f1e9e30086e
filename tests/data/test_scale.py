"""Data at scale: files read in bounded chunks, streaming datasets read lazily, cached runs that
open no text, and vocabularies beyond one byte (uint16 and int32 ids) end to end."""

import json

import numpy as np
import pytest
import torch

from charlm.data import corpus as data
from charlm.data import sources
from charlm.data.corpus import TrainStreams, load_corpus
from charlm.data.sources import read_chunks, resolve
from charlm.errors import CharlmError

# --- text files in chunks ------------------------------------------------------------------------

def test_files_are_read_in_bounded_chunks_with_universal_newlines(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_CHARS", 5)  # so \r\n pairs straddle chunk boundaries
    (tmp_path / "a.txt").write_bytes(b"ab\r\ncd\r\n" * 10 + b"no newline")
    (tmp_path / "b.txt").write_bytes(b"second\rfile")  # old Mac line ending
    pieces = list(read_chunks([resolve(str(tmp_path / "a.txt")), resolve(str(tmp_path / "b.txt"))]))
    assert max(map(len, pieces)) <= 5
    assert "".join(pieces) == "ab\ncd\n" * 10 + "no newline" + "\n" + "second\nfile"


def test_decode_error_names_the_byte_offset_beyond_the_first_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_CHARS", 4)
    p = tmp_path / "late.txt"
    p.write_bytes("é".encode() * 9 + b"ok\xff")  # 18 bytes of 2-byte characters, cut by the chunks
    with pytest.raises(CharlmError, match="byte 0xff at offset 20"):
        load_corpus([str(p)])


def test_encoding_in_small_chunks_gives_the_same_cache(tmp_path, monkeypatch):
    text = "".join(chr(32 + (i * 7) % 90) for i in range(5000)) + "\n"
    (tmp_path / "t.txt").write_text(text)
    monkeypatch.setattr(data, "ENCODE_CHUNK", 333)
    monkeypatch.setattr(sources, "CHUNK_CHARS", 100)
    corpus = load_corpus([str(tmp_path / "t.txt")])
    assert corpus.vocab.decode(corpus.ids) == text
    assert corpus.meta["crc32"] == data.ids_checksum(corpus.ids)  # chained crc32 of the chunks


def test_a_cached_corpus_opens_none_of_its_files(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    for i in range(3):
        (tmp_path / "d" / f"{i}.txt").write_text(f"file {i}\n" * 50)
    (tmp_path / "d" / "blob.bin").write_bytes(b"\0\1\2")
    first = load_corpus([str(tmp_path / "d")])
    assert "\0" not in first.vocab.chars  # the binary file is skipped when read
    monkeypatch.setattr(sources, "looks_binary", lambda p: pytest.fail(f"opened {p}"))
    monkeypatch.setattr(sources, "_file_chunks", lambda p, e: pytest.fail(f"read {p}"))
    again = load_corpus([str(tmp_path / "d")])
    assert np.array_equal(first.ids, again.ids)


# --- streaming datasets ---------------------------------------------------------------------------

def test_streaming_rows_are_read_lazily(monkeypatch):
    import datasets
    produced = []

    def rows():
        for i in range(100_000):
            produced.append(i)
            yield {"text": f"row {i}"}

    def fake_load_dataset(name, split, streaming):
        assert name == "someone/huge" and streaming
        return datasets.IterableDataset.from_generator(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    chunks = read_chunks([resolve("hf:someone/huge", streaming=True)])
    assert [next(chunks) for _ in range(3)] == ["row 0", "\n", "row 1"]
    assert len(produced) < 1000  # never materialised


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """``hf:NAME`` served by a local JSON-lines file through datasets' real streaming loader."""
    import datasets
    rows = [{"body": f"line {i}\n" if i % 2 else f"line {i}", "n": i} for i in range(50)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split, streaming: real(
        "json", data_files=str(path), split=split, streaming=streaming))
    return rows


def test_streaming_dataset_end_to_end(local_hub):
    corpus = load_corpus(["hf:someone/rows"], streaming=True, text_column="body")
    expected = ""
    for r in local_hub:  # rows joined by a newline where the one before lacks it
        expected += ("" if not expected or expected.endswith("\n") else "\n") + r["body"]
    assert corpus.vocab.decode(corpus.ids) == expected
    with pytest.raises(CharlmError, match="no column 'text'.*body"):
        load_corpus(["hf:someone/rows"], streaming=True)


# --- vocabularies beyond one byte -----------------------------------------------------------------

def cjk_text(symbols: int = 3200, n: int = 40_000, seed: int = 0) -> str:
    """Lines of CJK ideographs with some structure: each symbol is often followed by the next."""
    rng = np.random.default_rng(seed)
    cps = 0x4E00 + rng.integers(0, symbols, size=n)
    cps[1::2] = np.minimum(cps[::2][:len(cps[1::2])] + 1, 0x4E00 + symbols - 1)
    text = "".join(map(chr, cps))
    lines = [text[i:i + 40] for i in range(0, len(text), 40)]
    return "\n".join(lines) + "".join(map(chr, range(0x4E00, 0x4E00 + symbols))) + "\n"


def test_cjk_corpus_trains_and_samples(tmp_path):
    import charlm
    from charlm.generation.sampling import generate
    from charlm.training.fit import TrainConfig, fit
    p = tmp_path / "cjk.txt"
    p.write_text(cjk_text(), encoding="utf-8")
    corpus = load_corpus([str(p)])
    assert len(corpus.vocab) > 3000 and corpus.ids.dtype == np.uint16
    results = fit(TrainConfig(data=[str(p)], cell="gru", hidden_size=32, embedding_dim=16,
                              seq_len=32, batch_size=4, max_steps=5, eval_every=0,
                              out=str(tmp_path / "run"), progress=False))
    assert results["steps"] == 5 and np.isfinite(results["val_loss"])
    model, vocab, _ = charlm.load(results["checkpoint"])
    assert len(vocab) == len(corpus.vocab)
    prompt = "\u4e00\u4e01"
    text = generate(model, vocab, prompt, 100, seed=0)[0]
    assert text.startswith(prompt) and len(text) == 102 and set(text) <= set(vocab.chars)


def test_int32_ids_for_a_vocabulary_beyond_65536_symbols(tmp_path):
    from charlm.generation.sampling import generate
    from charlm.model import CharRNN, ModelConfig
    cps = [*range(0x4E00, 0xA000), *range(0xAC00, 0xD7A4), *range(0x20000, 0x2A6E0)]
    text = "".join(map(chr, cps)) + "\n"
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    corpus = load_corpus([str(tmp_path / "wide.txt")])
    assert len(corpus.vocab) > 65536 and corpus.ids.dtype == np.int32
    assert corpus.vocab.decode(corpus.ids) == text
    x, y, _ = TrainStreams(corpus.ids, batch_size=2, seq_len=8).batch(3)
    assert x.dtype == torch.int64 and int(x.max()) < len(corpus.vocab)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(len(corpus.vocab), "lstm", 8, 1, 4))
    logits, _ = model(x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)
    sample = generate(model, corpus.vocab, chr(0x20000), 10, seed=1)[0]
    assert len(sample) == 11 and set(sample) <= set(corpus.vocab.chars)
