"""The dashboard's one Kafka consumer against the real broker: late topics, bad records, failing handlers."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from dashboards.feed import KafkaFeed
from dashboards.state import LiveState
from engine.config import Topics
from streams.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for v in values:
        producer.produce(topic, v)
    assert producer.flush(30) == 0


def wait_until(check: Callable[[], object], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_topics_created_after_start_are_picked_up(broker: EmbeddedBroker) -> None:
    tag = uuid.uuid4().hex[:8]
    # every topic the state reads gets this test's name: the broker is shared, and other tests create the defaults
    topics = Topics(**{name: f"late-{name}-{tag}" for name in ("scores", "stats", "alerts", "incidents", "metrics",
                                                               "control", "reports")})
    broker.create_topic(topics.alerts)
    # the demo starts the dashboard before the engine has created its output topics
    with LiveState({"bootstrap.servers": broker.bootstrap}, topics, history_s=60) as state:
        assert state.feed is not None
        # one metadata round has run once the topic that exists is read; the others were not there
        wait_until(lambda: state.feed is not None and (topics.alerts, 0) in state.feed.assigned)
        assert {t for t, _ in state.feed.assigned} == {topics.alerts}
        broker.create_topic(topics.scores, partitions=3)
        broker.create_topic(topics.stats)
        produce(broker.bootstrap, topics.scores, [json.dumps({"score": 0.1 * (i % 10)}).encode() for i in range(90)])
        produce(broker.bootstrap, topics.stats, [json.dumps({"ts": time.time(), "events": 90}).encode()])

        def counted() -> bool:
            state.tick()  # the broadcaster's clock, which closes the timeline's ticks (and the KPIs with them)
            return state.kpis().events == 90 and state.scores_in_histogram == 90

        wait_until(counted)
        assert {(topics.scores, p) for p in range(3)} <= state.feed.assigned
        assert state.timeline()["events"].sum() == 90  # placed by the records' Kafka timestamps
    assert not state.running


def test_a_failing_handler_is_counted_and_the_feed_keeps_reading(broker: EmbeddedBroker) -> None:
    topic = f"feed-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic)
    seen: list[bytes] = []

    def handler(values: list[bytes], stamps: list[float]) -> None:
        if b"boom" in values:
            raise RuntimeError("handler bug")
        seen.extend(values)

    feed = KafkaFeed({"bootstrap.servers": broker.bootstrap}, {topic: handler})
    feed.start()
    try:
        produce(broker.bootstrap, topic, [b"boom"])
        wait_until(lambda: feed.errors == 1)
        produce(broker.bootstrap, topic, [b"a", b"b"])
        wait_until(lambda: seen == [b"a", b"b"])
        assert feed.running
    finally:
        feed.stop()
    assert not feed.running


def test_a_record_is_handed_over_without_waiting_out_the_poll_timeout(broker: EmbeddedBroker) -> None:
    # librdkafka's consume(n, timeout) returns only with n records or at the timeout: a feed built on it alone
    # held every small batch for the whole timeout, which the dashboard's data-to-screen latency then carried
    topic = f"feed-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic)
    seen: list[tuple[bytes, float]] = []
    feed = KafkaFeed({"bootstrap.servers": broker.bootstrap},
                     {topic: lambda values, _stamps: seen.extend((v, time.monotonic()) for v in values)},
                     poll_timeout_s=4.0)
    feed.start()
    try:
        produce(broker.bootstrap, topic, [b"warm-up"])  # the first fetch after assign() is not what is measured
        wait_until(lambda: len(seen) == 1)
        sent = time.monotonic()
        produce(broker.bootstrap, topic, [b"now"])
        wait_until(lambda: len(seen) == 2)
        assert seen[1][0] == b"now"
        waited = seen[1][1] - sent
        assert waited < 2.0, f"handed over {waited:.1f} s after it was produced: the feed waited out its timeout"
    finally:
        feed.stop()
    assert not feed.running
