"""``charlm data``: look at a corpus, prepare its cache, download the classic ones."""

from __future__ import annotations

import time

import click

from charlm.cli.common import (
    emit_json,
    user_errors,
)


@click.group()
def data():
    """Inspect, prepare and download corpora."""


@data.command("info")
@click.argument("source", nargs=-1)
@click.option("--val-fraction", default=0.1, show_default=True)
@click.option("--test-fraction", default=0.0, show_default=True)
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--text-column", default="text", show_default=True)
@click.option("--split", "hf_split", default="train", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def data_info(source, val_fraction, test_fraction, encoding, text_column, hf_split, as_json):
    """Characters, vocabulary, split sizes and cache path of SOURCE (encoding it if needed)."""
    from charlm.data.corpus import load_corpus
    corpus = load_corpus(list(source) or None, encoding=encoding, text_column=text_column,
                         split=hf_split)
    splits = corpus.split(val_fraction, test_fraction)
    info = {"sources": corpus.meta["sources"], "chars": len(corpus.ids),
            "vocab_size": len(corpus.vocab), "vocab": "".join(corpus.vocab.chars),
            "dtype": str(corpus.ids.dtype), "splits": {k: len(v) for k, v in splits.items()},
            "cache": corpus.meta["cache"]}
    if as_json:
        emit_json(info)
        return
    click.echo(f"sources:    {info['sources']}\ncharacters: {info['chars']:,}\n"
               f"vocab:      {info['vocab_size']} ({info['dtype']} ids)\n"
               f"            {corpus.vocab.describe()}\n"
               f"splits:     " + ", ".join(f"{k} {v:,}" for k, v in info["splits"].items()) +
               f"\ncache:      {info['cache']}")


@data.command("prepare")
@click.argument("source", nargs=-1)
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--text-column", default="text", show_default=True)
@click.option("--split", "hf_split", default="train", show_default=True)
@user_errors
def data_prepare(source, encoding, text_column, hf_split):
    """Encode SOURCE into the cache now (train does it on demand)."""
    from charlm.data.corpus import load_corpus
    t0 = time.perf_counter()
    corpus = load_corpus(list(source) or None, encoding=encoding, text_column=text_column,
                         split=hf_split)
    click.echo(f"{len(corpus.ids):,} characters, vocab {len(corpus.vocab)}: "
               f"{corpus.vocab.describe()}\ncached at {corpus.meta['cache']} "
               f"({time.perf_counter() - t0:.1f} s)")


@data.command("get")
@click.argument("name")
@click.option("--dir", "data_dir", default="data", show_default=True, help="Where to put it.")
@user_errors
def data_get(name, data_dir):
    """Download a classic corpus (tinyshakespeare, warpeace, enwik8, text8), checksum-verified."""
    from charlm.data import downloads as corpora
    path = corpora.get_corpus(name, data_dir)  # its CorpusError is a CharlmError
    click.echo(f"{name}: {path}")
