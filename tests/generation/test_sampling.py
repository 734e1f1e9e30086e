import pytest
import torch

from charlm.data.vocab import CharVocab
from charlm.errors import CharlmError
from charlm.generation.sampling import SampleSettings, Stepper, generate, pick
from charlm.model import CharRNN, ModelConfig

VOCAB = CharVocab("abcdef\n ")


def model_for(cell):
    torch.manual_seed(0)
    return CharRNN(ModelConfig(len(VOCAB), cell, 8, 2, 4)).eval()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_sample_of_requested_length_and_prompt(cell):
    model = model_for(cell)
    texts = generate(model, VOCAB, "ab", 50, num_samples=3, seed=1)
    assert len(texts) == 3
    assert all(t.startswith("ab") and len(t) == 52 and set(t) <= set(VOCAB.chars) for t in texts)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_same_seed_same_text(cell):
    model = model_for(cell)
    a = generate(model, VOCAB, "a", 40, num_samples=2, seed=7)
    assert a == generate(model, VOCAB, "a", 40, num_samples=2, seed=7)
    assert a != generate(model, VOCAB, "a", 40, num_samples=2, seed=8)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_carried_steps_equal_full_recomputation(cell):
    model = model_for(cell)
    step = Stepper(model)
    ids = torch.tensor([[1, 4, 2, 0, 3]])
    full, _ = model(ids)
    logits, state = model(ids[:, :1])
    for t in range(1, ids.size(1)):
        logits, state = step(ids[:, t], state)
        assert torch.allclose(logits, full[:, t], atol=1e-5)


def test_greedy_and_temperature_zero_are_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [2.0, 0.0, 1.0]])
    assert pick(logits, SampleSettings(greedy=True), None).tolist() == [1, 0]
    assert pick(logits, SampleSettings(temperature=0), None).tolist() == [1, 0]
    assert pick(logits, SampleSettings(top_k=1),
                torch.Generator().manual_seed(0)).tolist() == [1, 0]


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    g = torch.Generator().manual_seed(0)
    picks = {pick(logits, SampleSettings(top_p=0.8), g).item() for _ in range(300)}
    assert picks == {0, 1}
    picks = {pick(logits, SampleSettings(top_p=0.5), g).item() for _ in range(100)}
    assert picks == {0}


@pytest.mark.parametrize("kwargs,message", [
    ({"temperature": -1}, "^temperature"), ({"top_p": 0.0}, "^top_p"),
    ({"top_p": 1.5}, "^top_p"), ({"top_k": 0}, "^top_k")])
def test_bad_settings(kwargs, message):
    with pytest.raises(CharlmError, match=message):
        SampleSettings(**kwargs)


def test_prompt_outside_vocab_and_bad_length():
    model = model_for("lstm")
    with pytest.raises(CharlmError, match="'z'"):
        generate(model, VOCAB, "az", 5)
    with pytest.raises(CharlmError, match="^length must be at least 0"):
        generate(model, VOCAB, "a", -1)
    assert generate(model, VOCAB, "ab", 0) == ["ab"]
