"""Tests for the Kneser–Ney character n-gram baseline (charlm.lab.ngram)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from charlm.lab.ngram import NGramModel, fit_best_order

# A first-order Markov chain over 4 symbols; its entropy rate is what an order-2 model should reach.
TRANSITIONS = np.array(
    [
        [0.70, 0.10, 0.10, 0.10],
        [0.05, 0.05, 0.80, 0.10],
        [0.30, 0.30, 0.20, 0.20],
        [0.50, 0.00, 0.25, 0.25],
    ]
)


def markov_chain(n: int, seed: int) -> np.ndarray:
    """n steps of the TRANSITIONS chain."""
    rng = np.random.default_rng(seed)
    cumulative = TRANSITIONS.cumsum(axis=1)
    uniform = rng.random(n)
    ids = np.empty(n, dtype=np.int64)
    state = 0
    for t in range(n):
        state = min(int(np.searchsorted(cumulative[state], uniform[t], side="right")), 3)
        ids[t] = state
    return ids


def markov_entropy_rate() -> float:
    """Σ_i π_i H(row i), with π the stationary distribution, in nats."""
    eigenvalues, eigenvectors = np.linalg.eig(TRANSITIONS.T)
    stationary = np.real(eigenvectors[:, np.argmin(np.abs(eigenvalues - 1))])
    stationary /= stationary.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        row_entropy = -np.nansum(TRANSITIONS * np.log(TRANSITIONS), axis=1)
    return float(stationary @ row_entropy)


def kneser_ney_reference(
    train: list[int],
    order: int,
    vocab_size: int,
    discounts: list[tuple[float, float, float]],
    history: list[int],
    next_id: int,
) -> float:
    """Interpolated Kneser–Ney written straight from the formula with dicts (slow, obvious)."""

    def gram_counts(m: int) -> Counter:
        return Counter(tuple(train[i - m + 1 : i + 1]) for i in range(m - 1, len(train)))

    # Raw counts at the top level; below it, how many distinct chars precede each gram.
    counts = {m: Counter(g[1:] for g in gram_counts(m + 1)) for m in range(1, order)}
    counts[order] = gram_counts(order)
    history = list(history)[max(0, len(history) - (order - 1)) :]
    prob = 1.0 / vocab_size
    for m in range(1, len(history) + 2):
        context = tuple(history[len(history) - (m - 1) :])
        following = {g[-1]: n for g, n in counts[m].items() if g[:-1] == context}
        total = sum(following.values())
        if total == 0:
            continue  # unseen context: the lower level stands
        discount = {n: discounts[m - 1][min(n, 3) - 1] for n in following.values()}
        n = following.get(next_id, 0)
        backoff = sum(discount[k] for k in following.values())
        prob = (max(n - discount.get(n, 0.0), 0.0) + backoff * prob) / total
    return prob


@pytest.fixture(scope="module")
def chain() -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) samples of the Markov chain."""
    return markov_chain(200_000, seed=0), markov_chain(50_000, seed=1)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_distribution_sums_to_one_and_is_never_zero(order: int) -> None:
    vocab_size = 6  # id 5 never occurs in training: it must still get some mass
    train = markov_chain(3_000, seed=2)
    model = NGramModel(order, vocab_size).fit(train)
    contexts = [
        [],
        list(train[100:104]),  # seen
        [5, 5, 5, 5],  # never seen
        [0, 1, 5],  # seen start, unseen end
        list(train[:20]),  # longer than the model uses
    ]
    for context in contexts:
        probs = model.distribution(context)
        assert probs.shape == (vocab_size,)
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(probs > 0)


@pytest.mark.parametrize(
    "order, vocab_size, discount",
    [
        (3, 5, None),
        (4, 5, None),
        (4, 5, 0.5),  # plain Kneser–Ney
        (5, 70_000, None),  # 70_000**4 > 2**64: the 4- and 5-gram keys are hashed
    ],
)
def test_matches_the_formula_written_with_dicts(
    order: int, vocab_size: int, discount: float | None
) -> None:
    rng = np.random.default_rng(3)
    train = rng.choice(4, size=400, p=[0.4, 0.3, 0.2, 0.1])
    model = NGramModel(order, vocab_size, discount).fit(train)
    if discount is not None:
        assert model.discounts == [(discount,) * 3] * order
    for history in ([], [0], [3, 3], list(train[50:56]), [1, 0, 2, 3], [4, 0, 1]):
        probs = model.distribution(history)
        for next_id in range(5):
            expected = kneser_ney_reference(
                list(train), order, vocab_size, model.discounts, history, next_id
            )
            assert probs[next_id] == pytest.approx(expected, rel=1e-10)


def test_cross_entropy_scores_every_char_from_the_history_it_has() -> None:
    train = markov_chain(2_000, seed=4)
    model = NGramModel(4, 4).fit(train)
    text = np.array([2, 0, 0, 1, 3, 2, 2, 0])
    nats = [-np.log(model.distribution(text[:t])[text[t]]) for t in range(len(text))]
    assert model.cross_entropy(text) == pytest.approx(np.mean(nats), rel=1e-12)


def test_unigram_reaches_the_entropy_of_iid_text() -> None:
    probs = np.array([0.5, 0.25, 0.15, 0.1])
    rng = np.random.default_rng(5)
    train, held_out = rng.choice(4, size=200_000, p=probs), rng.choice(4, size=200_000, p=probs)
    entropy = -(probs * np.log(probs)).sum()
    model = NGramModel(1, 4).fit(train)
    assert model.cross_entropy(held_out) == pytest.approx(entropy, abs=0.01)


@pytest.mark.parametrize("order", [2, 3, 6])
def test_periodic_text_is_nearly_certain(order: int) -> None:
    text = np.tile([0, 1, 2], 10_000)
    model = NGramModel(order, 4).fit(text)
    assert model.cross_entropy(text[:3_000]) < 0.01


def test_order_2_reaches_the_entropy_rate_of_a_markov_chain(chain) -> None:
    train, held_out = chain
    model = NGramModel(2, 4).fit(train)
    assert model.cross_entropy(held_out) == pytest.approx(markov_entropy_rate(), abs=0.02)


def test_fit_best_order_picks_a_small_order_for_a_markov_chain(chain) -> None:
    train, held_out = chain
    best, val_nats = fit_best_order(train, held_out, 4, orders=range(1, 7))
    assert set(val_nats) == set(range(1, 7))
    assert best.order in (2, 3)
    assert val_nats[best.order] == min(val_nats.values())
    assert val_nats[1] - val_nats[2] > 0.1  # the chain's memory is worth a lot


def test_fit_best_order_picks_a_high_order_for_repetitive_text() -> None:
    # A random 60-char phrase over 4 symbols, repeated: its short contexts are ambiguous, so
    # predicting it needs a long history.
    phrase = np.random.default_rng(6).integers(0, 4, size=60)
    best, val_nats = fit_best_order(np.tile(phrase, 200), np.tile(phrase, 20), 4)
    assert best.order >= 6
    assert val_nats[best.order] < 0.05 < val_nats[3]


def test_rejects_bad_ids_and_unfitted_use() -> None:
    model = NGramModel(3, 4)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.cross_entropy(np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        model.fit(np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="1-D integer"):
        model.fit(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="order"):
        NGramModel(0, 4)
    with pytest.raises(ValueError, match="discount"):
        NGramModel(2, 4, discount=1.5)


def test_order_7_on_tiny_shakespeare_is_a_strong_baseline(shakespeare: Path) -> None:
    text = shakespeare.read_text()
    vocab = sorted(set(text))
    index = {char: i for i, char in enumerate(vocab)}
    ids = np.array([index[char] for char in text], dtype=np.int64)
    split = int(0.9 * len(ids))
    model = NGramModel(7, len(vocab)).fit(ids[:split])
    # ~1.52 nats/char, well below the unigram's ~3.35.
    assert 1.45 < model.cross_entropy(ids[split:]) < 1.65
