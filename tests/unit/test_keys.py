"""Key codes: every form a key column arrives in gets the codes and vocabulary its plain strings get."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.keys import NULL_KEY, KeyCodeError, key_codes

EMPTY = pd.Index([], dtype=object)


def _forms(keys: list[str | None]) -> dict[str, object]:
    """The same keys as object array, pandas str, Categorical, arrow strings and arrow dictionaries."""
    obj = np.array(keys, dtype=object)
    arrow = pa.array(keys, type=pa.string())
    # two chunks, each with its own dictionary (as row groups of a Parquet file read with read_dictionary)
    half = len(keys) // 2
    chunked = pa.chunked_array([pa.array(keys[:half], type=pa.string()).dictionary_encode(),
                                pa.array(keys[half:], type=pa.string()).dictionary_encode()],
                               type=pa.dictionary(pa.int32(), pa.string()))
    return {
        "object": obj,
        "series": pd.Series(keys, dtype="str"),
        "categorical": pd.Categorical(keys),
        "categorical-series": pd.Series(keys, dtype="category"),
        "categorical-unused": pd.Categorical(keys, categories=sorted({k for k in keys if k} | {"zz-unused"})),
        "arrow": arrow,
        "arrow-chunked-dict": chunked,
        "arrow-dtype-dict": pd.Series(keys, dtype="str").astype(pd.ArrowDtype(pa.dictionary(pa.int32(), pa.string()))),
    }


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "dd", "é"])), min_size=2, max_size=60),
       known=st.lists(st.sampled_from(["b", "x", "é"]), unique=True))
def test_every_form_codes_like_the_strings(rows: list[str | None], known: list[str]) -> None:
    vocab = pd.Index(known, dtype=object)
    want_codes, want_vocab = key_codes(np.array(rows, dtype=object), vocab)
    assert list(want_vocab[: len(known)]) == known  # known keys keep their codes
    for name, keys in _forms(rows).items():
        codes, grown = key_codes(keys, vocab)
        np.testing.assert_array_equal(codes, want_codes, err_msg=name)
        assert list(grown) == list(want_vocab), name
        assert grown.dtype == object, name


def test_new_keys_join_in_order_of_first_sight_not_dictionary_order() -> None:
    codes, vocab = key_codes(pd.Categorical(["c", "a", "c", None, "b"]), pd.Index(["b"], dtype=object))
    assert list(vocab) == ["b", "c", "a", NULL_KEY]
    assert codes.tolist() == [1, 2, 1, 3, 0]


def test_unused_categories_do_not_enter_the_vocabulary() -> None:
    _, vocab = key_codes(pd.Categorical(["a"], categories=["a", "never"]), EMPTY)
    assert list(vocab) == ["a"]


def test_non_string_keys_are_coded_by_their_text_in_every_form() -> None:
    ints = [3, 1, 3]
    want, vocab = key_codes(np.array(ints), EMPTY)
    assert list(vocab) == ["3", "1"]
    for keys in (pd.Categorical(ints), pa.array(ints).dictionary_encode(), pa.array(ints)):
        codes, grown = key_codes(keys, EMPTY)
        assert codes.tolist() == want.tolist() and list(grown) == list(vocab)


def test_empty_batches() -> None:
    for keys in (np.array([], dtype=object), pd.Categorical([]), pa.chunked_array([], type=pa.string())):
        codes, vocab = key_codes(keys, pd.Index(["a"], dtype=object))
        assert codes.shape == (0,) and list(vocab) == ["a"]


def test_uncodable_keys_are_named() -> None:
    with pytest.raises(KeyCodeError, match="cannot be coded"):
        key_codes(np.array([{"a": 1}, {"b": 2}], dtype=object), EMPTY)
