"""The per-record decoding path: the few records the bulk parse could not take, read one by one.

Records that are not JSON (or not one CSV record of the declared width), not UTF-8 or carry a value of the
wrong type become dead letters here (the type rules are the bulk path's: see :mod:`streams.decode`); the
rest are returned as a small typed table that joins the bulk-parsed rows, so validation (missing fields,
non-finite numbers, unreadable timestamps) is the same vectorised code for both paths.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from streams.deadletter import DeadLetter, Reason
from streams.records import RawBatch
from streams.schema import ARROW_TYPES
from streams.timestamps import values_to_ts

if TYPE_CHECKING:
    from streams.decode import Decoder

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass
class Part:
    """Some records of a batch, parsed: their batch positions, typed columns, unreadable-event-time mask."""

    rows: np.ndarray
    table: pa.Table
    bad_ts: np.ndarray


def parse_records(decoder: Decoder, batch: RawBatch, idx: np.ndarray, dead: list[DeadLetter]) -> Part:
    """Parse the records at positions ``idx`` one by one; rejects go to ``dead``."""
    fields = decoder.schema.fields
    columns: dict[str, list[Any]] = {f.name: [] for f in fields}
    good: list[int] = []
    for i in idx.tolist():
        reason, detail, doc = parse_one(batch.values[i], decoder)
        if reason is not None:
            dead.append(DeadLetter(reason, detail, batch.topic, int(batch.partitions[i]), int(batch.offsets[i]),
                                   batch.keys[i], batch.values[i]))
            continue
        assert doc is not None
        for name, col in columns.items():
            col.append(doc.get(name))
        good.append(i)
    arrays = {}
    bad_ts = np.zeros(len(good), dtype=bool)
    for f in fields:
        if f.name == decoder.ts_field:
            arrays[f.name], bad_ts = values_to_ts(columns[f.name], decoder.unit)
        else:
            arrays[f.name] = pa.array(columns[f.name], ARROW_TYPES[f.type])
    return Part(np.asarray(good, dtype=np.int64), pa.table(arrays), bad_ts)


def parse_one(raw: bytes, decoder: Decoder) -> tuple[Reason | None, str, dict[str, Any] | None]:
    """One record as a dict of typed values, or the reason it is rejected."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return Reason.INVALID_ENCODING, f"not UTF-8: {err}", None
    if decoder.schema.format == "csv":
        return _parse_csv(text, decoder)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:
        # ValueError beyond JSONDecodeError: an integer literal over Python's 4300-digit limit raised through
        return Reason.INVALID_JSON, f"not JSON: {err}" if str(err) else "not JSON: nested too deep", None
    if not isinstance(doc, dict):
        return Reason.INVALID_JSON, f"not a JSON object but a {type(doc).__name__}", None
    for f in decoder.schema.fields:
        v = doc.get(f.name)
        if v is None:
            continue
        ok, v = _coerce(v, "timestamp" if f.name == decoder.ts_field else f.type)
        if not ok:
            shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
            if isinstance(v, str) and not _encodable(v):
                return Reason.INVALID_ENCODING, f"field {f.name!r}: string is not valid Unicode", None
            return Reason.WRONG_TYPE, f"field {f.name!r}: expected {f.type}, got {type(v).__name__} {shown}", None
        doc[f.name] = v
    return None, "", doc


_TRUE, _FALSE = {"1", "True", "TRUE", "true"}, {"0", "False", "FALSE", "false"}  # pyarrow's CSV spellings


def _parse_csv(text: str, decoder: Decoder) -> tuple[Reason | None, str, dict[str, Any] | None]:
    fields = decoder.schema.fields
    try:
        cells = next(csv.reader([text], delimiter=decoder.schema.csv_delimiter, strict=True))
    except (csv.Error, StopIteration) as err:
        return Reason.INVALID_CSV, f"not one CSV record: {err}", None
    if len(cells) != len(fields):
        return Reason.INVALID_CSV, f"expected {len(fields)} columns, got {len(cells)}", None
    doc: dict[str, Any] = {}
    for f, cell in zip(fields, cells, strict=True):
        kind = "timestamp" if f.name == decoder.ts_field else f.type
        ok, value = _from_text(cell, kind)
        if not ok:
            shown = repr(cell) if len(cell) <= 60 else repr(cell[:57]) + "..."
            return Reason.WRONG_TYPE, f"field {f.name!r}: expected {f.type}, got {shown}", None
        doc[f.name] = value
    return None, "", doc


def _from_text(cell: str, kind: str) -> tuple[bool, Any]:
    """A CSV cell as a value of ``kind`` (empty = missing), the way pyarrow's CSV reader converts it."""
    if cell == "":
        return True, None
    if kind == "string":
        return True, cell
    if kind == "bool":
        return (cell in _TRUE or cell in _FALSE), cell in _TRUE
    try:
        if kind == "int":
            v = int(cell)
            return _INT64_MIN <= v <= _INT64_MAX, v
        return True, float(cell)
    except ValueError:
        # an event time may be an ISO string; its readability is checked with the other event times
        return kind == "timestamp", cell


def _coerce(v: Any, kind: str) -> tuple[bool, Any]:
    """Whether a JSON value fits a declared type, and the value to store (ints widen to floats etc.).

    A JSON integer in a string field is stored as its exact decimal text (the bulk path reads such fields as
    int64 and casts, bigger ones land here); a float or a bool in a string field is a wrong type.

    >>> _coerce(1161115016, "string"), _coerce(2**70, "string")[1], _coerce(1.0, "string"), _coerce(True, "string")
    ((True, '1161115016'), '1180591620717411303424', (False, 1.0), (False, True))
    """
    if isinstance(v, bool):  # bool is an int in Python; JSON keeps them apart
        return kind == "bool", v
    if kind == "string":
        if isinstance(v, int):
            return True, str(v)
        return isinstance(v, str) and _encodable(v), v
    if kind in ("float", "timestamp"):
        if isinstance(v, int):
            try:
                return True, float(v)
            except OverflowError:  # an integer literal beyond double range reads as infinite
                return True, math.inf if v > 0 else -math.inf
        if kind == "timestamp" and isinstance(v, str):
            return _encodable(v), v
        return isinstance(v, float), v
    if kind == "int":
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return isinstance(v, int) and _INT64_MIN <= v <= _INT64_MAX, v
    return False, v


def _encodable(s: str) -> bool:
    """JSON escapes can spell lone surrogates that no UTF-8 column can hold."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
