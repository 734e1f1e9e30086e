"""A character n-gram language model (interpolated Kneser–Ney), the baseline the recurrent
cells face.

This is interpolated *modified* Kneser–Ney (Chen & Goodman 1998: three discounts per gram length,
for grams seen once, twice and three or more times), the variant KenLM and SRILM use; passing a
``discount`` gives plain interpolated Kneser–Ney with that one discount everywhere. An order-n model
predicts a character from the n−1 before it by mixing every level from the n-gram down to a uniform
distribution over the vocab:

    P_m(w | h) = max(c_m(hw) − D_m(c_m(hw)), 0) / c_m(h•)  +  γ_m(h) · P_{m−1}(w | h')
    γ_m(h)     = (D_m1·N1(h•) + D_m2·N2(h•) + D_m3+·N3+(h•)) / c_m(h•)
    P_0(w)     = 1 / vocab_size

where h is the m−1 characters before w, h' is h without its first character, c_m(h•) = Σ_w c_m(hw)
and N_k(h•) counts the characters w with c_m(hw) = k (N3+: ≥ 3). At the top level (m = n) c_m is
the raw count; below it c_m(hw) is the continuation count N1+(•hw), the number of distinct
characters seen before hw. A context never seen (c_m(h•) = 0) hands all its mass to the level
below. Each discount lies in (0, k] for a count k, so every level leaves some mass for the one
below: every character of the vocab gets a non-zero probability and every distribution sums to 1.

Counting is vectorised with numpy. Each m-gram becomes one uint64 key, built by extending the key of
its first m−1 characters with the next character:

    exact   key = prefix · V + w              while V**m ≤ 2**64 (a base-V number, no collisions)
    hashed  key = mix(prefix · φ + w + 1)     beyond that (splitmix64's finaliser; with ~1e6 grams
                                              per level a collision has odds ~3e-8, negligible)

so all m-grams of a text are one array of keys; np.unique counts them and np.searchsorted looks them
up. The text before position 0 is unknown, so the first n−1 characters are predicted from the
shorter history they have: position t starts at level t+1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_MIN_DISCOUNT = 0.1
_PHI = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplying by it is a bijection on uint64
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _extend(prefix: np.ndarray, next_ids: np.ndarray, vocab_size: int, length: int) -> np.ndarray:
    """Keys of the grams ``prefix + next_id`` of ``length`` chars: base-V while it fits, else a
    hash."""
    if vocab_size**length <= 2**64:
        return prefix * np.uint64(vocab_size) + next_ids
    x = prefix * _PHI + next_ids + np.uint64(1)
    x ^= x >> np.uint64(30)
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    return x ^ (x >> np.uint64(31))


def _gram_keys(ids: np.ndarray, order: int, vocab_size: int) -> list[np.ndarray]:
    """``keys[m][..., t]`` identifies the m chars ending at t (defined for t ≥ m−1; 0 before)."""
    ids = ids.astype(np.uint64)  # (..., T)
    keys = [np.zeros_like(ids)]  # keys[0]: the empty string
    for m in range(1, order + 1):
        prefix = keys[m - 1][..., m - 2 : -1] if m > 1 else keys[0]  # the m−1 chars ending at t−1
        key = np.zeros_like(ids)
        key[..., m - 1 :] = _extend(prefix, ids[..., m - 1 :], vocab_size, m)
        keys.append(key)
    return keys


def _context_keys(keys: list[np.ndarray], m: int) -> np.ndarray:
    """Key of the m−1 chars before each position t (the context of the m-gram ending at t)."""
    if m == 1:
        return keys[0]
    context = np.zeros_like(keys[0])
    context[..., 1:] = keys[m - 1][..., :-1]
    return context


def _find(sorted_keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each query in ``sorted_keys`` and whether it is there at all."""
    if len(sorted_keys) == 0:
        return np.zeros(query.shape, np.intp), np.zeros(query.shape, bool)
    index = np.searchsorted(sorted_keys, query).clip(max=len(sorted_keys) - 1)
    return index, sorted_keys[index] == query


def _discounts(counts: np.ndarray) -> np.ndarray:
    """Chen & Goodman's discounts [0, D1, D2, D3+] for grams counted 0, 1, 2, 3+ times.

    With Y = n1 / (n1 + 2·n2), D_k = k − (k+1)·Y·n_{k+1} / n_k. When the counts are too few for
    that (some n_k is 0, or a D_k falls outside (0, k]), all three fall back to Ney's single
    estimate Y, clipped to [_MIN_DISCOUNT, 1].
    """
    n1, n2, n3, n4 = (int(np.sum(counts == k)) for k in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2) if n1 + n2 > 0 else _MIN_DISCOUNT
    if min(n1, n2, n3) > 0:
        d = np.array([1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3])
        if np.all((d > 0) & (d <= [1, 2, 3])):
            return np.concatenate([[0.0], d])
    return np.array([0.0] + [float(np.clip(y, _MIN_DISCOUNT, 1.0))] * 3)


@dataclass
class _Level:
    """The statistics of one gram length m: m-gram → count, (m−1)-char context → totals."""

    gram_keys: np.ndarray  # (G,) uint64, sorted
    gram_counts: np.ndarray  # (G,) raw counts at the top level, continuation counts below
    context_keys: np.ndarray  # (C,) uint64, sorted
    context_totals: np.ndarray  # (C,) c(h•): the sum of gram_counts over the context's grams
    context_backoff: np.ndarray  # (C,) Σ_w D(c(hw)): the mass the context hands down
    discounts: np.ndarray  # (4,) the discount for a gram counted 0, 1, 2, 3+ times


def _count_level(keys: list[np.ndarray], m: int, top: bool, discount: float | None) -> _Level:
    """Count the m-grams of a text (raw if ``top``, else continuation counts) and their contexts."""
    if top:
        gram_keys, first, counts = np.unique(
            keys[m][m - 1 :], return_index=True, return_counts=True
        )
        first += m - 1  # position where each gram first ends
    else:
        # N1+(•hw): distinct (m+1)-grams, each credited to the m-gram it ends with.
        _, ext_first = np.unique(keys[m + 1][m:], return_index=True)
        ext_first += m
        gram_keys, index, counts = np.unique(
            keys[m][ext_first], return_index=True, return_counts=True
        )
        first = ext_first[index]
    discounts = _discounts(counts) if discount is None else np.array([0.0] + [discount] * 3)
    context_keys, inverse = np.unique(_context_keys(keys, m)[first], return_inverse=True)
    return _Level(
        gram_keys=gram_keys,
        gram_counts=counts,
        context_keys=context_keys,
        context_totals=np.bincount(inverse, weights=counts, minlength=len(context_keys)),
        context_backoff=np.bincount(
            inverse, weights=discounts[np.minimum(counts, 3)], minlength=len(context_keys)
        ),
        discounts=discounts,
    )


class NGramModel:
    """Interpolated modified Kneser–Ney character n-gram model; order n uses n−1 chars of context.

    ``discount=None`` estimates (D1, D2, D3+) per gram length from the training counts; a number in
    (0, 1] is used as the one discount at every level (plain interpolated Kneser–Ney).
    """

    def __init__(self, order: int, vocab_size: int, discount: float | None = None):
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order}")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {vocab_size}")
        if discount is not None and not 0 < discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.order = order
        self.vocab_size = vocab_size
        self.discount = discount  # None: estimated per level
        self.levels: list[_Level] = []  # levels[m − 1] holds the m-gram statistics

    @property
    def discounts(self) -> list[tuple[float, float, float]]:
        """(D1, D2, D3+) used at each gram length 1..order."""
        return [tuple(level.discounts[1:].tolist()) for level in self.levels]

    def fit(self, ids: np.ndarray) -> NGramModel:
        """Count the n-grams of ``ids`` (a 1-D array of char ids); returns self."""
        ids = self._check_ids(ids)
        keys = _gram_keys(ids, self.order, self.vocab_size)
        self.levels = [
            _count_level(keys, m, top=m == self.order, discount=self.discount)
            for m in range(1, self.order + 1)
        ]
        return self

    def cross_entropy(self, ids: np.ndarray) -> float:
        """Mean nats per character over every character of ``ids``."""
        return float(-np.log(self._probs(self._check_ids(ids))).mean())

    def distribution(self, context: Iterable[int]) -> np.ndarray:
        """P(next char | context) over the whole vocab, shape (vocab_size,)."""
        context = self._check_ids(np.asarray(list(context), dtype=np.int64), allow_empty=True)
        context = context[max(0, len(context) - (self.order - 1)) :]  # only n−1 chars matter
        candidates = np.arange(self.vocab_size)[:, None]  # (V, 1)
        texts = np.hstack([np.broadcast_to(context, (self.vocab_size, len(context))), candidates])
        return self._probs(texts)[:, -1]  # (V,)

    def _probs(self, ids: np.ndarray) -> np.ndarray:
        """P(ids[..., t] | the chars before it), same shape as ``ids`` (..., T)."""
        if not self.levels:
            raise RuntimeError("NGramModel is not fitted; call fit(ids) first")
        keys = _gram_keys(ids, self.order, self.vocab_size)
        positions = np.arange(ids.shape[-1])  # (T,), broadcasts over leading axes
        probs = np.full(ids.shape, 1.0 / self.vocab_size)  # level 0: uniform
        for m, level in enumerate(self.levels, start=1):
            gram, gram_found = _find(level.gram_keys, keys[m])
            count = np.where(gram_found, level.gram_counts[gram], 0)
            context, context_found = _find(level.context_keys, _context_keys(keys, m))
            total = np.where(context_found, level.context_totals[context], 0.0)
            backoff = np.where(context_found, level.context_backoff[context], 0.0)
            # A position with fewer than m−1 chars before it, or an unseen context, keeps the
            # lower level's probability.
            seen = (positions >= m - 1) & (total > 0)
            discount = level.discounts[np.minimum(count, 3)]
            discounted = np.maximum(count - discount, 0) + backoff * probs
            probs = np.where(seen, discounted / np.where(seen, total, 1.0), probs)
        return probs

    def _check_ids(self, ids: np.ndarray, allow_empty: bool = False) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"ids must be a 1-D integer array, got {ids.dtype} of shape {ids.shape}"
            )
        if len(ids) == 0 and not allow_empty:
            raise ValueError("ids is empty")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"ids must lie in [0, {self.vocab_size}), got [{ids.min()}, {ids.max()}]"
            )
        return ids


def fit_best_order(
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    vocab_size: int,
    orders: Iterable[int] = range(1, 11),
) -> tuple[NGramModel, dict[int, float]]:
    """Fit each order on train, keep the one with the lowest val nats; return it and
    {order: nats}."""
    val_nats: dict[int, float] = {}
    best: NGramModel | None = None
    for order in orders:
        model = NGramModel(order, vocab_size).fit(train_ids)
        val_nats[order] = model.cross_entropy(val_ids)
        if best is None or val_nats[order] < val_nats[best.order]:
            best = model
    if best is None:
        raise ValueError("orders is empty")
    return best, val_nats
