"""Stable integer codes for entity keys: the one vocabulary behind every piece of per-key state.

Per-key state (feature baselines, windows, incidents) lives in arrays indexed by a key's code; the code of a key
never changes while its state lives, and codes are dense (0, 1, 2, ... in order of first sight).

Keys may come as any array of strings (NumPy, pandas, pyarrow), or already dictionary-encoded: a pandas
``Categorical`` or a pyarrow dictionary array (a Parquet column read with ``read_dictionary``). Those are
coded through their dictionary, so only the distinct keys are looked up, not every row's string (measured on
1M rows of 160 keys: 22 ms for strings, 2 ms for a categorical).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: the key a row with a missing key is kept under
NULL_KEY = "<null>"


class KeyCodeError(ValueError):
    """Keys of a type that cannot be coded (the message names the type)."""


def key_codes(keys: Any, vocab: pd.Index) -> tuple[np.ndarray, pd.Index]:
    """The code of each of ``keys`` in ``vocab``, and ``vocab`` grown by the keys it lacked (appended in order).

    Keys that are not strings are coded by their text; missing keys by :data:`NULL_KEY`. One hash lookup of the
    batch's distinct keys, not a Python loop over them; a dictionary-encoded column (pandas ``Categorical``,
    pyarrow ``DictionaryArray``) is coded through its dictionary, with the same codes as its strings would get.

    >>> codes, vocab = key_codes(np.array(["b", "a", "b"], dtype=object), pd.Index([], dtype=object))
    >>> codes.tolist(), list(vocab)
    ([0, 1, 0], ['b', 'a'])
    >>> codes, vocab = key_codes(pd.Series(["a", None, "c"]), vocab)
    >>> codes.tolist(), list(vocab)
    ([1, 2, 3], ['b', 'a', '<null>', 'c'])
    >>> key_codes(pd.Categorical(["d", "c", "b"]), vocab)[0].tolist()
    [4, 3, 0]
    """
    if isinstance(keys, pd.Series | pd.Index):
        dtype = keys.dtype
        if isinstance(dtype, pd.ArrowDtype) and pa.types.is_dictionary(dtype.pyarrow_dtype):
            keys = pa.array(keys)
        elif isinstance(dtype, pd.CategoricalDtype):
            keys = keys.array
    if isinstance(keys, pa.ChunkedArray | pa.Array):
        return _arrow_codes(keys, vocab)
    if isinstance(keys, pd.Categorical):
        return _dictionary_codes(np.asarray(keys.codes), np.asarray(keys.categories, dtype=object), vocab)
    try:
        row_codes, uniques = pd.factorize(keys, use_na_sentinel=False)
    except TypeError as err:
        msg = f"key_codes: keys of type {type(keys).__name__} cannot be coded ({err})"
        raise KeyCodeError(msg) from None
    return _dictionary_codes(row_codes, np.asarray(uniques, dtype=object), vocab, first_sight=True)


def _arrow_codes(keys: pa.ChunkedArray | pa.Array, vocab: pd.Index) -> tuple[np.ndarray, pd.Index]:
    """:func:`key_codes` of a pyarrow array, chunk by chunk (each chunk of a dictionary column has its own)."""
    chunks = keys.chunks if isinstance(keys, pa.ChunkedArray) else [keys]
    parts = []
    for chunk in chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = pc.dictionary_encode(chunk)
        indices = pc.fill_null(chunk.indices, -1).to_numpy(zero_copy_only=False)
        dictionary = chunk.dictionary.to_numpy(zero_copy_only=False).astype(object)
        codes, vocab = _dictionary_codes(indices, dictionary, vocab)
        parts.append(codes)
    codes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return codes, vocab


def _dictionary_codes(row_codes: np.ndarray, uniques: np.ndarray, vocab: pd.Index,
                      first_sight: bool = False) -> tuple[np.ndarray, pd.Index]:
    """Codes of rows given as ``uniques[row_codes]`` (-1: a missing key); ``first_sight``: the uniques are in
    the order the rows first use them, and every one is used (as from ``factorize``)."""
    if pd.api.types.infer_dtype(uniques, skipna=False) != "string":  # all-str keys, the usual case, as is
        missing = pd.isna(uniques)
        uniques = uniques.astype(str).astype(object)
        uniques[missing] = NULL_KEY
    if not first_sight and len(row_codes) and row_codes.min() < 0:
        row_codes = np.where(row_codes < 0, len(uniques), row_codes)
        uniques = np.append(uniques, np.array([NULL_KEY], dtype=object))
    # an object Index as the target: from a bare object array pandas infers a string dtype (5x slower)
    names = pd.Index(uniques, dtype=object)
    idx = vocab.get_indexer(names)
    if (idx < 0).any():
        # new keys join in the order of their first row; a dictionary may also hold keys no row uses
        order = np.arange(len(uniques)) if first_sight else pd.unique(row_codes)
        new = uniques[order[idx[order] < 0]]
        # not Index.append: pandas 3 infers a string dtype there, and the lookups above get 5x slower
        vocab = pd.Index(np.concatenate([vocab.to_numpy(), pd.unique(new)]), dtype=object)
        idx = vocab.get_indexer(names)
    return idx.astype(np.int64)[row_codes], vocab
