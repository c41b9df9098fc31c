"""Reports over a real lake: counts equal a pandas groupby of the same events, errors, key reports, the CLI."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from engine import cli
from streams.generator import GeneratorSettings, StationAlarmGenerator
from streams.lake import LakeError, LakeWriter, part_name, read_manifest
from streams.reports import NoEvents, ReportError, build_report, key_report, parse_day, period_end

TZ = "Europe/Berlin"  # the lake's dates are Berlin dates: an event at 23:30 UTC lands on the next day
START = dt.datetime(2026, 11, 27, 12, tzinfo=dt.timezone.utc)  # a Friday; the events run into December
N_EVENTS = 6_000
DAYS = 7


def _events(seed: int) -> pd.DataFrame:
    """Generated events over ~7 days across Nov/Dec, scored the way engine.outputs.lake_frame lays them out."""
    settings = GeneratorSettings(seed=seed, start=START, events_per_second=N_EVENTS / (DAYS * 86_400))
    frame = StationAlarmGenerator(settings).next_chunk(N_EVENTS).drop(columns="label")
    rng = np.random.default_rng(seed)
    # the generator's alarms are rare (~0.2 %); more of them make the alarm counts a sharper check
    frame["isActive"] = frame["isActive"].to_numpy() | (rng.random(len(frame)) < 0.08)
    frame["score"] = rng.random(len(frame))
    frame["threshold"] = 0.9
    frame["is_anomaly"] = frame["score"] > frame["threshold"]
    frame["model_version"] = "v1"
    frame["kafka_partition"] = np.arange(len(frame)) % 2
    frame["kafka_offset"] = np.arange(len(frame)) // 2
    frame["kafka_timestamp_ms"] = frame["event_time"].astype("int64") // 1000
    return frame


def _write_lake(root: Path, events: pd.DataFrame) -> None:
    writer = LakeWriter(root, time_field="event_time", tz=TZ)
    for chunk in np.array_split(np.arange(len(events)), 5):  # several files per day and partition
        writer.write(events.iloc[chunk])


@pytest.fixture
def events(seed: int) -> pd.DataFrame:
    return _events(seed)


@pytest.fixture
def lake(tmp_path: Path, events: pd.DataFrame) -> Path:
    root = tmp_path / "lake"
    _write_lake(root, events)
    return root


def _expected(events: pd.DataFrame, by: list[str], period: str) -> pd.DataFrame:
    """The report computed straight from the events with pandas (no lake, no DuckDB)."""
    local = events["event_time"].dt.tz_convert(TZ).dt.tz_localize(None).dt.normalize()
    if period == "day":
        start = local
    elif period == "week":
        start = local - pd.to_timedelta(local.dt.dayofweek, unit="D")
    else:
        start = local.dt.to_period("M").dt.start_time
    frame = events.assign(period_start=start.dt.date)
    out = (frame.groupby([*by, "period_start"])
           .agg(events=("value", "size"), alarms=("isActive", "sum"), anomalies=("is_anomaly", "sum"))
           .reset_index())
    out["alarm_rate"] = out["alarms"] / out["events"]
    out["anomaly_rate"] = out["anomalies"] / out["events"]
    return out.sort_values(["period_start", *by], ignore_index=True)


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert got["period_start"].tolist() == want["period_start"].tolist()
    for col in got.columns.drop(["period_start", "alarm_rate", "anomaly_rate"]):
        assert got[col].tolist() == want[col].tolist(), col
    for col in ("alarm_rate", "anomaly_rate"):
        assert got[col].tolist() == pytest.approx(want[col].tolist()), col


def _whole(**kw: object) -> dict[str, object]:
    return {"start": dt.date(2026, 11, 1), "end": dt.date(2026, 12, 31), "alarm_field": "isActive", **kw}


@pytest.mark.parametrize("period", ["day", "week", "month"])
@pytest.mark.parametrize("by", [["station_id"], ["station_id", "datapoint_id"]])
def test_counts_equal_a_pandas_groupby(lake: Path, events: pd.DataFrame, by: list[str], period: str) -> None:
    got = build_report(lake, by=by, period=period, **_whole())  # type: ignore[arg-type]
    _same(got, _expected(events, by, period))
    assert got["events"].sum() == len(events)
    assert got["anomalies"].sum() == events["is_anomaly"].sum() > 0
    assert got["alarms"].sum() == events["isActive"].sum() > 0
    assert all(isinstance(d, dt.date) for d in got["period_start"])


def test_the_lake_spans_a_month_boundary_in_its_own_time_zone(lake: Path, events: pd.DataFrame) -> None:
    months = build_report(lake, by=[], period="month", **_whole())  # type: ignore[arg-type]
    assert months["period_start"].tolist() == [dt.date(2026, 11, 1), dt.date(2026, 12, 1)]
    berlin = events["event_time"].dt.tz_convert(TZ)
    assert months["events"].tolist() == [int((berlin.dt.month == 11).sum()), int((berlin.dt.month == 12).sum())]
    # an event between 23:00 and 24:00 UTC on Nov 30 is a December event in Berlin: the UTC split differs
    assert int((events["event_time"].dt.month == 11).sum()) != months["events"].iloc[0]


def test_a_partial_range_counts_only_its_days(lake: Path, events: pd.DataFrame) -> None:
    start, end = dt.date(2026, 11, 29), dt.date(2026, 12, 1)
    got = build_report(lake, start=start, end=end, by=["station_id"], period="week", alarm_field="isActive")
    day = events["event_time"].dt.tz_convert(TZ).dt.date
    inside = events[(day >= start) & (day <= end)]
    _same(got, _expected(inside, ["station_id"], "week"))
    assert 0 < got["events"].sum() < len(events)


def test_only_files_the_manifest_lists_are_read(lake: Path, events: pd.DataFrame) -> None:
    day = sorted(lake.glob("date=*"))[2]
    listed = read_manifest(day)["files"][0]
    # what a compaction leaves for a moment: a merged copy on disk that the manifest does not list (yet)
    shutil.copy(day / listed["name"], day / part_name(listed["partition"], 0, 10**12))
    got = build_report(lake, by=["station_id"], period="day", **_whole())  # type: ignore[arg-type]
    assert got["events"].sum() == len(events)


def test_a_listed_file_that_stays_missing_is_a_lake_error(lake: Path) -> None:
    day = sorted(lake.glob("date=*"))[1]
    (day / read_manifest(day)["files"][0]["name"]).unlink()  # the manifest now lists a file that is gone
    with pytest.raises(LakeError, match=r"kept disappearing"):
        build_report(lake, by=["station_id"], period="day", **_whole())  # type: ignore[arg-type]


def test_without_alarm_field_alarms_are_zero(lake: Path, events: pd.DataFrame) -> None:
    got = build_report(lake, by=["station_id"], period="month", **_whole(alarm_field=None))  # type: ignore[arg-type]
    assert got["alarms"].eq(0).all() and got["alarm_rate"].eq(0.0).all()
    assert got["events"].sum() == len(events)


def test_an_fsspec_url_reads_the_same(lake: Path) -> None:
    mem = fsspec.filesystem("memory")
    mem.put(str(lake), "/report-lake", recursive=True)
    try:
        got = build_report("memory:///report-lake", by=["station_id"], period="week", **_whole())  # type: ignore[arg-type]
    finally:
        mem.rm("/report-lake", recursive=True)
    want = build_report(lake, by=["station_id"], period="week", **_whole())  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(got, want)


# -- errors -------------------------------------------------------------------------------------------------
def test_no_data_in_the_range_names_the_range_and_the_lake(lake: Path) -> None:
    with pytest.raises(ReportError, match=r"2027-01-01 to 2027-01-31.*") as err:
        build_report(lake, start=dt.date(2027, 1, 1), end=dt.date(2027, 1, 31), by=["station_id"],
                     period="day", alarm_field=None)
    assert str(lake) in str(err.value)


def test_an_unknown_by_field_names_the_fields_there_are(lake: Path) -> None:
    with pytest.raises(ReportError, match=r"unknown field\(s\) \['station'\].*'datapoint_id'.*'station_id'"):
        build_report(lake, by=["station"], period="day", **_whole())  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "match"), [
    ({"start": dt.date(2026, 12, 2), "end": dt.date(2026, 12, 1)}, r"start 2026-12-02 is after end 2026-12-01"),
    ({"period": "year"}, r"unknown period 'year'"),
    ({"alarm_field": "value"}, r"alarm_field 'value' must be a bool column, it is DOUBLE"),
    ({"alarm_field": "nope"}, r"alarm_field 'nope' is not a column"),
    ({"by": ["station_id", "station_id"]}, r"distinct fields"),
])
def test_bad_requests_are_report_errors(lake: Path, kw: dict[str, object], match: str) -> None:
    args = {**_whole(), "by": ["station_id"], "period": "day", **kw}
    with pytest.raises(ReportError, match=match):
        build_report(lake, **args)  # type: ignore[arg-type]


def test_a_missing_lake_or_a_range_without_events_is_no_events(tmp_path: Path, lake: Path) -> None:
    # NoEvents (a ReportError) is what callers that can show an empty answer catch: the dashboard's History
    with pytest.raises(NoEvents, match=r"does not exist"):
        build_report(tmp_path / "nowhere", by=["station_id"], period="day", **_whole())  # type: ignore[arg-type]
    later = _whole(start=dt.date(2027, 3, 1), end=dt.date(2027, 3, 31))
    with pytest.raises(NoEvents, match=r"no events"):
        build_report(lake, by=["station_id"], period="day", **later)  # type: ignore[arg-type]
    with pytest.raises(ReportError) as bad:
        build_report(lake, by=["no_such_field"], period="day", **_whole())  # type: ignore[arg-type]
    assert not isinstance(bad.value, NoEvents)


def test_parse_day() -> None:
    now = dt.datetime(2026, 12, 1, 23, 30, tzinfo=dt.timezone.utc)
    assert parse_day("today", "Europe/Berlin", now=now) == dt.date(2026, 12, 2)
    assert parse_day("yesterday", "UTC", now=now) == dt.date(2026, 11, 30)
    assert parse_day(" 2026-02-03 ", "UTC") == dt.date(2026, 2, 3)
    with pytest.raises(ReportError, match=r"day '2026-13-01' is not YYYY-MM-DD"):
        parse_day("2026-13-01", "UTC")
    with pytest.raises(ReportError, match=r"time zone 'Mars/Base'"):
        parse_day("today", "Mars/Base")


# -- key reports --------------------------------------------------------------------------------------------
def test_key_report_counts_one_key_over_the_whole_period(lake: Path, events: pd.DataFrame) -> None:
    key = str(events["datapoint_id"].iloc[100])
    day = dt.date(2026, 12, 1)
    record = key_report(lake, key_field="datapoint_id", key=key, day=day, period="week", alarm_field="isActive")
    local = events["event_time"].dt.tz_convert(TZ).dt.date
    first, last = dt.date(2026, 11, 30), dt.date(2026, 12, 6)
    mine = events[(events["datapoint_id"] == key) & (local >= first) & (local <= last)]
    assert record["kind"] == "report" and record["period"] == "week"
    assert (record["period_start"], record["period_end"]) == (first.isoformat(), last.isoformat())
    assert (record["events"], record["alarms"], record["anomalies"]) == (
        len(mine), int(mine["isActive"].sum()), int(mine["is_anomaly"].sum()))
    assert record["events"] > 0
    assert record["anomaly_rate"] == pytest.approx(mine["is_anomaly"].mean())
    assert json.loads(json.dumps(record)) == record


def test_key_report_of_a_key_without_events_is_zero(lake: Path) -> None:
    record = key_report(lake, key_field="station_id", key="ST9999", day=dt.date(2026, 11, 28), period="day",
                        alarm_field="isActive")
    assert (record["events"], record["alarms"], record["anomalies"], record["anomaly_rate"]) == (0, 0, 0, None)
    assert record["days"] == 1


def test_period_end_of_every_month() -> None:
    ends = [period_end(dt.date(2028, m, 15), "month") for m in range(1, 13)]
    assert [(d + dt.timedelta(days=1)).day for d in ends] == [1] * 12
    assert ends[1] == dt.date(2028, 2, 29)


# -- the command --------------------------------------------------------------------------------------------
def _cli(lake: Path, *extra: str) -> int:
    return cli.main(["report", "--lake", str(lake), "--from", "2026-11-01", "--to", "2026-12-31",
                     "--alarm-field", "isActive", *extra])


def test_cli_json_is_the_report(lake: Path, events: pd.DataFrame, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(lake, "--by", "station_id,datapoint_id", "--period", "week", "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    want = _expected(events, ["station_id", "datapoint_id"], "week")
    assert [r["period_start"] for r in rows] == [d.isoformat() for d in want["period_start"]]
    assert [r["events"] for r in rows] == want["events"].tolist()
    assert [r["alarms"] for r in rows] == want["alarms"].tolist()
    assert sum(r["events"] for r in rows) == len(events)


def test_cli_csv_to_stdout_and_file(lake: Path, tmp_path: Path, events: pd.DataFrame,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(lake, "--by", "station_id", "--period", "month", "--format", "csv") == 0
    out = capsys.readouterr().out
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == ["station_id", "period_start", "events", "alarms", "anomalies", "alarm_rate",
                                   "anomaly_rate"]
    assert frame["events"].tolist() == _expected(events, ["station_id"], "month")["events"].tolist()
    target = tmp_path / "out" / "report.csv"
    assert _cli(lake, "--by", "station_id", "--period", "month", "--format", "csv", "--out", str(target)) == 0
    assert target.read_text() == out


def test_cli_parquet_and_table(lake: Path, tmp_path: Path, events: pd.DataFrame,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(lake, "--format", "parquet") == 2  # no --out
    assert "--out" in capsys.readouterr().err
    target = tmp_path / "report.parquet"
    assert _cli(lake, "--by", "station_id", "--format", "parquet", "--out", str(target)) == 0
    table = pq.read_table(target)
    assert str(table.schema.field("period_start").type) == "date32[day]"
    assert table["events"].to_pylist() == _expected(events, ["station_id"], "day")["events"].tolist()
    assert _cli(lake, "--by", "station_id", "--period", "month") == 0
    err = capsys.readouterr().err
    assert "ST0000" in err and "2026-12-01" in err and "report days" in err


def test_cli_bad_requests_exit_2(lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(lake, "--by", "nope", "--format", "json") == 2
    captured = capsys.readouterr()
    assert "unknown field(s) ['nope']" in captured.err and captured.out == ""
    assert cli.main(["report", "--lake", str(lake), "--from", "next week"]) == 2
    assert "'next week' is not YYYY-MM-DD" in capsys.readouterr().err
    assert cli.main(["report", "--lake", str(lake), "--from", "2030-01-01"]) == 2
    assert "no events" in capsys.readouterr().err


# -- on a cluster -------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_on_a_local_cluster_the_report_is_the_same(lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    kw = {"by": ["station_id", "datapoint_id"], "period": "week", **_whole()}
    inline = build_report(lake, **kw)  # type: ignore[arg-type]
    key = {"key_field": "station_id", "key": "ST0003", "day": dt.date(2026, 12, 1), "period": "month",
           "alarm_field": "isActive"}
    seen: list[tuple[int, int]] = []
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with get_task_stream(client) as stream:
            on_cluster = build_report(lake, client=client, progress=lambda d, t: seen.append((d, t)), **kw)  # type: ignore[arg-type]
        record = key_report(lake, client=client, **key)  # type: ignore[arg-type]
        workers = set(client.scheduler_info()["workers"])
        capsys.readouterr()
        assert _cli(lake, "--by", "station_id,datapoint_id", "--period", "week", "--format", "json",
                    "--scheduler", cluster.scheduler_address) == 0
        rows = json.loads(capsys.readouterr().out)
    pd.testing.assert_frame_equal(on_cluster, inline)
    assert [r["events"] for r in rows] == inline["events"].tolist()
    days = len(list(lake.glob("date=*")))
    assert seen == [(i, days) for i in range(days + 1)]
    # the day tasks ran in the worker processes, not here
    ran = [t for t in stream.data if str(t["key"]).startswith("day_counts")]
    assert len(ran) == days and {t["worker"] for t in ran} <= workers
    local = key_report(lake, **key)  # type: ignore[arg-type]
    assert record["events"] > 0
    assert {k: v for k, v in record.items() if k != "created_at"} == \
        {k: v for k, v in local.items() if k != "created_at"}
