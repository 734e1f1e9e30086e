import numpy as np

from charlm.data.vocab import CharVocab
from charlm.lab.textstats import TrainingText

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
