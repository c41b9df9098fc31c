"""LiveState fed directly (no Kafka): histogram, per-second throughput, KPIs, bad records, alerts, threads."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from dashboards.aggregate import PerSecond, RollingHistogram
from dashboards.records import parse_score, parse_stats
from dashboards.state import LiveState
from engine.config import Topics
from engine.outputs import SCORE_BINS

T0 = 1_800_000_000.0  # a fixed "now" so per-second buckets are exact


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def score_rec(score: float, *, anomaly: bool = False, threshold: float = 0.6, version: str = "v1") -> bytes:
    return json.dumps(
        {"key": "k", "event_time": "2027-01-15T08:00:00Z", "score": score, "threshold": threshold,
         "is_anomaly": anomaly, "model_version": version, "partition": 0, "offset": 1}
    ).encode()


def stats_rec(events: int, anomalies: int = 0, dead: int = 0, lag: int = 0, version: str = "v1") -> bytes:
    return json.dumps(
        {"ts": T0, "events": events, "events_per_s": 100.0, "dead_letters": dead, "anomalies": anomalies,
         "lag": lag, "batch_latency_ms": 12.5, "model_version": version, "threshold": 0.6,
         "score_hist": {"edges": [0.0, 1.0], "counts": [events]}}
    ).encode()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> LiveState:
    return LiveState({"bootstrap.servers": "127.0.0.1:1"}, Topics(), history_s=60, max_scores=1_000, clock=clock)


def test_histogram_counts_the_scores_in_the_engine_bins(state: LiveState, seed: int) -> None:
    scores = np.random.default_rng(seed).beta(2, 5, size=700)
    assert state.ingest_scores([score_rec(float(s)) for s in scores]) == 700
    snap = state.snapshot()
    assert snap.histogram["count"].sum() == snap.scores_in_histogram == 700
    np.testing.assert_array_equal(snap.histogram["count"], np.histogram(scores, bins=SCORE_BINS)[0])
    np.testing.assert_allclose(snap.histogram["left"], SCORE_BINS[:-1])
    assert snap.threshold == 0.6


def test_histogram_keeps_only_the_last_max_scores(state: LiveState, seed: int) -> None:
    scores = np.random.default_rng(seed).uniform(size=2_500)
    for chunk in np.array_split(scores, 7):  # uneven batches wrap the ring at different points
        state.ingest_scores([score_rec(float(s)) for s in chunk])
    counts = state.snapshot().histogram["count"].to_numpy()
    assert counts.sum() == 1_000
    np.testing.assert_array_equal(counts, np.histogram(scores[-1_000:], bins=SCORE_BINS)[0])


def test_rolling_histogram_clips_out_of_range_scores() -> None:
    h = RollingHistogram(capacity=10, edges=np.array([0.0, 0.5, 1.0]))
    h.add(np.array([-3.0, 0.0, 1.0, 7.0]))
    assert h.counts.tolist() == [2, 2]
    with pytest.raises(ValueError, match="capacity"):
        RollingHistogram(capacity=0)


def test_throughput_and_anomalies_per_second(state: LiveState, clock: Clock) -> None:
    # 3 events in second T0-2 (one anomalous), none in T0-1, 2 in T0 (both anomalous)
    stamps = [T0 - 2 + 0.1, T0 - 2 + 0.5, T0 - 2 + 0.9, T0 + 0.2, T0 + 0.4]
    flags = [False, True, False, True, True]
    state.ingest_scores([score_rec(0.5, anomaly=f) for f in flags], stamps)
    timeline = state.snapshot().timeline
    assert len(timeline) == 60  # one zero-filled row per second of history
    assert timeline["time"].iloc[-1] == np.datetime64(int(T0), "s")
    assert timeline["events"].tail(3).tolist() == [3, 0, 2]
    assert timeline["anomalies"].tail(3).tolist() == [1, 0, 2]
    assert timeline["anomaly_rate"].tail(3).tolist() == pytest.approx([1 / 3, 0.0, 1.0])
    assert timeline["events"].sum() == 5


def test_timeline_slides_and_forgets_old_seconds(state: LiveState, clock: Clock) -> None:
    state.ingest_scores([score_rec(0.1)] * 4, [T0] * 4)
    state.ingest_scores([score_rec(0.1)], [T0 - 3_600])  # an hour old: outside the window, not counted
    assert state.snapshot().timeline["events"].sum() == 4
    clock.now = T0 + 61
    assert state.snapshot().timeline["events"].sum() == 0
    assert state.snapshot().scores_in_histogram == 5  # the histogram is bounded by count, not time


def test_per_second_rejects_a_nonpositive_window() -> None:
    with pytest.raises(ValueError, match="history_s"):
        PerSecond(history_s=0)


def test_kpis_come_from_stats_totals(state: LiveState, clock: Clock) -> None:
    state.ingest_scores([score_rec(0.2)] * 3)
    kpis = state.snapshot().kpis
    assert (kpis.events, kpis.anomalies, kpis.lag) == (3, 0, None)  # no stats yet: counted from scores
    state.ingest_stats([stats_rec(500, anomalies=4, dead=1, lag=30), stats_rec(250, anomalies=2, lag=7, version="v2")])
    kpis = state.snapshot().kpis
    assert (kpis.events, kpis.anomalies, kpis.dead_letters, kpis.lag) == (750, 6, 1, 7)
    assert kpis.model_version == "v2"
    assert kpis.batch_latency_ms == 12.5


def test_events_per_s_is_the_mean_of_the_last_five_complete_seconds(state: LiveState, clock: Clock) -> None:
    for k in range(1, 6):
        state.ingest_scores([score_rec(0.3)] * (10 * k), [T0 - k + 0.5] * (10 * k))
    state.ingest_scores([score_rec(0.3)] * 99, [T0 + 0.1] * 99)  # the current, partial second is excluded
    assert state.snapshot().kpis.events_per_s == pytest.approx(30.0)


@pytest.mark.parametrize(
    "bad",
    [b"", b"not json", b"[1, 2]", b'"a string"', b"\xff\xfe", b'{"score": "high"}', b'{"score": NaN}',
     b'{"score": true}', b'{"threshold": 0.5}', b'{"score": 1e999}'],
)
def test_bad_score_records_are_skipped_and_counted(state: LiveState, bad: bytes) -> None:
    assert state.ingest_scores([score_rec(0.4), bad, score_rec(0.9, anomaly=True)]) == 2
    snap = state.snapshot()
    assert snap.scores_in_histogram == 2
    assert snap.kpis.bad_records == 1
    assert state.bad_records == {"scores": 1, "stats": 0, "alerts": 0}


def test_bad_stats_and_alerts_are_skipped_and_counted(state: LiveState) -> None:
    assert state.ingest_stats([b"{", b'{"events": -1}', b'{"events": "3"}', stats_rec(10)]) == 1
    assert state.ingest_alerts([b"null", b'{"no": "score"}', b'{"score": 0.9}']) == 1
    assert state.bad_records == {"scores": 0, "stats": 3, "alerts": 2}
    assert state.snapshot().kpis.events == 10


def test_record_parsers_read_the_architecture_formats() -> None:
    rec = parse_score(score_rec(0.75, anomaly=True, threshold=0.7, version="v3"))
    assert rec is not None and (rec.score, rec.is_anomaly, rec.threshold, rec.model_version) == (0.75, True, 0.7, "v3")
    stats = parse_stats(stats_rec(42, anomalies=3, dead=2, lag=9))
    assert stats is not None and (stats.events, stats.anomalies, stats.dead_letters, stats.lag) == (42, 3, 2, 9)
    assert parse_score({"score": 0.5}) == parse_score('{"score": 0.5}')


def test_alerts_table_is_newest_first_with_readable_columns(state: LiveState) -> None:
    alerts = [
        {"station_id": f"s{i}", "datapoint_id": "d", "event_time": f"2027-01-15T08:00:0{i}Z", "value": float(i),
         "score": 0.912345 + i / 100, "threshold": 0.6, "is_anomaly": True, "model_version": "v1",
         "kafka_partition": 0, "kafka_offset": i, "explanation": {"value": "high"}}
        for i in range(3)
    ]
    assert state.ingest_alerts([json.dumps(a) for a in alerts]) == 3
    table = state.snapshot().alerts
    assert table["station_id"].tolist() == ["s2", "s1", "s0"]
    assert table.columns[0] == "event_time"
    assert list(table.columns[-4:]) == ["score", "threshold", "explanation", "model_version"]
    assert "is_anomaly" not in table and "kafka_offset" not in table
    assert table["score"].iloc[0] == pytest.approx(0.9323)
    assert table["explanation"].iloc[0] == '{"value": "high"}'


def test_alerts_table_is_bounded(clock: Clock) -> None:
    state = LiveState({}, history_s=10, max_alerts=50, alerts_shown=5, clock=clock)
    state.ingest_alerts([{"score": 0.9, "key": str(i)} for i in range(200)])
    assert state.snapshot().alerts["key"].tolist() == ["199", "198", "197", "196", "195"]


def test_snapshot_is_shared_until_data_or_the_second_changes(state: LiveState, clock: Clock) -> None:
    first = state.snapshot()
    assert state.snapshot() is first  # every session in the same second gets the same object
    clock.now += 0.5
    assert state.snapshot() is first
    clock.now += 1.0
    second = state.snapshot()
    assert second is not first and second.version == first.version
    state.ingest_scores([score_rec(0.5)])
    third = state.snapshot()
    assert third.version == second.version + 1
    assert state.ingest_scores([b"junk"]) == 0
    assert state.snapshot().version == third.version  # nothing usable: no redraw


def test_ingest_scores_rejects_mismatched_timestamps(state: LiveState) -> None:
    with pytest.raises(ValueError, match="2 records but 1 timestamps"):
        state.ingest_scores([score_rec(0.1), score_rec(0.2)], [T0])


def test_concurrent_ingest_and_snapshots_lose_nothing(clock: Clock) -> None:
    state = LiveState({}, history_s=60, max_scores=100_000, clock=clock)
    batches, per_batch = 50, 40

    def feed() -> None:
        for _ in range(batches):
            state.ingest_scores([score_rec(0.5)] * per_batch, [T0] * per_batch)
            state.ingest_stats([stats_rec(per_batch)])

    threads = [threading.Thread(target=feed) for _ in range(3)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        state.snapshot()  # readers race the writers
    for t in threads:
        t.join()
    snap = state.snapshot()
    assert snap.scores_in_histogram == snap.timeline["events"].sum() == 3 * batches * per_batch
    assert snap.kpis.events == 3 * batches * per_batch


def test_start_and_stop_without_a_reachable_broker() -> None:
    state = LiveState({"bootstrap.servers": "127.0.0.1:1", "socket.connection.setup.timeout.ms": 1000})
    state.start()
    assert state.running
    time.sleep(0.3)
    started = time.monotonic()
    state.stop()
    assert not state.running
    assert time.monotonic() - started < 8  # bounded by the metadata timeout, not a hang
