"""Per-group metrics: histogram quantiles and merges, JSON-able snapshots, and a real scrape of /metrics."""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.telemetry import (
    LATENCY_BUCKETS,
    GroupMetrics,
    LatencyHistogram,
    MetricsHub,
    TelemetryError,
    metrics_record,
    read_metrics_record,
)

BUCKET_RATIO = (120_000 / 0.5) ** (1 / LATENCY_BUCKETS)  # ~1.23: how far apart two bucket edges are


def latencies(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mostly tens of ms with a long tail, as an engine's latencies look."""
    return np.concatenate([rng.lognormal(mean=3.0, sigma=0.8, size=n - n // 20),
                           rng.uniform(1_000, 60_000, size=n // 20)])


def filled_group(rng: np.random.Generator, group: str = "events/p0.2", n: int = 5_000,
                 pipeline: str = "events") -> GroupMetrics:
    g = GroupMetrics(group, pipeline=pipeline)
    g.add(records_in=n + 7, events_scored=n, late_events=3, anomalies=n // 100, commits=4, errors=1)
    g.add_dead_letters({"invalid_json": 5, "missing_field": 2})
    g.lag, g.model_version, g.events_per_s, g.restored_partitions = 42, "v3", 950.5, 2
    g.latency.observe_many(latencies(rng, n))
    return g


# -- the histogram -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [0.01, 0.25, 0.5, 0.9, 0.99, 0.999])
def test_quantiles_are_within_a_bucket_width_of_numpy(seed: int, q: float) -> None:
    data = latencies(np.random.default_rng(seed), 100_000)
    h = LatencyHistogram()
    for chunk in np.array_split(data, 13):
        h.observe_many(chunk)
    estimate, exact = h.quantile(q), float(np.percentile(data, q * 100))
    assert estimate is not None
    assert abs(math.log(estimate / exact)) <= math.log(BUCKET_RATIO)


def test_quantiles_at_the_ends_and_outside_the_buckets() -> None:
    h = LatencyHistogram()
    assert h.quantile(0.5) is None and h.count == 0
    h.observe_many(np.array([0.01, 0.2, 3.0, 500_000.0, np.nan]))  # under- and overflow, NaN dropped
    assert h.count == 4
    assert h.quantile(0.0) == 0.01 and h.quantile(1.0) == 500_000.0
    assert h.counts[0] == 2 and h.counts[-1] == 1
    assert 120_000 <= h.quantile(0.9) <= 500_000
    negative = LatencyHistogram()  # clock skew between producer and engine: a negative latency still counts
    negative.observe_many(np.array([-5.0, 10.0]))
    assert negative.quantile(0.0) == -5.0 and negative.count == 2
    with pytest.raises(TelemetryError, match="q must be in"):
        h.quantile(1.5)


def test_merge_equals_observing_everything(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [latencies(rng, n) for n in (10, 3_000, 777)]
    one = LatencyHistogram()
    one.observe_many(np.concatenate(parts))
    merged = LatencyHistogram()
    for part in parts:
        h = LatencyHistogram()
        h.observe_many(part)
        merged = merged.merge(h)
    assert merged.counts.tolist() == one.counts.tolist()
    assert (merged.min_ms, merged.max_ms) == (one.min_ms, one.max_ms)
    assert merged.sum_ms == pytest.approx(one.sum_ms)
    assert [merged.quantile(q) for q in (0.5, 0.99)] == [one.quantile(q) for q in (0.5, 0.99)]


def test_merge_refuses_different_buckets() -> None:
    with pytest.raises(TelemetryError, match="differ"):
        LatencyHistogram().merge(LatencyHistogram(hi_ms=60_000.0))
    with pytest.raises(TelemetryError, match="lo_ms < hi_ms"):
        LatencyHistogram(lo_ms=5.0, hi_ms=1.0)


def test_histogram_dict_round_trips_through_json(seed: int) -> None:
    h = LatencyHistogram()
    h.observe_many(latencies(np.random.default_rng(seed), 1_000))
    back = LatencyHistogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.to_dict() == h.to_dict()
    empty = LatencyHistogram.from_dict(json.loads(json.dumps(LatencyHistogram().to_dict())))
    assert empty.count == 0 and empty.quantile(0.5) is None
    with pytest.raises(TelemetryError, match="counts"):
        LatencyHistogram.from_dict({**h.to_dict(), "counts": [1, 2]})
    with pytest.raises(TelemetryError, match="not a histogram"):
        LatencyHistogram.from_dict({"counts": []})


# -- group metrics and their snapshot ------------------------------------------------------------------------
def test_snapshot_round_trips_and_is_plain_json(seed: int) -> None:
    g = filled_group(np.random.default_rng(seed))
    snap = g.snapshot(ts=1_800_000_000.5)
    text = json.dumps(snap, allow_nan=False)  # no numpy scalars, no NaN, str keys only
    assert json.loads(text) == snap
    back = GroupMetrics.from_snapshot(json.loads(text))
    assert back.snapshot(ts=1_800_000_000.5) == snap
    assert (back.pipeline, back.records_in, back.dead_letters, back.lag, back.model_version) == \
        ("events", 5_007, {"invalid_json": 5, "missing_field": 2}, 42, "v3")
    assert (back.restored_partitions, back.waiting_for_model) == (2, False)


def test_an_empty_group_snapshot_is_plain_json() -> None:
    snap = GroupMetrics("events/p3").snapshot()
    assert json.loads(json.dumps(snap, allow_nan=False)) == snap
    assert snap["model_version"] is None and snap["latency_ms"]["min_ms"] is None


def test_latency_is_kafka_timestamp_to_commit() -> None:
    g = GroupMetrics("g")
    g.observe_committed(np.array([1_000, 1_000, 1_000], dtype=np.int64), committed_at_s=1.25)
    assert g.latency.count == 3 and g.latency.quantile(0.5) == 250.0


def test_bad_snapshots_and_counters_are_named() -> None:
    with pytest.raises(TelemetryError, match="unknown counter 'records'"):
        GroupMetrics("g").add(records=1)
    snap = GroupMetrics("g").snapshot()
    with pytest.raises(TelemetryError, match=r"lacks \['lag'\]"):
        GroupMetrics.from_snapshot({k: v for k, v in snap.items() if k != "lag"})
    with pytest.raises(TelemetryError, match="wrong type"):
        GroupMetrics.from_snapshot({**snap, "records_in": "many"})
    with pytest.raises(TelemetryError, match="schema 2"):
        GroupMetrics.from_snapshot({**snap, "schema": 2})


def test_group_merge_adds_counters_and_merges_latency(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = filled_group(rng, "events/p0.2"), filled_group(rng, "events/p1.3", n=2_000)
    b.model_version = "v4"
    both = a.merge(b, group="all")
    assert both.events_scored == 7_000 and both.lag == 84 and both.dead_letters["invalid_json"] == 10
    assert both.model_version is None  # two versions: no single one to report
    assert both.latency.counts.tolist() == (a.latency.counts + b.latency.counts).tolist()


# -- the metrics record ----------------------------------------------------------------------------------------
def test_metrics_record_carries_the_documented_keys(seed: int) -> None:
    snap = filled_group(np.random.default_rng(seed)).snapshot(ts=5.0)
    value = metrics_record("events", "events/p0.2", snap)
    rec = json.loads(value)
    assert set(rec) == {"schema", "pipeline", "group", "ts", "records_in", "events_scored", "dead_letters",
                        "late_events", "warmup_events", "anomalies", "incidents_opened", "incidents_closed",
                        "windows_closed", "commits", "errors", "lag", "model_version", "events_per_s",
                        "restored_partitions", "waiting_for_model", "watermark_ms", "committed_watermark_ms", "shadow", "latency_ms"}
    assert (rec["pipeline"], rec["group"], rec["schema"]) == ("events", "events/p0.2", 1)
    assert read_metrics_record(value) == ("events", "events/p0.2", snap)
    with pytest.raises(TelemetryError, match="sent as 'events'/'events/p9'"):
        metrics_record("events", "events/p9", snap)
    with pytest.raises(TelemetryError, match="sent as 'other'/'events/p0.2'"):
        metrics_record("other", "events/p0.2", snap)
    with pytest.raises(TelemetryError, match="not JSON"):
        read_metrics_record(b"\x00")


# -- the hub and its Prometheus endpoint -------------------------------------------------------------------------
def test_hub_keeps_the_latest_snapshot_per_group_and_totals(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hub = MetricsHub()
    a, b = filled_group(rng, "events/p0.2"), filled_group(rng, "events/p1.3")
    other = filled_group(rng, "x/p0", pipeline="other")
    hub.update("events", a.group, a.snapshot(ts=10.0))
    a.add(events_scored=100)
    hub.update("events", a.group, a.snapshot(ts=12.0))
    hub.update("events", a.group, GroupMetrics(a.group).snapshot(ts=11.0))  # arrives late: ignored
    hub.update(*read_metrics_record(metrics_record("events", b.group, b.snapshot(ts=12.0))))  # via the topic
    hub.update("events", b.group, b.snapshot(ts=12.0))
    hub.update("other", other.group, other.snapshot(ts=12.0))
    totals = hub.totals("events")
    assert totals["events_scored"] == 10_100 and totals["groups"] == 2 and totals["lag"] == 84
    assert totals["dead_letters"] == 14
    assert totals["dead_letters_by_reason"] == {"invalid_json": 10, "missing_field": 4}
    assert totals["model_versions"] == ["v3"]
    exact = a.latency.merge(b.latency)
    assert totals["latency_p99_ms"] == exact.quantile(0.99)
    assert hub.totals()["groups"] == 3
    json.dumps(hub.totals(), allow_nan=False)
    assert [(p, g) for p, g, _ in hub.items()] == [("events", a.group), ("events", b.group), ("other", other.group)]
    assert hub.items()[0][2] == a.snapshot(ts=12.0)
    hub.forget("other", other.group)
    assert hub.totals()["groups"] == 2
    with pytest.raises(TelemetryError, match="sent as"):
        hub.update("events", "events/p7", a.snapshot())
    with pytest.raises(TelemetryError, match="sent as"):
        hub.update("other", a.group, a.snapshot())
    with pytest.raises(TelemetryError, match="lacks"):
        hub.update("events", a.group, {"records_in": 1})


@pytest.fixture
def served_hub() -> Iterator[tuple[MetricsHub, int]]:
    hub = MetricsHub()
    _, port = hub.serve()
    try:
        yield hub, port
    finally:
        hub.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_endpoint_serves_the_labelled_series(served_hub: tuple[MetricsHub, int], seed: int) -> None:
    hub, port = served_hub
    assert not [k for k in scrape(port) if k[0].startswith("isostream_records")]  # nothing reported yet
    g = filled_group(np.random.default_rng(seed))
    hub.update("events", g.group, g.snapshot(ts=1_800_000_000.0))
    samples = scrape(port)
    lab = (("group", "events/p0.2"), ("pipeline", "events"))

    def value(name: str, **extra: str) -> float:
        return samples[(name, tuple(sorted((*lab, *extra.items()))))]

    assert value("isostream_records_total") == 5_007
    assert value("isostream_events_scored_total") == 5_000
    assert value("isostream_dead_letters_total", reason="invalid_json") == 5
    assert value("isostream_dead_letters_total", reason="missing_field") == 2
    assert value("isostream_late_events_total") == 3
    assert value("isostream_anomalies_total") == 50
    assert value("isostream_lag") == 42
    assert value("isostream_events_per_second") == 950.5
    assert value("isostream_model_info", version="v3") == 1
    assert value("isostream_snapshot_timestamp_seconds") == 1_800_000_000.0
    assert (value("isostream_restored_partitions"), value("isostream_waiting_for_model")) == (2, 0)
    assert value("isostream_latency_seconds_count") == 5_000
    assert value("isostream_latency_seconds_sum") == pytest.approx(g.latency.sum_ms / 1000)
    assert value("isostream_latency_seconds_bucket", le="+Inf") == 5_000
    assert value("isostream_latency_quantile_seconds", quantile="0.5") == pytest.approx(g.latency.quantile(0.5) / 1000)
    assert value("isostream_latency_quantile_seconds", quantile="0.99") == pytest.approx(g.latency.quantile(0.99) / 1000)
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in samples.items() if k[0] == "isostream_latency_seconds_bucket")
    assert len(buckets) == LATENCY_BUCKETS + 2
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative


def test_serve_is_on_loopback_and_stop_frees_the_port() -> None:
    hub = MetricsHub()
    server, port = hub.serve()
    try:
        assert server.server_address[0] == "127.0.0.1" and port > 0
        with pytest.raises(TelemetryError, match="already serving"):
            hub.serve()
    finally:
        hub.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    again = MetricsHub()
    _, same = again.serve(port=port)  # the port is free again
    again.stop()
    assert same == port
