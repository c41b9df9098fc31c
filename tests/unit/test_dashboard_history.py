"""The History page over a real two-day lake (engine.synthetic, scored by a fitted model, with the engine's
windows table): every query equals pandas over the same rows, buckets stay bounded, the cache shares and
expires results, bad ranges are named, an empty lake gives empty frames; the page builds and follows its
widgets (no server, no browser)."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboards.history import (
    HIST_BINS,
    HISTOGRAM_COLUMNS,
    KEYS_COLUMNS,
    TIMELINE_COLUMNS,
    History,
    HistoryError,
)
from dashboards.history_view import HistoryPage
from engine.aggregate import KeyedAggregates
from engine.config import Config, load
from engine.synthetic import fit_champion, station_days, write_scored_day
from engine.task import windows_lake
from streams.lake import close_day, read_lake

D1, D2 = dt.date(2027, 1, 14), dt.date(2027, 1, 15)
_BUILT: dict[int, Path] = {}  # one lake per seed for the module; each test works on its own copy


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _config(base: Path) -> Config:
    # short warm-up: ~25 events per key and day, and a key raises no alert before it is warm
    return load("configs/demo.yaml", environ={}, overrides={
        "lake": {"path": str(base / "lake")}, "model": {"save_dir": str(base / "models")},
        "features": {"warmup_events": 4}})


def _write_windows(cfg: Config) -> None:
    """The windows table as the engine writes it: the lake's rows through the window step, batch by batch."""
    rows = read_lake(cfg.lake.path).drop(columns="date")
    rows = rows.rename(columns={"kafka_partition": "_partition", "kafka_offset": "_offset"})
    rows = rows.sort_values(["_partition", "_offset"], ignore_index=True)
    agg, writer = KeyedAggregates(cfg), windows_lake(cfg)
    assert writer is not None
    for idx in np.array_split(np.arange(len(rows)), 8):
        batch = rows.iloc[idx].reset_index(drop=True)
        out, late = agg.update(batch, batch["is_anomaly"].to_numpy(bool), batch["score"].to_numpy(),
                               [None] * len(batch), "v1")
        assert not late.any()
        if out.windows is not None:
            writer.add(out.windows)
    for p, w in agg.windows.items():  # what is still open at the end (the engine keeps it in a checkpoint)
        rest = w.flush_all()
        writer.add(rest.assign(kafka_partition=np.int64(p), kafka_offset=np.int64(10**9)))
    writer.flush()


@pytest.fixture
def built(seed: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if seed not in _BUILT:
        base = tmp_path_factory.mktemp("history")
        cfg = _config(base)
        days = station_days(D1, 2, 4_000, seed=seed, partitions=2)
        det = fit_champion(cfg, days[0], rows=1_000)
        for frame in days:
            write_scored_day(cfg, frame, det, close=False)
        _write_windows(cfg)
        _BUILT[seed] = base
    return _BUILT[seed]


@pytest.fixture
def cfg(built: Path, tmp_path: Path) -> Config:
    shutil.copytree(built, tmp_path / "copy")
    return _config(tmp_path / "copy")


@pytest.fixture
def events(cfg: Config) -> pd.DataFrame:
    return read_lake(cfg.lake.path)


@pytest.fixture
def history(cfg: Config) -> History:
    return History.from_config(cfg)


# -- the model ------------------------------------------------------------------------------------------------
def test_timeline_counts_equal_pandas(history: History, events: pd.DataFrame) -> None:
    got = history.timeline(D1, D2)
    assert list(got.columns) == list(TIMELINE_COLUMNS)
    assert got["events"].sum() == len(events) > 7_000
    assert got["anomalies"].sum() == events["is_anomaly"].sum() > 0
    assert got["alarms"].sum() == events["isActive"].sum() > 0
    bucket = history.bucket(D1, D2)
    assert bucket.seconds == 600 and len(got) == bucket.rows == 288  # every bucket, idle ones as zeros
    want = events.groupby(events["event_time"].dt.floor("600s")).size()
    nonzero = got[got["events"] > 0]
    assert nonzero["events"].tolist() == want.tolist()
    assert (nonzero["time"].dt.tz_convert("UTC") == want.index).all()
    assert got["events_per_s"].to_numpy() == pytest.approx(got["events"].to_numpy() / 600.0)
    # one key: only its rows
    key = str(events["datapoint_id"].iloc[0])
    assert history.timeline(D1, D2, key)["events"].sum() == (events["datapoint_id"] == key).sum()
    # one day of the two: only that day's folder
    assert history.timeline(D1, D1)["events"].sum() == (events["date"] == D1.isoformat()).sum()


def test_histogram_equals_numpy(history: History, events: pd.DataFrame) -> None:
    hist = history.score_histogram(D1, D2)
    assert list(hist.bins.columns) == list(HISTOGRAM_COLUMNS) and len(hist.bins) == HIST_BINS
    want, _ = np.histogram(events["score"], bins=HIST_BINS, range=(0.0, 1.0))
    assert hist.bins["count"].tolist() == want.tolist()
    assert hist.events == len(events)
    assert hist.threshold == pytest.approx(events["threshold"].mean())


def test_top_alerts_are_the_highest_scored_anomalies(history: History, events: pd.DataFrame) -> None:
    flagged = events[events["is_anomaly"]]
    got = history.top_alerts(D1, D2, limit=10)
    assert len(got) == min(10, len(flagged))
    assert got["score"].tolist() == sorted(flagged["score"].nlargest(10).tolist(), reverse=True)
    assert {"time", "datapoint_id", "station_id", "value", "isActive", "threshold"} <= set(got.columns)
    assert len(history.top_alerts(D1, D2)) == min(50, len(flagged))


def test_keys_and_a_key_series_equal_pandas(history: History, events: pd.DataFrame) -> None:
    keys = history.keys(D1, D2)
    assert list(keys.columns) == list(KEYS_COLUMNS)
    counts = events["datapoint_id"].value_counts()
    assert len(keys) == len(counts) and dict(zip(keys["key"], keys["events"], strict=True)) == counts.to_dict()
    assert keys["events"].is_monotonic_decreasing
    assert len(history.keys(D1, D2, limit=7)) == 7
    # a key with anomalies: its alerts come marked on its points
    key = str(events.loc[events["is_anomaly"], "datapoint_id"].value_counts().index[0])
    mine = events[events["datapoint_id"] == key].sort_values("event_time")
    series = history.key_series(D1, D2, key)
    assert series.events == len(mine) == len(series.points)
    assert series.buckets["events"].sum() == len(mine) and len(series.buckets) <= 500
    assert series.points["is_anomaly"].sum() == mine["is_anomaly"].sum() > 0
    assert series.points["value"].tolist() == mine["value"].tolist()
    assert series.buckets["value_max"].max() == mine["value"].max()
    assert series.buckets["value_min"].min() == mine["value"].min()
    other = str(counts.index[-1])
    assert history.key_series(D1, D2, other).events == counts[other] != len(mine)


def test_windows_equal_a_pandas_groupby_per_key_and_minute(history: History, events: pd.DataFrame) -> None:
    per_key = history.windows(D1, D2)
    assert len(per_key) == events["datapoint_id"].nunique()
    by_key = per_key.set_index("key")
    assert by_key["count"].to_dict() == events["datapoint_id"].value_counts().to_dict()
    assert by_key["alarms"].sum() == events["isActive"].sum() > 0
    assert by_key["anomalies"].sum() == events["is_anomaly"].sum()
    key = str(events["datapoint_id"].value_counts().index[0])
    mine = events[events["datapoint_id"] == key]
    want = mine.groupby(mine["event_time"].dt.floor("60s"))["value"].agg(["size", "mean", "min", "max"])
    got = history.windows(D1, D2, key)
    assert (got["key"] == key).all() and (got["windows"] == 1).all()
    assert got["count"].tolist() == want["size"].tolist()
    assert got["value_mean"].to_numpy() == pytest.approx(want["mean"].to_numpy())
    assert (got["window_start"].dt.tz_convert("UTC") == want.index).all()


def test_a_busy_key_is_merged_per_bucket(cfg: Config, events: pd.DataFrame) -> None:
    history = History.from_config(cfg, points_limit=10)
    key = str(events["datapoint_id"].value_counts().index[0])
    mine = events[events["datapoint_id"] == key]
    series = history.key_series(D1, D2, key)
    assert series.points.empty and series.events == len(mine) > 10  # too many to draw one by one
    windows = history.windows(D1, D2, key)
    assert (windows["windows"] > 1).any() and len(windows) <= history.bucket(D1, D2).rows
    assert windows["count"].sum() == len(mine)


def test_reports_equal_build_report(history: History, events: pd.DataFrame) -> None:
    day = history.report(D1, D2, "day")
    assert day["events"].sum() == len(events) and day["alarms"].sum() == events["isActive"].sum()
    assert sorted(set(day["period_start"])) == [D1, D2]
    week = history.report(D1, D2, "week")
    assert set(week["period_start"]) == {dt.date(2027, 1, 11)}  # both days are in the week of Monday 11th
    assert week.set_index("station_id")["events"].to_dict() == events["station_id"].value_counts().to_dict()
    assert history.report(D1, D2, "month")["events"].sum() == len(events)


@pytest.mark.parametrize("days", [1, 2, 7, 31, 92])
def test_buckets_keep_every_chart_within_500_rows(history: History, days: int) -> None:
    end = D1 + dt.timedelta(days=days - 1)
    bucket = history.bucket(D1, end)
    assert bucket.rows <= 500 and bucket.rows * bucket.seconds >= days * 86_400
    finer = [s for s in (60, 120, 180, 300, 600, 900, 1_800, 3_600, 7_200, 10_800, 21_600) if s < bucket.seconds]
    assert all(days * 86_400 / s > 500 for s in finer)  # the finest width that fits
    assert len(history.timeline(D1, end)) <= 500


def test_buckets_start_at_local_midnight(tmp_path: Path) -> None:
    berlin = History(tmp_path, timezone="Europe/Berlin")
    b = berlin.bucket(D1, D1)
    assert b.origin.tz_convert("UTC") == pd.Timestamp("2027-01-13T23:00Z")
    assert berlin.bucket(dt.date(2027, 3, 28), dt.date(2027, 3, 28)).rows == 460  # a 23-hour day, 3-min buckets


def test_a_cache_hit_returns_the_same_frame_and_runs_no_query(history: History) -> None:
    first = history.timeline(D1, D2)
    runs = history.queries
    assert history.timeline(D1, D2) is first and history.queries == runs
    assert history.timeline(D1, D1) is not first and history.queries == runs + 1


def test_sessions_asking_at_once_share_one_query(cfg: Config) -> None:
    history = History.from_config(cfg)
    start = threading.Barrier(6)
    got: list[pd.DataFrame] = []

    def ask() -> None:
        start.wait()
        got.append(history.keys(D1, D2))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(got) == 6 and all(g is got[0] for g in got)
    assert history.queries == 1


def test_an_open_day_is_cached_briefly_a_closed_one_long(cfg: Config) -> None:
    clock = Clock()
    history = History.from_config(cfg, clock=clock, open_ttl_s=30.0, closed_ttl_s=600.0)
    first = history.timeline(D1, D2)  # both days open (not closed in their manifests)
    clock.now += 29.0
    assert history.timeline(D1, D2) is first
    clock.now += 2.0
    again = history.timeline(D1, D2)
    assert again is not first and again["events"].sum() == first["events"].sum()
    close_day(cfg.lake.path, D1)
    clock.now += 31.0
    mixed = history.timeline(D1, D2)  # one day still open: still the short life
    clock.now += 31.0
    assert history.timeline(D1, D2) is not mixed
    close_day(cfg.lake.path, D2)
    clock.now += 31.0
    settled = history.timeline(D1, D2)
    clock.now += 599.0
    assert history.timeline(D1, D2) is settled
    clock.now += 2.0
    assert history.timeline(D1, D2) is not settled


def test_bad_ranges_and_arguments_are_named(history: History) -> None:
    with pytest.raises(HistoryError, match=r"end 2027-01-14 is before start 2027-01-15"):
        history.timeline(D2, D1)
    with pytest.raises(HistoryError, match=r"2027-01-14\.\.2027-04-16 spans 93 days, more than max_days=92"):
        history.keys(D1, D1 + dt.timedelta(days=92))
    with pytest.raises(HistoryError, match=r"'2027-13-01' is not YYYY-MM-DD"):
        history.timeline("2027-13-01", D2)
    with pytest.raises(HistoryError, match=r"period must be one of day, week, month, got 'year'"):
        history.report(D1, D2, "year")
    with pytest.raises(HistoryError, match=r"limit must be an integer in \[1, 10000\], got 0"):
        history.top_alerts(D1, D2, limit=0)
    with pytest.raises(HistoryError, match=r"key must be a string, got 7"):
        history.key_series(D1, D2, 7)  # type: ignore[arg-type]
    with pytest.raises(HistoryError, match=r"timezone 'Mars/Olympus'"):
        History("lake", timezone="Mars/Olympus")
    assert history.timeline("2027-01-14", "2027-01-15") is history.timeline(D1, D2)  # text and dates agree


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_an_empty_lake_gives_empty_frames_with_the_columns(tmp_path: Path, where: str) -> None:
    root = tmp_path / "lake"
    if where == "empty":
        root.mkdir()
    history = History(root, key_field="datapoint_id", value_fields=["value"], alarm_field="isActive",
                      by=["station_id"])
    assert history.timeline(D1, D2).empty and list(history.timeline(D1, D2).columns) == list(TIMELINE_COLUMNS)
    hist = history.score_histogram(D1, D2)
    assert hist.bins.empty and list(hist.bins.columns) == list(HISTOGRAM_COLUMNS) and hist.events == 0
    assert hist.threshold is None
    assert history.keys(D1, D2).empty and list(history.keys(D1, D2).columns) == list(KEYS_COLUMNS)
    assert history.top_alerts(D1, D2).empty and "datapoint_id" in history.top_alerts(D1, D2).columns
    series = history.key_series(D1, D2, "dp-3")
    assert series.buckets.empty and series.points.empty and series.events == 0
    assert {"value_mean", "value_min", "value_max"} <= set(series.buckets.columns)
    windows = history.windows(D1, D2, "dp-3")
    assert windows.empty and {"window_start", "count", "value_mean", "alarms"} <= set(windows.columns)
    report = history.report(D1, D2, "week")
    assert report.empty and list(report.columns) == ["station_id", "period_start", "events", "alarms",
                                                     "anomalies", "alarm_rate", "anomaly_rate"]


def test_only_the_files_the_manifest_lists_are_read(cfg: Config, events: pd.DataFrame) -> None:
    day = cfg.lake.path / f"date={D1}"
    listed = sorted(day.glob("part-*.parquet"))[0]
    # what a compaction leaves for a moment: a copy on disk that no manifest lists
    shutil.copy(listed, day / "part-p0-00000000000000000000-99999999999999999999.parquet")
    assert History.from_config(cfg).timeline(D1, D2)["events"].sum() == len(events)


# -- the view -------------------------------------------------------------------------------------------------
def test_the_page_draws_the_lake_and_follows_the_key(history: History, events: pd.DataFrame) -> None:
    page = HistoryPage(history, start=D1, end=D2)
    assert page.range.value == (D1, D2)
    assert page.drawn["timeline"]["events"].sum() == len(events)
    assert len(page.key.options) == events["datapoint_id"].nunique()
    first = page.key.value
    assert first == str(events["datapoint_id"].value_counts().index[0])  # the busiest key
    assert page.drawn["key"].events == (events["datapoint_id"] == first).sum()
    chart = page.slots["key"].objects[0]
    runs = history.queries
    other = page.key.options[-1]
    page.key.value = other
    assert page.drawn["key"].events == (events["datapoint_id"] == other).sum()
    assert page.slots["key"].objects[0] is not chart
    assert (page.drawn["key_windows"]["key"] == other).all()
    assert history.queries == runs + 2  # the key's series and windows: nothing else was queried again
    page.period.value = "week"
    assert set(page.drawn["report"]["period_start"]) == {dt.date(2027, 1, 11)}
    assert f"{len(events):,} events" in page.status.object


def test_every_chart_and_table_turns_into_bokeh_models(history: History) -> None:
    page = HistoryPage(history, start=D1, end=D2)
    root = page.__panel__().get_root()
    names = {type(m).__name__ for m in root.references()}
    # areas and bands, points, the threshold line, histogram bins and window bars, anomaly spikes, tables
    assert {"figure", "Patch", "Scatter", "Span", "Quad", "Segment", "DataTabulator"} <= names


def test_a_second_viewer_of_the_same_range_runs_no_query(history: History) -> None:
    HistoryPage(history, start=D1, end=D2)
    runs = history.queries
    again = HistoryPage(history, start=D1, end=D2)
    assert history.queries == runs and again.drawn["timeline"] is not None


def test_a_new_range_redraws_everything(history: History, events: pd.DataFrame) -> None:
    page = HistoryPage(history, start=D1, end=D2)
    page.range.value = (D2, D2)
    assert page.drawn["timeline"]["events"].sum() == (events["date"] == D2.isoformat()).sum()
    assert len(page.drawn["timeline"]) == history.bucket(D2, D2).rows
    page.range.value = (D1, D1 + dt.timedelta(days=100))  # too long: said on the page, not raised
    assert "2027-01-14..2027-04-24 spans 101 days, more than max_days=92" in page.status.object
    assert "nothing to show until the range is fixed" in page.slots["throughput"].objects[0].object
    page.range.value = (D1, D1)
    assert page.drawn["timeline"]["events"].sum() == (events["date"] == D1.isoformat()).sum()


def test_the_page_on_an_empty_lake_says_what_it_waits_for(tmp_path: Path) -> None:
    history = History(tmp_path / "lake", key_field="datapoint_id", value_fields=["value"])
    page = HistoryPage(history, start=D1, end=D2)
    want = f"no lake data between {D1} and {D2} in {tmp_path / 'lake'}"
    assert want in page.status.object
    assert want in page.slots["throughput"].objects[0].object
    assert "pick a key: no keys between" in page.slots["key"].objects[0].object
    assert page.key.options == [] and page.key.value is None
    assert page.__panel__().get_root() is not None


def test_a_deep_link_sets_the_widgets(history: History, events: pd.DataFrame) -> None:
    key = str(events["datapoint_id"].value_counts().index[-1])
    page = HistoryPage.from_query(history, {"from": [b"2027-01-14"], "to": "2027-01-15", "key": key,
                                            "period": "month"})
    assert page.range.value == (D1, D2) and page.key.value == key and page.period.value == "month"
    assert page.drawn["key"].events == (events["datapoint_id"] == key).sum()
    bad = HistoryPage.from_query(history, {"from": "2027-02-30", "to": "2027-01-15", "period": "year"})
    assert "from='2027-02-30'" in bad.status.object and "period='year'" in bad.status.object
    assert bad.period.value == "day" and bad.range.value == (D1, D2)  # no start: the day before the end
