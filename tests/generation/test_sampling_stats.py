"""Sampling draws from the distribution it claims: chi-square tests at a fixed seed, and the
direction in which temperature moves the entropy."""

import pytest
import torch

from charlm.data.vocab import CharVocab
from charlm.generation.sampling import SampleSettings, generate, pick
from charlm.model import CharRNN, ModelConfig

LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -0.5, -1.5]])  # V = 6
N = 20000
# chi-square critical values at p = 0.001 for 1..5 degrees of freedom: a fair sampler fails this
# one time in a thousand, and the seed is fixed, so the test is deterministic
CRITICAL = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}


def draws(logits, settings, seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    return pick(logits.expand(n, -1), settings, g)


def chi_square(picks, probs):
    """Pearson's statistic over the characters of non-zero probability, and its degrees of
    freedom."""
    counts = torch.bincount(picks, minlength=probs.numel()).double()
    keep = probs > 0
    assert counts[~keep].sum() == 0, "drew a character of probability zero"
    expected = probs[keep] * len(picks)
    return float(((counts[keep] - expected) ** 2 / expected).sum()), int(keep.sum()) - 1


def expected_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """softmax(logits / T), then keep the top k, then the smallest prefix reaching p; renormalised.
    Written from the definitions, independently of charlm.generation.sampling."""
    p = torch.softmax(logits[0].double() / temperature, -1)
    order = sorted(range(len(p)), key=lambda i: -p[i])
    keep = set(order[:top_k] if top_k else order)
    if top_p is not None:
        mass, nucleus = 0.0, set()
        for i in order:
            if i in keep:
                nucleus.add(i)
                mass += float(p[i]) / float(sum(p[j] for j in keep))
                if mass >= top_p:
                    break
        keep = nucleus
    q = torch.tensor([float(p[i]) if i in keep else 0.0 for i in range(len(p))],
                     dtype=torch.float64)
    return q / q.sum()


@pytest.mark.parametrize("settings", [
    SampleSettings(1.0), SampleSettings(0.5), SampleSettings(2.0), SampleSettings(1.0, top_k=3),
    SampleSettings(1.0, top_p=0.8), SampleSettings(0.7, top_k=4, top_p=0.9)],
    ids=lambda s: f"T{s.temperature}-k{s.top_k}-p{s.top_p}")
def test_sampled_frequencies_match_the_probabilities(settings):
    probs = expected_probs(LOGITS, settings.temperature, settings.top_k, settings.top_p)
    stat, df = chi_square(draws(LOGITS, settings), probs)
    assert stat < CRITICAL[df], (stat, df, probs)


def entropy_of(picks):
    p = torch.bincount(picks, minlength=LOGITS.size(1)).double() / len(picks)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def test_temperature_moves_the_entropy_the_right_way():
    measured = [entropy_of(draws(LOGITS, SampleSettings(t))) for t in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert measured == sorted(measured) and measured[0] < 0.5 < 1.6 < measured[-1]
    for t, h in zip((0.25, 0.5, 1.0, 2.0, 4.0), measured):
        p = torch.softmax(LOGITS[0].double() / t, -1)
        assert h == pytest.approx(float(-(p * p.log()).sum()), abs=0.02), t


def test_generate_draws_the_first_character_from_the_models_distribution():
    vocab = CharVocab("abcdef")
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(len(vocab), "gru", 8, 1, 4)).eval()
    with torch.no_grad():
        model.head.weight.mul_(4)  # a distribution far from uniform
        logits = model(torch.tensor([vocab.encode("cab").tolist()]))[0][:, -1]  # (1, V)
    settings = SampleSettings(0.8)
    texts = generate(model, vocab, "cab", 1, settings, num_samples=4000, seed=3)
    picks = torch.tensor([vocab.index[t[-1]] for t in texts])
    probs = expected_probs(logits, 0.8)
    stat, df = chi_square(picks, probs)
    assert stat < CRITICAL[df], (stat, probs)
    # and the second character from the distribution after the first: every sample continues
    # its own text (the state is carried per row)
    texts = generate(model, vocab, "cab", 2, settings, num_samples=3000, seed=4)
    common = [c for c in vocab.chars if sum(t[3] == c for t in texts) >= 400]
    assert common  # at least one first character with enough samples after it
    for first in common:
        rows = [t for t in texts if t[3] == first]
        with torch.no_grad():
            step = model(torch.tensor([vocab.encode("cab" + first).tolist()]))[0][:, -1]
        picks = torch.tensor([vocab.index[t[4]] for t in rows])
        stat, df = chi_square(picks, expected_probs(step, 0.8))
        assert stat < CRITICAL[df], (first, stat)


def test_a_seeded_sample_does_not_depend_on_its_neighbours():
    vocab = CharVocab("abcdef")
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(len(vocab), "lstm", 8, 1, 4)).eval()
    three = generate(model, vocab, "a", 30, num_samples=3, seed=9)
    five = generate(model, vocab, "a", 30, num_samples=5, seed=9)
    assert five[:3] == three and len(set(five)) == 5
    assert generate(model, vocab, "a", 30, num_samples=1, seed=9) == three[:1]
    assert len(three[0]) == 31
