import numpy as np

from charlm.data.vocab import CharVocab
from charlm.lab.textstats import TrainingText, loops

TRAIN = "the cat sat on the mat and the dog ran far away\n"


def index():
    vocab = CharVocab(TRAIN + "xyzq")
    return TrainingText(vocab.encode(TRAIN), vocab)


def test_copied_text_is_known_and_not_novel():
    s = index().stats(["the cat sat on the mat"])
    assert s["known_words"] == 1.0 and s["novelty_8"] == 0.0
    assert s["distinct_1"] == 5 / 6  # "the" twice


def test_new_text_is_novel():
    s = index().stats(["zyx qqq zzz xyz"])
    assert s["known_words"] == 0.0 and s["novelty_8"] == 1.0 and s["distinct_2"] == 1.0


def test_half_copied():
    s = index().stats(["the cat qqq"])
    assert np.isclose(s["known_words"], 2 / 3)
    assert 0.0 < s["novelty_8"] < 1.0


def test_a_loop_is_one_character_forty_times_in_a_row():
    assert loops(["a" + " " * 40 + "b", "x" * 39, "=" * 20 + "-" * 20]) == 1 / 3
    assert loops(["\n" * 40, "ab" * 40]) == 1 / 2  # a newline counts; a pair repeated does not
    assert loops([]) == 0.0


def test_samples_loops_against_the_training_texts_own():
    train = ("x = 1\n" + " " * 60 + "y\n") * 20  # a run of 40 in every window of 87 or more
    vocab = CharVocab(train + "2")
    text = TrainingText(vocab.encode(train), vocab)
    s = text.stats(["x = 1" + " " * 45, ("x y 2\n" * 9)[:50], "y = 1"])
    assert s["loops"] == 1 / 3
    assert s["loops_training"] == text.loops(50)  # windows as long as the longest sample
    assert 0.0 < text.loops(50) < text.loops(60) < 1.0
    assert text.loops(120) == 1.0 and text.loops(39) == 0.0  # too short for a run of 40
    assert index().stats(["the cat sat on the mat " * 3])["loops_training"] == 0.0
