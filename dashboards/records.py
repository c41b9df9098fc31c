"""Parse the engine's output records (docs/architecture.md) into plain values.

The dashboard reads topics that other programs write, so every parser returns ``None`` for a record it cannot
use instead of raising: the caller counts it as bad and carries on. Only the fields the charts need are
checked; unknown extra fields are ignored so the engine can add fields without breaking the dashboard.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

#: what the consumer hands over: raw Kafka values, already-decoded text, or dicts (unit tests)
RawRecord = bytes | str | dict[str, Any]


@dataclass(frozen=True)
class ScoreRecord:
    """The fields of one ``scores`` record that the charts use."""

    score: float
    is_anomaly: bool
    threshold: float | None
    model_version: str | None


@dataclass(frozen=True)
class StatsRecord:
    """One ``stats`` record (one engine micro-batch)."""

    ts: float | None
    events: int
    anomalies: int
    dead_letters: int
    lag: int | None
    events_per_s: float | None
    batch_latency_ms: float | None
    model_version: str | None
    threshold: float | None


def as_dict(raw: RawRecord) -> dict[str, Any] | None:
    """``raw`` as a JSON object, or None when it is not valid UTF-8 JSON or not an object."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except (ValueError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None


def _number(value: Any) -> float | None:
    """A finite float, or None; bools are not numbers here (``true`` as a score is a bug upstream)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _count(value: Any) -> int | None:
    num = _number(value)
    return int(num) if num is not None and num >= 0 else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_score(raw: RawRecord) -> ScoreRecord | None:
    """A ``scores`` record, or None when it is not an object with a finite numeric ``score``.

    >>> parse_score(b'{"score": 0.7, "threshold": 0.6, "is_anomaly": true, "model_version": "v1"}')
    ScoreRecord(score=0.7, is_anomaly=True, threshold=0.6, model_version='v1')
    >>> parse_score(b"not json") is None
    True
    """
    rec = as_dict(raw)
    if rec is None:
        return None
    score = _number(rec.get("score"))
    if score is None:
        return None
    return ScoreRecord(
        score=score,
        is_anomaly=rec.get("is_anomaly") is True,
        threshold=_number(rec.get("threshold")),
        model_version=_text(rec.get("model_version")),
    )


def parse_stats(raw: RawRecord) -> StatsRecord | None:
    """A ``stats`` record, or None when it is not an object with a non-negative ``events`` count.

    >>> parse_stats({"ts": 1.0, "events": 10, "anomalies": 1}).anomalies
    1
    """
    rec = as_dict(raw)
    if rec is None:
        return None
    events = _count(rec.get("events"))
    if events is None:
        return None
    return StatsRecord(
        ts=_number(rec.get("ts")),
        events=events,
        anomalies=_count(rec.get("anomalies")) or 0,
        dead_letters=_count(rec.get("dead_letters")) or 0,
        lag=_count(rec.get("lag")),
        events_per_s=_number(rec.get("events_per_s")),
        batch_latency_ms=_number(rec.get("batch_latency_ms")),
        model_version=_text(rec.get("model_version")),
        threshold=_number(rec.get("threshold")),
    )


def parse_alert(raw: RawRecord) -> dict[str, Any] | None:
    """An ``alerts`` record as a flat dict for the table, or None without a numeric ``score``."""
    rec = as_dict(raw)
    if rec is None or _number(rec.get("score")) is None:
        return None
    return rec


def _iso_ms(value: Any) -> float | None:
    """ISO-8601 text as ms since the epoch (UTC when it names no zone), or None."""
    if not isinstance(value, str):
        return None
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp() * 1000.0


def parse_incident(raw: RawRecord) -> dict[str, Any] | None:
    """An ``incidents`` record (``engine.incidents.IncidentRecord``) with ``start_ms`` / ``end_ms`` added, or None.

    >>> rec = parse_incident({"incident_id": "i1", "status": "open", "key": "dp-1", "start": "2027-01-15T08:00:00Z",
    ...                 "end": "2027-01-15T08:00:05Z", "alerts": 2, "peak_score": 0.8})
    >>> rec["end_ms"] - rec["start_ms"], rec["alerts"]
    (5000.0, 2)
    """
    rec = as_dict(raw)
    if rec is None or not isinstance(rec.get("incident_id"), str) or rec.get("status") not in ("open", "closed"):
        return None
    start, end = _iso_ms(rec.get("start")), _iso_ms(rec.get("end"))
    if start is None:
        return None
    return {**rec, "key": _text(rec.get("key")), "start_ms": start, "end_ms": end if end is not None else start,
            "alerts": _count(rec.get("alerts")) or 0, "peak_score": _number(rec.get("peak_score"))}


def parse_window(raw: RawRecord, key_field: str | None) -> tuple[str, dict[str, Any]] | None:
    """``(key, row)`` of a ``stats`` window record (``"kind": "window"``), times as ms; None when unusable.

    >>> key, row = parse_window({"kind": "window", "station": "s1", "window_start": "1970-01-01T00:00:00Z",
    ...                          "window_end": "1970-01-01T00:01:00Z", "count": 5, "alarms": 1}, "station")
    >>> key, row["window_end_ms"], row["count"]
    ('s1', 60000.0, 5)
    """
    rec = as_dict(raw)
    if rec is None:
        return None
    key = rec.get(key_field or "key", rec.get("key"))
    start, end = _iso_ms(rec.get("window_start")), _iso_ms(rec.get("window_end"))
    count = _count(rec.get("count"))
    if key is None or start is None or end is None or count is None:
        return None
    return str(key), {**rec, "window_start_ms": start, "window_end_ms": end, "count": count}
