"""KafkaSink against the real broker: delivery, close flushes, errors surface, transactions with offsets."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.broker import EmbeddedBroker, free_port
from streams.kafka_sink import KafkaSink, SinkError

pytestmark = pytest.mark.integration


def _read(broker: EmbeddedBroker, topic: str, partitions: int = 1, *, committed_only: bool = False,
          idle_s: float = 2.0) -> list[tuple[bytes | None, bytes]]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"read-{time.monotonic_ns()}",
                         "enable.auto.commit": False,
                         "isolation.level": "read_committed" if committed_only else "read_uncommitted"})
    out: list[tuple[bytes | None, bytes]] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        idle_until = time.monotonic() + idle_s
        while time.monotonic() < idle_until:
            got = [m for m in consumer.consume(10_000, 0.3) if m.error() is None]
            if got:
                out += [(m.key(), m.value()) for m in got]
                idle_until = time.monotonic() + idle_s
    finally:
        consumer.close()
    return out


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_written_records_are_delivered_with_keys(broker: EmbeddedBroker, compression: str) -> None:
    topic = f"sink-{compression}"
    broker.create_topic(topic, 2)
    values = [f"record-{i}".encode() for i in range(5_000)]
    keys = [None if i % 10 == 0 else f"k{i % 7}".encode() for i in range(5_000)]
    with KafkaSink({"bootstrap.servers": broker.bootstrap}, topic, compression=compression) as sink:
        sink.write(values, keys)
        sink.flush()
        assert sink.delivered == 5_000
    assert sorted(_read(broker, topic, 2), key=lambda kv: kv[1]) == sorted(zip(keys, values, strict=True),
                                                                           key=lambda kv: kv[1])


def test_close_flushes_what_is_queued(broker: EmbeddedBroker) -> None:
    broker.create_topic("sink-close", 1)
    sink = KafkaSink({"bootstrap.servers": broker.bootstrap}, "sink-close", linger_ms=500)
    sink.write([b"a", b"b", b"c"], partitions=[0, 0, 0])
    sink.close()
    sink.close()  # idempotent
    assert [v for _, v in _read(broker, "sink-close")] == [b"a", b"b", b"c"]


def test_delivery_failures_raise_instead_of_vanishing() -> None:
    dead_end = f"127.0.0.1:{free_port()}"  # nothing listens there: every record times out
    sink = KafkaSink({"bootstrap.servers": dead_end, "message.timeout.ms": 1_500,
                      "enable.idempotence": False}, "nowhere")
    sink.write([b"x"] * 10)
    with pytest.raises(SinkError, match=r"'nowhere': 10 records failed"):
        sink.flush(timeout_s=10)
    sink.write([b"y"])
    with pytest.raises(SinkError, match="'nowhere'"):
        sink.close(timeout_s=10)


def test_transaction_commits_records_with_consumer_offsets_and_abort_hides_them(broker: EmbeddedBroker) -> None:
    broker.create_topic("tx-in", 1)
    broker.create_topic("tx-out", 1)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "tx-group",
                         "enable.auto.commit": False})
    sink = KafkaSink({"bootstrap.servers": broker.bootstrap}, "tx-out", transactional_id="tx-test")
    try:
        consumer.assign([TopicPartition("tx-in", 0, 0)])
        sink.begin()
        sink.write([b"kept-1", b"kept-2"])
        sink.commit_transaction({0: 42}, consumer.consumer_group_metadata(), input_topic="tx-in")
        assert consumer.committed([TopicPartition("tx-in", 0)], timeout=10)[0].offset == 42
        sink.begin()
        sink.write([b"dropped"])
        sink.abort()
        with pytest.raises(SinkError, match="needs group_metadata and input_topic"):
            sink.commit_transaction({0: 50})
    finally:
        consumer.close()
    assert [v for _, v in _read(broker, "tx-out", committed_only=True)] == [b"kept-1", b"kept-2"]


def test_transaction_calls_need_a_transactional_sink(broker: EmbeddedBroker) -> None:
    sink = KafkaSink({"bootstrap.servers": broker.bootstrap}, "sink-close")
    with pytest.raises(SinkError, match="transactional_id"):
        sink.begin()
    sink.close()
