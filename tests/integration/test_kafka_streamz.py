"""The streamz source node on the real broker: decoded batches, backpressure, commit-on-done, restart."""

from __future__ import annotations

import random
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from streamz import Stream

import streams.streamz_source  # noqa: F401 - registers Stream.from_kafka_columnar
from streams.broker import EmbeddedBroker
from streams.faults import encode, good_event
from streams.kafka_sink import KafkaSink
from streams.schema import STATION_ALARM
from streams.streamz_source import ColumnarBatch

pytestmark = pytest.mark.integration


def _produce_events(broker: EmbeddedBroker, topic: str, n: int, seed: int, partitions: int) -> None:
    rng = random.Random(seed)
    sink = KafkaSink({"bootstrap.servers": broker.bootstrap}, topic)
    try:
        docs = [good_event(rng) for _ in range(n)]
        sink.write([encode(d) for d in docs], [d["datapoint_id"].encode() for d in docs])
    finally:
        sink.close()


def _committed(broker: EmbeddedBroker, topic: str, group: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in tps}


def _wait(predicate, timeout_s: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def test_emits_decoded_batches_bounds_in_flight_and_commits_when_done(broker: EmbeddedBroker, seed: int) -> None:
    topic, n = "streamz-events", 20_000
    broker.create_topic(topic, 3)
    _produce_events(broker, topic, n, seed, 3)
    node = Stream.from_kafka_columnar({"bootstrap.servers": broker.bootstrap}, topic, STATION_ALARM,
                                      group_id="streamz", max_messages=1_500, max_in_flight=2)
    seen: list[ColumnarBatch] = []
    max_in_flight = [0]

    def slow_sink(batch: ColumnarBatch) -> None:  # a slow downstream: polling must not run ahead of it
        max_in_flight[0] = max(max_in_flight[0], int(node.metrics.get("in_flight")))
        time.sleep(0.01)
        seen.append(batch)

    node.sink(slow_sink)
    node.start()
    try:
        _wait(lambda: sum(len(b.frame) for b in seen) >= n)
        # committed offsets follow the sinks: every partition ends at the last emitted offset + 1
        _wait(lambda: _committed(broker, topic, "streamz", 3) == _ends(seen))
    finally:
        node.stop()
        node.wait_closed()
    assert node.error is None
    offsets = sorted((int(p), int(o)) for b in seen for p, o in zip(b.frame["_partition"], b.frame["_offset"],
                                                                     strict=True))
    assert len(offsets) == n and len(set(offsets)) == n
    assert all(len(b.raw) <= 1_500 and len(b.raw) == len(b.frame) for b in seen)
    assert 1 <= max_in_flight[0] <= 2
    snap = node.metrics.snapshot()
    assert snap["decoded_records"] == n and snap["batches_emitted"] == len(seen)
    assert {k for k in snap if k.startswith("lag{")} <= {f"lag{{partition={p}}}" for p in range(3)}


def test_restart_resumes_after_the_last_finished_batch(broker: EmbeddedBroker, seed: int) -> None:
    topic, n = "streamz-restart", 9_000
    broker.create_topic(topic, 2)
    _produce_events(broker, topic, n, seed, 2)
    settings = {"bootstrap.servers": broker.bootstrap}
    first: list[ColumnarBatch] = []
    stop_after = threading.Event()

    def crash_after_three(batch: ColumnarBatch) -> None:
        if len(first) >= 3:
            stop_after.set()
            raise RuntimeError("simulated crash before the outputs were written")
        first.append(batch)

    node = Stream.from_kafka_columnar(settings, topic, STATION_ALARM, group_id="streamz-restart",
                                      max_messages=1_000, max_in_flight=1)
    node.sink(crash_after_three)
    node.start()
    _wait(stop_after.is_set)
    node.stop()
    node.wait_closed()
    second: list[ColumnarBatch] = []
    node = Stream.from_kafka_columnar(settings, topic, STATION_ALARM, group_id="streamz-restart",
                                      max_messages=1_000)
    node.sink(second.append)
    node.start()
    try:
        _wait(lambda: sum(len(b.frame) for b in first + second) >= n)
    finally:
        node.stop()
        node.wait_closed()
    keys = [(int(p), int(o)) for b in first + second for p, o in zip(b.frame["_partition"], b.frame["_offset"],
                                                                     strict=True)]
    assert len(keys) == n and len(set(keys)) == n  # nothing lost, nothing twice


def _ends(batches: list[ColumnarBatch]) -> dict[int, int]:
    out: dict[int, int] = {}
    for b in batches:
        for p, o in b.offsets.items():
            out[p] = max(out.get(p, -1), o)
    return out


def test_csv_topic_decodes_and_dead_letters_on_the_real_broker(broker: EmbeddedBroker, seed: int) -> None:
    """``schema.format: csv``: good records arrive once as rows, bad ones as dead letters with their reason."""
    import csv
    import io

    from streams.deadletter import Reason

    topic, n = "streamz-csv", 3_000
    broker.create_topic(topic, 2)
    rng = random.Random(seed)
    names = [f.name for f in STATION_ALARM.fields]

    def row(doc: dict) -> bytes:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow([str(doc[k]).lower() if isinstance(doc[k], bool) else doc[k]
                                                     for k in names])
        return out.getvalue().encode()

    values = [row(good_event(rng)) for _ in range(n)]
    bad = {7: b"ST1,ST1-DP1", 1500: b"ST1,ST1-DP1,AL1,2026-11-24T00:00:00Z,abc,2.0,true"}
    for at, value in bad.items():
        values[at] = value
    with KafkaSink({"bootstrap.servers": broker.bootstrap}, topic) as sink:
        sink.write(values, [str(i % 2).encode() for i in range(n)], partitions=[i % 2 for i in range(n)])
    schema = STATION_ALARM.model_copy(update={"format": "csv"})
    node = Stream.from_kafka_columnar({"bootstrap.servers": broker.bootstrap}, topic, schema, group_id="csv")
    seen: list[ColumnarBatch] = []
    node.sink(seen.append)
    node.start()
    try:
        _wait(lambda: sum(len(b.frame) + len(b.dead) for b in seen) >= n)
    finally:
        node.stop()
        node.wait_closed()
    dead = sorted((d.reason, d.partition, d.offset) for b in seen for d in b.dead)
    assert dead == sorted([(Reason.INVALID_CSV, 1, 3), (Reason.WRONG_TYPE, 0, 750)])
    assert sum(len(b.frame) for b in seen) == n - 2
