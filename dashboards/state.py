"""The one server-side buffer every dashboard session reads: fed by one Kafka consumer, pre-aggregated.

Why one shared buffer: per-session consumers and per-session aggregation multiply CPU by the number of open
browser tabs (measured: per-session redraws saturate 2 cores at 3 viewers and 10 Hz). Here a single thread
parses each record once, folds it into bounded aggregates (rolling histogram, per-second counts, recent
alerts, running totals), and :meth:`LiveState.snapshot` turns them into a few small frames at most once per
(new data, wall-clock second), shared by every session.

>>> state = LiveState({"bootstrap.servers": "unused:9092"}, history_s=60)
>>> state.ingest_scores([b'{"score": 0.9, "threshold": 0.6, "is_anomaly": true}', b"garbage"])
1
>>> snap = state.snapshot()
>>> snap.scores_in_histogram, snap.kpis.bad_records
(1, 1)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import pandas as pd

from dashboards.aggregate import Kpis, PerSecond, RollingHistogram, Snapshot
from dashboards.feed import KafkaFeed
from dashboards.records import RawRecord, ScoreRecord, as_dict, parse_alert, parse_score, parse_stats
from engine.outputs import ScoresFormatError, decode_scores, is_arrow_scores

#: alert fields not worth a table column (always true, or Kafka bookkeeping)
HIDDEN_ALERT_FIELDS = frozenset(
    {"is_anomaly", "kafka_partition", "kafka_offset", "kafka_timestamp_ms", "partition", "offset", "_kafka_ts"}
)
FIRST_ALERT_FIELDS = ("event_time", "key")
LAST_ALERT_FIELDS = ("score", "threshold", "explanation", "model_version")
MAX_ALERT_COLUMNS = 9


class TopicNames(Protocol):
    """What LiveState needs from ``engine.config.Topics`` (read-only names)."""

    @property
    def scores(self) -> str: ...

    @property
    def stats(self) -> str: ...

    @property
    def alerts(self) -> str: ...


@dataclass(frozen=True)
class DefaultTopics:
    scores: str = "scores"
    stats: str = "stats"
    alerts: str = "alerts"


@dataclass
class _Totals:
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


class _ScoreColumns:
    """The usable events of one ``ingest_scores`` call, in order, from JSON and Arrow ``scores`` records."""

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._scores: list[float] = []
        self._flagged: list[bool] = []
        self._ts: list[float] = []
        self.threshold: float | None = None  # of the last usable event
        self.model_version: str | None = None

    def add(self, rec: ScoreRecord, stamp: float) -> None:
        self._scores.append(rec.score)
        self._flagged.append(rec.is_anomaly)
        self._ts.append(stamp)
        self.threshold, self.model_version = rec.threshold, rec.model_version

    def add_arrow(self, raw: bytes | bytearray, stamp: float) -> int:
        """Add an Arrow record's events; returns how many bad records it counts for."""
        try:
            frame = decode_scores(raw)
        except ScoresFormatError:
            return 1
        scores = frame["score"].to_numpy(dtype=np.float64, na_value=np.nan)
        good = np.isfinite(scores)
        if not good.any():  # an empty batch is no bad record
            return int(len(scores))
        self._flush()
        flagged = frame["is_anomaly"].to_numpy(dtype=bool, na_value=False)[good]
        self._chunks.append((scores[good], flagged, np.full(int(good.sum()), stamp)))
        last = frame[good].iloc[-1]
        self.threshold = float(last["threshold"]) if np.isfinite(last["threshold"]) else None
        self.model_version = None if pd.isna(last["model_version"]) else str(last["model_version"])
        return int(len(scores) - good.sum())

    def _flush(self) -> None:
        if self._scores:
            self._chunks.append((np.asarray(self._scores, dtype=np.float64), np.asarray(self._flagged, dtype=bool),
                                 np.asarray(self._ts, dtype=np.float64)))
            self._scores, self._flagged, self._ts = [], [], []

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, is_anomaly, timestamps) of every usable event."""
        self._flush()
        if not self._chunks:
            return np.empty(0), np.empty(0, dtype=bool), np.empty(0)
        scores, flagged, ts = zip(*self._chunks, strict=True)
        return np.concatenate(scores), np.concatenate(flagged), np.concatenate(ts)


class LiveState:
    """Shared, thread-safe, bounded state of the engine's output topics; see the module docstring."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        topics: TopicNames | None = None,
        history_s: int = 300,
        *,
        max_scores: int = 20_000,
        max_alerts: int = 200,
        alerts_shown: int = 25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = dict(settings)
        self.topics: TopicNames = topics if topics is not None else DefaultTopics()
        self.history_s = history_s
        self.alerts_shown = alerts_shown
        self._clock = clock
        self._lock = threading.Lock()
        self._hist = RollingHistogram(max_scores)
        self._per_second = PerSecond(history_s)
        self._alerts: deque[dict[str, Any]] = deque(maxlen=max_alerts)
        self._totals = _Totals()
        self._bad: dict[str, int] = {"scores": 0, "stats": 0, "alerts": 0}
        self._version = 0
        self._cached: tuple[tuple[int, int], Snapshot] | None = None
        # the histogram and alerts frames are rebuilt only when their own input changed, and reused as the
        # same objects otherwise, so a session can tell by identity that it has nothing to redraw there
        self._scores_seq = self._alerts_seq = 0
        self._hist_frame: tuple[int, pd.DataFrame] | None = None
        self._alerts_frame: tuple[int, pd.DataFrame] | None = None
        self._feed: KafkaFeed | None = None

    # -- feeding (the consumer thread, or tests) ----------------------------------------------------------
    def ingest_scores(self, records: Iterable[RawRecord], timestamps: Sequence[float] | None = None) -> int:
        """Fold ``scores`` records in; ``timestamps`` (epoch s, default now) place them on the timeline.

        A record is either one JSON event or one Arrow record of a whole batch (``engine.outputs``); the
        events of an Arrow record share its timestamp. Returns how many events were usable; unreadable records
        and events without a finite score are counted as bad records.
        """
        records = list(records)
        stamps = list(timestamps) if timestamps is not None else [self._clock()] * len(records)
        if len(stamps) != len(records):
            msg = f"ingest_scores: {len(records)} records but {len(stamps)} timestamps"
            raise ValueError(msg)
        events = _ScoreColumns()
        bad = 0
        for raw, stamp in zip(records, stamps, strict=True):
            if is_arrow_scores(raw):
                bad += events.add_arrow(raw, stamp)
                continue
            rec = parse_score(raw)  # one JSON event: the lenient per-record parser, no frame per event
            if rec is None:
                bad += 1
                continue
            events.add(rec, stamp)
        scores, flagged, ts = events.arrays()
        with self._lock:
            self._bad["scores"] += bad
            if not len(scores):
                return 0
            self._hist.add(scores)
            self._per_second.add(ts, flagged, now=self._clock())
            t = self._totals
            t.scores_seen += len(scores)
            t.score_anomalies += int(flagged.sum())
            t.threshold = events.threshold if events.threshold is not None else t.threshold
            t.model_version = events.model_version or t.model_version
            self._scores_seq += 1
            self._version += 1
        return len(scores)

    def ingest_stats(self, records: Iterable[RawRecord], timestamps: Sequence[float] | None = None) -> int:
        """Fold ``stats`` records (one per engine micro-batch) into the totals; returns how many were usable."""
        # per-key window records share the topic; they are not batch totals (nor malformed)
        records = [r for r in records if not _is_window(r)]
        parsed = [s for s in map(parse_stats, records) if s is not None]
        with self._lock:
            self._bad["stats"] += len(records) - len(parsed)
            if not parsed:
                return 0
            t = self._totals
            for s in parsed:
                t.stats_seen += 1
                t.events += s.events
                t.anomalies += s.anomalies
                t.dead_letters += s.dead_letters
                t.lag = s.lag if s.lag is not None else t.lag
                t.batch_latency_ms = s.batch_latency_ms if s.batch_latency_ms is not None else t.batch_latency_ms
                t.model_version = s.model_version or t.model_version
                if t.threshold is None:  # the scores records carry the per-event threshold; prefer those
                    t.threshold = s.threshold
            self._version += 1
        return len(parsed)

    def ingest_alerts(self, records: Iterable[RawRecord], timestamps: Sequence[float] | None = None) -> int:
        """Keep the most recent ``alerts`` records for the table; returns how many were usable."""
        records = list(records)
        parsed = [a for a in map(parse_alert, records) if a is not None]
        with self._lock:
            self._bad["alerts"] += len(records) - len(parsed)
            if parsed:
                self._alerts.extend(parsed)
                self._alerts_seq += 1
                self._version += 1
        return len(parsed)

    # -- reading (every browser session) -----------------------------------------------------------------
    @property
    def version(self) -> int:
        """Increases whenever usable records were ingested."""
        return self._version

    @property
    def bad_records(self) -> dict[str, int]:
        """Records skipped per topic because they were not valid JSON or lacked the needed fields."""
        with self._lock:
            return dict(self._bad)

    def snapshot(self) -> Snapshot:
        """The current view; the same object is returned until new data arrives or the second changes."""
        now = self._clock()
        with self._lock:
            key = (self._version, int(now))
            if self._cached is not None and self._cached[0] == key:
                return self._cached[1]
            self._per_second.prune(now)
            timeline = self._per_second.frame(now)
            t = self._totals
            recent = timeline["events"].to_numpy()[-6:-1]  # the last 5 complete seconds
            kpis = Kpis(
                events=t.events if t.stats_seen else t.scores_seen,
                anomalies=t.anomalies if t.stats_seen else t.score_anomalies,
                dead_letters=t.dead_letters,
                lag=t.lag,
                events_per_s=float(recent.mean()) if len(recent) else None,
                batch_latency_ms=t.batch_latency_ms,
                model_version=t.model_version,
                bad_records=sum(self._bad.values()),
            )
            snap = Snapshot(
                version=self._version,
                taken_at=now,
                timeline=timeline,
                histogram=self._histogram_frame(),
                threshold=t.threshold,
                scores_in_histogram=self._hist.total,
                alerts=self._recent_alerts_frame(),
                kpis=kpis,
            )
            self._cached = (key, snap)
            return snap

    def _histogram_frame(self) -> pd.DataFrame:
        if self._hist_frame is None or self._hist_frame[0] != self._scores_seq:
            self._hist_frame = (self._scores_seq, self._hist.frame())
        return self._hist_frame[1]

    def _recent_alerts_frame(self) -> pd.DataFrame:
        if self._alerts_frame is None or self._alerts_frame[0] != self._alerts_seq:
            self._alerts_frame = (self._alerts_seq, _alerts_frame(list(self._alerts)[-self.alerts_shown :]))
        return self._alerts_frame[1]

    # -- the consumer ---------------------------------------------------------------------------------------
    def start(self) -> LiveState:
        """Start the one Kafka consumer thread (reads the topics from the beginning)."""
        if self._feed is None:
            handlers = {
                self.topics.scores: self.ingest_scores,
                self.topics.stats: self.ingest_stats,
                self.topics.alerts: self.ingest_alerts,
            }
            self._feed = KafkaFeed(self.settings, handlers)
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


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def _alerts_frame(alerts: list[dict[str, Any]]) -> pd.DataFrame:
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


def _is_window(raw: RawRecord) -> bool:
    rec = as_dict(raw)
    return rec is not None and rec.get("kind") in ("window", "window_alert")
