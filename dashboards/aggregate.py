"""Pre-aggregated, bounded views of the score stream: a rolling histogram and per-second counts.

Both are updated once per consumed batch, in O(batch) numpy work, so that building a snapshot for the
browsers costs the same whether the engine scores ten events a second or a hundred thousand. Neither class
locks: :class:`dashboards.state.LiveState` owns them and serialises access.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# the engine's stats histogram bins, so both views of "the score distribution" agree
from engine.outputs import SCORE_BINS


class RollingHistogram:
    """Counts of the last ``capacity`` scores over fixed bins, kept up to date as scores arrive and age out.

    A ring of bin indices remembers which bin each remembered score fell in, so evicting the oldest scores is
    a ``bincount`` of the slots they occupied rather than a re-histogram of the whole window.

    >>> h = RollingHistogram(capacity=3, edges=np.array([0.0, 0.5, 1.0]))
    >>> h.add(np.array([0.1, 0.2, 0.9, 0.95]))
    >>> h.counts.tolist()
    [1, 2]
    """

    def __init__(self, capacity: int, edges: np.ndarray = SCORE_BINS) -> None:
        if capacity <= 0:
            msg = f"RollingHistogram: capacity must be positive, got {capacity!r}"
            raise ValueError(msg)
        self.edges = np.asarray(edges, dtype=np.float64)
        self.capacity = capacity
        self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self._ring = np.full(capacity, -1, dtype=np.int64)  # -1 = empty slot
        self._write = 0

    def add(self, scores: np.ndarray) -> None:
        """Count ``scores`` (out-of-range values land in the first / last bin), evicting the oldest."""
        if len(scores) == 0:
            return
        scores = scores[-self.capacity :]  # older ones would be evicted within this same call
        nbins = len(self.counts)
        bins = np.clip(np.searchsorted(self.edges, scores, side="right") - 1, 0, nbins - 1)
        slots = (self._write + np.arange(len(bins))) % self.capacity
        evicted = self._ring[slots]
        evicted = evicted[evicted >= 0]
        if len(evicted):
            self.counts -= np.bincount(evicted, minlength=nbins)
        self._ring[slots] = bins
        self.counts += np.bincount(bins, minlength=nbins)
        self._write = int((self._write + len(bins)) % self.capacity)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def frame(self) -> pd.DataFrame:
        """``left``, ``right``, ``count`` per bin."""
        return pd.DataFrame({"left": self.edges[:-1], "right": self.edges[1:], "count": self.counts.copy()})


class PerSecond:
    """Events and anomalies per wall-clock second (Kafka record timestamps) over the last ``history_s``.

    >>> p = PerSecond(history_s=10)
    >>> p.add(np.array([100.2, 100.7, 101.1]), np.array([False, True, False]), now=101.5)
    >>> p.frame(now=101.5)[["events", "anomalies"]].tail(2).to_numpy().tolist()
    [[2, 1], [1, 0]]
    """

    def __init__(self, history_s: int) -> None:
        if history_s <= 0:
            msg = f"PerSecond: history_s must be positive, got {history_s!r}"
            raise ValueError(msg)
        self.history_s = history_s
        self._events: dict[int, int] = {}
        self._anomalies: dict[int, int] = {}

    def add(self, ts: np.ndarray, is_anomaly: np.ndarray, now: float) -> None:
        """Count events stamped ``ts`` (epoch seconds); those older than the window are dropped."""
        secs = np.floor(ts).astype(np.int64)
        keep = secs > int(now) - self.history_s
        secs, flagged = secs[keep], is_anomaly[keep]
        if len(secs) == 0:
            return
        uniq, inverse = np.unique(secs, return_inverse=True)
        events = np.bincount(inverse, minlength=len(uniq))
        anomalies = np.bincount(inverse, weights=flagged.astype(np.float64), minlength=len(uniq))
        # a batch spans a handful of seconds: the Python loop is over seconds, not events
        for sec, n, a in zip(uniq.tolist(), events.tolist(), anomalies.tolist(), strict=True):
            self._events[sec] = self._events.get(sec, 0) + int(n)
            self._anomalies[sec] = self._anomalies.get(sec, 0) + int(a)
        self.prune(now)

    def prune(self, now: float) -> None:
        """Forget seconds that slid out of the window (bounded memory on a stream that never ends)."""
        oldest = int(now) - self.history_s
        for sec in [s for s in self._events if s <= oldest]:
            del self._events[sec]
            self._anomalies.pop(sec, None)

    def frame(self, now: float) -> pd.DataFrame:
        """One row per second of the window ending at ``now``, zero-filled so an idle stream shows as 0/s.

        Columns: ``time`` (UTC, naive datetime64), ``events``, ``anomalies``, ``anomaly_rate`` (0..1).
        """
        end = int(now)
        secs = np.arange(end - self.history_s + 1, end + 1, dtype=np.int64)
        events = np.fromiter((self._events.get(s, 0) for s in secs.tolist()), dtype=np.int64, count=len(secs))
        anomalies = np.fromiter(
            (self._anomalies.get(s, 0) for s in secs.tolist()), dtype=np.int64, count=len(secs)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(events > 0, anomalies / np.maximum(events, 1), 0.0)
        return pd.DataFrame(
            {
                "time": secs.astype("datetime64[s]").astype("datetime64[ms]"),
                "events": events,
                "anomalies": anomalies,
                "anomaly_rate": rate,
            }
        )


@dataclass(frozen=True)
class Kpis:
    """The headline numbers. Totals come from the engine's ``stats`` records (its own counters)."""

    events: int
    anomalies: int
    dead_letters: int
    lag: int | None
    events_per_s: float | None
    batch_latency_ms: float | None
    model_version: str | None
    bad_records: int


@dataclass(frozen=True)
class Snapshot:
    """Everything a browser session draws, small and immutable so sessions can share one instance.

    ``version`` changes whenever new data was ingested; a session that already drew a version skips work.
    """

    version: int
    taken_at: float
    timeline: pd.DataFrame
    histogram: pd.DataFrame
    threshold: float | None
    scores_in_histogram: int
    alerts: pd.DataFrame
    kpis: Kpis
