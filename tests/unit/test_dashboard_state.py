"""LiveState fed directly (no Kafka): ticks, histogram, KPIs, bad records, alerts, incidents, metrics, keys."""

from __future__ import annotations

import gc
import json
import threading
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from dashboards.aggregate import RollingHistogram
from dashboards.keys import KeyStore
from dashboards.records import parse_incident, parse_score, parse_stats, parse_window
from dashboards.state import LiveState
from dashboards.ticks import BACKLOG_MS, TickRing
from engine.config import Topics
from engine.outputs import SCORE_BINS
from engine.telemetry import GroupMetrics, metrics_record

T0 = 1_800_000_000.0  # a fixed "now"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def score_rec(score: float, *, anomaly: bool = False, threshold: float = 0.6, version: str = "v1", key: str = "k",
              value: float = 1.0, at: str = "2027-01-15T08:00:00Z") -> bytes:
    return json.dumps(
        {"key": key, "event_time": at, "score": score, "threshold": threshold, "is_anomaly": anomaly,
         "model_version": version, "partition": 0, "offset": 1, "value": value}
    ).encode()


def stats_rec(events: int, anomalies: int = 0, dead: int = 0, lag: int = 0, version: str = "v1") -> bytes:
    return json.dumps(
        {"kind": "batch", "ts": T0, "events": events, "events_per_s": 100.0, "dead_letters": dead,
         "anomalies": anomalies, "lag": lag, "batch_latency_ms": 12.5, "model_version": version, "threshold": 0.6}
    ).encode()


def incident_rec(iid: str, status: str, key: str = "k", start: str = "2027-01-15T08:00:00Z") -> bytes:
    return json.dumps({"incident_id": iid, "status": status, "key": key, "start": start, "end": start,
                       "alerts": 2, "peak_score": 0.9, "top": "value_z=0.5", "model_version": "v1"}).encode()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> LiveState:
    return LiveState({"bootstrap.servers": "127.0.0.1:1"}, Topics(), history_s=60, max_scores=1_000, clock=clock,
                     key_field="datapoint_id", value_fields=("value",), baseline_events=4)


# -- histogram ------------------------------------------------------------------------------------------------
def test_histogram_counts_the_scores_in_the_engine_bins(state: LiveState, seed: int) -> None:
    scores = np.random.default_rng(seed).uniform(size=500)
    state.ingest_scores([score_rec(float(s)) for s in scores])
    _, frame, threshold = state.histogram()
    expected, _ = np.histogram(scores, bins=SCORE_BINS)
    assert frame["count"].tolist() == expected.tolist() and threshold == 0.6


def test_histogram_keeps_only_the_last_max_scores(state: LiveState) -> None:
    state.ingest_scores([score_rec(0.01)] * 1_000)
    state.ingest_scores([score_rec(0.99)] * 400)
    counts = state.histogram()[1]["count"].to_numpy()
    assert counts[0] == 600 and counts[-1] == 400 and counts.sum() == 1_000


def test_rolling_histogram_clips_out_of_range_scores() -> None:
    h = RollingHistogram(capacity=10, edges=np.array([0.0, 0.5, 1.0]))
    h.add(np.array([-3.0, 7.0]))
    assert h.counts.tolist() == [1, 1]
    with pytest.raises(ValueError, match="capacity"):
        RollingHistogram(0)


# -- the tick ring ----------------------------------------------------------------------------------------------
def test_ticks_count_live_arrivals_and_rates_average_one_second() -> None:
    ring = TickRing(tick_ms=100, history_s=10)
    for i in range(20):  # 20 ticks; 50 events arrive in every other tick
        now = T0 * 1000 + i * 100
        if i % 2 == 0:
            ring.add_events(np.full(50, now - 50), np.arange(50) < 5, now_ms=now)
        ring.tick(now + 100)
    rows = ring.since(10)
    assert rows["seq"].tolist() == list(range(11, 21))
    assert rows["events"].sum() == 250 and rows["anomalies"].sum() == 25
    # 5 bursts of 50 per second of ticks: 250 events/s, 25 anomalies/s, steady once the window is full
    assert rows["events_per_s"].tolist() == pytest.approx([250.0] * 10)
    assert rows["anomalies_per_s"].tolist() == pytest.approx([25.0] * 10)
    assert rows["kafka_ts_ms"].notna().sum() == 5


def test_rates_stay_true_when_a_starved_clock_closes_one_row_for_several_ticks() -> None:
    ring = TickRing(tick_ms=100, history_s=10)
    now = T0 * 1000
    for i in range(30):  # 100 events every 100 ms: 1,000 events/s
        step = 300 if i % 3 == 0 else 100  # every third tick closes 300 ms late (two ticks folded into it)
        ring.add_events(np.full(step, now), np.zeros(step, dtype=bool), now_ms=now + step / 2)
        now += step
        ring.tick(now)
    rows = ring.since(ring.seq - 10)
    # ten rows here span 1.6-1.8 s: dividing by ten ticks' 1.0 s said 1,600-1,800 events/s
    assert rows["events_per_s"].tolist() == pytest.approx([1_000.0] * 10)


def test_backlog_lands_at_its_own_time_not_as_a_burst_now() -> None:
    ring = TickRing(tick_ms=100, history_s=10)
    now = T0 * 1000
    ring.tick(now)  # the ring is prefilled: 10 s of empty history exist already
    old = now - 5_000.0  # 5 s ago: backlog read on start
    ring.add_events(np.full(30, old), np.zeros(30, dtype=bool), now_ms=now + 50)
    ring.add_events(np.full(7, now - 10), np.zeros(7, dtype=bool), now_ms=now + 50)  # live
    ring.add_events(np.full(9, now - 60_000.0), np.zeros(9, dtype=bool), now_ms=now + 50)  # older than the ring
    row = ring.tick(now + 100)
    assert row.events == 7
    frame = ring.frame()
    assert len(frame) == ring.size and frame["events"].sum() == 37
    landed = frame.loc[frame["events"] == 30, "t"]
    assert len(landed) == 1 and abs(landed.iloc[0] - old) <= 100
    assert BACKLOG_MS < 5_000


def test_missed_counts_ticks_that_left_the_ring() -> None:
    ring = TickRing(tick_ms=100, history_s=1)  # 10 rows
    for i in range(25):
        ring.tick(T0 * 1000 + i * 100)
    assert ring.missed(20) == 0 and ring.missed(5) == 10
    assert ring.since(5)["seq"].tolist() == list(range(16, 26))
    with pytest.raises(ValueError, match="tick_ms"):
        TickRing(tick_ms=0)


def test_timeline_rows_are_built_once_per_tick_for_every_page_that_asks(state: LiveState, clock: Clock) -> None:
    state.tick()
    first = state.timeline(0)
    assert state.timeline(0) is first  # a second page at the same place shares the frame
    assert state.timeline(-5) is not first and state.timeline(0).equals(first)  # another place: its own rows
    state.tick()
    again = state.timeline(0)
    assert again is not first and again["seq"].tolist() == [1, 2]  # a new tick: built again, with the new row


def test_rendered_parts_are_built_once_per_seq_and_shared(state: LiveState) -> None:
    built: list[int] = []

    def build(seq: int) -> str:
        built.append(seq)
        return f"<table>{seq}</table>"

    assert state.rendered("alerts", 3, lambda: build(3)) == "<table>3</table>"
    assert state.rendered("alerts", 3, lambda: build(3)) == "<table>3</table>"  # a second page: the same HTML
    assert state.rendered("alerts", 4, lambda: build(4)) == "<table>4</table>"  # the frame moved on
    assert state.rendered("incidents", 4, lambda: build(40)) == "<table>40</table>"  # parts are apart
    assert built == [3, 4, 40]


def test_state_ticks_carry_engine_lag_and_latency(state: LiveState, clock: Clock) -> None:
    g = GroupMetrics("events/p0", pipeline="events")
    g.add(records_in=10, events_scored=10)
    g.lag = 42
    g.observe_committed(np.full(10, T0 * 1000 - 250), committed_at_s=T0)
    state.ingest_metrics([metrics_record("events", "events/p0", g.snapshot())])
    row = state.tick()
    assert row.lag == 42 and 200 <= row.latency_p50_ms <= 300
    k = state.kpis()
    assert k.lag == 42 and k.latency_p99_ms is not None and 200 <= k.latency_p99_ms <= 300


# -- totals, bad records -------------------------------------------------------------------------------------
def test_kpis_come_from_stats_totals(state: LiveState) -> None:
    state.ingest_scores([score_rec(0.9, anomaly=True)] * 3)
    assert state.kpis().events == 3  # before any stats record: the scores seen
    state.tick()
    state.ingest_stats([stats_rec(100, anomalies=4, dead=2, lag=3, version="v9"), stats_rec(50, anomalies=1, lag=7)])
    state.tick()
    k = state.kpis()
    assert (k.events, k.anomalies, k.dead_letters, k.lag) == (150, 5, 2, 7)


@pytest.mark.parametrize("bad", [b"not json", b"[1, 2]", b'{"score": "high"}', b'{"score": null}', b"", b'{"score": true}'])
def test_bad_score_records_are_skipped_and_counted(state: LiveState, bad: bytes) -> None:
    assert state.ingest_scores([bad, score_rec(0.5)]) == 1
    assert state.bad_records["scores"] == 1 and state.scores_in_histogram == 1


def test_bad_records_of_every_topic_are_counted_never_raised(state: LiveState) -> None:
    state.ingest_stats([b"{}", b"nope", json.dumps({"kind": "window", "count": 3}).encode()])
    state.ingest_alerts([b'{"no": "score"}'])
    state.ingest_incidents([b'{"incident_id": "x", "status": "maybe"}', b"{}"])
    state.ingest_metrics([b'{"pipeline": 1}', b"[]"])
    state.ingest_control([b'{"version": "v1"}'])
    state.ingest_reports([b'{"kind": "other"}'])
    assert state.bad_records == {"scores": 0, "stats": 3, "alerts": 1, "incidents": 2, "metrics": 2, "control": 1,
                                 "reports": 1}


def test_record_parsers_read_the_architecture_formats() -> None:
    assert parse_score(score_rec(0.7, anomaly=True)).is_anomaly  # type: ignore[union-attr]
    assert parse_stats(stats_rec(5)).events == 5  # type: ignore[union-attr]
    rec = parse_incident(incident_rec("i1", "open"))
    assert rec is not None and rec["start_ms"] == pd.Timestamp("2027-01-15T08:00:00Z").timestamp() * 1000
    assert parse_incident(b'{"incident_id": "i1", "status": "open"}') is None  # no start time
    assert parse_window({"kind": "window", "count": 1, "window_start": "bad", "window_end": "x"}, "k") is None


# -- alerts, incidents, models -----------------------------------------------------------------------------------
def test_alerts_table_is_newest_first_and_window_alerts_apart(state: LiveState) -> None:
    for i in range(3):
        state.ingest_alerts([json.dumps({"event_time": f"2027-01-15T08:00:0{i}Z", "datapoint_id": f"d{i}",
                                         "score": 0.9, "kafka_offset": i, "explanation": f"e{i}"}).encode()])
    state.ingest_alerts([json.dumps({"kind": "window_alert", "datapoint_id": "d9", "count": 5}).encode()])
    seq, frame = state.alerts()
    assert frame["datapoint_id"].tolist() == ["d2", "d1", "d0"] and "kafka_offset" not in frame
    assert list(frame.columns)[0] == "event_time" and list(frame.columns)[-1] == "explanation"
    assert state.alerts()[1] is frame and state.alerts()[0] == seq  # shared until new alerts arrive
    assert len(state.window_alerts()[1]) == 1 and state.bad_records["alerts"] == 0
    assert state.key_alerts("d1")["datapoint_id"].tolist() == ["d1"]


def test_incidents_keep_the_latest_record_open_first_and_bounded(clock: Clock) -> None:
    state = LiveState({}, max_incidents=3, clock=clock)
    state.ingest_incidents([incident_rec("a", "open"), incident_rec("b", "open"), incident_rec("c", "open")])
    state.ingest_incidents([incident_rec("a", "closed")])
    frame = state.incidents()[1]
    assert frame["incident_id"].tolist() == ["c", "b", "a"] and frame["status"].tolist() == ["open", "open", "closed"]
    state.ingest_incidents([incident_rec("d", "open")])  # over the bound: the closed one goes first
    assert sorted(state.incidents()[1]["incident_id"]) == ["b", "c", "d"]


def test_metrics_give_dead_letters_by_reason_and_shadow_counts(state: LiveState) -> None:
    for group, reasons, shadow in (("p0", {"bad_json": 3}, [10, 9, 1, 1]), ("p1", {"bad_json": 1, "too_big": 2},
                                                                          [5, 5, 0, 0])):
        g = GroupMetrics(f"events/{group}", pipeline="events")
        g.add_dead_letters(reasons)
        g.add_shadow("v2", shadow)
        state.ingest_metrics([metrics_record("events", f"events/{group}", g.snapshot())])
    assert state.dead_letters()[1] == {"bad_json": 4, "too_big": 2}
    assert state.model_events()[2] == {"v2": [15, 14, 1, 1]}
    state.ingest_control([b'{"action": "swap", "version": "v2", "pipeline": "events"}'], [T0])
    assert state.model_events()[1][-1]["version"] == "v2"


# -- keys ---------------------------------------------------------------------------------------------------------
def test_keys_keep_readings_band_and_windows(state: LiveState, seed: int) -> None:
    values = np.random.default_rng(seed).normal(10, 1, size=20)
    state.ingest_scores([score_rec(0.3, key="dp-1", value=float(v), anomaly=i == 15,
                                   at=f"2027-01-15T08:00:{i:02d}Z") for i, v in enumerate(values)])
    cursor, series = state.key_series("dp-1")
    assert cursor == 20 and series["value"].tolist() == pytest.approx(values.tolist())
    assert series["is_anomaly"].sum() == 1
    assert series["t"].iloc[1] - series["t"].iloc[0] == 1_000.0  # event time, ms
    # the band of row i: median ± 3 x 1.4826 x MAD of the 4 readings before it
    prev = values[6:10]
    med = np.median(prev)
    half = 3 * 1.4826 * np.median(np.abs(prev - med))
    assert series["value_lo"].iloc[10] == pytest.approx(med - half)
    assert series["value_hi"].iloc[10] == pytest.approx(med + half)
    assert series["value_lo"].iloc[:4].isna().all()
    assert len(state.key_series("dp-1", after=17)[1]) == 3 and state.key_series("dp-1", after=20)[1].empty
    win = {"kind": "window", "datapoint_id": "dp-1", "window_start": "2027-01-15T08:00:00Z",
           "window_end": "2027-01-15T08:01:00Z", "count": 20, "alarms": 2, "value_mean": 10.0, "revision": 1}
    state.ingest_stats([json.dumps(win).encode(), json.dumps({**win, "count": 21, "revision": 2}).encode()])
    version, windows = state.key_windows("dp-1")
    assert version == 2 and windows["count"].tolist() == [21]  # the revision replaced its window
    assert windows["value_mean"].tolist() == [10.0] and np.isnan(windows["value_min"]).all()


def _window(start_s: float, **numbers: object) -> dict[str, object]:
    return {"window_start_ms": start_s * 1000.0, "window_end_ms": start_s * 1000.0 + 60_000.0, "count": 10,
            **numbers}


def test_key_windows_keep_the_latest_starting_and_every_change_shows() -> None:
    store = KeyStore(("value",), windows=3)
    versions = []
    for start in (0, 60, 120, 180, 240):
        store.add_windows("k", [_window(start, value_mean=start / 60, alarms=True, anomalies="3")])
        versions.append(store.window_version("k"))
    assert versions == [1, 2, 3, 4, 5]  # still changing once the ring is full: the page redraws
    got = store.windows("k")
    assert got["window_start_ms"].tolist() == [120_000.0, 180_000.0, 240_000.0]
    assert got["value_mean"].tolist() == [2.0, 3.0, 4.0]
    assert got[["alarms", "anomalies"]].isna().all().all()  # a bool or text is not a count
    store.add_windows("k", [_window(0)])  # older than every kept window: not kept
    store.add_windows("k", [_window(180, count=11, revision=2)])  # a revision in place
    got = store.windows("k")
    assert got["window_start_ms"].tolist() == [120_000.0, 180_000.0, 240_000.0]
    assert got["count"].tolist() == [10, 11, 10] and store.window_version("k") == 6
    store.add_windows("k", [{"window_start_ms": None}, {"window_start_ms": True}])
    assert store.window_version("k") == 6 and store.windows("other").empty


def test_key_windows_keep_numbers_not_records() -> None:
    """160 keys x 120 windows of the engine's records: kept as decoded dicts that was 37 MB, as rows ~1.5 MB."""
    record = {"kind": "window", "datapoint_id": "x", "window_start": "2027-01-15T08:00:00Z",
              "window_end": "2027-01-15T08:01:00Z", "count": 5, "value_mean": 0.41, "value_min": 0.001,
              "value_max": 0.9, "value_std": 0.36, "anomalies": 0, "alarms": 0, "revision": 1,
              "anomaly_rate": 0.0, "alarm_rate": 0.0, "alert": False}
    raw = [json.dumps({**record, "window_start_ms": i * 60_000.0, "window_end_ms": i * 60_000.0 + 60_000.0}).encode()
           for i in range(120)]
    store = KeyStore(("value",), points=1)  # one reading per key: what is measured is the windows
    tracemalloc.start()
    try:
        for k in range(160):
            store.add_windows(f"key-{k}", [json.loads(r) for r in raw])
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert kept < 4_000_000, f"{kept / 1e6:.1f} MB for 19,200 windows"
    assert len(store.windows("key-7")) == 120


def test_key_store_is_bounded_in_keys_and_points() -> None:
    store = KeyStore(("value",), max_keys=3, points=5)
    for i in range(5):
        store.add_points(np.array([f"k{i}"] * 8, dtype=object), np.arange(8.0), np.full(8, 0.2), np.zeros(8, bool),
                         {"value": np.arange(8.0)})
    assert [k for k, _, _ in store.keys()] == ["k2", "k3", "k4"] and store.forgotten == 2
    assert store.series("k4")["value"].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert store.cursor("k4") == 8 and store.series("gone").empty
    with pytest.raises(ValueError, match="max_keys"):
        KeyStore((), max_keys=0)


# -- threads ------------------------------------------------------------------------------------------------------
def test_concurrent_ingest_ticks_and_reads_lose_nothing(clock: Clock) -> None:
    state = LiveState({}, history_s=60, max_scores=100_000, clock=clock, value_fields=("value",))
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            state.tick()
            state.timeline(0)
            state.kpis()
            state.key_series("k")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(50):
        state.ingest_scores([score_rec(0.4)] * 100)
    done.set()
    for t in threads:
        t.join()
    state.tick()  # the numbers are built once per tick
    assert state.scores_in_histogram == 5_000 and state.kpis().events == 5_000


def test_start_and_stop_without_a_reachable_broker() -> None:
    state = LiveState({"bootstrap.servers": "127.0.0.1:1", "socket.connection.setup.timeout.ms": 1000})
    state.start()
    assert state.running
    state.stop(timeout_s=10)
    assert not state.running
