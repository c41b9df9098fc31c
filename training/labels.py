"""Late ground truth: label files and records, the label store, the join with the lake, metrics per model version.

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

:class:`LabelStore` keeps them durably (the latest label of an event wins), :func:`join_predictions` finds their
stored predictions in the lake, :func:`metrics_by_version` scores each model version, and :func:`update_metrics`
writes the result as ``<labels_path>/metrics.json`` for the promotion gate and the dashboard.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streams.durable import atomic_write_bytes, atomic_writer, remove_durably
from streams.lake import MANIFEST, LakeError, read_manifest
from streams.schema import Schema
from streams.timestamps import TS_TYPE, values_to_ts

log = logging.getLogger(__name__)


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
#: what the store adds to each row: a number that orders every label ever added (later wins), and the wall time
STORED_SCHEMA = LABEL_SCHEMA.append(pa.field("seq", pa.int64())).append(pa.field("received_at", TS_TYPE))
#: one row per unusable input row: where it came from, which row (line, row number or Kafka offset), why, what
REJECT_SCHEMA = pa.schema([("source", pa.string()), ("row", pa.string()), ("reason", pa.string()),
                           ("record", pa.string())])
OFFSET_COLUMNS = ("partition", "offset")
KEY_COLUMNS = ("key", "event_time")
METRICS_FILE = "metrics.json"
_TRUE = {"1", "true", "t", "1.0"}
_FALSE = {"0", "false", "f", "0.0"}


class ParsedLabels(NamedTuple):
    """Usable labels (:data:`LABEL_SCHEMA` columns) and the rejected rows (:data:`REJECT_SCHEMA` columns)."""

    labels: pd.DataFrame
    rejects: pd.DataFrame


# -- parsing ----------------------------------------------------------------------------------------------
def empty_labels() -> pd.DataFrame:
    """A label frame with no rows and the right dtypes."""
    return _to_pandas(LABEL_SCHEMA.empty_table())


def empty_rejects() -> pd.DataFrame:
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
    return ParsedLabels(_to_pandas(table.filter(pa.array(ok))), rejects)


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


def _to_pandas(table: pa.Table) -> pd.DataFrame:
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
    return ParsedLabels(parsed.labels, _concat_rejects([undecodable, parsed.rejects]))


def _concat_rejects(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else empty_rejects()


# -- the store --------------------------------------------------------------------------------------------
_seq_lock = threading.Lock()
_last_seq = 0


def _next_seq(n: int) -> int:
    """The first of ``n`` increasing numbers, later than any handed out before in this process (~ns since epoch)."""
    global _last_seq
    with _seq_lock:
        first = max(time.time_ns(), _last_seq + 1)
        _last_seq = first + max(n, 1) - 1
        return first


class LabelStore:
    """Labels kept as durable Parquet files under ``root``; the latest label of an event wins.

    Each :meth:`add` writes one ``labels-<seq>-<id>.parquet`` file (fsync'd, renamed, directory fsync'd) and
    stamps its rows with increasing ``seq`` numbers. Once ``compact_min_files`` files exist they are merged into
    one (latest label per event only), the merged file first and the inputs deleted after, so a crash in
    between leaves duplicates that :meth:`read` resolves the same way. Rejected rows go to ``rejects/``.

    >>> import tempfile
    >>> store = LabelStore(tempfile.mkdtemp())
    >>> first = parse_labels(pd.DataFrame({"partition": [0, 0], "offset": [1, 2], "label": [0, 1]})).labels
    >>> later = parse_labels(pd.DataFrame({"partition": [0], "offset": [1], "label": [1]})).labels
    >>> store.add(first), store.add(later), store.count_rows()
    (2, 1, 3)
    >>> store.read()[["offset", "label"]].values.tolist()
    [[2, 1], [1, 1]]
    """

    def __init__(self, root: str | os.PathLike[str], *, compact_min_files: int = 64) -> None:
        if compact_min_files < 2:
            msg = f"labels: compact_min_files must be >= 2, got {compact_min_files}"
            raise LabelError(msg)
        self.root = Path(root)
        self.compact_min_files = compact_min_files
        try:
            (self.root / "rejects").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            msg = f"labels: cannot create the label store {self.root}: {err}"
            raise LabelError(msg) from err

    def files(self) -> list[Path]:
        """The label files, oldest first."""
        return sorted(self.root.glob("labels-*.parquet"))

    def add(self, labels: pd.DataFrame) -> int:
        """Append normalised labels (:func:`parse_labels` output) durably; returns the rows written."""
        missing = [c for c in LABEL_SCHEMA.names if c not in labels.columns]
        if missing:
            msg = f"labels: LabelStore.add needs the columns {LABEL_SCHEMA.names}; missing {missing}"
            raise LabelError(msg)
        if labels.empty:
            return 0
        n = len(labels)
        first = _next_seq(n)
        frame = labels[LABEL_SCHEMA.names].reset_index(drop=True).copy()
        frame["seq"] = np.arange(first, first + n, dtype=np.int64)
        frame["received_at"] = pd.Timestamp(first // 1000, unit="us", tz="UTC")
        try:
            table = pa.Table.from_pandas(frame, schema=STORED_SCHEMA, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError) as err:
            msg = f"labels: cannot store the labels (use parse_labels first): {err}"
            raise LabelError(msg) from err
        self._write(self.root / f"labels-{first:020d}-{uuid.uuid4().hex[:8]}.parquet", table)
        if len(self.files()) >= self.compact_min_files:
            self.compact()
        return n

    def add_rejects(self, rejects: pd.DataFrame) -> int:
        """Keep rejected rows (:data:`REJECT_SCHEMA` columns) in ``rejects/``; returns the rows written."""
        if rejects.empty:
            return 0
        table = pa.Table.from_pandas(rejects[REJECT_SCHEMA.names].astype(str), schema=REJECT_SCHEMA,
                                     preserve_index=False)
        self._write(self.root / "rejects" / f"rejects-{_next_seq(1):020d}-{uuid.uuid4().hex[:8]}.parquet", table)
        return len(rejects)

    def read_rejects(self) -> pd.DataFrame:
        """Every rejected row kept so far."""
        files = sorted((self.root / "rejects").glob("rejects-*.parquet"))
        return _concat_rejects([pq.read_table(f).to_pandas() for f in files])

    def count_rows(self) -> int:
        """Rows in the label files, superseded labels included (from the footers)."""
        return sum(pq.read_metadata(f).num_rows for f in self.files())

    def read(self) -> pd.DataFrame:
        """The latest label of every event (by ``seq``), oldest first; :data:`STORED_SCHEMA` columns."""
        table = self._read_all()
        return _latest(_to_pandas(table)) if table.num_rows else _to_pandas(STORED_SCHEMA.empty_table())

    def compact(self) -> bool:
        """Merge every label file into one holding the latest label per event; False if another process is."""
        lock = os.open(self.root / "_store.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            files = self.files()
            if len(files) < 2:
                return False
            tables = [pq.read_table(f) for f in files]
            merged = _latest(_to_pandas(pa.concat_tables(tables)))
            table = pa.Table.from_pandas(merged, schema=STORED_SCHEMA, preserve_index=False)
            first = int(merged["seq"].min())
            self._write(self.root / f"labels-{first:020d}-{uuid.uuid4().hex[:8]}.parquet", table)
            remove_durably(files)  # only once the merged file is durable: see the class docstring
            return True
        except (OSError, pa.ArrowException) as err:
            msg = f"labels: cannot compact {self.root}: {err}"
            raise LabelError(msg) from err
        finally:
            os.close(lock)

    def _write(self, path: Path, table: pa.Table) -> None:
        try:
            with atomic_writer(path) as fh:
                pq.write_table(table, fh, compression="zstd")
        except (OSError, pa.ArrowException) as err:
            msg = f"labels: cannot write {path}: {err}"
            raise LabelError(msg) from err

    def _read_all(self) -> pa.Table:
        for _ in range(5):
            try:
                tables = [pq.read_table(f, schema=STORED_SCHEMA) for f in self.files()]
            except FileNotFoundError:
                continue  # a compaction replaced the files while we listed them: list again
            except (OSError, pa.ArrowException) as err:
                msg = f"labels: cannot read the label store {self.root}: {err}"
                raise LabelError(msg) from err
            return pa.concat_tables(tables) if tables else STORED_SCHEMA.empty_table()
        msg = f"labels: files under {self.root} kept disappearing while reading"
        raise LabelError(msg)


def _latest(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per event (Kafka coordinates, or key + time): the one with the highest ``seq``."""
    frame = frame.sort_values("seq", kind="stable")
    by_offset = frame["partition"].notna()
    parts = [frame[by_offset].drop_duplicates(list(OFFSET_COLUMNS), keep="last"),
             frame[~by_offset].drop_duplicates(list(KEY_COLUMNS), keep="last")]
    return pd.concat(parts).sort_values("seq", kind="stable").reset_index(drop=True)


# -- join with the lake -----------------------------------------------------------------------------------
class JoinResult(NamedTuple):
    """The labelled events with their stored predictions, and the labels no lake row matched (yet)."""

    matched: pd.DataFrame
    unmatched: pd.DataFrame
    #: labels whose event also has a later label given the other way (coordinates vs key + time)
    superseded: int


def lake_files(lake_root: str | os.PathLike[str], days: Sequence[dt.date] | None = None) -> list[Path]:
    """The data files the lake's day manifests list (all days, or ``days``); folders without one are skipped."""
    root = Path(lake_root)
    if days is None:
        folders = sorted(d for d in root.glob("date=*") if d.is_dir())
    else:
        folders = [root / f"date={d.isoformat()}" for d in sorted(set(days))]
    out: list[Path] = []
    for day in folders:
        if (day / MANIFEST).is_file():  # a folder without one is a writer's first flush in progress
            out += [day / str(e["name"]) for e in read_manifest(day)["files"]]
    return out


_PREDICTION_COLUMNS = ("kafka_partition", "kafka_offset", "score", "is_anomaly", "model_version")


def join_predictions(
    lake_root: str | os.PathLike[str],
    labels: pd.DataFrame,
    *,
    key_field: str | None,
    time_field: str,
    days: Sequence[dt.date] | None = None,
) -> JoinResult:
    """Join labels (:meth:`LabelStore.read` or :func:`parse_labels` output) with the predictions in the lake.

    Reads only manifest-listed files (of ``days``, default all) with DuckDB. ``matched`` has one row per
    labelled lake event: ``kafka_partition, kafka_offset, <key_field>, <time_field>, score, threshold,
    is_anomaly, model_version, label``. Several lake rows with one key and time take the label on the last
    (highest partition, offset) only; an event labelled both ways keeps its latest label. Labels no lake row
    matches (not written yet, or wrong) are returned in ``unmatched``.
    """
    import duckdb  # here: reading and storing labels works without it

    missing = [c for c in LABEL_SCHEMA.names if c not in labels.columns]
    if missing:
        msg = f"labels: join_predictions needs the label columns {LABEL_SCHEMA.names}; missing {missing}"
        raise LabelError(msg)
    labels = labels.reset_index(drop=True)
    # without the store's seq, a later row of the frame counts as the later label
    seq = labels["seq"] if "seq" in labels.columns else pd.Series(np.arange(len(labels)), dtype=np.int64)
    table = pa.Table.from_pandas(labels[LABEL_SCHEMA.names].assign(seq=seq), preserve_index=False,
                                 schema=LABEL_SCHEMA.append(pa.field("seq", pa.int64())))
    table = table.append_column("_lid", pa.array(np.arange(len(labels), dtype=np.int64)))
    for attempt in range(3):
        files = [str(f) for f in lake_files(lake_root, days)]
        if not files or not len(labels):
            return JoinResult(_empty_matched(key_field, time_field), labels, 0)
        con = duckdb.connect()
        try:
            con.register("labels", table)
            con.read_parquet(files, union_by_name=True, hive_partitioning=False).create_view("lake")
            have = {row[0] for row in con.execute("DESCRIBE lake").fetchall()}
            missing = [c for c in _PREDICTION_COLUMNS if c not in have]
            if time_field not in have:
                missing.append(time_field)
            if missing:
                msg = f"labels: the lake {lake_root} lacks the columns {missing} (it has {sorted(have)})"
                raise LabelError(msg)
            joined = con.execute(_join_sql(key_field if key_field in have else None, time_field,
                                           "threshold" in have)).df()
            break
        except duckdb.IOException as err:
            if attempt == 2:  # a compaction swapped files under us three times: give up and say so
                msg = f"lake: cannot read {lake_root} for the label join: {err}"
                raise LakeError(msg) from err
        except duckdb.Error as err:  # e.g. a time column that is not a timestamp
            msg = f"lake: cannot join labels with {lake_root} (key {key_field!r}, time {time_field!r}): {err}"
            raise LakeError(msg) from err
        finally:
            con.close()
    lids = joined.pop("_lid").to_numpy()
    all_lids = joined.pop("_all_lids")
    hit = np.zeros(len(labels), dtype=bool)
    for group in all_lids:
        hit[np.asarray(group, dtype=np.int64)] = True
    superseded = int(hit.sum()) - len(lids)
    joined[time_field] = pd.to_datetime(joined.pop("_time_us"), unit="us", utc=True)
    if key_field:  # absent from the lake, it comes back empty: only offset labels can match then
        joined = joined.rename(columns={"_key": key_field})
    joined["label"] = joined["label"].astype(np.int8)
    joined["is_anomaly"] = joined["is_anomaly"].astype(bool)
    order = ["kafka_partition", "kafka_offset", *([key_field] if key_field else []), time_field, "score",
             "threshold", "is_anomaly", "model_version", "label"]
    matched = joined[order].sort_values(["kafka_partition", "kafka_offset"]).reset_index(drop=True)
    return JoinResult(matched, labels.loc[~hit].reset_index(drop=True), superseded)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _join_sql(key_field: str | None, time_field: str, has_threshold: bool) -> str:
    """The label join over the views ``labels`` and ``lake``; names come from the config, so they are quoted."""
    t = _quote(time_field)
    key = f"CAST({_quote(key_field)} AS VARCHAR)" if key_field else "CAST(NULL AS VARCHAR)"
    threshold = "threshold" if has_threshold else "CAST(NULL AS DOUBLE)"
    # one lake row per label (the last of equal key + time), then one label per lake row (the latest).
    # epoch_ns // 1000: epoch_us has no TIMESTAMPTZ_NS overload, and a cast would round where labels truncate
    return f"""
        WITH lake_rows AS (
            SELECT kafka_partition, kafka_offset, {key} AS _key, epoch_ns({t}) // 1000 AS _time_us, score,
                   {threshold} AS threshold, is_anomaly, model_version FROM lake),
        by_offset AS (
            SELECT r.*, l.label, l.seq, l._lid FROM labels l JOIN lake_rows r
              ON l."partition" IS NOT NULL AND r.kafka_partition = l."partition" AND r.kafka_offset = l."offset"),
        by_key AS (
            SELECT r.*, l.label, l.seq, l._lid FROM labels l JOIN lake_rows r
              ON l."partition" IS NULL AND r._key = l."key" AND r._time_us = epoch_us(l.event_time)
            QUALIFY row_number() OVER (PARTITION BY l._lid ORDER BY r.kafka_partition DESC,
                                       r.kafka_offset DESC) = 1),
        found AS (SELECT * FROM by_offset UNION ALL SELECT * FROM by_key)
        SELECT kafka_partition, kafka_offset, _key, _time_us, score, threshold,
               is_anomaly, model_version, label, _lid,
               list(_lid) OVER (PARTITION BY kafka_partition, kafka_offset) AS _all_lids
        FROM found
        QUALIFY row_number() OVER (PARTITION BY kafka_partition, kafka_offset ORDER BY seq DESC) = 1
    """


def _empty_matched(key_field: str | None, time_field: str) -> pd.DataFrame:
    cols: dict[str, Any] = {"kafka_partition": pd.Series(dtype=np.int64), "kafka_offset": pd.Series(dtype=np.int64)}
    if key_field:
        cols[key_field] = pd.Series(dtype=object)
    cols.update({time_field: pd.Series(dtype=pd.DatetimeTZDtype("us", "UTC")),
                 "score": pd.Series(dtype=np.float64), "threshold": pd.Series(dtype=np.float64),
                 "is_anomaly": pd.Series(dtype=bool), "model_version": pd.Series(dtype=object),
                 "label": pd.Series(dtype=np.int8)})
    return pd.DataFrame(cols)


# -- metrics ----------------------------------------------------------------------------------------------
def _metrics(label: np.ndarray, score: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

    n, positives = len(label), int(label.sum())
    out: dict[str, Any] = {"n": n, "positives": positives, "flagged": int(flagged.sum())}

    def defined(v: float) -> float | None:
        return None if np.isnan(v) else float(v)

    # zero_division=nan: no flagged events (precision) or no positives (recall) is "undefined", not 0
    out["precision"] = defined(precision_score(label, flagged, zero_division=np.nan)) if n else None
    out["recall"] = defined(recall_score(label, flagged, zero_division=np.nan)) if n else None
    two_classes = 0 < positives < n
    out["ap"] = float(average_precision_score(label, score)) if two_classes else None
    out["auc"] = float(roc_auc_score(label, score)) if two_classes else None
    return out


def metrics_by_version(joined: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per ``model_version``, and for ``"all"`` rows together: ``n, positives, flagged, precision, recall, ap, auc``.

    ``precision`` and ``recall`` judge the stored decision (``is_anomaly``, the threshold of the time);
    ``ap`` (average precision) and ``auc`` (ROC AUC) rank by ``score``. All four come from scikit-learn.
    ``ap`` and ``auc`` are ``None`` when only one class is present (every label 0, or every label 1), as
    neither is defined then; ``precision`` is ``None`` with no flagged event, ``recall`` with no positive.

    >>> m = metrics_by_version(pd.DataFrame({"model_version": ["v1"] * 4, "label": [0, 0, 1, 1],
    ...                                      "score": [0.1, 0.4, 0.35, 0.8], "is_anomaly": [0, 0, 0, 1]}))
    >>> m["v1"]["auc"], m["v1"]["precision"], m["v1"]["recall"], m["all"]["n"]
    (0.75, 1.0, 0.5, 4)
    """
    missing = [c for c in ("model_version", "label", "score", "is_anomaly") if c not in joined.columns]
    if missing:
        msg = f"labels: metrics_by_version needs the columns {missing} (it has {list(joined.columns)})"
        raise LabelError(msg)

    def of(rows: pd.DataFrame) -> dict[str, Any]:
        return _metrics(rows["label"].to_numpy(dtype=np.int64), rows["score"].to_numpy(dtype=np.float64),
                        rows["is_anomaly"].to_numpy(dtype=bool).astype(np.int64))

    out = {str(v): of(rows) for v, rows in joined.groupby("model_version", sort=True)}
    out["all"] = of(joined)
    return out


class LabelsSettings(Protocol):
    """What :func:`update_metrics` reads of the configuration (``engine.config.Config`` has it)."""

    @property
    def labels_path(self) -> Path: ...

    @property
    def lake(self) -> _HasPath: ...

    @property
    def schema(self) -> Schema: ...


class _HasPath(Protocol):
    @property
    def path(self) -> Path: ...


def update_metrics(cfg: LabelsSettings, *, days: Sequence[dt.date] | None = None) -> dict[str, Any]:
    """Read the label store, join it with the lake, write ``<labels_path>/metrics.json`` atomically; return it.

    The document: ``{"updated_at", "labels", "matched", "unmatched", "superseded", "versions": {version or
    "all": metrics}}`` (see :func:`metrics_by_version`).
    """
    labels = LabelStore(cfg.labels_path).read()
    result = join_predictions(cfg.lake.path, labels, key_field=cfg.schema.key,
                              time_field=cfg.schema.event_time.field, days=days)
    doc = {
        "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "labels": len(labels),
        "matched": len(result.matched),
        "unmatched": len(result.unmatched),
        "superseded": result.superseded,
        "versions": metrics_by_version(result.matched),
    }
    try:
        atomic_write_bytes(Path(cfg.labels_path) / METRICS_FILE, json.dumps(doc, indent=1).encode() + b"\n")
    except OSError as err:
        msg = f"labels: cannot write {Path(cfg.labels_path) / METRICS_FILE}: {err}"
        raise LabelError(msg) from err
    return doc


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The metrics document at ``path`` (the file, or the label store folder holding it); None if none yet."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    try:
        doc = json.loads(p.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        msg = f"labels: cannot read {p}: {err}"
        raise LabelError(msg) from err
    if not isinstance(doc, dict) or not isinstance(doc.get("versions"), dict):
        msg = f"labels: {p} is not a metrics document (no 'versions' mapping)"
        raise LabelError(msg)
    return doc

