"""Reading one day of the lake from anywhere pyarrow reaches: a local folder or a URL (``s3://``, ``gs://``,
``hdfs://``, ``file://``), for batch jobs that run on workers which share no disk with the engine.

The writer (:mod:`streams.lake`) is local; this side only reads, through ``pyarrow.fs``, so a job reads the
same manifest-listed files on a laptop and against object storage. A day's files are grouped by Kafka
partition and ordered by offset: a key's events all lie in one partition, so a job that walks each partition's
files in order sees every key's history in arrival order, as the stream did.

>>> import tempfile, pandas as pd
>>> from streams.lake import LakeWriter, close_day
>>> root = tempfile.mkdtemp()
>>> w = LakeWriter(root, time_field="t")
>>> w.write(pd.DataFrame({"t": pd.to_datetime(["2026-11-24T10:00:00Z"] * 3), "v": [1.0, 2.0, 3.0],
...                       "kafka_partition": [0, 1, 0], "kafka_offset": [5, 9, 6]})) and close_day(root, "2026-11-24")
True
>>> day = read_day(root, "2026-11-24")
>>> day.rows, day.closed, sorted(day.partitions), read_partition(root, day.partitions[0], ["v"]).column("v").to_pylist()
(3, True, [0, 1], [1.0, 3.0])
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from streams.lake import MANIFEST, LakeError


@dataclass(frozen=True)
class LakeDay:
    """What a day's manifest says: its files per partition (offset order), rows, and whether it is closed."""

    date: str
    partitions: dict[int, list[str]] = field(default_factory=dict)  # paths as the file system names them
    rows: int = 0
    closed: bool = False
    rows_after_close: int = 0
    fingerprint: str = ""  # sha256 of the listed files (name, rows, bytes): the day's content, cheaply


def filesystem(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The file system and the path within it of a lake root (a local path or a URL)."""
    text = os.fspath(root)
    if "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(text)
    try:
        return pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, ValueError) as err:
        msg = f"lake: cannot open {text!r}: {err}"
        raise LakeError(msg) from None


def _day_name(date: str | dt.date) -> str:
    return f"date={date.isoformat() if isinstance(date, dt.date) else date}"


def read_day(root: str | os.PathLike[str], date: str | dt.date) -> LakeDay:
    """The manifest of one day; :class:`LakeError` naming the path when the day has no data."""
    fs, base = filesystem(root)
    day = f"{base.rstrip('/')}/{_day_name(date)}"
    try:
        with fs.open_input_stream(f"{day}/{MANIFEST}") as fh:
            doc: dict[str, Any] = json.loads(fh.read())
    except FileNotFoundError:
        msg = f"lake: no data for {date}: {day}/{MANIFEST} does not exist"
        raise LakeError(msg) from None
    except (OSError, ValueError, pa.ArrowException) as err:
        msg = f"lake: cannot read {day}/{MANIFEST}: {err}"
        raise LakeError(msg) from None
    files = sorted(doc.get("files", []), key=lambda e: (int(e["partition"]), int(e["first_offset"])))
    parts: dict[int, list[str]] = {}
    for e in files:
        parts.setdefault(int(e["partition"]), []).append(f"{day}/{e['name']}")
    digest = hashlib.sha256(json.dumps([(e["name"], e["rows"], e["bytes"]) for e in files]).encode()).hexdigest()
    rows = int(doc.get("rows", sum(int(e["rows"]) for e in files)))
    closed = bool(doc.get("closed", False))
    after = max(rows - int(doc.get("rows_at_close", rows)), 0) if closed else 0
    return LakeDay(str(doc.get("date", date)), parts, rows, closed, after, digest)


def read_partition(root: str | os.PathLike[str], paths: list[str], columns: list[str] | None = None, *,
                   dictionary: list[str] | None = None) -> pa.Table:
    """The rows of one partition's files of a day, in offset order, with only those of ``columns`` each file
    has (older files may lack newer columns); ``dictionary`` columns come dictionary-encoded (a key column is
    then coded per distinct value, not per row)."""
    fs, _ = filesystem(root)

    def read(path: str) -> pa.Table:
        if columns is None:
            return pq.read_table(path, filesystem=fs, read_dictionary=dictionary)
        f = pq.ParquetFile(path, filesystem=fs, read_dictionary=dictionary)
        have = set(f.schema_arrow.names)
        return f.read(columns=[c for c in columns if c in have])

    try:
        tables = [read(p) for p in paths]
    except FileNotFoundError as err:
        msg = f"lake: a listed file is gone ({err}); is a compaction running on this day?"
        raise LakeError(msg) from None
    except (OSError, pa.ArrowException) as err:
        msg = f"lake: cannot read {paths[0] if paths else root}: {err}"
        raise LakeError(msg) from None
    if not tables:
        return pa.table({c: [] for c in columns or []})
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
