"""The live timeline as a bounded ring of ticks: one row per ``tick_ms``, built once, shared by every viewer.

A tick closes what arrived since the previous one (events, anomalies, the newest Kafka timestamp) and
samples the engine's gauges (consumer lag, recent latency quantiles). Sessions never aggregate: a new
viewer gets :meth:`TickRing.frame` (the whole ring, a few thousand rows), a live one gets
:meth:`TickRing.since` (the rows after the last tick it drew), so what crosses the websocket per tick is one
row per viewer.

>>> ring = TickRing(tick_ms=100, history_s=1)
>>> ring.add_events(np.array([1_000.0, 1_040.0]), np.array([False, True]), now_ms=1_050.0)
>>> ring.tick(1_100.0).events, ring.tick(1_200.0).events
(2, 0)
>>> ring.since(0)["seq"].tolist()
[1, 2]
>>> len(ring.frame()) == ring.size  # the history before the first tick is there too, as zeros
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: the timeline's columns, in the order a ColumnDataSource receives them
COLUMNS = ("t", "seq", "events", "anomalies", "events_per_s", "anomalies_per_s", "kafka_ts_ms", "lag",
           "latency_p50_ms", "latency_p99_ms")
#: a record whose Kafka timestamp is older than this at arrival is backlog (read on start or after a stall):
#: it is placed at its own time instead of being drawn as a burst of arrivals now
BACKLOG_MS = 2_000.0
#: the events/s line averages this many ms of ticks: the engine commits its outputs every ~500 ms, so a raw
#: 100 ms count is a comb of zeros and bursts that says nothing about the rate
RATE_WINDOW_MS = 1_000.0


@dataclass(frozen=True)
class Tick:
    """One closed tick."""

    seq: int
    t: float  # tick end, ms since epoch
    events: int
    anomalies: int
    kafka_ts_ms: float  # newest Kafka timestamp counted in this tick; NaN when none
    lag: float
    latency_p50_ms: float
    latency_p99_ms: float
    late_ms: float  # how much later than scheduled it closed (the ticker's own lateness)


class TickRing:
    """The last ``history_s`` of ticks in numpy columns; not thread-safe (the live state holds its lock)."""

    def __init__(self, tick_ms: int = 100, history_s: int = 300) -> None:
        if tick_ms <= 0 or history_s <= 0:
            msg = f"TickRing: tick_ms and history_s must be positive, got {tick_ms!r} and {history_s!r}"
            raise ValueError(msg)
        self.tick_ms = int(tick_ms)
        self.size = max(1, int(history_s * 1000 // tick_ms))
        self._window = max(1, int(RATE_WINDOW_MS // tick_ms))
        self._cols = {c: np.full(self.size, np.nan) for c in COLUMNS}
        self.seq = 0  # ticks closed so far; row seq lives at slot (seq - 1) % size
        self._events = 0
        self._anomalies = 0
        self._newest_ms = np.nan
        self._backlog: dict[int, list[int]] = {}  # tick index -> [events, anomalies], placed at the next tick
        self.late_ticks = 0  # ticks that closed more than one tick late (the ticker was starved)

    def add_events(self, kafka_ts_ms: np.ndarray, flagged: np.ndarray, now_ms: float) -> None:
        """Count events by their ``scores`` records' Kafka timestamps: live ones in the open tick, backlog at theirs."""
        if not len(kafka_ts_ms):
            return
        backlog = kafka_ts_ms < now_ms - BACKLOG_MS
        live = ~backlog
        self._events += int(live.sum())
        self._anomalies += int(flagged[live].sum())
        if live.any():
            self._newest_ms = float(np.nanmax(np.append(kafka_ts_ms[live], self._newest_ms)))
        if backlog.any():
            idx = (kafka_ts_ms[backlog] // self.tick_ms).astype(np.int64)
            uniq, inverse = np.unique(idx, return_inverse=True)
            events = np.bincount(inverse, minlength=len(uniq))
            anomalies = np.bincount(inverse, weights=flagged[backlog].astype(np.float64), minlength=len(uniq))
            # a consumed batch spans few ticks: the loop is over ticks, not events
            for i, n, a in zip(uniq.tolist(), events.tolist(), anomalies.tolist(), strict=True):
                slot = self._backlog.setdefault(i, [0, 0])
                slot[0] += int(n)
                slot[1] += int(a)

    def tick(self, now_ms: float, *, lag: float = np.nan, p50: float = np.nan, p99: float = np.nan,
             late_ms: float = 0.0) -> Tick:
        """Close the open tick at ``now_ms`` and append its row."""
        if self.seq == 0:
            self._prefill(now_ms)
        if self._backlog:
            self._place_backlog(now_ms)
        self.seq += 1
        row = Tick(self.seq, float(now_ms), self._events, self._anomalies, self._newest_ms, float(lag), float(p50),
                   float(p99), float(late_ms))
        if late_ms > self.tick_ms:
            self.late_ticks += 1
        slot = (self.seq - 1) % self.size
        c = self._cols
        c["t"][slot], c["seq"][slot] = row.t, row.seq
        c["events"][slot], c["anomalies"][slot] = row.events, row.anomalies
        c["kafka_ts_ms"][slot], c["lag"][slot] = row.kafka_ts_ms, row.lag
        c["latency_p50_ms"][slot], c["latency_p99_ms"][slot] = row.latency_p50_ms, row.latency_p99_ms
        self._events = self._anomalies = 0
        self._newest_ms = np.nan
        return row

    def _prefill(self, now_ms: float) -> None:
        """Zero rows for the whole history before the first tick: the backlog read on start has rows to land in."""
        c = self._cols
        for col in ("events", "anomalies"):
            c[col][:] = 0.0
        seqs = np.arange(2 - self.size, 1)  # seq <= 0: before the first tick, never "new" to anyone
        slots = (seqs - 1) % self.size
        c["t"][slots] = now_ms - self.tick_ms * (1 - seqs)
        c["seq"][slots] = seqs

    def _place_backlog(self, now_ms: float) -> None:
        """Add backlog counts to the rows of their ticks (the ring's time grid), or drop them when older."""
        c = self._cols
        oldest = self.seq - self.size + 1
        for i, (n, a) in sorted(self._backlog.items()):
            t_end = (i + 1) * self.tick_ms
            if t_end > now_ms:  # not that old after all: count it now
                self._events += n
                self._anomalies += a
                continue
            # the row whose interval holds t_end: rows are tick_ms apart, ending at c["t"]
            back = int((now_ms - t_end) // self.tick_ms) + 1
            seq = self.seq + 1 - back
            if seq < oldest:
                continue  # older than the ring: in the totals only
            slot = (seq - 1) % self.size
            c["events"][slot] = np.nan_to_num(c["events"][slot]) + n
            c["anomalies"][slot] = np.nan_to_num(c["anomalies"][slot]) + a
        self._backlog.clear()

    def _slots(self, after: int, upto: int) -> np.ndarray:
        """Ring slots of rows with ``after < seq <= upto`` (only those still in the ring)."""
        first = max(after + 1, upto - self.size + 1)
        return (np.arange(first, upto + 1) - 1) % self.size

    def since(self, after: int) -> pd.DataFrame:
        """The rows with ``seq > after`` still in the ring, oldest first, with their per-second rates."""
        if self.seq == 0:
            return pd.DataFrame({c: np.empty(0) for c in COLUMNS})
        start = max(after, self.seq - self.size)
        # the rates average the preceding window too, so take it along and cut it off after
        slots = self._slots(max(start - self._window + 1, self.seq - self.size), self.seq)
        cols = {c: self._cols[c][slots] for c in COLUMNS}
        lo = np.maximum(np.arange(1, len(slots) + 1) - self._window, 0)
        # divided by the time the window's rows really cover, not window x tick_ms: a starved clock closes one
        # row for several ticks (Broadcaster), and ten such rows span more than a second
        t = cols["t"]
        starts = np.concatenate([[t[0] - self.tick_ms], t[:-1]]) if len(t) else t  # where each row began
        span_s = np.maximum(t - starts[lo], self.tick_ms) / 1000.0
        for src, dst in (("events", "events_per_s"), ("anomalies", "anomalies_per_s")):
            csum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(cols[src]))])
            cols[dst] = (csum[1:] - csum[lo]) / span_s
        keep = cols["seq"] > start
        out = pd.DataFrame({c: cols[c][keep] for c in COLUMNS})
        out["seq"] = out["seq"].astype(np.int64)
        return out

    def frame(self) -> pd.DataFrame:
        """Every row in the ring, oldest first (what a new viewer draws first)."""
        return self.since(-self.size)

    def missed(self, after: int) -> int:
        """How many ticks after ``after`` already fell out of the ring (a viewer that far behind lost them)."""
        return max(0, (self.seq - after) - self.size)
