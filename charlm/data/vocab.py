"""CharVocab: the characters a model knows, and vectorised text ↔ id conversion.

Characters are kept sorted by code point, so a vocabulary built from the same text is always
the same. Encoding goes through a code-point lookup table (NumPy), never a Python loop per char.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

UNKNOWN = -1  # id given to a character outside the vocabulary, before the caller decides


def codepoints(text: str) -> np.ndarray:
    """The Unicode code points of ``text`` as a uint32 array (vectorised through UTF-32)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary of this size."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def printable(ch: str) -> str:
    """A character as a user can read it in a terminal (escapes for control characters)."""
    if ch == " ":
        return "␠"
    if ch.isprintable():
        return ch
    return ch.encode("unicode_escape").decode("ascii")


class CharVocab:
    """An ordered set of characters with encode (str → ids) and decode (ids → str)."""

    def __init__(self, chars: Iterable[str]):
        self.chars: list[str] = sorted(set(chars))
        if not self.chars:
            raise ValueError("a vocabulary needs at least one character")
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("a vocabulary holds single characters only")
        cps = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._table = np.full(int(cps.max()) + 1, UNKNOWN, dtype=np.int32)  # code point → id
        self._table[cps] = np.arange(len(cps), dtype=np.int32)
        # id → character, for vectorised decode; object, since a fixed-width str array drops "\0"
        self._chars = np.array(self.chars, dtype=object)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The vocabulary of every character that occurs in ``text``."""
        return cls.from_counts(np.bincount(codepoints(text)))

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> CharVocab:
        """The vocabulary of code points whose count is non-zero."""
        return cls(chr(c) for c in np.flatnonzero(counts))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and self.chars == other.chars

    @property
    def dtype(self) -> np.dtype:
        return id_dtype(len(self))

    def lookup(self, cps: np.ndarray) -> np.ndarray:
        """Map code points to ids (int32), ``UNKNOWN`` for characters outside the vocabulary."""
        ids = np.full(cps.shape, UNKNOWN, dtype=np.int32)
        known = cps < len(self._table)
        ids[known] = self._table[cps[known]]
        return ids

    def unknown_chars(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that the vocabulary lacks, in order of code point."""
        cps = codepoints(text)
        return [chr(c) for c in np.unique(cps[self.lookup(cps) == UNKNOWN])]

    def encode(self, text: str) -> np.ndarray:
        """Text → ids; a character outside the vocabulary is an error that names it."""
        ids = self.lookup(codepoints(text))
        if (ids == UNKNOWN).any():
            missing = ", ".join(repr(c) for c in self.unknown_chars(text)[:10])
            raise ValueError(f"characters not in the model's vocabulary: {missing}")
        return ids.astype(self.dtype)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """ids → text."""
        return "".join(self._chars[np.asarray(ids, dtype=np.int64)].tolist())

    def to_dict(self) -> dict:
        """Plain data for a checkpoint or config.json."""
        return {"chars": list(self.chars)}

    @classmethod
    def from_dict(cls, data: dict) -> CharVocab:
        return cls(data["chars"])

    def describe(self, limit: int = 200) -> str:
        """The vocabulary as one readable line."""
        shown = "".join(printable(c) for c in self.chars[:limit])
        return shown + (f" … (+{len(self) - limit})" if len(self) > limit else "")
