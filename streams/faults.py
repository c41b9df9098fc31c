"""Realistic bad input for tests, fuzzing and demos: one maker per dead-letter reason.

Each maker turns a good station-alarm event into bytes that fail decoding for exactly one reason, the way real
producers get it wrong (truncated writes, Latin-1 text, numbers sent as strings, NaN from a sensor, ...).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable
from typing import Any

from streams.deadletter import Reason

Doc = dict[str, Any]
_REQUIRED = ("station_id", "datapoint_id", "event_time", "value", "valueThreshold")


def good_event(rng: random.Random) -> Doc:
    """One valid station-alarm event (~180 bytes as JSON)."""
    st, dp = rng.randrange(10_000), rng.randrange(16)
    ms = rng.randrange(1_790_000_000_000, 1_800_000_000_000)
    secs, milli = divmod(ms, 1000)
    stamp = dt.datetime.fromtimestamp(secs, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    value = round(rng.uniform(-50, 500), 4)
    threshold = round(rng.uniform(0, 400), 4)
    return {
        "station_id": f"ST{st:04d}",
        "datapoint_id": f"ST{st:04d}-DP{dp:02d}",
        "alarm_id": f"AL{rng.randrange(100_000):05d}",
        "event_time": f"{stamp}.{milli:03d}Z",
        "value": value,
        "valueThreshold": threshold,
        "isActive": value > threshold,
    }


def encode(doc: Doc) -> bytes:
    """Compact JSON bytes, as producers send them."""
    return json.dumps(doc, separators=(",", ":")).encode()


def _invalid_json(doc: Doc, rng: random.Random) -> bytes:
    raw = encode(doc)
    choice = rng.randrange(7)
    if choice == 0:
        return raw[: rng.randrange(1, len(raw) - 1)]  # truncated write
    if choice == 1:  # a raw newline inside a string: breaks line framing if not caught
        return raw.replace(b'"ST', b'"S\nT', 1)
    if choice == 2:
        return raw + raw  # two documents in one message
    if choice == 3:
        return b""  # an empty message (or a tombstone)
    if choice == 4:
        return b"[" + raw + b"]"  # an array, not an object
    if choice == 5:
        return raw.replace(b":", b"=", 1)
    return b"station=ST0001 value=1.5"  # not JSON at all


def _invalid_encoding(doc: Doc, rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # Latin-1 text sent as bytes
        doc = {**doc, "station_id": doc["station_id"] + "\u00e9"}
        return json.dumps(doc, ensure_ascii=False).encode("latin-1")
    raw = encode(doc)
    return raw.replace(b'"ST', b'"\xff\xfeST', 1)


def _missing_field(doc: Doc, rng: random.Random) -> bytes:
    name = rng.choice(_REQUIRED)
    if rng.random() < 0.5:
        return encode({k: v for k, v in doc.items() if k != name})
    return encode({**doc, name: None})


def _wrong_type(doc: Doc, rng: random.Random) -> bytes:
    bad: list[tuple[str, Any]] = [
        ("value", str(doc["value"])), ("valueThreshold", [doc["valueThreshold"]]), ("station_id", 4.2),
        ("isActive", "yes"), ("event_time", True), ("event_time", {"ts": 1}), ("alarm_id", 7.5),
        ("value", False),
    ]
    name, v = rng.choice(bad)
    return encode({**doc, name: v})


def _non_finite(doc: Doc, rng: random.Random) -> bytes:
    name = rng.choice(["value", "valueThreshold"])
    token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"])
    return encode({**doc, name: "__non_finite__"}).replace(b'"__non_finite__"', token, 1)


def _oversize(doc: Doc, rng: random.Random, limit: int = 4096) -> bytes:
    return encode({**doc, "comment": "x" * (limit + rng.randrange(1, 1000))})


def _bad_timestamp(doc: Doc, rng: random.Random) -> bytes:
    v = rng.choice(["yesterday", "2026-13-45T00:00:00Z", "", "24/11/2026 10:00", 1e300, "2026-11-24T25:61:00Z"])
    return encode({**doc, "event_time": v})


MAKERS: dict[Reason, Callable[[Doc, random.Random], bytes]] = {
    Reason.INVALID_JSON: _invalid_json,
    Reason.INVALID_ENCODING: _invalid_encoding,
    Reason.MISSING_FIELD: _missing_field,
    Reason.WRONG_TYPE: _wrong_type,
    Reason.NON_FINITE: _non_finite,
    Reason.OVERSIZE: _oversize,
    Reason.BAD_TIMESTAMP: _bad_timestamp,
}


def bad_record(reason: Reason, rng: random.Random) -> bytes:
    """A record that fails decoding of :data:`~streams.schema.STATION_ALARM` for ``reason`` only.

    ``oversize`` records exceed 4096 bytes: use a schema with ``max_message_bytes=4096``.
    """
    return MAKERS[reason](good_event(rng), rng)


def mixed_records(n_good: int, n_bad: int, seed: int = 0) -> list[tuple[bytes, Reason | None]]:
    """``n_good`` good and ``n_bad`` bad records (every reason in turn), shuffled; None marks a good one."""
    rng = random.Random(seed)
    reasons = list(MAKERS)
    out: list[tuple[bytes, Reason | None]] = [(encode(good_event(rng)), None) for _ in range(n_good)]
    out += [(bad_record(reasons[i % len(reasons)], rng), reasons[i % len(reasons)]) for i in range(n_bad)]
    rng.shuffle(out)
    return out
