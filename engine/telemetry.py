"""Per-partition-group metrics that a worker snapshots and the driver merges, and their Prometheus exposition.

Each Dask worker runs the whole chain for one partition group and keeps a :class:`GroupMetrics`; its
:meth:`~GroupMetrics.snapshot` is a plain JSON-able dict (str keys, lists, numbers, None) because it travels
through Dask's msgpack event log and, as :func:`metrics_record`, to the ``metrics`` topic. The driver's
:class:`MetricsHub` keeps the latest snapshot per (pipeline, group) and renders them for Prometheus.

A ``metrics`` record (one JSON object per group and report) has these keys:

=======================  =====================================================================================
``schema``               1, this layout
``pipeline``             the pipeline's name, e.g. ``"events"``
``group``                the partition group, e.g. ``"events/p0.2"``
``ts``                   epoch seconds when the worker took the snapshot
``records_in``           Kafka records consumed (counters count since the group's worker started)
``events_scored``        events scored and committed
``dead_letters``         {reason: count} of records sent to the dead-letter topic
``late_events``          events whose event-time window had already closed
``warmup_events``        events of keys whose baseline was still filling (scored, never alerted on)
``anomalies``            events flagged
``incidents_opened``     incidents opened (one page each) ...
``incidents_closed``     ... and closed
``windows_closed``       per-key windows closed and emitted
``commits``              offset commits
``errors``               errors survived
``lag``                  total consumer lag of the group's partitions (records)
``model_version``        the model scoring now, or null
``events_per_s``         the recent scoring rate
``restored_partitions``  partitions whose state came back from a checkpoint when the group started
``waiting_for_model``    true while events wait for a first model
``watermark_ms``         the group's event-time watermark (min over its partitions; merged: the min), or null
``committed_watermark_ms`` the watermark as of the group's last completed commit (every row before it is in
                         the lake); the engine closes a lake day when this passes its midnight
``shadow``               per shadow candidate version: ``[events, agree, candidate_alerts, champion_alerts]``
                         over warm events scored beside the champion
``latency_ms``           :meth:`LatencyHistogram.to_dict`: Kafka message timestamp -> outputs committed, in ms
=======================  =====================================================================================

>>> g = GroupMetrics("events/p0.2", pipeline="events")
>>> g.add(records_in=3, events_scored=3)
>>> g.observe_committed(np.array([1_000.0, 1_000.0, 1_000.0]), committed_at_s=1.1)  # 100 ms each
>>> hub = MetricsHub()
>>> hub.update("events", "events/p0.2", g.snapshot())
>>> hub.totals()["events_scored"], round(hub.totals()["latency_p50_ms"])
(3, 100)
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

SCHEMA_VERSION = 1
#: the default latency buckets: 60 log-spaced buckets from 0.5 ms to 120 s, ~23 % wide each
LATENCY_LO_MS, LATENCY_HI_MS, LATENCY_BUCKETS = 0.5, 120_000.0, 60
COUNTERS = ("records_in", "events_scored", "late_events", "warmup_events", "anomalies", "incidents_opened",
            "incidents_closed", "windows_closed", "commits", "errors")
QUANTILES = (0.5, 0.99)


class TelemetryError(ValueError):
    """A snapshot or histogram that cannot be read or merged."""


class LatencyHistogram:
    """Counts of latencies in fixed log-spaced buckets: mergeable across groups and workers, cheap to send.

    ``counts[0]`` holds values up to the first edge, ``counts[i]`` those in ``(edges[i-1], edges[i]]`` (the
    Prometheus ``le`` convention) and ``counts[-1]`` those above the last edge. NaN observations are dropped.

    >>> h = LatencyHistogram()
    >>> h.observe_many(np.array([1.0, 2.0, 3.0, 400.0]))
    >>> h.count, h.quantile(0.0), h.quantile(1.0)
    (4, 1.0, 400.0)
    """

    def __init__(self, lo_ms: float = LATENCY_LO_MS, hi_ms: float = LATENCY_HI_MS,
                 buckets: int = LATENCY_BUCKETS) -> None:
        if not (0 < lo_ms < hi_ms and math.isfinite(hi_ms) and buckets >= 1):
            msg = f"LatencyHistogram: needs 0 < lo_ms < hi_ms and buckets >= 1, got {lo_ms}, {hi_ms}, {buckets}"
            raise TelemetryError(msg)
        self.lo_ms, self.hi_ms, self.buckets = float(lo_ms), float(hi_ms), int(buckets)
        self.edges = np.geomspace(self.lo_ms, self.hi_ms, self.buckets + 1)
        self.counts = np.zeros(self.buckets + 2, dtype=np.int64)
        self.sum_ms = 0.0
        self.min_ms = math.inf
        self.max_ms = -math.inf

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def observe_many(self, ms: np.ndarray) -> None:
        """Count a batch of latencies (ms) in one pass."""
        vals = np.asarray(ms, dtype=np.float64).ravel()
        vals = vals[~np.isnan(vals)]
        if not len(vals):
            return
        idx = np.searchsorted(self.edges, vals, side="left")
        self.counts += np.bincount(idx, minlength=len(self.counts))
        finite = vals[np.isfinite(vals)]
        self.sum_ms += float(finite.sum())
        self.min_ms = min(self.min_ms, float(vals.min()))
        self.max_ms = max(self.max_ms, float(vals.max()))

    def _check_same_buckets(self, other: LatencyHistogram) -> None:
        if (self.lo_ms, self.hi_ms, self.buckets) != (other.lo_ms, other.hi_ms, other.buckets):
            msg = (f"LatencyHistogram.merge: buckets {self.lo_ms}..{self.hi_ms} ms x{self.buckets} and "
                   f"{other.lo_ms}..{other.hi_ms} ms x{other.buckets} differ")
            raise TelemetryError(msg)

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """A new histogram of both; equal to one that observed everything both did."""
        self._check_same_buckets(other)
        out = LatencyHistogram(self.lo_ms, self.hi_ms, self.buckets)
        out.counts = self.counts + other.counts
        out.sum_ms = self.sum_ms + other.sum_ms
        out.min_ms, out.max_ms = min(self.min_ms, other.min_ms), max(self.max_ms, other.max_ms)
        return out

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) in ms, interpolated in its bucket (log-linear); None when empty.

        Within a bucket's width of the exact quantile; clipped to the observed min and max.
        """
        if not 0.0 <= q <= 1.0:
            msg = f"LatencyHistogram.quantile: q must be in [0, 1], got {q}"
            raise TelemetryError(msg)
        n = self.count
        if n == 0:
            return None
        cum = np.cumsum(self.counts)
        rank = q * n
        b = int(np.searchsorted(cum, rank, side="left"))
        b = min(max(b, int(np.flatnonzero(self.counts)[0])), len(self.counts) - 1)  # q == 0: the first filled one
        before = float(cum[b] - self.counts[b])
        frac = min(max((rank - before) / float(self.counts[b]), 0.0), 1.0)
        lo = self.edges[b - 1] if b > 0 else self.min_ms
        hi = self.edges[b] if b < self.buckets + 1 else self.max_ms
        lo, hi = max(lo, self.min_ms), min(hi, self.max_ms)
        if lo > 0 and math.isfinite(hi) and hi > lo:
            value = lo * (hi / lo) ** frac
        else:  # under- or overflow bucket reaching zero, negatives (clock skew) or infinity
            value = lo + (hi - lo) * frac if math.isfinite(hi - lo) else (hi if frac > 0 else lo)
        return float(min(max(value, self.min_ms), self.max_ms))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (min / max are null while empty)."""
        empty = self.count == 0
        return {
            "lo_ms": self.lo_ms,
            "hi_ms": self.hi_ms,
            "buckets": self.buckets,
            "counts": self.counts.tolist(),
            "sum_ms": self.sum_ms,
            "min_ms": None if empty else _json_float(self.min_ms),
            "max_ms": None if empty else _json_float(self.max_ms),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyHistogram:
        try:
            out = cls(d["lo_ms"], d["hi_ms"], d["buckets"])
            counts = np.asarray(d["counts"], dtype=np.int64)
            if counts.shape != out.counts.shape or (counts < 0).any():
                msg = f"LatencyHistogram.from_dict: {len(counts)} counts for {out.buckets} buckets (+2), or negative"
                raise TelemetryError(msg)
            out.counts = counts
            out.sum_ms = float(d["sum_ms"])
            if out.count:
                out.min_ms, out.max_ms = _read_float(d["min_ms"]), _read_float(d["max_ms"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TelemetryError):
                raise
            msg = f"LatencyHistogram.from_dict: not a histogram dict ({type(exc).__name__}: {exc})"
            raise TelemetryError(msg) from exc
        return out


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")  # JSON has no infinities


def _read_float(x: Any) -> float:
    return float(x)  # float("inf") reads the strings _json_float writes


@dataclass
class GroupMetrics:
    """The counters and gauges of one partition group, kept by the worker that runs it."""

    group: str
    pipeline: str = ""
    records_in: int = 0
    events_scored: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    late_events: int = 0
    warmup_events: int = 0
    anomalies: int = 0
    incidents_opened: int = 0
    incidents_closed: int = 0
    windows_closed: int = 0
    commits: int = 0
    errors: int = 0
    lag: int = 0
    model_version: str | None = None
    events_per_s: float = 0.0
    restored_partitions: int = 0
    waiting_for_model: bool = False
    #: event-time watermark in epoch ms (the min over the group's partitions), None before any event
    watermark_ms: float | None = None
    committed_watermark_ms: float | None = None
    #: shadow candidate version -> [events, agree, candidate alerts, champion alerts]
    shadow: dict[str, list[int]] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add_shadow(self, version: str, counts: Sequence[int]) -> None:
        have = self.shadow.setdefault(str(version), [0, 0, 0, 0])
        for i, n in enumerate(counts):
            have[i] += int(n)

    def add(self, **counts: int) -> None:
        """Add to the counters by name: ``add(records_in=500, events_scored=498)``."""
        for name, n in counts.items():
            if name not in COUNTERS:
                msg = f"GroupMetrics.add: unknown counter {name!r} (counters: {', '.join(COUNTERS)})"
                raise TelemetryError(msg)
            setattr(self, name, getattr(self, name) + int(n))

    def add_dead_letters(self, by_reason: Mapping[str, int]) -> None:
        for reason, n in by_reason.items():
            self.dead_letters[str(reason)] = self.dead_letters.get(str(reason), 0) + int(n)

    def observe_committed(self, kafka_ts_ms: np.ndarray, committed_at_s: float | None = None) -> None:
        """Record ingest->scored latency: each event's Kafka timestamp to when its batch's outputs committed."""
        now_ms = (time.time() if committed_at_s is None else committed_at_s) * 1000.0
        self.latency.observe_many(now_ms - np.asarray(kafka_ts_ms, dtype=np.float64))

    def merge(self, other: GroupMetrics, group: str | None = None) -> GroupMetrics:
        """Counters, lag and rate added, latencies merged; the model version kept where they do not disagree."""
        pipeline = self.pipeline if self.pipeline == other.pipeline else ""
        out = GroupMetrics(group or f"{self.group}+{other.group}", pipeline=pipeline)
        for name in COUNTERS:
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.add_dead_letters(self.dead_letters)
        out.add_dead_letters(other.dead_letters)
        out.lag = self.lag + other.lag
        out.events_per_s = self.events_per_s + other.events_per_s
        out.restored_partitions = self.restored_partitions + other.restored_partitions
        out.waiting_for_model = self.waiting_for_model or other.waiting_for_model
        marks = [w for w in (self.watermark_ms, other.watermark_ms) if w is not None]
        out.watermark_ms = min(marks) if marks else None  # the engine's watermark: the slowest partition's
        marks = [w for w in (self.committed_watermark_ms, other.committed_watermark_ms) if w is not None]
        out.committed_watermark_ms = min(marks) if marks else None
        for src in (self.shadow, other.shadow):
            for version, counts in src.items():
                out.add_shadow(version, counts)
        versions = {v for v in (self.model_version, other.model_version) if v is not None}
        out.model_version = versions.pop() if len(versions) == 1 else None
        out.latency = self.latency.merge(other.latency)
        return out

    def snapshot(self, ts: float | None = None) -> dict[str, Any]:
        """A plain JSON-able dict of everything (see the module docstring for the keys)."""
        return {
            "schema": SCHEMA_VERSION,
            "pipeline": self.pipeline,
            "group": self.group,
            "ts": time.time() if ts is None else float(ts),
            **{name: int(getattr(self, name)) for name in COUNTERS},
            "dead_letters": {str(k): int(v) for k, v in sorted(self.dead_letters.items())},
            "lag": int(self.lag),
            "model_version": self.model_version,
            "events_per_s": float(self.events_per_s),
            "restored_partitions": int(self.restored_partitions),
            "waiting_for_model": bool(self.waiting_for_model),
            "watermark_ms": self.watermark_ms,
            "committed_watermark_ms": self.committed_watermark_ms,
            "shadow": {k: [int(x) for x in v] for k, v in self.shadow.items()},
            "latency_ms": self.latency.to_dict(),
        }

    @classmethod
    def from_snapshot(cls, snap: Mapping[str, Any]) -> GroupMetrics:
        if not isinstance(snap, Mapping):
            msg = f"GroupMetrics.from_snapshot: a snapshot is a dict, got {type(snap).__name__}"
            raise TelemetryError(msg)
        missing = [k for k in ("group", *COUNTERS, "dead_letters", "lag", "latency_ms") if k not in snap]
        if missing:
            msg = f"GroupMetrics.from_snapshot: snapshot of {snap.get('group')!r} lacks {missing}"
            raise TelemetryError(msg)
        if snap.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
            msg = f"GroupMetrics.from_snapshot: schema {snap.get('schema')!r}, this reader knows {SCHEMA_VERSION}"
            raise TelemetryError(msg)
        try:
            out = cls(str(snap["group"]), pipeline=str(snap.get("pipeline", "")))
            for name in COUNTERS:
                setattr(out, name, int(snap[name]))
            out.dead_letters = {str(k): int(v) for k, v in dict(snap["dead_letters"]).items()}
            out.lag = int(snap["lag"])
            version = snap.get("model_version")
            out.model_version = None if version is None else str(version)
            out.events_per_s = float(snap.get("events_per_s", 0.0))
            out.restored_partitions = int(snap.get("restored_partitions", 0))
            out.waiting_for_model = bool(snap.get("waiting_for_model", False))
            mark = snap.get("watermark_ms")
            out.watermark_ms = None if mark is None else float(mark)
            mark = snap.get("committed_watermark_ms")
            out.committed_watermark_ms = None if mark is None else float(mark)
            for version, counts in dict(snap.get("shadow") or {}).items():
                out.add_shadow(str(version), [int(x) for x in counts])
        except (TypeError, ValueError) as exc:
            msg = f"GroupMetrics.from_snapshot: a field of {snap.get('group')!r} has the wrong type: {exc}"
            raise TelemetryError(msg) from exc
        out.latency = LatencyHistogram.from_dict(snap["latency_ms"])
        return out


def metrics_record(pipeline: str, group: str, snapshot: Mapping[str, Any]) -> bytes:
    """The ``metrics`` topic record for one group's snapshot (keys in the module docstring)."""
    _check_labels("metrics_record", pipeline, group, snapshot)
    return json.dumps({**snapshot, "pipeline": pipeline, "group": group}, separators=(",", ":")).encode()


def _check_labels(step: str, pipeline: str, group: str, snapshot: Mapping[str, Any]) -> None:
    """A snapshot's own pipeline / group (when it has them) must be the ones it is filed under."""
    if snapshot.get("group", group) != group or snapshot.get("pipeline") not in (None, "", pipeline):
        msg = (f"{step}: snapshot of {snapshot.get('pipeline')!r}/{snapshot.get('group')!r} "
               f"sent as {pipeline!r}/{group!r}")
        raise TelemetryError(msg)


def read_metrics_record(value: bytes | str) -> tuple[str, str, dict[str, Any]]:
    """``(pipeline, group, snapshot)`` of a ``metrics`` record: ``hub.update(*read_metrics_record(v))``."""
    try:
        rec = json.loads(value)
    except (ValueError, TypeError) as exc:
        msg = f"read_metrics_record: not JSON: {value[:40]!r}"
        raise TelemetryError(msg) from exc
    if not isinstance(rec, dict) or not isinstance(rec.get("pipeline"), str) or not isinstance(rec.get("group"), str):
        msg = f"read_metrics_record: not an object with string 'pipeline' and 'group': {value[:60]!r}"
        raise TelemetryError(msg)
    return rec["pipeline"], rec["group"], rec


class MetricsHub:
    """The driver's view: the latest snapshot of every (pipeline, group), rendered for Prometheus.

    Thread-safe: the driver updates while the HTTP server's thread renders.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, str], tuple[float, GroupMetrics]] = {}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def update(self, pipeline: str, group: str, snapshot: Mapping[str, Any]) -> None:
        """Keep ``snapshot`` as the group's latest (an older one than what is kept is ignored)."""
        _check_labels("MetricsHub.update", pipeline, group, snapshot)
        metrics = GroupMetrics.from_snapshot({**snapshot, "group": group, "pipeline": pipeline})
        ts = float(snapshot.get("ts", time.time()))
        with self._lock:
            kept = self._groups.get((pipeline, group))
            if kept is None or ts >= kept[0]:
                self._groups[(pipeline, group)] = (ts, metrics)

    def forget(self, pipeline: str, group: str) -> None:
        """Drop a group (e.g. after a rebalance moved its partitions into other groups)."""
        with self._lock:
            self._groups.pop((pipeline, group), None)

    def groups(self) -> dict[tuple[str, str], GroupMetrics]:
        """The latest metrics of each (pipeline, group)."""
        with self._lock:
            return {k: m for k, (_, m) in self._groups.items()}

    def latest(self) -> dict[tuple[str, str], tuple[float, GroupMetrics]]:
        """(snapshot time, metrics) of each (pipeline, group)."""
        with self._lock:
            return dict(self._groups)

    def items(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(pipeline, group, snapshot)`` of every group, sorted: what :func:`metrics_record` takes."""
        return [(p, g, m.snapshot(ts=ts)) for (p, g), (ts, m) in sorted(self.latest().items())]

    def totals(self, pipeline: str | None = None) -> dict[str, Any]:
        """Every group (of ``pipeline``, or of all) merged: counters, lag and rate summed, latency quantiles.

        ``dead_letters`` is the total; ``dead_letters_by_reason`` splits it.
        """
        chosen = [m for (p, _), m in sorted(self.groups().items()) if pipeline is None or p == pipeline]
        total = GroupMetrics("total")
        versions: set[str] = set()
        for m in chosen:
            total = total.merge(m, group="total")
            if m.model_version is not None:
                versions.add(m.model_version)
        snap = total.snapshot()
        for key in ("latency_ms", "model_version", "group", "pipeline", "schema", "ts"):
            del snap[key]
        return {
            **snap,
            "dead_letters": sum(total.dead_letters.values()),
            "dead_letters_by_reason": snap["dead_letters"],
            "groups": len(chosen),
            "model_versions": sorted(versions),
            **{f"latency_p{round(q * 100)}_ms": total.latency.quantile(q) for q in QUANTILES},
        }

    def collector(self) -> Collector:
        return HubCollector(self)

    def prometheus_registry(self) -> CollectorRegistry:
        """A registry of its own holding only this hub (the global one is left alone)."""
        registry = CollectorRegistry(auto_describe=True)
        registry.register(self.collector())
        return registry

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> tuple[WSGIServer, int]:
        """Serve ``/metrics`` on a background thread; loopback by default, ``port=0`` picks a free one."""
        if self._server is not None:
            msg = f"MetricsHub.serve: already serving on port {self._server.server_port}"
            raise TelemetryError(msg)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.prometheus_registry())
        return self._server, int(self._server.server_port)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and free the port."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout_s)


class HubCollector(Collector):
    """Renders a :class:`MetricsHub`, labelled by pipeline and group, on every scrape."""

    def __init__(self, hub: MetricsHub) -> None:
        self.hub = hub

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        return self._families(self.hub.latest())

    @staticmethod
    def _families(latest: Mapping[tuple[str, str], tuple[float, GroupMetrics]]) -> list[Metric]:
        labels = ["pipeline", "group"]
        counters = {
            "records_in": CounterMetricFamily("isostream_records", "Kafka records consumed", labels=labels),
            "events_scored": CounterMetricFamily("isostream_events_scored", "Events scored and committed",
                                                 labels=labels),
            "late_events": CounterMetricFamily("isostream_late_events", "Events whose window had already closed",
                                               labels=labels),
            "warmup_events": CounterMetricFamily("isostream_warmup_events",
                                                 "Events of keys still filling their baseline (never alerted on)",
                                                 labels=labels),
            "anomalies": CounterMetricFamily("isostream_anomalies", "Events flagged as anomalies", labels=labels),
            "incidents_opened": CounterMetricFamily("isostream_incidents_opened", "Incidents opened",
                                                    labels=labels),
            "incidents_closed": CounterMetricFamily("isostream_incidents_closed", "Incidents closed",
                                                    labels=labels),
            "windows_closed": CounterMetricFamily("isostream_windows_closed", "Per-key windows closed",
                                                  labels=labels),
            "commits": CounterMetricFamily("isostream_commits", "Offset commits", labels=labels),
            "errors": CounterMetricFamily("isostream_errors", "Errors survived", labels=labels),
        }
        dead = CounterMetricFamily("isostream_dead_letters", "Records sent to the dead-letter topic",
                                   labels=[*labels, "reason"])
        lag = GaugeMetricFamily("isostream_lag", "Consumer lag of the group's partitions (records)", labels=labels)
        rate = GaugeMetricFamily("isostream_events_per_second", "Recent scoring rate", labels=labels)
        info = GaugeMetricFamily("isostream_model_info", "The model scoring now (value 1)", labels=[*labels, "version"])
        latency = HistogramMetricFamily("isostream_latency_seconds",
                                        "Kafka message timestamp to outputs committed", labels=labels)
        quantiles = GaugeMetricFamily("isostream_latency_quantile_seconds",
                                      "Ingest to committed latency quantiles, from the histogram",
                                      labels=[*labels, "quantile"])
        restored = GaugeMetricFamily("isostream_restored_partitions",
                                     "Partitions whose state came back from a checkpoint", labels=labels)
        waiting = GaugeMetricFamily("isostream_waiting_for_model", "1 while events wait for a first model",
                                    labels=labels)
        watermark = GaugeMetricFamily("isostream_watermark_seconds",
                                      "Event-time watermark (epoch seconds; min over partitions)", labels=labels)
        updated = GaugeMetricFamily("isostream_snapshot_timestamp_seconds",
                                    "When the group's worker took the snapshot shown (a stale one means trouble)",
                                    labels=labels)
        for (pipeline, group), (ts, m) in sorted(latest.items()):
            values = [pipeline, group]
            for name, family in counters.items():
                family.add_metric(values, getattr(m, name))
            for reason, n in sorted(m.dead_letters.items()):
                dead.add_metric([*values, reason], n)
            lag.add_metric(values, m.lag)
            rate.add_metric(values, m.events_per_s)
            if m.model_version is not None:
                info.add_metric([*values, m.model_version], 1)
            cum = np.cumsum(m.latency.counts).tolist()
            buckets = [(_le(edge / 1000.0), c) for edge, c in zip(m.latency.edges.tolist(), cum[:-1], strict=True)]
            latency.add_metric(values, [*buckets, ("+Inf", cum[-1])], m.latency.sum_ms / 1000.0)
            for q in QUANTILES:
                value = m.latency.quantile(q)
                quantiles.add_metric([*values, str(q)], math.nan if value is None else value / 1000.0)
            restored.add_metric(values, m.restored_partitions)
            waiting.add_metric(values, int(m.waiting_for_model))
            if m.watermark_ms is not None:
                watermark.add_metric(values, m.watermark_ms / 1000.0)
            updated.add_metric(values, ts)
        return [*counters.values(), dead, lag, rate, info, latency, quantiles, restored, waiting, watermark, updated]


def _le(seconds: float) -> str:
    return f"{seconds:.6g}"  # short, stable bucket labels: 0.0005, 0.000614..., 120
