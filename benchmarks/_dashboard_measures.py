"""What the dashboard benchmark measures and judges, apart from how it drives the load: the issue's goals
and result rows, the statistics over the samples, and the parsers of what the server (``/status.json``) and
the pages' collectors report. Pure functions, unit-tested in ``tests/unit/test_bench_dashboard.py``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.common import row


class BenchError(RuntimeError):
    """The benchmark could not set up or read what it measures (the message names the part and the value)."""


# -- goals and rows --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Goal:
    """A goal of the issue: ``value op target`` (``op`` one of ``<=``, ``>=``, ``==``)."""

    op: str
    target: float
    text: str

    def met(self, value: float | None) -> bool | None:
        """Whether ``value`` meets the goal; None when nothing was measured.

        >>> Goal(">=", 10, ">= 10 updates/s").met(9.5), Goal("<=", 30, "").met(12.0), Goal("==", 0, "").met(None)
        (False, True, None)
        """
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if self.op == "<=":
            return value <= self.target
        if self.op == ">=":
            return value >= self.target
        if self.op == "==":
            return value == self.target
        msg = f"dashboard benchmark: goal operator {self.op!r} is not one of <=, >=, =="
        raise BenchError(msg)


UPDATES_GOAL = Goal(">=", 10.0, ">= 10 updates/s per viewer")
FRAMES_GOAL = Goal(">=", 10.0, ">= 10 updates/s per viewer, counted as pictures with new rows")
MISSED_GOAL = Goal("==", 0.0, "no missed ticks")
CPU_GOAL = Goal("<=", 30.0, "<= 30 % of one core")
FIRST_PLOT_GOAL = Goal("<=", 2000.0, "<= 2 s")
LATENCY_GOAL = Goal("<=", 1000.0, "p95 <= 1 s")
SERVER_MEM_GOAL = Goal("<=", 10.0, "<= 10 MB over 30 min")
BROWSER_MEM_GOAL = Goal("<=", 5.0, "<= 5 MB/min per tab")
ORPHAN_GOAL = Goal("==", 0.0, "0 sessions left")


def goal_row(name: str, value: float | None, unit: str, goal: Goal | None = None, *,
             why_missing: str | None = None, **extra: Any) -> dict[str, Any]:
    """A result row: the measured value (None when not measured, with ``why_missing``), its goal and met.

    >>> r = goal_row("x", 12.0, "updates/s", UPDATES_GOAL)
    >>> r["met"], r["goal"], r["ratio"]
    (True, '>= 10 updates/s per viewer', 1.2)
    >>> goal_row("y", None, "ms", LATENCY_GOAL, why_missing="no rows")["met"] is None
    True
    """
    clean = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    target = goal.target if goal is not None and goal.target else None
    out = row(name, clean if clean is not None else None, unit,  # type: ignore[arg-type]
              baseline=f"goal ({goal.text})" if goal is not None else None,
              baseline_value=target if clean is not None else None, **extra)
    if goal is not None:
        out["goal"] = goal.text
        out["met"] = goal.met(clean)
    if clean is None:
        out["why_missing"] = why_missing or "not measured"
    return out


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """One line per row: name, value and unit, goal, met / missed / not measured."""
    for r in rows:
        value = "-" if r.get("value") is None else f"{r['value']:,.2f}"
        goal = r.get("goal", "")
        met = {True: "met", False: "MISSED", None: "not measured"}[r.get("met")] if "goal" in r else ""
        note = f"  ({r['why_missing']})" if r.get("why_missing") else ""
        print(f"  {r['name']:<40} {value:>12} {r['unit']:<14} {goal:<28} {met}{note}")


# -- statistics ------------------------------------------------------------------------------------------
def quantiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": .., "p95": .., "p99": .., "max": .., "n": ..}`` of the finite ``values`` (None when empty).

    >>> quantiles([1.0, 2.0, 3.0, 4.0, float("nan")])["p50"]
    2.5
    >>> quantiles([])["p95"] is None
    True
    """
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    out: dict[str, float | None] = {f"p{q:g}": (float(np.percentile(a, q)) if len(a) else None) for q in qs}
    out["max"] = float(a.max()) if len(a) else None
    out["n"] = float(len(a))
    return out


def slope_per_min(t_s: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of ``values`` over time (seconds), per minute; None under 3 points or no time span.

    >>> round(slope_per_min([0, 60, 120], [10.0, 11.0, 12.0]), 6)
    1.0
    >>> slope_per_min([0, 1], [1.0, 2.0]) is None
    True
    """
    t, v = np.asarray(t_s, dtype=float), np.asarray(values, dtype=float)
    if len(t) != len(v):
        msg = f"dashboard benchmark: slope of {len(v)} values over {len(t)} times"
        raise BenchError(msg)
    if len(t) < 3 or float(t.max() - t.min()) <= 0:
        return None
    return float(np.polyfit(t, v, 1)[0] * 60.0)


def growth(values: Sequence[float], share: float = 0.1) -> float | None:
    """Mean of the last ``share`` of ``values`` minus the mean of the first (one sample at least each end).

    Means of both ends, not last minus first: one sample caught mid-allocation would otherwise be the result.

    >>> growth([10.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 20.0])
    10.0
    >>> growth([5.0]) is None
    True
    """
    if len(values) < 2:
        return None
    k = max(1, int(len(values) * share))
    return float(np.mean(values[-k:]) - np.mean(values[:k]))


def per_minute(samples: Sequence[tuple[float, float]], t0: float) -> list[float]:
    """Mean value of each whole or part minute since ``t0`` of ``(time s, value)`` samples: the shape of a growth
    (a store filling levels off, a leak does not).

    >>> per_minute([(0.0, 10.0), (30.0, 12.0), (61.0, 20.0), (150.0, 21.0)], 0.0)
    [11.0, 20.0, 21.0]
    """
    buckets: dict[int, list[float]] = {}
    for t, v in samples:
        buckets.setdefault(int((t - t0) // 60.0), []).append(v)
    return [round(float(np.mean(buckets[m])), 1) for m in sorted(buckets)]


def seq_stats(seqs: Sequence[float]) -> tuple[int, int]:
    """(distinct ticks seen, ticks missed between the first and the last seen) of a viewer's ``seq`` values.

    >>> seq_stats([1, 2, 3, 5, 5, 9])
    (5, 4)
    >>> seq_stats([])
    (0, 0)
    """
    distinct = sorted({int(s) for s in seqs})
    if not distinct:
        return 0, 0
    return len(distinct), distinct[-1] - distinct[0] + 1 - len(distinct)


def cpu_pct(cpu_s0: float, cpu_s1: float, t0: float, t1: float) -> float | None:
    """CPU of an interval as % of one core (``cpu_s`` are process CPU seconds at wall times ``t``).

    >>> cpu_pct(10.0, 13.0, 100.0, 110.0)
    30.0
    """
    if t1 <= t0:
        return None
    return 100.0 * (cpu_s1 - cpu_s0) / (t1 - t0)


# -- what the server and the pages report ------------------------------------------------------------------
@dataclass(frozen=True)
class ServerStatus:
    """``GET /status.json`` of the dashboard server."""

    live: int
    created: int
    destroyed: int
    loaded: int
    tick_ms: int
    ticks: int
    missed_updates: int
    rss_bytes: int
    cpu_s: float
    #: beyond the contract, read when the server reports them (isostream's does): ticks its clock closed
    #: late, updates folded into the next one (of them, held back for a browser behind), updates that
    #: raised, writes to tabs that had just closed and messages from them (counted, not logged as errors),
    #: pages being ticked, and the p95 of how long recent updates waited for the server's event loop after
    #: their tick
    late_ticks: int | None = None
    coalesced_updates: int | None = None
    held_updates: int | None = None
    update_errors: int | None = None
    closed_tab_writes: int | None = None
    closed_tab_messages: int | None = None
    ticking: int | None = None
    update_delay_p95_ms: float | None = None
    #: p95 of ms a page's update held the server's event loop
    update_p95_ms: float | None = None
    #: the server's feed: p95 of ms from a consumed batch's newest Kafka timestamp to its hand-over, and of
    #: ms its handlers took (where data-to-screen goes before the server's clock)
    feed_delay_p95_ms: float | None = None
    feed_handler_p95_ms: float | None = None
    #: the timeline's own socket (isostream's ``push``): p95 of ms from a tick to its rows' fan-out running,
    #: and ticks held back for a tab whose last message the kernel had not taken
    push_delay_p95_ms: float | None = None
    push_held: int | None = None
    #: records the feed has handed over since the server started (the work it has with no one watching)
    feed_records: int | None = None
    #: the server's heap trimmer: trims so far, and the MB of RSS they gave back to the system
    heap_trims: int | None = None
    heap_trim_released_mb: float | None = None
    #: each ticking page's side of the ticks, as the server reports it (isostream's ``pages``): diagnostic only
    pages: tuple[dict[str, Any], ...] | None = None


#: the counters beyond the contract, as ``ServerStatus`` names them, with what each counts
EXTRA_COUNTS = {"late_ticks": "ticks", "coalesced_updates": "ticks", "held_updates": "ticks",
                "update_errors": "ticks", "closed_tab_writes": "writes", "closed_tab_messages": "messages",
                "push_held": "ticks"}


def _number(doc: dict[str, Any], key: str, where: str, kind: type) -> Any:
    if key not in doc:
        msg = f"dashboard /status.json: {where} has no {key!r} (keys: {sorted(doc)})"
        raise BenchError(msg)
    v = doc[key]
    ok = isinstance(v, (int, float)) if kind is float else isinstance(v, int)
    if isinstance(v, bool) or not ok or v < 0:
        msg = f"dashboard /status.json: {where}.{key} is {v!r}, not a non-negative {kind.__name__}"
        raise BenchError(msg)
    return kind(v)


def parse_status(doc: Any) -> ServerStatus:
    """Check a ``/status.json`` document (the dashboard's contract) and read it; a bad one raises BenchError.

    >>> s = parse_status({"sessions": {"live": 2, "created": 5, "destroyed": 3, "loaded": 2}, "tick_ms": 100,
    ...                   "ticks": 40, "missed_updates": 0, "rss_bytes": 1000, "cpu_s": 1.5})
    >>> s.live, s.cpu_s
    (2, 1.5)
    """
    if not isinstance(doc, dict):
        msg = f"dashboard /status.json: expected an object, got {type(doc).__name__}: {str(doc)[:80]!r}"
        raise BenchError(msg)
    sessions = doc.get("sessions")
    if not isinstance(sessions, dict):
        msg = f"dashboard /status.json: 'sessions' is {sessions!r}, not an object"
        raise BenchError(msg)
    ints = {k: _number(sessions, k, "sessions", int) for k in ("live", "created", "destroyed", "loaded")}
    top = {k: _number(doc, k, "status", int) for k in ("tick_ms", "ticks", "missed_updates", "rss_bytes")}
    extra = {k: _number(doc, k, "status", int) for k in EXTRA_COUNTS if doc.get(k) is not None}
    if sessions.get("ticking") is not None:
        extra["ticking"] = _number(sessions, "ticking", "sessions", int)
    feed = doc.get("feed") if isinstance(doc.get("feed"), dict) else {}
    push = doc.get("push") if isinstance(doc.get("push"), dict) else {}
    for where, summary, name in (("update_delay_ms", doc.get("update_delay_ms"), "update_delay_p95_ms"),
                                 ("update_ms", doc.get("update_ms"), "update_p95_ms"),
                                 ("push.delay_ms", push.get("delay_ms"), "push_delay_p95_ms"),
                                 ("feed.delay_ms", feed.get("delay_ms"), "feed_delay_p95_ms"),
                                 ("feed.handler_ms", feed.get("handler_ms"), "feed_handler_p95_ms")):
        if isinstance(summary, dict) and summary.get("p95") is not None:
            extra[name] = _number(summary, "p95", where, float)
    if push.get("held") is not None:
        extra["push_held"] = _number(push, "held", "push", int)
    if feed.get("records") is not None:
        extra["feed_records"] = _number(feed, "records", "feed", int)
    trim = doc.get("heap_trim")
    if isinstance(trim, dict):
        extra["heap_trims"] = _number(trim, "trims", "heap_trim", int)
        extra["heap_trim_released_mb"] = _number(trim, "released_mb", "heap_trim", float)
    pages = doc.get("pages")
    if isinstance(pages, list):
        extra["pages"] = tuple(p for p in pages if isinstance(p, dict))
    return ServerStatus(**ints, **top, cpu_s=_number(doc, "cpu_s", "status", float), **extra)


def worst_page_gaps(samples: Sequence[ServerStatus]) -> list[dict[str, Any]]:
    """Per server page over ``samples`` (in order): its longest time without an update while connected, the
    longest a queued update waited, and its browser's largest backlog of unacknowledged ticks.

    Where a viewer that went quiet stopped: a page the server stopped updating, an update that never ran, or
    ticks held for a browser that stopped acknowledging.

    >>> a = {"session": "s1", "path": "/", "connected": True, "since_update_s": 0.1, "pending_s": None, "behind": 3}
    >>> b = {**a, "since_update_s": 12.0, "behind": 40}
    >>> s = [ServerStatus(1, 1, 0, 1, 100, 10, 0, 1, 1.0, pages=(p,)) for p in (a, b, {**a, "connected": False})]
    >>> worst_page_gaps(s)
    [{'session': 's1', 'path': '/', 'since_update_s': 12.0, 'pending_s': 0.0, 'behind': 40, 'samples': 2}]
    """
    worst: dict[str, dict[str, Any]] = {}
    for st in samples:
        for p in st.pages or ():
            if not p.get("connected", True) or "session" not in p:
                continue  # a closed tab waiting for its session's expiry is nobody's view
            w = worst.setdefault(str(p["session"]), {"session": str(p["session"]), "path": p.get("path"),
                                                      "since_update_s": 0.0, "pending_s": 0.0, "behind": 0,
                                                      "samples": 0})
            w["samples"] += 1
            w["since_update_s"] = max(w["since_update_s"], float(p.get("since_update_s") or 0.0))
            w["pending_s"] = max(w["pending_s"], float(p.get("pending_s") or 0.0))
            w["behind"] = max(w["behind"], int(p.get("behind") or 0))
    return sorted(worst.values(), key=lambda w: -w["since_update_s"])


@dataclass(frozen=True)
class PageRow:
    """One new ``live-timeline`` row as a viewer saw it (times: ``Date.now()`` ms of the page)."""

    seq: int
    arrived_ms: float
    painted_ms: float | None  # the next animation frame after it arrived; None if none came within 1 s
    kafka_ts_ms: float | None
    t_ms: float | None

    @property
    def screen_ms(self) -> float:
        return self.painted_ms if self.painted_ms is not None else self.arrived_ms


def frames_per_s(rows: Sequence[PageRow], seconds: float) -> float:
    """Pictures per second that showed new rows: rows that reached the screen on one frame count once.

    A viewer that falls behind gets several ticks in one update and draws them on one frame: it still counts
    ten rows a second, but it sees fewer pictures. This is what an operator watching the page gets.

    >>> rows = [PageRow(s, 1000.0, 1016.0, None, None) for s in (1, 2, 3)] + [PageRow(4, 1100.0, 1116.0, None, None)]
    >>> frames_per_s(rows, 1.0)
    2.0
    """
    return len({r.screen_ms for r in rows}) / seconds if seconds > 0 else 0.0


def longest_silence_s(rows: Sequence[PageRow], w0_ms: float, w1_ms: float) -> float:
    """The longest time in ``[w0_ms, w1_ms]`` (page clock) in which a viewer got no row: a tab that stalled
    shows here, where its rows per second only say that it got fewer.

    >>> rows = [PageRow(s, t, None, None, None) for s, t in ((1, 1_000.0), (2, 1_100.0), (3, 4_100.0))]
    >>> longest_silence_s(rows, 900.0, 5_000.0)
    3.0
    >>> longest_silence_s([], 0.0, 2_000.0)
    2.0
    """
    times = sorted([w0_ms, *(r.arrived_ms for r in rows if w0_ms <= r.arrived_ms <= w1_ms), w1_ms])
    return max(b - a for a, b in zip(times, times[1:], strict=False)) / 1000.0


@dataclass(frozen=True)
class Drain:
    """What a page's collector handed over: rows from id ``start`` on, and its running totals."""

    start: int
    rows: list[PageRow]
    found_ms: float | None  # performance.now() when the timeline first held a row
    rendered_ms: float | None  # performance.now() when every root view had first finished rendering
    gaps: int
    resets: int
    errors: list[str]
    visible: bool | None = None  # document.visibilityState == "visible": a hidden page draws no frames
    #: ms from navigation start to each of :data:`PHASES` (None: not reached yet)
    phases: dict[str, float | None] = field(default_factory=dict)

    @property
    def first_plot_ms(self) -> float | None:
        """ms from navigation start to the timeline holding a row with the page rendered (both needed)."""
        if self.found_ms is None or self.rendered_ms is None:
            return None
        return max(self.found_ms, self.rendered_ms)


def _opt(v: Any, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        msg = f"dashboard collector: {where} is {v!r}, not a number or null"
        raise BenchError(msg)
    return float(v)


#: a first plot's way, in the order a page reaches them: the HTML's first and last byte, the last script's
#: last byte, the DOM loaded (the scripts ran), the load event, Bokeh's websocket open, the server's document
#: arrived on it (from the socket's opening to here the server built and sent the session; after it the
#: browser builds it), Bokeh's document built, every view drawn once, the timeline's first row
PHASES = ("response_start_ms", "response_end_ms", "scripts_ms", "dom_loaded_ms", "load_ms", "socket_open_ms",
          "doc_received_ms", "document_ms", "rendered_ms", "found_ms")


def phase_medians(phases: list[dict[str, float | None]]) -> dict[str, float | None]:
    """The median ms of each phase over the probes that reached it (None: none did).

    >>> phase_medians([{"document_ms": 900.0}, {"document_ms": 1500.0, "found_ms": 2000.0}, {}])["document_ms"]
    1200.0
    """
    out: dict[str, float | None] = {}
    for k in PHASES:
        got = [v for p in phases if (v := p.get(k)) is not None]
        out[k] = round(float(statistics.median(got)), 1) if got else None
    return out


def parse_drain(doc: Any) -> Drain:
    """Check and read what ``COLLECTOR_DRAIN`` returned from a page; a bad document raises BenchError.

    >>> d = parse_drain({"start": 0, "rows": [[7, 1000.0, 1016.0, 900.0, 990.0]], "found_ms": 300.0,
    ...                  "rendered_ms": 450.0, "gaps": 0, "resets": 0, "errors": []})
    >>> d.rows[0].screen_ms - d.rows[0].kafka_ts_ms, d.first_plot_ms
    (116.0, 450.0)
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        msg = f"dashboard collector: expected {{'rows': [...], ...}}, got {str(doc)[:120]!r}"
        raise BenchError(msg)
    rows = []
    for i, r in enumerate(doc["rows"]):
        if not isinstance(r, list) or len(r) != 5:
            msg = f"dashboard collector: row {i} is {r!r}, not [seq, arrived, painted, kafka_ts_ms, t]"
            raise BenchError(msg)
        seq, arrived = _opt(r[0], f"row {i} seq"), _opt(r[1], f"row {i} arrived")
        if seq is None or arrived is None:
            msg = f"dashboard collector: row {i} is {r!r}: seq and arrival time are required"
            raise BenchError(msg)
        rows.append(PageRow(int(seq), arrived, _opt(r[2], f"row {i} painted"), _opt(r[3], f"row {i} kafka_ts_ms"),
                            _opt(r[4], f"row {i} t")))
    counts = {k: _opt(doc.get(k, 0), k) for k in ("gaps", "resets", "start")}
    errors = doc.get("errors", [])
    visible = doc.get("visible")
    raw_phases = doc.get("phases")
    phases = {k: _opt(raw_phases.get(k), f"phases.{k}") for k in PHASES} if isinstance(raw_phases, dict) else {}
    return Drain(int(counts["start"] or 0), rows, _opt(doc.get("found_ms"), "found_ms"), _opt(doc.get("rendered_ms"), "rendered_ms"),
                 int(counts["gaps"] or 0), int(counts["resets"] or 0),
                 [str(e) for e in errors] if isinstance(errors, list) else [str(errors)],
                 visible if isinstance(visible, bool) else None, phases)
