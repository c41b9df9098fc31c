"""Reports over the lake: events, alarms and anomalies per key and day, ISO week or month.

The lake (:mod:`streams.lake`) keeps one folder per event-time day in the lake's time zone, so a report never
converts a timestamp: each day is counted by its own task (DuckDB over the files that day's manifest lists,
grouped by the ``by`` fields), and the caller sums the small per-day partials and maps each day to its period.
With a Dask ``client`` the day tasks run on the cluster (``client.map``; the workers read the lake, so they
must see the same path), without one they run here, one after the other (DuckDB uses every core per day).

The lake may be a local folder or an fsspec URL (``memory://``, ``s3://`` with s3fs installed, ...): the
manifests are read with fsspec and the filesystem is handed to DuckDB.

A period's counts only cover the days inside ``[start, end]``: a report from a Wednesday to a Sunday has a
partial first week (its ``period_start`` is still that week's Monday).

>>> period_start(dt.date(2026, 12, 3), "week"), period_start(dt.date(2026, 12, 3), "month")
(datetime.date(2026, 11, 30), datetime.date(2026, 12, 1))
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import zoneinfo
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import duckdb
import fsspec
import pandas as pd
from fsspec.implementations.local import LocalFileSystem

from streams.lake import MANIFEST, LakeError

if TYPE_CHECKING:
    import distributed
    from fsspec import AbstractFileSystem

Period = Literal["day", "week", "month"]
PERIODS: tuple[str, ...] = get_args(Period)
COUNTS = ("events", "alarms", "anomalies")
#: the columns of a report after its ``by`` fields
COLUMNS = ("period_start", *COUNTS, "alarm_rate", "anomaly_rate")
_DAY_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
# a compaction may delete a listed file between our manifest read and DuckDB's open: read the manifest again
_READ_TRIES = 3


class ReportError(RuntimeError):
    """A report was asked for wrongly (range, period, fields) or over a range without data."""


class NoEvents(ReportError):
    """The range holds no events, or the lake is not there (yet): an empty answer to a caller that can show one."""


# -- days and periods -----------------------------------------------------------------------------------------
def period_start(day: dt.date, period: str) -> dt.date:
    """The first day of the period holding ``day``: the day itself, its ISO week's Monday or its month's 1st."""
    if period == "day":
        return day
    if period == "week":
        return day - dt.timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    msg = f"report: unknown period {period!r} (use one of {', '.join(PERIODS)})"
    raise ReportError(msg)


def period_end(day: dt.date, period: str) -> dt.date:
    """The last day of the period holding ``day``.

    >>> period_end(dt.date(2026, 2, 10), "month"), period_end(dt.date(2026, 12, 3), "week")
    (datetime.date(2026, 2, 28), datetime.date(2026, 12, 6))
    """
    first = period_start(day, period)
    if period == "day":
        return first
    if period == "week":
        return first + dt.timedelta(days=6)
    return (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)


def parse_day(text: str, tz: str, *, now: dt.datetime | None = None) -> dt.date:
    """``YYYY-MM-DD``, ``today`` or ``yesterday`` (the calendar of ``tz``, the lake's time zone) as a date.

    >>> now = dt.datetime(2026, 12, 1, 0, 30, tzinfo=dt.timezone.utc)
    >>> parse_day("2026-11-30", "UTC"), parse_day("today", "UTC", now=now)
    (datetime.date(2026, 11, 30), datetime.date(2026, 12, 1))
    >>> parse_day("yesterday", "America/New_York", now=now)  # still Nov 30 in New York
    datetime.date(2026, 11, 29)
    """
    try:
        zone = zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        msg = f"report: time zone {tz!r} is not an IANA name (such as 'UTC' or 'Europe/Berlin')"
        raise ReportError(msg) from None
    word = text.strip().lower()
    if word in ("today", "yesterday"):
        today = (now or dt.datetime.now(dt.timezone.utc)).astimezone(zone).date()
        return today if word == "today" else today - dt.timedelta(days=1)
    try:
        return dt.date.fromisoformat(word)
    except ValueError:
        msg = f"report: day {text!r} is not YYYY-MM-DD, 'today' or 'yesterday'"
        raise ReportError(msg) from None


# -- the lake through fsspec ----------------------------------------------------------------------------------
def _filesystem(lake: str) -> tuple[AbstractFileSystem, str]:
    try:
        fs, root = fsspec.core.url_to_fs(lake)
    except (ImportError, ValueError) as err:  # an unknown protocol, or its package is not installed
        msg = f"report: cannot open lake {lake!r}: {err}"
        raise ReportError(msg) from err
    return fs, str(root).rstrip("/")


def lake_days(lake: str, start: dt.date, end: dt.date) -> list[dt.date]:
    """The days in ``[start, end]`` that have a folder in the lake; :class:`NoEvents` if the lake is missing."""
    fs, root = _filesystem(lake)
    try:
        names = fs.ls(root, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        msg = f"report: lake {lake!r} does not exist (or is not a folder)"
        raise NoEvents(msg) from None
    except OSError as err:
        msg = f"lake: cannot list {lake!r}: {err}"
        raise LakeError(msg) from err
    days = []
    for name in names:
        m = _DAY_DIR.match(str(name).rstrip("/").rsplit("/", 1)[-1])
        if m is None:
            continue  # windows/, _state/, _dead_letter/ ... live beside the days
        try:
            day = dt.date.fromisoformat(m[1])
        except ValueError:
            continue
        if start <= day <= end:
            days.append(day)
    return sorted(days)


T = TypeVar("T")


def query_live_files(fs: AbstractFileSystem, day_dirs: Sequence[str], read: Callable[[list[str]], T], *,
                     empty: T, what: str) -> T:
    """``read(paths)`` over the files the days' manifests list (DuckDB's paths: URLs off the local disk), or
    ``empty`` when they list none.

    A compaction may swap a day's files between the listing and DuckDB's open: a DuckDB ``IOException`` while a
    listed file is gone lists them again, up to :data:`_READ_TRIES` times, then raises :class:`LakeError`
    (naming ``what``). Other DuckDB errors propagate.
    """
    local = isinstance(fs, LocalFileSystem)
    for _ in range(_READ_TRIES):
        files = [f for d in day_dirs for f in _live_files(fs, d)]
        if not files:
            return empty
        try:
            return read(files if local else [fs.unstrip_protocol(p) for p in files])
        except duckdb.IOException:
            if all(fs.exists(p) for p in files):
                raise
    msg = f"lake: the files of {what} kept disappearing while reading (is a compaction looping?)"
    raise LakeError(msg)


def _live_files(fs: AbstractFileSystem, day_dir: str) -> list[str]:
    """The data files the day's manifest lists (a folder without one: every visible Parquet file)."""
    path = f"{day_dir}/{MANIFEST}"
    try:
        doc = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return sorted(p for p in fs.glob(f"{day_dir}/*.parquet")
                      if not str(p).rsplit("/", 1)[-1].startswith(("_", ".")))
    except (OSError, ValueError) as err:
        msg = f"lake: cannot read manifest {path}: {err}"
        raise LakeError(msg) from err
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        msg = f"lake: manifest {path} has no 'files' list"
        raise LakeError(msg)
    return [f"{day_dir}/{e['name']}" for e in doc["files"]]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- one day --------------------------------------------------------------------------------------------------
def day_counts(
    lake: str,
    day: dt.date,
    by: Sequence[str],
    alarm_field: str | None,
    anomaly_field: str = "is_anomaly",
    key_field: str | None = None,
    key: str | None = None,
) -> pd.DataFrame:
    """One day's ``[*by, events, alarms, anomalies]``, from the files its manifest lists (the per-day task).

    With ``key_field`` only the rows whose ``key_field`` (as text) equals ``key`` are counted. Without an
    ``alarm_field`` the ``alarms`` column is 0. Raises :class:`ReportError` for a field the day's files lack.
    """
    fs, root = _filesystem(lake)
    day_dir = f"{root}/date={day.isoformat()}"
    con = duckdb.connect()
    local = isinstance(fs, LocalFileSystem)
    if not local:
        con.register_filesystem(fs)
    try:
        return query_live_files(
            fs, [day_dir], lambda paths: _query(con, paths, day, by, alarm_field, anomaly_field, key_field, key),
            empty=pd.DataFrame({c: pd.Series(dtype="int64") for c in (*by, *COUNTS)}),
            what=f"date={day} in {lake!r}")
    except duckdb.Error as err:
        msg = f"lake: cannot read date={day} of {lake!r}: {err}"
        raise LakeError(msg) from err
    finally:
        con.close()


def _query(con: duckdb.DuckDBPyConnection, paths: list[str], day: dt.date, by: Sequence[str],
           alarm_field: str | None, anomaly_field: str, key_field: str | None, key: str | None) -> pd.DataFrame:
    source = "read_parquet($files, union_by_name = true)"
    types = {str(row[0]): str(row[1]) for row in con.execute(f"DESCRIBE SELECT * FROM {source}",
                                                              {"files": paths}).fetchall()}
    unknown = [f for f in (*by, key_field) if f is not None and f not in types]
    if unknown:
        msg = f"report: unknown field(s) {unknown} in the lake on date={day}; it has {sorted(types)}"
        raise ReportError(msg)
    for role, field in (("alarm_field", alarm_field), ("anomaly_field", anomaly_field)):
        if field is None:
            continue
        if field not in types:
            msg = f"report: {role} {field!r} is not a column of the lake on date={day}; it has {sorted(types)}"
            raise ReportError(msg)
        if types[field] != "BOOLEAN":
            msg = f"report: {role} {field!r} must be a bool column, it is {types[field]} on date={day}"
            raise ReportError(msg)
    alarms = f"count_if({_quote(alarm_field)})" if alarm_field else "0"
    select = [*(_quote(f) for f in by), "count(*)::BIGINT AS events", f"{alarms}::BIGINT AS alarms",
              f"count_if({_quote(anomaly_field)})::BIGINT AS anomalies"]
    params: dict[str, Any] = {"files": paths}
    where = ""
    if key_field is not None:
        where, params["key"] = f"WHERE CAST({_quote(key_field)} AS VARCHAR) = $key", str(key)
    sql = f"SELECT {', '.join(select)} FROM {source} {where} GROUP BY ALL"
    frame = con.execute(sql, params).df()
    return frame[frame["events"] > 0].reset_index(drop=True)  # no `by`: one row, even over no rows


# -- the report -----------------------------------------------------------------------------------------------
def _check(start: dt.date, end: dt.date, period: str, by: Sequence[str]) -> None:
    if period not in PERIODS:
        msg = f"report: unknown period {period!r} (use one of {', '.join(PERIODS)})"
        raise ReportError(msg)
    if start > end:
        msg = f"report: start {start} is after end {end}"
        raise ReportError(msg)
    clash = [f for f in by if f in COLUMNS or f == "date"]
    if clash or len(set(by)) != len(by):
        msg = f"report: by {list(by)} must name distinct fields other than {['date', *COLUMNS]}"
        raise ReportError(msg)


def _partials(lake: str, days: list[dt.date], client: distributed.Client | None,
              progress: Callable[[int, int], None] | None, **kw: Any) -> list[pd.DataFrame]:
    """Each day's counts (with a ``date`` column), computed here or on the cluster."""
    out: list[pd.DataFrame] = []

    def keep(day: dt.date, frame: pd.DataFrame) -> None:
        out.append(frame.assign(date=day))
        if progress is not None:
            progress(len(out), len(days))

    if progress is not None:
        progress(0, len(days))

    if client is None:
        for day in days:
            keep(day, day_counts(lake, day, **kw))
        return out
    from distributed import as_completed

    # pure=False: a report of today must read today's files again, not reuse a cached result
    # the arguments go in a partial: map's own keywords (key=, workers=, ...) would swallow a same-named one
    futures = client.map(functools.partial(day_counts, lake, **kw), days, pure=False)
    day_of = {f.key: day for f, day in zip(futures, days, strict=True)}
    try:
        for future in as_completed(futures):
            keep(day_of[future.key], future.result())
    finally:
        client.cancel(futures)  # after an error, the others need not run on
    return out


def _combine(partials: list[pd.DataFrame], by: Sequence[str], period: str) -> pd.DataFrame:
    frames = [p for p in partials if not p.empty]
    keys = [*by, "period_start"]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c in COUNTS else "object") for c in (*by, *COLUMNS)})
    frame = pd.concat(frames, ignore_index=True)
    frame["period_start"] = [period_start(d, period) for d in frame["date"]]
    # dropna=False: events whose key is null are counted too, in a group of their own
    summed = frame.groupby(keys, dropna=False, sort=False)[list(COUNTS)].sum().reset_index()
    summed = summed.astype(dict.fromkeys(COUNTS, "int64"))
    summed["alarm_rate"] = summed["alarms"] / summed["events"]
    summed["anomaly_rate"] = summed["anomalies"] / summed["events"]
    summed = summed.sort_values(["period_start", *by], kind="stable", ignore_index=True)
    return summed[[*by, *COLUMNS]]


def build_report(
    lake: str | os.PathLike[str],
    *,
    start: dt.date,
    end: dt.date,
    by: Sequence[str],
    period: Period,
    alarm_field: str | None,
    anomaly_field: str = "is_anomaly",
    client: distributed.Client | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Counts per ``by`` and period over the lake days in ``[start, end]``.

    Returns ``[*by, period_start, events, alarms, anomalies, alarm_rate, anomaly_rate]`` sorted by
    ``period_start`` then ``by``; ``period_start`` is a :class:`datetime.date`. ``alarms`` counts the true
    values of ``alarm_field`` (0 without one), ``anomalies`` those of ``anomaly_field``. ``lake`` is a folder or
    an fsspec URL; ``progress(done, total)`` is called before the first day and after each day is counted
    (``total``: the day folders found in the range). Raises :class:`ReportError` for a
    bad range, period or field and for a range without events.
    """
    by = list(by)
    _check(start, end, period, by)
    url = _lake_str(lake)
    days = lake_days(url, start, end)
    partials = _partials(url, days, client, progress, by=by, alarm_field=alarm_field,
                         anomaly_field=anomaly_field)
    report = _combine(partials, by, period)
    if report.empty:
        msg = f"report: no events in the lake {url!r} from {start} to {end} ({len(days)} day folder(s) found)"
        raise NoEvents(msg)
    return report


def key_report(
    lake: str | os.PathLike[str],
    *,
    key_field: str,
    key: str,
    day: dt.date,
    period: Period,
    alarm_field: str | None,
    anomaly_field: str = "is_anomaly",
    client: distributed.Client | None = None,
) -> dict[str, Any]:
    """One key's counts over the whole period holding ``day``, as a JSON-able ``{"kind": "report", ...}`` dict.

    What the engine's rate trigger publishes on the ``reports`` topic. A key without events in the lake (its
    events may not be flushed yet) gets zero counts and null rates; a missing lake raises :class:`ReportError`.
    """
    first, last = period_start(day, period), period_end(day, period)
    url = _lake_str(lake)
    days = lake_days(url, first, last)
    partials = _partials(url, days, client, None, by=[], alarm_field=alarm_field, anomaly_field=anomaly_field,
                         key_field=key_field, key=key)
    totals = {c: int(sum(int(p[c].sum()) for p in partials)) for c in COUNTS}
    events = totals["events"]
    return {
        "kind": "report",
        "key_field": key_field,
        "key": key,
        "period": period,
        "period_start": first.isoformat(),
        "period_end": last.isoformat(),
        **totals,
        "alarm_rate": totals["alarms"] / events if events else None,
        "anomaly_rate": totals["anomalies"] / events if events else None,
        "alarm_field": alarm_field,
        "days": len(days),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
    }


def report_records(report: pd.DataFrame) -> list[dict[str, Any]]:
    """A report's rows as JSON-able dicts (``period_start`` as ``YYYY-MM-DD``), for ``--format json`` and APIs.

    >>> frame = pd.DataFrame({"station_id": ["ST1"], "period_start": [dt.date(2026, 12, 1)], "events": [4],
    ...                       "alarms": [1], "anomalies": [0], "alarm_rate": [0.25], "anomaly_rate": [0.0]})
    >>> report_records(frame)[0]["period_start"], report_records(frame)[0]["events"]
    ('2026-12-01', 4)
    """
    rows = report.assign(period_start=[d.isoformat() for d in report["period_start"]])
    records: list[dict[str, Any]] = json.loads(rows.to_json(orient="records", date_format="iso"))
    return records


def _lake_str(lake: str | os.PathLike[str]) -> str:
    """The lake as a string the workers can open: a URL as given, a local path made absolute."""
    text = str(lake)
    if "://" in text and not text.startswith("file://"):
        return text
    fs, root = _filesystem(text)
    return str(root)
