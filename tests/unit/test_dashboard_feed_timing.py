"""The dashboard feed's hand-over: what it reports about a batch's age and its handlers (stand-in messages;
the real consumer is tested against tansu in tests/integration/test_dashboard_feed.py)."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME

from dashboards.feed import KafkaFeed


class Msg:
    """What ``_dispatch`` reads of a confluent-kafka Message."""

    def __init__(self, topic: str, value: bytes, ts_ms: int) -> None:
        self._topic, self._value, self._ts = topic, value, ts_ms

    def error(self) -> Any:
        return None

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self._ts


def test_the_feed_reports_how_old_each_batch_was_how_long_its_handlers_took_and_how_many_records_came() -> None:
    got: list[tuple[list[bytes], list[float]]] = []

    def slow(values: list[bytes], stamps: list[float]) -> None:
        got.append((values, stamps))
        time.sleep(0.03)

    feed = KafkaFeed({}, {"scores": slow, "alerts": lambda *_: None})
    assert feed.timing() == {"delay_ms": {"n": 0, "p50": None, "p95": None, "max": None},
                             "handler_ms": {"n": 0, "p50": None, "p95": None, "max": None}}
    now_ms = int(time.time() * 1000)
    # the newest record of the batch counts, whatever its topic: it was written 250 ms ago
    feed._dispatch([Msg("scores", b"a", now_ms - 900), Msg("alerts", b"b", now_ms - 250)])  # type: ignore[list-item]
    timing = feed.timing()
    assert timing["delay_ms"]["n"] == 1 and 250 <= timing["delay_ms"]["p50"] < 1_000  # type: ignore[operator]
    assert timing["handler_ms"]["n"] == 1 and timing["handler_ms"]["p50"] >= 30  # type: ignore[operator]
    assert got == [([b"a"], [(now_ms - 900) / 1000.0])]
    assert feed.status()["records"] == 2  # both topics' records count, the handler's own or not
