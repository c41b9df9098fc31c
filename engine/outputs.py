"""Turns a scored batch into what leaves the engine: lake rows and scores / alerts / stats records.

The ``scores`` topic carries one of two formats (docs/architecture.md), and :func:`decode_scores` reads both:

- JSON (the default): one compact document per event, :func:`score_records`;
- Arrow: one record per batch holding an Arrow IPC stream of :data:`SCORES_SCHEMA`, :func:`encode_scores_arrow`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeGuard

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from streams.jsonl import to_json_lines

#: lake column names for the Kafka coordinates of each event
KAFKA_COLUMNS = {"_partition": "kafka_partition", "_offset": "kafka_offset", "_kafka_ts": "kafka_timestamp_ms"}
SCORE_BINS = np.linspace(0.0, 1.0, 41)

#: the fields of a ``scores`` record, in order, with their types in the Arrow format
SCORES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("score", pa.float64()),
        ("threshold", pa.float64()),
        ("is_anomaly", pa.bool_()),
        ("model_version", pa.string()),
        ("partition", pa.int64()),
        ("offset", pa.int64()),
    ]
)
#: an Arrow IPC stream starts with this continuation marker; a JSON record never does (0xFF is not UTF-8)
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"

# repr() writes a float in fixed notation in this range; Arrow writes the same shortest digits there, except
# that it drops the ".0" of whole numbers and switches to exponents earlier (above ~1e10), so only those rows
# need repr()
_FIXED_LOW, _FIXED_HIGH = 1e-4, 1e16
# np.datetime_as_string and Arrow's cast agree on these years (checked in tests/unit/test_outputs.py)
_MS_MIN, _MS_MAX = -62_135_596_800_000, 253_402_300_799_999  # 0001-01-01 .. 9999-12-31T23:59:59.999


class ScoresFormatError(ValueError):
    """A ``scores`` record or frame that does not have the scores fields."""


@dataclass(frozen=True)
class Scored:
    """One micro-batch after scoring: the lake frame plus what the topics need."""

    frame: pd.DataFrame  # input fields, score columns, kafka_* columns
    keys: list[bytes | None]
    explanations: list[str | None]


def lake_frame(decoded: pd.DataFrame, fields: list[str], score, threshold, is_anomaly, version: str) -> pd.DataFrame:
    """Input fields + score, threshold, is_anomaly, model_version + the event's Kafka coordinates."""
    out = decoded[fields].copy()
    out["score"] = np.asarray(score, dtype=np.float64)
    out["threshold"] = np.asarray(threshold, dtype=np.float64)
    out["is_anomaly"] = np.asarray(is_anomaly, dtype=bool)
    out["model_version"] = version
    for src, dst in KAFKA_COLUMNS.items():
        out[dst] = decoded[src].to_numpy()
    return out.reset_index(drop=True)


def _score_columns(scored: Scored, key_field: str | None, time_field: str,
                   values: tuple[str, ...] = ()) -> dict[str, pd.Series]:
    f = scored.frame
    cols = {
        "key": f[key_field].astype("string") if key_field else pd.Series([None] * len(f), dtype="string"),
        "event_time": f[time_field],
        "score": f["score"],
        "threshold": f["threshold"],
        "is_anomaly": f["is_anomaly"],
        "model_version": f["model_version"],
        "partition": f["kafka_partition"].astype(np.int64),
        "offset": f["kafka_offset"].astype(np.int64),
    }
    # the numeric inputs ride along so a viewer can plot a key's readings without reading the lake
    for name in values:
        if name not in cols:
            cols[name] = pd.to_numeric(f[name], errors="coerce").astype(np.float64)
    return cols


def scores_frame(scored: Scored, key_field: str | None, time_field: str, values: tuple[str, ...] = ()) -> pd.DataFrame:
    """The :data:`SCORES_SCHEMA` columns of a scored batch, one row per event, then the ``values`` fields."""
    return pd.DataFrame(_score_columns(scored, key_field, time_field, values))


def score_records(scored: Scored, key_field: str | None, time_field: str, values: tuple[str, ...] = ()) -> list[bytes]:
    """The ``scores`` topic records in JSON, one per event (see docs/architecture.md).

    Byte for byte what ``streams.jsonl.to_json_lines`` writes for :func:`scores_frame`, built with Arrow
    kernels instead of numpy object arrays: ~4x the rows/s on 20k-row batches (measured in the tests' module
    docstring). Floats are written as ``repr`` writes them; NaN and infinities as ``null``.
    """
    return _json_lines(_score_columns(scored, key_field, time_field, values))


# -- JSON lines with Arrow kernels ------------------------------------------------------------------------
#: one input of the join: a literal, or an Arrow string array with one text per row
_Piece: TypeAlias = Any


def _json_floats(vals: np.ndarray) -> list[_Piece]:
    if _constant(vals):  # NaN is never equal to itself, so it takes the general path
        return [repr(float(vals[0])) if np.isfinite(vals[0]) else "null"]
    text = pc.cast(pa.array(vals), pa.string())
    mag = np.abs(vals)
    plain = (mag >= _FIXED_LOW) & (mag < _FIXED_HIGH) & (vals != np.trunc(vals))
    plain &= ~pc.match_substring(text, "e").to_numpy(zero_copy_only=False)
    other = ~plain  # NaN and infinities are never plain
    if other.any():
        # unique by bit pattern (thresholds and whole numbers repeat), so that -0.0 and 0.0 stay apart
        bits, inverse = np.unique(vals[other].view(np.int64), return_inverse=True)
        texts = np.array([repr(v) if np.isfinite(v) else "null" for v in bits.view(np.float64).tolist()],
                         dtype=object)
        text = pc.replace_with_mask(text, pa.array(other), pa.array(texts[inverse.ravel()], pa.string()))
    return [text]


def _json_times(col: pd.Series) -> list[_Piece]:
    naive = col.dt.tz_convert("UTC").dt.tz_localize(None) if col.dt.tz is not None else col
    stamps = naive.to_numpy(dtype="datetime64[ms]")
    missing = np.isnat(stamps)
    ms = stamps.view(np.int64)
    valid = ms[~missing]
    if len(valid) and (valid.min() < _MS_MIN or valid.max() > _MS_MAX):
        out = '"' + np.datetime_as_string(stamps, unit="ms").astype(object) + 'Z"'
        out[missing] = "null"
        return [pa.array(out, pa.string())]
    if missing.any():
        text = pc.replace_substring(pc.cast(pa.array(stamps, from_pandas=True), pa.string()), " ", "T",
                                    max_replacements=1)
        return [pc.binary_join_element_wise('"', text, 'Z"', "").fill_null("null")]
    # a batch spans few distinct seconds: format each once, and the milliseconds from a table of 1,000
    # (a third of the time of formatting every stamp)
    seconds = ms // 1000
    codes, uniques = pd.factorize(seconds)
    whole = pc.cast(pa.array(np.asarray(uniques).astype("datetime64[s]")), pa.string())
    whole = pc.replace_substring(whole, " ", "T", max_replacements=1)
    return ['"', whole.take(pa.array(codes)), _MILLIS.take(pa.array(ms - seconds * 1000))]


_MILLIS = pa.array([f'.{i:03d}Z"' for i in range(1000)], pa.string())


def _json_texts(col: pd.Series) -> list[_Piece]:
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    if len(uniques) == 1 and codes[0] == 0 and (codes == 0).all():
        return [json.dumps(str(uniques[0]))]
    texts = pa.array([json.dumps(str(u)) for u in uniques] + ["null"], pa.string())
    return [texts.take(pa.array(np.where(codes < 0, len(uniques), codes)))]


def _constant(vals: np.ndarray) -> bool:
    return bool((vals == vals[0]).all())


def _json_column(col: pd.Series) -> list[_Piece]:
    """One column as JSON value texts, the same branches as ``streams.jsonl`` takes.

    A column with one value (threshold, model version, often partition) comes back as a literal, which
    the join kernel then copies like the field names: each array input costs it ~0.25 ms per 20k rows.
    """
    if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(col):
        return _json_times(col)
    if pd.api.types.is_bool_dtype(col):
        flags = col.to_numpy(dtype=bool)
        if _constant(flags):
            return ["true" if flags[0] else "false"]
        return [pc.if_else(pa.array(flags), "true", "false")]
    if pd.api.types.is_integer_dtype(col):
        ints = col.to_numpy(dtype=np.int64)
        return [str(int(ints[0]))] if _constant(ints) else [pc.cast(pa.array(ints), pa.string())]
    if pd.api.types.is_float_dtype(col):
        return _json_floats(col.to_numpy(dtype=np.float64))
    return _json_texts(col)


def _json_lines(columns: Mapping[str, pd.Series]) -> list[bytes]:
    n = len(next(iter(columns.values()), ()))
    if n == 0:
        return []
    pieces: list[_Piece] = []
    for i, (name, col) in enumerate(columns.items()):
        pieces.append(("{" if i == 0 else ",") + json.dumps(str(name)) + ":")
        pieces.extend(_json_column(col))
    pieces.append("}")
    merged: list[_Piece] = []  # adjacent literals as one scalar: fewer inputs to the join kernel
    for p in pieces:
        last = merged[-1] if merged else None
        if isinstance(p, str) and isinstance(last, str):
            merged[-1] = last + p
        else:
            merged.append(p)
    if not any(isinstance(p, pa.Array) for p in merged):  # only possible without columns
        return []
    line = pc.binary_join_element_wise(*merged, "")
    return line.cast(pa.binary()).to_pylist()  # ~0.5 ms per 20k rows: not worth slicing the buffer by hand


# -- the Arrow format ----------------------------------------------------------------------------------------
def _arrow_column(frame: pd.DataFrame, field: pa.Field) -> pa.Array:
    col = frame[field.name]
    try:
        if pa.types.is_timestamp(field.type):
            if not (isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(col)):
                msg = f"encode_scores_arrow: column 'event_time' has dtype {col.dtype}, not a timestamp"
                raise ScoresFormatError(msg)
            naive = col.dt.tz_convert("UTC").dt.tz_localize(None) if col.dt.tz is not None else col
            # the same truncation to ms as the JSON format
            return pa.array(naive.to_numpy(dtype="datetime64[ms]"), from_pandas=True).cast(field.type)
        if pa.types.is_string(field.type):
            return pa.array(col.astype("string"), from_pandas=True).cast(field.type)
        return pa.array(col.to_numpy(dtype=field.type.to_pandas_dtype()))
    except (pa.ArrowException, ValueError, TypeError) as exc:
        if isinstance(exc, ScoresFormatError):
            raise
        msg = f"encode_scores_arrow: column {field.name!r} (dtype {col.dtype}) is not {field.type}: {exc}"
        raise ScoresFormatError(msg) from exc


def encode_scores_arrow(frame: pd.DataFrame, *, compression: str | None = "zstd") -> bytes:
    """One ``scores`` record for a whole batch: an Arrow IPC stream of the :data:`SCORES_SCHEMA` columns.

    ``frame`` is :func:`scores_frame`'s; its numeric columns beyond the schema (the ``values``) travel as
    float64, other columns are ignored. ``compression`` is the IPC body codec
    (``"zstd"``, ``"lz4"`` or None). A 20k-row batch is ~0.3 MB with zstd (as JSON records: ~3.7 MB), so a
    producer writing much larger batches needs a ``message.max.bytes`` above Kafka's 1 MB default.

    >>> frame = pd.DataFrame({"key": ["k"], "event_time": pd.to_datetime(["2027-01-15T08:00:00Z"]),
    ...     "score": [0.7], "threshold": [0.6], "is_anomaly": [True], "model_version": ["v1"],
    ...     "partition": [0], "offset": [5]})
    >>> decode_scores(encode_scores_arrow(frame))[["key", "score", "is_anomaly", "offset"]].to_dict("records")
    [{'key': 'k', 'score': 0.7, 'is_anomaly': True, 'offset': 5}]
    """
    missing = [name for name in SCORES_SCHEMA.names if name not in frame.columns]
    if missing:
        msg = f"encode_scores_arrow: the frame lacks the scores columns {missing}"
        raise ScoresFormatError(msg)
    schema = _with_values(SCORES_SCHEMA, [c for c in frame.columns if c not in SCORES_SCHEMA.names
                                          and pd.api.types.is_numeric_dtype(frame[c])
                                          and not pd.api.types.is_bool_dtype(frame[c])])
    table = pa.Table.from_arrays([_arrow_column(frame, f) for f in schema], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _with_values(schema: pa.Schema, values: list[str]) -> pa.Schema:
    """``schema`` followed by one float64 field per value column."""
    return pa.schema([*schema, *(pa.field(name, pa.float64()) for name in values)])


def is_arrow_scores(value: object) -> TypeGuard[bytes | bytearray]:
    """Whether a ``scores`` record value is in the Arrow format (sniffs the IPC continuation marker)."""
    return isinstance(value, bytes | bytearray) and value[:4] == ARROW_STREAM_MAGIC


def decode_scores(value: bytes | bytearray) -> pd.DataFrame:
    """A ``scores`` record in either format as a frame with the :data:`SCORES_SCHEMA` columns, then its values.

    A JSON record is one row; missing fields are null. Numeric fields beyond the schema (the input values the
    engine adds) come after it as float64 columns. Raises :class:`ScoresFormatError` for anything else.

    >>> decode_scores(b'{"key": "k", "event_time": "2027-01-15T08:00:00.000Z", "score": 0.7}').loc[0, "event_time"]
    Timestamp('2027-01-15 08:00:00+0000', tz='UTC')
    """
    if is_arrow_scores(value):
        try:
            table = pa.ipc.open_stream(pa.py_buffer(value)).read_all()
        except pa.ArrowException as exc:
            msg = f"decode_scores: an Arrow scores record of {len(value)} bytes that does not read: {exc}"
            raise ScoresFormatError(msg) from exc
        missing = [name for name in SCORES_SCHEMA.names if name not in table.schema.names]
        if missing:
            msg = f"decode_scores: the Arrow scores record lacks the columns {missing}"
            raise ScoresFormatError(msg)
        extra = [f.name for f in table.schema if f.name not in SCORES_SCHEMA.names and pa.types.is_floating(f.type)]
        table = table.select(SCORES_SCHEMA.names + extra)
    else:
        try:
            rec = json.loads(value)
        except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            msg = f"decode_scores: a scores record that is neither Arrow nor JSON: {bytes(value[:40])!r}"
            raise ScoresFormatError(msg) from exc
        if not isinstance(rec, dict):
            msg = f"decode_scores: a JSON scores record must be an object, got {type(rec).__name__}"
            raise ScoresFormatError(msg)
        row = {name: [rec.get(name)] for name in SCORES_SCHEMA.names}
        types = {f.name: pa.string() if f.name == "event_time" else f.type for f in SCORES_SCHEMA}
        try:
            arrays = [pa.array(row[name], types[name]) for name in SCORES_SCHEMA.names]
            arrays[1] = arrays[1].cast(SCORES_SCHEMA.field("event_time").type)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            msg = f"decode_scores: a JSON scores record with a field of the wrong type: {exc}"
            raise ScoresFormatError(msg) from exc
        extra = [k for k, v in rec.items() if k not in types and isinstance(v, int | float) and not isinstance(v, bool)]
        arrays += [pa.array([float(rec[k])], pa.float64()) for k in extra]
        table = pa.Table.from_arrays(arrays, schema=_with_values(SCORES_SCHEMA, extra))
    try:
        table = table.cast(_with_values(SCORES_SCHEMA, table.schema.names[len(SCORES_SCHEMA):]))
    except (pa.ArrowException, ValueError) as exc:
        msg = f"decode_scores: the Arrow scores record has {table.schema}, not the scores types: {exc}"
        raise ScoresFormatError(msg) from exc
    return table.to_pandas()


def alert_records(scored: Scored) -> tuple[list[bytes], list[bytes | None]]:
    """The ``alerts`` topic records: flagged events with all their fields and an explanation."""
    idx = np.flatnonzero(scored.frame["is_anomaly"].to_numpy())
    if len(idx) == 0:
        return [], []
    flagged = scored.frame.iloc[idx].copy()  # work in proportion to the flagged rows, not the batch
    flagged["explanation"] = [scored.explanations[i] for i in idx.tolist()]
    keys = [scored.keys[i] for i in idx.tolist()]
    return to_json_lines(flagged), keys


def stats_record(
    scored: Scored, *, dead_letters: int, lag: int, batch_latency_s: float, events_per_s: float
) -> bytes:
    """One ``stats`` record for the batch (throughput, anomalies, lag, score histogram)."""
    scores = scored.frame["score"].to_numpy()
    counts, _ = np.histogram(scores[np.isfinite(scores)], bins=SCORE_BINS)
    versions = scored.frame["model_version"]
    return json.dumps(
        {
            "kind": "batch",
            "ts": time.time(),
            "events": int(len(scores)),
            "events_per_s": float(events_per_s),
            "dead_letters": int(dead_letters),
            "anomalies": int(scored.frame["is_anomaly"].sum()),
            "lag": int(lag),
            "batch_latency_ms": float(batch_latency_s * 1000.0),
            "model_version": str(versions.iloc[-1]) if len(versions) else None,
            "threshold": float(scored.frame["threshold"].iloc[-1]) if len(versions) else None,
            "score_hist": {"edges": SCORE_BINS.tolist(), "counts": counts.tolist()},
        }
    ).encode()
