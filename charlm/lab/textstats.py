"""Does the model write or copy? Statistics of generated text against the training text.

- ``known_words``: share of generated words (runs of letters) that occur in the training text.
- ``distinct_n``: distinct n-grams of characters / all n-grams in the samples (n = 1..4 words is
  the usual NLP measure; for characters we use word unigrams and bigrams: ``distinct_1/2``).
- ``novelty_8``: share of generated 8-character sequences that never occur in the training text.
"""

from __future__ import annotations

import re

import numpy as np

NOVELTY_N = 8
_WORD = re.compile(r"[^\W\d_]+")


def _ngram_keys(ids: np.ndarray, n: int, base: int) -> np.ndarray:
    """Every n-gram of ``ids`` as one integer (base-``base`` digits; wraps harmlessly if huge)."""
    ids = np.asarray(ids, dtype=np.uint64)
    if len(ids) < n:
        return np.zeros(0, dtype=np.uint64)
    keys = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    for j in range(n):  # vectorised over positions, a loop over the n digits only
        keys = keys * np.uint64(base) + ids[j:len(ids) - n + 1 + j]
    return keys


class TrainingText:
    """An index of the training text for membership questions (its words and 8-grams)."""

    def __init__(self, text_ids: np.ndarray, vocab):
        self.vocab = vocab
        self.base = max(len(vocab), 2)
        self.grams = np.unique(_ngram_keys(text_ids, NOVELTY_N, self.base))
        # Words: decode once; a few MB of text is fine (the corpus is memory-mapped anyway).
        self.words = set(_WORD.findall(vocab.decode(text_ids)))

    def stats(self, samples: list[str]) -> dict:
        """known_words, distinct_1, distinct_2 (word n-grams), novelty_8 of the samples."""
        words = [w for s in samples for w in _WORD.findall(s)]
        bigrams = [pair for s in samples for pair in zip(_WORD.findall(s), _WORD.findall(s)[1:])]
        keys = np.concatenate([_ngram_keys(self.vocab.encode(s), NOVELTY_N, self.base)
                               for s in samples]) if samples else np.zeros(0, np.uint64)
        found = np.isin(keys, self.grams, assume_unique=False)
        return {
            "known_words": sum(w in self.words for w in words) / len(words) if words else 0.0,
            "distinct_1": len(set(words)) / len(words) if words else 0.0,
            "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
            "novelty_8": float(1.0 - found.mean()) if len(keys) else 0.0,
            "words": len(words),
        }
