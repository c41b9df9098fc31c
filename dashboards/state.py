"""The one server-side buffer every dashboard session reads: fed by one Kafka consumer, aggregated once.

Why one shared buffer: per-session consumers and per-session aggregation multiply CPU by the number of open
browser tabs (measured: per-session HoloViews redraws saturate 2 cores at 3 viewers and 10 Hz). Here a single
thread parses each record once and folds it into bounded aggregates: the tick ring of the timeline
(:mod:`dashboards.ticks`), a rolling score histogram, the recent alerts, incidents, per-key readings and
windows (:mod:`dashboards.keys`), the engine's group metrics and model events. The broadcaster closes a tick
every ``tick_ms`` (:meth:`LiveState.tick`); sessions read what changed since they last drew.

Every part carries a sequence number that changes only when its content does, so a session compares
integers, not frames, to know what to send.

>>> state = LiveState({"bootstrap.servers": "unused:9092"}, history_s=60)
>>> state.ingest_scores([b'{"score": 0.9, "threshold": 0.6, "is_anomaly": true, "key": "k1"}', b"garbage"])
1
>>> state.scores_in_histogram, state.bad_records["scores"]
(1, 1)
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import pandas as pd

from dashboards.aggregate import RollingHistogram
from dashboards.feed import KafkaFeed
from dashboards.keys import KeyStore
from dashboards.records import (
    RawRecord,
    StatsRecord,
    as_dict,
    parse_alert,
    parse_incident,
    parse_stats,
    parse_window,
)
from dashboards.ticks import Tick, TickRing
from engine.outputs import ScoresFormatError, decode_scores, is_arrow_scores
from engine.telemetry import LatencyHistogram, MetricsHub, TelemetryError, read_metrics_record

T = TypeVar("T")


def _once_per_seq(store: dict[str, tuple[int, Any]], part: str, seq: int, build: Callable[[], T]) -> T:
    """``build()`` for ``part``, made again only when ``seq`` moved (the caller holds the lock guarding ``store``)."""
    cached = store.get(part)
    if cached is None or cached[0] != seq:
        cached = store[part] = (seq, build())
    return cast(T, cached[1])


#: alert fields not worth a table column (always true, or Kafka bookkeeping)
HIDDEN_ALERT_FIELDS = frozenset(
    {"is_anomaly", "kafka_partition", "kafka_offset", "kafka_timestamp_ms", "partition", "offset", "_kafka_ts"}
)
FIRST_ALERT_FIELDS = ("event_time", "key")
LAST_ALERT_FIELDS = ("score", "threshold", "explanation", "model_version")
MAX_ALERT_COLUMNS = 9
#: the latency and lag lines show the engine's last this many seconds, not its whole life
RECENT_LATENCY_S = 10.0


class TopicNames(Protocol):
    """What LiveState needs from ``engine.config.Topics`` (read-only names)."""

    @property
    def scores(self) -> str: ...

    @property
    def stats(self) -> str: ...

    @property
    def alerts(self) -> str: ...

    @property
    def incidents(self) -> str: ...

    @property
    def metrics(self) -> str: ...

    @property
    def control(self) -> str: ...

    @property
    def reports(self) -> str: ...


@dataclass(frozen=True)
class DefaultTopics:
    scores: str = "scores"
    stats: str = "stats"
    alerts: str = "alerts"
    incidents: str = "incidents"
    metrics: str = "metrics"
    control: str = "control"
    reports: str = "reports"


@dataclass
class Totals:
    """Running totals from the ``stats`` topic (the engine's own counters) plus fallbacks from ``scores``."""

    stats_seen: int = 0
    events: int = 0
    anomalies: int = 0
    dead_letters: int = 0
    lag: int | None = None
    batch_latency_ms: float | None = None
    scores_seen: int = 0
    score_anomalies: int = 0
    model_version: str | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Kpis:
    """The headline numbers, as of the last tick."""

    events: int
    anomalies: int
    dead_letters: int
    lag: int | None
    events_per_s: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    model_version: str | None
    bad_records: int


@dataclass
class _Seq:
    """Sequence numbers of the parts sessions redraw only when they change."""

    scores: int = 0
    alerts: int = 0
    incidents: int = 0
    metrics: int = 0
    models: int = 0
    reports: int = 0
    window_alerts: int = 0


@dataclass
class _Engine:
    """The engine's group metrics: the latest per group, and recent merged latency histograms."""

    hub: MetricsHub = field(default_factory=MetricsHub)
    history: deque[tuple[float, LatencyHistogram]] = field(default_factory=lambda: deque(maxlen=64))
    lag: float = float("nan")
    p50: float = float("nan")
    p99: float = float("nan")
    dead_letters: dict[str, int] = field(default_factory=dict)
    shadow: dict[str, list[int]] = field(default_factory=dict)
    seen: int = 0


def _recent(history: deque[tuple[float, LatencyHistogram]], now: float) -> LatencyHistogram | None:
    """The latencies observed over the last ``RECENT_LATENCY_S`` (difference of cumulative histograms)."""
    if not history:
        return None
    latest_t, latest = history[-1]
    base = next((h for t, h in history if t >= latest_t - RECENT_LATENCY_S), None)
    if base is None or base is latest:
        return latest
    diff = LatencyHistogram(latest.lo_ms, latest.hi_ms, latest.buckets)
    counts = latest.counts - base.counts
    # a restarted worker starts its counters again: then only the latest histogram is meaningful
    diff.counts = counts if (counts >= 0).all() and counts.sum() > 0 else latest.counts
    diff.min_ms, diff.max_ms = latest.min_ms, latest.max_ms
    return diff


class LiveState:
    """Shared, thread-safe, bounded state of the engine's output topics; see the module docstring."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        topics: TopicNames | None = None,
        history_s: int = 300,
        *,
        tick_ms: int = 100,
        key_field: str | None = None,
        value_fields: Sequence[str] = (),
        max_scores: int = 20_000,
        max_alerts: int = 200,
        alerts_shown: int = 25,
        max_incidents: int = 500,
        max_keys: int = 2_000,
        points_per_key: int = 600,
        baseline_events: int = 32,
        tail_records: int = 50_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = dict(settings)
        self.topics: TopicNames = topics if topics is not None else DefaultTopics()
        self.history_s = history_s
        self.key_field = key_field
        self.alerts_shown = alerts_shown
        self.tail_records = tail_records
        self._clock = clock
        self._lock = threading.Lock()
        self._timeline_cache: tuple[tuple[int, int | None], pd.DataFrame] | None = None
        self._render_lock = threading.Lock()
        self._rendered: dict[str, tuple[int, Any]] = {}
        self.ticks = TickRing(tick_ms, history_s)
        self._hist = RollingHistogram(max_scores)
        self.keys = KeyStore(value_fields, max_keys=max_keys, points=points_per_key, baseline_events=baseline_events)
        self._alerts: deque[dict[str, Any]] = deque(maxlen=max_alerts)
        self._window_alerts: deque[dict[str, Any]] = deque(maxlen=max_alerts)
        self._incidents: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._max_incidents = max_incidents
        self._model_events: deque[dict[str, Any]] = deque(maxlen=200)
        self._reports: deque[dict[str, Any]] = deque(maxlen=200)
        self._engine = _Engine()
        self.totals = Totals()
        self._bad: dict[str, int] = {"scores": 0, "stats": 0, "alerts": 0, "incidents": 0, "metrics": 0,
                                     "control": 0, "reports": 0}
        self.seq = _Seq()
        self._frames: dict[str, tuple[int, Any]] = {}  # part -> (its seq when built, the frame): shared
        self._kpis: tuple[int, Kpis] | None = None
        self._feed: KafkaFeed | None = None

    # -- feeding (the consumer thread, or tests) ----------------------------------------------------------
    def ingest_scores(self, records: Iterable[RawRecord], timestamps: Sequence[float] | None = None) -> int:
        """Fold ``scores`` records in; ``timestamps`` are their Kafka timestamps (epoch s, default now).

        A record is either one JSON event or one Arrow record of a whole batch (``engine.outputs``); the
        events of an Arrow record share its timestamp. Returns how many events were usable; unreadable records
        and events without a finite score are counted as bad records.
        """
        records = list(records)
        now = self._clock()
        stamps = list(timestamps) if timestamps is not None else [now] * len(records)
        if len(stamps) != len(records):
            msg = f"ingest_scores: {len(records)} records but {len(stamps)} timestamps"
            raise ValueError(msg)
        frame, bad = _scores_frame(records, stamps, self.keys.value_fields)
        with self._lock:
            self._bad["scores"] += bad
            if frame.empty:
                return 0
            score = frame["score"].to_numpy(dtype=np.float64)
            flagged = frame["is_anomaly"].to_numpy(dtype=bool)
            self._hist.add(score)
            self.ticks.add_events(frame["_ts_ms"].to_numpy(dtype=np.float64), flagged, now * 1000.0)
            self.keys.add_points(frame["key"].to_numpy(dtype=object), frame["_t_ms"].to_numpy(dtype=np.float64),
                                 score, flagged, {f: frame[f].to_numpy(dtype=np.float64)
                                                  for f in self.keys.value_fields if f in frame})
            t = self.totals
            t.scores_seen += len(frame)
            t.score_anomalies += int(flagged.sum())
            last = frame.iloc[-1]
            t.threshold = float(last["threshold"]) if np.isfinite(last["threshold"]) else t.threshold
            t.model_version = str(last["model_version"]) if isinstance(last["model_version"], str) else t.model_version
            self.seq.scores += 1
        return len(frame)

    def ingest_stats(self, records: Iterable[RawRecord], timestamps: Sequence[float] | None = None) -> int:
        """Fold ``stats`` records in: batch records into the totals, window records into their keys."""
        batches: list[StatsRecord] = []
        windows: list[tuple[str, dict[str, Any]]] = []
        bad = 0
        for raw in records:
            rec = as_dict(raw)
            if rec is not None and rec.get("kind") == "window":
                win = parse_window(rec, self.key_field)
                if win is None:
                    bad += 1
                else:
                    windows.append(win)
                continue
            stats = parse_stats(rec if rec is not None else raw)
            if stats is None:
                bad += 1
            else:
                batches.append(stats)
        with self._lock:
            self._bad["stats"] += bad
            t = self.totals
            for s in batches:
                t.stats_seen += 1
                t.events += s.events
                t.anomalies += s.anomalies
                t.dead_letters += s.dead_letters
                t.lag = s.lag if s.lag is not None else t.lag
                t.batch_latency_ms = s.batch_latency_ms if s.batch_latency_ms is not None else t.batch_latency_ms
                t.model_version = s.model_version or t.model_version
                if t.threshold is None:  # the scores records carry the per-event threshold; prefer those
                    t.threshold = s.threshold
            for key, row in windows:
                self.keys.add_windows(key, [row])
        return len(batches) + len(windows)

    def ingest_alerts(self, records: Iterable[RawRecord], timestamps: Sequence[float] | None = None) -> int:
        """Keep the most recent ``alerts`` records (event alerts and window alerts apart)."""
        events: list[dict[str, Any]] = []
        windows: list[dict[str, Any]] = []
        bad = 0
        for raw in records:
            rec = as_dict(raw)
            if rec is not None and rec.get("kind") == "window_alert":
                windows.append(rec)
                continue
            alert = parse_alert(rec if rec is not None else raw)
            if alert is None:
                bad += 1
            else:
                events.append(alert)
        with self._lock:
            self._bad["alerts"] += bad
            if events:
                self._alerts.extend(events)
                self.seq.alerts += 1
            if windows:
                self._window_alerts.extend(windows)
                self.seq.window_alerts += 1
        return len(events) + len(windows)

    def ingest_incidents(self, records: Iterable[RawRecord], timestamps: Sequence[float] | None = None) -> int:
        """Keep each incident's latest record (open, then closed), the newest ``max_incidents`` of them."""
        parsed = [parse_incident(r) for r in records]
        good = [p for p in parsed if p is not None]
        with self._lock:
            self._bad["incidents"] += len(parsed) - len(good)
            for rec in good:
                self._incidents[rec["incident_id"]] = rec
                self._incidents.move_to_end(rec["incident_id"])
            while len(self._incidents) > self._max_incidents:
                closed = next((k for k, v in self._incidents.items() if v["status"] == "closed"), None)
                self._incidents.pop(closed if closed is not None else next(iter(self._incidents)))
            if good:
                self.seq.incidents += 1
        return len(good)

    def ingest_metrics(self, records: Iterable[RawRecord], timestamps: Sequence[float] | None = None) -> int:
        """Keep each engine group's latest ``metrics`` snapshot; lag, latency and dead letters come from them."""
        parsed, bad = [], 0
        for raw in records:
            try:
                parsed.append(read_metrics_record(raw if isinstance(raw, bytes | str) else json.dumps(raw)))
            except TelemetryError:
                bad += 1
        with self._lock:
            self._bad["metrics"] += bad
            e = self._engine
            for pipeline, group, snap in parsed:
                try:
                    e.hub.update(pipeline, group, snap)
                except (TelemetryError, KeyError, TypeError, ValueError):
                    self._bad["metrics"] += 1
                    continue
                e.seen += 1
            if parsed:
                self._refresh_engine(self._clock())
        return len(parsed)

    def _refresh_engine(self, now: float) -> None:
        e = self._engine
        groups = e.hub.groups()
        merged = LatencyHistogram()
        lag = 0
        dead: dict[str, int] = {}
        shadow: dict[str, list[int]] = {}
        for m in groups.values():
            merged = merged.merge(m.latency)
            lag += int(m.lag)
            for reason, n in m.dead_letters.items():
                dead[reason] = dead.get(reason, 0) + int(n)
            for version, counts in m.shadow.items():
                have = shadow.setdefault(version, [0, 0, 0, 0])
                shadow[version] = [a + int(b) for a, b in zip(have, counts, strict=False)]
        if shadow != e.shadow:
            e.shadow = shadow
            self.seq.models += 1
        e.history.append((now, merged))
        recent = _recent(e.history, now)
        e.lag = float(lag) if groups else float("nan")
        p50 = recent.quantile(0.5) if recent is not None and recent.count else None
        p99 = recent.quantile(0.99) if recent is not None and recent.count else None
        e.p50 = float("nan") if p50 is None else p50
        e.p99 = float("nan") if p99 is None else p99
        if dead != e.dead_letters:
            e.dead_letters = dead
            self.seq.metrics += 1

    def ingest_control(self, records: Iterable[RawRecord], timestamps: Sequence[float] | None = None) -> int:
        """Model events from the ``control`` topic (swaps the engine was told to make)."""
        stamps = list(timestamps) if timestamps is not None else None
        good, bad = [], 0
        for i, raw in enumerate(records):
            rec = as_dict(raw)
            if rec is None or not isinstance(rec.get("action"), str):
                bad += 1
                continue
            good.append({**rec, "at": stamps[i] if stamps else self._clock()})
        with self._lock:
            self._bad["control"] += bad
            if good:
                self._model_events.extend(good)
                self.seq.models += 1
        return len(good)

    def ingest_reports(self, records: Iterable[RawRecord], timestamps: Sequence[float] | None = None) -> int:
        """Key reports the engine published on trigger (``streams.reports.key_report`` documents)."""
        docs = [as_dict(r) for r in records]
        good = [r for r in docs if r is not None and r.get("kind") == "report"]
        with self._lock:
            self._bad["reports"] += len(docs) - len(good)
            if good:
                self._reports.extend(good)
                self.seq.reports += 1
        return len(good)

    # -- the broadcaster ------------------------------------------------------------------------------------
    def tick(self, now: float | None = None, *, late_ms: float = 0.0) -> Tick:
        """Close the open tick (once per ``tick_ms``, by the one broadcaster thread)."""
        now = self._clock() if now is None else now
        with self._lock:
            e = self._engine
            lag = e.lag if np.isfinite(e.lag) else (float(self.totals.lag) if self.totals.lag is not None else np.nan)
            return self.ticks.tick(now * 1000.0, lag=lag, p50=e.p50, p99=e.p99, late_ms=late_ms)

    # -- reading (every browser session) -----------------------------------------------------------------
    @property
    def bad_records(self) -> dict[str, int]:
        """Records skipped per topic because they were not valid JSON or lacked the needed fields."""
        with self._lock:
            return dict(self._bad)

    @property
    def scores_in_histogram(self) -> int:
        return self._hist.total

    def timeline(self, after: int | None = None) -> pd.DataFrame:
        """The timeline rows after tick ``after`` (None: the whole ring); treat the frame as read-only.

        Built once per tick for every page that asks for the same rows: pages that keep up all ask for the
        rows after the previous tick (py-spy, 5 viewers: building them per page was a tenth of the server).
        """
        with self._lock:
            key = (self.ticks.seq, after)
            if self._timeline_cache is not None and self._timeline_cache[0] == key:
                return self._timeline_cache[1]
            frame = self.ticks.frame() if after is None else self.ticks.since(after)
            self._timeline_cache = (key, frame)
            return frame

    def kpis(self) -> Kpis:
        """The headline numbers, built once per tick and shared."""
        with self._lock:
            if self._kpis is not None and self._kpis[0] == self.ticks.seq:
                return self._kpis[1]
            t, e = self.totals, self._engine
            rate = self.ticks.since(max(self.ticks.seq - 1, 0))["events_per_s"]
            kpis = Kpis(
                events=t.events if t.stats_seen else t.scores_seen,
                anomalies=t.anomalies if t.stats_seen else t.score_anomalies,
                dead_letters=sum(e.dead_letters.values()) if e.seen else t.dead_letters,
                lag=int(e.lag) if np.isfinite(e.lag) else t.lag,
                events_per_s=float(rate.iloc[-1]) if len(rate) else None,
                latency_p50_ms=e.p50 if np.isfinite(e.p50) else None,
                latency_p99_ms=e.p99 if np.isfinite(e.p99) else None,
                model_version=t.model_version,
                bad_records=sum(self._bad.values()),
            )
            self._kpis = (self.ticks.seq, kpis)
            return kpis

    def _shared(self, part: str, seq: int, build: Callable[[], Any]) -> Any:
        return _once_per_seq(self._frames, part, seq, build)

    def rendered(self, part: str, seq: int, build: Callable[[], T]) -> T:
        """``build()`` for ``part`` at ``seq``, made once and shared by every page (the HTML of a shared frame).

        Its own lock: building HTML must not hold up ingest. With ten Overview tabs each built the same alerts
        table every second (py-spy: a tenth of the server's once-a-second work).
        """
        with self._render_lock:
            return _once_per_seq(self._rendered, part, seq, build)

    def histogram(self) -> tuple[int, pd.DataFrame, float | None]:
        """``(seq, left/right/count per bin, threshold)`` of the recent scores."""
        with self._lock:
            return self.seq.scores, self._shared("hist", self.seq.scores, self._hist.frame), self.totals.threshold

    def alerts(self) -> tuple[int, pd.DataFrame]:
        """``(seq, the newest alerts, newest first)``."""
        with self._lock:
            return self.seq.alerts, self._shared(
                "alerts", self.seq.alerts, lambda: alerts_frame(list(self._alerts)[-self.alerts_shown:]))

    def key_alerts(self, key: str, limit: int = 25) -> pd.DataFrame:
        """The kept alerts of one key, newest first."""
        with self._lock:
            field = self.key_field or "key"
            mine = [a for a in self._alerts if str(a.get(field, a.get("key"))) == key][-limit:]
        return alerts_frame(mine)

    def incidents(self) -> tuple[int, pd.DataFrame]:
        """``(seq, incidents: open ones first, then the most recent)``."""
        with self._lock:
            return self.seq.incidents, self._shared("incidents", self.seq.incidents, self._incidents_frame)

    def _incidents_frame(self) -> pd.DataFrame:
        cols = ["incident_id", "status", "key", "start", "end", "alerts", "peak_score", "top", "model_version",
                "start_ms", "end_ms"]
        rows = list(reversed(self._incidents.values()))
        frame = pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
        if len(frame):
            frame = frame.sort_values("status", key=lambda s: s != "open", kind="stable").reset_index(drop=True)
        return frame

    def dead_letters(self) -> tuple[int, dict[str, int]]:
        """``(seq, dead letters by reason)`` summed over the engine's groups."""
        with self._lock:
            return self.seq.metrics, dict(self._engine.dead_letters)

    def model_events(self) -> tuple[int, list[dict[str, Any]], dict[str, list[int]]]:
        """``(seq, control-topic events oldest first, shadow counts per candidate version)``.

        Shadow counts are ``[events, agree, candidate alerts, champion alerts]`` summed over the engine's groups.
        """
        with self._lock:
            return self.seq.models, list(self._model_events), {k: list(v) for k, v in self._engine.shadow.items()}

    def reports(self) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            return self.seq.reports, list(self._reports)

    def window_alerts(self) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            return self.seq.window_alerts, list(self._window_alerts)

    def key_series(self, key: str, after: int | None = None) -> tuple[int, pd.DataFrame]:
        """``(cursor, points)`` of ``key`` (``after``: only the points past a cursor a viewer holds)."""
        with self._lock:
            return self.keys.cursor(key), self.keys.series(key, after)

    def key_windows(self, key: str) -> tuple[int, pd.DataFrame]:
        """``(version, windows)`` of ``key``: the version changes with every new or revised window."""
        with self._lock:
            return self.keys.window_version(key), self.keys.windows(key)

    def key_list(self, limit: int = 500) -> tuple[int, list[tuple[str, int, int]]]:
        with self._lock:
            return self.keys.version, self.keys.keys(limit)

    # -- the consumer ---------------------------------------------------------------------------------------
    def start(self) -> LiveState:
        """Start the one Kafka consumer thread (small topics from the beginning, scores and alerts their tail)."""
        if self._feed is None:
            t = self.topics
            handlers = {t.scores: self.ingest_scores, t.stats: self.ingest_stats, t.alerts: self.ingest_alerts,
                        t.incidents: self.ingest_incidents, t.metrics: self.ingest_metrics,
                        t.control: self.ingest_control, t.reports: self.ingest_reports}
            tail = {t.scores: self.tail_records, t.alerts: self.tail_records}
            self._feed = KafkaFeed(self.settings, handlers, tail=tail)
        self._feed.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the consumer thread and close the consumer; the buffer keeps its data."""
        if self._feed is not None:
            self._feed.stop(timeout_s)

    @property
    def running(self) -> bool:
        return self._feed is not None and self._feed.running

    @property
    def feed(self) -> KafkaFeed | None:
        return self._feed

    def __enter__(self) -> LiveState:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# -- parsing a consumed batch of scores records into columns ---------------------------------------------------
def _scores_frame(records: list[RawRecord], stamps: list[float], values: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """The usable events of ``records`` as one frame (score, is_anomaly, threshold, model_version, key, the
    values, ``_t_ms`` event time and ``_ts_ms`` Kafka time), and how many records or events were bad."""
    frames: list[pd.DataFrame] = []
    rows: list[dict[str, Any]] = []
    row_ts: list[float] = []
    bad = 0
    for raw, stamp in zip(records, stamps, strict=True):
        if is_arrow_scores(raw):
            try:
                f = decode_scores(raw)
            except ScoresFormatError:
                bad += 1
                continue
            f["_ts_ms"] = stamp * 1000.0
            frames.append(f)
            continue
        rec = as_dict(raw)
        score = rec.get("score") if rec is not None else None
        if rec is None or isinstance(score, bool) or not isinstance(score, int | float) or not np.isfinite(score):
            bad += 1
            continue
        rows.append(rec)
        row_ts.append(stamp * 1000.0)
    if rows:  # one frame for the JSON records of the batch: no per-event frame
        f = pd.DataFrame.from_records(rows)
        f["_ts_ms"] = row_ts
        frames.append(f)
    if not frames:
        return pd.DataFrame(), bad
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    out = pd.DataFrame({
        "score": pd.to_numeric(frame["score"], errors="coerce"),
        "is_anomaly": frame["is_anomaly"].eq(True) if "is_anomaly" in frame else False,
        "threshold": pd.to_numeric(frame["threshold"], errors="coerce") if "threshold" in frame else np.nan,
        "model_version": frame["model_version"] if "model_version" in frame else None,
        "key": frame["key"].astype(object).where(frame["key"].notna(), None) if "key" in frame else None,
        "_ts_ms": frame["_ts_ms"].astype(np.float64),
    })
    times = frame["event_time"] if "event_time" in frame else pd.Series(pd.NaT, index=frame.index)
    stamps_ms = pd.to_datetime(times, utc=True, errors="coerce", format="ISO8601")
    out["_t_ms"] = epoch_ms(stamps_ms)
    for name in values:
        out[name] = pd.to_numeric(frame[name], errors="coerce") if name in frame else np.nan
    good = np.isfinite(out["score"].to_numpy(dtype=np.float64))
    bad += int((~good).sum())
    return out[good].reset_index(drop=True), bad


def epoch_ms(stamps: pd.Series) -> pd.Series:
    """UTC timestamps as float ms since the epoch (NaN for NaT), whatever their resolution."""
    return ((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(1, "ms")).astype(np.float64)


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def alerts_frame(alerts: list[dict[str, Any]]) -> pd.DataFrame:
    """Newest first; the columns people read first (time, key) on the left, score and explanation right."""
    seen: dict[str, None] = {}
    for rec in alerts:
        seen.update(dict.fromkeys(k for k in rec if k not in HIDDEN_ALERT_FIELDS))
    first = [c for c in FIRST_ALERT_FIELDS if c in seen]
    last = [c for c in LAST_ALERT_FIELDS if c in seen]
    middle = [c for c in seen if c not in first and c not in last]
    columns = first + middle[: max(MAX_ALERT_COLUMNS - len(first) - len(last), 0)] + last
    rows = [{c: _cell(rec.get(c)) for c in columns} for rec in reversed(alerts)]
    frame = pd.DataFrame(rows, columns=columns)
    if "score" in frame:
        frame["score"] = pd.to_numeric(frame["score"], errors="coerce").round(4)
    if "threshold" in frame:
        frame["threshold"] = pd.to_numeric(frame["threshold"], errors="coerce").round(4)
    return frame
