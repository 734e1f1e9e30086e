"""Scoring a trained model on its own splits or on new text (the library side of ``charlm eval``)."""

from __future__ import annotations

from .checkpoint import load
from .data import load_corpus
from .errors import CharlmError
from .metrics import evaluate


def evaluate_checkpoint(checkpoint: str, data: list[str], which: str = "val", *,
                        seq_len: int = 256, encoding: str = "utf-8", text_column: str = "text",
                        hf_split: str = "train", streaming: bool = False) -> dict:
    """Full-pass metrics of a checkpoint on a split of its training data, or on ``data``.

    The text is encoded with the checkpoint's vocabulary; characters outside it are skipped and
    reported (``unknown_chars``, ``unknown``), never dropped silently.
    """
    model, vocab, info = load(checkpoint)
    run = info.get("data") or {}
    sources = data or run.get("sources")
    if not sources:
        raise CharlmError("this model does not record its training data; pass --data")
    corpus = load_corpus(sources, vocab=vocab, encoding=encoding, text_column=text_column,
                         split=hf_split, streaming=streaming)
    if which == "all":
        ids = corpus.ids
    else:
        splits = corpus.split(run.get("val_fraction", 0.1), run.get("test_fraction", 0.0))
        ids = splits[which]
        if len(ids) < 2:
            raise CharlmError(f"the {which} split is empty for this run; use --split all or another")
    result = {**evaluate(model, ids, seq_len), "split": which}
    unknown = corpus.meta.get("unknown") or {}
    if unknown:
        result["unknown_chars"] = sum(unknown.values())
        result["unknown"] = "".join(sorted(unknown))
    return result
