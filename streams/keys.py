"""Stable integer codes for entity keys: the one vocabulary behind every piece of per-key state.

Per-key state (feature baselines, windows, incidents) lives in arrays indexed by a key's code; the code of a key
never changes while its state lives, and codes are dense (0, 1, 2, ... in order of first sight).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: the key a row with a missing key is kept under
NULL_KEY = "<null>"


def key_codes(keys: Any, vocab: pd.Index) -> tuple[np.ndarray, pd.Index]:
    """The code of each of ``keys`` in ``vocab``, and ``vocab`` grown by the keys it lacked (appended in order).

    Keys that are not strings are coded by their text; missing keys by :data:`NULL_KEY`. One hash lookup of the
    batch's distinct keys, not a Python loop over them.

    >>> codes, vocab = key_codes(np.array(["b", "a", "b"], dtype=object), pd.Index([], dtype=object))
    >>> codes.tolist(), list(vocab)
    ([0, 1, 0], ['b', 'a'])
    >>> key_codes(pd.Series(["a", None, "c"]), vocab)[0].tolist()
    [1, 2, 3]
    """
    row_codes, uniques = pd.factorize(keys, use_na_sentinel=False)
    uniques = np.asarray(uniques, dtype=object)
    if pd.api.types.infer_dtype(uniques, skipna=False) != "string":  # all-str keys, the usual case, as is
        missing = pd.isna(uniques)
        uniques = uniques.astype(str).astype(object)
        uniques[missing] = NULL_KEY
    # an object Index as the target: from a bare object array pandas infers a string dtype (5x slower)
    names = pd.Index(uniques, dtype=object)
    idx = vocab.get_indexer(names)
    if (idx < 0).any():
        # not Index.append: pandas 3 infers a string dtype there, and the lookups above get 5x slower
        vocab = pd.Index(np.concatenate([vocab.to_numpy(), pd.unique(uniques[idx < 0])]), dtype=object)
        idx = vocab.get_indexer(names)
    return idx.astype(np.int64)[row_codes], vocab
