"""Bulk decoding of JSON-lines micro-batches into columnar frames, with schema enforcement.

Fast path: one pyarrow JSON parse of the whole batch against the declared schema, then vectorised checks.
Only when that parse fails (a malformed or mistyped record somewhere) are records checked one by one with the
standard library, so clean batches keep pyarrow's speed and bad ones cost only the slower path. Every rejected
record becomes a :class:`~streams.deadletter.DeadLetter`; good records are never affected by bad neighbours.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from streams.deadletter import DeadLetter, Reason
from streams.records import RawBatch
from streams.schema import ARROW_TYPES, Schema

TS_TYPE = pa.timestamp("us", tz="UTC")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# epoch numbers below this are seconds, above it milliseconds (1e11 s is the year 5138; 1e11 ms is 1973)
_AUTO_SECONDS_BELOW = 1e11
_BLOCK_BYTES = 1 << 19


class DecodeError(RuntimeError):
    """Decoding cannot run at all (e.g. the GPU backend without cuDF); bad records never raise this."""


@dataclass
class Decoded:
    """A decoded micro-batch: the good rows as a frame, and the rejected records."""

    frame: pd.DataFrame
    dead: list[DeadLetter]

    def __len__(self) -> int:
        return len(self.frame)


class Decoder:
    """Decodes batches for one schema; remembers which parse layout worked last."""

    def __init__(self, schema: Schema, backend: str = "cpu") -> None:
        if backend not in ("cpu", "gpu"):
            msg = f"decode: unknown backend {backend!r} (use 'cpu' or 'gpu')"
            raise DecodeError(msg)
        self.schema = schema
        self.backend = backend
        self.ts_field = schema.event_time.field
        unit = schema.event_time.unit
        layouts = {"iso": ["string"], "s": ["number"], "ms": ["number"], "auto": ["string", "number"]}[unit]
        self._layouts = [self._parse_schema(kind) for kind in layouts]

    def _parse_schema(self, ts_kind: str) -> pa.Schema:
        fields = []
        for f in self.schema.fields:
            if f.name == self.ts_field:
                fields.append(pa.field(f.name, pa.string() if ts_kind == "string" else pa.float64()))
            else:
                fields.append(pa.field(f.name, ARROW_TYPES[f.type]))
        return pa.schema(fields)

    # -- entry point -------------------------------------------------------------------------------------
    def decode(self, batch: RawBatch) -> Decoded:
        """Decode ``batch``; bad records go to ``Decoded.dead`` with their reason."""
        dead: list[DeadLetter] = []
        limit = self.schema.max_message_bytes
        sizes = np.array(list(map(len, batch.values)), dtype=np.int64)
        keep = np.flatnonzero(sizes <= limit)
        for i in np.flatnonzero(sizes > limit):
            dead.append(self._dead(batch, int(i), Reason.OVERSIZE, f"{int(sizes[i])} bytes > max {limit}"))
        table, rows = self._fast_parse(batch, keep)
        if table is None:
            table, rows = self._slow_parse(batch, keep, dead)
        table, rows = self._validate(batch, table, rows, dead)
        dead.sort(key=lambda d: (d.partition, d.offset))
        return Decoded(self._to_frame(batch, table, rows), dead)

    # -- parsing -----------------------------------------------------------------------------------------
    def _fast_parse(self, batch: RawBatch, keep: np.ndarray) -> tuple[pa.Table | None, np.ndarray]:
        if len(keep) == 0:
            return None, keep
        values = batch.values if len(keep) == len(batch) else [batch.values[i] for i in keep]
        payload = b"\n".join(values)
        # ~512 KiB blocks let pyarrow parse a batch on several threads (measured best on 2 cores)
        block = _BLOCK_BYTES
        for i, layout in enumerate(self._layouts):
            try:
                table = pajson.read_json(
                    io.BytesIO(payload),
                    read_options=pajson.ReadOptions(use_threads=True, block_size=block),
                    parse_options=pajson.ParseOptions(explicit_schema=layout, unexpected_field_behavior="ignore",
                                                      newlines_in_values=False),
                )
            except (pa.ArrowInvalid, UnicodeDecodeError):
                continue
            if table.num_rows != len(values):  # a message held several documents, or none
                return None, keep
            if i:  # try the layout that worked first next time
                self._layouts.insert(0, self._layouts.pop(i))
            return table.select(layout.names), keep
        return None, keep

    def _slow_parse(self, batch: RawBatch, keep: np.ndarray, dead: list[DeadLetter]) -> tuple[pa.Table, np.ndarray]:
        columns: dict[str, list] = {f.name: [] for f in self.schema.fields}
        good: list[int] = []
        for i in keep.tolist():
            raw = batch.values[i]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                dead.append(self._dead(batch, i, Reason.INVALID_ENCODING, str(err)))
                continue
            try:
                doc = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as err:
                dead.append(self._dead(batch, i, Reason.INVALID_JSON, str(err)))
                continue
            if not isinstance(doc, dict):
                dead.append(self._dead(batch, i, Reason.WRONG_TYPE, f"record is a {type(doc).__name__}, not an object"))
                continue
            problem = self._check_types(doc)
            if problem is not None:
                dead.append(self._dead(batch, i, Reason.WRONG_TYPE, problem))
                continue
            for name, col in columns.items():
                col.append(doc.get(name))
            good.append(i)
        arrays = {}
        for f in self.schema.fields:
            vals = columns[f.name]
            if f.name == self.ts_field:
                arrays[f.name] = pa.array(vals, pa.string()) if all(v is None or isinstance(v, str) for v in vals) \
                    else pa.array([_ts_as_number(v) for v in vals], pa.float64()) if not any(
                        isinstance(v, str) for v in vals) else pa.array([None if v is None else str(v) for v in vals])
                # mixed strings and numbers in one batch: keep numbers as text and parse them per row below
            else:
                arrays[f.name] = pa.array([float(v) if f.type == "float" and v is not None else v for v in vals],
                                          ARROW_TYPES[f.type])
        return pa.table(arrays), np.asarray(good, dtype=np.int64)

    def _check_types(self, doc: dict) -> str | None:
        for f in self.schema.fields:
            v = doc.get(f.name)
            if v is None:
                continue
            if f.name == self.ts_field:
                ok = isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool))
            elif f.type == "string":
                ok = isinstance(v, str)
            elif f.type == "float":
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (
                    not isinstance(v, int) or abs(v) < 2**1023)
            elif f.type == "int":
                if isinstance(v, float) and v.is_integer():
                    doc[f.name] = v = int(v)
                ok = isinstance(v, int) and not isinstance(v, bool) and _INT64_MIN <= v <= _INT64_MAX
            elif f.type == "bool":
                ok = isinstance(v, bool)
            else:
                ok = False
            if not ok:
                shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
                return f"field {f.name!r}: expected {f.type}, got {type(v).__name__} {shown}"
        return None

    # -- validation ----------------------------------------------------------------------------------------
    def _validate(self, batch: RawBatch, table: pa.Table, rows: np.ndarray, dead: list[DeadLetter]
                  ) -> tuple[pa.Table, np.ndarray]:
        n = table.num_rows
        bad = np.zeros(n, dtype=bool)
        reasons: list[tuple[np.ndarray, Reason, str]] = []
        columns = {}
        for f in self.schema.fields:
            col = table.column(f.name)
            nulls = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else np.zeros(n, dtype=bool)
            if f.required:
                reasons.append((nulls, Reason.MISSING_FIELD, f"required field {f.name!r} is missing or null"))
            elif col.null_count:
                col = pc.fill_null(col, pa.scalar(f.default, ARROW_TYPES[f.type])) if f.default is not None else col
            if f.name == self.ts_field:
                col, unparsed = self._timestamps(col)
                reasons.append((unparsed & ~nulls, Reason.BAD_TIMESTAMP, f"field {f.name!r} is not a timestamp"))
            elif f.type == "float" and n:
                finite = pc.is_finite(col).to_numpy(zero_copy_only=False)
                reasons.append((~finite & ~nulls, Reason.NON_FINITE, f"field {f.name!r} is NaN or infinite"))
            columns[f.name] = col
        for mask, reason, detail in reasons:
            hit = mask & ~bad
            for j in np.flatnonzero(hit):
                dead.append(self._dead(batch, int(rows[j]), reason, detail))
            bad |= hit
        table = pa.table(columns)
        if bad.any():
            keep = np.flatnonzero(~bad)
            table, rows = table.take(pa.array(keep)), rows[keep]
        return table, rows

    def _timestamps(self, col: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
        """Event times as UTC microseconds, and a mask of values that could not be read."""
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if pa.types.is_floating(col.type):
            secs = col.to_numpy(zero_copy_only=False).astype(np.float64)
            unit = self.schema.event_time.unit
            scale = np.where(np.abs(secs) < _AUTO_SECONDS_BELOW, 1e6, 1e3) if unit == "auto" else (
                1e6 if unit == "s" else 1e3)
            us = secs * scale
            bad = ~np.isfinite(us) | (np.abs(us) > 9.2e18)
            us[bad | np.isnan(us)] = 0
            out = pa.array(us.astype(np.int64), TS_TYPE, mask=bad | np.isnan(secs))
            return out, bad & ~np.isnan(secs)
        try:
            parsed = pc.cast(col, TS_TYPE)
            return parsed, np.zeros(len(col), dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        # slower but forgiving: ISO variants, and epoch numbers that arrived as text next to strings
        text = pd.Series(col.to_pandas(), dtype=object)
        numeric = pd.to_numeric(text, errors="coerce")
        is_num = numeric.notna().to_numpy()
        parsed = pd.to_datetime(text.where(~is_num), utc=True, errors="coerce", format="ISO8601").dt.as_unit("us")
        if is_num.any():
            nums = numeric[is_num].to_numpy(dtype=np.float64)
            scale = np.where(np.abs(nums) < _AUTO_SECONDS_BELOW, 1e6, 1e3)
            parsed[is_num] = pd.to_datetime((nums * scale).astype(np.int64), unit="us", utc=True)
        out = pa.array(parsed, TS_TYPE)
        bad = parsed.isna().to_numpy() & text.notna().to_numpy()
        return out, bad

    # -- output --------------------------------------------------------------------------------------------
    def _to_frame(self, batch: RawBatch, table: pa.Table, rows: np.ndarray) -> pd.DataFrame:
        keys = batch.keys if len(rows) == len(batch) else [batch.keys[i] for i in rows.tolist()]
        try:
            key_col = pa.array(keys, pa.binary()).cast(pa.string())
        except pa.ArrowInvalid:  # a key that is not UTF-8: keep it readable rather than reject the event
            key_col = pa.array([k.decode("utf-8", "replace") if k is not None else None for k in keys], pa.string())
        meta = {
            "_partition": pa.array(batch.partitions[rows].astype(np.int32)),
            "_offset": pa.array(batch.offsets[rows].astype(np.int64)),
            "_kafka_ts": pa.array(batch.timestamps_ms[rows].astype(np.int64)),
            "_key": key_col,
        }
        for name, arr in meta.items():
            table = table.append_column(name, arr)
        if self.backend == "gpu":
            try:
                import cudf
            except ImportError as err:
                msg = "decode: backend 'gpu' needs cuDF (install environment.yml); use backend 'cpu' here"
                raise DecodeError(msg) from err
            return cudf.DataFrame.from_arrow(table)
        return table.to_pandas()

    @staticmethod
    def _dead(batch: RawBatch, i: int, reason: Reason, detail: str) -> DeadLetter:
        return DeadLetter(reason, detail, batch.topic, int(batch.partitions[i]), int(batch.offsets[i]),
                          batch.keys[i], batch.values[i])


def _ts_as_number(v: object) -> float | None:
    if v is None:
        return None
    return float(v) if not (isinstance(v, float) and math.isnan(v)) else math.nan


@lru_cache(maxsize=32)
def _decoder(schema_json: str, backend: str) -> Decoder:
    return Decoder(Schema.model_validate_json(schema_json), backend)


def decode_batch(batch: RawBatch, schema: Schema, backend: str = "cpu") -> Decoded:
    """Decode one micro-batch against ``schema`` (a cached :class:`Decoder` per schema and backend)."""
    return _decoder(schema.model_dump_json(), backend).decode(batch)
