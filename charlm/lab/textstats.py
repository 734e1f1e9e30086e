"""Does the model write or copy? Statistics of generated text against the training text.

- ``known_words``: share of generated words (runs of letters) that occur in the training text.
- ``distinct_n``: distinct n-grams of characters / all n-grams in the samples (n = 1..4 words is
  the usual NLP measure; for characters we use word unigrams and bigrams: ``distinct_1/2``).
- ``novelty_8``: share of generated 8-character sequences that never occur in the training text.
- ``loops``: share of samples with one character ``LOOP_RUN`` times or more in a row (a young
  model sampled cold loops on its corpus's commonest character: on code, lines of spaces), and
  ``loops_training``: the same share over windows of the training text as long as the samples.
"""

from __future__ import annotations

import re

import numpy as np

NOVELTY_N = 8
LOOP_RUN = 40
LOOP_WINDOWS = 2000  # windows of the training text that loops_training is measured on
_WORD = re.compile(r"[^\W\d_]+")
_LOOP = re.compile(rf"(.)\1{{{LOOP_RUN - 1},}}", re.S)


def loops(texts: list[str]) -> float:
    """The share of ``texts`` with one character ``LOOP_RUN`` times or more in a row."""
    return sum(bool(_LOOP.search(t)) for t in texts) / len(texts) if texts else 0.0


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
        self.vocab, self.ids = vocab, text_ids
        self.base = max(len(vocab), 2)
        self.grams = np.unique(_ngram_keys(text_ids, NOVELTY_N, self.base))
        # Words: decode once; a few MB of text is fine (the corpus is memory-mapped anyway).
        self.words = set(_WORD.findall(vocab.decode(text_ids)))

    def loops(self, length: int, seed: int = 0) -> float:
        """``loops`` of LOOP_WINDOWS windows of the training text, ``length`` characters each,
        drawn at random (the same ones for the same seed)."""
        if length < LOOP_RUN or len(self.ids) < LOOP_RUN:
            return 0.0
        starts = np.random.default_rng(seed).integers(0, max(len(self.ids) - length, 0) + 1,
                                                      LOOP_WINDOWS)
        return loops([self.vocab.decode(self.ids[s:s + length]) for s in starts])

    def stats(self, samples: list[str]) -> dict:
        """known_words, distinct_1, distinct_2 (word n-grams), novelty_8 and loops of the
        samples, and loops_training for windows as long as the longest sample."""
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
            "loops": loops(samples),
            "loops_training": self.loops(max(map(len, samples), default=0)),
            "words": len(words),
        }
