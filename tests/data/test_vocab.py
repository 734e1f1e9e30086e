import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charlm.data.vocab import CharVocab, id_dtype

unicode_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1)


@given(unicode_text)
@settings(max_examples=200, deadline=None)
def test_round_trip_arbitrary_unicode(text):
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    assert len(ids) == len(text)
    assert ids.max() < len(vocab)


def test_sorted_deterministic_and_plain_data():
    v = CharVocab.from_text("bca\nb")
    assert v.chars == ["\n", "a", "b", "c"]
    assert CharVocab.from_dict(v.to_dict()) == v


def test_unknown_character_is_named():
    v = CharVocab.from_text("abc")
    with pytest.raises(ValueError, match="'z'"):
        v.encode("abz")
    assert v.unknown_chars("xaxy") == ["x", "y"]


@pytest.mark.parametrize("size,dtype", [(65, np.uint8), (256, np.uint8), (257, np.uint16),
                                        (70000, np.int32)])
def test_smallest_dtype(size, dtype):
    assert id_dtype(size) == dtype


def test_cjk_vocabulary_beyond_one_byte():
    text = "".join(chr(0x4E00 + i) for i in range(3000)) + "\n"
    v = CharVocab.from_text(text)
    ids = v.encode(text)
    assert ids.dtype == np.uint16 and v.decode(ids) == text
