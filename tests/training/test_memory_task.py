"""Stateful truncated BPTT: the hidden state is carried from one training window to the next.

If ``training_step`` started every window from zeros, every loss threshold would still pass
(a window is long enough to learn from), so the carrying itself is checked here.
"""

import torch

from charlm.generation import metrics
from charlm.model import CharRNN, ModelConfig
from charlm.training.lightning_module import CharLM

V = 5
ALL, NONE = (0, 1), ()  # the rows of a 2-row batch that start from zero


def module(cell: str = "lstm") -> CharLM:
    torch.manual_seed(0)
    lm = CharLM(model=dict(vocab_size=V, cell=cell, hidden_size=6, embedding_dim=4),
                optim={}, vocab=list("abcde"))
    lm.logs_this_step = lambda: False  # no trainer to log to
    return lm


def test_training_step_carries_the_detached_state_across_windows(monkeypatch):
    lm = module()
    seen = []  # (state passed in, state returned) of each window
    loss_of = metrics.sequence_loss

    def spy(model, x, y, state):
        loss_sum, count, new = loss_of(model, x, y, state)
        seen.append((state, new))
        return loss_sum, count, new

    monkeypatch.setattr(metrics, "sequence_loss", spy)
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, V, (2, 4), generator=g) for _ in range(2))
    lm.training_step((x, y, ALL), 0)
    second = lm.training_step((x, y, NONE), 1)    # window 2 continues window 1
    lm.training_step((x, y, ALL), 2)              # a new epoch starts from zeros
    assert seen[0][0] is None and seen[2][0] is None
    for passed, returned in zip(seen[1][0], seen[0][1], strict=True):  # LSTM: (h, c)
        assert torch.equal(passed, returned) and passed.grad_fn is None  # carried, detached
        assert passed.abs().sum() > 0
    # the carried state matters: window 2 from zeros would score differently
    fresh, _, _ = loss_of(lm.model, x, y, None)
    assert not torch.isclose(second * y.numel(), fresh)


def test_carrying_the_state_equals_reading_the_windows_as_one_sequence():
    lm = module("gru")
    lm.eval()  # no dropout; the carried state is the only link between the windows
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(2))
    x, y = ids[:, :-1], ids[:, 1:]
    losses = [lm.training_step((x[:, :4], y[:, :4], ALL), 0),
              lm.training_step((x[:, 4:], y[:, 4:], NONE), 1)]
    whole, count, _ = metrics.sequence_loss(lm.model, x, y, None)
    torch.testing.assert_close(sum(losses) / 2, whole / count, rtol=0, atol=1e-6)


def test_a_training_step_restarts_only_the_rows_it_is_told_from_zero(monkeypatch):
    lm = module()
    given = []

    def loss(model, x, y, state):  # records the state each step starts from; carries ones
        given.append(state)
        return torch.tensor(1.0), 1, (torch.ones(1, 3, 6), torch.ones(1, 3, 6))

    monkeypatch.setattr(metrics, "sequence_loss", loss)
    x = torch.zeros(3, 2, dtype=torch.long)
    for step, restart in enumerate([(0, 1, 2), (1,), (), (0, 2)]):
        lm.training_step((x, x, restart), step)
    assert given[0] is None  # every row: nothing carried
    for h in given[1]:  # (h, c): row 1 from zero, rows 0 and 2 carried
        assert h[:, 1].eq(0).all() and h[:, [0, 2]].eq(1).all()
    assert all(t.eq(1).all() for t in given[2])
    for h in given[3]:
        assert h[:, [0, 2]].eq(0).all() and h[:, 1].eq(1).all()


def test_a_model_without_memory_cannot_reach_the_threshold_on_the_copy_task():
    # What the training tests' threshold rules out: the best a predictor from the last k
    # characters can do, measured on the corpus itself, for k up to 3.
    from conftest import conditional_entropy, memory_text
    text = memory_text()
    assert [round(conditional_entropy(text, k), 2) for k in (1, 2, 3)] == [1.69, 1.56, 1.21]
    assert len(set(text)) == 6 and text[:16] == "dda|dda\ncdd|cdd\n"  # fixed seed, fixed text


def test_sequence_loss_sums_only_scored_targets():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(V, "rnn", 4, 1, 3)).eval()
    x = torch.randint(0, V, (2, 6))
    y = x.roll(-1, 1)
    y[0, :2] = metrics.IGNORE
    loss_sum, count, _ = metrics.sequence_loss(model, x, y, None)
    logits, _ = model(x)
    keep = y != metrics.IGNORE
    expected = -torch.log_softmax(logits, -1)[keep].gather(1, y[keep][:, None]).sum()
    assert int(count) == 10
    torch.testing.assert_close(loss_sum, expected)
