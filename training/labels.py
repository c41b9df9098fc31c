"""Late ground truth: reading label files and records into normalised labels, and the rows that cannot be used.

A label names one input event in either of two ways (docs/labels.md):

* ``partition, offset, label``: the Kafka coordinates of the input event (the lake's ``kafka_partition`` and
  ``kafka_offset``), exact and cheap to join;
* ``key, event_time, label``: the schema's key field (e.g. ``datapoint_id``) and the event's time, for desks
  that never saw the Kafka coordinates. It matches the lake row whose key and event time are equal to the
  microsecond.

``label`` is 1 / 0 or true / false (1 = the event was a real anomaly). Rows that cannot be used are never
dropped silently: :func:`parse_labels` returns them beside the good ones, one reason each.

>>> parsed = parse_labels(pd.DataFrame({"partition": [0, 0, "x"], "offset": [7, 8, 9],
...                                     "label": ["true", 0, 1]}))
>>> parsed.labels[["partition", "offset", "label"]].values.tolist(), parsed.rejects["reason"].tolist()
([[0, 7, 1], [0, 8, 0]], ['bad_partition'])

:class:`training.label_store.LabelStore` keeps them durably (the latest label of an event wins);
:mod:`training.label_metrics` finds their stored predictions in the lake (``join_predictions``), scores each model
version (``metrics_by_version``) and writes the result as ``<labels_path>/metrics.json`` (``update_metrics``) for
the promotion gate and the dashboard.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streams.timestamps import TS_TYPE, values_to_ts


class LabelError(ValueError):
    """Labels that cannot be read, stored or joined; the message names the file, column or value."""


#: the normalised label columns (an offset label has partition and offset; a key label key and event_time)
LABEL_SCHEMA = pa.schema([
    ("partition", pa.int64()),
    ("offset", pa.int64()),
    ("key", pa.string()),
    ("event_time", TS_TYPE),
    ("label", pa.int8()),
])
#: one row per unusable input row: where it came from, which row (line, row number or Kafka offset), why, what
REJECT_SCHEMA = pa.schema([("source", pa.string()), ("row", pa.string()), ("reason", pa.string()),
                           ("record", pa.string())])
OFFSET_COLUMNS = ("partition", "offset")
KEY_COLUMNS = ("key", "event_time")
_TRUE = {"1", "true", "t", "1.0"}
_FALSE = {"0", "false", "f", "0.0"}


class ParsedLabels(NamedTuple):
    """Usable labels (:data:`LABEL_SCHEMA` columns) and the rejected rows (:data:`REJECT_SCHEMA` columns)."""

    labels: pd.DataFrame
    rejects: pd.DataFrame


def empty_labels() -> pd.DataFrame:
    """A label frame with no rows and the right dtypes."""
    return table_to_frame(LABEL_SCHEMA.empty_table())


def empty_rejects() -> pd.DataFrame:
    """A reject frame with no rows (:data:`REJECT_SCHEMA` columns)."""
    return REJECT_SCHEMA.empty_table().to_pandas()


def parse_labels(frame: pd.DataFrame, *, source: str = "<frame>", rows: Sequence[str] | None = None) -> ParsedLabels:
    """Normalise a frame with ``partition, offset, label`` and/or ``key, event_time, label`` columns.

    Per row, complete Kafka coordinates win over key + time. ``rows`` names each row in the rejects (default:
    its position). Raises :class:`LabelError` when the frame has no ``label`` column or neither column set.
    """
    cols = set(map(str, frame.columns))
    has_offset, has_key = set(OFFSET_COLUMNS) <= cols, set(KEY_COLUMNS) <= cols
    if "label" not in cols or not (has_offset or has_key):
        msg = (f"labels {source}: need columns (partition, offset, label) or (key, event_time, label); "
               f"it has {sorted(cols)}")
        raise LabelError(msg)
    n = len(frame)
    frame = frame.reset_index(drop=True)
    reason = np.full(n, "", dtype=object)

    def reject(mask: np.ndarray, why: str) -> None:
        reason[mask & (reason == "")] = why

    none = pd.Series([None] * n, dtype=object)
    part, part_bad, part_na = _integers(frame["partition"] if has_offset else none)
    off, off_bad, off_na = _integers(frame["offset"] if has_offset else none)
    by_offset = ~part_na & ~off_na
    reject(by_offset & part_bad, "bad_partition")
    reject(by_offset & off_bad, "bad_offset")
    keys = [_text(v) for v in (frame["key"] if has_key else none).tolist()]
    times, time_bad = _times(frame["event_time"] if has_key else none)
    key_na = np.array([k is None for k in keys], dtype=bool)
    time_na = times.is_null().to_numpy(zero_copy_only=False) & ~time_bad
    by_key = ~by_offset & ~key_na & ~time_na
    reject(by_key & time_bad, "bad_event_time")
    reject(~by_offset & ~by_key, "missing_coordinates")
    label, label_bad, label_na = _booleans(frame["label"])
    reject(label_na, "missing_label")
    reject(label_bad, "bad_label")
    ok = reason == ""
    table = pa.table({
        "partition": pa.array(part, pa.int64(), mask=~by_offset),
        "offset": pa.array(off, pa.int64(), mask=~by_offset),
        "key": pa.array([None if by_offset[i] else k for i, k in enumerate(keys)], pa.string()),
        "event_time": pc.if_else(pa.array(by_offset), pa.scalar(None, TS_TYPE), times),
        "label": pa.array(label, pa.int8()),
    }, schema=LABEL_SCHEMA)
    names = [str(r) for r in (rows if rows is not None else range(n))]
    bad = np.flatnonzero(~ok)
    rejects = pd.DataFrame({
        "source": [source] * len(bad),
        "row": [names[i] for i in bad],
        "reason": reason[bad].tolist(),
        "record": [json.dumps(frame.iloc[i].to_dict(), default=str) for i in bad],
    }, columns=REJECT_SCHEMA.names)
    return ParsedLabels(table_to_frame(table.filter(pa.array(ok))), rejects)


def _text(v: object) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    s = str(v.item() if isinstance(v, np.generic) else v).strip()
    return s or None


def _integer(v: object) -> int | None:
    """A whole non-negative number (int, integral float, or its text) exactly, else None."""
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v) if 0 <= v < 2**63 else None
    if isinstance(v, (float, np.floating)):
        return int(v) if np.isfinite(v) and v == int(v) and 0 <= v < 2**63 else None
    text = _text(v)
    if text is None:
        return None
    try:
        return _integer(int(text))
    except ValueError:
        try:
            return _integer(float(text))
        except ValueError:
            return None


def _integers(col: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole non-negative numbers as int64, the mask of unusable values, the mask of missing ones."""
    values = col.tolist()
    absent = np.array([_text(v) is None for v in values], dtype=bool)
    ints = [_integer(v) for v in values]
    good = np.array([i is not None for i in ints], dtype=bool)
    return np.array([i or 0 for i in ints], dtype=np.int64), ~absent & ~good, absent


def _booleans(col: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1/0/true/false (any case, or real bools) as 0/1, the mask of other values, the mask of missing ones."""
    text = [(_text(v) or "").lower() for v in col.tolist()]
    absent = np.array([t == "" for t in text], dtype=bool)
    one = np.array([t in _TRUE for t in text], dtype=bool)
    zero = np.array([t in _FALSE for t in text], dtype=bool)
    return one.astype(np.int8), ~absent & ~one & ~zero, absent


def _times(col: pd.Series) -> tuple[pa.Array, np.ndarray]:
    """Event times as UTC microseconds (ISO text, epoch s/ms, or timestamps; naive = UTC) and the bad mask."""
    if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(col.dtype):
        ts = col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
        return pa.array(ts.dt.as_unit("us"), TS_TYPE), np.zeros(len(col), dtype=bool)
    values: list[object] = []
    for v in col.tolist():
        v = v.item() if isinstance(v, np.generic) else v
        if isinstance(v, dt.datetime):  # pd.Timestamp too; naive = UTC, as for text
            v = (v if v.tzinfo is not None else v.replace(tzinfo=dt.timezone.utc)).isoformat()
        values.append(None if _text(v) is None else v.strip() if isinstance(v, str) else v)
    return values_to_ts(values, "auto")


def table_to_frame(table: pa.Table) -> pd.DataFrame:
    """``table`` as pandas with nullable integers, so a missing partition does not turn the column to floats."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def records_to_frame(values: Iterable[bytes | str], rows: Sequence[str], *, source: str) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """JSON objects (one per value) as a frame of the label columns, their row names, and the undecodable ones.

    Absent keys become missing values, so a record without coordinates is rejected by :func:`parse_labels`.
    """
    objs: list[dict[str, Any]] = []
    kept: list[str] = []
    bad: list[tuple[str, str, str]] = []
    for row, raw in zip(rows, values, strict=True):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            obj = json.loads(text)
        except ValueError:
            bad.append((row, "invalid_json", text[:1000]))
            continue
        if not isinstance(obj, dict):
            bad.append((row, "not_an_object", text[:1000]))
            continue
        objs.append(obj)
        kept.append(row)
    cols = [*OFFSET_COLUMNS, *KEY_COLUMNS, "label"]
    frame = pd.DataFrame([[o.get(c) for c in cols] for o in objs], columns=cols, dtype=object)
    rejects = pd.DataFrame([(source, r, why, rec) for r, why, rec in bad], columns=REJECT_SCHEMA.names)
    return frame, kept, rejects


def read_labels(path: str | os.PathLike[str]) -> ParsedLabels:
    """Read a CSV, Parquet or JSON-lines label file (``.csv``, ``.parquet``/``.pq``, ``.jsonl``/``.ndjson``/``.json``).

    Returns the usable labels and the rejected rows (line or row number, reason). :class:`LabelError` when the
    file is missing, unreadable, or has neither ``partition, offset, label`` nor ``key, event_time, label``.
    """
    p = Path(path)
    source = str(p)
    if not p.is_file():
        msg = f"labels: file not found: {p}"
        raise LabelError(msg)
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
            return parse_labels(frame, source=source, rows=[str(i + 2) for i in range(len(frame))])  # file lines
        if suffix in (".parquet", ".pq"):
            frame = pq.read_table(p).to_pandas()
            return parse_labels(frame, source=source)
    except (OSError, ValueError, pa.ArrowException) as err:
        if isinstance(err, LabelError):
            raise
        msg = f"labels: cannot read {p}: {err}"
        raise LabelError(msg) from err
    if suffix not in (".jsonl", ".ndjson", ".json"):
        msg = f"labels: {p}: unknown file type {suffix!r} (use .csv, .parquet or .jsonl)"
        raise LabelError(msg)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        msg = f"labels: cannot read {p}: {err}"
        raise LabelError(msg) from err
    if text.lstrip().startswith("["):  # a .json file holding one array of objects
        try:
            items = json.loads(text)
        except ValueError as err:
            msg = f"labels: {p} is not valid JSON: {err}"
            raise LabelError(msg) from err
        lines = [json.dumps(o) for o in items]
        names = [f"item {i}" for i in range(len(lines))]
    else:
        numbered = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
        lines = [line for _, line in numbered]
        names = [f"line {i}" for i, _ in numbered]
    seen: set[str] = set()
    for line in lines:
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                seen.update(map(str, obj))
    if "label" not in seen or not (set(OFFSET_COLUMNS) <= seen or set(KEY_COLUMNS) <= seen):
        msg = (f"labels {p}: need fields (partition, offset, label) or (key, event_time, label); "
               f"its records have {sorted(seen)}")
        raise LabelError(msg)
    frame, kept, undecodable = records_to_frame(lines, names, source=source)
    parsed = parse_labels(frame, source=source, rows=kept)
    return ParsedLabels(parsed.labels, concat_rejects([undecodable, parsed.rejects]))


def concat_rejects(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The reject frames one after the other (empty ones skipped); an empty reject frame if all are."""
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else empty_rejects()
