"""Scoring a trained model on its own splits or on new text (the library side of
``charlm eval``)."""

from __future__ import annotations

import numpy as np

from charlm.data.corpus import Corpus, load_corpus
from charlm.data.vocab import CharVocab
from charlm.errors import CharlmError
from charlm.generation.checkpoint import load
from charlm.generation.metrics import evaluate

# How a run read its sources, recorded in its checkpoint (``info["data"]``) with the sources:
# the defaults apply to new data and to checkpoints written before they were recorded.
READ_OPTIONS = {"encoding": "utf-8", "text_column": "text", "split": "train", "streaming": False}


def read_options(info: dict, data: list[str] | None, **given) -> dict:
    """How to read ``data`` (or, when it is None, the run's own data): the options given (not
    None), else for the run's own data the ones it was trained with, else the defaults."""
    recorded = {} if data else (info.get("data") or {})
    return {k: given[k] if given.get(k) is not None else recorded.get(k, default)
            for k, default in READ_OPTIONS.items()}


def run_corpus(info: dict, vocab: CharVocab, data: list[str] | None = None,
               **given) -> Corpus:
    """``data``, or else the data the checkpoint was trained on, read as the run read it (unless
    ``given`` says otherwise) and encoded with its vocabulary."""
    sources = data or (info.get("data") or {}).get("sources")
    if not sources:
        raise CharlmError("this model does not record its training data; pass `data`")
    return load_corpus(sources, vocab=vocab, **read_options(info, data, **given))


def run_split(corpus: Corpus, info: dict, which: str) -> np.ndarray:
    """``all`` of the corpus, or its train / val / test split cut with the run's fractions."""
    if which == "all":
        return corpus.ids
    run = info.get("data") or {}
    ids = corpus.split(run.get("val_fraction", 0.1), run.get("test_fraction", 0.0))[which]
    if len(ids) < 2:
        raise CharlmError(f"the {which} split is empty for this run; use `split` all or another")
    return ids


def evaluate_checkpoint(checkpoint: str, data: list[str], which: str = "val", *,
                        seq_len: int = 256, encoding: str | None = None,
                        text_column: str | None = None, hf_split: str | None = None,
                        streaming: bool | None = None) -> dict:
    """Full-pass metrics of a checkpoint on a split of its training data, or on ``data``.

    The text is encoded with the checkpoint's vocabulary; characters outside it are skipped and
    reported (``unknown_chars``, ``unknown``), never dropped silently. Reading options left None
    are the run's own for its own data (``read_options``).
    """
    if seq_len < 1:
        raise CharlmError(f"`seq_len` must be at least 1, not {seq_len}")
    model, vocab, info = load(checkpoint)
    corpus = run_corpus(info, vocab, data, encoding=encoding, text_column=text_column,
                        split=hf_split, streaming=streaming)
    result = {**evaluate(model, run_split(corpus, info, which), seq_len), "split": which}
    unknown = corpus.meta.get("unknown") or {}
    if unknown:
        result["unknown_chars"] = sum(unknown.values())
        result["unknown"] = "".join(sorted(unknown))
    return result
