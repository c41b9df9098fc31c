"""Reading a topic back in tests: by consuming it, because tansu's high watermark is not a record count."""

from __future__ import annotations

import itertools
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def topic_values(bootstrap: str, topic: str, partitions: int = 1, *, idle_s: float = 2.0,
                 committed_only: bool = False) -> list[bytes]:
    """Every record value in ``topic`` from the beginning, read until nothing arrives for ``idle_s``.

    tansu reports the high watermark as the last batch's base offset + 1, so ``high - low`` undercounts.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests-read-back", "enable.auto.commit": False,
                         "isolation.level": "read_committed" if committed_only else "read_uncommitted"})
    out: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        idle_until = time.monotonic() + max(idle_s, 5.0)  # the first fetch can take a few seconds
        while time.monotonic() < idle_until:
            got = [m for m in consumer.consume(10_000, 0.5) if m.error() is None]
            if got:
                out.extend(m.value() for m in got)
                idle_until = time.monotonic() + idle_s
    finally:
        consumer.close()
    return out


_fresh = itertools.count()


def fresh_topic(broker: Any, prefix: str, partitions: int) -> str:
    """Create a topic with a name no other test of the session uses; returns the name."""
    name = f"{prefix}-{next(_fresh)}-{time.monotonic_ns()}"
    broker.create_topic(name, partitions)
    return name
