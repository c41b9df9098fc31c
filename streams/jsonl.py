"""Fast vectorised encoding of DataFrames to JSON lines (one document per row)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd


def json_values(col: pd.Series) -> np.ndarray:
    """One column as an object array of JSON value texts (vectorised; NaN/NaT become null)."""
    if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(col):
        naive = col.dt.tz_convert("UTC").dt.tz_localize(None) if col.dt.tz is not None else col
        stamps = np.datetime_as_string(naive.to_numpy(dtype="datetime64[ms]"), unit="ms").astype(object)
        out = '"' + stamps + 'Z"'
        out[naive.isna().to_numpy()] = "null"
        return out
    if pd.api.types.is_bool_dtype(col):
        return np.where(col.to_numpy(dtype=bool), "true", "false").astype(object)
    if pd.api.types.is_integer_dtype(col):
        return np.array(list(map(str, col.tolist())), dtype=object)
    if pd.api.types.is_float_dtype(col):
        vals = col.to_numpy(dtype=np.float64)
        out = np.array(list(map(repr, vals.tolist())), dtype=object)
        out[~np.isfinite(vals)] = "null"
        return out
    # strings and anything else: json.dumps each distinct value once
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    texts = np.array([json.dumps(str(u)) for u in uniques] + ["null"], dtype=object)
    return texts[codes]


def to_json_lines(frame: pd.DataFrame) -> list[bytes]:
    """Serialise a frame to one compact JSON document per row (timestamps as ISO-8601 UTC with ms).

    Written by hand because pandas' ``to_json`` runs at ~80k rows/s on Arrow-backed strings; this is ~10x that.
    """
    if frame.empty:
        return []
    line: np.ndarray | None = None
    for i, name in enumerate(frame.columns):
        prefix = ("{" if i == 0 else ",") + json.dumps(str(name)) + ":"
        part = prefix + json_values(frame[name])
        line = part if line is None else line + part
    assert line is not None
    return [s.encode() for s in (line + "}").tolist()]
