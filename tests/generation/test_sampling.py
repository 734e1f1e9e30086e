import pytest
import torch

from charlm.data.vocab import CharVocab
from charlm.errors import CharlmError
from charlm.generation.sampling import (
    SampleSettings,
    Stepper,
    generate,
    generate_chars,
    pick,
    sample_generators,
    sample_seed,
)
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
    assert_steps_equal_recomputation(model_for(cell))


def assert_steps_equal_recomputation(model):
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


def test_the_defaults_are_one_sample_of_500_characters_from_no_prompt():
    model = model_for("gru")
    texts = generate(model, VOCAB, seed=3)
    assert len(texts) == 1 and len(texts[0]) == 500
    steps = list(generate_chars(model, VOCAB, seed=3))
    assert len(steps) == 500 and all(len(chars) == 1 for chars in steps)
    assert "".join(chars[0] for chars in steps) == texts[0]


def test_on_chars_gets_each_steps_characters_in_order():
    got = []
    texts = generate(model_for("lstm"), VOCAB, "ab", 30, num_samples=2, seed=1,
                     on_chars=got.append)
    assert len(got) == 30
    assert ["ab" + "".join(chars[i] for chars in got) for i in range(2)] == texts


def test_sample_seeds_follow_a_fixed_rule():
    # Recorded values: `charlm sample --seed` and the server's `seed` share this rule, so
    # changing it would change every seeded text a user has kept. Seeds outside 0..2**64 wrap.
    pairs = [(1, 0), (1, 1), (0, 5), (-1, 0), (2**70, 3), (1337, 2), (42, 0), (7, 1)]
    assert [sample_seed(seed, i) for seed, i in pairs] == [
        7434755675892716031, 77803131892610477, 2981407451974053429, 3367743993089404173,
        6582426945856704739, 539889246867958916, 2242280713608235703, 6635463128224577688]
    assert [g.initial_seed() for g in sample_generators(1, 2)] == [sample_seed(1, 0),
                                                                  sample_seed(1, 1)]


def test_unseeded_samples_draw_fresh_seeds_on_the_cpu_by_default():
    drawn = [sample_generators(None, 1)[0] for _ in range(32)]
    seeds = [g.initial_seed() for g in drawn]
    assert len(set(seeds)) == 32 and all(0 <= s < 2**63 for s in seeds)
    assert all(g.device.type == "cpu" for g in drawn + sample_generators(5, 2))


def test_a_model_on_another_device_draws_from_the_same_cpu_generators(monkeypatch):
    """A GPU model's samples draw the numbers a CPU model's do (the server's rule): shown on the
    meta device, which has no generator of its own and runs every op without data."""
    from charlm.generation import sampling
    seen = []
    real_pick = sampling.pick

    def spy(logits, settings, generators):
        seen.append(generators)
        return real_pick(logits, settings, generators)

    monkeypatch.setattr(sampling, "pick", spy)
    model = model_for("lstm").to("meta")
    steps = list(sampling.generate_ids(model, VOCAB, "a", 3, num_samples=2, seed=5))
    assert [(t.device.type, tuple(t.shape)) for t in steps] == [("meta", (2,))] * 3
    rows = seen[0]
    assert all(isinstance(r, sampling.RowDraws) and r.generator.device.type == "cpu"
               for r in rows)
    assert [r.generator.initial_seed() for r in rows] == [sample_seed(5, 0), sample_seed(5, 1)]


def test_a_cell_without_an_explicit_form_steps_through_its_own_module():
    from conftest import ReluRNN

    from charlm.model import register_cell

    register_cell("relu-rnn-stepping", ReluRNN)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(len(VOCAB), "relu-rnn-stepping", 8, 2, 4)).eval()
    assert Stepper(model).cell is None
    assert_steps_equal_recomputation(model)
    assert len(generate(model, VOCAB, "a", 20, seed=1)[0]) == 21


def test_priming_reads_the_prompt_or_else_a_newline_once_per_sample():
    from charlm.generation.sampling import prime
    vocab = CharVocab("\tab\nc")  # "\t" sorts first: the newline is not id 0
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(len(vocab), "lstm", 8, 1, 4)).eval()
    newline = vocab.index["\n"]
    assert newline != 0
    logits, _ = prime(model, vocab, [])
    expected, _ = model(torch.tensor([[newline]]))
    assert logits.shape == (1, len(vocab)) and torch.allclose(logits, expected[:, -1])
    logits, (h, c) = prime(model, vocab, [1, 2], num_samples=3)
    assert logits.shape == (3, len(vocab)) and h.shape == (1, 3, 8)


def test_the_first_step_from_no_state_equals_the_models_own_first_step():
    for cell in ("lstm", "gru", "rnn"):
        model = model_for(cell)
        ids = torch.tensor([3, 1])
        logits, _ = Stepper(model)(ids, None)
        expected, _ = model(ids[:, None])
        assert torch.allclose(logits, expected[:, 0], atol=1e-5), cell


def test_an_empty_prompt_without_a_newline_in_the_vocabulary_primes_with_the_first_character():
    from charlm.generation.sampling import prime
    vocab = CharVocab("abc")
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(len(vocab), "gru", 8, 1, 4)).eval()
    logits, _ = prime(model, vocab, [])
    assert torch.allclose(logits, model(torch.tensor([[0]]))[0][:, -1])


def test_one_generator_for_the_batch_or_one_per_row():
    logits = torch.randn(3, 8)
    s = SampleSettings(temperature=1.0)
    torch.manual_seed(0)
    a = pick(logits, s, torch.Generator().manual_seed(5))
    torch.manual_seed(1)  # the global generator is not the one drawn from
    assert torch.equal(a, pick(logits, s, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="^2 generators for 3 rows$"):
        pick(logits, s, [torch.Generator(), torch.Generator()])


def test_drawing_a_block_at_a_time_picks_what_one_draw_per_step_picks(float64):
    """``row_draws`` hands ``pick`` the numbers that a ``torch.rand`` per row and step would
    draw, across its block boundaries and whatever the default dtype, so texts do not change."""
    from charlm.generation.sampling import RowDraws, row_draws
    torch.set_default_dtype(torch.float64)  # restored by the fixture: blocks stay float32
    s = SampleSettings(temperature=0.9, top_k=6)
    one_by_one, blocks = sample_generators(3, 4), row_draws(sample_generators(3, 4))
    assert all(isinstance(b, RowDraws) for b in blocks)
    for step in range(3 * RowDraws.block + 5):
        logits = torch.randn(4, len(VOCAB))
        assert torch.equal(pick(logits, s, one_by_one), pick(logits, s, blocks)), step


def test_a_seeded_text_does_not_depend_on_the_default_dtype(float64):
    model = model_for("lstm").float()
    torch.set_default_dtype(torch.float32)
    expected = generate(model, VOCAB, "a", 40, num_samples=2, seed=4)
    expected_one = generate(model, VOCAB, "a", 40, seed=4)
    logits = torch.randn(3, len(VOCAB))
    one = pick(logits, SampleSettings(), torch.Generator().manual_seed(2))
    torch.set_default_dtype(torch.float64)  # restored by the fixture
    assert generate(model, VOCAB, "a", 40, num_samples=2, seed=4) == expected
    assert generate(model, VOCAB, "a", 40, seed=4) == expected_one
    assert torch.equal(pick(logits, SampleSettings(), torch.Generator().manual_seed(2)), one)


def test_a_temperature_just_above_zero_picks_the_top_character_without_overflow():
    logits = torch.tensor([[50.0, 49.0, -20.0], [-3.0, 80.0, 79.5]])
    s = SampleSettings(temperature=2e-38)  # above float32's tiny, so not the greedy shortcut
    for seed in range(5):
        assert pick(logits, s, torch.Generator().manual_seed(seed)).tolist() == [0, 1]


def test_top_p_equal_to_the_top_probability_keeps_only_the_top_character():
    logits = torch.tensor([[0.0, 0.0]])  # 0.5 and 0.5, exactly
    s = SampleSettings(top_p=0.5)  # the first character alone already covers top_p
    picks = {int(pick(logits, s, torch.Generator().manual_seed(i))[0]) for i in range(100)}
    assert len(picks) == 1
    assert SampleSettings(top_p=1.0).top_p == 1.0  # 1.0 is allowed: the nucleus is everything


@pytest.mark.parametrize("u, expected", [(0.0, 1), (1 - 2 ** -24, 2)])
def test_the_extreme_uniform_draws_pick_characters_that_can_be_drawn(monkeypatch, u, expected):
    # Character 0 is cut by top-k (probability 0) and character 3 too: the smallest draw picks
    # the first character that can be drawn, the largest the last, never one past the end.
    real = torch.rand

    def extreme(*args, **kwargs):
        return torch.full_like(real(*args, **kwargs), u)

    monkeypatch.setattr(torch, "rand", extreme)
    logits = torch.tensor([[-5.0, 1.0, 2.0, -4.0]])
    assert pick(logits, SampleSettings(top_k=2), torch.Generator()).tolist() == [expected]


def test_an_unknown_prompt_names_its_first_ten_characters():
    from charlm.generation.sampling import prompt_ids
    with pytest.raises(CharlmError) as e:
        prompt_ids(VOCAB, "xyzXYZ0123?")
    assert str(e.value) == ("the prompt has characters the model never saw: "
                            + ", ".join(repr(c) for c in sorted("xyzXYZ0123?")[:10]))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_on_the_cpu_a_fused_cell_steps_through_its_explicit_twin(cell):
    from charlm.generation.sampling import stepping_cell
    twin = stepping_cell(model_for(cell))
    assert twin is not None and twin.steps_by_weights
