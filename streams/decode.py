"""Bulk decoding of JSON (or CSV) micro-batches into columnar frames, with schema enforcement.

Fast path: one pyarrow JSON (or CSV) parse of the whole batch (values joined by ``\\n``) against the declared
schema, then vectorised checks. Cheap vectorised pre-checks first set aside messages that would break line framing
(a raw newline inside, not one ``{...}`` object, bytes that are not UTF-8). When a bulk parse fails, the batch
is bisected and each half parsed again, so one bad record costs a few extra parses of ever smaller parts and
only a handful of records are ever read one by one. Every rejected record becomes a
:class:`~streams.deadletter.DeadLetter`; good records are never affected by bad neighbours.

Type rules shared by both paths (JSON): a ``string`` field takes a JSON string or a JSON integer literal, the
integer kept as its exact decimal text (``1161115016`` -> ``"1161115016"``, any size, never through a float);
float literals (``1.0``, ``1e3``) and booleans in a ``string`` field are ``wrong_type``, because their text
form is ambiguous (``1.0`` vs ``1``). CSV cells are text already, so a ``string`` field keeps the cell as is.
Event times: see :mod:`streams.timestamps` (ISO-8601, ``... UTC``, epoch numbers).

GPU backend: decoding and validation are the same CPU (pyarrow) code; only the finished table is handed to
cuDF, so both backends have the same semantics by construction. The cuDF hand-off is tested only where cuDF
and a GPU are present (``tests/unit/test_decode.py`` skips otherwise).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from streams.deadletter import DeadLetter, Reason
from streams.decode_records import Part, parse_records
from streams.records import RawBatch
from streams.schema import ARROW_TYPES, Schema
from streams.timestamps import TS_TYPE, numbers_to_ts, parse_time_strings, strings_to_ts

#: below this many records a failing part is read record by record instead of bisected further
LEAF_RECORDS = 32
# ~512 KiB blocks let pyarrow parse one batch on several threads (measured best on 2 cores)
_BLOCK_BYTES = 1 << 19
_OPEN, _CLOSE = ord("{"), ord("}")
# pyarrow's JSON reader names the column whose JSON kind disagrees with the declared type, e.g.
# "Column(/station_id) changed from string to number in row 0"; only string<->number flips are adaptable
_KIND_FLIP = re.compile(r"Column\(/(?P<name>[^)]*)\) changed from (?:string to number|number to string)")
# which event-time layout to try first after one worked, by the layout that worked: the others keep the order
# that makes the next likely switch cheap (text is the fallback of the faster timestamp layout)
_PREFER = {"number": ("number", "timestamp", "string"), "timestamp": ("timestamp", "string", "number"),
           "string": ("string", "timestamp", "number")}


class DecodeError(RuntimeError):
    """Decoding cannot run at all (unknown backend, GPU without cuDF, bad schema default).

    Bad records never raise this: they become dead letters.
    """


@dataclass
class Decoded:
    """A decoded micro-batch: the good rows as a frame, and the rejected records."""

    frame: Any  # pandas.DataFrame on the CPU backend, cudf.DataFrame on the GPU backend
    dead: list[DeadLetter]

    def __len__(self) -> int:
        return len(self.frame)


class Decoder:
    """Decodes batches for one schema; remembers which event-time layout parsed last.

    >>> from streams.schema import STATION_ALARM
    >>> raw = RawBatch.from_values([b'{"station_id":"ST0001","datapoint_id":"ST0001-DP01",'
    ...     b'"event_time":"2026-11-24T00:00:00.000Z","value":1.5,"valueThreshold":2.0}', b'{oops'])
    >>> out = Decoder(STATION_ALARM).decode(raw)
    >>> len(out.frame), [d.reason.value for d in out.dead]
    (1, ['invalid_json'])
    """

    def __init__(self, schema: Schema, backend: str = "cpu", *, threads: bool = True) -> None:
        """``threads``: let pyarrow parse one batch on several threads; turn off when several batches decode
        in parallel already (the source's decode threads), where it measured 10-20 % slower."""
        if backend not in ("cpu", "gpu"):
            msg = f"decode: unknown backend {backend!r} (use 'cpu' or 'gpu')"
            raise DecodeError(msg)
        self.schema = schema
        self.backend = backend
        self.threads = threads
        self.ts_field = schema.event_time.field
        self.unit = schema.event_time.unit
        # how the bulk parse reads the event-time field: "timestamp" lets pyarrow parse ISO-8601 while reading
        # (10-15 % faster than text + cast); "string" is its fallback for ISO variants pyarrow rejects (the
        # forgiving parser then reads them); "number" is epoch seconds/milliseconds
        kinds = {"iso": ["timestamp", "string"], "s": ["number"], "ms": ["number"],
                 "auto": ["timestamp", "string", "number"]}[self.unit]
        self._ts_kinds = kinds
        # string fields the JSON bulk parse currently reads as int64 (then casts to exact decimal text): a topic
        # whose ids are JSON integers would otherwise fail every bulk parse and fall to the per-record path
        # (measured on 200k seed-001-format records: 32.8 s instead of 0.4 s). Learnt from the reader's error,
        # kept while it holds.
        self._string_fields = frozenset(f.name for f in schema.fields if f.type == "string" and f.name != self.ts_field)
        self._int_text: frozenset[str] = frozenset()
        self._layout_cache: dict[tuple[str, frozenset[str]], pa.Schema] = {}
        # nullable everywhere: rows with nulls exist until validation has taken them out
        self._out_schema = pa.schema([pa.field(f.name, f.type) for f in schema.arrow_schema()])
        self._defaults: dict[str, pa.Scalar] = {}
        for f in schema.fields:
            if f.required or f.default is None:
                continue
            try:
                if f.name == self.ts_field:
                    col, bad = strings_to_ts(pa.array([str(f.default)]), self.unit)
                    if bad.any():
                        raise ValueError("not a timestamp")
                    self._defaults[f.name] = col[0]
                else:
                    self._defaults[f.name] = pa.scalar(f.default, ARROW_TYPES[f.type])
            except (ValueError, TypeError, pa.ArrowInvalid) as err:
                msg = f"decode: default {f.default!r} of field {f.name!r} is not a {f.type}: {err}"
                raise DecodeError(msg) from err

    def _layout(self, ts_kind: str, int_text: frozenset[str]) -> pa.Schema:
        key = (ts_kind, int_text)
        layout = self._layout_cache.get(key)
        if layout is None:
            fields = []
            for f in self.schema.fields:
                if f.name == self.ts_field:
                    ts_type = {"timestamp": TS_TYPE, "string": pa.string(), "number": pa.float64()}[ts_kind]
                    fields.append(pa.field(f.name, ts_type))
                elif f.name in int_text:
                    fields.append(pa.field(f.name, pa.int64()))
                else:
                    fields.append(pa.field(f.name, ARROW_TYPES[f.type]))
            layout = self._layout_cache[key] = pa.schema(fields)
        return layout

    def _prefer(self, kind: str) -> None:
        order = [k for k in _PREFER[kind] if k in self._ts_kinds]
        if order != self._ts_kinds:
            # a new list, not an in-place sort: a decoder shared by threads never sees a half-sorted one
            self._ts_kinds = order

    # -- entry point -------------------------------------------------------------------------------------
    def decode(self, batch: RawBatch) -> Decoded:
        """Decode ``batch``; bad records go to ``Decoded.dead`` with their reason, in offset order."""
        dead: list[DeadLetter] = []
        n = len(batch)
        sizes = np.fromiter(map(len, batch.values), dtype=np.int64, count=n)
        limit = self.schema.max_message_bytes
        for i in np.flatnonzero(sizes > limit).tolist():
            dead.append(_dead(batch, i, Reason.OVERSIZE, f"{int(sizes[i])} bytes > max_message_bytes {limit}"))
        idx = np.flatnonzero(sizes <= limit)
        parts: list[Part] = []
        if len(idx):
            values = batch.values if len(idx) == n else [batch.values[i] for i in idx.tolist()]
            payload = b"\n".join(values)
            suspect = _suspects(values, sizes[idx], payload, json_objects=self.schema.format == "json")
            if suspect.any():  # set aside, read one by one; the rest stays on the fast path
                parts.append(parse_records(self, batch, idx[suspect], dead))
                idx = idx[~suspect]
                payload = b"\n".join(batch.values[i] for i in idx.tolist()) if len(idx) else b""
            if len(idx):
                self._parse_bulk(batch, idx, payload, parts, dead)
        table, rows, bad_ts = _combine(parts, self._out_schema)
        table, rows = self._validate(batch, table, rows, bad_ts, dead)
        dead.sort(key=lambda d: (d.partition, d.offset))
        return Decoded(self._to_frame(batch, table, rows), dead)

    # -- parsing -----------------------------------------------------------------------------------------
    def _parse_bulk(self, batch: RawBatch, idx: np.ndarray, payload: bytes, parts: list[Part],
                    dead: list[DeadLetter]) -> None:
        table = self._read(payload, len(idx))
        if table is not None:
            parts.append(self._normalize(table, idx))
        elif len(idx) <= LEAF_RECORDS:
            parts.append(parse_records(self, batch, idx, dead))
        else:  # bisect: the good half parses in bulk, the bad half splits again
            for half in (idx[: len(idx) // 2], idx[len(idx) // 2 :]):
                self._parse_bulk(batch, half, b"\n".join(batch.values[i] for i in half.tolist()), parts, dead)

    def _read(self, payload: bytes, expected_rows: int) -> pa.Table | None:
        kinds = self._ts_kinds
        for i, kind in enumerate(kinds):
            table = self._read_kind(payload, kind)
            if table is None:
                continue
            if table.num_rows != expected_rows:  # cannot happen after the pre-checks; be safe anyway
                return None
            # a topic rarely switches between ISO strings and epoch numbers: try what worked first next time;
            # whether text stays ahead of the timestamp layout is decided once the text is read (_normalize)
            if i and kind != "string":
                self._prefer(kind)
            return table.select(self.schema.names)
        return None

    def _read_kind(self, payload: bytes, kind: str) -> pa.Table | None:
        """One bulk parse with event-time layout ``kind``; a string field found holding JSON integers (or back
        to strings) is switched between text and int64 and the parse retried, at most once per field."""
        flipped: set[str] = set()
        while True:
            int_text = self._int_text
            try:
                return self._read_layout(payload, self._layout(kind, int_text))
            except (pa.ArrowInvalid, UnicodeDecodeError) as err:
                m = _KIND_FLIP.search(str(err)) if self.schema.format == "json" else None
                name = m.group("name") if m else None
                if name not in self._string_fields or name in flipped:
                    return None  # not adaptable, or both kinds in one part: bisection sorts it out
                flipped.add(name)
                self._int_text = int_text ^ {name}
    def _read_layout(self, payload: bytes, layout: pa.Schema) -> pa.Table:
        if self.schema.format == "csv":
            return pacsv.read_csv(
                io.BytesIO(payload),
                read_options=pacsv.ReadOptions(column_names=layout.names, use_threads=self.threads,
                                               block_size=_BLOCK_BYTES),
                parse_options=pacsv.ParseOptions(delimiter=self.schema.csv_delimiter),
                # an empty cell is a missing value, as an absent key is in JSON
                convert_options=pacsv.ConvertOptions(column_types=layout, null_values=[""],
                                                     strings_can_be_null=True),
            )
        return pajson.read_json(
            io.BytesIO(payload),
            read_options=pajson.ReadOptions(use_threads=self.threads, block_size=_BLOCK_BYTES),
            parse_options=pajson.ParseOptions(explicit_schema=layout, unexpected_field_behavior="ignore"),
        )

    def _normalize(self, table: pa.Table, rows: np.ndarray) -> Part:
        """Event time to UTC timestamps; the mask of event times that were present but unreadable.

        String fields read as int64 become their exact decimal text here."""
        for i, f in enumerate(table.schema):
            if f.name in self._string_fields and pa.types.is_integer(f.type):
                table = table.set_column(i, f.name, pc.cast(table.column(i), pa.string()))
        col = table.column(self.ts_field).combine_chunks()
        if pa.types.is_timestamp(col.type):
            ts, bad = col, np.zeros(len(col), dtype=bool)
        elif pa.types.is_string(col.type):
            ts, bad, plain = parse_time_strings(col, self.unit)
            # text needed more than Arrow's ISO-8601 reader (`... UTC`, nanoseconds): keep reading it as text
            # first, saving a failing timestamp parse per batch; otherwise the timestamp layout would have done
            if "timestamp" in self._ts_kinds:
                self._prefer("timestamp" if plain else "string")
        else:
            absent = col.is_null().to_numpy(zero_copy_only=False)
            ts, bad = numbers_to_ts(col.fill_null(0.0).to_numpy(), self.unit, absent=absent)
        table = table.set_column(table.schema.get_field_index(self.ts_field), self.ts_field, ts)
        return Part(rows, table, bad)

    # -- validation ----------------------------------------------------------------------------------------
    def _validate(self, batch: RawBatch, table: pa.Table, rows: np.ndarray, bad_ts: np.ndarray,
                  dead: list[DeadLetter]) -> tuple[pa.Table, np.ndarray]:
        n = table.num_rows
        bad = np.zeros(n, dtype=bool)
        checks: list[tuple[np.ndarray, Reason, str]] = []
        columns = {}
        for f in self.schema.fields:
            col = table.column(f.name)
            nulls = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else None
            if nulls is not None and f.name == self.ts_field:  # unreadable times are nulled: not missing
                nulls = nulls & ~bad_ts if (nulls & ~bad_ts).any() else None
            if nulls is not None and f.required:
                checks.append((nulls, Reason.MISSING_FIELD, f"required field {f.name!r} is missing or null"))
            elif nulls is not None and f.name in self._defaults:
                col = col.fill_null(self._defaults[f.name])
            if f.name == self.ts_field:
                checks.append((bad_ts, Reason.BAD_TIMESTAMP, f"field {f.name!r} is not a readable timestamp"))
            elif f.type == "float" and n:
                arr = col.to_numpy()
                finite = np.isfinite(arr) if nulls is None else (np.isfinite(arr) | nulls)
                checks.append((~finite, Reason.NON_FINITE, f"field {f.name!r} is NaN or infinite"))
            columns[f.name] = col
        for mask, reason, detail in checks:
            hit = mask & ~bad
            for j in np.flatnonzero(hit).tolist():
                dead.append(_dead(batch, int(rows[j]), reason, detail))
            bad |= hit
        table = pa.table(columns, schema=self._out_schema) if n else table
        if bad.any():
            keep = np.flatnonzero(~bad)
            table, rows = table.take(pa.array(keep)), rows[keep]
        return table, rows

    # -- output --------------------------------------------------------------------------------------------
    def _to_frame(self, batch: RawBatch, table: pa.Table, rows: np.ndarray) -> Any:
        all_rows = len(rows) == len(batch)
        keys = batch.keys if all_rows else [batch.keys[i] for i in rows.tolist()]
        try:
            key_col = pa.array(keys, pa.binary()).cast(pa.string())
        except pa.ArrowInvalid:  # a key that is not UTF-8: keep it readable rather than reject the event
            key_col = pa.array([k.decode("utf-8", "replace") if k is not None else None for k in keys], pa.string())
        meta = {
            "_partition": pa.array(np.asarray(batch.partitions, dtype=np.int32)[rows]),
            "_offset": pa.array(np.asarray(batch.offsets, dtype=np.int64)[rows]),
            "_kafka_ts": pa.array(np.asarray(batch.timestamps_ms, dtype=np.int64)[rows]),
            "_key": key_col,
        }
        for name, arr in meta.items():
            table = table.append_column(name, arr)
        if self.backend == "gpu":
            return _to_cudf(table)
        return table.to_pandas(split_blocks=True)  # no 2-D block consolidation: ~30 % cheaper


def _suspects(values: list[bytes], sizes: np.ndarray, payload: bytes, *, json_objects: bool = True) -> np.ndarray:
    """Messages the bulk parse must not see: empty, more than one line, not UTF-8, or (JSON) not one ``{...}``.

    All checks run on the joined payload with numpy; per-message Python runs only when a check fires.
    """
    suspect = sizes == 0
    if json_objects:
        buf = np.frombuffer(payload, dtype=np.uint8)
        starts = np.zeros(len(sizes), dtype=np.int64)
        np.cumsum(sizes[:-1] + 1, out=starts[1:])
        first = buf[np.minimum(starts, max(len(buf) - 1, 0))] if len(buf) else np.zeros(len(sizes), np.uint8)
        last = buf[np.maximum(starts + sizes - 1, 0)] if len(buf) else first
        suspect = suspect | (first != _OPEN) | (last != _CLOSE)
    # pyarrow splits lines on \n and \r: a message holding either would shift every later row (searching the
    # values joined without separators is memchr-fast; counting newlines in the payload is 10x slower)
    flat = b"".join(values)
    if b"\n" in flat or b"\r" in flat:
        suspect |= np.fromiter((b"\n" in v or b"\r" in v for v in values), dtype=bool, count=len(values))
    if not payload.isascii():
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            suspect |= np.fromiter((not _is_utf8(v) for v in values), dtype=bool, count=len(values))
    return suspect


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _combine(parts: list[Part], schema: pa.Schema) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The parts as one table in batch order (bisection and set-aside records arrive out of order)."""
    if not parts:
        return schema.empty_table(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    if len(parts) == 1:
        return parts[0].table, parts[0].rows, parts[0].bad_ts
    table = pa.concat_tables([p.table.cast(schema) for p in parts])
    rows = np.concatenate([p.rows for p in parts])
    bad_ts = np.concatenate([p.bad_ts for p in parts])
    order = np.argsort(rows, kind="stable")
    if not (order == np.arange(len(order))).all():
        table, rows, bad_ts = table.take(pa.array(order)), rows[order], bad_ts[order]
    return table, rows, bad_ts


def _dead(batch: RawBatch, i: int, reason: Reason, detail: str) -> DeadLetter:
    return DeadLetter(reason, detail, batch.topic, int(batch.partitions[i]), int(batch.offsets[i]),
                      batch.keys[i], batch.values[i])


def _to_cudf(table: pa.Table) -> Any:
    try:
        import cudf
    except ImportError as err:
        msg = "decode: backend 'gpu' needs cuDF and an NVIDIA GPU (see environment.yml); use backend 'cpu'"
        raise DecodeError(msg) from err
    # cuDF's timezone support is partial: hand it naive microseconds, which are UTC by construction
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type) and f.type.tz is not None:
            table = table.set_column(i, f.name, table.column(i).cast(pa.timestamp(f.type.unit)))
    return cudf.DataFrame.from_arrow(table)


@lru_cache(maxsize=32)
def _decoder(schema_json: str, backend: str) -> Decoder:
    return Decoder(Schema.model_validate_json(schema_json), backend)


def decode_batch(batch: RawBatch, schema: Schema, backend: str = "cpu") -> Decoded:
    """Decode one micro-batch against ``schema`` (a cached :class:`Decoder` per schema and backend)."""
    return _decoder(schema.model_dump_json(), backend).decode(batch)


def empty_frame(schema: Schema) -> pd.DataFrame:
    """A zero-row frame with the decoded columns and dtypes of ``schema``."""
    return Decoder(schema).decode(RawBatch.from_values([])).frame
